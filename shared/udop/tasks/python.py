"""The ``python`` task type: call a user's ``package.module:function(context, inputs, **args)``.

``inputs`` maps each dependency's id to its output: a ``Manifest`` when it wrote a dataset
(``manifest.to_arrow()`` / ``to_pandas()`` read it), else the small JSON value it returned.
The function may return ``None``, a JSON value (passed by value, at most ``MAX_VALUE_BYTES``), a
pyarrow ``Table``/``RecordBatchReader`` or a pandas ``DataFrame`` (written as Parquet at the task's
deterministic location), a ``Manifest`` or a full ``TaskResult``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from udop.errors import FatalError, SpecError
from udop.sandbox import SandboxViolation, current
from udop.tasks.contract import Manifest, TaskContext, TaskResult

if TYPE_CHECKING:
    from udop.spec.loader import LoadedDefinition
    from udop.spec.models import Pipeline, PythonTask

__all__ = ["check_callables", "import_callable", "run_python_task"]


def import_callable(spec: str, base_dir: str | Path | None = None) -> Callable[..., Any]:
    """Import ``package.module:attr.path``; ``base_dir`` is put on ``sys.path`` first.

    On a server the module must be one the active policy allows, checked before anything is imported;
    and a name starting with ``_`` (``os:_exit``, ``tasks:__builtins__``) is never reachable.
    """
    module_name, _, attr_path = spec.partition(":")
    policy = current()
    try:
        policy.check_module(module_name, what="callable")
    except SandboxViolation as exc:
        raise ValueError(str(exc).removeprefix("callable: ")) from None
    if policy.is_server and any(p.startswith("_") for p in attr_path.split(".")):
        raise ValueError(f"{spec!r}: a server runs only public functions (no name starting with '_')")
    if base_dir is not None:
        folder = str(Path(base_dir).resolve())
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"cannot import module {module_name!r} ({exc.msg})") from None
    except Exception as exc:  # the user's module failed while importing: say how
        raise ValueError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable")
    return obj  # type: ignore[no-any-return]


def check_callables(
    pipeline: Pipeline, loaded: LoadedDefinition | None, base_dir: str | Path
) -> list[SpecError]:
    errors = []
    for i, task in enumerate(pipeline.spec.tasks):
        if task.type != "python":
            continue
        try:
            import_callable(task.callable, base_dir)
        except ValueError as exc:
            path = ("spec", "tasks", i, "callable")
            errors.append(
                loaded.error(path, str(exc)) if loaded else SpecError(str(exc), path=".".join(map(str, path)))
            )
    return errors


def _input_value(result: TaskResult) -> Any:
    return result.output if result.output is not None else result.value


def run_python_task(context: TaskContext, task: PythonTask, inputs: Mapping[str, TaskResult]) -> TaskResult:
    base_dir = context.services.get("base_dir")
    try:
        fn = import_callable(task.callable, base_dir)
    except ValueError as exc:
        raise FatalError(f"task {task.id!r}: {exc}") from None
    args = context.render(task.args)
    value = fn(context, {k: _input_value(v) for k, v in inputs.items()}, **args)
    return to_result(context, value, inputs)


def to_result(context: TaskContext, value: Any, inputs: Mapping[str, TaskResult]) -> TaskResult:
    """Turn what a user function returned into a ``TaskResult`` (tables become Parquet)."""
    lineage = tuple(r.output.uri if r.output else f"task:{tid}" for tid, r in inputs.items())
    if isinstance(value, TaskResult):
        return value
    if isinstance(value, Manifest):
        return TaskResult(output=value, inputs=lineage)
    table = _as_arrow(value)
    if table is not None:
        from udop.tasks.datasets import write_parquet

        return TaskResult(output=write_parquet(table, context.output_uri), inputs=lineage)
    return TaskResult(value=value, inputs=lineage)


def _as_arrow(value: Any) -> Any:
    module = type(value).__module__
    if module.startswith("pyarrow"):
        import pyarrow as pa

        if isinstance(value, pa.Table | pa.RecordBatchReader | pa.RecordBatch):
            return value
    if module.startswith("pandas") and type(value).__name__ == "DataFrame":
        import pyarrow as pa

        return pa.Table.from_pandas(value, preserve_index=False)
    return None
