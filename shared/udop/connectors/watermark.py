"""Incremental extraction: watermarks that advance only after the load that consumes them commits.

The extract records the new watermark as *pending* under the run id; each load downstream of the
extract marks itself done after its write committed; when every load downstream has done so, the
committed watermark moves forward (compare-and-set, never backwards). A run killed between the
extract and the load leaves the committed watermark where it was, so the next attempt or run reads
the same rows again — nothing lost; an ``upsert`` (or the load's all-or-nothing transaction)
means nothing duplicated.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from udop import procid
from udop.errors import FatalError
from udop.state.api import StateStore

if TYPE_CHECKING:  # imported where used: the ledger and lease functions run without pyarrow
    import pyarrow as pa

__all__ = [
    "LEASE_TTL",
    "PENDING_TTL",
    "WatermarkBusy",
    "abandoned_key",
    "acquire_lease",
    "advance",
    "commit_pending",
    "committed_key",
    "decode",
    "encode",
    "extracts_above",
    "loaded_key",
    "loads_below",
    "pending_key",
    "pending_upstream",
    "read_committed",
    "record_pending",
    "release_lease",
    "renew_lease",
]

#: pending watermarks live as long as a failed run can be redriven (Step Functions: 14 days)
PENDING_TTL = 15 * 86400.0


#: how long a run holds a watermark's lease without renewing it (extracts and loads renew it as they
#: go); a holder that crashed on another machine blocks the watermark at most this long
LEASE_TTL = 3600.0


class WatermarkBusy(FatalError):
    """Another live run holds the watermark's lease: reading now would load its range twice."""


def _lease_key(key: str) -> str:
    return f"udop:watermark-lease:{key}"


def _owner() -> str:
    # the process doing the run's work now (pid, start time, host, boot): see udop.procid
    return procid.current()


def _owner_dead(owner: str) -> bool:
    """True only when ``owner`` is a process of this machine that no longer exists."""
    return bool(owner) and procid.dead(owner)


def acquire_lease(
    state: StateStore, key: str, run_id: str, *, ttl: float = LEASE_TTL, wait: float = 0.0
) -> str | None:
    """Take the lease on watermark ``key`` for ``run_id`` (again, when the run already held it).

    Free when nobody holds it, when its holder released it, when the lease expired, or when the
    holder was a process on this machine that is gone. Returns the run that held it before when
    that was another run which never committed (its range may need recovery, see
    ``io.recover_watermark``); raises ``WatermarkBusy`` naming the holder when it stays held for
    ``wait`` seconds."""
    lease_key = _lease_key(key)
    deadline = time.monotonic() + wait
    while True:
        text = state.get(lease_key)
        held = json.loads(text) if text else None
        now = time.time()
        free = (
            held is None
            or held["run_id"] == run_id
            or held["until"] <= now
            or _owner_dead(held.get("owner", ""))
        )
        if free:
            record = json.dumps({"run_id": run_id, "owner": _owner(), "until": now + ttl})
            if state.compare_and_set(lease_key, text, record, ttl=PENDING_TTL):
                return held["run_id"] if held is not None and held["run_id"] != run_id else None
            continue
        assert held is not None
        if time.monotonic() >= deadline:
            until = dt.datetime.fromtimestamp(held["until"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            raise WatermarkBusy(
                f"watermark {key!r} is held by run {held['run_id']} "
                f"({procid.describe(held.get('owner', '?'))}, lease until {until}); wait for that run "
                f"to finish, or if it died resume it with --resume {held['run_id']}"
            )
        time.sleep(0.2)


def renew_lease(state: StateStore, key: str, run_id: str, *, ttl: float = LEASE_TTL) -> None:
    """Push the lease's expiry on while ``run_id`` still holds it, naming this process (the one doing
    the run's work now) as its owner: when a run's tasks run in different processes (a load after
    the extract, a resumed run), the lease is dead when the process that last worked on it died."""
    lease_key = _lease_key(key)
    text = state.get(lease_key)
    held = json.loads(text) if text else None
    if held is not None and held["run_id"] == run_id:
        record = json.dumps({**held, "owner": _owner(), "until": time.time() + ttl})
        state.compare_and_set(lease_key, text, record, ttl=PENDING_TTL)


def release_lease(state: StateStore, key: str, run_id: str, *, committed: bool) -> None:
    """Give the lease up. After the watermark committed nothing is left to check; otherwise the
    record stays (expired) so the next run checks whether this run's range was loaded after all."""
    lease_key = _lease_key(key)
    text = state.get(lease_key)
    held = json.loads(text) if text else None
    if held is None or held["run_id"] != run_id:
        return
    if committed:
        state.delete_if_equals(lease_key, text or "")
    else:
        state.compare_and_set(lease_key, text, json.dumps({**held, "until": 0}), ttl=PENDING_TTL)


def encode(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return json.dumps({"t": "datetime", "v": value.isoformat()})
    if isinstance(value, dt.date):
        return json.dumps({"t": "date", "v": value.isoformat()})
    if isinstance(value, Decimal):
        return json.dumps({"t": "decimal", "v": str(value)})
    if isinstance(value, bytes):
        return json.dumps({"t": "bytes", "v": value.hex()})
    return json.dumps({"t": "plain", "v": value})


def decode(text: str | None) -> Any:
    if text is None:
        return None
    data = json.loads(text)
    kind, value = data["t"], data["v"]
    if kind == "datetime":
        return dt.datetime.fromisoformat(value)
    if kind == "date":
        return dt.date.fromisoformat(value)
    if kind == "decimal":
        return Decimal(value)
    if kind == "bytes":
        return bytes.fromhex(value)
    return value


def committed_key(pipeline: str, task_id: str, custom: str | None = None) -> str:
    return f"udop:watermark:{pipeline}:{custom or task_id}"


def _pending_key(pipeline: str, run_id: str, task_id: str) -> str:
    return f"udop:watermark-pending:{pipeline}:{run_id}:{task_id}"


def pending_key(pipeline: str, run_id: str, task_id: str) -> str:
    return _pending_key(pipeline, run_id, task_id)


def abandoned_key(pipeline: str, run_id: str, extract_id: str) -> str:
    return f"udop:watermark-abandoned:{pipeline}:{run_id}:{extract_id}"


def loaded_key(pipeline: str, run_id: str, extract_id: str, load_id: str) -> str:
    return _loaded_key(pipeline, run_id, extract_id, load_id)


def _loaded_key(pipeline: str, run_id: str, extract_id: str, load_id: str) -> str:
    return f"udop:watermark-loaded:{pipeline}:{run_id}:{extract_id}:{load_id}"


def read_committed(state: StateStore, key: str) -> Any:
    return decode(state.get(key))


def batch_max(batch: pa.RecordBatch, column: str) -> Any:
    if batch.num_rows == 0:
        return None
    # imported here: it costs ~0.2 s to import, and most runs never get here
    import pyarrow.compute as pc

    return pc.max(batch.column(column)).as_py()


def coerce(value: Any, type_: pa.DataType) -> Any:
    """``value`` (e.g. an ``initial`` watermark written as text) as a Python value of the column's type."""
    if value is None:
        return None
    import pyarrow as pa

    try:
        return pa.scalar(value, type=type_).as_py()
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        try:
            return pa.scalar(value).cast(type_).as_py()
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"watermark {value!r} cannot be compared with a {type_} column") from exc


def filter_newer(batch: pa.RecordBatch, column: str, since: Any) -> pa.RecordBatch:
    """Rows whose ``column`` is greater than ``since`` (for connectors that cannot filter)."""
    import pyarrow as pa
    import pyarrow.compute as pc  # see batch_max

    col = batch.column(column)
    mask = pc.greater(col, pa.scalar(coerce(since, col.type), type=col.type))
    return batch.filter(pc.fill_null(mask, False))


def record_pending(
    state: StateStore, *, pipeline: str, run_id: str, task_id: str, key: str, value: Any, previous: Any
) -> dict[str, Any]:
    record = {"key": key, "value": encode(value), "previous": encode(previous)}
    state.set(_pending_key(pipeline, run_id, task_id), json.dumps(record), ttl=PENDING_TTL)
    return record


def _advance(state: StateStore, key: str, value_text: str) -> bool:
    """Move the committed watermark to ``value`` unless it is already at or past it."""
    new = decode(value_text)
    while True:
        current_text = state.get(key)
        current = decode(current_text)
        if current is not None and not current < new:
            return False
        if state.compare_and_set(key, current_text, value_text):
            return True


def _tasks(pipeline: Any) -> dict[str, Any]:
    return {t.id: t for t in pipeline.spec.tasks}


def _ancestors(tasks: dict[str, Any], task_id: str) -> set[str]:
    seen: set[str] = set()
    todo = list(tasks[task_id].depends_on)
    while todo:
        tid = todo.pop()
        if tid in seen or tid not in tasks:
            continue
        seen.add(tid)
        todo.extend(tasks[tid].depends_on)
    return seen


def extracts_above(pipeline: Any, load_id: str) -> list[str]:
    """The tasks upstream of ``load_id`` (extracts among them), sorted."""
    return sorted(_ancestors(_tasks(pipeline), load_id))


def advance(state: StateStore, key: str, value_text: str) -> bool:
    """Move the committed watermark forward to ``value_text`` (encoded); never backwards."""
    return _advance(state, key, value_text)


def loads_below(pipeline: Any, extract_id: str) -> list[str]:
    """The load tasks downstream of ``extract_id``, sorted."""
    return sorted(_loads_below(_tasks(pipeline), extract_id))


def _loads_below(tasks: dict[str, Any], extract_id: str) -> set[str]:
    return {tid for tid, t in tasks.items() if t.type == "load" and extract_id in _ancestors(tasks, tid)}


def pending_upstream(state: StateStore, *, pipeline: Any, run_id: str, load_id: str) -> list[dict[str, Any]]:
    """The watermark ranges ({key, previous, value}, encoded) this run's extracts upstream of load
    ``load_id`` recorded as pending: what the load consumes, for its ledger entry."""
    name = str(pipeline.metadata.name)
    tasks = _tasks(pipeline)
    if load_id not in tasks:
        return []
    found = []
    for extract_id in sorted(_ancestors(tasks, load_id)):
        text = state.get(_pending_key(name, run_id, extract_id))
        if text is not None:
            found.append({"extract": extract_id, **json.loads(text)})
    return found


def commit_pending(
    state: StateStore, *, pipeline: Any, run_id: str, load_id: str, extract_ids: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """After load ``load_id`` committed: advance the watermarks of the extracts upstream of it whose
    every downstream load has now committed. Returns what advanced (key and value)."""
    name = str(pipeline.metadata.name)
    tasks = _tasks(pipeline)
    upstream = set(extract_ids) if extract_ids is not None else _ancestors(tasks, load_id)
    advanced: list[dict[str, Any]] = []
    for extract_id in sorted(upstream):
        pending_text = state.get(_pending_key(name, run_id, extract_id))
        if pending_text is None:
            continue
        pending = json.loads(pending_text)
        state.set(_loaded_key(name, run_id, extract_id, load_id), "1", ttl=PENDING_TTL)
        loads = _loads_below(tasks, extract_id) if extract_id in tasks else {load_id}
        if all(state.get(_loaded_key(name, run_id, extract_id, lid)) for lid in loads):
            if _advance(state, pending["key"], pending["value"]):
                advanced.append({"key": pending["key"], "value": json.loads(pending["value"])["v"]})
            state.delete(_pending_key(name, run_id, extract_id))
            release_lease(state, pending["key"], run_id, committed=True)
    return advanced
