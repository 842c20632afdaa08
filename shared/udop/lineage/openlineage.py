"""OpenLineage events: START, COMPLETE, FAIL and ABORT for each run and each task attempt, sent through the
``openlineage-python`` client with the transport it is configured with (``OPENLINEAGE_URL``,
``OPENLINEAGE_CONFIG`` / ``openlineage.yml``, ``OPENLINEAGE__TRANSPORT__*``: HTTP, file, console, Kafka).

Off by default: ``UDOP_OPENLINEAGE=1`` turns it on (the client is imported only then). The job of a
run is the pipeline (``namespace`` from ``OPENLINEAGE_NAMESPACE``, default ``udop``); the job of a task
is ``<pipeline>.<task>``, and its events carry the parent run facet naming the run's. Run ids are
UUIDs derived from the udop ids (``run_uuid``, ``task_uuid``), so the task runner on Lambda and the
run-events Lambda name the same runs without sharing state.

A task's COMPLETE event carries its inputs and outputs (the run's own dataset and what a load wrote
outside the run) named as ``udop.lineage`` names them, with schema, column-lineage, row-count
(``outputStatistics``) and data-quality (``dataQualityAssertions``, from the task's checks) facets;
a FAIL event carries the error message and the checks that failed. Every name and message passes the
redactor first (``udop.lineage.masking``).

Emission never fails a task or a run: an error is logged and counted (``stats``). An executor hands
its events to one sender thread (building and serialising an event costs the client about a
millisecond), and the end of a run waits until its events are sent (``FLUSH_SECONDS`` at most).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import queue
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from udop.lineage.masking import masked_dataset, masked_text
from udop.lineage.naming import Dataset
from udop.settings import ProcessSettings, load_settings

__all__ = ["ENV", "RunListener", "emit", "enabled", "listen", "recorded", "reset_client", "run_uuid", "stats",
           "task_uuid"]

ENV = "UDOP_OPENLINEAGE"
#: uuid5 namespace of udop's OpenLineage run ids (fixed: ids must be the same in every process)
_UUID_NS = uuid.UUID("7c0f6a52-4d0e-5b8e-9f3b-0d6a0c1e2f23")
_RUN_STATES = {"running": "START", "succeeded": "COMPLETE", "failed": "FAIL", "cancelled": "ABORT"}

_log = logging.getLogger("udop.lineage.openlineage")
_lock = threading.Lock()
_client: list[Any] = []  # the one client of this process, made on first use
#: events sent and events that could not be sent, in this process
stats: dict[str, int] = {"emitted": 0, "failed": 0}
#: schema fingerprint -> [(column, type)] of a dataset read once (a load writes what it read)
_schemas: dict[str, list[tuple[str, str]]] = {}


def enabled() -> bool:
    return (load_settings(ProcessSettings).openlineage or "").strip().lower() in ("1", "true", "yes", "on")


def job_namespace() -> str:
    return load_settings(ProcessSettings).openlineage_namespace or "udop"


def run_uuid(pipeline: str, run_id: str) -> str:
    return str(uuid.uuid5(_UUID_NS, f"run/{pipeline}/{run_id}"))


def task_uuid(pipeline: str, run_id: str, task_id: str, attempt: int) -> str:
    return str(uuid.uuid5(_UUID_NS, f"task/{pipeline}/{run_id}/{task_id}/{attempt}"))


def _get_client() -> Any:
    if not _client:
        with _lock:
            if not _client:
                from openlineage.client import OpenLineageClient

                _client.append(OpenLineageClient())
    return _client[0]


def reset_client() -> None:
    """Forget the client: the next event builds one from the configuration as it is then."""
    with _lock:
        old = _client.pop() if _client else None
    if old is not None:
        try:
            old.close()
        except Exception as exc:  # closing a transport that failed must not stop anything either
            _log.debug("OpenLineage: closing the client: %s", exc)


def emit(event: Any) -> bool:
    """Send one event; False (logged, counted) when it could not be sent."""
    try:
        _get_client().emit(event)
    except Exception as exc:  # any transport error: lineage never fails the work it describes
        stats["failed"] += 1
        hint = " (install udop[openlineage])" if isinstance(exc, ImportError) else ""
        _log.warning("OpenLineage: a %s event of %s was not sent%s: %s", getattr(event, "eventType", "?"),
                     getattr(getattr(event, "job", None), "name", "?"), hint, masked_text(str(exc)))
        return False
    stats["emitted"] += 1
    return True


# -------------------------------------------------------------------------------- events


def _now(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).isoformat()


def _engine_facets() -> dict[str, Any]:
    return {"processing_engine": _engine()}


@functools.cache
def _engine() -> Any:
    from importlib.metadata import PackageNotFoundError, version

    from openlineage.client.constants import __version__ as client_version
    from openlineage.client.facet_v2 import processing_engine_run

    try:
        udop_version = version("udop")
    except PackageNotFoundError:
        udop_version = "unknown"
    return processing_engine_run.ProcessingEngineRunFacet(
        version=udop_version, name="udop", openlineageAdapterVersion=client_version)


def _job(name: str, kind: str) -> Any:
    from openlineage.client.event_v2 import Job
    from openlineage.client.facet_v2 import job_type_job

    return Job(namespace=job_namespace(), name=name, facets={
        "jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="UDOP", jobType=kind)})


def _error_facet(error: str | None) -> dict[str, Any]:
    if not error:
        return {}
    from openlineage.client.facet_v2 import error_message_run

    return {"errorMessage": error_message_run.ErrorMessageRunFacet(message=masked_text(error),
                                                                   programmingLanguage="python")}


def run_event(event_type: str, pipeline: str, run_id: str, *, logical_date: datetime | str | None = None,
              error: str | None = None, at: datetime | None = None) -> Any:
    """The event of a run (the pipeline's job) moving to ``event_type``."""
    from openlineage.client.event_v2 import Run, RunEvent, RunState
    from openlineage.client.facet_v2 import nominal_time_run

    facets = _engine_facets()
    if logical_date is not None:
        when = logical_date.isoformat() if isinstance(logical_date, datetime) else str(logical_date)
        facets["nominalTime"] = nominal_time_run.NominalTimeRunFacet(nominalStartTime=when)
    facets.update(_error_facet(error))
    return RunEvent(eventType=RunState[event_type], eventTime=_now(at),
                    run=Run(run_uuid(pipeline, run_id), facets), job=_job(pipeline, "PIPELINE"),
                    inputs=[], outputs=[])


def task_event(event_type: str, pipeline: str, run_id: str, task_id: str, attempt: int, *,
               result: Any = None, upstream: Sequence[Any] = (), checks: Sequence[Any] = (),
               error: str | None = None, at: datetime | None = None) -> Any:
    """The event of a task attempt moving to ``event_type``. ``result`` (a ``TaskResult``) gives a
    COMPLETE event its datasets; before it, ``upstream`` (the manifests of its inputs) names what it
    will read. ``checks``: the quality results of a failed attempt."""
    from openlineage.client.event_v2 import Run, RunEvent, RunState
    from openlineage.client.facet_v2 import parent_run

    parent_id = run_uuid(pipeline, run_id)
    facets = _engine_facets()
    facets["parent"] = parent_run.ParentRunFacet(
        run=parent_run.Run(runId=parent_id), job=parent_run.Job(namespace=job_namespace(), name=pipeline),
        root=parent_run.Root(run=parent_run.RootRun(runId=parent_id),
                             job=parent_run.RootJob(namespace=job_namespace(), name=pipeline)))
    facets.update(_error_facet(error))
    if result is not None:
        inputs, outputs = _datasets(result)
        checks = tuple(result.checks) or tuple(checks)
    else:
        inputs, outputs = _inputs([m.uri for m in upstream if m is not None]), []
    if checks:
        _add_assertions(inputs, outputs, checks)
    return RunEvent(eventType=RunState[event_type], eventTime=_now(at),
                    run=Run(task_uuid(pipeline, run_id, task_id, attempt), facets),
                    job=_job(f"{pipeline}.{task_id}", "TASK"), inputs=inputs, outputs=outputs)


def _dataset(uri: str) -> Dataset | None:
    if uri.startswith("task:"):
        return None  # an upstream that wrote no dataset (a value): nothing to name
    return masked_dataset(Dataset.parse(uri))


def _inputs(uris: Sequence[str]) -> list[Any]:
    from openlineage.client.event_v2 import InputDataset

    found = []
    for uri in uris:
        ds = _dataset(uri)
        if ds is not None:
            found.append(InputDataset(namespace=ds.namespace, name=ds.name, facets={}, inputFacets={}))
    return found


def _datasets(result: Any) -> tuple[list[Any], list[Any]]:
    from openlineage.client.event_v2 import OutputDataset
    from openlineage.client.facet_v2 import column_lineage_dataset as cl
    from openlineage.client.facet_v2 import output_statistics_output_dataset as stats_facet

    inputs = _inputs(list(result.inputs))
    outputs = []
    fields: list[tuple[str, str]] | None = None
    manifests = ([result.output] if result.output is not None else []) + list(result.written)
    for n, manifest in enumerate(manifests):
        ds = _dataset(manifest.uri)
        if ds is None:
            continue
        facets: dict[str, Any] = {}
        own = n == 0 and result.output is not None
        known = _schema_of(manifest) if own or fields is None else fields
        if known is None and own and result.columns:
            known = [(c, "") for c in result.columns]
        if known:
            fields = known
            facets["schema"] = _schema_facet(known)
        lineage: dict[str, Any] = {}
        if own and result.columns:
            for column, sources in result.columns.items():
                found = [(_dataset(str(src)), str(col)) for src, col in sources]
                lineage[column] = cl.Fields(inputFields=[
                    cl.InputField(namespace=d.namespace, name=d.name, field=c)
                    for d, c in found if d is not None])
        elif not own and known and len(inputs) == 1:
            # a load writes the columns it read, one for one
            src = inputs[0]
            lineage = {c: cl.Fields(inputFields=[cl.InputField(
                namespace=src.namespace, name=src.name, field=c,
                transformations=[cl.Transformation(type="DIRECT", subtype="IDENTITY")])]) for c, _ in known}
        if lineage:
            facets["columnLineage"] = cl.ColumnLineageDatasetFacet(fields=lineage)
        out_facets: dict[str, Any] = {}
        if manifest.rows is not None or manifest.bytes is not None:
            out_facets["outputStatistics"] = stats_facet.OutputStatisticsOutputDatasetFacet(
                rowCount=manifest.rows, size=manifest.bytes, fileCount=manifest.files)
        outputs.append(OutputDataset(namespace=ds.namespace, name=ds.name, facets=facets,
                                     outputFacets=out_facets))
    return inputs, outputs


def _schema_facet(fields: Sequence[tuple[str, str]]) -> Any:
    from openlineage.client.facet_v2 import schema_dataset

    return schema_dataset.SchemaDatasetFacet(fields=[
        schema_dataset.SchemaDatasetFacetFields(name=name, type=kind or None) for name, kind in fields])


def _schema_of(manifest: Any) -> list[tuple[str, str]] | None:
    """Column names and types of a dataset: kept by schema fingerprint, read once from a local Parquet
    footer. An object-store dataset is not read for this (a request per event); None then."""
    key = manifest.schema_fingerprint
    if key and key in _schemas:
        return _schemas[key]
    path = manifest.uri
    if "://" in path and not path.startswith("file://"):
        return None
    path = path.removeprefix("file://")
    try:
        import pyarrow.parquet as pq

        if os.path.isdir(path):
            first = next((e.path for e in sorted(os.scandir(path), key=lambda e: e.name)
                          if e.is_file() and e.name.endswith(".parquet")), None)
            if first is None:
                return None
            path = first
        schema = pq.read_schema(path)
    except (OSError, ValueError, ImportError):
        return None
    fields = [(f.name, str(f.type)) for f in schema]
    if key:
        _schemas[key] = fields
    return fields


def _add_assertions(inputs: list[Any], outputs: list[Any], checks: Sequence[Any]) -> None:
    """The checks as a data-quality facet: on the dataset checked, the task's first input (a validate
    task's data), else on its output (an extract that checks what it read)."""
    from openlineage.client.facet_v2 import data_quality_assertions_dataset as dq

    facet = dq.DataQualityAssertionsDatasetFacet(assertions=[
        dq.Assertion(assertion=masked_text(str(c.rule)), success=bool(c.passed), severity=c.severity,
                     actual=str(c.failing_rows) if not c.passed else None,
                     description=masked_text(c.message) if c.message else None)
        for c in checks])
    if inputs:
        inputs[0].inputFacets["dataQualityAssertions"] = facet
    elif outputs:
        outputs[0].facets["dataQualityAssertions"] = facet


def _safely(what: str, build: Callable[..., Any], *args: Any, **kw: Any) -> None:
    try:
        event = build(*args, **kw)
    except Exception as exc:  # a bug here must not fail the task either
        stats["failed"] += 1
        _log.warning("OpenLineage: the %s event could not be built: %s", what, masked_text(str(exc)))
        return
    emit(event)


# -------------------------------------------------------------------------------- where events start


class RunListener:
    """An executor's ``on_event`` that also sends the run's OpenLineage events (``listen``)."""

    def __init__(self, notify: Callable[[Any], None], store: Any, pipeline: Any, run_id: str, *,
                 logical_date: datetime | None, results: Mapping[str, Any]) -> None:
        self.notify = notify
        self.store = store
        self.pipeline = pipeline
        self.run_id = run_id
        self.logical_date = logical_date
        self.results = results  # the executor's live task id -> TaskResult
        self.open: dict[str, int] = {}  # task id -> its attempt that started and has not ended

    def __call__(self, event: Any) -> None:
        self.notify(event)
        try:
            self._handle(event)
        except Exception as exc:  # never the run's problem
            stats["failed"] += 1
            _log.warning("OpenLineage: %s", masked_text(str(exc)))

    def _handle(self, event: Any) -> None:
        name = self.pipeline.name
        if event.kind == "run":
            kind = _RUN_STATES.get(event.state)
            if kind is None:
                return
            if kind == "ABORT":
                for tid, number in list(self.open.items()):
                    self._task("ABORT", tid, number, error=event.message)
            _sender.submit(f"{kind} of run {self.run_id}", run_event, kind, name, self.run_id,
                           logical_date=self.logical_date, at=datetime.now(UTC),
                           error=event.message if kind != "COMPLETE" else None)
            if kind != "START":
                _sender.flush(FLUSH_SECONDS)  # the run's events are out before its caller goes on
            return
        tid, number = event.task_id, event.attempt
        if tid is None or number is None:
            return  # upstream_failed: the task never started, it has no run of its own
        if event.state == "running":
            self.open[tid] = number
            self._task("START", tid, number, upstream=self._upstream(tid))
        elif event.state == "succeeded":
            self.open.pop(tid, None)
            self._task("COMPLETE", tid, number, result=self.results.get(tid))
        elif event.state in ("failed", "retrying"):
            self.open.pop(tid, None)
            checks = [c for c in self.store.get_checks(self.run_id) if c.task_id == tid and not c.passed]
            self._task("FAIL", tid, number, upstream=self._upstream(tid), checks=checks, error=event.message)

    def _upstream(self, tid: str) -> list[Any]:
        return [getattr(self.results.get(d), "output", None) for d in self.pipeline.task(tid).depends_on]

    def _task(self, kind: str, tid: str, number: int, **kw: Any) -> None:
        _sender.submit(f"{kind} of task {tid}", task_event, kind, self.pipeline.name, self.run_id, tid,
                       number, at=datetime.now(UTC), **kw)


class _Sender:
    """One thread per process that builds and sends the events an executor hands it, in order: the
    client's serialisation costs about a millisecond an event, which a task should not wait for."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[tuple[str, Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = \
            queue.SimpleQueue()
        self.pending = 0
        self.idle = threading.Condition()
        self.thread: threading.Thread | None = None

    def submit(self, what: str, build: Callable[..., Any], *args: Any, **kw: Any) -> None:
        with self.idle:
            self.pending += 1
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="udop-openlineage", daemon=True)
                self.thread.start()
        self.queue.put((what, build, args, kw))

    def _loop(self) -> None:
        while True:
            what, build, args, kw = self.queue.get()
            try:
                _safely(what, build, *args, **kw)
            finally:
                with self.idle:
                    self.pending -= 1
                    if not self.pending:
                        self.idle.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every event handed over is sent (or given up); False after ``timeout``."""
        with self.idle:
            done = self.idle.wait_for(lambda: not self.pending, timeout)
        if not done:
            _log.warning("OpenLineage: %d events still unsent after %gs", self.pending, timeout)
        return done


_sender = _Sender()
#: how long the end of a run waits for its events to be sent
FLUSH_SECONDS = 30.0
atexit.register(_sender.flush, FLUSH_SECONDS)


def listen(notify: Callable[[Any], None], store: Any, pipeline: Any, run_id: str, *,
           logical_date: datetime | None, results: Mapping[str, Any]) -> Callable[[Any], None]:
    """``notify`` itself when OpenLineage is off; else a listener that also sends the run's events."""
    if not enabled():
        return notify
    return RunListener(notify, store, pipeline, run_id, logical_date=logical_date, results=results)


_ATTEMPT_END = {"succeeded": "COMPLETE", "failed": "FAIL", "timed_out": "FAIL", "abandoned": "ABORT"}


def recorded(before: Any, after: Any, store: Any) -> None:
    """The events of what one update of a run's records added (``before`` and ``after`` are its
    ``RunRecord``): where no executor reports as it goes, as on AWS, where the run events
    (``udop.aws.events.sync_run``) record the executions' attempts. Each event carries the time the
    record gives (an attempt's start and end), not the time it was noticed."""
    if before is None or after is None or not enabled():
        return
    try:
        _recorded(before, after, store)
    except Exception as exc:  # never the run events' problem
        stats["failed"] += 1
        _log.warning("OpenLineage: %s", masked_text(str(exc)))


def _recorded(before: Any, after: Any, store: Any) -> None:
    name, run_id = after.pipeline, after.id
    was, now = str(before.state), str(after.state)
    if now != "pending" and (was == "pending" or (was != "running" and now == "running")):
        _safely(f"START of run {run_id}", run_event, "START", name, run_id, logical_date=after.logical_date,
                at=after.started_at)
    seen = {(t.task_id, a.number): str(a.state) for t in before.tasks for a in t.attempts}
    changes: list[tuple[datetime, int, str, Any, Any]] = []  # (time, order, kind, task, attempt)
    for task in after.tasks:
        for attempt in task.attempts:
            old = seen.get((task.task_id, attempt.number))
            if old is None:
                changes.append((attempt.started_at, 0, "START", task, attempt))
            state = str(attempt.state)
            if state in _ATTEMPT_END and old in (None, "running"):
                ended = attempt.ended_at or attempt.started_at
                changes.append((ended, 1, _ATTEMPT_END[state], task, attempt))
    depends_on: dict[str, list[str]] | None = None
    results = {t.task_id: t.result for t in after.tasks if t.result}
    for at, _, kind, task, attempt in sorted(changes, key=lambda c: (c[0], c[1])):
        tid, number = task.task_id, attempt.number
        if kind == "COMPLETE" and task.result:
            from udop.tasks.contract import TaskResult

            result = TaskResult.from_dict(task.result)
            _safely(f"COMPLETE of task {tid}", task_event, "COMPLETE", name, run_id, tid, number,
                    result=result, at=at)
            continue
        if depends_on is None:
            depends_on = _depends_on(store, after)
        upstream = [_manifest(results.get(d)) for d in depends_on.get(tid, [])]
        checks = []
        if kind == "FAIL":
            checks = [c for c in store.get_checks(run_id) if c.task_id == tid and not c.passed]
        error = f"{attempt.error_type}: {attempt.error_message}" if attempt.error_message else None
        _safely(f"{kind} of task {tid}", task_event, kind, name, run_id, tid, number, upstream=upstream,
                checks=checks, at=at, error=error)
    end = _RUN_STATES.get(now)
    if end in ("COMPLETE", "FAIL", "ABORT") and was != now:
        _safely(f"{end} of run {run_id}", run_event, end, name, run_id, logical_date=after.logical_date,
                at=after.ended_at, error=after.error if end != "COMPLETE" else None)


def _manifest(result: Mapping[str, Any] | None) -> Any:
    from udop.tasks.contract import Manifest

    out = (result or {}).get("output")
    return Manifest.from_dict(out) if out else None


def _depends_on(store: Any, run: Any) -> dict[str, list[str]]:
    """Task id -> the tasks it depends on, from the definition the run ran (the metadata store's)."""
    record = store.get_pipeline(run.pipeline)
    versions = {v.version: v for v in (record.versions if record else [])}
    found = versions.get(run.pipeline_version)
    tasks = (found.definition if found else {}).get("spec", {}).get("tasks", [])
    return {t["id"]: list(t.get("depends_on") or []) for t in tasks if isinstance(t, dict) and "id" in t}
