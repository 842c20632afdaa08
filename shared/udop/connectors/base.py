"""The connector base class and the settings model every connector's settings extend."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field

from udop.connectors.breaker import BreakerSettings, CircuitBreaker
from udop.connectors.secrets import SecretRef, mask_text
from udop.errors import ConnectionFailed, FatalError
from udop.lineage.naming import Dataset
from udop.spec.types import Duration
from udop.state.api import StateStore

if TYPE_CHECKING:  # pyarrow only in signatures here: a run that never reads a connector never imports it
    import pyarrow as pa

__all__ = ["Connector", "ConnectorSettings", "IncrementalSpec", "LoadEntry", "WriteMode"]

WriteMode = Literal["append", "overwrite", "upsert"]


class IncrementalSpec(BaseModel):
    """Read only rows whose ``column`` is greater than the last committed watermark."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str = Field(description="a timestamp or an increasing id")
    initial: Any = Field(None, description="the watermark of the very first run (default: read all)")
    key: str | None = Field(None, description="state key suffix; default <pipeline>:<task>")
    lease: Duration = Field(
        3600.0,
        description="how long a run holds the watermark without renewing it (a crashed run on "
        "another machine blocks it at most this long)",
    )
    wait: Duration = Field(
        0.0, description="how long a run waits for another run holding the watermark before failing"
    )


@dataclass(frozen=True, slots=True)
class LoadEntry:
    """One load's entry in its target's load ledger: which load (pipeline, run, task and, for a
    ``foreach`` item, the item) wrote how many rows from which input, and the watermark ranges it
    consumed. A target that keeps a ledger commits the entry with the rows, so a retried or resumed
    load finds it and writes nothing again."""

    pipeline: str
    run_id: str
    task_id: str
    item: str = ""
    #: the input dataset (its URI), for people reading the ledger
    input: str = ""
    #: JSON list of the watermark ranges ({key, previous, value}) this load consumed
    watermarks: str = "[]"

    @property
    def key(self) -> str:
        """A fixed-length key naming this load (fits any database's primary key)."""
        raw = json.dumps([self.pipeline, self.run_id, self.task_id, self.item])
        return hashlib.sha256(raw.encode()).hexdigest()[:40]

    def message_id(self, position: int) -> str:
        """The id of the row at ``position`` of this load, the same on every retry (for consumers
        of targets without a ledger, such as queues, to drop duplicates)."""
        return f"{self.key}:{position}"


class ConnectorSettings(BaseModel):
    """Settings shared by every connector: a connection's settings and a source's or target's
    options are merged into one model (the source/target wins), validated by the connector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: WriteMode = Field("append", description="how a load writes: append, overwrite or upsert")
    keys: list[str] = Field(default_factory=list, description="key columns for mode: upsert")
    incremental: IncrementalSpec | None = None
    circuit_breaker: BreakerSettings = BreakerSettings()
    batch_size: int = Field(50_000, ge=1, description="rows per Arrow record batch when reading")


class Connector:
    """Subclass, set ``name`` and ``Settings``, implement ``read``/``write``/``check``.

    ``read`` yields Arrow record batches (never the whole dataset at once). ``write`` consumes
    batches and commits once: if it raises, the target is unchanged. Errors are raised as
    ``ConnectionFailed`` (retryable) or ``FatalError`` through ``self.fail`` so that they name the
    connection and never show a secret.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type[ConnectorSettings]] = ConnectorSettings
    #: True when ``read(since=...)`` filters on the incremental column itself (e.g. in SQL);
    #: otherwise the framework filters the batches it gets. An instance may set it from its settings
    #: (Redis pushes down for a stream, not for keys), so it is not a ClassVar
    pushes_down_incremental: bool = False
    #: options holding local file paths: relative ones are taken from the definition's folder
    path_options: ClassVar[tuple[str, ...]] = ()
    #: write modes this connector supports
    write_modes: ClassVar[tuple[str, ...]] = ("append", "overwrite", "upsert")

    def __init__(
        self, settings: ConnectorSettings, *, connection: str | None = None, state: StateStore | None = None
    ) -> None:
        self.settings = settings
        self.connection = connection or self.name
        self.state = state
        self._secrets: set[str] = set()

    # -- what a connector implements -------------------------------------------------------------
    def read(self, *, since: Any = None) -> Iterator[pa.RecordBatch]:
        self.fail(f"the {self.name} connector cannot be read from", retryable=False)

    def write(
        self, batches: Iterable[pa.RecordBatch], mode: WriteMode | None = None, keys: list[str] | None = None
    ) -> int:
        """Write all batches; returns the number of rows written."""
        self.fail(f"the {self.name} connector cannot be written to", retryable=False)

    #: True when ``write_once`` commits a ``LoadEntry`` with the rows (see ``loaded``)
    keeps_ledger: ClassVar[bool] = False

    def write_once(
        self, batches: Iterable[pa.RecordBatch], mode: str, keys: list[str], entry: LoadEntry
    ) -> tuple[int, bool]:
        """Write like ``write`` unless ``entry`` is already in the target's ledger; returns the rows
        written (or, when found, the rows the earlier load wrote) and whether it was found. Targets
        that keep a ledger commit the entry in the same transaction as the rows; others just write
        (at-least-once: a load repeated after a crash writes again)."""
        return self.write(batches, mode, keys), False  # type: ignore[arg-type]

    def loaded(self, entry: LoadEntry) -> int | None:
        """The rows ``entry``'s load committed, or None when the ledger has no such entry (or the
        target keeps no ledger)."""
        return None

    def check(self) -> None:
        """Open the connection and make one cheap call; raise like ``read`` would."""

    def stream(self) -> Any:
        """This source consumed continuously (``udop stream``): a ``udop.stream.StreamSource``."""
        self.fail(f"the {self.name} connector cannot be consumed as a stream (spec.trigger.stream)",
                  retryable=False)

    def acknowledge(self) -> None:
        """Called after what ``read`` returned is safely stored (queues ack their messages here)."""

    def close(self) -> None:
        """Release connections and clients."""

    def position(self) -> Any:
        """After ``read``: the watermark to keep when it is not the incremental column's highest
        value (a change stream's resume position, known even when no change came); None lets the
        framework take the column's maximum."""
        return None

    def schema(self) -> pa.Schema | None:
        """The schema of an empty read, when the connector can tell without rows."""
        return None

    def dataset(self) -> Dataset:
        """What this connector reads or writes, named as OpenLineage names datasets (``namespace`` +
        ``name``, no credentials). Connectors override it; this fallback names the connection."""
        return Dataset("udop", f"{self.name}:{self.connection}")

    def lineage_dataset(self) -> Dataset:
        """``dataset()`` with every secret this connector resolved masked out, whatever an override did."""
        found = self.dataset()
        return Dataset(self.mask(found.namespace), self.mask(found.name))

    # -- helpers for implementations -------------------------------------------------------------
    def secret(self, ref: SecretRef | None) -> str | None:
        """Resolve a secret now (when the connection opens) and remember it for masking."""
        if ref is None:
            return None
        value = ref.get_secret_value()
        if value:
            self._secrets.add(value)
        return value

    def mask(self, text: str) -> str:
        return mask_text(text, self._secrets)

    def describe(self) -> str:
        return (
            f"connection {self.connection!r} ({self.name})"
            if self.connection != self.name
            else f"connector {self.name!r}"
        )

    def fail(self, message: str, *, retryable: bool) -> NoReturn:
        """Raise the one-line error: the connection's name, what went wrong, secrets masked."""
        text = self.mask(f"{self.describe()}: {message}")
        raise (ConnectionFailed if retryable else FatalError)(text)

    def resolve_mode(self, mode: WriteMode | None, keys: list[str] | None) -> tuple[WriteMode, list[str]]:
        mode = mode or self.settings.mode
        keys = list(keys if keys is not None else self.settings.keys)
        if mode not in self.write_modes:
            self.fail(
                f"mode {mode!r} is not supported; use one of {', '.join(self.write_modes)}", retryable=False
            )
        if mode == "upsert" and not keys:
            self.fail("mode: upsert needs 'keys' (the key columns)", retryable=False)
        return mode, keys

    #: options that say what to read or write, not where: they do not split the circuit breaker
    _TASK_OPTIONS: ClassVar[frozenset[str]] = frozenset(
        {
            "mode",
            "keys",
            "incremental",
            "batch_size",
            "circuit_breaker",
            "table",
            "query",
            "params",
            "columns",
            "partition_by",
            "records",
            "pagination",
            "pattern",
            "stream",
            "queue",
            "collection",
            "filter",
            "projection",
            "pipeline",
        }
    )

    def breaker_key(self) -> str:
        """A named connection has one breaker; an inline one gets one per endpoint (its settings
        minus the per-task options, secrets masked), so one bad host does not trip the others."""
        if self.connection != self.name:
            return self.connection
        data = self.settings.model_dump(mode="json", exclude=set(self._TASK_OPTIONS))
        digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return f"{self.name}@{digest}"

    def breaker(self) -> CircuitBreaker | None:
        if self.state is None:
            return None
        return CircuitBreaker(
            self.state, self.breaker_key(), self.settings.circuit_breaker, label=self.describe()
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.connection!r} {self.settings!r}>"

    def __enter__(self) -> Connector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
