"""A fused transform's view: the recipe a transform records instead of Parquet when its only reader is
a file load (``udop_transforms._fusion``), and the query a reader compiles from it.

Kept apart from ``_fusion`` and ``_tasks`` so neither import cycle exists: ``_tasks`` reads views through
this module and hands it its own input registration.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from udop.errors import FatalError
from udop.tasks.contract import VIEW_FORMAT, VIEW_NAME, Manifest, TaskContext, TaskResult
from udop_transforms._engine import Column, Session
from udop_transforms._sql import Params
from udop_transforms._steps import StepError, compile_steps

__all__ = ["VIEW_FORMAT", "VIEW_NAME", "Register", "compile_transform", "keep_compiled", "view_query"]


#: ``_tasks._register_inputs``: register a task's inputs in a session, giving each input's columns
Register = Callable[..., dict[str, list[Column]]]


def compile_transform(
    session: Session, context: TaskContext, task: Any, inputs: Mapping[str, TaskResult], *, widen: bool,
    register: Register,
) -> tuple[dict[str, list[Column]], str, dict[str, Any]]:
    """Register the transform's inputs in ``session`` and compile its steps: (inputs' columns, query,
    bound parameters). ``register`` is the transform layer's input registration (passed in, so this
    module does not import the task module that imports it)."""
    columns = register(session, context, task, inputs, widen=widen)
    try:
        plan = compile_steps(session, list(task.steps), task.primary_input, columns,
                             Params(context.template_scope()), verify=False)
    except StepError as exc:
        raise FatalError(f"task {task.id!r}: {exc}") from None
    return columns, plan.query(), plan.bound_params()


#: the query a view's transform compiled to, kept by the attempt that recorded the view for the load it
#: runs next in the same process (``_fusion.run_fused``), by the view file's path: (the recipe's text,
#: the query's columns, the query, its parameters). Taken once; anything else compiles the recipe.
_COMPILED: dict[str, tuple[str, list[Column], str, dict[str, Any]]] = {}
_COMPILED_LOCK = threading.Lock()


def keep_compiled(path: Path, recipe: str, columns: list[Column], sql: str, params: dict[str, Any]) -> None:
    with _COMPILED_LOCK:
        if len(_COMPILED) >= 64:  # views whose load never ran here (a crash between them is not one)
            _COMPILED.clear()
        _COMPILED[str(path)] = (recipe, columns, sql, params)


def view_query(session: Session, context: TaskContext, reader: str, dep: str, manifest: Manifest, *,
               widen: bool, register: Register) -> tuple[list[Column], str, dict[str, Any]]:
    """The query of the transform whose view ``manifest`` is, over its inputs registered in ``session``:
    (its columns, the query, its parameters). ``reader`` is the task reading it (for messages)."""
    path = Path(manifest.uri) / VIEW_NAME
    with _COMPILED_LOCK:
        kept = _COMPILED.pop(str(path), None)
    try:
        text = path.read_text()
        recipe = json.loads(text)
        task_id, attempt = str(recipe["task"]), int(recipe["attempt"])
        inputs = {d: TaskResult(output=Manifest.from_dict(m)) for d, m in dict(recipe["inputs"]).items()}
    except FileNotFoundError:
        raise FatalError(f"task {reader!r}: input {dep!r}: the view {path} does not exist (was the run's "
                         "folder removed?)") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise FatalError(f"task {reader!r}: input {dep!r}: the view {path} is not readable ({exc}); run "
                         "the pipeline again") from None
    task = context.pipeline.task(task_id)
    own = dataclasses.replace(context, task_id=task_id, attempt=attempt, output_override=None)
    if kept is not None and kept[0] == text and not widen:  # compiled a moment ago from this recipe
        register(session, own, task, inputs, widen=widen)
        return kept[1], kept[2], kept[3]
    _, sql, params = compile_transform(session, own, task, inputs, widen=widen, register=register)
    return session.describe(f"SELECT * FROM ({sql})", params), sql, params
