"""Stream pipelines on AWS: each deploys as a Lambda event source mapping (SQS, Kinesis, self-managed
Kafka; MSK through the CDK construct) on the stream-runner function, which runs every delivery as one
micro-batch in-process (the local executor over the shared layers, a run with trigger ``stream``
recorded in the metadata store) and answers with ``batchItemFailures``.

The definitions bucket holds what the function needs: ``versions/<name>/<version>.json`` (as for state
machines) and ``streams/by-source/<hash>.json`` naming the pipeline and version a source feeds.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from udop.aws.definitions import DefinitionCache, canonical_definition, put_version
from udop.aws.s3 import get_json, put_json
from udop.errors import FatalError, InputError, RetryableError, SpecErrors
from udop.states import RunState

_log = logging.getLogger(__name__)

__all__ = ["StreamDeployment", "deploy_stream", "keeps_input", "mapping_key", "run_stream_event"]


class _Delivery(Protocol):
    """One delivery as a batch (``udop_connectors.aws_streams.LambdaBatch``)."""

    @property
    def source(self) -> str: ...
    @property
    def table(self) -> Any: ...
    @property
    def end(self) -> dict[str, Any]: ...
    @property
    def ids(self) -> list[str]: ...
    @property
    def all_failed(self) -> list[dict[str, str]]: ...
    def failed(self, rows: Sequence[int]) -> list[dict[str, str]]: ...


def mapping_key(source: str) -> str:
    """Where the pipeline fed by ``source`` (a queue or stream ARN, ``kafka:<topic>``) is recorded."""
    return f"streams/by-source/{hashlib.sha256(source.encode()).hexdigest()[:32]}.json"


@dataclass
class StreamDeployment:
    pipeline: str
    version: int
    source: str
    mapping_uuid: str
    state: str


def _source_options(pipeline: Any) -> tuple[str, dict[str, Any]]:
    """The stream's connector and its validated settings (connection merged), as a dict."""
    from udop.connectors import get_connector

    stream = pipeline.stream
    connector = get_connector(pipeline.task(stream.id).source, connections=pipeline.spec.connections)
    return connector.name, connector.settings.model_dump()


def deploy_stream(
    pipeline: Any,
    *,
    bucket: str,
    s3: Any,
    lam: Any,
    store: Any,
    function_arn: str,
    client: Callable[[str], Any],
) -> StreamDeployment:
    """Record ``pipeline``'s definition as a new version and create (or update) its event source mapping
    on the stream-runner function ``function_arn``. ``client(service)`` makes the SQS/Kinesis client
    used to find the source's ARN. Raises ``InputError`` for a source Lambda cannot map."""
    from udop.spec.secure import check_inline_secrets

    stream = pipeline.stream
    if stream is None:
        raise InputError(f"pipeline {pipeline.name!r} has no spec.trigger.stream")
    SpecErrors.collect(check_inline_secrets(pipeline))
    kind, options = _source_options(pipeline)
    batch = {
        "BatchSize": min(stream.max_batch_rows, 10_000),
        "MaximumBatchingWindowInSeconds": min(300, math.ceil(stream.max_batch_seconds)),
    }
    starting = "TRIM_HORIZON" if options.get("start", "earliest") == "earliest" else "LATEST"
    params: dict[str, Any]
    if kind == "sqs":
        url = options.get("queue_url") or client("sqs").get_queue_url(QueueName=options["queue"])["QueueUrl"]
        attributes = client("sqs").get_queue_attributes(
            QueueUrl=url, AttributeNames=["QueueArn", "MessageRetentionPeriod"]
        )["Attributes"]
        arn = attributes["QueueArn"]
        retention = float(attributes.get("MessageRetentionPeriod") or RETENTION["sqs"])
        source = arn
        params = {"EventSourceArn": arn, **batch, "FunctionResponseTypes": ["ReportBatchItemFailures"]}
    elif kind == "kinesis":
        summary = client("kinesis").describe_stream_summary(StreamName=options["stream"])[
            "StreamDescriptionSummary"
        ]
        arn = summary["StreamARN"]
        retention = float(summary.get("RetentionPeriodHours") or 0) * 3600 or RETENTION["kinesis"]
        source = arn
        params = {
            "EventSourceArn": arn,
            **batch,
            "StartingPosition": starting,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
        }
    elif kind == "kafka":
        source = f"kafka:{options['topic']}"
        retention = RETENTION["kafka"]
        params = {
            "SelfManagedEventSource": {
                "Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": options["bootstrap_servers"].split(",")}
            },
            "Topics": [options["topic"]],
            **batch,
            "StartingPosition": starting,
        }
    else:
        raise InputError(
            f"pipeline {pipeline.name!r}: a {kind!r} stream cannot be deployed to AWS; event source "
            "mappings read sqs, kinesis and kafka (udop stream runs any stream source)"
        )
    definition = canonical_definition(pipeline)
    version = store.register_pipeline(pipeline.name, definition).version
    put_version(s3, bucket, pipeline.name, version, definition)
    put_json(
        s3,
        bucket,
        mapping_key(source),
        {"pipeline": pipeline.name, "version": version, "source": source, "retention": retention},
    )
    found = [
        m
        for m in lam.list_event_source_mappings(FunctionName=function_arn).get("EventSourceMappings", [])
        if m.get("EventSourceArn") == params.get("EventSourceArn")
        and m.get("Topics", []) == params.get("Topics", [])
    ]
    if found:
        updatable = {
            k: v
            for k, v in params.items()
            if k in ("BatchSize", "MaximumBatchingWindowInSeconds", "FunctionResponseTypes")
        }
        got = lam.update_event_source_mapping(UUID=found[0]["UUID"], FunctionName=function_arn, **updatable)
    else:
        got = lam.create_event_source_mapping(FunctionName=function_arn, Enabled=True, **params)
    return StreamDeployment(pipeline.name, version, source, str(got["UUID"]), str(got.get("State", "")))


_definitions = DefinitionCache()

#: seconds a record may be delivered again, when the deployment did not record its source's retention:
#: SQS's longest retention period, Kinesis's longest, Kafka's default ``log.retention.hours``
RETENTION = {"sqs": 14 * 86400.0, "kinesis": 365 * 86400.0, "kafka": 7 * 86400.0}

#: a claim on records older than this, whose batch is still pending, was left by an invocation that no
#: longer runs (Lambda stops a function after 900 s at most): a delivery bringing them takes it over
CLAIM_STALE_AFTER = 960.0


def keeps_input(pipeline: Any) -> bool:
    """Whether a batch of ``pipeline`` keeps its input in the data bucket before its run, to be resumed
    (never run again in another grouping) when the run fails: when a task can fail after a load
    committed, that is with more than one load, or with one load and any task that does not come
    before it (one after it or beside it). With one load and every other task before it, a failed run
    loaded nothing, and the batch's messages are released instead."""
    tasks = {t.id: t for t in pipeline.spec.tasks}
    loads = [t.id for t in pipeline.spec.tasks if getattr(t, "type", None) == "load"]
    if len(loads) != 1:
        return len(loads) > 1
    before: set[str] = set()
    todo = list(tasks[loads[0]].depends_on)
    while todo:
        task_id = todo.pop()
        if task_id not in before:
            before.add(task_id)
            todo.extend(tasks[task_id].depends_on)
    return any(t not in before and t != loads[0] for t in tasks)


def run_stream_event(
    event: Mapping[str, Any],
    *,
    bucket: str,
    s3: Any,
    store: Any,
    policy: Any,
    data_root: str,
    source_of: Callable[[Mapping[str, Any]], str],
    decode: Callable[[Mapping[str, Any], Mapping[str, Any]], _Delivery],
    code_dir: str | None = None,
    data_bucket: str | None = None,
) -> dict[str, Any]:
    """Run one delivery of an event source mapping as a micro-batch of the pipeline its source feeds.

    Exactly once into ledger targets however the service groups records: the delivery's records are
    claimed (``StreamStore.claim``, by SQS message id, Kinesis ``shard:sequence``, Kafka
    ``partition:offset``); those an earlier batch committed are left out (a delivery of nothing else
    succeeds without a run) and those another batch in flight claimed are given back.

    Returns ``{"batchItemFailures": [...]}``: the records given back, when the batch's run succeeded;
    else what makes the service deliver the whole delivery again (every SQS message; the first Kinesis
    record, from which the shard is retried). A Kafka batch with records to deliver again raises
    ``RetryableError`` (Kafka mappings retry the whole batch on an error). ``source_of`` and
    ``decode`` read the event (the connectors layer's ``lambda_event_source`` / ``lambda_decoder``).
    ``code_dir`` (``UDOP_CODE_DIR``) is where python tasks' callables are imported from, as in the task
    runner; ``policy`` decides which of its modules they may name.

    A pipeline whose run can fail after a load committed (``keeps_input``) keeps each batch's input in
    ``data_bucket`` (``runs/<pipeline>/<run>/<stream task>/``, the keys the task runner uses) before its
    run starts; a failed batch then keeps its records claimed, and the next delivery bringing any of
    them resumes it first (its committed loads write nothing), so they are never loaded again in
    another grouping. Two deliveries resuming the same batch: one runs it (``StreamStore.take``), the
    other gives its records back.
    """
    from udop.executor.local import LocalExecutor
    from udop.spec.secure import check_definition
    from udop.stream.runner import StreamRunner
    from udop.stream.source import StreamBatch
    from udop.stream.store import StreamStore

    try:
        source = source_of(event)
    except (ValueError, KeyError, TypeError) as exc:
        raise FatalError(f"stream runner: {exc}") from None
    mapping = get_json(s3, bucket, mapping_key(source))
    if mapping is None:
        raise FatalError(
            f"stream runner: no pipeline is deployed for {source} (udop deploy a pipeline whose "
            "spec.trigger.stream reads it)"
        )
    pipeline = _definitions.get(s3, bucket, str(mapping["pipeline"]), int(mapping["version"]))
    refused = check_definition(pipeline, policy)
    if refused:
        raise FatalError(
            f"pipeline {pipeline.name!r} is refused by the stream runner's sandbox: {refused[0]}"
        )
    task = pipeline.task(pipeline.stream.id)
    connection = pipeline.spec.connections.get(task.source.connection) if task.source.connection else None
    options = {
        **((connection.model_extra or {}) if connection is not None else {}),
        **(task.source.model_extra or {}),
    }
    delivery = decode(event, options)
    kind = "kafka" if source.startswith("kafka:") else "kinesis" if ":kinesis:" in source else "sqs"
    retention = float(mapping.get("retention") or RETENTION[kind])
    batches = StreamStore(store)
    keeping = keeps_input(pipeline)
    if keeping and not data_bucket:
        raise FatalError(
            f"pipeline {pipeline.name!r} has a task that can fail after a load committed, so the stream "
            "runner keeps each batch's input in the data bucket: set UDOP_DATA_BUCKET"
        )
    # exactly once across deliveries however they group the records: the records committed by any
    # earlier batch are left out, and those of a batch in flight elsewhere are given back to the service
    claim = batches.claim(
        pipeline.name,
        StreamBatch(table=delivery.table, end=delivery.end, ids=list(delivery.ids), keep_ids=retention),
        stale_after=CLAIM_STALE_AFTER,
    )
    given_back = list(claim.busy)
    kept = _KeptInput(s3, data_bucket, data_root, pipeline) if data_bucket else None
    executor = LocalExecutor(store, workers=2, data_root=data_root, policy=policy,
                             services={"base_dir": code_dir} if code_dir else None,
                             on_event=kept.on_event if kept is not None and keeping else None)
    # records of a failed batch that kept its input: that batch is resumed first (once, by whichever
    # delivery wins it), after which they are committed repeats; if it fails again they are given back
    for held, rows in claim.resume.items():
        if kept is None:
            raise FatalError(f"pipeline {pipeline.name!r}: batch {held} waits to be resumed from the data "
                             "bucket: set UDOP_DATA_BUCKET")
        if not batches.take(pipeline.name, held, stale_after=CLAIM_STALE_AFTER):
            given_back += rows  # another delivery resumes it at this moment
            continue
        try:
            resumed = kept.resume(batches, StreamRunner(pipeline, store, executor, None), held, retention)
        except Exception:  # e.g. a definition changed since: this delivery's own records still run
            _log.exception("pipeline %r: resuming batch %s failed; its records are given back",
                           pipeline.name, held)
            batches.release(pipeline.name, held)  # its try is over: the next delivery may resume it
            resumed = RunState.FAILED
        if resumed != RunState.SUCCEEDED:
            given_back += rows
    given_back.sort()
    busy = delivery.failed(given_back)
    if claim.batch is None:  # all committed already (acknowledged, not loaded), or all in flight
        return _answer(pipeline.name, claim.run_id, busy, RunState.SUCCEEDED, len(given_back))
    state = StreamRunner(pipeline, store, executor, None).run_batch(
        claim.batch.table, run_id=claim.run_id, end=delivery.end, ids=claim.batch.ids, keep_ids=retention,
        keep_input=kept.keep if kept is not None and keeping else None,
    )
    if state == RunState.SUCCEEDED:
        return _answer(pipeline.name, claim.run_id, busy, state, len(given_back))
    return _answer(pipeline.name, claim.run_id, delivery.all_failed, state, 1)


class _KeptInput:
    """A batch's folder (``<data_root>/runs/<pipeline>/<run>/``) in the data bucket, at the same keys
    under ``runs/``: its input, written before the batch is recorded, and each task's output as the task
    succeeds (before the tasks after it start), so that any invocation (another container: /tmp is not
    shared, and an invocation that died left nothing) resumes the batch."""

    def __init__(self, s3: Any, data_bucket: str, data_root: str, pipeline: Any) -> None:
        from udop.aws.s3 import S3Staging

        self.staging = S3Staging(s3, f"s3://{data_bucket}", Path(data_root))
        self.data_root = data_root
        self.name: str = pipeline.name
        self.stream_id: str = pipeline.stream.id

    def _folder(self, run_id: str, task_id: str) -> Path:
        """Where the executor writes ``task_id``'s output in run ``run_id`` (its parent: the run's)."""
        from udop.tasks.contract import dataset_uri

        return Path(dataset_uri(self.data_root, self.name, run_id, task_id))

    def keep(self, local: str) -> str:
        """Upload the batch's input folder ``local``; returns its ``s3://`` URI."""
        self.staging.upload(local)
        return self.staging.to_remote(local)

    def on_event(self, event: Any) -> None:
        """The executor's events: a task that succeeded has its output (if any) uploaded."""
        if event.kind == "task" and event.state == "succeeded" and event.task_id:
            self.mirror(event.run_id, event.task_id)

    def mirror(self, run_id: str, task_id: str) -> None:
        """Upload the output folder of ``task_id`` in run ``run_id``, file by file (nothing is deleted:
        an upload that stops half-way leaves what was kept whole)."""
        from udop.aws.s3 import split_uri

        folder = self._folder(run_id, task_id)
        if task_id == self.stream_id or not folder.is_dir():
            return  # the input is kept before the run; loads write no dataset of their own
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).parts
            if path.is_file() and not any(p.startswith(".") for p in rel):
                bucket, key = split_uri(self.staging.to_remote(str(path)))
                self.staging.s3.upload_file(str(path), bucket, key)

    def resume(self, batches: Any, runner: Any, run_id: str, retention: float) -> RunState:
        """Resume the pending batch ``run_id`` (this delivery won it, ``StreamStore.take``) from the data
        bucket; its loads that committed find their ledger entries and write nothing."""
        import pyarrow.parquet as pq

        record = batches.batch(self.name, run_id)
        if record is None or record.state != "pending" or record.input_uri is None:
            return RunState.SUCCEEDED  # settled in between: its records are committed (or dead-lettered)
        self.staging.download(self.staging.to_remote(str(self._folder(run_id, self.stream_id).parent)) + "/")
        table = pq.read_table(self.staging.to_local(record.input_uri))
        ids: list[str | None] = list(record.message_ids or [])
        state: RunState = runner.run_batch(
            table, run_id=run_id, end=record.end, ids=ids, keep_ids=retention, keep_input=self.keep
        )
        return state


def _answer(
    pipeline: str, run_id: str, failures: list[dict[str, str]], state: RunState, given_back: int
) -> dict[str, Any]:
    """``batchItemFailures``; a Kafka batch with records to deliver again (``given_back``) raises instead:
    its mapping retries the whole batch on an error, and the records that committed are left out then."""
    if failures or not given_back:
        return {"batchItemFailures": failures}
    what = (
        f"{given_back} record(s) are in another batch in flight; the mapping delivers them again"
        if state == RunState.SUCCEEDED
        else f"the batch's run {run_id} {state.value}"
    )
    raise RetryableError(f"pipeline {pipeline!r}: {what}")
