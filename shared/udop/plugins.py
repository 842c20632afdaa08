"""Entry points of every group from one look at the installed packages.

``importlib.metadata.entry_points(group=...)`` reads every installed distribution's metadata on each
call (tens of milliseconds with a hundred packages); ``udop run`` asks for three groups (validators,
task types, task chains). One scan answers them all.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

__all__ = ["entry_points_of", "refresh"]


@cache
def _installed() -> Any:
    return entry_points()  # every group (a SelectableGroups before Python 3.12, EntryPoints after)


def entry_points_of(group: str) -> tuple[EntryPoint, ...]:
    """The entry points of ``group``, from the one scan of this process (``refresh()`` scans again,
    for a package installed while running)."""
    return tuple(_installed().select(group=group))


def refresh() -> None:
    _installed.cache_clear()
