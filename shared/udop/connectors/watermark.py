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
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from udop.state.api import StateStore

__all__ = [
    "PENDING_TTL",
    "commit_pending",
    "committed_key",
    "decode",
    "encode",
    "read_committed",
    "record_pending",
]

#: pending watermarks live as long as a failed run can be redriven (Step Functions: 14 days)
PENDING_TTL = 15 * 86400.0


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


def _loaded_key(pipeline: str, run_id: str, extract_id: str, load_id: str) -> str:
    return f"udop:watermark-loaded:{pipeline}:{run_id}:{extract_id}:{load_id}"


def read_committed(state: StateStore, key: str) -> Any:
    return decode(state.get(key))


def batch_max(batch: pa.RecordBatch, column: str) -> Any:
    if batch.num_rows == 0:
        return None
    return pc.max(batch.column(column)).as_py()


def coerce(value: Any, type_: pa.DataType) -> Any:
    """``value`` (e.g. an ``initial`` watermark written as text) as a Python value of the column's type."""
    if value is None:
        return None
    try:
        return pa.scalar(value, type=type_).as_py()
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        try:
            return pa.scalar(value).cast(type_).as_py()
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"watermark {value!r} cannot be compared with a {type_} column") from exc


def filter_newer(batch: pa.RecordBatch, column: str, since: Any) -> pa.RecordBatch:
    """Rows whose ``column`` is greater than ``since`` (for connectors that cannot filter)."""
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
    return advanced
