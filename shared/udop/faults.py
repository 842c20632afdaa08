"""A test-only hook: ``UDOP_FAULT_INJECT=<point>`` makes the process SIGKILL itself at that named
point, so tests can create the crash windows around a load's commits (see docs/testing.md).

Points: ``load-before-commit`` (rows sent, target transaction not yet committed),
``load-committed`` (target committed, watermarks not yet advanced) and ``watermark-committed``
(watermarks advanced, the task not yet recorded as succeeded in the metadata store).
"""

from __future__ import annotations

import os
import signal

from udop.settings import ProcessSettings, load_settings

__all__ = ["POINTS", "point"]

POINTS = ("load-before-commit", "load-committed", "watermark-committed")


def point(name: str) -> None:
    """Die here, at once and without cleanup, when ``UDOP_FAULT_INJECT`` names this point."""
    if load_settings(ProcessSettings).fault_inject == name:
        os.kill(os.getpid(), signal.SIGKILL)
