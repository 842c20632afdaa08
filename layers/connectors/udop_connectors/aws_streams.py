"""AWS message sources for ``udop stream``: ``sqs`` (a queue; messages deleted only after their batch
committed) and ``kinesis`` (a data stream; udop keeps each shard's sequence number). boto3 reads
``AWS_ENDPOINT_URL`` itself, so the same code serves AWS, LocalStack and moto.

The record conversions are shared with the Lambda stream runner, which gets the same messages in
SQS and Kinesis event shapes (``sqs_event_table``, ``kinesis_event_table``).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import ConfigDict, Field, model_validator

from udop.connectors import Connector, ConnectorSettings
from udop.lineage.naming import Dataset
from udop.stream import StreamBatch
from udop_connectors._arrow import ColumnTypes, messages_table, schema_from_mapping

__all__ = [
    "KinesisConnector",
    "KinesisSettings",
    "SqsConnector",
    "SqsSettings",
    "kinesis_event_table",
    "sqs_event_table",
]

_RETRYABLE = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestTimeout",
        "ServiceUnavailable",
        "InternalFailure",
        "KMSThrottlingException",
        "LimitExceededException",
    }
)


def _ms(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(float(value) * (1 if float(value) > 1e11 else 1000))  # ms in SQS attributes, s in Kinesis


class _AwsConnector(Connector):
    write_modes = ("append",)
    service: ClassVar[str] = ""

    def __init__(self, settings: ConnectorSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            region = getattr(self.settings, "region", None)
            make: Any = boto3.client  # one code path for both services (its stubs overload by literal name)
            self._client = make(self.service, region_name=region) if region else make(self.service)
        return self._client

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import botocore.exceptions

        try:
            return fn(*args, **kwargs)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            message = exc.response.get("Error", {}).get("Message", "")
            self.fail(f"{what}: {code or status}: {message}", retryable=status >= 500 or code in _RETRYABLE)
        except botocore.exceptions.NoCredentialsError:
            self.fail(f"{what}: no AWS credentials found", retryable=False)
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionError) as exc:
            self.fail(f"{what}: cannot reach {self.service} ({type(exc).__name__})", retryable=True)

    def check(self) -> None:
        self.stream().seek({})


# ---------------------------------------------------------------------------------------------- SQS


class SqsSettings(ConnectorSettings):
    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_url: str | None = Field(None, description="the queue's URL")
    queue: str | None = Field(None, description="the queue's name (instead of queue_url)")
    region: str | None = None
    format: Literal["json", "text", "bytes"] = "json"
    columns: ColumnTypes = None
    visibility_timeout: int | None = Field(
        None,
        ge=0,
        le=43200,
        description="seconds a received message "
        "stays hidden (default: the queue's); longer than a batch takes",
    )

    @model_validator(mode="after")
    def _one(self) -> SqsSettings:
        if (self.queue_url is None) == (self.queue is None):
            raise ValueError("give exactly one of 'queue_url' or 'queue'")
        return self


def sqs_event_table(
    records: Sequence[Mapping[str, Any]], fmt: str = "json", schema: pa.Schema | None = None
) -> pa.Table:
    """SQS messages (``receive_message`` or Lambda event records) as rows with ``_message_id`` and
    ``_sent_at``."""
    ids = [r.get("MessageId") or r.get("messageId") for r in records]
    attrs = [r.get("Attributes") or r.get("attributes") or {} for r in records]
    meta = {
        "_message_id": pa.array(ids, pa.string()),
        "_sent_at": pa.array([_ms(a.get("SentTimestamp")) for a in attrs], pa.int64()).cast(
            pa.timestamp("ms", "UTC")
        ),
    }
    bodies = [str(r.get("Body") if "Body" in r else r.get("body", "")).encode() for r in records]
    return messages_table(bodies, meta, fmt, schema)


class SqsConnector(_AwsConnector):
    name = "sqs"
    service = "sqs"
    Settings: ClassVar[type[ConnectorSettings]] = SqsSettings
    _TASK_OPTIONS = Connector._TASK_OPTIONS | {"queue_url", "format"}

    settings: SqsSettings

    def dataset(self) -> Dataset:
        return Dataset("sqs", self.settings.queue_url or self.settings.queue or "")

    def stream(self) -> SqsStream:
        return SqsStream(self)


class SqsStream:
    """A queue consumed with long polling. Messages are deleted (``commit``) only after their batch
    committed. Each batch carries its message ids (``StreamBatch.ids``): the runner keeps those of
    committed batches for the queue's retention period, so a message that comes back — after a crash
    between the commit and the delete, or because its visibility timeout ran out while its batch was
    still running — is deleted with the batch it arrives in, not loaded again."""

    #: a queue's retention period when it cannot be read (SQS's own maximum, 14 days)
    MAX_RETENTION = 14 * 86400.0

    def __init__(self, connector: SqsConnector) -> None:
        self.connector = connector
        self._url = ""
        self.retention = self.MAX_RETENTION
        self.schema = schema_from_mapping(connector.settings.columns)

    @property
    def url(self) -> str:
        """The queue's URL (looked up by name once: ``commit`` of a batch recovered at start-up comes
        before ``seek``)."""
        if not self._url:
            s = self.connector.settings
            if s.queue_url is not None:
                self._url = s.queue_url
            else:
                got = self.connector.call(
                    f"finding queue {s.queue!r}", self.connector.client.get_queue_url, QueueName=s.queue
                )
                self._url = got["QueueUrl"]
        return self._url

    def seek(self, positions: Mapping[str, Any]) -> None:
        """Nothing to seek (a queue hands out what is left); finds the queue and its retention period."""
        got = self.connector.call(
            "describing",
            self.connector.client.get_queue_attributes,
            QueueUrl=self.url,
            AttributeNames=["MessageRetentionPeriod"],
        )
        retention = got.get("Attributes", {}).get("MessageRetentionPeriod")
        self.retention = float(retention) if retention else self.MAX_RETENTION

    def poll(self, max_rows: int, max_seconds: float, stop: threading.Event) -> StreamBatch | None:
        s = self.connector.settings
        client = self.connector.client
        messages: list[dict[str, Any]] = []
        deadline: float | None = None
        while len(messages) < max_rows and not stop.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            extra = {} if s.visibility_timeout is None else {"VisibilityTimeout": s.visibility_timeout}
            got = self.connector.call(
                "receiving from",
                client.receive_message,
                QueueUrl=self.url,
                MaxNumberOfMessages=min(10, max_rows - len(messages)),
                AttributeNames=["SentTimestamp"],
                WaitTimeSeconds=1 if left is None else max(0, min(1, int(left))),
                **extra,
            )
            found = got.get("Messages", [])
            messages.extend(found)
            if not messages:
                break
            if deadline is None:
                deadline = time.monotonic() + max_seconds
        if not messages:
            return None
        table = sqs_event_table(messages, s.format, self.schema)
        return StreamBatch(
            table=table,
            end={},
            acks=[m["ReceiptHandle"] for m in messages],
            ids=[m["MessageId"] for m in messages],
            keep_ids=self.retention,
        )

    def _delete(self, handles: list[str]) -> None:
        for i in range(0, len(handles), 10):
            chunk = handles[i : i + 10]
            got = self.connector.call(
                "deleting from",
                self.connector.client.delete_message_batch,
                QueueUrl=self.url,
                Entries=[{"Id": str(n), "ReceiptHandle": h} for n, h in enumerate(chunk)],
            )
            # a handle no longer valid (its message deleted, or handed over again since): the message is
            # gone, or comes back and is deleted then, its id being a committed one
            failed = [f for f in got.get("Failed", []) if f.get("Code") != "ReceiptHandleIsInvalid"]
            if failed:
                first = failed[0]
                self.connector.fail(
                    f"deleting from the queue: {first.get('Code')}: {first.get('Message')}", retryable=True
                )

    def commit(self, end: Mapping[str, Any], acks: list[Any]) -> None:
        self._delete([str(a) for a in acks])

    def lag(self) -> int | None:
        got = self.connector.call(
            "describing",
            self.connector.client.get_queue_attributes,
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages"],
        )
        return int(got.get("Attributes", {}).get("ApproximateNumberOfMessages", 0))

    def close(self) -> None:
        self.connector.close()


# ------------------------------------------------------------------------------------------ Kinesis


class KinesisSettings(ConnectorSettings):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stream: str = Field(description="the data stream's name")
    region: str | None = None
    start: Literal["earliest", "latest"] = Field(
        "earliest",
        description="where a shard without a stored sequence number starts (TRIM_HORIZON or LATEST)",
    )
    format: Literal["json", "text", "bytes"] = "json"
    columns: ColumnTypes = None


def kinesis_event_table(
    records: Sequence[Mapping[str, Any]],
    shards: Sequence[str],
    fmt: str = "json",
    schema: pa.Schema | None = None,
) -> pa.Table:
    """Kinesis records (``get_records`` or a Lambda event's ``kinesis`` parts, base64 data) as rows with
    ``_shard``, ``_sequence_number``, ``_partition_key`` and ``_arrived_at``."""
    data: list[bytes | None] = []
    for r in records:
        raw = r.get("Data", r.get("data"))
        data.append(base64.b64decode(raw) if isinstance(raw, str) else raw)
    meta = {
        "_shard": pa.array(list(shards), pa.string()),
        "_sequence_number": pa.array(
            [r.get("SequenceNumber") or r.get("sequenceNumber") for r in records], pa.string()
        ),
        "_partition_key": pa.array(
            [r.get("PartitionKey") or r.get("partitionKey") for r in records], pa.string()
        ),
        "_arrived_at": pa.array(
            [
                _ms(r.get("ApproximateArrivalTimestamp", r.get("approximateArrivalTimestamp")))
                for r in records
            ],
            pa.int64(),
        ).cast(pa.timestamp("ms", "UTC")),
    }
    return messages_table(data, meta, fmt, schema)


class KinesisConnector(_AwsConnector):
    name = "kinesis"
    service = "kinesis"
    Settings: ClassVar[type[ConnectorSettings]] = KinesisSettings
    _TASK_OPTIONS = Connector._TASK_OPTIONS | {"start", "format"}

    settings: KinesisSettings

    def dataset(self) -> Dataset:
        return Dataset("kinesis", self.settings.stream)

    def stream(self) -> KinesisStream:
        return KinesisStream(self)


class KinesisStream:
    """A data stream read shard by shard from sequence numbers udop keeps (``{shard id: last sequence}``)."""

    def __init__(self, connector: KinesisConnector) -> None:
        self.connector = connector
        self.iterators: dict[str, str | None] = {}
        self.behind: dict[str, int] = {}
        self.schema = schema_from_mapping(connector.settings.columns)

    def seek(self, positions: Mapping[str, Any]) -> None:
        c = self.connector
        client = c.client
        shards = c.call("listing the shards of", client.list_shards, StreamName=c.settings.stream)["Shards"]
        self.iterators = {}
        for shard in shards:
            sid = shard["ShardId"]
            after = positions.get(sid)
            if after is not None:
                kind: dict[str, Any] = {
                    "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                    "StartingSequenceNumber": after,
                }
            else:
                kind = {"ShardIteratorType": "TRIM_HORIZON" if c.settings.start == "earliest" else "LATEST"}
            got = c.call(
                "starting to read",
                client.get_shard_iterator,
                StreamName=c.settings.stream,
                ShardId=sid,
                **kind,
            )
            self.iterators[sid] = got["ShardIterator"]

    def poll(self, max_rows: int, max_seconds: float, stop: threading.Event) -> StreamBatch | None:
        client = self.connector.client
        records: list[dict[str, Any]] = []
        shards: list[str] = []
        end: dict[str, str] = {}
        deadline: float | None = None
        while len(records) < max_rows and not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            got_any = False
            for sid, iterator in list(self.iterators.items()):
                if iterator is None or len(records) >= max_rows:
                    continue
                got = self.connector.call(
                    "reading",
                    client.get_records,
                    ShardIterator=iterator,
                    Limit=min(10_000, max_rows - len(records)),
                )
                self.iterators[sid] = got.get("NextShardIterator")
                self.behind[sid] = int(got.get("MillisBehindLatest", 0))
                for r in got.get("Records", []):
                    records.append(r)
                    shards.append(sid)
                    end[sid] = r["SequenceNumber"]
                    got_any = True
            if records and deadline is None:
                deadline = time.monotonic() + max_seconds
            if not got_any:
                if not records:
                    stop.wait(0.5)  # Kinesis allows 5 reads per shard per second
                    return None
                stop.wait(0.2)
        if not records:
            return None
        table = kinesis_event_table(records, shards, self.connector.settings.format, self.schema)
        return StreamBatch(table=table, end=end)

    def commit(self, end: Mapping[str, Any], acks: list[Any]) -> None:
        """Nothing to tell Kinesis: the sequence numbers are udop's (committed with the batch)."""

    def lag(self) -> int | None:
        """Kinesis tells how far behind in time, not in records: None (``MillisBehindLatest`` per shard is
        in ``behind``)."""
        return None

    def close(self) -> None:
        self.connector.close()


# ------------------------------------------------------------------------------ Lambda event batches


@dataclass(frozen=True)
class LambdaBatch:
    """A Lambda event source mapping's delivery as one micro-batch."""

    #: what the mapping reads: the queue's or stream's ARN, or ``kafka:<topic>``
    source: str
    table: pa.Table
    #: the positions after the batch (Kinesis: shard -> sequence; Kafka: partition -> next offset)
    end: dict[str, Any]
    #: per row, the record's id, the same whichever delivery brings it again (SQS: the message id;
    #: Kinesis: ``shard:sequence number``; Kafka: ``partition:offset``): what the stream runner claims
    ids: list[str]
    #: per row, what ``batchItemFailures`` names it by (SQS: the message id; Kinesis: the sequence
    #: number); empty for Kafka, whose mapping retries the whole batch when the function raises
    items: list[str]

    @property
    def all_failed(self) -> list[dict[str, str]]:
        """The response that makes the service deliver the whole batch again: every SQS message; the first
        Kinesis record (the shard is retried from there); nothing for Kafka (the runner raises)."""
        if ":kinesis:" in self.source and self.items:
            return [{"itemIdentifier": self.items[0]}]
        return [{"itemIdentifier": i} for i in self.items]

    def failed(self, rows: Sequence[int]) -> list[dict[str, str]]:
        """The response that makes the service deliver ``rows`` (and, on Kinesis, what follows) again."""
        return [{"itemIdentifier": self.items[n]} for n in rows] if self.items else []


def lambda_event_batch(
    event: Mapping[str, Any], fmt: str = "json", schema: pa.Schema | None = None
) -> LambdaBatch:
    """The records of an SQS, Kinesis or Kafka (MSK, self-managed) event as a table."""
    records = event.get("Records")
    if isinstance(records, list) and records:
        kind = records[0].get("eventSource")
        source = str(records[0].get("eventSourceARN", ""))
        if kind == "aws:sqs":
            ids = [str(r["messageId"]) for r in records]
            table = sqs_event_table(records, fmt, schema)
            return LambdaBatch(source, table, {}, ids, ids)
        if kind == "aws:kinesis":
            parts = [r["kinesis"] for r in records]
            shards = [str(r.get("eventID", "")).split(":", 1)[0] for r in records]
            end: dict[str, Any] = {}
            for shard, part in zip(shards, parts, strict=True):
                end[shard] = part["sequenceNumber"]
            table = kinesis_event_table(parts, shards, fmt, schema)
            sequences = [str(p["sequenceNumber"]) for p in parts]
            keys = [f"{shard}:{seq}" for shard, seq in zip(shards, sequences, strict=True)]
            return LambdaBatch(source, table, end, keys, sequences)
    by_partition = event.get("records")
    if event.get("eventSource") in ("aws:kafka", "SelfManagedKafka") and isinstance(by_partition, Mapping):
        messages = [m for part in by_partition.values() for m in part]
        if messages:
            topic = str(messages[0]["topic"])
            end = {}
            for m in messages:
                end[str(m["partition"])] = max(int(end.get(str(m["partition"]), 0)), int(m["offset"]) + 1)
            values = [None if m.get("value") is None else base64.b64decode(m["value"]) for m in messages]
            meta = {
                "_key": pa.array(
                    [
                        None
                        if m.get("key") is None
                        else base64.b64decode(m["key"]).decode("utf-8", "replace")
                        for m in messages
                    ],
                    pa.string(),
                ),
                "_partition": pa.array([int(m["partition"]) for m in messages], pa.int32()),
                "_offset": pa.array([int(m["offset"]) for m in messages], pa.int64()),
                "_timestamp": pa.array([int(m.get("timestamp") or 0) for m in messages], pa.int64()).cast(
                    pa.timestamp("ms", "UTC")
                ),
            }
            table = messages_table(values, meta, fmt, schema)
            source = f"kafka:{topic}"
            keys = [f"{m['partition']}:{m['offset']}" for m in messages]
            return LambdaBatch(source, table, end, keys, [])
    raise ValueError(
        "not an SQS, Kinesis or Kafka event with records (the stream runner's event source "
        "mappings send those)"
    )


def lambda_event_source(event: Mapping[str, Any]) -> str:
    """The source an event source mapping's event came from (as ``LambdaBatch.source`` names it)."""
    records = event.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], Mapping):
        return str(records[0].get("eventSourceARN", ""))
    by_partition = event.get("records")
    if isinstance(by_partition, Mapping):
        for part in by_partition.values():
            if part:
                return f"kafka:{part[0]['topic']}"
    raise ValueError("not an SQS, Kinesis or Kafka event with records")


def lambda_decoder(event: Mapping[str, Any], options: Mapping[str, Any]) -> LambdaBatch:
    """``lambda_event_batch`` with the stream source's ``format`` and ``columns`` options."""
    schema = schema_from_mapping(options.get("columns"))
    return lambda_event_batch(event, str(options.get("format") or "json"), schema)
