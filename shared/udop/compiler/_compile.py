"""compile_pipeline: a Pipeline -> one Standard state machine, split into children when too big."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from udop.compiler._asl import (
    ENGINE_SUBSTITUTIONS,
    ENGINE_TASK_TYPES,
    ChildCall,
    Emitter,
    TaskSettings,
    substitution_key,
)
from udop.compiler._schedule import MAX_DEPTH, Node, Parallel, ScheduleError, Series, Step, schedule
from udop.errors import ConfigError, InputError, SpecErrors
from udop.settings import get_settings
from udop.spec.dag import check_dag
from udop.spec.data_tasks import fused_chains

__all__ = ["CompileError", "CompileOptions", "CompiledPipeline", "Estimates", "compile_pipeline"]

#: Step Functions quotas (Standard workflows)
DEFINITION_LIMIT_BYTES = 1_048_576
HISTORY_LIMIT_EVENTS = 25_000
LAMBDA_MAX_SECONDS = 900
#: default TimeoutSeconds of an EMR Serverless job or Athena query state (a task may set more)
ENGINE_MAX_SECONDS = 6 * 3600


class CompileError(InputError):
    """The pipeline cannot become a state machine; the message names the limit and the excess."""


@dataclass(frozen=True)
class CompileOptions:
    """How to compile. The defaults suit a deployment; tests shrink the budgets to force splits."""

    #: the pipeline version the task runner loads (``pipelines/<name>/<version>``)
    version: int = 1
    #: split into child state machines above these budgets (margins under the hard quotas)
    max_definition_bytes: int = 900_000
    max_history_events: int = 20_000
    #: False: exceeding a budget is a CompileError instead of a split
    split: bool = True
    #: foreach tasks: "distributed" (S3 ItemReader, any item count, each item a child execution)
    #: or "inline" (items listed into the state; at most ``inline_max_items``)
    map_mode: Literal["distributed", "inline"] = "distributed"
    inline_max_items: int = 100
    #: Parallel states nest at most this deep; deeper parts run as topological levels
    max_depth: int = MAX_DEPTH
    #: True: a failed task is caught and recorded, unrelated branches finish, then the run fails
    #: (the LocalExecutor's semantics). False: no Catch; the first failure stops the execution at
    #: the failed task, which is what Step Functions' RedriveExecution resumes from.
    catch_failures: bool = True
    #: DefinitionSubstitutions key of the task runner function's ARN
    runner_key: str = "TaskRunnerArn"
    #: a transform whose only reader is a file load runs with it in one Task state (one query, see
    #: docs/compiler.md "Fused chains"); None: as ``UDOP_FUSE`` says (default on)
    fuse: bool | None = None

    def __post_init__(self) -> None:
        if (self.max_definition_bytes > DEFINITION_LIMIT_BYTES
                or self.max_history_events > HISTORY_LIMIT_EVENTS):
            raise ValueError("budgets must stay within the Step Functions quotas")
        if not 1 <= self.inline_max_items <= 1000:
            raise ValueError("inline_max_items must be 1..1000 (one ListObjectsV2 page)")


@dataclass(frozen=True)
class Estimates:
    """Size figures of one state machine (its children are counted in their own estimates)."""

    definition_bytes: int
    max_history_events: int
    states: int
    tasks: int

    def to_dict(self) -> dict[str, int]:
        return {"definition_bytes": self.definition_bytes, "max_history_events": self.max_history_events,
                "states": self.states, "tasks": self.tasks}


@dataclass(frozen=True)
class CompiledPipeline:
    """One state machine: its ASL, the substitutions it needs and the child machines it starts."""

    name: str
    machine_name: str
    definition: dict[str, Any]
    substitutions: list[str]
    estimates: Estimates
    task_ids: tuple[str, ...]
    children: list[CompiledPipeline] = field(default_factory=list)

    def to_json(self, *, indent: int | None = None) -> str:
        """The definition as the plain string Step Functions and linters read."""
        if indent is None:
            return json.dumps(self.definition, separators=(",", ":"))
        return json.dumps(self.definition, indent=indent)

    def all_children(self) -> list[CompiledPipeline]:
        """Every descendant machine, deepest first: the order to create them in."""
        out: list[CompiledPipeline] = []
        for child in self.children:
            out.extend(child.all_children())
            out.append(child)
        return out


# -- cost model ----------------------------------------------------------------------------------------
# History events (documented in docs/compiler.md): a Lambda Task writes Entered, Scheduled, Started,
# Succeeded, Exited (5) plus Failed, Scheduled, Started (3) per retry; the Pass that records a failure
# 2; a Parallel Entered, Started, Succeeded, Exited (4) plus its Choice (2) and a Pass/Succeed (2);
# a child machine call 6 + 2; an execution Started + Succeeded/Failed and the Fail state (4).
TASK_EVENTS, RETRY_EVENTS, RECORD_EVENTS = 5, 3, 2
PARALLEL_EVENTS = 4 + 2 + 2
CHILD_EVENTS = 6 + 2
MACHINE_EVENTS = 4
DIST_MAP_EVENTS = 4 + 2 + RECORD_EVENTS
# definition bytes of the fixed parts (measured on emitted JSON, rounded up)
PARALLEL_BYTES, BRANCH_BYTES, CHILD_BYTES, MACHINE_BYTES = 420, 60, 760, 260


@dataclass(frozen=True)
class _Cost:
    size: int
    events: int

    def __add__(self, other: _Cost) -> _Cost:
        return _Cost(self.size + other.size, self.events + other.events)

    def fits(self, budget: _Cost) -> bool:
        return self.size <= budget.size and self.events <= budget.events

    def share(self, budget: _Cost) -> float:
        return max(self.size / budget.size, self.events / budget.events)


class _Compiler:
    def __init__(self, pipeline: Any, options: CompileOptions) -> None:
        self.pipeline = pipeline
        self.options = options
        self.name = str(pipeline.metadata.name)
        self.settings = {t.id: self._settings(t) for t in pipeline.spec.tasks}
        #: transform id -> the file load fused into its Task state
        self.fused = self._fused() if _fusion_on(options) else {}
        for transform, load in self.fused.items():
            t, ld = self.settings[transform], self.settings[load]
            # a fused invocation does both tasks' work: the sum of their timeouts (900 s when neither
            # has one; _fused keeps only pairs within a Lambda's 900 s)
            both = (self.pipeline.timeout_for(self.pipeline.task(transform)) is not None)
            self.settings[transform] = replace(t, fused=load, timeout_seconds=(
                t.timeout_seconds + ld.timeout_seconds if both else LAMBDA_MAX_SECONDS))
        self.parts = 0
        self._costs: dict[int, _Cost] = {}
        self._keep: list[Any] = []  # keeps nodes alive while their id() keys the cost cache
        self._step_cost: dict[str, _Cost] = {}

    def _settings(self, task: Any) -> TaskSettings:
        retry = self.pipeline.retry_for(task)
        timeout = self.pipeline.timeout_for(task)
        engine = str(getattr(task, "engine", "duckdb"))
        if engine in ENGINE_SUBSTITUTIONS and task.type not in ENGINE_TASK_TYPES[engine]:
            raise CompileError(f"pipeline {self.name!r}: task {task.id!r}: engine {engine} on AWS runs "
                               f"{' and '.join(ENGINE_TASK_TYPES[engine])} tasks only; set engine: duckdb "
                               "on it")
        if engine in ENGINE_SUBSTITUTIONS and task.foreach is not None:
            raise CompileError(f"pipeline {self.name!r}: task {task.id!r}: foreach runs on Lambda; a task "
                               f"with engine: {engine} spreads its own work (drop foreach)")
        if engine in ENGINE_SUBSTITUTIONS:
            # the job runs on EMR Serverless / Athena, not in a Lambda: Step Functions' own cap applies
            seconds = ENGINE_MAX_SECONDS if timeout is None else max(1, math.ceil(timeout))
            return TaskSettings(task_id=task.id, max_attempts=retry.max_attempts, base_delay=retry.base_delay,
                                backoff_rate=retry.backoff_rate, max_delay=retry.max_delay,
                                jitter=retry.jitter == "full", timeout_seconds=seconds, foreach=None,
                                retry_on=retry.retry_on, engine=engine)
        if timeout is not None and timeout > LAMBDA_MAX_SECONDS:
            raise CompileError(
                f"pipeline {self.name!r}: task {task.id!r}: timeout {timeout:g}s is over the "
                f"{LAMBDA_MAX_SECONDS}s a Lambda can run (by {timeout - LAMBDA_MAX_SECONDS:g}s); "
                "lower it or split the task")
        seconds = LAMBDA_MAX_SECONDS if timeout is None else max(1, math.ceil(timeout))
        return TaskSettings(task_id=task.id, max_attempts=retry.max_attempts, base_delay=retry.base_delay,
                            backoff_rate=retry.backoff_rate, max_delay=retry.max_delay,
                            jitter=retry.jitter == "full", timeout_seconds=seconds, foreach=task.foreach,
                            retry_on=retry.retry_on)

    def _fused(self) -> dict[str, str]:
        """The fusable chains (``udop.spec.data_tasks.fused_chains``, the local executor's rule) that
        one Task state can run: both tasks under the same retry policy (a state has one ``Retry``)
        and, together, within the time a Lambda may run."""
        chains = {}
        for transform, load in fused_chains(self.pipeline).items():
            t, ld = self.pipeline.task(transform), self.pipeline.task(load)
            if self.pipeline.retry_for(t) != self.pipeline.retry_for(ld):
                continue
            timeouts = [self.pipeline.timeout_for(t), self.pipeline.timeout_for(ld)]
            if any(x is not None for x in timeouts) and sum(x or LAMBDA_MAX_SECONDS for x in timeouts) > \
                    LAMBDA_MAX_SECONDS:
                continue
            chains[transform] = load
        return chains

    def deps(self) -> dict[str, list[str]]:
        """The task graph the schedule is built from: a fused load is part of its transform's step,
        and whatever read the load waits for that step."""
        into = {load: transform for transform, load in self.fused.items()}
        out: dict[str, list[str]] = {}
        for task in self.pipeline.spec.tasks:
            if task.id in into:
                continue
            out[task.id] = list(dict.fromkeys(into.get(d, d) for d in task.depends_on))
        return out

    def _emitter(self, root: bool) -> Emitter:
        return Emitter(pipeline=self.name, version=self.options.version, tasks=self.settings, root=root,
                       map_mode=self.options.map_mode, inline_max_items=self.options.inline_max_items,
                       runner_key=self.options.runner_key, catch=self.options.catch_failures)

    # -- costs --------------------------------------------------------------------------------------
    def cost(self, node: Any) -> _Cost:
        key = id(node)
        if key in self._costs:
            return self._costs[key]
        if isinstance(node, Step):
            result = self._cost_step(node.task_id)
        elif isinstance(node, ChildCall):
            result = _Cost(CHILD_BYTES + 2 * len(node.name), CHILD_EVENTS)
        elif isinstance(node, Series):
            result = _Cost(0, 0)
            for item in node.items:
                result = result + self.cost(item)
        else:
            result = _Cost(PARALLEL_BYTES, PARALLEL_EVENTS)
            for branch in node.branches:
                result = result + self.cost(branch) + _Cost(BRANCH_BYTES, 0)
        self._costs[key] = result
        self._keep.append(node)
        return result

    def _cost_step(self, task_id: str) -> _Cost:
        if task_id in self._step_cost:
            return self._step_cost[task_id]
        s = self.settings[task_id]
        states: dict[str, Any] = {}
        self._emitter(root=False).emit(Step(task_id), states, top=False)
        size = len(json.dumps(states, separators=(",", ":")))
        per_call = TASK_EVENTS + RETRY_EVENTS * (s.max_attempts - 1)
        if s.engine in ENGINE_SUBSTITUTIONS:
            # prepare and record calls (Lambda) around the job state, which retries per the policy
            events = 2 * TASK_EVENTS + per_call + RECORD_EVENTS
        elif s.foreach is None:
            events = per_call + RECORD_EVENTS
        elif self.options.map_mode == "inline":
            # list (Task 5) + Choice (2) + Map (4) + per item: iteration started/succeeded (2) + the call
            events = 5 + 2 + 4 + self.options.inline_max_items * (2 + per_call) + RECORD_EVENTS
        else:
            events = DIST_MAP_EVENTS  # items run as child executions with their own histories
        if s.foreach is not None:
            events += per_call  # the call that combines the items' results
        result = _Cost(size, events)
        self._step_cost[task_id] = result
        return result

    # -- splitting ------------------------------------------------------------------------------------
    def _call(self, body: Any) -> ChildCall:
        self.parts += 1
        return ChildCall(f"part{self.parts}", body)

    def fit(self, node: Any, budget: _Cost) -> Any:
        """``node`` with parts moved into child machines until it fits ``budget``."""
        if self.cost(node).fits(budget):
            return node
        if isinstance(node, Step | ChildCall):
            c = self.cost(node)
            raise CompileError(self._over(f"task {node.task_id!r} alone" if isinstance(node, Step) else
                                          "a child machine call", c, budget, splittable=False))
        if isinstance(node, Series):
            items = [self.fit(item, budget) for item in node.items]
            return self._fit_items(items, budget, lambda xs: Series(tuple(xs)) if len(xs) > 1 else xs[0])
        branches = [self.fit(b, budget) for b in node.branches]
        fixed = _Cost(PARALLEL_BYTES + BRANCH_BYTES * len(branches), PARALLEL_EVENTS)
        # move the biggest branches out first, as long as that is enough
        order = sorted(range(len(branches)), key=lambda i: self.cost(branches[i]).share(budget), reverse=True)
        total = fixed
        for b in branches:
            total = total + self.cost(b)
        for i in order:
            if total.fits(budget):
                break
            if isinstance(branches[i], ChildCall):
                continue
            before = self.cost(branches[i])
            branches[i] = self._call(branches[i])
            total = _Cost(total.size - before.size + self.cost(branches[i]).size,
                          total.events - before.events + self.cost(branches[i]).events)
        if total.fits(budget):
            return Parallel(tuple(branches))
        # too many branches even as calls: groups of branches become child machines
        return self._fit_items(branches, budget, lambda xs: Parallel(tuple(xs)) if len(xs) > 1 else xs[0])

    def _fit_items(self, items: list[Any], budget: _Cost, join: Any) -> Any:
        whole = join(items)
        if self.cost(whole).fits(budget):
            return whole
        room = _Cost(budget.size - MACHINE_BYTES - PARALLEL_BYTES,
                     budget.events - MACHINE_EVENTS - PARALLEL_EVENTS)
        chunks: list[list[Any]] = [[]]
        used = _Cost(0, 0)
        for item in items:
            c = self.cost(item) + _Cost(BRANCH_BYTES, 0)
            if chunks[-1] and not (used + c).fits(room):
                chunks.append([])
                used = _Cost(0, 0)
            chunks[-1].append(item)
            used = used + c
        calls = [chunk[0] if len(chunk) == 1 and isinstance(chunk[0], ChildCall) else self._call(join(chunk))
                 for chunk in chunks]
        if len(calls) == len(items) and all(isinstance(c, ChildCall) for c in items):
            raise CompileError(self._over("the pipeline", self.cost(whole), budget, splittable=False))
        return self.fit(join(calls), budget)

    def _over(self, what: str, cost: _Cost, budget: _Cost, *, splittable: bool) -> str:
        # figures for a whole machine: add back what every machine has around its body
        cost = cost + _Cost(MACHINE_BYTES, MACHINE_EVENTS)
        budget = budget + _Cost(MACHINE_BYTES, MACHINE_EVENTS)
        parts = []
        if cost.size > budget.size:
            parts.append(f"a definition of about {cost.size:,} bytes, {cost.size - budget.size:,} over the "
                         f"budget of {budget.size:,} (Step Functions allows {DEFINITION_LIMIT_BYTES:,})")
        if cost.events > budget.events:
            parts.append(f"up to {cost.events:,} history events per execution, "
                         f"{cost.events - budget.events:,} over the budget of {budget.events:,} "
                         f"(Step Functions allows {HISTORY_LIMIT_EVENTS:,})")
        hint = ("compile with splitting on" if splittable else
                "lower its retry attempts, or use map_mode='distributed' for foreach tasks")
        return f"pipeline {self.name!r}: {what} needs " + " and ".join(parts) + f"; {hint}"

    # -- emission --------------------------------------------------------------------------------------
    def build(self, node: Any, *, name: str, root: bool) -> CompiledPipeline:
        emitter = self._emitter(root)
        comment = (f"udop pipeline {self.name} v{self.options.version}" if root else
                   f"udop pipeline {self.name} v{self.options.version}, {name} (started by its parent)")
        definition = emitter.machine(node, comment)
        calls = list(_calls(node))
        children = [self.build(c.body, name=c.name, root=False) for c in calls]
        tasks = tuple(t for step in _tasks(node) for t in (step, self.fused.get(step)) if t is not None)
        text = json.dumps(definition, separators=(",", ":"))
        events = self.cost(node).events + MACHINE_EVENTS
        estimates = Estimates(definition_bytes=len(text.encode()), max_history_events=events,
                              states=_count_states(definition["States"]), tasks=len(tasks))
        subs = ([self.options.runner_key] if tasks else []) + [substitution_key(c.name) for c in calls]
        engines = sorted({self.settings[t].engine for t in tasks} & set(ENGINE_SUBSTITUTIONS))
        subs += [key for e in engines for key in ENGINE_SUBSTITUTIONS[e]]
        return CompiledPipeline(name=name, machine_name=self.name if root else f"{self.name}-{name}",
                                definition=definition, substitutions=subs, estimates=estimates,
                                task_ids=tasks, children=children)


def _fusion_on(options: CompileOptions) -> bool:
    if options.fuse is not None:
        return options.fuse
    try:
        return bool(get_settings().fuse)
    except ConfigError:  # a bad UDOP_* variable elsewhere: compile as documented by default
        return True


def _calls(node: Any) -> Iterator[ChildCall]:
    """The child calls of one machine (not those inside the children)."""
    if isinstance(node, ChildCall):
        yield node
    elif isinstance(node, Series):
        for item in node.items:
            yield from _calls(item)
    elif isinstance(node, Parallel):
        for branch in node.branches:
            yield from _calls(branch)


def _tasks(node: Any) -> Iterator[str]:
    if isinstance(node, Step):
        yield node.task_id
    elif isinstance(node, Series):
        for item in node.items:
            yield from _tasks(item)
    elif isinstance(node, Parallel):
        for branch in node.branches:
            yield from _tasks(branch)


def _count_states(states: dict[str, Any]) -> int:
    n = 0
    for state in states.values():
        n += 1
        for branch in state.get("Branches", ()):
            n += _count_states(branch["States"])
        if "ItemProcessor" in state:
            n += _count_states(state["ItemProcessor"]["States"])
    return n


def compile_pipeline(pipeline: Any, *, options: CompileOptions | None = None) -> CompiledPipeline:
    """The Step Functions definition (Standard workflow) that runs ``pipeline`` with the task runner.

    Raises ``SpecErrors`` when the task graph is invalid and ``CompileError`` when a limit cannot be
    met (splitting off, or a single task too big on its own).
    """
    options = options or CompileOptions()
    SpecErrors.collect(check_dag(pipeline))
    compiler = _Compiler(pipeline, options)
    deps = compiler.deps()
    try:
        tree: Node = schedule(deps, max_depth=options.max_depth)
    except ScheduleError as exc:  # check_dag catches these first; kept for direct callers
        raise CompileError(f"pipeline {compiler.name!r}: {exc}") from None
    budget = _Cost(options.max_definition_bytes - MACHINE_BYTES, options.max_history_events - MACHINE_EVENTS)
    for _ in range(4):
        over = compiler.cost(tree)
        if not over.fits(budget) and not options.split:
            raise CompileError(compiler._over("the whole pipeline", over, budget, splittable=True))
        compiler.parts = 0
        body = compiler.fit(tree, budget)
        result = compiler.build(body, name=compiler.name, root=True)
        worst = max([result, *result.all_children()], key=lambda m: m.estimates.definition_bytes)
        if worst.estimates.definition_bytes <= options.max_definition_bytes:
            return result
        # the size model was optimistic: shrink the budget by the error and split again
        ratio = options.max_definition_bytes / worst.estimates.definition_bytes
        budget = _Cost(int(budget.size * ratio * 0.97), budget.events)
    raise CompileError(f"pipeline {compiler.name!r}: could not split the definition under "
                       f"{options.max_definition_bytes:,} bytes")
