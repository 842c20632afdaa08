"""The audit log: who did what, when, and with which outcome, kept in the metadata store's database.

Every mutating API call and every authentication or authorisation failure is one row. The table is
created by the Alembic revision ``udop_api_0001`` (``shared/udop/store/migrations/``); it is defined here,
apart from the store's own tables, because only the API writes it.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Engine,
    delete,
    insert,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from udop.api.tables import API_METADATA, as_utc, audit_log_table, ensure_api_tables
from udop.errors import StoreError

__all__ = [
    "API_METADATA",
    "AuditEntry",
    "AuditLog",
    "as_utc",
    "audit_log_table",
    "decode_cursor",
    "decode_id_cursor",
    "encode_cursor",
    "ensure_api_tables",
    "printable",
]

log = logging.getLogger(__name__)

_DETAIL_MAX = 2000
#: how often at most the rows past the retention are deleted (on the next write after it)
_PRUNE_EVERY = 3600.0
#: the largest id either backend's BIGINT holds; a cursor past it is not one we issued
_MAX_ID = 2**63 - 1
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def printable(value: str, limit: int) -> str:
    """``value`` as any database and terminal accept it: lone surrogates and control characters
    (NUL, which PostgreSQL refuses in text, included) written as escapes, then cut to ``limit``."""
    text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)[:limit]


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    actor_kind: str
    role: str | None
    action: str
    method: str
    path: str
    status: int
    outcome: str
    detail: str | None
    client: str | None


def outcome_for(status: int) -> str:
    """The one-word outcome the log keeps for an HTTP status."""
    if status == 401:
        return "unauthenticated"
    if status == 403:
        return "denied"
    if status >= 500:
        return "error"
    if status >= 400:
        return "rejected"
    return "success"


def encode_cursor(value: int | str) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, pattern: str = r"[!-~]{1,300}") -> str:
    """The value inside an opaque cursor; ``ValueError`` when it is not one of ours.

    The value must match ``pattern`` (default: printable ASCII, as run ids are): a forged cursor holding
    NUL, surrogates or odd bytes never reaches the database.
    """
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("cursor is not one this API returned") from exc
    if not re.fullmatch(pattern, value):
        raise ValueError("cursor is not one this API returned")
    return value


def decode_id_cursor(cursor: str) -> int:
    """An integer id inside a cursor, within the range a BIGINT holds; ``ValueError`` otherwise."""
    value = int(decode_cursor(cursor, r"[0-9]{1,19}"))
    if not 0 < value <= _MAX_ID:
        raise ValueError("cursor is not one this API returned")
    return value


class AuditLog:
    """Writes and reads audit rows with its own short transactions on the store's engine.

    With ``retention_days`` rows older than that are deleted, at most once an hour, on a write.
    """

    def __init__(self, engine: Engine, *, retention_days: int = 0) -> None:
        self.engine = engine
        self.retention_days = retention_days
        self._next_prune = 0.0
        self._prune_lock = threading.Lock()

    def prune(self, now: datetime | None = None) -> int:
        """Delete the rows past the retention; the number deleted (0 when rows are kept forever)."""
        if self.retention_days <= 0:
            return 0
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.retention_days)
        try:
            with self.engine.begin() as conn:
                result = conn.execute(delete(audit_log_table).where(audit_log_table.c.at < cutoff))
        except SQLAlchemyError as exc:
            raise StoreError(f"audit log prune failed: {type(exc).__name__}") from exc
        return int(result.rowcount or 0)

    def _maybe_prune(self) -> None:
        if self.retention_days <= 0 or time.monotonic() < self._next_prune:
            return
        if not self._prune_lock.acquire(blocking=False):  # another thread is at it
            return
        try:
            self._next_prune = time.monotonic() + _PRUNE_EVERY
            self.prune()
        except StoreError as exc:
            log.warning("%s; trying again in an hour", exc)
        finally:
            self._prune_lock.release()

    def record(
        self,
        *,
        actor: str,
        actor_kind: str,
        role: str | None,
        action: str,
        method: str,
        path: str,
        status: int,
        detail: str | None = None,
        client: str | None = None,
    ) -> None:
        # every text is made storable: a request may carry any byte, and its row must still be written
        row = {
            "at": datetime.now(UTC),
            "actor": printable(actor, 255),
            "actor_kind": printable(actor_kind, 16),
            "role": printable(role, 16) if role else None,
            "action": printable(action, 64),
            "method": printable(method, 8),
            "path": printable(path, 1024),
            "status": status,
            "outcome": outcome_for(status),
            "detail": printable(detail, _DETAIL_MAX) if detail else None,
            "client": printable(client, 64) if client else None,
        }
        try:
            with self.engine.begin() as conn:  # one statement: atomic on its own
                conn.execute(insert(audit_log_table).values(**row))
        except SQLAlchemyError as exc:
            # The call itself already happened; losing its audit row must at least be loud.
            log.error("audit log write failed for %s %s by %s: %s", method, path, actor, exc)
            raise StoreError(f"audit log write failed: {type(exc).__name__}") from exc
        self._maybe_prune()

    def list(
        self,
        *,
        actor: str | None = None,
        outcome: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[AuditEntry]:
        """Newest first; ``before_id`` continues a page."""
        t = audit_log_table
        query = select(t).order_by(t.c.id.desc()).limit(limit)
        if actor is not None:
            query = query.where(t.c.actor == actor)
        if outcome is not None:
            query = query.where(t.c.outcome == outcome)
        if before_id is not None:
            query = query.where(t.c.id < before_id)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
        except SQLAlchemyError as exc:
            raise StoreError(f"audit log read failed: {type(exc).__name__}") from exc
        return [AuditEntry(**cast(dict[str, Any], {k: as_utc(v) for k, v in row.items()})) for row in rows]
