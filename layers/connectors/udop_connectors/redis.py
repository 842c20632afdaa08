"""The ``redis`` connector: string keys, hashes and streams.

Reads scan keys matching ``pattern`` (``SCAN``, never ``KEYS``) or page through a stream with
``XRANGE``; writes go in ONE ``MULTI``/``EXEC`` transaction, so a load that fails part way leaves
nothing behind, and a load's ledger entry (``udop:load-ledger:<load>``) commits
in it. Streams carry a ``position`` column (``ms * 1_000_000 + seq`` of the entry id)
that works as an incremental watermark.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NoReturn, TypedDict

import pyarrow as pa
from pydantic import ConfigDict, Field, model_validator

from udop import faults
from udop.connectors import Connector, ConnectorSettings, LoadEntry, Secret
from udop.connectors.base import WriteMode
from udop.lineage.naming import Dataset, host_dataset, url_dataset
from udop.stream import StreamBatch
from udop_connectors._arrow import ColumnTypes, records_to_batch, schema_from_mapping

if TYPE_CHECKING:  # redis is imported when a client is first needed (the layer's cold start)
    from redis.retry import Retry

__all__ = ["RedisConnector", "RedisSettings", "RedisStream"]

_SEQ = 1_000_000


class _ClientOptions(TypedDict):
    """The options both client constructors (URL or host/port) get."""

    decode_responses: bool
    socket_connect_timeout: float
    socket_timeout: float
    retry: Retry


class RedisSettings(ConnectorSettings):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Secret | None = Field(None, description="redis://[user:password@]host:port/db or rediss://")
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: Secret | None = None
    ssl: bool = False
    kind: Literal["keys", "hash", "stream"] = "keys"
    pattern: str | None = Field(None, description="keys/hash: SCAN MATCH pattern, e.g. 'user:*'")
    stream: str | None = Field(None, description="stream: the stream's key")
    key_column: str = "key"
    value_column: str = "value"
    key_prefix: str = Field("", description="write: prepended to the key column's values")
    ttl: int | None = Field(None, ge=1, description="write: expire written keys after this many seconds")
    columns: ColumnTypes = None
    max_entries: int | None = Field(None, ge=1, description="stream: read at most this many entries")
    group: str | None = Field(None, description="udop stream: the consumer group (default udop-<stream>)")
    consumer: str = Field("udop", description="udop stream: this consumer's name in the group")
    start: Literal["earliest", "latest"] = Field(
        "earliest", description="udop stream: where a new consumer group starts")

    @model_validator(mode="after")
    def _needs(self) -> RedisSettings:
        if self.kind == "stream" and not self.stream:
            raise ValueError("kind: stream needs 'stream' (the stream's key)")
        return self


class RedisConnector(Connector):
    name = "redis"
    Settings: ClassVar[type[ConnectorSettings]] = RedisSettings
    pushes_down_incremental = True

    settings: RedisSettings

    def dataset(self) -> Dataset:
        s = self.settings
        name = s.stream if s.kind == "stream" and s.stream else (s.pattern or f"{s.key_prefix}*")
        if s.url is not None:
            found = url_dataset(self.secret(s.url) or "", default_port=6379, scheme="redis")
            db = found.name or str(s.db)
            return Dataset(found.namespace, f"{db}/{name}")
        return host_dataset("redis", s.host, s.port, f"{s.db}/{name}")

    def __init__(self, settings: ConnectorSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._client: Any = None
        self.pushes_down_incremental = self.settings.kind == "stream"

    @property
    def client(self) -> Any:
        if self._client is None:
            import redis
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry

            s = self.settings
            # a short client-side retry: the task's own retry policy handles longer outages
            opts: _ClientOptions = {
                "decode_responses": True,
                "socket_connect_timeout": 5,
                "socket_timeout": 30,
                "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            }
            if s.url is not None:
                self._client = redis.Redis.from_url(self.secret(s.url) or "", **opts)
            else:
                self._client = redis.Redis(
                    host=s.host,
                    port=s.port,
                    db=s.db,
                    username=s.username,
                    password=self.secret(s.password),
                    ssl=s.ssl,
                    **opts,
                )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _error(self, exc: Exception, doing: str) -> NoReturn:
        import redis

        text = " ".join(str(exc).split())[:300]
        if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
            self.fail(f"{doing}: login refused (check the user and password): {text}", retryable=False)
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            self.fail(f"{doing}: cannot reach Redis: {text}", retryable=True)
        if isinstance(exc, redis.ResponseError) and text.startswith(("NOAUTH", "WRONGPASS")):
            self.fail(f"{doing}: login refused (check the user and password): {text}", retryable=False)
        self.fail(f"{doing}: {text}", retryable=False)

    def check(self) -> None:
        import redis

        try:
            self.client.ping()
        except redis.RedisError as exc:
            self._error(exc, "ping")

    def stream(self) -> RedisStream:
        if self.settings.kind != "stream" or not self.settings.stream:
            self.fail("udop stream reads a Redis stream: set kind: stream and stream: <key>", retryable=False)
        return RedisStream(self)

    # -- read --------------------------------------------------------------------------------------
    def read(self, *, since: Any = None) -> Iterator[pa.RecordBatch]:
        import redis

        try:
            if self.settings.kind == "stream":
                yield from self._read_stream(since)
            else:
                yield from self._read_keys()
        except redis.RedisError as exc:
            self._error(exc, "read")

    def _read_keys(self) -> Iterator[pa.RecordBatch]:
        s = self.settings
        if not s.pattern:
            self.fail(f"kind: {s.kind} needs 'pattern' to read (e.g. 'user:*')", retryable=False)
        typed = schema_from_mapping(s.columns)
        keys: list[str] = []
        for key in self.client.scan_iter(match=s.pattern, count=1000):
            keys.append(key)
            if len(keys) >= s.batch_size:
                yield self._fetch(keys, typed)
                keys = []
        if keys:
            yield self._fetch(keys, typed)

    def _fetch(self, keys: list[str], typed: pa.Schema | None) -> pa.RecordBatch:
        s = self.settings
        if s.kind == "keys":
            values = self.client.mget(keys)
            rows = [
                {s.key_column: k, s.value_column: v}
                for k, v in zip(keys, values, strict=True)
                if v is not None
            ]
        else:
            pipe = self.client.pipeline(transaction=False)
            for k in keys:
                pipe.hgetall(k)
            rows = [{s.key_column: k, **h} for k, h in zip(keys, pipe.execute(), strict=True) if h]
        return (
            records_to_batch(rows, typed)
            if rows
            else pa.RecordBatch.from_pydict({s.key_column: pa.array([], pa.string())})
        )

    def _read_stream(self, since: Any) -> Iterator[pa.RecordBatch]:
        s = self.settings
        typed = schema_from_mapping(s.columns)
        start = "-" if since is None else f"({int(since) // _SEQ}-{int(since) % _SEQ}"
        read = 0
        while True:
            count = s.batch_size if s.max_entries is None else min(s.batch_size, s.max_entries - read)
            if count <= 0:
                return
            entries = self.client.xrange(s.stream, min=start, max="+", count=count)
            if not entries:
                return
            rows = []
            for entry_id, fields in entries:
                ms, _, seq = entry_id.partition("-")
                rows.append({"id": entry_id, "position": int(ms) * _SEQ + int(seq), **fields})
            batch = records_to_batch(
                rows,
                None
                if typed is None
                else pa.schema([pa.field("id", pa.string()), pa.field("position", pa.int64()), *typed]),
            )
            read += len(rows)
            yield batch
            start = f"({entries[-1][0]}"

    # -- write -------------------------------------------------------------------------------------
    def write(
        self, batches: Iterable[pa.RecordBatch], mode: WriteMode | None = None, keys: list[str] | None = None
    ) -> int:
        return self._write(batches, mode, keys, None)[0]

    keeps_ledger = True

    @staticmethod
    def _ledger_key(entry: LoadEntry) -> str:
        return f"udop:load-ledger:{entry.key}"

    def loaded(self, entry: LoadEntry) -> int | None:
        import redis

        try:
            found = self.client.get(self._ledger_key(entry))
        except redis.RedisError as exc:
            self._error(exc, "read the load ledger")
        return None if found is None else int(found)

    def write_once(
        self, batches: Iterable[pa.RecordBatch], mode: str, keys: list[str], entry: LoadEntry
    ) -> tuple[int, bool]:
        return self._write(batches, mode, keys, entry)  # type: ignore[arg-type]

    def _write(
        self,
        batches: Iterable[pa.RecordBatch],
        mode: WriteMode | None,
        keys: list[str] | None,
        entry: LoadEntry | None,
    ) -> tuple[int, bool]:
        """One ``MULTI``/``EXEC``; with a ledger entry the transaction also sets the entry's key,
        under ``WATCH``, so two attempts of one load cannot both commit and a repeated load finds
        the entry and writes nothing. Stream entries of a load carry ``udop_id`` (run, task, row
        position) as well."""
        import redis

        mode, _ = self.resolve_mode(mode, keys)
        s = self.settings
        if s.kind == "stream" and mode != "append":
            self.fail("a stream can only be appended to (mode: append)", retryable=False)
        ledger = self._ledger_key(entry) if entry is not None else None
        try:
            pipe = self.client.pipeline(transaction=True)
            if ledger is not None:
                pipe.watch(ledger)
                found = pipe.get(ledger)
                if found is not None:
                    pipe.reset()
                    return int(found), True
                pipe.multi()
            if mode == "overwrite":
                if not s.pattern:
                    self.fail("mode: overwrite needs 'pattern' (the keys to replace)", retryable=False)
                old = list(self.client.scan_iter(match=s.pattern, count=1000))
                for i in range(0, len(old), 1000):
                    pipe.delete(*old[i : i + 1000])
            total = 0
            for batch in batches:
                if batch.num_rows and s.kind != "stream" and s.key_column not in batch.schema.names:
                    self.fail(
                        f"the data has no key column {s.key_column!r} (set 'key_column')", retryable=False
                    )
                for row in batch.to_pylist():
                    if s.kind == "stream" and entry is not None:
                        self._queue(pipe, {**row, "udop_id": entry.message_id(total)})
                    else:
                        self._queue(pipe, row)
                    total += 1
            if ledger is not None:
                pipe.set(ledger, str(total))
            faults.point("load-before-commit")
            pipe.execute()  # MULTI ... EXEC: all of it or nothing
            return total, False
        except redis.WatchError:
            # another attempt of this load committed first
            assert entry is not None
            return int(self.loaded(entry) or 0), True
        except redis.RedisError as exc:
            self._error(exc, "write")

    def _queue(self, pipe: Any, row: dict[str, Any]) -> None:
        s = self.settings
        if s.kind == "stream":
            pipe.xadd(s.stream, {k: _text(v) for k, v in row.items() if v is not None})
            return
        key = s.key_prefix + str(row[s.key_column])
        if s.kind == "keys":
            if s.value_column not in row:
                self.fail(
                    f"the data has no value column {s.value_column!r} (set 'value_column')", retryable=False
                )
            pipe.set(key, _text(row[s.value_column]), ex=s.ttl)
        else:
            fields = {k: _text(v) for k, v in row.items() if k != s.key_column and v is not None}
            pipe.delete(key)
            if fields:
                pipe.hset(key, mapping=fields)
            if s.ttl:
                pipe.expire(key, s.ttl)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, bool):
        return "1" if value else "0"
    return "" if value is None else str(value)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisStream:
    """A Redis stream consumed by a consumer group: entries are acknowledged (``XACK``) only after their
    batch committed in udop, and the last committed id is udop's position. On start the consumer's
    pending entries (read before a crash, never acknowledged) come first: those at or before the
    committed position were committed and are only acknowledged, the rest form batches again."""

    def __init__(self, connector: RedisConnector) -> None:
        self.connector = connector
        s = connector.settings
        assert s.stream is not None
        self.key: str = s.stream
        self.group = s.group or f"udop-{s.stream}"
        self.schema = schema_from_mapping(s.columns)
        self.committed: str | None = None
        #: where the next read of this consumer's pending entries starts (None: none left)
        self.pel_after: str | None = "0"

    def _call(self, doing: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            self.connector._error(exc, f"{doing} stream {self.key!r}")

    def seek(self, positions: Mapping[str, Any]) -> None:
        import redis

        self.committed = positions.get(self.key)
        client = self.connector.client
        first = self.committed or ("0" if self.connector.settings.start == "earliest" else "$")
        try:
            client.xgroup_create(self.key, self.group, id=first, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                self.connector._error(exc, f"creating consumer group {self.group!r} of")
        except redis.RedisError as exc:
            self.connector._error(exc, f"creating consumer group {self.group!r} of")
        self.pel_after = "0"

    def poll(self, max_rows: int, max_seconds: float, stop: threading.Event) -> StreamBatch | None:
        entries = self._pending(max_rows) if self.pel_after is not None else []
        if not entries:
            entries = self._new(max_rows, max_seconds, stop)
        if not entries:
            return None
        rows = [dict(fields) for _entry_id, fields in entries]
        body = pa.Table.from_batches([records_to_batch(rows, self.schema)])
        ids = [entry_id for entry_id, _fields in entries]
        body = body.append_column("_id", pa.array(ids, type=pa.string()))
        return StreamBatch(table=body, end={self.key: ids[-1]}, acks=ids)

    def _read(self, start: str, count: int, block: int | None) -> list[tuple[str, dict[str, str]]]:
        consumer = self.connector.settings.consumer
        got = self._call("reading", self.connector.client.xreadgroup, self.group, consumer, {self.key: start},
                         count=count, block=block)
        return list(got[0][1]) if got else []

    def _pending(self, max_rows: int) -> list[tuple[str, dict[str, str]]]:
        """This consumer's entries read before a restart and never acknowledged, oldest first."""
        entries: list[tuple[str, dict[str, str]]] = []
        while self.pel_after is not None and len(entries) < max_rows:
            found = self._read(self.pel_after, max_rows - len(entries), None)
            if not found:
                self.pel_after = None  # done: new entries from here
                break
            self.pel_after = found[-1][0]
            stale = [i for i, _f in found if self.committed and _id_key(i) <= _id_key(self.committed)]
            if stale:  # committed before a crash that came before their XACK
                self._call("acknowledging", self.connector.client.xack, self.key, self.group, *stale)
            entries.extend((i, f) for i, f in found if i not in set(stale))
        return entries

    def _new(self, max_rows: int, max_seconds: float, stop: threading.Event
             ) -> list[tuple[str, dict[str, str]]]:
        entries: list[tuple[str, dict[str, str]]] = []
        deadline: float | None = None
        while len(entries) < max_rows and not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait = 0.5 if deadline is None else max(0.001, min(0.5, deadline - now))
            found = self._read(">", max_rows - len(entries), int(wait * 1000))
            entries.extend(found)
            if not entries:
                break  # nothing for half a second: the runner reports and looks at its stop flag
            if deadline is None:
                deadline = time.monotonic() + max_seconds
        return entries

    def commit(self, end: Mapping[str, Any], acks: list[Any]) -> None:
        if acks:
            self._call("acknowledging", self.connector.client.xack, self.key, self.group, *acks)
        self.committed = end.get(self.key, self.committed)

    def lag(self) -> int | None:
        groups = self._call("describing", self.connector.client.xinfo_groups, self.key)
        for group in groups:
            if group.get("name") == self.group:
                lag = group.get("lag")
                return int(lag) if lag is not None else None
        return None

    def close(self) -> None:
        self.connector.close()
