"""An in-process state store: the embedded default for a single process, and the tests' fake."""

from __future__ import annotations

import threading
import time

from udop.errors import StoreError
from udop.state.api import Lock

__all__ = ["MemoryStateStore"]


class MemoryStateStore:
    def __init__(self) -> None:
        self._data: dict[str, tuple[str, float | None]] = {}
        self._mutex = threading.Lock()

    def _live(self, key: str) -> str | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.time():
            del self._data[key]
            return None
        return value

    @staticmethod
    def _expiry(ttl: float | None) -> float | None:
        return None if ttl is None else time.time() + ttl

    def get(self, key: str) -> str | None:
        with self._mutex:
            return self._live(key)

    def set(self, key: str, value: str, *, ttl: float | None = None) -> None:
        with self._mutex:
            self._data[key] = (value, self._expiry(ttl))

    def set_if_absent(self, key: str, value: str, *, ttl: float | None = None) -> bool:
        with self._mutex:
            if self._live(key) is not None:
                return False
            self._data[key] = (value, self._expiry(ttl))
            return True

    def compare_and_set(
        self, key: str, expected: str | None, value: str, *, ttl: float | None = None
    ) -> bool:
        with self._mutex:
            if self._live(key) != expected:
                return False
            self._data[key] = (value, self._expiry(ttl))
            return True

    def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        with self._mutex:
            current = self._live(key)
            if current is None:
                new, expires = amount, self._expiry(ttl)
            else:
                try:
                    new = int(current) + amount
                except ValueError:
                    raise StoreError(f"state key {key!r} does not hold an integer") from None
                expires = self._data[key][1]
            self._data[key] = (str(new), expires)
            return new

    def delete(self, key: str) -> bool:
        with self._mutex:
            present = self._live(key) is not None
            self._data.pop(key, None)
            return present

    def delete_if_equals(self, key: str, expected: str) -> bool:
        with self._mutex:
            if self._live(key) != expected:
                return False
            del self._data[key]
            return True

    def lock(self, name: str, *, ttl: float = 60.0, wait: float = 0.0) -> Lock:
        return Lock(self, name, ttl=ttl, wait=wait)

    def close(self) -> None:
        pass
