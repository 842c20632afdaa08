"""Connections kept open between loads while a long-lived consumer runs (``udop stream``'s micro-batches).

Outside :func:`hold_connections` connectors open a connection per read or write and close it after
(nothing stays open between runs, in tests or on Lambda). Inside it, a connector may keep one per
database for the next load of the same process; a connection that fails is dropped (the next load opens
a new one), and all are closed when the outermost ``hold_connections`` ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["hold_connections", "holding", "on_release"]

_lock = threading.Lock()
#: how many hold_connections are open (a list of one: updated in place)
_depth = [0]
_release: list[Callable[[], None]] = []


@contextmanager
def hold_connections() -> Iterator[None]:
    """Within: connectors may keep connections open between loads; closed when the outermost one ends."""
    with _lock:
        _depth[0] += 1
    try:
        yield
    finally:
        with _lock:
            _depth[0] -= 1
            done = list(_release) if _depth[0] == 0 else []
            if _depth[0] == 0:
                _release.clear()
        for close in done:
            close()


def holding() -> bool:
    """Whether a :func:`hold_connections` is open in this process."""
    return _depth[0] > 0


def on_release(close: Callable[[], None]) -> None:
    """Call ``close`` when the outermost :func:`hold_connections` ends (now, if none is open)."""
    with _lock:
        if _depth[0] > 0:
            _release.append(close)
            return
    close()
