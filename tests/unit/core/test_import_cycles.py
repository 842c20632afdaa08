"""No import cycles in the core, the layers or the CDK app: a cycle forces imports into function bodies
(where they hide it) and leaves names untyped. Every import counts, module level or inside a function;
only ``if TYPE_CHECKING:`` imports do not run and are left out."""

from __future__ import annotations

import ast
import graphlib
import itertools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
#: folder on sys.path -> the top-level packages in it that are ours
PACKAGES = {"shared": ("udop",), "layers/connectors": ("udop_connectors",),
            "layers/transforms": ("udop_transforms",), "infra": ("udop_infra",)}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, packages in PACKAGES.items():
        for package in packages:
            for path in (ROOT / folder / package).rglob("*.py"):
                parts = path.relative_to(ROOT / folder).with_suffix("").parts
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skip


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    # ``from pkg import sub`` imports the module pkg.sub; ``from mod import name`` imports mod
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]


def import_graph() -> dict[str, dict[str, int]]:
    """module -> the modules it imports, each with the line of (one of) its imports."""
    known = _modules()
    graph: dict[str, dict[str, int]] = {m: {} for m in known}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_only(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in skip:
                continue
            for name in _imported(node, module, path.name == "__init__.py", known):
                target = name
                while target and target not in known:  # ``import udop.x.y`` names a module, or a name in one
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].setdefault(target, node.lineno)
    return graph


def test_the_graph_sees_our_modules_and_their_imports() -> None:
    graph = import_graph()
    assert "udop.spec.models" in graph["udop.spec.loader"]
    assert "udop_transforms._readers" in graph["udop_transforms._engine"]
    assert "udop_infra.nag" in graph["udop_infra.stack"]
    assert "udop.spec.models" not in graph["udop.spec.dag"]  # only under TYPE_CHECKING there
    # a lazy import inside a function is an edge too
    assert "udop.tasks.python" in graph["udop.spec.loader"]


def test_there_is_no_import_cycle() -> None:
    graph = import_graph()
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]  # [a, b, ..., a], each importing the one before it
        steps = [f"{b} imports {a} (line {graph[b][a]})" for a, b in itertools.pairwise(cycle)]
        raise AssertionError("an import cycle (move what both sides need into a leaf module): "
                             + "; ".join(steps)) from None
