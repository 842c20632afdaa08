"""Test helpers for compiled state machines: the npm asl-validator in one batch, a walker that reads
the ASL back (which tasks are guaranteed finished before each task starts), and a small simulator
of the JSON that flows between states, for payload sizes.

They read the emitted definitions, not the compiler's internal schedule, so they check what Step
Functions would actually run.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from udop.compiler import CompiledPipeline
from udop.spec.models import Pipeline

ROOT = Path(__file__).resolve().parents[3]
VALIDATOR = ROOT / "node_modules" / ".bin" / "asl-validator"
BATCH_SCRIPT = Path(__file__).with_name("validate_many.js")
LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
START_CHILD = "arn:aws:states:::states:startExecution.sync:2"


def make_pipeline(deps: Mapping[str, list[str]], *, name: str = "demo",
                  extra: Mapping[str, Mapping[str, Any]] | None = None,
                  defaults: Mapping[str, Any] | None = None) -> Pipeline:
    """A pipeline of python tasks with the given dependencies (task id -> ids it depends on)."""
    extra = extra or {}
    tasks = [{"id": tid, "type": "python", "callable": "tasks:run", "depends_on": list(parents),
              **extra.get(tid, {})} for tid, parents in deps.items()]
    spec: dict[str, Any] = {"tasks": tasks}
    if defaults:
        spec["defaults"] = dict(defaults)
    return Pipeline.model_validate({"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": name},
                                    "spec": spec})


def machines(compiled: CompiledPipeline) -> list[CompiledPipeline]:
    return [compiled, *compiled.all_children()]


def validate(definitions: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    """Run asl-validator's checks over all ``definitions`` in one node process (validate_many.js);
    return {name: errors} of the invalid ones."""
    assert VALIDATOR.exists(), f"{VALIDATOR} is missing: run `npm ci` (scripts/bootstrap.sh does)"
    with tempfile.TemporaryDirectory() as tmp:
        batch = Path(tmp) / "definitions.json"
        batch.write_text(json.dumps(list(definitions.items())))
        proc = subprocess.run(["node", str(BATCH_SCRIPT), str(batch)], capture_output=True, text=True,
                              timeout=300, check=False)
    assert proc.returncode == 0, f"validate_many.js failed: {proc.stderr[-2000:]}"
    return {name: json.dumps(errors) for name, errors in json.loads(proc.stdout).items()}


def assert_valid(compiled: list[CompiledPipeline] | CompiledPipeline) -> None:
    items = compiled if isinstance(compiled, list) else [compiled]
    defs = {}
    for c in items:
        for m in machines(c):
            defs[f"{c.name}/{m.name}/{len(defs)}"] = m.definition
    bad = validate(defs)
    assert not bad, "asl-validator rejected:\n" + "\n".join(f"{k}: {v}" for k, v in bad.items())


# -- reading the schedule back ----------------------------------------------------------------------

@dataclass
class Walk:
    """What the success path of a compiled machine does."""

    #: task id -> tasks certainly finished when it starts
    before: dict[str, frozenset[str]] = field(default_factory=dict)
    #: task id -> how many Task/Map states run it
    runs: Counter[str] = field(default_factory=Counter)
    #: task id -> start time when each task takes durations[task] and Parallels wait for all branches
    start: dict[str, float] = field(default_factory=dict)
    makespan: float = 0.0


def _task_of(state: dict[str, Any]) -> str | None:
    if state["Type"] == "Task" and state["Resource"] == LAMBDA_INVOKE:
        if state["Parameters"]["Payload"].get("finalize") or state["Parameters"]["Payload"].get("list"):
            return None  # a foreach task's listing or combine step: not another run of the task
        return str(state["Parameters"]["Payload"]["task_id"])
    if state["Type"] == "Map":
        inner = state["ItemProcessor"]["States"]
        (only,) = inner.values()
        return str(only["Parameters"]["Payload"]["task_id"])
    return None


def walk(compiled: CompiledPipeline, durations: Mapping[str, float] | None = None) -> Walk:
    by_key = {f"Child_{m.name}Arn": m for m in compiled.all_children()}
    result = Walk()

    def scope(sc: dict[str, Any], done: frozenset[str], now: float) -> tuple[frozenset[str], float]:
        name = sc["StartAt"]
        while True:
            state = sc["States"][name]
            kind = state["Type"]
            task = _task_of(state)
            if task is not None:
                # a fused Task state runs the transform and its file load in one invocation
                fused = state["Parameters"]["Payload"].get("fused") if kind == "Task" else None
                for one in (task, fused) if fused else (task,):
                    result.before[one] = done
                    result.runs[one] += 1
                    result.start[one] = now
                now += 1.0 if durations is None else durations[task]
                done = done | {task} | ({fused} if fused else set())
            elif kind == "Task" and state["Resource"] == START_CHILD:
                key = state["Parameters"]["StateMachineArn"][2:-1]
                done, now = scope(by_key[key].definition, done, now)
            elif kind == "Parallel":
                ends = [scope(branch, done, now) for branch in state["Branches"]]
                for d, _ in ends:
                    done = done | d
                now = max(t for _, t in ends)
            elif kind == "Choice":
                name = state["Default"]  # every Choice the compiler emits takes Default on success
                continue
            elif kind == "Succeed":
                return done, now
            elif kind == "Fail":
                raise AssertionError(f"the success path reaches Fail state {name!r}")
            if state.get("End"):
                return done, now
            name = state["Next"]

    _, result.makespan = scope(compiled.definition, frozenset(), 0.0)
    return result


def failure_routes(definition: dict[str, Any], *, top: bool = True) -> dict[str, str]:
    """{task: how its failure ends} for every Task/Map: "fail" (to the Fail state) or "end" (the
    branch ends carrying the failure). Also checks the record names the right task."""
    routes: dict[str, str] = {}
    states = definition["States"]
    for state in states.values():
        for branch in state.get("Branches", ()):
            routes.update(failure_routes(branch, top=False))
        task = _task_of(state)
        if task is None:
            continue
        (catch,) = state["Catch"]
        assert catch["ErrorEquals"] == ["States.ALL"]
        record = states[catch["Next"]]
        assert record["Type"] == "Pass"
        assert record["Parameters"]["task"] == task
        if top:
            end = states[record["Next"]]
            targets = [end] if end["Type"] == "Fail" else [
                states[t] for t in (end["Default"], *(c["Next"] for c in end["Choices"]))]
            assert all(t["Type"] == "Fail" for t in targets)
            routes[task] = "fail"
        else:
            assert record.get("End") is True
            routes[task] = "end"
    return routes


# -- payload sizes -----------------------------------------------------------------------------------

def _get(data: Any, path: str) -> Any:
    assert path.startswith("$"), path
    cur = data
    for part in re.findall(r"\.([A-Za-z_]\w*)|\[(\d+)\]", path[1:]):
        key, index = part
        cur = cur[key] if key else cur[int(index)]
    return cur


def _eval(value: Any, data: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k.endswith(".$"):
                out[k[:-2]] = _intrinsic(v, data) if v.startswith("States.") else (
                    None if v.startswith("$$") else _get(data, v))
            else:
                out[k] = _eval(v, data)
        return out
    return value


def _intrinsic(expr: str, data: Any) -> Any:
    m = re.fullmatch(r"States\.Format\('((?:[^'\\]|\\.)*)',\s*(.*)\)", expr)
    assert m, f"simulator does not know {expr}"
    text = m.group(1)
    for arg in (a.strip() for a in m.group(2).split(",")):
        text = text.replace("{}", str(_get(data, arg)) if not arg.startswith("$$") else "<ctx>", 1)
    return text


@dataclass
class Simulation:
    largest_state: int = 0
    largest_result: int = 0
    ran: list[str] = field(default_factory=list)  # tasks invoked, in order
    end_state: str = ""  # the top-level state the execution ended in
    end_type: str = ""  # Succeed, Fail, or a state with End
    error: str | None = None  # a Fail state's Error and Cause, as Step Functions would report them
    cause: str | None = None


def failure_cause(task: str, cause_bytes: int) -> str:
    """The Cause the simulator gives a failing task: names the task, padded to ``cause_bytes``."""
    head = f"task {task!r} failed: "
    return head + "x" * max(0, cause_bytes - len(head))


def _matches(rule: dict[str, Any], data: Any) -> bool:
    try:
        value = _get(data, rule["Variable"])
    except (KeyError, IndexError):
        return rule.get("IsPresent") is False
    if "IsPresent" in rule:
        return bool(rule["IsPresent"])
    if "StringEquals" in rule:
        return value == rule["StringEquals"]
    if "StringMatches" in rule:
        return re.fullmatch(re.escape(rule["StringMatches"]).replace(r"\*", ".*"), str(value)) is not None
    raise AssertionError(f"simulator does not know the Choice rule {rule}")


def _path_or_value(state: dict[str, Any], key: str, data: Any) -> str | None:
    if key in state:
        return str(state[key])
    path = state.get(f"{key}Path")
    if path is None:
        return None
    return str(_intrinsic(path, data) if path.startswith("States.") else _get(data, path))


def simulate(definition: dict[str, Any], execution_input: dict[str, Any], *,
             fail: bool | Collection[str], cause_bytes: int = 4096,
             error: str = "udop.FatalError") -> Simulation:
    """Push ``execution_input`` through the machine; the tasks in ``fail`` (or every task, with
    ``fail=True``) fail with ``error`` and a Cause of ``cause_bytes`` naming the task (see
    ``failure_cause``), the others succeed. Records the largest state and the largest raw Parallel
    result as JSON bytes, the tasks run, and the state the execution ends in with its Error/Cause."""
    sim = Simulation()

    def size(data: Any) -> int:
        return len(json.dumps(data, separators=(",", ":")))

    def failing(task: str | None) -> bool:
        return task is not None and (fail is True or (not isinstance(fail, bool) and task in fail))

    def run(sc: dict[str, Any], data: Any, *, top: bool) -> Any:
        name = sc["StartAt"]
        while True:
            state = sc["States"][name]
            sim.largest_state = max(sim.largest_state, size(data))
            kind = state["Type"]
            nxt = state.get("Next")
            if kind in {"Task", "Map"}:
                task = _task_of(state)
                if task is not None:
                    sim.ran.append(task)
                if failing(task):
                    assert task is not None
                    failure = {"Error": error, "Cause": failure_cause(task, cause_bytes)}
                    catch = state["Catch"][0]
                    data = {**data, catch["ResultPath"][2:]: failure}
                    nxt = catch["Next"]
                elif state.get("ResultPath", "$") is not None:
                    result = {"status": 200}
                    data = {**data, state["ResultPath"][2:]: result} if state["ResultPath"] != "$" else result
            elif kind == "Parallel":
                inner = {} if state.get("InputPath", "$") is None else data
                raw = [run(branch, inner, top=False) for branch in state["Branches"]]
                sim.largest_result = max(sim.largest_result, size(raw))
                assert state["ResultSelector"] == {"failures.$": "$[*].failure"}
                selected = {"failures": [b["failure"] for b in raw if "failure" in b]}
                data = {**data, state["ResultPath"][2:]: selected}
            elif kind == "Choice":
                nxt = next((rule["Next"] for rule in state["Choices"] if _matches(rule, data)),
                           state["Default"])
            elif kind == "Pass":
                value = data if state.get("InputPath", "$") == "$" else _get(data, state["InputPath"])
                if "Parameters" in state:
                    value = _eval(state["Parameters"], value)
                if "Result" in state:
                    value = state["Result"]
                data = {**data, state["ResultPath"][2:]: value}
            sim.largest_state = max(sim.largest_state, size(data))
            if kind in ("Succeed", "Fail") or nxt is None:
                if top:
                    sim.end_state, sim.end_type = name, kind
                    if kind == "Fail":
                        sim.error = _path_or_value(state, "Error", data)
                        sim.cause = _path_or_value(state, "Cause", data)
                return data
            name = nxt

    run(definition, execution_input, top=True)
    return sim
