"""Fused chains in the local and Celery executors: a transform and the file load that alone reads it run
in one attempt of the transform, as one query, while each task keeps its own attempt and result.

The chain runner comes from the entry point group ``udop.task_chains`` (``transform-load``; the core
never imports a layer by name). The load's result is computed with the transform's and kept until
the load starts: its attempt then records that result at once (``compute_chain`` computes the pair;
the Celery executor calls it in a worker and keeps the load's result on the coordinator). A fused
attempt that fails is run again unfused within the same attempt (the transform alone, writing its
Parquet), so an error is always reported by the task it belongs to, and retries follow each task's own
policy. Turned off by ``fuse: false`` on the transform or ``UDOP_FUSE=false``. See docs/data-tasks.md
("Fusion").
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from udop.errors import TaskTimeout
from udop.executor.attempt import compute, stored_result
from udop.sandbox import active, redactor
from udop.tasks.contract import TaskContext, TaskResult

__all__ = ["CHAIN_GROUP", "Fusion", "chain_runner", "compute_chain"]

_log = logging.getLogger("udop.executor")

CHAIN_GROUP = "udop.task_chains"

Computed = tuple[TaskResult, dict[str, Any]]


@cache
def chain_runner() -> tuple[Callable[..., bool], Callable[..., tuple[TaskResult, TaskResult]]] | None:
    """(fusable(transform, load), run_fused(...)) from the installed transforms layer, or None."""
    from udop.plugins import entry_points_of

    for ep in entry_points_of(CHAIN_GROUP):
        if ep.name == "transform-load":
            run = ep.load()
            module = __import__(run.__module__, fromlist=["fusable"])
            return module.fusable, run
    return None


def _enabled() -> bool:
    from udop.errors import ConfigError
    from udop.settings import get_settings

    try:
        return bool(get_settings().fuse)
    except ConfigError:
        return False


class Fusion:
    """The fused chains of one run (transform id -> load id) and the load results computed early."""

    def __init__(self, pipeline: Any, next_attempt: Callable[[str], int]) -> None:
        self.pipeline = pipeline
        self.next_attempt = next_attempt
        self.chains: dict[str, str] = {}
        self._early: dict[str, Computed] = {}
        self._lock = threading.Lock()
        types = {t.type for t in pipeline.spec.tasks}
        if not {"transform", "load"} <= types or not _enabled():
            return
        runner = chain_runner()
        if runner is None:
            return
        fusable = runner[0]
        readers: dict[str, list[Any]] = {}
        for task in pipeline.spec.tasks:
            for dep in task.depends_on:
                readers.setdefault(dep, []).append(task)
        for task in pipeline.spec.tasks:
            after = readers.get(task.id, [])
            if task.type == "transform" and len(after) == 1 and fusable(task, after[0]):
                self.chains[task.id] = after[0].id

    def timeout(self, task_id: str, timeout: float | None) -> float | None:
        """A fused attempt does both tasks' work: its timeout is the sum of theirs (none if either has
        none)."""
        load = self.chains.get(task_id)
        if load is None or timeout is None:
            return timeout
        other = self.pipeline.timeout_for(self.pipeline.task(load))
        return None if other is None else timeout + other

    def keep_early(self, load_id: str, computed: Computed) -> None:
        """The load's result, computed with its transform's (the Celery executor: by a worker)."""
        with self._lock:
            self._early[load_id] = computed

    def take_early(self, task_id: str) -> Computed | None:
        """The result kept for ``task_id`` by its transform's fused attempt, once."""
        with self._lock:
            return self._early.pop(task_id, None)

    def compute(self, context: TaskContext, task: Any, inputs: Mapping[str, TaskResult],
                workers: int) -> Computed:
        """What ``udop.executor.attempt.compute`` returns, for a fused chain's tasks too."""
        early = self.take_early(task.id)
        if early is not None:
            return early
        load_id = self.chains.get(task.id)
        if load_id is None:
            return compute(context, task, inputs, workers)
        self.take_early(load_id)  # from an earlier attempt of this transform, if any
        first, loaded = compute_chain(context, task, inputs, workers, pipeline=self.pipeline, load_id=load_id,
                                      load_attempt=self.next_attempt(load_id))
        if loaded is not None:
            self.keep_early(load_id, loaded)
        return first


def compute_chain(context: TaskContext, task: Any, inputs: Mapping[str, TaskResult], workers: int, *,
                  pipeline: Any, load_id: str, load_attempt: int) -> tuple[Computed, Computed | None]:
    """The transform ``task`` fused with the load ``load_id`` (its attempt ``load_attempt``):
    (the transform's result, the load's), or (the transform's, None) when the fused run failed and
    the transform ran on its own (the load then runs on its own later). The local executor calls it
    in a worker thread, the Celery executor in a worker (``udop.executor.celery``)."""
    runner = chain_runner()  # loads the layer: only for a chain
    if runner is None:
        return compute(context, task, inputs, workers), None
    load = pipeline.task(load_id)
    load_context = dataclasses.replace(context, task_id=load_id, attempt=load_attempt, output_override=None)
    masking = getattr(pipeline.spec, "masking", None)
    try:
        with active(context.policy), redactor.scope(masking.patterns if masking else (),
                                                    masking.columns if masking else ()):
            result, loaded = runner[1](context, task, dict(inputs), load_context, load)
    except TaskTimeout:
        raise
    except Exception as exc:
        if context.cancelled:
            raise
        # the unfused run reports the error as the transform's own, or succeeds and leaves the
        # load to run (and fail or retry) on its own
        _log.info("task %r: fused run with %r failed (%s); running it on its own", task.id, load_id,
                  type(exc).__name__)
        return compute(context, task, inputs, workers), None
    first = stored_result(result, inputs)
    return first, stored_result(loaded, {task.id: first[0]})
