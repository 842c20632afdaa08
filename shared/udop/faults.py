"""A test-only hook: ``UDOP_FAULT_INJECT=<point>`` makes the process SIGKILL itself at that named
point, so tests can create the crash windows around a load's commits (see docs/testing.md).

Points: ``load-before-commit`` (rows sent, target transaction not yet committed),
``load-committed`` (target committed, watermarks not yet advanced) and ``watermark-committed``
(watermarks advanced, the task not yet recorded as succeeded in the metadata store) and
``stream-run-succeeded`` (a stream batch's run succeeded, its offsets not yet advanced) and
``stream-offsets-committed`` (offsets advanced, the broker not yet told: Redis XACK, RabbitMQ ack).

``<point>:SIGTERM`` (or ``:SIGINT``) sends that signal instead and goes on: the stop request of a
service manager arriving at that moment, while the load's thread carries on to its commit.
"""

from __future__ import annotations

import os
import signal
import time

from udop.settings import ProcessSettings, load_settings

__all__ = ["POINTS", "STREAM_POINTS", "point"]

POINTS = ("load-before-commit", "load-committed", "watermark-committed")
#: the stream runner's own point (udop stream), apart from the load points the batch-run tests cycle through
STREAM_POINTS = ("stream-run-succeeded", "stream-offsets-committed")


_SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}


def point(name: str) -> None:
    """Die here, at once and without cleanup, when ``UDOP_FAULT_INJECT`` names this point (or send
    the signal it names after the point, ``load-committed:SIGTERM``)."""
    where, _, signame = (load_settings(ProcessSettings).fault_inject or "").partition(":")
    if where == name:
        os.kill(os.getpid(), _SIGNALS.get(signame or "SIGKILL", signal.SIGKILL))
        # (a signal that returns) the main thread takes the stop request while this one waits, as it
        # would during a commit that takes a while; then this thread goes on to commit
        time.sleep(2.0)
