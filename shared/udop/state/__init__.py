"""The state store: small shared values with TTLs, atomic updates and locks.

Used for incremental watermarks, circuit breakers and, on AWS, the task runner's idempotency keys.
Three backends pass the same contract tests: in-memory (one process), SQLite (the embedded
default, shared by the processes of one machine) and Redis (ElastiCache on AWS).
"""

from __future__ import annotations

from udop.state.api import Lock, LockNotAcquired, StateStore
from udop.state.memory import MemoryStateStore
from udop.state.open import open_state_store

__all__ = ["Lock", "LockNotAcquired", "MemoryStateStore", "StateStore", "open_state_store"]
