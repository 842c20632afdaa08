"""What a stream source gives the stream runner: batches of messages as Arrow with the positions after
them. Connectors that can be consumed continuously return one from ``Connector.stream()``."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

__all__ = ["StreamBatch", "StreamSource"]


@dataclass(frozen=True)
class StreamBatch:
    """Messages read together: ``table`` has a row per message; ``end`` is where the source stands after
    them (JSON: partition -> next offset, a stream's last id...); ``acks`` what the broker must be told
    once the batch committed (Redis entry ids, RabbitMQ delivery tags), JSON too."""

    table: pa.Table
    end: Mapping[str, Any]
    acks: list[Any] = field(default_factory=list)
    #: per row, the message's id where the broker may hand the same message over again (SQS message ids,
    #: RabbitMQ ``message_id``; None for a message without one). The runner keeps the ids of committed
    #: batches for ``keep_ids`` seconds and leaves a message that comes back with one of them out of the
    #: batch it arrives in (acknowledged with that batch). None: the positions alone say what was read.
    ids: list[str | None] | None = None
    #: per row, whether the broker says it handed the message over before (RabbitMQ's ``redelivered``):
    #: only those are looked up. None: any message may be one handed over before (SQS)
    redelivered: list[bool] | None = None
    #: seconds a committed message may still come back (SQS: the queue's retention period)
    keep_ids: float = 14 * 86400.0

    @property
    def rows(self) -> int:
        return int(self.table.num_rows)


class StreamSource(Protocol):
    """A source consumed continuously. Positions are udop's: the runner stores them with each batch and
    hands the committed ones back through ``seek`` when it starts."""

    def seek(self, positions: Mapping[str, Any]) -> None:
        """Start reading after ``positions`` (empty: where the source's ``start`` option says)."""

    def poll(self, max_rows: int, max_seconds: float, stop: threading.Event) -> StreamBatch | None:
        """Up to ``max_rows`` messages, waiting at most ``max_seconds`` after the first one (and returning
        early when ``stop`` is set); None when nothing came."""

    def commit(self, end: Mapping[str, Any], acks: list[Any]) -> None:
        """The batch ending at ``end`` committed in udop: acknowledge it where the broker wants that."""

    def lag(self) -> int | None:
        """Messages waiting in the source beyond what was read, when the source can tell."""

    def close(self) -> None: ...
