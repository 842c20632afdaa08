"""The ``mongodb`` connector (pymongo): collection scans and aggregations as Arrow batches, inserts and
upserts by key, and a collection's change stream read as bounded batches of changes.

Reads stream through a batched cursor, ``batch_size`` documents at a time, into batches with one
schema for the whole read (declared ``columns``, or inferred from the first batch: see
``_infer_type``). Writes go in ONE transaction with the load's ledger entry when the server has
transactions (a replica set or sharded cluster); a standalone server gets the rows, then the entry.

A change stream's position is its resume token, kept with an ordering prefix (cluster time and the
change's rank at that time) so positions compare as text: the framework's watermark machinery
(pending until the loads commit, leases, ledgers) stores it like any incremental watermark, and
``read_changes`` exposes the same reader to a consumer that keeps positions itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import functools
import json
import re
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal, NoReturn, TypedDict
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow as pa
from pydantic import ConfigDict, Field, model_validator

from udop import faults
from udop.connectors import Connector, ConnectorSettings, LoadEntry, Secret
from udop.connectors.base import WriteMode
from udop.lineage.naming import Dataset, host_dataset, url_dataset
from udop.spec.types import Duration
from udop.stream import StreamBatch
from udop_connectors._arrow import ColumnTypes, schema_from_mapping

__all__ = ["LEDGER_COLLECTION", "POSITION_COLUMN", "MongoConnector", "MongoSettings", "MongoStream"]

#: the load ledger: one document per committed load, in the target collection's database
LEDGER_COLLECTION = "udop_load_ledger"
#: the change-stream column holding each change's position (ordering prefix + resume token)
POSITION_COLUMN = "_position"
_CHANGE_NAMES = frozenset({POSITION_COLUMN, "_op", "_cluster_time", "_key", "_id"})
_POSITION = re.compile(r"^(\d{10})\.(\d{10})\.(\d{6})\|(.+)$", re.S)

# URL options that read files of the host the driver runs on, and mechanisms that sign in with the
# host's own credentials: refused on a server (docs/security.md)
_HOST_FILE_OPTIONS = frozenset(
    {"tlscafile", "tlscertificatekeyfile", "tlscrlfile", "sslcafile", "sslcrlfile", "sslpemkeyfile"}
)
_HOST_MECHANISMS = frozenset({"MONGODB-AWS", "GSSAPI", "MONGODB-OIDC", "MONGODB-X509"})
# server error codes a retry can fix (network-ish, elections, write conflicts, time limits)
_RETRYABLE_CODES = frozenset(
    {6, 7, 50, 89, 91, 112, 117, 133, 134, 189, 202, 251, 262, 9001, 10107, 11600, 11602, 13435, 13436}
)
# server error codes a retry cannot fix, with what to tell the user
_FATAL_CODES: dict[int, str] = {
    18: "login refused (check the user and password)",
    13: "not authorized (the user needs a role that allows this)",
    11000: "duplicate key",
    26: "namespace does not exist",
    286: "the change history no longer reaches the stored position (the oplog rolled over); "
    "delete the watermark to start again from now",
    280: "the change stream cannot continue from the stored position",
    260: "invalid resume token",
}


class _ClientOptions(TypedDict):
    """The options every ``MongoClient`` gets (URL or host/port)."""

    serverSelectionTimeoutMS: int
    connectTimeoutMS: int
    tz_aware: bool
    appname: str
    datetime_conversion: str


class MongoSettings(ConnectorSettings):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    url: Secret | None = Field(None, description="mongodb:// or mongodb+srv:// URL; may hold the password")
    host: str = "127.0.0.1"
    port: int = 27017
    user: str | None = None
    password: Secret | None = None
    auth_source: str | None = Field(None, description="database holding the user (default: admin)")
    database: str | None = Field(None, description="default: the URL's path")
    collection: str | None = Field(None, description="collection to read or write")
    filter: dict[str, Any] = Field(default_factory=dict, description="find filter (MongoDB extended JSON)")
    projection: dict[str, Any] | list[str] | None = Field(None, description="fields to read")
    pipeline: list[dict[str, Any]] | None = Field(
        None, description="aggregation pipeline to read instead of a find (or extra change-stream stages)"
    )
    columns: ColumnTypes = None
    changes: bool = Field(False, description="read the collection's change stream instead of its documents")
    full_document: Literal["updateLookup", "default", "whenAvailable", "required"] = "updateLookup"
    max_changes: int | None = Field(None, ge=1, description="changes: read at most this many per run")
    wait: Duration = Field(1.0, description="changes: how long to wait for more once caught up")
    start: Literal["latest", "earliest"] = Field(
        "latest", description="udop stream, no stored position: now, or the oldest change the oplog keeps"
    )
    transactions: bool | None = Field(
        None, description="write in a transaction (default: when the server can)"
    )
    connect_timeout: Duration = Field(10.0, description="seconds to find a server")

    @model_validator(mode="before")
    @classmethod
    def _change_position(cls, data: Any) -> Any:
        # a change stream is always incremental on its position: the framework then keeps it pending
        # until the loads below commit, exactly as a column watermark
        if isinstance(data, dict) and data.get("changes"):
            inc = data.get("incremental")
            if inc is None:
                data = {**data, "incremental": {"column": POSITION_COLUMN}}
            elif isinstance(inc, dict) and inc.get("column", POSITION_COLUMN) != POSITION_COLUMN:
                raise ValueError(f"changes: the incremental column is always {POSITION_COLUMN!r}")
            elif isinstance(inc, dict):
                data = {**data, "incremental": {**inc, "column": POSITION_COLUMN}}
        return data

    @model_validator(mode="after")
    def _shape(self) -> MongoSettings:
        if self.changes and self.filter:
            raise ValueError("changes: use 'pipeline' ($match stages on the change events), not 'filter'")
        if self.pipeline is not None and not self.changes and (self.filter or self.projection):
            raise ValueError("give 'pipeline' or 'filter'/'projection', not both")
        return self


# -- BSON -> Arrow --------------------------------------------------------------------------------
#: types pymongo decodes to that Arrow takes as they are
_SIMPLE = frozenset({str, int, float, bool, type(None), dt.datetime})


def _plain(value: Any) -> Any:
    """A BSON value as a plain Python value Arrow takes: ObjectId -> its hex text, Decimal128 ->
    Decimal, BSON Timestamp -> datetime, UUID -> text, nested documents and arrays -> relaxed
    extended JSON text (``{"$oid": ...}`` inside), other BSON types -> their text."""
    kind = type(value)
    if kind in _SIMPLE:
        return value
    convert = _converters().get(kind)
    if convert is not None:
        return convert(value)
    if isinstance(value, int):  # a subclass: bool is simple, bson's Int64 is not
        return int(value)
    return str(value)


@functools.cache
def _converters() -> dict[type, Callable[[Any], Any]]:
    """BSON types -> their plain value, by exact type (one dict lookup per value; bson is imported
    once, when a first value needs it)."""
    from bson import Binary, DatetimeMS, Decimal128, Int64, ObjectId, Timestamp, json_util

    def nested(value: Any) -> str:
        return json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS, ensure_ascii=False)

    return {
        ObjectId: str,
        Decimal128: Decimal128.to_decimal,
        Int64: int,
        Timestamp: Timestamp.as_datetime,
        DatetimeMS: lambda v: str(int(v)),  # a date outside years 1-9999: its milliseconds since 1970
        uuid.UUID: str,
        Binary: lambda v: str(v.as_uuid()) if v.subtype == 4 else bytes(v),
        bytes: lambda v: v,
        dict: nested,
        list: nested,
    }


def _infer_type(values: list[Any]) -> pa.DataType:
    """A field's type from the first batch: bool, int64 (float64 when floats mix in), timestamp[ms,
    UTC] for dates, decimal128(38, s) for Decimal128 (s the largest scale seen), binary, else text
    (ObjectIds, strings, nested documents and arrays as JSON, and any mix of types)."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.string()
    if kinds == {bool}:
        return pa.bool_()
    if kinds == {int}:
        return pa.int64()
    if kinds <= {int, float}:
        return pa.float64()
    if kinds == {dt.datetime}:
        return pa.timestamp("ms", "UTC")
    if kinds == {decimal.Decimal}:
        scales = [-int(v.as_tuple().exponent) for v in values if v is not None and v.is_finite()]
        digits = [len(v.as_tuple().digits) for v in values if v is not None and v.is_finite()]
        scale = max([0, *scales])
        if scale <= 18 and max([0, *digits]) - min([0, *scales]) + scale <= 38:
            return pa.decimal128(38, scale)
        return pa.string()
    if kinds == {bytes}:
        return pa.binary()
    return pa.string()


def _text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _array(values: list[Any], type_: pa.DataType) -> pa.Array:
    if pa.types.is_string(type_):
        return pa.array([v if v is None or type(v) is str else _text(v) for v in values], type=type_)
    try:
        # a decimal with more places than the column has fails here rather than being rounded
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(values).cast(type_)  # e.g. ISO text -> date, int -> float


# -- Arrow -> BSON --------------------------------------------------------------------------------
def _bson(value: Any) -> Any:
    """A value of ``RecordBatch.to_pylist()`` as something BSON stores: dates become midnight UTC,
    decimals Decimal128, times their ISO text; lists and structs recursively."""
    if value is None or isinstance(value, str | int | float | bytes):
        return value
    from bson import Decimal128

    if isinstance(value, dict):
        return {k: _bson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bson(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return Decimal128(value)
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, dt.time | dt.timedelta):
        return str(value)
    return value


# -- change-stream positions ----------------------------------------------------------------------
def _position(time: int, inc: int, rank: int, token: Mapping[str, Any]) -> str:
    from bson import json_util

    return f"{time:010d}.{inc:010d}.{rank:06d}|{json_util.dumps(token)}"


def _parse_position(text: str) -> tuple[int, int, int, dict[str, Any]] | None:
    from bson import json_util

    found = _POSITION.match(text)
    if found is None:
        return None
    return int(found[1]), int(found[2]), int(found[3]), json_util.loads(found[4])


def _start_time(since: Any) -> dt.datetime | None:
    if isinstance(since, dt.datetime):
        return since if since.tzinfo else since.replace(tzinfo=dt.UTC)
    if isinstance(since, str):
        try:
            found = dt.datetime.fromisoformat(since)
        except ValueError:
            return None
        return found if found.tzinfo else found.replace(tzinfo=dt.UTC)
    return None


class MongoConnector(Connector):
    name = "mongodb"
    Settings: ClassVar[type[ConnectorSettings]] = MongoSettings
    pushes_down_incremental = True
    keeps_ledger = True

    settings: MongoSettings

    def __init__(self, settings: ConnectorSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._client: Any = None
        self._end: str | None = None

    # -- connection --------------------------------------------------------------------------------
    def _url(self) -> str | None:
        if self.settings.url is None:
            return None
        url = self.secret(self.settings.url) or ""
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            self._secrets.update({password, unquote(password)})
        self._refuse_host_access(url)
        return url

    def _refuse_host_access(self, url: str) -> None:
        """On a server, a definition's URL may not make the driver read the host's files (TLS key
        and CA files) or sign in with the host's own credentials (AWS role, Kerberos, OIDC, X.509)."""
        from udop import sandbox

        if not sandbox.current().is_server:
            return
        options = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query)}
        found = sorted(k for k in options if k in _HOST_FILE_OPTIONS)
        mechanism = options.get("authmechanism", "").upper()
        if mechanism in _HOST_MECHANISMS:
            found.append(f"authMechanism={mechanism}")
        if found:
            self.fail(
                f"on a server the URL may not use {', '.join(found)} (they read this host's files or "
                "credentials); use user and password",
                retryable=False,
            )

    @property
    def client(self) -> Any:
        if self._client is None:
            self._need_driver()
            import pymongo
            from pymongo.errors import ConfigurationError

            s = self.settings
            timeout_ms = int(s.connect_timeout * 1000)
            opts: _ClientOptions = {
                "serverSelectionTimeoutMS": timeout_ms,
                "connectTimeoutMS": timeout_ms,
                "tz_aware": True,
                "appname": "udop",
                # a date outside Python's years 1-9999 comes back as its milliseconds (read as text)
                # instead of failing the whole read
                "datetime_conversion": "DATETIME_AUTO",
            }
            url = self._url()
            try:
                with warnings.catch_warnings():
                    # pymongo only warns about an unknown or malformed URL option: a typo is an error here
                    warnings.simplefilter("error", UserWarning)
                    if url is not None:
                        self._client = pymongo.MongoClient(url, **opts)
                    else:
                        auth: dict[str, Any] = {}
                        if s.user is not None:
                            auth = {"username": s.user, "password": self.secret(s.password)}
                            if s.auth_source:
                                auth["authSource"] = s.auth_source
                        self._client = pymongo.MongoClient(s.host, s.port, **opts, **auth)
            except (ConfigurationError, ValueError, TypeError, UserWarning) as exc:
                self.fail(f"bad connection settings: {_message(exc)}", retryable=False)
        return self._client

    def _need_driver(self) -> None:
        try:
            import pymongo  # noqa: F401
        except ImportError:
            self.fail(
                "needs the pymongo driver: pip install 'udop[mongodb]' (the AWS task runner's layers "
                "do not hold it)",
                retryable=False,
            )

    def _database_name(self) -> str:
        s = self.settings
        if s.database:
            return s.database
        if s.url is not None:
            path = urlsplit(self.secret(s.url) or "").path.strip("/")
            if path:
                return unquote(path)
        self.fail("needs 'database' (or a database in the URL's path)", retryable=False)

    def _collection_name(self) -> str:
        if not self.settings.collection:
            self.fail("needs 'collection'", retryable=False)
        return self.settings.collection

    def _where(self) -> str:
        return f"{self._database_name()}.{self.settings.collection or ''}"

    def dataset(self) -> Dataset:
        name = self._where()
        if self.settings.url is not None:
            return url_dataset(self._url() or "", default_port=27017, scheme="mongodb", name=name)
        return host_dataset("mongodb", self.settings.host, self.settings.port, name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def check(self) -> None:
        self._need_driver()
        from pymongo.errors import PyMongoError

        try:
            self.client[self._database_name()].command("ping")
        except PyMongoError as exc:
            self._error(exc, "ping")

    def _error(self, exc: BaseException, doing: str) -> NoReturn:
        """A driver error as one line: retryable (``ConnectionFailed``) for network trouble,
        elections, write conflicts and transient transaction errors; fatal otherwise."""
        from pymongo.errors import (
            BulkWriteError,
            ConfigurationError,
            ConnectionFailure,
            OperationFailure,
            PyMongoError,
        )

        text = _message(exc)
        if isinstance(exc, ConnectionFailure):
            self.fail(f"{doing}: cannot reach MongoDB: {text}", retryable=True)
        if isinstance(exc, ConfigurationError):
            self.fail(f"{doing}: {text}", retryable=False)
        code = getattr(exc, "code", None)
        if isinstance(exc, BulkWriteError):
            first = (exc.details.get("writeErrors") or [{}])[0]
            code, text = first.get("code", code), " ".join(str(first.get("errmsg", text)).split())[:300]
        labels = {"TransientTransactionError", "UnknownTransactionCommitResult", "RetryableWriteError"}
        if isinstance(exc, PyMongoError) and any(exc.has_error_label(label) for label in labels):
            self.fail(f"{doing}: {text}", retryable=True)
        if code == 112:  # WriteConflict
            self.fail(
                f"{doing}: {text} (another transaction holds these documents: perhaps one of a load "
                "that died, which the server aborts after transactionLifetimeLimitSeconds)",
                retryable=True,
            )
        if isinstance(exc, OperationFailure | BulkWriteError) and code in _RETRYABLE_CODES:
            self.fail(f"{doing}: {text}", retryable=True)
        if isinstance(code, int) and code in _FATAL_CODES:
            self.fail(f"{doing}: {_FATAL_CODES[code]}: {text}", retryable=False)
        self.fail(f"{doing}: {text}", retryable=False)

    def _existing(self, db: Any, name: str) -> None:
        if not db.list_collection_names(filter={"name": name}):
            others = sorted(n for n in db.list_collection_names() if not n.startswith("system."))
            hint = f" (it has: {', '.join(others[:10])})" if others else " (it has no collections)"
            self.fail(f"collection {name!r} does not exist in database {db.name!r}{hint}", retryable=False)

    # -- read --------------------------------------------------------------------------------------
    def schema(self) -> pa.Schema | None:
        typed = schema_from_mapping(self.settings.columns)
        if typed is None or not self.settings.changes:
            return typed
        return self._change_schema(typed)

    @staticmethod
    def _change_schema(typed: pa.Schema) -> pa.Schema:
        """The rows of a change stream with declared ``columns``: the change's fields, then those."""
        return pa.schema([*_change_fields(), *(f for f in typed if f.name not in _CHANGE_NAMES)])

    def position(self) -> str | None:
        """After a change-stream ``read``: the position it reached (the last change's, or where the
        stream stood when a first read found no change), for the framework to keep pending."""
        return self._end

    def read(self, *, since: Any = None) -> Iterator[pa.RecordBatch]:
        self._need_driver()
        from bson.errors import BSONError
        from pymongo.errors import PyMongoError

        self._end = None
        try:
            if self.settings.changes:
                for batch, position in self.read_changes(since):
                    self._end = position
                    yield batch
                return
            yield from self._read_documents(since)
        except PyMongoError as exc:
            self._error(exc, f"read {self._where()}")
        except BSONError as exc:  # a document the driver cannot decode (e.g. invalid UTF-8)
            self.fail(f"read {self._where()}: {_message(exc)}", retryable=False)

    def _projection(self) -> dict[str, Any] | None:
        s = self.settings
        picked: dict[str, Any] | None = None
        if isinstance(s.projection, list):
            picked = {name: 1 for name in s.projection}
        elif s.projection is not None:
            picked = dict(s.projection)
        if picked is not None:
            inc = s.incremental
            including = any(v for k, v in picked.items() if k != "_id")
            if inc is not None and not s.changes and including and inc.column not in picked:
                picked[inc.column] = 1  # the watermark is computed from it
            return picked
        if s.columns:
            return {name: 1 for name in s.columns} | ({} if "_id" in s.columns else {"_id": 0})
        return None

    def _since_filter(self, since: Any) -> dict[str, Any]:
        """``column > since`` for each BSON type the watermark may stand for: its text, an ObjectId
        (a 24-hex-digit watermark of an ``_id`` column) and a date (ISO text). MongoDB compares only
        within a type, so each form matches only the fields of its type."""
        from bson import ObjectId

        inc = self.settings.incremental
        if inc is None or since is None:
            return {}
        forms: list[Any] = [_bson(since)]  # a Decimal as Decimal128 (numbers compare across types)
        if isinstance(since, str) and ObjectId.is_valid(since):
            forms.append(ObjectId(since))
        if isinstance(since, str) and (when := _start_time(since)) is not None:
            forms.append(when)
        if len(forms) == 1:
            return {inc.column: {"$gt": forms[0]}}
        return {"$or": [{inc.column: {"$gt": form}} for form in forms]}

    def _extended_json(self, value: Any, option: str) -> Any:
        """An option as the driver wants it: MongoDB extended JSON (``{"$oid": ...}``, ``{"$date":
        ...}``) turned into BSON values, and the dates YAML parsed (``2024-01-01``) into BSON dates."""
        from bson import json_util
        from bson.errors import BSONError

        def default(v: Any) -> Any:
            if isinstance(v, dt.datetime):
                return {"$date": (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).isoformat()}
            if isinstance(v, dt.date):
                return {"$date": f"{v.isoformat()}T00:00:00Z"}
            if isinstance(v, decimal.Decimal):
                return {"$numberDecimal": str(v)}
            raise TypeError(f"{type(v).__name__} values cannot be sent to MongoDB")

        try:
            return json_util.loads(json.dumps(value, default=default))
        except (TypeError, ValueError, BSONError) as exc:  # e.g. {"$oid": "not-hex"}
            self.fail(f"{option}: {_message(exc)}", retryable=False)

    def _read_documents(self, since: Any) -> Iterator[pa.RecordBatch]:
        s = self.settings
        db = self.client[self._database_name()]
        name = self._collection_name()
        self._existing(db, name)
        collection = db[name]
        condition = self._since_filter(since)
        if s.pipeline is not None:
            stages = self._extended_json(s.pipeline, "pipeline")
            if condition:
                stages.append({"$match": condition})
            cursor = collection.aggregate(stages, batchSize=s.batch_size, allowDiskUse=True)
        else:
            query = self._extended_json(s.filter, "filter")
            if condition:
                query = {"$and": [query, condition]} if query else condition
            cursor = collection.find(query, self._projection(), batch_size=s.batch_size)
        with cursor:
            yield from self._batches(cursor, schema_from_mapping(s.columns))

    def _batches(
        self, documents: Iterable[Mapping[str, Any]], schema: pa.Schema | None
    ) -> Iterator[pa.RecordBatch]:
        rows: list[Mapping[str, Any]] = []
        for doc in documents:
            rows.append(doc)
            if len(rows) >= self.settings.batch_size:
                batch = self._to_batch(rows, schema)
                schema = batch.schema
                yield batch
                rows = []
        if rows:
            yield self._to_batch(rows, schema)
        # no document and no declared columns: no batch (its types are unknown); the extract then
        # writes an empty file, and a declared schema() an empty typed one

    def _to_batch(self, docs: Sequence[Mapping[str, Any]], schema: pa.Schema | None) -> pa.RecordBatch:
        """Documents -> one batch in ``schema``: declared columns keep only their fields; the first
        batch's inferred schema refuses a field it lacks. Without a schema, these documents decide
        it (``_infer_type``)."""
        simple = _SIMPLE  # the values most documents hold pass as they are (a set lookup per value)
        rows = [{k: v if type(v) in simple else _plain(v) for k, v in doc.items()} for doc in docs]
        if schema is None:
            names: dict[str, None] = {}
            for row in rows:
                names.update(dict.fromkeys(row))
            fields = [pa.field(n, _infer_type([r.get(n) for r in rows])) for n in names]
            if not fields:
                return pa.RecordBatch.from_pydict({"_id": pa.array([], pa.string())})
            schema = pa.schema(fields)
        elif not self.settings.columns:
            extra = sorted({k for row in rows for k in row} - set(schema.names))
            if extra:
                self.fail(
                    f"documents after the first batch have field(s) {', '.join(extra)} that the first "
                    "batch did not; declare the fields with 'columns' (or pick them with 'projection')",
                    retryable=False,
                )
        arrays = []
        for f in schema:
            values = [row.get(f.name) for row in rows]
            try:
                arrays.append(_array(values, f.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                self.fail(
                    f"field {f.name!r} does not fit {f.type} ({_message(exc)}); declare its type "
                    "with 'columns' (string takes anything)",
                    retryable=False,
                )
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    # -- change streams ----------------------------------------------------------------------------
    def read_changes(
        self, position: str | None = None, *, max_changes: int | None = None
    ) -> Iterator[tuple[pa.RecordBatch, str]]:
        """The collection's changes after ``position`` as ``(batch, position after its last
        change)`` pairs, until the stream is caught up (it waits ``wait`` for more) or
        ``max_changes`` (default: the setting) were read. A consumer stores the position only once
        the batch's load committed and passes it back to resume; positions compare as text (later
        changes have greater positions). ``position`` may also be an ISO time (start there) or
        None (start now); when such a first read finds no change, it yields one empty batch paired
        with the position the stream reached, so the next read misses nothing.

        Each row is one change: ``_position``, ``_op`` (insert, update, replace, delete, ...),
        ``_cluster_time``, ``_key`` (the document's ``_id``) and the document's other fields
        (``full_document``: the whole document after an update by default; none for a delete)."""
        s = self.settings
        limit = max_changes if max_changes is not None else s.max_changes
        typed = schema_from_mapping(s.columns)
        schema = None if typed is None else self.schema()
        read = 0
        with _Changes(self, position, wait=s.wait) as changes:
            rows: list[dict[str, Any]] = []
            while limit is None or read < limit:
                row = changes.next_row()
                if row is None:
                    break
                rows.append(row)
                read += 1
                if len(rows) >= s.batch_size:
                    batch = self._to_batch(rows, schema)
                    schema = batch.schema
                    yield batch, changes.last or ""
                    rows = []
            if rows:
                assert changes.last is not None
                yield self._to_batch(rows, schema), changes.last
            elif changes.last is None and changes.parsed is None:
                # a first read with no change: where the stream stands now is the position to keep,
                # or the changes until the next run would be missed
                yield (
                    self._to_batch([], schema or pa.schema(_change_fields())),
                    changes.here(),
                )

    def stream(self) -> MongoStream:
        """The collection's change stream consumed continuously (``udop stream``)."""
        self._need_driver()
        if self.settings.filter:
            self.fail(
                "udop stream reads the collection's change stream: use 'pipeline' ($match stages on the "
                "change events), not 'filter'",
                retryable=False,
            )
        self._collection_name()
        return MongoStream(self)

    def _oldest_change(self) -> Any:
        """The time of the oldest entry of the server's change history (its oplog), or None when this
        user may not read it."""
        from pymongo.errors import PyMongoError

        try:
            first = self.client["local"]["oplog.rs"].find_one({}, {"ts": 1}, sort=[("$natural", 1)])
        except PyMongoError:
            return None
        return None if first is None else first.get("ts")

    def _change_row(self, change: Mapping[str, Any], position: str) -> dict[str, Any]:
        at = change.get("clusterTime")
        doc = change.get("fullDocument") or {}
        key = (change.get("documentKey") or {}).get("_id")
        picked = self._projection()
        if picked is not None:
            wanted = {k for k, v in picked.items() if v}
            doc = {k: v for k, v in doc.items() if k in wanted}
        return {
            POSITION_COLUMN: position,
            "_op": change.get("operationType"),
            "_cluster_time": at.as_datetime() if at is not None else change.get("wallTime"),
            # the document's _id, as text whatever its type (one schema across runs); not named _id,
            # so a change log appends to a collection without colliding on the documents' keys
            "_key": _text(_plain(key)),
            **{k: v for k, v in doc.items() if k != "_id"},
        }

    # -- write -------------------------------------------------------------------------------------
    def write(
        self, batches: Iterable[pa.RecordBatch], mode: WriteMode | None = None, keys: list[str] | None = None
    ) -> int:
        return self._write(batches, mode, keys, None)[0]

    def _ledger_id(self, entry: LoadEntry) -> str:
        return f"{entry.key}:{self._collection_name()}"

    def loaded(self, entry: LoadEntry) -> int | None:
        self._need_driver()
        from pymongo.errors import PyMongoError

        try:
            found = self.client[self._database_name()][LEDGER_COLLECTION].find_one(
                {"_id": self._ledger_id(entry)}, {"rows_written": 1}
            )
        except PyMongoError as exc:
            self._error(exc, f"read the load ledger {LEDGER_COLLECTION}")
        return None if found is None else int(found["rows_written"])

    def write_once(
        self, batches: Iterable[pa.RecordBatch], mode: str, keys: list[str], entry: LoadEntry
    ) -> tuple[int, bool]:
        return self._write(batches, mode, keys, entry)  # type: ignore[arg-type]

    def _transactional(self) -> bool:
        hello = self.client.admin.command("hello")
        can = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
        wanted = self.settings.transactions
        if wanted and not can:
            self.fail(
                "transactions: true, but the server is a standalone (transactions need a replica set "
                "or a sharded cluster)",
                retryable=False,
            )
        return can if wanted is None else wanted

    def _write(
        self,
        batches: Iterable[pa.RecordBatch],
        mode: WriteMode | None,
        keys: list[str] | None,
        entry: LoadEntry | None,
    ) -> tuple[int, bool]:
        """With a transaction: the rows, an ``overwrite``'s delete and the ledger entry commit
        together (a repeated load finds the entry and writes nothing; two racing attempts collide on
        the entry's ``_id`` and one rolls back). Without: rows first, then the entry."""
        self._need_driver()
        from bson.errors import BSONError
        from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

        mode, keys = self.resolve_mode(mode, keys)
        name = self._collection_name()
        db = self.client[self._database_name()]
        try:
            if entry is not None and (found := self.loaded(entry)) is not None:
                return found, True
            transactional = self._transactional()
            existing = set(db.list_collection_names())
            for needed in (name, LEDGER_COLLECTION if entry is not None else None):
                if needed is not None and needed not in existing:
                    # collections are created outside the transaction (servers before 4.4 cannot in one)
                    try:
                        db.create_collection(needed, check_exists=False)
                    except OperationFailure as exc:
                        if exc.code != 48:  # NamespaceExists: another load created it just now
                            raise
                    if needed == name and mode == "upsert" and keys != ["_id"]:
                        db[name].create_index([(k, 1) for k in keys], unique=True, name="udop_upsert_keys")
            if not transactional:
                rows = self._write_rows(db[name], batches, mode, keys, None)
                faults.point("load-before-commit")  # here, the documents are in and the entry is not
                if entry is not None:
                    db[LEDGER_COLLECTION].insert_one(self._ledger_doc(entry, rows))
                return rows, False
            with self.client.start_session() as session, session.start_transaction():
                if entry is not None:
                    found_in = db[LEDGER_COLLECTION].find_one(
                        {"_id": self._ledger_id(entry)}, session=session
                    )
                    if found_in is not None:
                        return int(found_in["rows_written"]), True
                rows = self._write_rows(db[name], batches, mode, keys, session)
                if entry is not None:
                    db[LEDGER_COLLECTION].insert_one(self._ledger_doc(entry, rows), session=session)
                faults.point("load-before-commit")
            return rows, False
        except DuplicateKeyError as exc:
            if entry is not None and (found := self.loaded(entry)) is not None:
                return found, True  # another attempt of this load committed first
            self._error(exc, f"write to {self._where()}")
        except PyMongoError as exc:
            self._error(exc, f"write to {self._where()}")
        except (BSONError, OverflowError) as exc:  # e.g. an unsigned 64-bit integer past 2**63
            self.fail(
                f"write to {self._where()}: a value MongoDB cannot store: {_message(exc)}", retryable=False
            )

    def _ledger_doc(self, entry: LoadEntry, rows: int) -> dict[str, Any]:
        return {
            "_id": self._ledger_id(entry),
            "load_key": entry.key,
            "pipeline": entry.pipeline,
            "run_id": entry.run_id,
            "task_id": entry.task_id,
            "item": entry.item,
            "target_collection": self._collection_name(),
            "input": entry.input,
            "watermarks": entry.watermarks,
            "rows_written": rows,
            "committed_at": dt.datetime.now(dt.UTC),
        }

    def _write_rows(
        self, collection: Any, batches: Iterable[pa.RecordBatch], mode: str, keys: list[str], session: Any
    ) -> int:
        from pymongo import UpdateOne

        if mode == "overwrite":
            collection.delete_many({}, session=session)
        total = 0
        for batch in batches:
            if batch.num_rows == 0:
                continue
            missing = [k for k in keys if k not in batch.schema.names]
            if mode == "upsert" and missing:
                self.fail(
                    f"key column(s) {', '.join(missing)} are not in the data "
                    f"(columns: {', '.join(batch.schema.names)})",
                    retryable=False,
                )
            docs = [{k: _bson(v) for k, v in row.items()} for row in batch.to_pylist()]
            if mode != "upsert":
                collection.insert_many(docs, ordered=False, session=session)
            else:
                # a key twice in one load: the last row wins (an unordered bulk write has no order)
                latest = {repr([doc[k] for k in keys]): doc for doc in docs}
                ops = []
                for doc in latest.values():
                    key = {k: doc[k] for k in keys}
                    rest = {k: v for k, v in doc.items() if k not in keys and k != "_id"}
                    # _id cannot change on an existing document: it is only given to a new one
                    on_insert = {"_id": doc["_id"]} if "_id" in doc and "_id" not in keys else {}
                    update: dict[str, Any] = (
                        {"$set": rest} if rest else {"$setOnInsert": {**key, **on_insert}}
                    )
                    if rest and on_insert:
                        update["$setOnInsert"] = on_insert
                    ops.append(UpdateOne(key, update, upsert=True))
                collection.bulk_write(ops, ordered=False, session=session)
            total += batch.num_rows
        return total


def _change_fields() -> list[pa.Field]:
    return [
        pa.field(POSITION_COLUMN, pa.string()),
        pa.field("_op", pa.string()),
        pa.field("_cluster_time", pa.timestamp("ms", "UTC")),
        pa.field("_key", pa.string()),
    ]


def _message(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    text = details.get("errmsg") if isinstance(details, dict) and details.get("errmsg") else str(exc)
    text = str(text).split(", full error:")[0]
    return " ".join(text.split())[:300] or type(exc).__name__


class _Changes:
    """An open change stream of the connector's collection and the ordering of its positions: the one
    path from a change event to a row, for the batch extract (``read_changes``) and ``udop stream``
    (``MongoStream``).

    ``position``: a stored position (resume after its token), an ISO time (start there), None (start
    now, or at the oldest change the server keeps when ``earliest``)."""

    def __init__(
        self, connector: MongoConnector, position: str | None, *, wait: float, earliest: bool = False
    ) -> None:
        from bson import Timestamp

        self.connector = connector
        s = connector.settings
        db = connector.client[connector._database_name()]
        name = connector._collection_name()
        connector._existing(db, name)
        options: dict[str, Any] = {
            "full_document": None if s.full_document == "default" else s.full_document,
            "max_await_time_ms": max(1, int(wait * 1000)),
            "batch_size": s.batch_size,
        }
        self.parsed = _parse_position(position) if isinstance(position, str) else None
        parsed = self.parsed
        self.time, self.inc, self.rank = (parsed[0], parsed[1], parsed[2]) if parsed else (-1, -1, 0)
        if parsed is not None:
            options["resume_after"] = parsed[3]
        elif position is not None:
            start = _start_time(position)
            if start is None:
                connector.fail(
                    f"changes: {str(position)[:60]!r} is neither a stored position nor an ISO time",
                    retryable=False,
                )
            options["start_at_operation_time"] = Timestamp(int(start.timestamp()), 0)
        elif earliest:
            oldest = connector._oldest_change()
            if oldest is None:
                connector.fail(
                    "start: earliest needs to read the server's oplog (local.oplog.rs), which this user "
                    "may not; use start: latest or give the user the clusterMonitor role",
                    retryable=False,
                )
            options["start_at_operation_time"] = oldest
        self.last: str | None = None
        # the server's time before the stream opens: every change the stream has yet to deliver comes
        # later, so a position of "here" made from it sorts before all of them
        self.before = db.command("ping").get("operationTime") if parsed is None else None
        self.stream = db[name].watch(connector._extended_json(s.pipeline or [], "pipeline"), **options)

    def next_row(self) -> dict[str, Any] | None:
        """The next change as a row (waiting up to ``wait`` for one), None when none came."""
        from bson import Timestamp

        change = self.stream.try_next()
        if change is None:
            return None
        at = change.get("clusterTime")
        t, i = (at.time, at.inc) if isinstance(at, Timestamp) else (self.time, self.inc)
        self.rank = self.rank + 1 if (t, i) == (self.time, self.inc) else 0
        self.time, self.inc = t, i
        self.last = _position(t, i, self.rank, change["_id"])
        return self.connector._change_row(change, self.last)

    def here(self) -> str:
        """Where a stream that delivered no change stands: a position before every change to come."""
        from bson import Timestamp

        token = self.stream.resume_token
        if not isinstance(self.before, Timestamp) or token is None:
            self.connector.fail("changes: the server reported no position for the stream", retryable=False)
        return _position(self.before.time, self.before.inc, 0, token)

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> _Changes:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


#: what a stored position no longer reachable on the server means for ``udop stream``
_LOST = (
    "the server's change history (oplog) no longer reaches udop's stored position, so changes were "
    "lost; load the collection again with a batch extract, then start the stream under a new pipeline "
    "name (positions are kept per pipeline), or give the server a larger oplog"
)


class MongoStream:
    """A collection's change stream consumed by ``udop stream``. udop's position is the resume token of
    the last change of the committed batch (``{"<database>.<collection>": position}``, the batch
    extract's ordered position text); nothing is told to the server. A restart resumes after it
    (``resume_after``); without one, ``start`` says where: ``latest`` (now) or ``earliest`` (the oldest
    change the server's oplog keeps)."""

    def __init__(self, connector: MongoConnector) -> None:
        self.connector = connector
        self.key = connector._where()
        self.changes: _Changes | None = None
        self._lag_checked = 0.0
        self._lag: int | None = None

    def _call(self, doing: str, fn: Callable[[], Any]) -> Any:
        from bson.errors import BSONError
        from pymongo.errors import OperationFailure, PyMongoError

        try:
            return fn()
        except OperationFailure as exc:
            if exc.code in {280, 286}:  # ChangeStreamFatalError, ChangeStreamHistoryLost
                self.connector.fail(f"{doing} {self.key}: {_LOST} ({_message(exc)})", retryable=False)
            self.connector._error(exc, f"{doing} {self.key}")
        except PyMongoError as exc:
            self.connector._error(exc, f"{doing} {self.key}")
        except BSONError as exc:
            self.connector.fail(f"{doing} {self.key}: {_message(exc)}", retryable=False)

    def seek(self, positions: Mapping[str, Any]) -> None:
        from bson import Timestamp

        if self.changes is not None:
            self.changes.close()
        stored = positions.get(self.key)
        parsed = _parse_position(stored) if isinstance(stored, str) else None
        if stored is not None and parsed is None:
            self.connector.fail(
                f"the stored position of {self.key} is not a change-stream position: {str(stored)[:60]!r}",
                retryable=False,
            )
        if parsed is not None:
            # a token older than the oldest change the server keeps cannot be resumed from (MongoDB says
            # so with ChangeStreamHistoryLost; some servers say nothing and deliver nothing)
            oldest = self._call("reading the oplog of", self.connector._oldest_change)
            if isinstance(oldest, Timestamp) and (parsed[0], parsed[1]) < (oldest.time, oldest.inc):
                self.connector.fail(f"resuming the change stream of {self.key}: {_LOST}", retryable=False)
        earliest = self.connector.settings.start == "earliest"
        wait = min(0.5, self.connector.settings.wait)
        self.changes = self._call(
            "opening the change stream of",
            lambda: _Changes(self.connector, stored, wait=wait, earliest=earliest),
        )

    def poll(self, max_rows: int, max_seconds: float, stop: threading.Event) -> StreamBatch | None:
        changes = self.changes
        if changes is None:
            raise RuntimeError("seek() opens the change stream before poll()")
        rows: list[dict[str, Any]] = []
        deadline: float | None = None
        while len(rows) < max_rows and not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            row = self._call("reading the change stream of", changes.next_row)
            if row is None:
                if not rows:
                    return None  # nothing for a while: the runner reports and looks at its stop flag
                continue
            rows.append(row)
            if deadline is None:
                deadline = time.monotonic() + max_seconds
        if not rows:
            return None
        typed = schema_from_mapping(self.connector.settings.columns)
        schema = None if typed is None else self.connector._change_schema(typed)
        batch = self.connector._to_batch(rows, schema)
        assert changes.last is not None
        return StreamBatch(table=pa.Table.from_batches([batch]), end={self.key: changes.last})

    def commit(self, end: Mapping[str, Any], acks: list[Any]) -> None:
        """Nothing to tell the server: the position is udop's (committed with the batch)."""

    def lag(self) -> int | None:
        """Entries of the collection in the server's oplog after the last change read (checked at most
        every 2 s; None when this user may not read the oplog). An estimate: a pipeline's ``$match``
        may leave some out, and changes inside transactions are not counted."""
        from bson import Timestamp
        from pymongo.errors import PyMongoError

        now = time.monotonic()
        changes = self.changes
        if changes is None or now - self._lag_checked < 2.0:
            return self._lag
        self._lag_checked = now
        after = Timestamp(changes.time, changes.inc) if changes.time >= 0 else changes.before
        if not isinstance(after, Timestamp):
            return self._lag
        try:
            self._lag = int(
                self.connector.client["local"]["oplog.rs"].count_documents(
                    {"ts": {"$gt": after}, "ns": self.key}, limit=1_000_000
                )
            )
        except PyMongoError:
            self._lag = None
        return self._lag

    def close(self) -> None:
        if self.changes is not None:
            with contextlib.suppress(Exception):
                self.changes.close()
            self.changes = None
        self.connector.close()
