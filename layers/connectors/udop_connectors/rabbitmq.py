"""The ``rabbitmq`` connector: consume a bounded batch of messages, acknowledged only after what was
read is safely stored (``acknowledge`` is called by ``extract_to_parquet`` once the Parquet output is
in place; a crash before that returns the messages to the queue), and publish rows as persistent
JSON messages inside one AMQP transaction."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Literal, NoReturn

import pyarrow as pa
from pydantic import ConfigDict, Field

from udop.connectors import Connector, ConnectorSettings, Secret
from udop.connectors.base import WriteMode
from udop.spec.types import Duration
from udop_connectors._arrow import ColumnTypes, records_to_batch, schema_from_mapping

__all__ = ["RabbitMQConnector", "RabbitMQSettings"]


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

    def __init__(self, settings: ConnectorSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._conn: Any = None
        self._channel: Any = None
        self._last_tag: int | None = None

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
        import pika.exceptions

        s = self.settings
        typed = schema_from_mapping(s.columns)
        rows: list[dict[str, Any]] = []
        got = 0
        idle_until = time.monotonic() + s.wait
        try:
            channel = self.channel
            while got < s.max_messages:
                method, _props, body = channel.basic_get(s.queue, auto_ack=False)
                if method is None:
                    if time.monotonic() >= idle_until:
                        break
                    time.sleep(0.05)
                    continue
                self._last_tag = method.delivery_tag
                got += 1
                rows.append(self._record(body, method.delivery_tag))
                if len(rows) >= s.batch_size:
                    yield records_to_batch(rows, typed)
                    rows = []
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

    def write(
        self, batches: Iterable[pa.RecordBatch], mode: WriteMode | None = None, keys: list[str] | None = None
    ) -> int:
        import pika
        import pika.exceptions

        self.resolve_mode(mode, keys)
        s = self.settings
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        total = 0
        try:
            channel = self.channel
            channel.tx_select()
            try:
                for batch in batches:
                    for row in batch.to_pylist():
                        channel.basic_publish(
                            s.exchange, s.routing_key or s.queue, json.dumps(row, default=str).encode(), props
                        )
                        total += 1
            except BaseException:
                if channel.is_open:
                    channel.tx_rollback()
                raise
            channel.tx_commit()  # every message or none
        except pika.exceptions.AMQPError as exc:
            self._error(exc, f"publish to {s.exchange or 'the default exchange'}")
        return total
