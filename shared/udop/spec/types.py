"""Small value types shared by the spec models: durations and identifiers."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``"2s"``, ``"10m"``, ``"1h"``, ``"250ms"`` or a number of seconds -> seconds as float."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s', '10m' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration; write e.g. '30s', '10m', '1h', '250ms' or seconds")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.3g}s"
    if seconds < 7200:
        return f"{seconds / 60:.3g}m"
    return f"{seconds / 3600:.3g}h"


#: seconds, written in a definition as ``"30s"``, ``"10m"``, ``"1h"``, ``"250ms"`` or a number
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"},
            ],
            "description": "a duration: '250ms', '30s', '10m', '1h', '1d' or a number of seconds",
        }
    ),
]

#: a task id: used in file paths, state names and SQL relation names, so kept simple
TaskId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$",
        description="letters, digits, '_' and '-', starting with a letter or '_'",
    ),
]

#: a pipeline name: used in S3 keys, state machine names and file paths
PipelineName = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="lower-case letters, digits, '_' and '-' (at most 63)",
    ),
]
