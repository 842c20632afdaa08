"""The two functions the extract and load task handlers call for connectors:
``extract_to_parquet`` (source -> Parquet under the task's output URI, atomically, batch by batch)
and ``load_from_parquet`` (a manifest's Parquet -> target, then commit pending watermarks)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from udop import faults
from udop.connectors import watermark as wm
from udop.connectors.base import Connector, LoadEntry
from udop.connectors.registry import as_dict, get_connector
from udop.errors import ConfigError, FatalError, TaskTimeout
from udop.state.api import StateStore
from udop.tasks.contract import Manifest, TaskContext, TaskResult
from udop.tasks.datasets import schema_fingerprint

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

__all__ = [
    "commit_watermarks",
    "extract_to_parquet",
    "iter_parquet",
    "load_entry",
    "load_from_parquet",
    "recover_watermark",
    "schema_fingerprint",
    "state_for",
    "write_parquet",
]

PART_NAME = "part-00000.parquet"
#: keys of a source/target whose values are SQL or templates of their own: never ${...}-rendered
_NOT_RENDERED = ("query", "sql")


_default_states: dict[str, StateStore] = {}


def state_for(context: TaskContext) -> StateStore:
    """The state store a task of ``context`` uses (see ``_state``)."""
    return _state(context)


def _state(context: TaskContext) -> StateStore:
    """The executor's state store (``services["state"]``), else the one ``UDOP_STATE_URL`` names
    (default: SQLite under ``UDOP_HOME``), opened once per URL."""
    state = context.services.get("state") if context.services else None
    if state is not None:
        return state  # type: ignore[no-any-return]
    from udop.settings import get_settings
    from udop.state import open_state_store

    settings = get_settings()
    url = settings.state_url or f"sqlite:///{(settings.home / 'state.db').absolute().as_posix()}"
    if url not in _default_states:
        _default_states[url] = open_state_store(url)
    return _default_states[url]


def _base_dir(context: TaskContext) -> str | None:
    base = context.services.get("base_dir") if context.services else None
    return str(base) if base else None


def _connections(context: TaskContext) -> Mapping[str, Any]:
    spec = getattr(context.pipeline, "spec", None)
    return getattr(spec, "connections", None) or {}


def _render(context: TaskContext, spec: Mapping[str, Any]) -> dict[str, Any]:
    out = as_dict(spec)
    rest = {k: v for k, v in out.items() if k not in _NOT_RENDERED}
    try:
        rendered = context.render(rest)
    except ImportError:  # parameter rendering not available: take the values as written
        rendered = rest
    out.update(rendered)
    return out


def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _s3_client(context: TaskContext | None) -> Any:
    client = context.services.get("s3_client") if context is not None and context.services else None
    if client is None:
        import boto3

        client = boto3.client("s3")
    return client


def _conform(batch: pa.RecordBatch, schema: pa.Schema, where: str) -> pa.RecordBatch:
    import pyarrow as pa  # where used: a file load's ledger (load_entry, state_for) needs no pyarrow

    if batch.schema.equals(schema):
        return batch
    if set(batch.schema.names) - set(schema.names):
        new = sorted(set(batch.schema.names) - set(schema.names))
        raise FatalError(
            f"{where}: a later batch has columns {new} that the first batch did not have; "
            "give the source an explicit 'schema'"
        )
    columns = []
    for field in schema:
        if field.name in batch.schema.names:
            try:
                columns.append(batch.column(field.name).cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                have = batch.schema.field(field.name).type
                raise FatalError(
                    f"{where}: column {field.name!r} is {have} in a later batch but {field.type} "
                    "in the first; give the source an explicit 'schema'"
                ) from None
        else:
            columns.append(pa.nulls(batch.num_rows, type=field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def write_parquet(
    batches: Iterator[pa.RecordBatch],
    output_uri: str,
    *,
    schema: pa.Schema | None = None,
    where: str = "extract",
    context: TaskContext | None = None,
) -> Manifest:
    """Stream ``batches`` into ``<output_uri>/part-00000.parquet`` atomically: readers see the old
    output or the complete new one, never a part (local: temp dir + rename; S3: one PUT per file,
    then stale files of an earlier attempt are removed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    staging = (
        Path(tempfile.mkdtemp(prefix="udop-extract-"))
        if _is_s3(output_uri)
        else Path(f"{output_uri.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}")
    )
    staging.mkdir(parents=True, exist_ok=True)
    part = staging / PART_NAME
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for batch in batches:
            if writer is None:
                writer = pq.ParquetWriter(part, schema or batch.schema, compression="zstd")
            conformed = _conform(batch, writer.schema, where)
            if conformed.num_rows:
                writer.write_batch(conformed)
                rows += conformed.num_rows
        if writer is None:
            writer = pq.ParquetWriter(part, schema or pa.schema([]), compression="zstd")
        final_schema = writer.schema
        writer.close()
        writer = None
        size = part.stat().st_size
        if _is_s3(output_uri):
            _publish_s3(part, output_uri, context)
        else:
            _publish_local(staging, output_uri)
    finally:
        if writer is not None:
            writer.close()
        shutil.rmtree(staging, ignore_errors=True)
    uri = output_uri if output_uri.endswith("/") else output_uri + "/"
    return Manifest(
        uri=uri,
        rows=rows,
        bytes=size,
        schema_fingerprint=schema_fingerprint(final_schema),
        format="parquet",
        files=1,
    )


def _publish_local(staging: Path, output_uri: str) -> None:
    final = Path(output_uri.rstrip("/"))
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        trash = final.with_name(f"{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, final)


def _publish_s3(part: Path, output_uri: str, context: TaskContext | None) -> None:
    client = _s3_client(context)
    bucket, prefix = _split_s3(output_uri)
    prefix = prefix.rstrip("/") + "/"
    client.upload_file(str(part), bucket, prefix + PART_NAME)
    stale = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
        if o["Key"] != prefix + PART_NAME
    ]
    for i in range(0, len(stale), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in stale[i : i + 1000]]})


def iter_parquet(
    uri: str, *, batch_size: int = 65_536, context: TaskContext | None = None
) -> Iterator[pa.RecordBatch]:
    """Batches of every Parquet file at ``uri`` (a file, a folder, or an s3:// prefix), in name order.
    Yields one empty batch with the schema when there are no rows, so a writer still knows it."""
    if _is_s3(uri):
        client = _s3_client(context)
        bucket, prefix = _split_s3(uri)
        keys = sorted(
            o["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])
            if o["Key"].endswith(".parquet")
        )
        with tempfile.TemporaryDirectory(prefix="udop-load-") as tmp:
            for i, key in enumerate(keys):
                local = Path(tmp) / f"{i}.parquet"
                client.download_file(bucket, key, str(local))
                yield from _iter_files([local], batch_size, last=i == len(keys) - 1)
                local.unlink()
        return
    path = Path(uri)
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if not files:
        raise FatalError(f"no Parquet files at {uri}")
    yield from _iter_files(files, batch_size, last=True)


def _iter_files(files: list[Path], batch_size: int, *, last: bool) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = None
    any_rows = False
    for f in files:
        pf = pq.ParquetFile(f)
        schema = pf.schema_arrow
        for batch in pf.iter_batches(batch_size=batch_size):
            any_rows = True
            yield batch
    if last and not any_rows and schema is not None:
        yield pa.RecordBatch.from_pylist([], schema=schema)


def _until_cancelled(
    context: TaskContext, batches: Iterator[pa.RecordBatch], where: str
) -> Iterator[pa.RecordBatch]:
    """Stop between batches once the attempt timed out or the run was cancelled; a load's
    transaction then rolls back, an extract's temporary output is removed."""
    for batch in batches:
        if context.cancelled:
            raise TaskTimeout(
                f"task {context.task_id!r}: interrupted ({where}) because it was cancelled or timed out"
            )
        yield batch


def _incremental_key(context: TaskContext, connector: Connector) -> str | None:
    inc = connector.settings.incremental
    if inc is None:
        return None
    return wm.committed_key(context.pipeline_name, context.task_id, inc.key)


def _renewing(
    state: StateStore, keys: list[str], run_id: str, ttl: float, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Renew this run's watermark leases while batches flow (at most every minute)."""
    last = time.monotonic()
    for batch in batches:
        if keys and time.monotonic() - last > 60:
            for key in keys:
                wm.renew_lease(state, key, run_id, ttl=ttl)
            last = time.monotonic()
        yield batch


def _ledger_has(context: TaskContext, state: StateStore, run_id: str, extract_id: str, load_id: str) -> bool:
    """Whether load ``load_id`` of run ``run_id`` committed: its marker in the state store, or its
    entry in the target's load ledger (which commits with the rows, so it also covers a crash
    between the target's commit and the marker)."""
    if state.get(wm.loaded_key(context.pipeline_name, run_id, extract_id, load_id)):
        return True
    task = context.pipeline.task(load_id)
    target = getattr(task, "target", None)
    if target is None or not hasattr(target, "model_dump"):
        return False
    try:
        connector = get_connector(
            _render(context, target.model_dump(exclude_unset=True)),
            connections=_connections(context),
            state=state,
            base_dir=_base_dir(context),
        )
    except (ConfigError, FatalError, ValueError):
        return False  # not a connector target (a file target): only its marker counts
    with connector:
        if not connector.keeps_ledger:
            return False
        entry = LoadEntry(pipeline=context.pipeline_name, run_id=run_id, task_id=load_id)
        return connector.loaded(entry) is not None


def recover_watermark(context: TaskContext, state: StateStore, key: str, previous_run: str) -> str:
    """Settle the range run ``previous_run`` read for this extract and left uncommitted (it crashed
    or failed): when every load below committed it (the ledger says so), advance the watermark to
    it; when none did, hand the range to this run and mark the old run's range abandoned, so
    resuming that run cannot load it again; when only some did, refuse. Returns what it did."""
    name = context.pipeline_name
    pending_text = state.get(wm.pending_key(name, previous_run, context.task_id))
    if pending_text is None:
        return "nothing pending"
    pending = json.loads(pending_text)
    if pending["key"] != key:
        return "nothing pending"
    loads = wm.loads_below(context.pipeline, context.task_id)
    done = [lid for lid in loads if _ledger_has(context, state, previous_run, context.task_id, lid)]
    if loads and len(done) == len(loads):
        wm.advance(state, key, pending["value"])
        state.delete(wm.pending_key(name, previous_run, context.task_id))
        return f"run {previous_run} had loaded its range; watermark advanced"
    if done:
        raise FatalError(
            f"task {context.task_id!r}: run {previous_run} stopped after loading its rows into "
            f"{', '.join(done)} but not {', '.join(sorted(set(loads) - set(done)))}; resume it "
            f"with --resume {previous_run} before starting a new run"
        )
    state.set(wm.abandoned_key(name, previous_run, context.task_id), context.run_id, ttl=wm.PENDING_TTL)
    state.delete(wm.pending_key(name, previous_run, context.task_id))
    return f"run {previous_run} had not loaded its range; this run reads it again"


def dataset_of(context: TaskContext, spec: Mapping[str, Any]) -> str:
    """The lineage URI of the source or target ``spec`` (see ``udop.lineage``): the connector's
    ``dataset()``, with any secret it resolved masked. Opens no connection."""
    connector = get_connector(
        _render(context, spec), connections=_connections(context), state=_state(context),
        base_dir=_base_dir(context),
    )
    try:
        return connector.lineage_dataset().uri
    finally:
        connector.close()


def extract_to_parquet(context: TaskContext, source: Mapping[str, Any], output_uri: str) -> Manifest:
    """Read ``source`` through its connector and write it as Parquet at ``output_uri``.

    With ``incremental: {column: ...}`` the run first takes the watermark's lease (a second run of
    the pipeline is refused, or waits ``incremental.wait``), settles a range an earlier run left
    uncommitted (``recover_watermark``), then reads only rows newer than the committed watermark;
    the new watermark is recorded as pending for this run and committed by the load(s) downstream.
    """
    state = _state(context)
    connector = get_connector(
        _render(context, source), connections=_connections(context), state=state, base_dir=_base_dir(context)
    )
    with connector:
        inc = connector.settings.incremental
        key = _incremental_key(context, connector)
        if key is not None and inc is not None:
            previous = wm.acquire_lease(state, key, context.run_id, ttl=inc.lease, wait=inc.wait)
            if previous is not None:
                recover_watermark(context, state, key, previous)
        try:
            manifest, high, since = _extract(context, connector, state, key, output_uri)
        except BaseException:
            if key is not None:
                mine = state.get(wm.pending_key(context.pipeline_name, context.run_id, context.task_id))
                wm.release_lease(state, key, context.run_id, committed=mine is None)
            raise
        if key is not None and high is not None and high != since:
            wm.record_pending(
                state,
                pipeline=context.pipeline_name,
                run_id=context.run_id,
                task_id=context.task_id,
                key=key,
                value=high,
                previous=since,
            )
        elif key is not None:
            wm.release_lease(state, key, context.run_id, committed=True)  # nothing new: nothing to commit
        connector.acknowledge()
    return manifest


def _extract(
    context: TaskContext, connector: Connector, state: StateStore, key: str | None, output_uri: str
) -> tuple[Manifest, Any, Any]:
    inc = connector.settings.incremental
    since = wm.read_committed(state, key) if key else None
    if inc is not None and since is None:
        since = inc.initial
    high: list[Any] = [since]

    def batches() -> Iterator[pa.RecordBatch]:
        for raw in _until_cancelled(context, connector.read(since=since), connector.describe()):
            batch = raw
            if inc is not None:
                if inc.column not in batch.schema.names:
                    connector.fail(
                        f"incremental column {inc.column!r} is not in the data "
                        f"(columns: {', '.join(batch.schema.names)})",
                        retryable=False,
                    )
                if since is not None and not connector.pushes_down_incremental:
                    batch = wm.filter_newer(batch, inc.column, since)
                if high[0] is since and since is not None:
                    try:
                        high[0] = wm.coerce(since, batch.schema.field(inc.column).type)
                    except ValueError as exc:
                        connector.fail(f"incremental: {exc}", retryable=False)
                top = wm.batch_max(batch, inc.column)
                if top is not None and (high[0] is None or top > high[0]):
                    high[0] = top
            yield batch

    keys = [key] if key else []
    ttl = inc.lease if inc is not None else wm.LEASE_TTL
    stream = _renewing(state, keys, context.run_id, ttl, batches())
    breaker = connector.breaker()
    if breaker is not None:
        with breaker.guard():
            manifest = write_parquet(
                stream, output_uri, schema=connector.schema(), where=connector.describe(), context=context
            )
    else:
        manifest = write_parquet(
            stream, output_uri, schema=connector.schema(), where=connector.describe(), context=context
        )
    end = connector.position()
    if end is not None:
        high[0] = end
    return manifest, high[0], since


def commit_watermarks(context: TaskContext, *, state: StateStore | None = None) -> list[dict[str, Any]]:
    """Call from a ``load`` task after its write has committed (``load_from_parquet`` does): marks
    this load done for the incremental extracts upstream of it, and advances each extract's
    watermark once every load downstream of it is done. Loads that write files themselves must call
    it too, or the watermark of an extract feeding them never moves. Returns what advanced."""
    if getattr(context.pipeline, "spec", None) is None:
        return []
    return wm.commit_pending(
        state or _state(context), pipeline=context.pipeline, run_id=context.run_id, load_id=context.task_id
    )


def _refuse_abandoned(context: TaskContext, state: StateStore) -> None:
    """A run whose uncommitted range a later run took over (``recover_watermark``) must not load
    it as well: resuming it would load those rows twice."""
    if getattr(context.pipeline, "spec", None) is None or context.task_id not in {
        t.id for t in context.pipeline.spec.tasks
    }:
        return
    for extract_id in wm.extracts_above(context.pipeline, context.task_id):
        taker = state.get(wm.abandoned_key(context.pipeline_name, context.run_id, extract_id))
        if taker:
            raise FatalError(
                f"task {context.task_id!r}: run {taker} already read the rows of extract "
                f"{extract_id!r} again after this run stopped, so this run must not load them; "
                "start a new run instead of resuming this one"
            )


def load_entry(context: TaskContext, manifest: Manifest, *, state: StateStore | None = None) -> LoadEntry:
    """This load's ledger entry: the run, the task (and ``foreach`` item), its input and the
    watermark ranges of this run's extracts upstream of it."""
    item = context.output_override.rstrip("/").rsplit("/", 1)[-1] if context.output_override else ""
    ranges: list[dict[str, Any]] = []
    if getattr(context.pipeline, "spec", None) is not None:
        ranges = wm.pending_upstream(
            state or _state(context),
            pipeline=context.pipeline,
            run_id=context.run_id,
            load_id=context.task_id,
        )
    return LoadEntry(
        pipeline=context.pipeline_name,
        run_id=context.run_id,
        task_id=context.task_id,
        item=item,
        input=manifest.uri,
        watermarks=json.dumps(ranges, sort_keys=True),
    )


def load_from_parquet(
    context: TaskContext,
    target: Mapping[str, Any],
    manifest: Manifest,
    inputs: Mapping[str, TaskResult],
    *,
    batches: Iterable[pa.RecordBatch] | None = None,
) -> dict[str, Any]:
    """Write the dataset ``manifest`` points at into ``target``; commit upstream watermarks after.
    ``batches``: that dataset's rows already read (a fused transform's query result, ``manifest`` its
    view), written instead of reading ``manifest``'s Parquet.

    The connector's ``write_once`` commits once (or raises with the target unchanged); a target
    with a load ledger commits this load's entry with the rows, and a load that finds its entry
    (a retry or ``--resume`` after a crash past the commit) writes nothing and reports the rows
    of the first time. Watermarks move only after the write returned (or the entry was found).
    """
    state = _state(context)
    connector = get_connector(
        _render(context, target), connections=_connections(context), state=state, base_dir=_base_dir(context)
    )
    entry = load_entry(context, manifest, state=state)
    ranges = json.loads(entry.watermarks)
    _refuse_abandoned(context, state)
    lease_keys = [r["key"] for r in ranges]
    for key in lease_keys:
        wm.renew_lease(state, key, context.run_id)
    try:
        with connector:
            mode, keys = connector.resolve_mode(None, None)
            batches = _renewing(
                state,
                lease_keys,
                context.run_id,
                wm.LEASE_TTL,
                _until_cancelled(
                    context,
                    iter_parquet(manifest.uri, context=context) if batches is None else iter(batches),
                    connector.describe(),
                ),
            )
            breaker = connector.breaker()
            if breaker is not None:
                with breaker.guard():
                    rows, found = connector.write_once(batches, mode, keys, entry)
            else:
                rows, found = connector.write_once(batches, mode, keys, entry)
    except BaseException:
        # the write rolled back: the next run may take the range (after checking the ledger)
        for key in lease_keys:
            wm.release_lease(state, key, context.run_id, committed=False)
        raise
    faults.point("load-committed")
    advanced = commit_watermarks(context, state=state)
    faults.point("watermark-committed")
    return {
        "rows_written": rows,
        "connection": connector.connection,
        "mode": mode,
        "watermarks_committed": advanced,
        "ledger": "already loaded" if found else ("recorded" if connector.keeps_ledger else "none"),
    }
