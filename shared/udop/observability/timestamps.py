"""Log timestamps: ISO 8601 UTC with milliseconds, the seconds part formatted once per second.

A leaf module: the console formatter (``logs``) and the per-attempt capture (``tasklogs``) both stamp
lines, and each imports the other's module at run time.
"""

from __future__ import annotations

import time
from functools import lru_cache

__all__ = ["iso_time"]


def iso_time(created: float) -> str:
    """``created`` (seconds since the epoch) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    second = int(created)
    return f"{_second(second)}.{int((created - second) * 1000):03d}Z"


@lru_cache(maxsize=8)
def _second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
