"""A circuit breaker per connection, its state in the state store (so every worker and Lambda
shares it): after ``failures`` consecutive retryable failures calls fail fast for ``cooldown``
seconds; then exactly one caller probes, and its outcome closes or re-opens the circuit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel, ConfigDict, Field

from udop.errors import ConnectionFailed
from udop.spec.types import Duration
from udop.state.api import StateStore

__all__ = ["BreakerSettings", "CircuitBreaker", "CircuitOpen"]


class CircuitOpen(ConnectionFailed):
    """The connection failed too often lately; not even tried."""


class BreakerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    failures: int = Field(5, ge=1, description="consecutive failures that open the circuit")
    cooldown: Duration = Field(30.0, description="how long an open circuit fails fast before one probe")


class CircuitBreaker:
    def __init__(
        self,
        state: StateStore,
        connection: str,
        settings: BreakerSettings | None = None,
        *,
        label: str | None = None,
    ) -> None:
        self.state = state
        self.connection = connection
        self.label = label or f"connection {connection!r}"
        self.settings = settings or BreakerSettings()
        base = f"udop:breaker:{connection}"
        self._failures = f"{base}:failures"
        self._open_until = f"{base}:open_until"
        self._probe = f"{base}:probe"

    def before(self) -> None:
        """Raise ``CircuitOpen`` when the circuit is open and this caller is not the probe."""
        until = self.state.get(self._open_until)
        if until is None:
            return
        remaining = float(until) - time.time()
        if remaining > 0:
            raise CircuitOpen(
                f"{self.label}: circuit open after "
                f"{self.settings.failures} consecutive failures; not trying again for "
                f"{remaining:.0f}s"
            )
        # cooldown over: one probe at a time (the probe key expires if the prober dies)
        if not self.state.set_if_absent(self._probe, "1", ttl=max(self.settings.cooldown, 1.0)):
            raise CircuitOpen(f"{self.label}: circuit half-open, another call is probing it")

    def success(self) -> None:
        self.state.delete(self._failures)
        self.state.delete(self._open_until)
        self.state.delete(self._probe)

    def failure(self) -> None:
        count = self.state.incr(self._failures)
        probing = self.state.get(self._probe) is not None
        if count >= self.settings.failures or probing:
            self.state.set(self._open_until, str(time.time() + self.settings.cooldown))
            self.state.delete(self._probe)

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run a block through the breaker: retryable failures count, others do not."""
        self.before()
        try:
            yield
        except CircuitOpen:
            raise
        except ConnectionFailed:
            self.failure()
            raise
        except BaseException:
            # a fatal error (missing table, bad data) says nothing about the connection's health
            self.state.delete(self._probe)
            raise
        self.success()
