"""Open the state store a URL names: ``redis://``/``rediss://``, ``sqlite:///path``, ``memory://``."""

from __future__ import annotations

from udop.errors import ConfigError
from udop.state.api import StateStore

__all__ = ["open_state_store"]


def open_state_store(url: str | None = None) -> StateStore:
    """``url`` defaults to ``UDOP_STATE_URL``, else a SQLite file ``<UDOP_HOME>/state.db``."""
    from udop.settings import get_settings

    if url is None:
        settings = get_settings()
        url = settings.state_url or f"sqlite:///{(settings.home / 'state.db').as_posix()}"
    if url.startswith(("redis://", "rediss://", "unix://")):
        from udop.state.redis import RedisStateStore

        return RedisStateStore.from_url(url)
    if url.startswith("sqlite:///"):
        from udop.state.sqlite import SQLiteStateStore

        return SQLiteStateStore(url.removeprefix("sqlite:///") or ":memory:")
    if url in ("memory://", "memory:"):
        from udop.state.memory import MemoryStateStore

        return MemoryStateStore()
    raise ConfigError(
        f"UDOP_STATE_URL {url.split('@')[-1]!r}: expected redis://..., rediss://..., "
        "sqlite:///path or memory://"
    )
