"""The Redis state store passes the same contract as the embedded backends, on the real server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from udop.state import open_state_store
from udop.state.redis import RedisStateStore
from udop.state.testing import StateStoreContract

pytestmark = pytest.mark.redis

REDIS_URL = "redis://127.0.0.1:6379/0"


def _cleanup(store: RedisStateStore) -> None:
    keys = list(store.client.scan_iter(match=store.prefix + "*"))
    if keys:
        store.client.delete(*keys)


class TestRedisStateStore(StateStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[RedisStateStore]:
        s = RedisStateStore.from_url(REDIS_URL, prefix=f"udop-test-{uuid.uuid4().hex}:")
        yield s
        _cleanup(s)
        s.close()


def test_prefix_isolates_stores() -> None:
    a = RedisStateStore.from_url(REDIS_URL, prefix=f"udop-test-{uuid.uuid4().hex}:")
    b = RedisStateStore.from_url(REDIS_URL, prefix=f"udop-test-{uuid.uuid4().hex}:")
    a.set("k", "a")
    assert b.get("k") is None
    assert a.get("k") == "a"
    _cleanup(a)
    a.close()
    b.close()


def test_open_state_store_redis_url() -> None:
    store = open_state_store(REDIS_URL)
    assert isinstance(store, RedisStateStore)
    key = f"udop-test-{uuid.uuid4().hex}"
    store.set(key, "v", ttl=5)
    assert store.get(key) == "v"
    store.delete(key)
    store.close()
