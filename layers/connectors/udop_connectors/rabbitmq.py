"""The ``rabbitmq`` connector: consume a bounded batch of messages, acknowledged only after what was
read is safely stored (``acknowledge`` is called by ``extract_to_parquet`` once the Parquet output is
in place; a crash before that returns the messages to the queue), and publish rows as persistent
JSON messages inside one AMQP transaction with ``mandatory`` routing (an unroutable message is an
error). The broker cannot commit a load's ledger entry with its messages, so the entry goes to the
state store right after: a crash between the two repeats the load, at-least-once; every message
carries a stable ``message_id`` (run, task, row position) for consumers to drop repeats."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, Literal, NoReturn

import pyarrow as pa
from pydantic import ConfigDict, Field

from udop import faults
from udop.connectors import Connector, ConnectorSettings, LoadEntry, Secret
from udop.connectors.base import WriteMode
from udop.lineage.naming import Dataset, host_dataset, url_dataset
from udop.spec.types import Duration
from udop.stream import StreamBatch
from udop_connectors._arrow import ColumnTypes, messages_table, records_to_batch, schema_from_mapping

__all__ = ["RabbitMQConnector", "RabbitMQSettings", "RabbitMQStream"]

#: a load's ledger entry (in the state store) lives as long as its run can be resumed or redriven
LEDGER_TTL = 15 * 86400.0


class RabbitMQSettings(ConnectorSettings):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Secret | None = Field(None, description="amqp://user:password@host:5672/vhost (or amqps://)")
    host: str = "127.0.0.1"
    port: int = 5672
    vhost: str = "/"
    user: str = "guest"
    password: Secret | None = None
    queue: str = Field(description="read: the queue consumed; write: the routing key by default")
    exchange: str = Field("", description="write: exchange to publish to ('' is the default exchange)")
    routing_key: str | None = None
    max_messages: int = Field(10_000, ge=1, description="read at most this many messages per run")
    prefetch: int = Field(10_000, ge=1, le=65_535, description="unacknowledged messages the broker "
                          "may hand the consumer at once (udop stream; read: per window)")
    queue_type: Literal["classic", "stream"] = Field(
        "classic", description="udop stream: 'stream' for a stream queue (x-queue-type: stream), read "
        "from the offset udop keeps")
    wait: Duration = Field(
        0.0, description="read: how long to wait for more messages once the queue is empty"
    )
    format: Literal["json", "text"] = Field("json", description="message bodies: JSON objects or plain text")
    columns: ColumnTypes = None


class RabbitMQConnector(Connector):
    name = "rabbitmq"
    Settings: ClassVar[type[ConnectorSettings]] = RabbitMQSettings
    write_modes = ("append",)

    settings: RabbitMQSettings

    def dataset(self) -> Dataset:
        s = self.settings
        # written through an exchange the messages go to exchange/routing key, else to the queue
        name = f"{s.exchange}/{s.routing_key or s.queue}" if s.exchange else s.queue
        if s.url is not None:
            return url_dataset(self.secret(s.url) or "", default_port=5672, scheme="rabbitmq", name=name)
        return host_dataset("rabbitmq", s.host, s.port, name)

    def __init__(self, settings: ConnectorSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._conn: Any = None
        self._channel: Any = None
        self._last_tag: int | None = None

    #: read: seconds a prefetch window waits for a message the queue reported ready before it ends
    WINDOW_IDLE = 0.5

    def _error(self, exc: Exception, doing: str) -> NoReturn:
        import pika.exceptions as pe

        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        if isinstance(
            exc, pe.ProbableAuthenticationError | pe.AuthenticationError | pe.ProbableAccessDeniedError
        ):
            self.fail(f"{doing}: login refused (check the user and password)", retryable=False)
        if isinstance(exc, pe.ChannelClosedByBroker) and exc.reply_code == 404:
            self.fail(f"{doing}: {exc.reply_text}", retryable=False)
        if isinstance(exc, pe.AMQPConnectionError | pe.StreamLostError | pe.ConnectionClosed):
            self.fail(f"{doing}: cannot reach RabbitMQ ({type(exc).__name__}) {text}", retryable=True)
        self.fail(f"{doing}: {text}", retryable=False)

    @property
    def channel(self) -> Any:
        if self._channel is None:
            import pika

            s = self.settings
            if s.url is not None:
                params = pika.URLParameters(self.secret(s.url) or "")
            else:
                params = pika.ConnectionParameters(
                    host=s.host,
                    port=s.port,
                    virtual_host=s.vhost,
                    credentials=pika.PlainCredentials(s.user, self.secret(s.password) or "guest"),
                    connection_attempts=1,
                    socket_timeout=5,
                    blocked_connection_timeout=30,
                )
            try:
                self._conn = pika.BlockingConnection(params)
                self._channel = self._conn.channel()
            except Exception as exc:
                self._error(exc, "connect")
        return self._channel

    def close(self) -> None:
        # closing without an ack hands every unacknowledged message back to the queue
        if self._conn is not None and self._conn.is_open:
            self._conn.close()
        self._conn = self._channel = None
        self._last_tag = None

    def check(self) -> None:
        import pika.exceptions

        try:
            self.channel.queue_declare(self.settings.queue, passive=True)
        except pika.exceptions.AMQPError as exc:
            self._error(exc, f"queue {self.settings.queue!r}")

    def read(self, *, since: Any = None) -> Iterator[pa.RecordBatch]:
        """One bounded batch: up to ``max_messages``, until the queue has no ready message (after
        ``wait`` seconds from the start, if set). Consumed with ``basic_consume`` in prefetch windows
        (``basic.qos``) rather than one ``basic_get`` round trip per message. Nothing is acked while
        reading, so a consumer receives at most its window; each window is at most what the queue
        held ready and what the bound still allows, then its consumer is cancelled (pika rejects,
        with requeue, anything that arrives after that) — the broker never hands this channel more
        than the batch takes. The messages stay unacknowledged until ``acknowledge``."""
        import pika.exceptions

        s = self.settings
        if s.queue_type == "stream":
            self.fail(
                f"queue {s.queue!r} is a stream queue: read it with `udop stream` (it keeps the offset)",
                retryable=False,
            )
        typed = schema_from_mapping(s.columns)
        rows: list[dict[str, Any]] = []
        got = 0
        idle_until = time.monotonic() + s.wait
        try:
            channel = self.channel
            while got < s.max_messages:
                ready = int(channel.queue_declare(s.queue, passive=True).method.message_count)
                if ready == 0:
                    if time.monotonic() >= idle_until:
                        break
                    time.sleep(0.05)
                    continue
                window = min(ready, s.max_messages - got, s.prefetch)
                channel.basic_qos(prefetch_count=window)
                taken = 0
                deliveries = channel.consume(s.queue, inactivity_timeout=self.WINDOW_IDLE)
                try:
                    for method, _props, body in deliveries:
                        if method is None:
                            break  # fewer came than were ready: another consumer took them
                        self._last_tag = method.delivery_tag
                        got += 1
                        taken += 1
                        rows.append(self._record(body, method.delivery_tag))
                        if len(rows) >= s.batch_size:
                            yield records_to_batch(rows, typed)
                            rows = []
                        if taken >= window:
                            break
                finally:
                    # the window is taken, or the read failed or was abandoned: stop the consumer (what
                    # it was handed stays unacked, requeued if the connection closes without an ack)
                    with contextlib.suppress(pika.exceptions.AMQPError):
                        if channel.is_open:
                            channel.cancel()
                if taken == 0 and time.monotonic() >= idle_until:
                    break  # ready messages this consumer is not given (e.g. a single active consumer)
        except pika.exceptions.AMQPError as exc:
            self._error(exc, f"consume from queue {s.queue!r}")
        if rows:
            yield records_to_batch(rows, typed)

    def _record(self, body: bytes, tag: int) -> dict[str, Any]:
        if self.settings.format == "text":
            return {"body": body.decode("utf-8", errors="replace")}
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.fail(
                f"queue {self.settings.queue!r}: message {tag} is not JSON (it starts with "
                f"{body[:40]!r}); use format: text, or remove it",
                retryable=False,
            )
        return data if isinstance(data, dict) else {"value": data}

    def stream(self) -> RabbitMQStream:
        return RabbitMQStream(self)

    def acknowledge(self) -> None:
        """Ack everything read so far (one ``basic_ack`` with ``multiple=True``)."""
        import pika.exceptions

        if self._last_tag is None:
            return
        try:
            self.channel.basic_ack(delivery_tag=self._last_tag, multiple=True)
        except pika.exceptions.AMQPError as exc:
            self._error(exc, "acknowledge")
        self._last_tag = None

    keeps_ledger = True

    def _ledger_key(self, entry: LoadEntry) -> str:
        return f"udop:load-ledger:rabbitmq:{entry.key}:{self.settings.exchange}:{self._routing_key()}"

    def _routing_key(self) -> str:
        return self.settings.routing_key or self.settings.queue

    def loaded(self, entry: LoadEntry) -> int | None:
        if self.state is None:
            return None
        found = self.state.get(self._ledger_key(entry))
        return None if found is None else int(json.loads(found)["rows"])

    def write(
        self, batches: Iterable[pa.RecordBatch], mode: WriteMode | None = None, keys: list[str] | None = None
    ) -> int:
        return self._publish(batches, mode, keys, None)

    def write_once(
        self, batches: Iterable[pa.RecordBatch], mode: str, keys: list[str], entry: LoadEntry
    ) -> tuple[int, bool]:
        found = self.loaded(entry)
        if found is not None:
            return found, True
        rows = self._publish(batches, mode, keys, entry)  # type: ignore[arg-type]
        if self.state is not None:
            # the window between the broker's commit and this record is the at-least-once part:
            # a load repeated after a crash right here publishes again, with the same message ids
            self.state.set(self._ledger_key(entry), json.dumps({"rows": rows}), ttl=LEDGER_TTL)
        return rows, False

    def _publish(
        self,
        batches: Iterable[pa.RecordBatch],
        mode: WriteMode | None,
        keys: list[str] | None,
        entry: LoadEntry | None,
    ) -> int:
        """Publish every row inside one AMQP transaction with ``mandatory`` set: ``tx.commit-ok``
        is the broker's confirmation that it took every message (persisted, for a durable queue),
        a failure before it delivers none, and a message no queue takes is an error, not a silent
        drop. A load's messages carry ids from its run, task and row position."""
        import pika
        import pika.exceptions

        self.resolve_mode(mode, keys)
        s = self.settings
        exchange, routing_key = s.exchange, self._routing_key()
        returned: list[bytes] = []
        total = 0
        try:
            channel = self.channel
            channel.add_on_return_callback(lambda _ch, _method, _props, body: returned.append(body))
            channel.tx_select()
            try:
                for batch in batches:
                    for row in batch.to_pylist():
                        props = pika.BasicProperties(
                            content_type="application/json",
                            delivery_mode=2,
                            message_id=entry.message_id(total) if entry is not None else None,
                        )
                        body = json.dumps(row, default=str).encode()
                        channel.basic_publish(exchange, routing_key, body, props, mandatory=True)
                        total += 1
                faults.point("load-before-commit")
            except BaseException:
                if channel.is_open:
                    channel.tx_rollback()
                raise
            channel.tx_commit()  # every message or none
            # the broker sends a basic.return for each unroutable message before commit-ok; pika
            # hands them to the callback on the next pass over the connection's events
            self._conn.process_data_events(0)
        except pika.exceptions.AMQPError as exc:
            self._error(exc, f"publish to {exchange or 'the default exchange'}")
        if returned:
            # one exchange and routing key per load: when one message finds no queue, none do
            self.fail(
                f"publish to {exchange or 'the default exchange'} with routing key {routing_key!r}: "
                f"no queue took the {len(returned)} message(s) (does the queue exist, is it bound?); "
                "nothing was delivered",
                retryable=False,
            )
        return total


class RabbitMQStream:
    """A queue consumed continuously (``udop stream``), with a prefetch window as the broker's side of
    back-pressure. A stream queue (``queue_type: stream``) is read from the offset udop keeps (the
    ``x-stream-offset`` after the last committed batch), as Kafka is. For a classic queue, a batch's
    messages are acknowledged only after it committed in udop; each batch carries the messages' ids
    (``message_id``) and the broker's ``redelivered`` flags, and the runner keeps the ids of committed
    batches (``KEEP_IDS``), so a message the broker hands back after a crash between the commit and
    the ack — of any batch, not only the last — is acknowledged, not loaded again. Messages without a
    ``message_id`` cannot be told apart: for them that moment is at-least-once.

    pika's connection belongs to one thread: the reader thread polls, and the acknowledgements the
    runner asks for are sent by it at its next poll (or by ``close``)."""

    #: seconds the ids of committed messages are kept: a classic queue keeps an unacknowledged message
    #: until it is acknowledged, so this is how long udop may stay stopped after a crash between a
    #: batch's commit and its ack and still recognize the batch's messages when they come back
    KEEP_IDS = 14 * 86400.0

    def __init__(self, connector: RabbitMQConnector) -> None:
        self.connector = connector
        self.schema = schema_from_mapping(connector.settings.columns)
        self._ack_up_to: int | None = None
        #: delivery tags count per channel: a batch's ack names its channel, and one read on a channel
        #: since closed (a batch recovered at start-up) is not sent (the broker requeued its messages)
        self._channel: Any = None
        self._channel_token = ""
        self._lock = threading.Lock()
        self._deliveries: Any = None
        self.offset: int | str = "first"

    def seek(self, positions: Mapping[str, Any]) -> None:
        import pika.exceptions

        offset = positions.get("offset")
        self.offset = int(offset) if offset is not None else "first"
        self._deliveries = None  # a stream queue's consumer starts at the offset given when it is made
        try:
            self.connector.channel.basic_qos(prefetch_count=self.connector.settings.prefetch)
        except pika.exceptions.AMQPError as exc:
            self.connector._error(exc, f"consume from queue {self.connector.settings.queue!r}")

    def _send_acks(self) -> None:
        with self._lock:
            tag, self._ack_up_to = self._ack_up_to, None
        if tag is not None:
            self.connector.channel.basic_ack(delivery_tag=tag, multiple=True)

    def poll(self, max_rows: int, max_seconds: float, stop: threading.Event) -> StreamBatch | None:
        import pika.exceptions

        s = self.connector.settings
        bodies: list[bytes] = []
        ids: list[str | None] = []
        again: list[bool] = []
        tags: list[int] = []
        offsets: list[int] = []
        deadline: float | None = None
        try:
            self._send_acks()
            channel = self.connector.channel
            with self._lock:
                if channel is not self._channel:
                    self._channel, self._channel_token = channel, uuid.uuid4().hex
                token = self._channel_token
            stream_queue = s.queue_type == "stream"
            if self._deliveries is None:  # one consumer for the stream's life: its deliveries stay in order
                arguments = {"x-stream-offset": self.offset} if stream_queue else None
                self._deliveries = channel.consume(s.queue, inactivity_timeout=0.2, arguments=arguments)
            for method, props, body in self._deliveries:
                self._send_acks()
                if method is not None and stream_queue:
                    # a stream queue's ack is flow control only (nothing is removed or redelivered): at once
                    channel.basic_ack(delivery_tag=method.delivery_tag)
                    offsets.append(int((props.headers or {})["x-stream-offset"]))
                    bodies.append(body)
                    ids.append(getattr(props, "message_id", None))
                    tags.append(method.delivery_tag)
                    if deadline is None:
                        deadline = time.monotonic() + max_seconds
                elif method is not None:
                    bodies.append(body)
                    ids.append(getattr(props, "message_id", None))
                    again.append(bool(method.redelivered))
                    tags.append(method.delivery_tag)
                    if deadline is None:
                        deadline = time.monotonic() + max_seconds
                full = len(bodies) >= max_rows
                if full or stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                    break
                if method is None and not bodies:
                    break  # idle: let the runner report and look at its stop flag
        except pika.exceptions.AMQPError as exc:
            self.connector._error(exc, f"consume from queue {s.queue!r}")
        if not bodies:
            return None
        meta = {"_message_id": pa.array(ids, pa.string()), "_delivery_tag": pa.array(tags, pa.int64())}
        if offsets:
            meta["_offset"] = pa.array(offsets, pa.int64())
            table = messages_table(bodies, meta, s.format, self.schema)
            return StreamBatch(table=table, end={"offset": max(offsets) + 1})  # udop's position: exactly once
        table = messages_table(bodies, meta, s.format, self.schema)
        return StreamBatch(
            table=table,
            end={},
            acks=[{"channel": token, "up_to": max(tags)}],
            ids=ids,
            redelivered=again,
            keep_ids=self.KEEP_IDS,
        )

    def commit(self, end: Mapping[str, Any], acks: list[Any]) -> None:
        with self._lock:
            if "offset" in end:
                self.offset = int(end["offset"])
            for ack in acks:
                if isinstance(ack, Mapping) and ack.get("channel") == self._channel_token:
                    self._ack_up_to = max(int(ack["up_to"]), self._ack_up_to or 0)

    def lag(self) -> int | None:
        return None

    def close(self) -> None:
        import pika.exceptions

        # not acknowledged: the broker hands them back, and the ids of committed batches skip them
        with contextlib.suppress(pika.exceptions.AMQPError):
            self._send_acks()
        self._deliveries = None
        self.connector.close()
