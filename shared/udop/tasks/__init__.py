"""Task types: the contract (``run_task``) and the registry that finds each type's handler.

The core knows only the ``python`` type by name. Every other type (``extract``, ``transform``,
``validate``, ``load``) is found through the entry point group ``udop.task_types``, so the core never
imports a layer.
"""

from __future__ import annotations

from udop.tasks.contract import CheckResult, Manifest, TaskContext, TaskResult, dataset_uri
from udop.tasks.registry import get_handler, run_task

__all__ = ["CheckResult", "Manifest", "TaskContext", "TaskResult", "dataset_uri", "get_handler", "run_task"]
