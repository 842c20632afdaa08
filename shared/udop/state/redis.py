"""The state store on Redis (ElastiCache on AWS). No Lua: check-then-write operations use
``WATCH``/``MULTI``/``EXEC`` optimistic transactions, retried when another client got in between."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from udop.errors import StoreError
from udop.state.api import Lock

if TYPE_CHECKING:
    import redis as redis_lib

__all__ = ["RedisStateStore"]

T = TypeVar("T")


def _px(ttl: float | None) -> int | None:
    return None if ttl is None else max(1, round(ttl * 1000))


class RedisStateStore:
    """``client`` is a ``redis.Redis``; pass one in (tests do) or use ``from_url``.
    ``prefix`` keeps several users (or tests) of one Redis apart."""

    def __init__(self, client: redis_lib.Redis, *, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "") -> RedisStateStore:
        import redis as redis_lib

        return cls(
            redis_lib.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5),
            prefix=prefix,
        )

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _call(self, fn: Callable[[], T]) -> T:
        import redis as redis_lib

        try:
            return fn()
        except redis_lib.RedisError as exc:
            raise StoreError(f"state store (Redis): {exc}") from None

    @staticmethod
    def _text(value: Any) -> str | None:
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def _watched(self, key: str, body: Callable[[Any, str | None], T | None], default: T) -> T:
        """Run ``body(pipe, current)`` under WATCH; body queues writes after ``pipe.multi()``,
        or returns a result without writing. Retried when the key changed under us."""
        import redis as redis_lib

        def run() -> T:
            with self.client.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(self._k(key))  # type: ignore[no-untyped-call]
                        current = self._text(pipe.get(self._k(key)))
                        result = body(pipe, current)
                        if result is not None:
                            pipe.unwatch()
                            return result
                        pipe.execute()
                        return default
                    except redis_lib.WatchError:
                        continue

        return self._call(run)

    def get(self, key: str) -> str | None:
        return self._text(self._call(lambda: self.client.get(self._k(key))))

    def set(self, key: str, value: str, *, ttl: float | None = None) -> None:
        self._call(lambda: self.client.set(self._k(key), value, px=_px(ttl)))

    def set_if_absent(self, key: str, value: str, *, ttl: float | None = None) -> bool:
        return bool(self._call(lambda: self.client.set(self._k(key), value, px=_px(ttl), nx=True)))

    def compare_and_set(
        self, key: str, expected: str | None, value: str, *, ttl: float | None = None
    ) -> bool:
        def body(pipe: Any, current: str | None) -> bool | None:
            if current != expected:
                return False
            pipe.multi()
            pipe.set(self._k(key), value, px=_px(ttl))
            return None

        return self._watched(key, body, True)

    def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        def run() -> int:
            with self.client.pipeline(transaction=True) as pipe:
                if ttl is not None:
                    pipe.set(self._k(key), 0, px=_px(ttl), nx=True)
                pipe.incrby(self._k(key), amount)
                return int(pipe.execute()[-1])

        import redis as redis_lib

        try:
            return run()
        except redis_lib.ResponseError:
            raise StoreError(f"state key {key!r} does not hold an integer") from None
        except redis_lib.RedisError as exc:
            raise StoreError(f"state store (Redis): {exc}") from None

    def delete(self, key: str) -> bool:
        return bool(self._call(lambda: self.client.delete(self._k(key))))

    def delete_if_equals(self, key: str, expected: str) -> bool:
        def body(pipe: Any, current: str | None) -> bool | None:
            if current != expected:
                return False
            pipe.multi()
            pipe.delete(self._k(key))
            return None

        return self._watched(key, body, True)

    def lock(self, name: str, *, ttl: float = 60.0, wait: float = 0.0) -> Lock:
        return Lock(self, name, ttl=ttl, wait=wait)

    def close(self) -> None:
        self.client.close()
