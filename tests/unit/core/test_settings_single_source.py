"""One settings base for every process: configuration is read from the environment only through
``udop.settings`` (``UdopSettings`` + ``load_settings``), which names every bad variable at once.
A raw ``os.environ`` / ``os.getenv`` elsewhere is a setting declared twice or read without checks."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import AliasChoices

from udop.errors import ConfigError
from udop.settings import StoreSettings, UdopSettings, load_settings, required_variables

ROOT = Path(__file__).resolve().parents[3]
FOLDERS = ("shared/udop", "layers/connectors/udop_connectors", "layers/transforms/udop_transforms",
           "functions", "infra/udop_infra", "infra/app.py")

#: the modules that may touch the environment, and why: none of them reads a udop setting
ALLOWED = {
    "shared/udop/settings.py": "the settings loader itself",
    "shared/udop/sandbox.py": "Policy.environ(): the variables a definition's ${env.X} may read",
    "shared/udop/spec/params.py": "${env.X} in a trusted definition reads the user's environment",
    "shared/udop/connectors/secrets.py": "a connection's {env: NAME} secret reference",
    "shared/udop/redaction.py": "registers secret-looking variables' values with the redactor",
    "layers/transforms/udop_transforms/_validate.py": "${env.X} at check time (a user's variable)",
    "infra/app.py": "sets a variable for the jsii node subprocess",
    "shared/udop/aws/emulate.py": "points boto3 at the rehearsal's moto account for its duration",
    "shared/udop/cli/templates/aws/test_app.py": "a team's own test (`udop init --aws`), not udop code: "
    "its synth subprocess gets the user's environment",
}


def _files() -> list[Path]:
    out: list[Path] = []
    for folder in FOLDERS:
        path = ROOT / folder
        out += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return [p for p in out if "cdk.out" not in p.parts]


def _environment_reads(tree: ast.AST) -> list[int]:
    def reads(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute):
            return isinstance(node.value, ast.Name) and node.value.id == "os" \
                and node.attr in ("environ", "getenv", "environb", "putenv")
        return isinstance(node, ast.ImportFrom) and node.module == "os" \
            and any(a.name in ("environ", "getenv") for a in node.names)

    return [node.lineno for node in ast.walk(tree) if reads(node)]


def test_only_the_settings_module_reads_the_environment() -> None:
    found = []
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        found += [f"{rel}:{line}" for line in _environment_reads(ast.parse(path.read_text(), rel))]
    assert found == [], "read these through a UdopSettings class and load_settings: " + ", ".join(found)


def test_the_allowlist_is_not_stale() -> None:
    stale = [rel for rel in ALLOWED if not _environment_reads(ast.parse((ROOT / rel).read_text(), rel))]
    assert stale == []


class _Example(UdopSettings):
    data_bucket: str
    workers: int = 1
    state_url: str | None = None


def test_one_message_names_every_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UDOP_DATA_BUCKET", raising=False)
    monkeypatch.setenv("UDOP_WORKERS", "many")
    with pytest.raises(ConfigError) as caught:
        load_settings(_Example)
    message = str(caught.value)
    assert "UDOP_DATA_BUCKET is missing" in message and "UDOP_WORKERS:" in message
    assert "\n" not in message


def test_a_changed_variable_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UDOP_DATA_BUCKET", "first")
    assert load_settings(_Example).data_bucket == "first"
    monkeypatch.setenv("UDOP_DATA_BUCKET", "second")
    assert load_settings(_Example).data_bucket == "second"


def test_every_process_settings_class_derives_from_the_one_base() -> None:
    from udop.alerts import AlertSettings
    from udop.api.settings import ApiSettings
    from udop.aws.settings import DeployerSettings, EventsSettings, RunnerSettings
    from udop.masking import MaskingSettings
    from udop.sandbox import SandboxSettings
    from udop.settings import AwsResources, ProcessSettings, Settings

    classes = (AlertSettings, ApiSettings, DeployerSettings, EventsSettings, RunnerSettings, MaskingSettings,
               SandboxSettings, AwsResources, ProcessSettings, Settings)
    assert all(issubclass(c, UdopSettings) for c in classes)


_ROOTS = {"shared": "", "layers/connectors": "", "layers/transforms": ""}


def _settings_classes() -> list[type[UdopSettings]]:
    """Every settings class in the source: found by its bases in the syntax (so a new module is not
    missed), then imported. Importing every module instead takes ~12 s."""
    found: dict[str, str] = {}  # class name -> module
    bases: dict[str, list[str]] = {}
    for path in _files():
        rel = path.relative_to(ROOT)
        root = next((r for r in _ROOTS if rel.as_posix().startswith(r + "/")), None)
        for node in ast.walk(ast.parse(path.read_text(), str(rel))):
            if isinstance(node, ast.ClassDef):
                names = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                         for b in node.bases]
                bases[node.name] = names
                assert root is not None or "Settings" not in " ".join(names), f"{rel}: {node.name}"
                if root is not None:
                    found[node.name] = ".".join(rel.relative_to(root).with_suffix("").parts)
    settings = {"UdopSettings"}
    while grown := {n for n, b in bases.items() if n not in settings and settings & set(b)}:
        settings |= grown
    classes = [getattr(importlib.import_module(found[n]), n) for n in sorted(settings)]
    assert all(issubclass(c, UdopSettings) for c in classes)
    return classes


def _variables(cls: type[UdopSettings], name: str) -> list[str]:
    alias = cls.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(a).upper() for a in alias.choices]
    return [(alias or f"UDOP_{name}").upper()]


def test_each_udop_variable_is_declared_in_exactly_one_class() -> None:
    declared: dict[str, list[str]] = {}
    classes = _settings_classes()
    assert len(classes) >= 10  # the discovery found the process classes, not just the base
    for cls in classes:
        own = [n for n in inspect.get_annotations(cls) if n in cls.model_fields]
        for name in own:
            for variable in _variables(cls, name):
                declared.setdefault(variable, []).append(cls.__name__)
    twice = {v: cs for v, cs in declared.items() if v.startswith("UDOP_") and len(cs) > 1}
    assert twice == {}, "declare each field in one class; a process that needs it lists it in `requires`"
    assert {"UDOP_DATA_BUCKET", "UDOP_DATABASE_URL", "UDOP_STATE_URL", "UDOP_CODE_DIR"} <= set(declared)


def test_requires_names_fields_and_matches_what_mypy_is_told() -> None:
    # the functions' classes narrow each required field to `str` for mypy in an `if TYPE_CHECKING`
    # block (no field at run time): it must say exactly what `requires` enforces
    from udop.aws import settings as aws_settings

    tree = ast.parse(Path(aws_settings.__file__).read_text())
    for node in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
        cls = getattr(aws_settings, node.name)
        narrowed = {
            stmt.target.id
            for block in node.body if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
            for stmt in block.body if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
        }
        assert narrowed == set(cls.requires), node.name
        assert set(cls.requires) <= set(cls.model_fields), node.name
        assert all(cls.model_fields[n].default is None for n in cls.requires), node.name


class _NeedsState(StoreSettings):
    requires: ClassVar[tuple[str, ...]] = ("state_url",)
    workers: int = 1


def test_a_required_shared_field_is_reported_with_every_other_bad_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("UDOP_STATE_URL", raising=False)
    monkeypatch.setenv("UDOP_WORKERS", "many")
    with pytest.raises(ConfigError) as caught:
        load_settings(_NeedsState)
    message = str(caught.value)
    assert "UDOP_STATE_URL is missing" in message and "UDOP_WORKERS:" in message
    assert "\n" not in message
    assert required_variables(_NeedsState) == ("UDOP_STATE_URL",)
    # optional where it is declared: the local process runs without it
    assert load_settings(StoreSettings).state_url is None
    monkeypatch.setenv("UDOP_STATE_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("UDOP_WORKERS", "2")
    assert load_settings(_NeedsState).state_url == "redis://127.0.0.1:6379/0"


def test_arguments_win_over_the_environment_and_names_match_regardless_of_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UDOP_DATA_BUCKET", "from-env")
    monkeypatch.setenv("udop_workers", "3")
    assert _Example(data_bucket="given").data_bucket == "given"
    assert load_settings(_Example).workers == 3
    # an alias is read, the first of its choices that is set wins, and an error names them all
    from udop.settings import ProcessSettings

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b")
    assert load_settings(ProcessSettings).otlp_endpoint == "http://b"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://a")
    assert load_settings(ProcessSettings).otlp_endpoint == "http://a"
