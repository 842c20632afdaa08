"""The ``StateStore`` protocol and the lock every backend shares."""

from __future__ import annotations

import time
import uuid
from types import TracebackType
from typing import Protocol, runtime_checkable

from udop.errors import StoreError

__all__ = ["Lock", "LockNotAcquired", "StateStore"]


class LockNotAcquired(StoreError):
    """Another holder kept the lock for longer than we were willing to wait."""


@runtime_checkable
class StateStore(Protocol):
    """String values under string keys. ``ttl`` is in seconds; ``None`` means the value never expires.

    Every method is atomic on its own; ``compare_and_set`` and ``set_if_absent`` are the building
    blocks for anything that needs more (locks, watermarks that only move forward).
    """

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str, *, ttl: float | None = None) -> None: ...

    def set_if_absent(self, key: str, value: str, *, ttl: float | None = None) -> bool:
        """Store ``value`` only when ``key`` holds nothing (or an expired value); True when stored."""
        ...

    def compare_and_set(
        self, key: str, expected: str | None, value: str, *, ttl: float | None = None
    ) -> bool:
        """Store ``value`` only when ``key`` currently holds ``expected`` (None: absent)."""
        ...

    def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add ``amount`` to an integer value (absent counts as 0) and return the new value.

        ``ttl`` is applied when the key is created by this call and left alone otherwise.
        """
        ...

    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it held a value."""
        ...

    def delete_if_equals(self, key: str, expected: str) -> bool:
        """Remove ``key`` only when it holds ``expected`` (how a lock holder releases its own lock)."""
        ...

    def lock(self, name: str, *, ttl: float = 60.0, wait: float = 0.0) -> Lock: ...

    def close(self) -> None: ...


class Lock:
    """A lease on ``name``: held until released or until ``ttl`` seconds pass (a crashed holder
    cannot block others forever). Only the holder's token can release it."""

    def __init__(self, store: StateStore, name: str, *, ttl: float = 60.0, wait: float = 0.0) -> None:
        self.store = store
        self.key = f"udop:lock:{name}"
        self.name = name
        self.ttl = ttl
        self.wait = wait
        self.token = uuid.uuid4().hex
        self.held = False

    def acquire(self, *, wait: float | None = None) -> bool:
        deadline = time.monotonic() + (self.wait if wait is None else wait)
        delay = 0.005
        while True:
            if self.store.set_if_absent(self.key, self.token, ttl=self.ttl):
                self.held = True
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.2)

    def release(self) -> bool:
        if not self.held:
            return False
        self.held = False
        return self.store.delete_if_equals(self.key, self.token)

    def __enter__(self) -> Lock:
        if not self.acquire():
            raise LockNotAcquired(
                f"lock {self.name!r} is held by another run or worker "
                f"(waited {self.wait:g}s); try again later"
            )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
