"""API keys for service accounts: random secrets shown once, stored only as a SHA-256 hash.

A key reads ``udop_<id>_<secret>``. The id finds the row; the secret is compared by hash in constant
time. A slow password hash is not needed: the secret is 256 random bits, not something a person chose.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from udop.api.tables import api_keys_table, as_utc
from udop.errors import StoreError

__all__ = ["ApiKeyRecord", "ApiKeys", "api_keys_table"]

_KEY = re.compile(r"^udop_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    role: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_api_key(value: str) -> bool:
    return value.startswith("udop_")


class ApiKeys:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._revoked_listeners: list[Callable[[str], None]] = []

    def on_revoke(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(key_id)`` after a key is revoked through this object (e.g. to drop caches)."""
        self._revoked_listeners.append(listener)

    def create(self, *, name: str, role: str, created_by: str) -> tuple[ApiKeyRecord, str]:
        """A new key; the second value is the full key, which is never stored nor shown again."""
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            id=key_id,
            name=name,
            role=role,
            created_at=datetime.now(UTC),
            created_by=created_by,
            revoked_at=None,
        )
        try:
            with self.engine.begin() as conn:  # one statement: atomic on its own
                conn.execute(
                    insert(api_keys_table).values(
                        id=key_id,
                        name=name,
                        role=role,
                        secret_hash=_hash(secret),
                        created_at=record.created_at,
                        created_by=created_by,
                        revoked_at=None,
                    )
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"could not store the API key: {type(exc).__name__}") from exc
        return record, f"udop_{key_id}_{secret}"

    def verify(self, key: str) -> ApiKeyRecord | None:
        """The key's record when the key is valid and not revoked, else None."""
        match = _KEY.match(key)
        if not match:
            return None
        key_id, secret = match.groups()
        try:
            with self.engine.connect() as conn:
                row = (
                    conn.execute(select(api_keys_table).where(api_keys_table.c.id == key_id))
                    .mappings()
                    .first()
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"could not read API keys: {type(exc).__name__}") from exc
        if row is None or row["revoked_at"] is not None:
            return None
        if not hmac.compare_digest(row["secret_hash"], _hash(secret)):
            return None
        return _record(row)

    def list(self) -> list[ApiKeyRecord]:
        try:
            with self.engine.connect() as conn:
                rows = (
                    conn.execute(select(api_keys_table).order_by(api_keys_table.c.created_at))
                    .mappings()
                    .all()
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"could not read API keys: {type(exc).__name__}") from exc
        return [_record(r) for r in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; False when there is no such key or it was already revoked."""
        t = api_keys_table
        try:
            with self.engine.begin() as conn:  # one statement: atomic on its own
                result = conn.execute(
                    update(t)
                    .where(t.c.id == key_id, t.c.revoked_at.is_(None))
                    .values(revoked_at=datetime.now(UTC))
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"could not revoke the API key: {type(exc).__name__}") from exc
        for listener in self._revoked_listeners:
            listener(key_id)
        return bool(result.rowcount)


def _record(row: object) -> ApiKeyRecord:
    data = {k: as_utc(row[k]) for k in ("id", "name", "role", "created_at", "created_by", "revoked_at")}  # type: ignore[index]
    return ApiKeyRecord(**data)  # type: ignore[arg-type]
