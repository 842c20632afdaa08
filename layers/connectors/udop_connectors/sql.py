"""SQL connectors through SQLAlchemy: ``postgres`` (psycopg 3; COPY for bulk reads and writes),
``mysql``/``mariadb`` (pymysql) and ``sqlite``.

Reads stream with a server-side cursor (``stream_results``/``yield_per``; PostgreSQL: ``COPY (query)
TO STDOUT`` parsed by Arrow's CSV reader). Every write is ONE transaction: append, overwrite (delete
+ insert) and upsert (``ON CONFLICT`` / ``ON DUPLICATE KEY``) either commit whole or leave the target
as it was.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, NoReturn

import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from pydantic import ConfigDict, Field, model_validator
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool

from udop import faults
from udop.connectors import Connector, ConnectorSettings, LoadEntry, Secret
from udop.connectors.base import WriteMode
from udop.connectors.held import holding, on_release
from udop.errors import ConnectionFailed, FatalError
from udop.lineage.naming import Dataset, file_dataset, host_dataset

__all__ = ["LEDGER_TABLE", "MySQLConnector", "PostgresConnector", "SQLiteConnector", "SqlSettings"]

#: the load ledger: one row per committed load, written in the same transaction as its rows, in the
#: target table's database and schema
LEDGER_TABLE = "udop_load_ledger"


#: engines by URL and connect arguments, shared by the connectors of a process. With NullPool an engine
#: holds no connection, only SQLAlchemy's compiled-statement cache: kept, it makes the reflection and
#: ledger queries of repeated loads into one database (a stream's micro-batches) cheap to compile
_ENGINES: dict[str, sa.Engine] = {}
_ENGINES_LOCK = threading.Lock()
#: PostgreSQL engines used inside ``hold_connections`` (``udop stream``): a pool of one connection kept
#: between loads (opening one costs a few ms per micro-batch; a second load at the same time opens one
#: more, closed after). Dropped with its connections when a write through it fails, and when the
#: outermost ``hold_connections`` ends.
_HELD: dict[str, sa.Engine] = {}


def _drop_held(key: str) -> None:
    with _ENGINES_LOCK:
        engine = _HELD.pop(key, None)
    if engine is not None:
        engine.dispose()

class _Lru:
    """A bounded mapping for the process-wide caches below: a long-lived process (the REST API runs many
    pipelines against many tables) keeps the most recently used entries, not every one it ever saw.
    An entry pushed out is only work done again (the table's catalog read, the ledger looked for)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def pop(self, key: Any) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


#: PostgreSQL target tables already checked against the data written, by (engine, schema, table, mode,
#: keys, the data's schema): (the table's signature then, its ``Table``). Every load reads the table's
#: signature (columns, types, whether the ledger exists) in one catalog query inside its transaction;
#: an entry is used only while that signature is unchanged, so a stream's repeated loads into one table
#: skip building and checking the table again yet see a table changed meanwhile. An entry is dropped
#: when a write using it fails. The most recently used 256 are kept.
_TABLES = _Lru(256)
#: ledger tables created or found by this process, by (engine, schema): not created again per load
#: (the most recently used 256)
_LEDGERS = _Lru(256)

#: one query: the target's columns, types and NOT NULL in order (none if it does not exist), whether the
#: ledger exists, and whether the target exists (a table, view or foreign table, as SQLAlchemy's
#: ``has_table``; ``to_regclass`` resolves both names like the statements do, with the search path).
#: A PostgreSQL target's ``Table`` is built from it, without SQLAlchemy's reflection (several large
#: catalog queries, compiled afresh by every new engine)
_PG_SIGNATURE = (
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
    "to_regclass(:ledger) IS NOT NULL, t.oid IS NOT NULL FROM (SELECT (SELECT c.oid FROM pg_class c "
    "WHERE c.oid = to_regclass(:table) AND c.relkind IN ('r', 'p', 'f', 'v', 'm')) AS oid) t "
    "LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped "
    "ORDER BY a.attnum"
)

_PG_TYPE_ARGS = re.compile(r"\((.*)\)")
_PG_ARRAY_DIMS = re.compile(r"((?:\[\])*)$")


def _pg_type(format_type: str) -> sa.types.TypeEngine[Any]:
    """The SQLAlchemy type PostgreSQL reflection gives a column of this ``format_type()``: the name
    looked up in the dialect's own ``ischema_names`` with the modifiers parsed the way its reflection
    does (``character varying(20)``, ``numeric(10,2)``, ``timestamp(3) with time zone``, ``int[]``).
    Enums, domains and types it does not know are a ``NullType``: read as text by ``_sql_to_arrow`` as
    reflection's ENUM/DOMAIN/NULLTYPE are, so checks and messages stay the same."""
    from sqlalchemy.dialects import postgresql as pg
    from sqlalchemy.dialects.postgresql.base import ischema_names

    found = _PG_TYPE_ARGS.search(format_type)
    args: list[str] = re.split(r"\s*,\s*", found.group(1)) if found and found.group(1) else []
    dims = _PG_ARRAY_DIMS.search(format_type)
    array_dim = len(dims.group(1)) // 2 if dims else 0
    name = _PG_ARRAY_DIMS.sub("", _PG_TYPE_ARGS.sub("", format_type))
    type_class: Any = ischema_names.get(name.lower())
    positional: tuple[Any, ...] = ()
    named: dict[str, Any] = {}
    try:
        if name == "numeric":
            if len(args) == 2:
                positional = (int(args[0]), int(args[1]))
        elif name == "double precision":
            positional = (53,)
        elif name in ("timestamp with time zone", "time with time zone"):
            named["timezone"] = True
            if len(args) == 1:
                named["precision"] = int(args[0])
        elif name in ("timestamp without time zone", "time without time zone", "time"):
            named["timezone"] = False
            if len(args) == 1:
                named["precision"] = int(args[0])
        elif name == "bit varying":
            named["varying"] = True
            if len(args) == 1:
                positional = (int(args[0]),)
        elif name == "interval" or name.startswith("interval "):
            type_class = pg.INTERVAL
            if name.startswith("interval "):
                named["fields"] = name[len("interval ") :]
            if len(args) == 1:
                named["precision"] = int(args[0])
        elif args:
            try:
                positional = (int(args[0]), *args[1:])
            except ValueError:
                positional = tuple(args)
        if type_class is None:
            return sa.types.NullType()
        data_type: sa.types.TypeEngine[Any] = type_class(*positional, **named)
    except (TypeError, ValueError):
        return sa.types.NullType()
    return pg.ARRAY(data_type) if array_dim else data_type


@functools.lru_cache(maxsize=64)
def _ledger_table(db_schema: str | None) -> sa.Table:
    # one Table object per schema: SQLAlchemy keys its compiled-statement cache on it, so a new object
    # per load compiled the ledger's SELECT and INSERT again every time (~2 ms a load, a stream's batch)
    return sa.Table(
        LEDGER_TABLE,
        sa.MetaData(schema=db_schema),
        sa.Column("load_key", sa.String(40), primary_key=True),
        sa.Column("pipeline", sa.String(255), nullable=False),
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("item", sa.String(255), nullable=False),
        sa.Column("target_table", sa.String(255), primary_key=True),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("watermarks", sa.Text(), nullable=False),
        sa.Column("rows_written", sa.BigInteger(), nullable=False),
        sa.Column("committed_at", sa.DateTime(), nullable=False),
    )


class SqlSettings(ConnectorSettings):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    url: Secret | None = Field(None, description="SQLAlchemy URL; may hold the password, so it is a secret")
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: Secret | None = None
    database: str | None = Field(None, description="database name (SQLite: the file path)")
    db_schema: str | None = Field(None, alias="schema", description="schema (namespace) of the table")
    table: str | None = Field(None, description="table to read or write")
    query: str | None = Field(None, description="SELECT to read; bound parameters as :name")
    params: dict[str, Any] = Field(default_factory=dict, description="values of the query's :name parameters")
    connect_timeout: int = Field(10, ge=1, description="seconds to wait for the server")
    use_copy: bool = Field(True, description="PostgreSQL: bulk reads and writes with COPY")

    @model_validator(mode="after")
    def _where(self) -> SqlSettings:
        if self.table and self.query:
            raise ValueError("give 'table' or 'query', not both")
        return self


# -- type mapping ---------------------------------------------------------------------------------
def _arrow_to_sql(t: pa.DataType, *, key: bool, dialect: str) -> sa.types.TypeEngine[Any]:
    if pa.types.is_boolean(t):
        return sa.Boolean()
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
        return sa.SmallInteger()
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return sa.Integer()
    if pa.types.is_integer(t):
        return sa.BigInteger()
    if pa.types.is_floating(t):
        return sa.Double()
    if pa.types.is_decimal(t):
        return sa.Numeric(t.precision, t.scale)
    if pa.types.is_date(t):
        return sa.Date()
    if pa.types.is_timestamp(t):
        return sa.DateTime(timezone=t.tz is not None)
    if pa.types.is_time(t):
        return sa.Time()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return sa.LargeBinary()
    if key and dialect == "mysql":
        return sa.String(255)  # MySQL cannot index TEXT without a prefix length
    return sa.Text()


def _sql_to_arrow(t: Any) -> pa.DataType:
    if isinstance(t, sa.Boolean):
        return pa.bool_()
    if isinstance(t, sa.SmallInteger):
        return pa.int16()
    if isinstance(t, sa.BigInteger):
        return pa.int64()
    if isinstance(t, sa.Integer):
        return pa.int64()
    if isinstance(t, sa.Float):
        return pa.float64()
    if isinstance(t, sa.Numeric):
        if t.precision and t.precision <= 38:
            return pa.decimal128(t.precision, t.scale or 0)
        return pa.float64()
    if isinstance(t, sa.DateTime):
        return pa.timestamp("us", "UTC") if t.timezone else pa.timestamp("us")
    if isinstance(t, sa.Date):
        return pa.date32()
    if isinstance(t, sa.Time):
        return pa.time64("us")
    if isinstance(t, sa.LargeBinary | sa.types._Binary):
        return pa.binary()
    return pa.string()


def _kind(t: pa.DataType) -> str:
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_temporal(t):
        return "time"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "binary"
    if pa.types.is_nested(t):
        return "nested"
    return "text"


def _compatible(data: pa.DataType, column: pa.DataType) -> bool:
    """Would the database take these values without silently changing them? (SQLite would store
    text in an INTEGER column; PostgreSQL fails half way through a COPY.) Text columns take
    anything; booleans and numbers mix (MySQL keeps booleans as integers)."""
    have, want = _kind(data), _kind(column)
    if have == "null" or want in ("text", have):
        return True
    return {have, want} == {"bool", "number"}


# PostgreSQL type OIDs -> Arrow, for COPY reads of any query
_PG_OIDS: dict[int, pa.DataType] = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    26: pa.int64(),
    700: pa.float32(),
    701: pa.float64(),
    1082: pa.date32(),
    1083: pa.time64("us"),
    1114: pa.timestamp("us"),
    1184: pa.timestamp("us", "UTC"),
}
_COPY_WRITABLE: tuple[Callable[[Any], bool], ...] = (
    pa.types.is_boolean,
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_decimal,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_date,
    pa.types.is_timestamp,
    pa.types.is_time,
)
if hasattr(pa.types, "is_string_view"):
    _COPY_WRITABLE = (*_COPY_WRITABLE, pa.types.is_string_view)


class _CopyReader(io.RawIOBase):
    """A file object over psycopg's ``COPY ... TO STDOUT`` chunks, for Arrow's streaming CSV reader."""

    def __init__(self, copy: Any) -> None:
        self._chunks = iter(copy)
        self._buffer = bytearray()
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # libpq hands COPY output over one row at a time: gather rows until the caller's buffer is
        # full (bytearray += is C), so Arrow pays one Python round trip per block, not per row
        want = len(buffer)
        pending = self._buffer
        chunks = self._chunks
        while len(pending) < want and not self._done:
            try:
                pending += next(chunks)
            except StopIteration:
                self._done = True
        n = min(want, len(pending))
        buffer[:n] = pending[:n]
        del pending[:n]
        return n


class SqlConnector(Connector):
    Settings: ClassVar[type[ConnectorSettings]] = SqlSettings
    pushes_down_incremental = True
    driver: ClassVar[str] = ""
    dialect_name: ClassVar[str] = ""

    settings: SqlSettings

    def __init__(self, settings: ConnectorSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._engine: sa.Engine | None = None
        self._engine_key = ""
        #: a write through a kept connection failed: this connector's further queries (the ledger
        #: lookup after it) open their own
        self._unheld = False

    # -- connection --------------------------------------------------------------------------------
    def _url(self) -> sa.URL:
        s = self.settings
        if s.url is not None:
            try:
                url = sa.make_url(self.secret(s.url) or "")
            except sa_exc.ArgumentError:
                self.fail("'url' is not a valid database URL", retryable=False)
            if url.password:
                self._secrets.add(str(url.password))
            backend = url.get_backend_name()
            if backend in ("postgres", "postgresql") and "+" not in url.drivername:
                url = url.set(drivername="postgresql+psycopg")
            elif backend in ("mysql", "mariadb") and "+" not in url.drivername:
                url = url.set(drivername="mysql+pymysql")
            return url
        return sa.URL.create(
            self.driver,
            username=s.user,
            password=self.secret(s.password),
            host=s.host,
            port=s.port,
            database=s.database,
        )

    #: OpenLineage's scheme and default port for this database
    lineage_scheme: ClassVar[str] = ""
    default_port: ClassVar[int | None] = None

    def dataset(self) -> Dataset:
        url = self._url()  # password dropped below: only host, port and database name it
        s = self.settings
        where = s.table or "query"  # a query reads the database; its tables are in column lineage
        if url.get_backend_name() == "sqlite":
            path = file_dataset(url.database or ":memory:").name
            return Dataset("sqlite", f"{path}.{where}")
        scheme = self.lineage_scheme or url.get_backend_name()
        parts = [url.database or ""]
        if scheme == "postgres":
            parts.append(s.db_schema or "public")
        elif s.db_schema:
            parts.append(s.db_schema)
        parts.append(where)
        return host_dataset(scheme, url.host, url.port or self.default_port, ".".join(p for p in parts if p))

    def _connect_args(self) -> dict[str, Any]:
        return {"connect_timeout": self.settings.connect_timeout}

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            url, args = self._url(), self._connect_args()
            raw = json.dumps([url.render_as_string(hide_password=False), args], sort_keys=True, default=str)
            key = hashlib.sha256(raw.encode()).hexdigest()
            held = holding() and url.get_backend_name() == "postgresql" and not self._unheld
            with _ENGINES_LOCK:
                if held:  # a stream's loads: one connection kept for the next batch (see _HELD)
                    engine = _HELD.get(key)
                    if engine is None:
                        engine = _HELD[key] = sa.create_engine(
                            url, pool_size=1, max_overflow=-1, connect_args=args
                        )
                        on_release(lambda: _drop_held(key))
                else:
                    engine = _ENGINES.get(key)
                    if engine is None:
                        engine = _ENGINES[key] = sa.create_engine(url, poolclass=NullPool, connect_args=args)
            self._engine, self._engine_key = engine, key
        return self._engine

    def close(self) -> None:
        # the engine stays for the next connector of the same database (NullPool: it holds no connection)
        self._engine = None

    def q(self, name: str) -> str:
        return self.engine.dialect.identifier_preparer.quote(name)

    def _qtable(self) -> str:
        table = self._require_table()
        schema = self.settings.db_schema
        return f"{self.q(schema)}.{self.q(table)}" if schema else self.q(table)

    def _require_table(self) -> str:
        if not self.settings.table:
            self.fail("needs 'table'", retryable=False)
        return self.settings.table

    def check(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
                if self.settings.table and not sa.inspect(conn).has_table(
                    self.settings.table, schema=self.settings.db_schema
                ):
                    self.fail(f"table {self._display_table()} does not exist", retryable=False)
        except sa_exc.SQLAlchemyError as exc:
            self._db_error(exc)

    def _display_table(self) -> str:
        s = self.settings
        return f"{s.db_schema}.{s.table}" if s.db_schema else str(s.table)

    # -- errors ------------------------------------------------------------------------------------
    def _db_error(self, exc: BaseException, doing: str = "") -> NoReturn:
        orig = getattr(exc, "orig", None) or exc
        text = " ".join(str(orig).split()) or type(orig).__name__
        text = text.split(" [SQL:")[0].split(" (Background on this error")[0][:400]
        lower = text.lower()
        sqlstate = getattr(orig, "sqlstate", None) or ""
        code = orig.args[0] if getattr(orig, "args", None) and isinstance(orig.args[0], int) else None
        prefix = f"{doing}: " if doing else ""
        if (
            sqlstate.startswith("28")
            or code == 1045
            or "password authentication failed" in lower
            or "access denied" in lower
            or "authentication failed" in lower
            or ('fatal: role "' in lower and "does not exist" in lower)
        ):
            self.fail(f"{prefix}login refused (check the user and password): {text}", retryable=False)
        if (
            sqlstate == "3D000"
            or code == 1049
            or ('fatal: database "' in lower and "does not exist" in lower)
        ):
            self.fail(f"{prefix}database does not exist: {text}", retryable=False)
        if sqlstate in ("42P01", "3F000") or code == 1146 or "no such table" in lower:
            self.fail(f"{prefix}table does not exist: {text}", retryable=False)
        if isinstance(exc, sa_exc.NoSuchTableError):
            self.fail(f"{prefix}table {exc} does not exist", retryable=False)
        retry_states = ("08", "40001", "40P01", "53", "57P", "55P03")
        if (
            sqlstate.startswith(retry_states)
            or code in (2002, 2003, 2006, 2013, 1205, 1213)
            or "database is locked" in lower
        ):
            self.fail(f"{prefix}{text}", retryable=True)
        driver_operational = type(orig).__name__ == "OperationalError"
        if (
            not sqlstate
            and code is None
            and (
                driver_operational
                or (isinstance(exc, sa_exc.OperationalError) and "sqlite" not in self.driver)
            )
        ):
            self.fail(f"{prefix}cannot connect: {text}", retryable=True)
        self.fail(f"{prefix}{text}", retryable=False)

    # -- read --------------------------------------------------------------------------------------
    def _select(self, since: Any) -> tuple[str, dict[str, Any]]:
        s = self.settings
        if s.query:
            sql, params = s.query.strip().rstrip(";"), dict(s.params)
        elif s.table:
            sql, params = f"SELECT * FROM {self._qtable()}", {}
        else:
            self.fail("a source needs 'table' or 'query'", retryable=False)
        if s.incremental is not None and since is not None:
            since_value = since
            if (
                isinstance(since, dt.datetime)
                and since.tzinfo is not None
                and self.dialect_name != "postgresql"
            ):
                since_value = since.astimezone(dt.UTC).replace(tzinfo=None)
            sql = f"SELECT * FROM ({sql}) AS udop_src WHERE {self.q(s.incremental.column)} > :udop_since"
            params["udop_since"] = since_value
        return sql, params

    def read(self, *, since: Any = None) -> Iterator[pa.RecordBatch]:
        sql, params = self._select(since)
        try:
            if self.dialect_name == "postgresql" and self.settings.use_copy:
                yield from self._read_copy(sql, params)
            else:
                yield from self._read_rows(sql, params, since)
        except sa_exc.SQLAlchemyError as exc:
            self._db_error(exc, "read")
        except Exception as exc:
            if type(exc).__module__.startswith(("psycopg", "pymysql", "sqlite3")):
                self._db_error(exc, "read")
            raise

    def _statement(
        self, conn: sa.Connection, sql: str, params: dict[str, Any], since: Any
    ) -> tuple[Any, dict[str, Any], dict[str, pa.DataType]]:
        """A table read goes through a reflected ``Table`` so the driver's values get SQLAlchemy's
        type processing (SQLite dates, booleans); a query is taken as text."""
        s = self.settings
        if s.query or not s.table:
            return sa.text(sql), params, {}
        table = sa.Table(s.table, sa.MetaData(schema=s.db_schema), autoload_with=conn)
        # MySQL's reflected DOUBLE/FLOAT return Decimal objects (asdecimal=True): read them as floats
        stmt = sa.select(
            *[
                sa.type_coerce(c, sa.Double()).label(c.name)
                if isinstance(c.type, sa.Float) and getattr(c.type, "asdecimal", False)
                else c
                for c in table.c
            ]
        )
        if s.incremental is not None and since is not None:
            if s.incremental.column not in table.c:
                self.fail(
                    f"incremental column {s.incremental.column!r} is not in table {self._display_table()}",
                    retryable=False,
                )
            stmt = stmt.where(table.c[s.incremental.column] > params["udop_since"])
        return stmt, {}, {c.name: _sql_to_arrow(c.type) for c in table.c}

    def _read_rows(self, sql: str, params: dict[str, Any], since: Any = None) -> Iterator[pa.RecordBatch]:
        size = self.settings.batch_size
        opened: list[sa.CursorResult[Any]] = []
        with self.engine.connect() as conn:
            try:
                yield from self._stream_rows(conn, sql, params, since, size=size, opened=opened)
            except BaseException:
                # stopped early (an error, or the consumer closed us): close the server-side
                # cursor (MySQL's driver skips over the unread rest), or drop a broken connection
                try:
                    if opened:
                        opened[0].close()
                except Exception:
                    conn.invalidate()
                raise

    def _stream_rows(
        self,
        conn: sa.Connection,
        sql: str,
        params: dict[str, Any],
        since: Any,
        *,
        size: int,
        opened: list[sa.CursorResult[Any]],
    ) -> Iterator[pa.RecordBatch]:
        stmt, bound, types = self._statement(conn, sql, params, since)
        result = conn.execution_options(stream_results=True, yield_per=size).execute(stmt, bound)
        opened.append(result)
        names = list(result.keys())
        schema: pa.Schema | None = None
        for rows in result.partitions(size):
            columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
            arrays = []
            for i, name in enumerate(names):
                values = [json.dumps(v, default=str) if isinstance(v, dict | list) else v for v in columns[i]]
                wanted = schema.field(i).type if schema is not None else (types or {}).get(name)
                arrays.append(self._array(values, wanted))
            batch = pa.RecordBatch.from_arrays(arrays, names=names)
            if schema is None:
                schema = batch.schema
            elif not batch.schema.equals(schema):
                try:
                    batch = batch.cast(schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    self.fail(
                        f"read: a column changed type between batches ({' '.join(str(exc).split())}); "
                        "read a table (typed by its columns) or CAST the query's columns",
                        retryable=False,
                    )
            yield batch
        if schema is None:
            yield pa.RecordBatch.from_arrays(
                [pa.array([], type=(types or {}).get(n, pa.string())) for n in names], names=names
            )

    @staticmethod
    def _array(values: list[Any], wanted: pa.DataType | None) -> pa.Array:
        if wanted is not None:
            if pa.types.is_timestamp(wanted) and wanted.tz is None:
                values = [
                    v.astimezone(dt.UTC).replace(tzinfo=None)
                    if isinstance(v, dt.datetime) and v.tzinfo
                    else v
                    for v in values
                ]
            if pa.types.is_string(wanted):
                values = [v if v is None or isinstance(v, str) else str(v) for v in values]
            try:
                return pa.array(values, type=wanted)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                try:  # e.g. Decimal objects for a float column
                    return pa.array(values).cast(wanted)
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
                    pass
        arr = pa.array(values)
        return arr.cast(pa.string()) if pa.types.is_null(arr.type) else arr

    def _read_copy(self, sql: str, params: dict[str, Any]) -> Iterator[pa.RecordBatch]:
        import psycopg

        compiled = sa.text(sql).compile(dialect=self.engine.dialect)
        with self.engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            bound = psycopg.ClientCursor(raw).mogrify(compiled.string, compiled.construct_params(params))
            with raw.cursor() as cur:
                cur.execute("SET LOCAL TimeZone = 'UTC'")
                cur.execute(f"SELECT * FROM ({bound}) AS udop_q LIMIT 0")
                fields = []
                for col in cur.description or []:
                    t = _PG_OIDS.get(col.type_code)
                    if t is None and col.type_code == 1700 and col.precision and col.precision <= 38:
                        t = pa.decimal128(col.precision, col.scale or 0)
                    fields.append(pa.field(col.name, t or pa.string()))
                schema = pa.schema(fields)
                if len(set(schema.names)) != len(schema.names):
                    self.fail("the query returns two columns with the same name; alias them", retryable=False)
                read_opts = pacsv.ReadOptions(column_names=schema.names, block_size=4 << 20)
                convert = pacsv.ConvertOptions(
                    column_types={f.name: f.type for f in schema},
                    true_values=["t"],
                    false_values=["f"],
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                )
                parse = pacsv.ParseOptions(newlines_in_values=True)
                got = False
                with cur.copy(f"COPY ({bound}) TO STDOUT WITH (FORMAT csv)") as copy:
                    reader = io.BufferedReader(_CopyReader(copy), buffer_size=4 << 20)
                    try:
                        stream = pacsv.open_csv(
                            reader, read_options=read_opts, parse_options=parse, convert_options=convert
                        )
                    except pa.ArrowInvalid as exc:
                        if "Empty CSV file" not in str(exc):
                            raise
                        stream = None
                    if stream is not None:
                        for batch in stream:
                            if batch.num_rows:
                                got = True
                                yield batch
                    for _ in copy:  # drain, so the connection is usable afterwards
                        pass
                if not got:
                    yield pa.RecordBatch.from_arrays(
                        [pa.array([], type=f.type) for f in schema], schema=schema
                    )

    # -- write -------------------------------------------------------------------------------------
    def write(
        self, batches: Iterable[pa.RecordBatch], mode: WriteMode | None = None, keys: list[str] | None = None
    ) -> int:
        return self._write(batches, mode, keys, None)[0]

    keeps_ledger = True

    def write_once(
        self, batches: Iterable[pa.RecordBatch], mode: str, keys: list[str], entry: LoadEntry
    ) -> tuple[int, bool]:
        try:
            return self._write(batches, mode, keys, entry)  # type: ignore[arg-type]
        except (FatalError, ConnectionFailed):
            # two attempts of one load raced and the other committed first (the ledger's primary
            # key refused this one): that load is done, report it
            found = self.loaded(entry)
            if found is None:
                raise
            return found, True

    def loaded(self, entry: LoadEntry) -> int | None:
        try:
            with self.engine.connect() as conn:
                if not sa.inspect(conn).has_table(LEDGER_TABLE, schema=self.settings.db_schema):
                    return None
                ledger = _ledger_table(self.settings.db_schema)
                found = conn.execute(
                    sa.select(ledger.c.rows_written).where(
                        ledger.c.load_key == entry.key,
                        ledger.c.target_table == self._display_table()[:255],
                    )
                ).scalar()
        except sa_exc.SQLAlchemyError as exc:
            self._db_error(exc, f"read the load ledger {LEDGER_TABLE}")
        return None if found is None else int(found)

    def _ensure_ledger(self) -> sa.Table:
        ledger = _ledger_table(self.settings.db_schema)
        try:
            with self.engine.begin() as conn:
                ledger.create(conn, checkfirst=True)
        except sa_exc.SQLAlchemyError:
            # another load created it at the same moment; anything else shows on the write
            pass
        return ledger

    def _write(
        self,
        batches: Iterable[pa.RecordBatch],
        mode: WriteMode | None,
        keys: list[str] | None,
        entry: LoadEntry | None,
    ) -> tuple[int, bool]:
        mode, keys = self.resolve_mode(mode, keys)
        self._require_table()
        it = iter(batches)
        first = next(it, None)
        if first is None:
            self.fail("nothing to write: no batches and no schema", retryable=False)
        for key in keys:
            if key not in first.schema.names:
                self.fail(
                    f"key column {key!r} is not in the data (columns: {', '.join(first.schema.names)})",
                    retryable=False,
                )
        engine = self.engine
        ledger_key = (self._engine_key, self.settings.db_schema or "")
        ledger: sa.Table | None = None
        if entry is not None:
            ledger = _ledger_table(self.settings.db_schema)
            if _LEDGERS.get(ledger_key) is None:
                self._ensure_ledger()
                _LEDGERS.put(ledger_key, True)
        table_key = (
            self._engine_key, self.settings.db_schema or "", self._require_table(), str(mode), *keys, "\0",
            first.schema.to_string(show_schema_metadata=False),
        )
        try:
            with engine.begin() as conn:
                # MySQL commits on its own around CREATE TABLE: create before the ledger is read, so
                # the check and the rows share one transaction
                if self.dialect_name == "postgresql":
                    table = self._pg_table(conn, table_key, ledger, first.schema, mode=mode, keys=keys)
                else:
                    table = self._target_table(conn, first.schema, mode, keys)
                if ledger is not None and entry is not None:
                    found = conn.execute(
                        sa.select(ledger.c.rows_written).where(
                            ledger.c.load_key == entry.key,
                        ledger.c.target_table == self._display_table()[:255],
                        )
                    ).scalar()
                    if found is not None:
                        return int(found), True
                if mode == "overwrite":
                    # PostgreSQL's TRUNCATE is transactional (and frees the space); elsewhere DELETE is
                    # (MySQL's TRUNCATE commits on its own)
                    conn.execute(
                        sa.text(f"TRUNCATE {self._qtable()}")
                        if self.dialect_name == "postgresql"
                        else table.delete()
                    )
                if (
                    self.dialect_name == "postgresql"
                    and self.settings.use_copy
                    and all(any(ok(f.type) for ok in _COPY_WRITABLE) for f in first.schema)
                ):
                    rows = self._write_copy(conn, table, first, it, mode=mode, keys=keys)
                else:
                    rows = self._write_rows(conn, table, first, it, mode=mode, keys=keys)
                if ledger is not None and entry is not None:
                    conn.execute(
                        ledger.insert().values(
                            load_key=entry.key,
                            pipeline=entry.pipeline[:255],
                            run_id=entry.run_id[:255],
                            task_id=entry.task_id[:255],
                            item=entry.item[:255],
                            target_table=self._display_table()[:255],
                            input=entry.input,
                            watermarks=entry.watermarks,
                            rows_written=rows,
                            committed_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
                        )
                    )
                faults.point("load-before-commit")
                return rows, False
        except BaseException as exc:
            # whatever stopped the write (a database error, a mismatch, a cancel): nothing kept from it
            self._forget(table_key, ledger_key)
            from_driver = type(exc).__module__.startswith(("psycopg", "pymysql", "sqlite3"))
            if isinstance(exc, sa_exc.SQLAlchemyError) or (isinstance(exc, Exception) and from_driver):
                self._db_error(exc, f"write to table {self._display_table()}")
            raise

    def _forget(self, table_key: tuple[str, ...], ledger_key: tuple[str, str]) -> None:
        """A write failed: reflect the table and look for the ledger afresh next time, and close a
        connection kept between loads (the next load opens a new one)."""
        _TABLES.pop(table_key)
        _LEDGERS.pop(ledger_key)
        if self._engine is not None and _HELD.get(self._engine_key) is self._engine:
            _drop_held(self._engine_key)
            self._engine, self._unheld = None, True

    def _signature(self, conn: sa.Connection) -> tuple[tuple[Any, ...], bool, bool]:
        """The target's (name, format_type, not null) per column, whether the ledger exists, and whether
        the target exists: one catalog query (PostgreSQL)."""
        ledger = (
            f"{self.q(self.settings.db_schema)}.{self.q(LEDGER_TABLE)}" if self.settings.db_schema
            else self.q(LEDGER_TABLE)
        )
        rows = conn.execute(sa.text(_PG_SIGNATURE), {"table": self._qtable(), "ledger": ledger}).all()
        columns = tuple((r[0], r[1], r[2]) for r in rows if r[0] is not None)
        return columns, bool(rows and rows[0][3]), bool(rows and rows[0][4])

    def _pg_table(
        self,
        conn: sa.Connection,
        key: tuple[str, ...],
        ledger: sa.Table | None,
        schema: pa.Schema,
        *,
        mode: str,
        keys: list[str],
    ) -> sa.Table:
        """The PostgreSQL target as a ``Table``, from one catalog query and no reflection: kept from an
        earlier load with this key while the table's signature is unchanged, else built from the
        signature and checked against the data (created first if it does not exist). A ledger dropped
        since it was looked for is created again in this transaction."""
        columns, has_ledger, exists = self._signature(conn)
        if ledger is not None and not has_ledger:
            ledger.create(conn, checkfirst=True)
        known = _TABLES.get(key)
        if known is not None and known[0] == columns:
            return known[1]  # type: ignore[no-any-return]
        if exists:
            table = sa.Table(
                self._require_table(),
                sa.MetaData(schema=self.settings.db_schema),
                *[sa.Column(name, _pg_type(format_type), nullable=not not_null)
                  for name, format_type, not_null in columns],
            )
            self._check_table(table, schema)
        else:
            table = self._create_table(conn, schema, mode, keys)
            columns = self._signature(conn)[0]
        _TABLES.put(key, (columns, table))
        return table

    def _create_table(self, conn: sa.Connection, schema: pa.Schema, mode: str, keys: list[str]) -> sa.Table:
        columns = [
            sa.Column(
                f.name,
                _arrow_to_sql(f.type, key=f.name in keys, dialect=self.dialect_name),
                primary_key=f.name in keys and mode == "upsert",
                nullable=not (f.name in keys and mode == "upsert"),
            )
            for f in schema
        ]
        table = sa.Table(self._require_table(), sa.MetaData(schema=self.settings.db_schema), *columns)
        table.create(conn)
        return table

    def _check_table(self, table: sa.Table, schema: pa.Schema) -> None:
        """Refuse data the existing table would not take as it is (one line naming the columns)."""
        missing = [n for n in schema.names if n not in table.c]
        if missing:
            self.fail(
                f"the data does not match table {self._display_table()}: column(s) "
                f"{', '.join(missing)} are not in the table (it has {', '.join(table.c.keys())}); "
                "the table was not changed",
                retryable=False,
            )
        clashes = [
            f"{f.name} is {f.type} in the data but {table.c[f.name].type} in the table"
            for f in schema
            if not _compatible(f.type, _sql_to_arrow(table.c[f.name].type))
        ]
        if clashes:
            self.fail(
                f"the data does not match table {self._display_table()}: {'; '.join(clashes)}; "
                "cast the column(s) in a transform step; the table was not changed",
                retryable=False,
            )

    def _target_table(self, conn: sa.Connection, schema: pa.Schema, mode: str, keys: list[str]) -> sa.Table:
        """MySQL and SQLite: the target reflected (created if it does not exist), checked against the data."""
        name, db_schema = self._require_table(), self.settings.db_schema
        if not sa.inspect(conn).has_table(name, schema=db_schema):
            return self._create_table(conn, schema, mode, keys)
        table = sa.Table(name, sa.MetaData(schema=db_schema), autoload_with=conn)
        self._check_table(table, schema)
        return table

    @staticmethod
    def _rows(batch: pa.RecordBatch, naive_utc: bool) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = batch.to_pylist()
        if naive_utc:
            tz_cols = [f.name for f in batch.schema if pa.types.is_timestamp(f.type) and f.type.tz]
            for row in rows:
                for c in tz_cols:
                    v = row[c]
                    if v is not None:
                        row[c] = v.astimezone(dt.UTC).replace(tzinfo=None)
        nested = [f.name for f in batch.schema if pa.types.is_nested(f.type)]
        for row in rows:
            for c in nested:
                if row[c] is not None:
                    row[c] = json.dumps(row[c], default=str)
        return rows

    def _upsert_statement(self, table: sa.Table, keys: list[str], columns: list[str]) -> Any:
        raise NotImplementedError

    def _write_rows(
        self,
        conn: sa.Connection,
        table: sa.Table,
        first: pa.RecordBatch,
        rest: Iterator[pa.RecordBatch],
        *,
        mode: str,
        keys: list[str],
    ) -> int:
        columns = first.schema.names
        stmt = self._upsert_statement(table, keys, columns) if mode == "upsert" else table.insert()
        naive = self.dialect_name != "postgresql"
        total = 0
        for b in _chain(first, rest):
            for start in range(0, b.num_rows, 10_000):
                part = b.slice(start, 10_000)
                conn.execute(stmt, self._rows(part, naive))
                total += part.num_rows
        return total

    def _write_copy(
        self,
        conn: sa.Connection,
        table: sa.Table,
        first: pa.RecordBatch,
        rest: Iterator[pa.RecordBatch],
        *,
        mode: str,
        keys: list[str],
    ) -> int:
        raise NotImplementedError


class PostgresConnector(SqlConnector):
    name = "postgres"
    driver = "postgresql+psycopg"
    dialect_name = "postgresql"
    lineage_scheme = "postgres"
    default_port = 5432

    def _upsert_statement(self, table: sa.Table, keys: list[str], columns: list[str]) -> Any:
        from sqlalchemy.dialects.postgresql import insert

        stmt = insert(table)
        updates = {c: stmt.excluded[c] for c in columns if c not in keys}
        return (
            stmt.on_conflict_do_update(index_elements=keys, set_=updates)
            if updates
            else stmt.on_conflict_do_nothing(index_elements=keys)
        )

    def _write_copy(
        self,
        conn: sa.Connection,
        table: sa.Table,
        first: pa.RecordBatch,
        rest: Iterator[pa.RecordBatch],
        *,
        mode: str,
        keys: list[str],
    ) -> int:
        raw = conn.connection.driver_connection
        assert raw is not None
        columns = first.schema.names
        cols = ", ".join(self.q(c) for c in columns)
        target = self._qtable()
        dest = target
        with raw.cursor() as cur:
            if mode == "upsert":
                dest = self.q("udop_stage")
                cur.execute(f"CREATE TEMP TABLE {dest} ON COMMIT DROP AS SELECT {cols} FROM {target} LIMIT 0")
            # naive timestamps are read in the session's zone: make it UTC, and send tz-aware values as
            # their UTC wall time (Arrow formats those ~5x faster than zoned ones)
            cur.execute("SET LOCAL TimeZone = 'UTC'")
            total = 0
            with cur.copy(f"COPY {dest} ({cols}) FROM STDIN WITH (FORMAT csv)") as copy:
                for batch, data in _csv_chunks(_chain(first, rest), columns):
                    copy.write(data)
                    total += batch.num_rows
            if mode == "upsert":
                key_cols = ", ".join(self.q(k) for k in keys)
                updates = ", ".join(f"{self.q(c)} = EXCLUDED.{self.q(c)}" for c in columns if c not in keys)
                action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
                # a key twice in one load: the last row wins (ON CONFLICT would refuse to touch a
                # row twice); ctid follows COPY's insertion order in the fresh temporary table
                cur.execute(
                    f"INSERT INTO {target} ({cols}) SELECT DISTINCT ON ({key_cols}) {cols} FROM {dest} "
                    f"ORDER BY {key_cols}, ctid DESC ON CONFLICT ({key_cols}) {action}"
                )
        return total


def _csv_chunks(
    batches: Iterator[pa.RecordBatch], columns: list[str]
) -> Iterator[tuple[pa.RecordBatch, memoryview]]:
    """CSV for COPY, formatted in a second thread while the first one sends (Arrow releases the GIL),
    at most two batches ahead so memory stays bounded. Strings are always quoted, so an empty
    string ("") and NULL (nothing) stay apart."""
    import queue
    import threading

    options = pacsv.WriteOptions(include_header=False, quoting_style="needed", batch_size=16_384)
    out: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                if batch.num_rows == 0:
                    continue
                picked = batch if batch.schema.names == columns else batch.select(columns)
                arrays = [
                    a.cast(pa.timestamp(a.type.unit)) if pa.types.is_timestamp(a.type) and a.type.tz else a
                    for a in picked.columns
                ]
                sink = io.BytesIO()
                pacsv.write_csv(pa.RecordBatch.from_arrays(arrays, names=columns), sink, options)
                out.put((batch, sink.getbuffer()))
            out.put(done)
        except BaseException as exc:
            out.put(exc)

    worker = threading.Thread(target=produce, name="udop-copy-csv", daemon=True)
    worker.start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                out.get_nowait()
            except queue.Empty:
                worker.join(0.05)


def _chain(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield first
    yield from rest


class MySQLConnector(SqlConnector):
    name = "mysql"
    driver = "mysql+pymysql"
    dialect_name = "mysql"
    lineage_scheme = "mysql"  # MariaDB too: OpenLineage names both mysql://
    default_port = 3306

    def _connect_args(self) -> dict[str, Any]:
        return {"connect_timeout": self.settings.connect_timeout, "charset": "utf8mb4"}

    def _upsert_statement(self, table: sa.Table, keys: list[str], columns: list[str]) -> Any:
        from sqlalchemy.dialects.mysql import insert

        stmt = insert(table)
        updates = {c: stmt.inserted[c] for c in columns if c not in keys} or {keys[0]: stmt.inserted[keys[0]]}
        return stmt.on_duplicate_key_update(updates)


class SQLiteConnector(SqlConnector):
    name = "sqlite"
    driver = "sqlite"
    path_options = ("database",)
    dialect_name = "sqlite"

    def _connect_args(self) -> dict[str, Any]:
        return {"timeout": float(self.settings.connect_timeout)}

    def _url(self) -> sa.URL:
        if self.settings.url is None and self.settings.database is None:
            self.fail("needs 'database' (the SQLite file path) or 'url'", retryable=False)
        return super()._url()

    def _upsert_statement(self, table: sa.Table, keys: list[str], columns: list[str]) -> Any:
        from sqlalchemy.dialects.sqlite import insert

        stmt = insert(table)
        updates = {c: stmt.excluded[c] for c in columns if c not in keys}
        return (
            stmt.on_conflict_do_update(index_elements=keys, set_=updates)
            if updates
            else stmt.on_conflict_do_nothing(index_elements=keys)
        )
