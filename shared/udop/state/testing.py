"""The contract every state store backend passes; subclass it in a test module with a ``store``
fixture (udop's own memory, SQLite and Redis backends run exactly this suite)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from udop.errors import StoreError
from udop.state.api import LockNotAcquired, StateStore

__all__ = ["StateStoreContract"]


class StateStoreContract:
    @pytest.fixture
    def store(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def test_is_a_state_store(self, store: StateStore) -> None:
        assert isinstance(store, StateStore)

    def test_get_set_delete(self, store: StateStore) -> None:
        assert store.get("a") is None
        store.set("a", "1")
        assert store.get("a") == "1"
        store.set("a", "two")
        assert store.get("a") == "two"
        assert store.delete("a") is True
        assert store.get("a") is None
        assert store.delete("a") is False

    def test_values_keep_unicode_and_json(self, store: StateStore) -> None:
        value = '{"wm": "2024-01-01T00:00:00+00:00", "name": "Zürich ✓"}'
        store.set("j", value)
        assert store.get("j") == value

    def test_ttl_expires(self, store: StateStore) -> None:
        store.set("t", "x", ttl=0.2)
        store.set("keep", "y")
        assert store.get("t") == "x"
        time.sleep(0.35)
        assert store.get("t") is None
        assert store.get("keep") == "y"

    def test_set_if_absent(self, store: StateStore) -> None:
        assert store.set_if_absent("k", "first") is True
        assert store.set_if_absent("k", "second") is False
        assert store.get("k") == "first"

    def test_set_if_absent_after_expiry(self, store: StateStore) -> None:
        assert store.set_if_absent("k", "first", ttl=0.2) is True
        time.sleep(0.35)
        assert store.set_if_absent("k", "second") is True
        assert store.get("k") == "second"

    def test_compare_and_set(self, store: StateStore) -> None:
        assert store.compare_and_set("c", None, "1") is True
        assert store.compare_and_set("c", None, "2") is False
        assert store.compare_and_set("c", "0", "2") is False
        assert store.get("c") == "1"
        assert store.compare_and_set("c", "1", "2") is True
        assert store.get("c") == "2"

    def test_incr(self, store: StateStore) -> None:
        assert store.incr("n") == 1
        assert store.incr("n") == 2
        assert store.incr("n", 5) == 7
        assert store.incr("n", -7) == 0
        assert store.get("n") == "0"

    def test_incr_ttl_set_on_creation(self, store: StateStore) -> None:
        assert store.incr("n", ttl=0.2) == 1
        assert store.incr("n", ttl=0.2) == 2
        time.sleep(0.35)
        assert store.get("n") is None
        assert store.incr("n") == 1

    def test_incr_non_integer_is_a_store_error(self, store: StateStore) -> None:
        store.set("s", "abc")
        with pytest.raises(StoreError, match="integer"):
            store.incr("s")
        assert store.get("s") == "abc"

    def test_delete_if_equals(self, store: StateStore) -> None:
        store.set("d", "mine")
        assert store.delete_if_equals("d", "yours") is False
        assert store.get("d") == "mine"
        assert store.delete_if_equals("d", "mine") is True
        assert store.get("d") is None

    def test_concurrent_incr_loses_no_update(self, store: StateStore) -> None:
        def work() -> None:
            for _ in range(50):
                store.incr("counter")

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.get("counter") == "200"

    def test_concurrent_compare_and_set_counter(self, store: StateStore) -> None:
        # read-modify-write through CAS: every successful update is applied exactly once
        def work() -> None:
            done = 0
            while done < 25:
                current = store.get("cas")
                new = str(int(current or "0") + 1)
                if store.compare_and_set("cas", current, new):
                    done += 1

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.get("cas") == "100"

    def test_set_if_absent_has_one_winner(self, store: StateStore) -> None:
        wins: list[int] = []
        barrier = threading.Barrier(6)

        def work(i: int) -> None:
            barrier.wait()
            if store.set_if_absent("once", str(i)):
                wins.append(i)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1
        assert store.get("once") == str(wins[0])

    def test_lock_excludes_and_releases(self, store: StateStore) -> None:
        first = store.lock("job", ttl=30)
        second = store.lock("job", ttl=30)
        assert first.acquire() is True
        assert second.acquire() is False
        assert first.release() is True
        assert second.acquire() is True
        second.release()

    def test_lock_context_manager_and_wait(self, store: StateStore) -> None:
        holder = store.lock("cm", ttl=30)
        holder.acquire()
        with pytest.raises(LockNotAcquired, match="'cm'"), store.lock("cm", wait=0.05):
            pass
        threading.Timer(0.1, holder.release).start()
        with store.lock("cm", wait=5) as lock:
            assert lock.held

    def test_lock_expires_when_holder_dies(self, store: StateStore) -> None:
        crashed = store.lock("lease", ttl=0.2)
        assert crashed.acquire()
        time.sleep(0.35)
        successor = store.lock("lease", ttl=30)
        assert successor.acquire()
        # the crashed holder's late release must not free the successor's lock
        assert crashed.release() is False
        assert store.lock("lease").acquire() is False
        successor.release()
