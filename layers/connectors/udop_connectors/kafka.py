"""The ``kafka`` connector: a stream source for ``udop stream`` (consume a topic in micro-batches) and a
target (produce rows as JSON messages).

Consuming uses explicit partition assignment, never a consumer group's rebalancing or committed
offsets: udop owns the offsets (``udop.stream``), stores them with each batch and hands them back when
the stream starts, as Spark's Kafka source does. Producing is at-least-once: the producer is
idempotent (no duplicates from its own retries) and every message carries a ``udop-message-id`` header
(run, task, row) for consumers to drop the repeats of a load repeated after a crash.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal, NoReturn

import pyarrow as pa
from pydantic import ConfigDict, Field

from udop.connectors import Connector, ConnectorSettings, LoadEntry, Secret
from udop.connectors.base import WriteMode
from udop.lineage.naming import Dataset
from udop.stream import StreamBatch
from udop_connectors._arrow import ColumnTypes, messages_table, schema_from_mapping

__all__ = ["KafkaConnector", "KafkaSettings", "KafkaStream"]

#: librdkafka error codes that no retry fixes (the rest: broker down, timeouts, leader moves)
_FATAL_CODES = frozenset(
    {
        "UNKNOWN_TOPIC_OR_PART",
        "_UNKNOWN_TOPIC",
        "_UNKNOWN_PARTITION",
        "TOPIC_AUTHORIZATION_FAILED",
        "SASL_AUTHENTICATION_FAILED",
        "_AUTHENTICATION",
        "GROUP_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
        "_INVALID_ARG",
        "INVALID_CONFIG",
        "MSG_SIZE_TOO_LARGE",
        "_MSG_TIMED_OUT",
        "INVALID_TOPIC_EXCEPTION",
    }
)


class KafkaSettings(ConnectorSettings):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_servers: str = Field(description="host:port[,host:port...] of the brokers")
    topic: str = Field(description="the topic consumed or produced to")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512...")
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    partitions: list[int] | None = Field(None, description="stream: only these partitions (default: all)")
    start: Literal["earliest", "latest"] = Field(
        "earliest", description="stream: where a partition with no stored offset starts"
    )
    format: Literal["json", "text", "bytes"] = Field(
        "json", description="message values: JSON objects (fields become columns), text or bytes"
    )
    columns: ColumnTypes = Field(
        None, description="json: the fields read, with their types (default: all, types detected per batch)"
    )
    key_column: str | None = Field(None, description="write: the column whose value is the message key")
    config: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="more librdkafka settings (not secrets), e.g. fetch.max.bytes"
    )
    timeout: float = Field(30.0, gt=0, description="seconds to wait for the brokers (metadata, flush)")


def _code(exc: BaseException) -> str:
    err = exc.args[0] if exc.args else None
    name = getattr(err, "name", None)
    return str(name() if callable(name) else "")


class KafkaConnector(Connector):
    name = "kafka"
    Settings: ClassVar[type[ConnectorSettings]] = KafkaSettings
    write_modes = ("append",)
    _TASK_OPTIONS = Connector._TASK_OPTIONS | {"topic", "partitions", "start", "format", "key_column"}

    settings: KafkaSettings

    def dataset(self) -> Dataset:
        first = self.settings.bootstrap_servers.split(",")[0].strip()
        return Dataset(f"kafka://{first}", self.settings.topic)

    def client_config(self) -> dict[str, Any]:
        s = self.settings
        conf: dict[str, Any] = {
            "bootstrap.servers": s.bootstrap_servers,
            "security.protocol": s.security_protocol,
        }
        if s.sasl_mechanism:
            conf["sasl.mechanism"] = s.sasl_mechanism
        if s.sasl_username is not None:
            conf["sasl.username"] = s.sasl_username
        if s.sasl_password is not None:
            conf["sasl.password"] = self.secret(s.sasl_password)
        # librdkafka retries a lost broker by itself and logs each try; what matters surfaces as an error
        # of a call (one line, through self.fail). Level 2: only its critical lines (``config`` may lower it)
        conf["log_level"] = 2
        conf.update(s.config)
        conf["error_cb"] = self._on_error
        conf["logger"] = _QUIET
        return conf

    def _on_error(self, err: Any) -> None:
        """librdkafka reports broker trouble here and retries by itself; fatal ones surface on calls."""

    def error(self, exc: BaseException, doing: str) -> NoReturn:
        code = _code(exc)
        err: Any = exc.args[0] if exc.args else None
        describe = getattr(err, "str", None)
        text = str(describe()) if callable(describe) else (str(exc).splitlines() or [""])[0]
        self.fail(
            f"{doing} topic {self.settings.topic!r}: {text} ({code or type(exc).__name__})",
            retryable=code not in _FATAL_CODES,
        )

    def partitions_of(self, client: Any) -> list[int]:
        try:
            meta = client.list_topics(self.settings.topic, timeout=self.settings.timeout)
        except Exception as exc:  # KafkaException: brokers unreachable within the timeout
            self.error(exc, "listing the partitions of")
        topic = meta.topics.get(self.settings.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            reason = topic.error.str() if topic is not None and topic.error is not None else "no partitions"
            self.fail(
                f"topic {self.settings.topic!r} cannot be read: {reason}; create it first", retryable=False
            )
        found = sorted(topic.partitions)
        wanted = self.settings.partitions
        if wanted is not None:
            missing = sorted(set(wanted) - set(found))
            if missing:
                self.fail(
                    f"topic {self.settings.topic!r} has no partition {missing[0]} (it has {len(found)})",
                    retryable=False,
                )
            return sorted(wanted)
        return found

    def check(self) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer({**self.client_config(), "group.id": "udop-check", "enable.auto.commit": False})
        try:
            self.partitions_of(consumer)
        finally:
            consumer.close()

    def stream(self) -> KafkaStream:
        return KafkaStream(self)

    # ------------------------------------------------------------------ produce

    def write(
        self, batches: Iterable[pa.RecordBatch], mode: WriteMode | None = None, keys: list[str] | None = None
    ) -> int:
        rows, _found = self.write_once(
            batches, mode or "append", keys or [], LoadEntry(pipeline="", run_id="", task_id="")
        )
        return rows

    def write_once(
        self, batches: Iterable[pa.RecordBatch], mode: str, keys: list[str], entry: LoadEntry
    ) -> tuple[int, bool]:
        from confluent_kafka import KafkaException, Producer

        self.resolve_mode(mode, keys)  # type: ignore[arg-type]
        producer = Producer({**self.client_config(), "enable.idempotence": True, "linger.ms": 5})
        failures: list[BaseException] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None and not failures:
                failures.append(KafkaException(err))

        key_column = self.settings.key_column
        position = 0
        try:
            for batch in batches:
                for row in batch.to_pylist():
                    key = row.get(key_column) if key_column else None
                    value = json.dumps(row, default=str, ensure_ascii=False).encode()
                    headers: list[tuple[str, str | bytes | None]] | None = (
                        [("udop-message-id", entry.message_id(position))] if entry.run_id else None
                    )
                    while True:
                        try:
                            producer.produce(
                                self.settings.topic,
                                value=value,
                                key=None if key is None else str(key).encode(),
                                headers=headers,
                                on_delivery=delivered,
                            )
                            break
                        except BufferError:  # the local queue is full: let deliveries drain it
                            producer.poll(0.1)
                    position += 1
                producer.poll(0)
            left = producer.flush(self.settings.timeout)
        except KafkaException as exc:
            self.error(exc, "producing to")
        if failures:
            self.error(failures[0], "producing to")
        if left:
            self.fail(
                f"{left} messages not delivered to topic {self.settings.topic!r} within "
                f"{self.settings.timeout:g} s",
                retryable=True,
            )
        return position, False


def _quiet_logger() -> Any:
    import logging

    logger = logging.getLogger("udop.kafka.librdkafka")
    logger.setLevel(logging.ERROR)
    return logger


_QUIET = _quiet_logger()


class KafkaStream:
    """A topic consumed by explicit assignment from offsets udop keeps (``{"partition": next offset}``)."""

    def __init__(self, connector: KafkaConnector) -> None:
        from confluent_kafka import Consumer

        self.connector = connector
        s = connector.settings
        self.consumer = Consumer(
            {
                **connector.client_config(),
                # required by the client even though udop never joins or commits to the group
                "group.id": f"udop-stream-{s.topic}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
                # back-pressure: the client's prefetch stays bounded while a slow batch runs
                "queued.max.messages.kbytes": int(s.config.get("queued.max.messages.kbytes", 16384)),
            }
        )
        self.partitions: list[int] = []
        self.next: dict[int, int] = {}
        self.schema = schema_from_mapping(s.columns)
        self._lag_checked = 0.0
        self._lag: int | None = None

    def seek(self, positions: Mapping[str, Any]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

        s = self.connector.settings
        self.partitions = self.connector.partitions_of(self.consumer)
        default = OFFSET_BEGINNING if s.start == "earliest" else OFFSET_END
        assignment = []
        for p in self.partitions:
            stored = positions.get(str(p))
            offset = int(stored) if stored is not None else default
            if stored is not None:
                self.next[p] = int(stored)
            assignment.append(TopicPartition(s.topic, p, offset))
        self.consumer.assign(assignment)

    def poll(self, max_rows: int, max_seconds: float, stop: threading.Event) -> StreamBatch | None:
        from confluent_kafka import KafkaError, KafkaException

        messages: list[Any] = []
        deadline: float | None = None
        while len(messages) < max_rows and not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - now))
            try:
                got = self.consumer.consume(min(max_rows - len(messages), 10_000), wait)
            except KafkaException as exc:
                self.connector.error(exc, "consuming")
            for m in got:
                err = m.error()
                if err is not None:
                    # librdkafka reconnects and refetches by itself after transient errors; only a fatal
                    # one (a deleted topic, refused credentials) ends the stream
                    if err.code() != KafkaError._PARTITION_EOF and (
                        err.fatal() or err.name() in _FATAL_CODES
                    ):
                        self.connector.error(KafkaException(err), "consuming")
                    continue
                messages.append(m)
            if messages and deadline is None:
                deadline = time.monotonic() + max_seconds
            if not messages and deadline is None and not got:
                return None  # nothing within half a second: let the runner report and look at stop
        if not messages:
            return None
        return self._batch(messages)

    def _batch(self, messages: list[Any]) -> StreamBatch:
        # one comprehension per column: per-message calls into the client are the cost here
        keys: list[bytes | None] = [m.key() for m in messages]
        values: list[bytes | None] = [m.value() for m in messages]
        partitions: list[int] = [m.partition() for m in messages]
        offsets: list[int] = [m.offset() for m in messages]
        stamps: list[int] = [m.timestamp()[1] for m in messages]
        # a partition's messages arrive in offset order: its last one wins
        last = dict(zip(partitions, offsets, strict=True))
        end: dict[str, int] = {str(p): o + 1 for p, o in last.items()}
        meta = {
            "_key": (
                pa.nulls(len(keys), pa.string())
                if keys.count(None) == len(keys)
                else pa.array(
                    [None if k is None else k.decode("utf-8", "replace") for k in keys], pa.string()
                )
            ),
            "_partition": pa.array(partitions, type=pa.int32()),
            "_offset": pa.array(offsets, type=pa.int64()),
            "_timestamp": pa.array(stamps, type=pa.timestamp("ms", "UTC")),
        }
        table = messages_table(values, meta, self.connector.settings.format, self.schema)
        for p_text, o in end.items():
            self.next[int(p_text)] = o
        return StreamBatch(table=table, end=end)

    def commit(self, end: Mapping[str, Any], acks: list[Any]) -> None:
        """Nothing to tell the brokers: the offsets are udop's (committed with the batch)."""

    def lag(self) -> int | None:
        """Messages beyond what was read, summed over the partitions (checked at most every 2 s)."""
        from confluent_kafka import KafkaException, TopicPartition

        now = time.monotonic()
        if now - self._lag_checked < 2.0:
            return self._lag
        self._lag_checked = now
        total = 0
        try:
            for p in self.partitions:
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.connector.settings.topic, p), timeout=1.0, cached=False
                )
                total += max(0, high - self.next.get(p, low))
        except KafkaException:
            return self._lag
        self._lag = total
        return total

    def close(self) -> None:
        self.consumer.close()
        self.connector.close()
