"""Checks that installed task types add to validation (e.g. SQL expressions of transform steps).

Found through the entry point group ``udop.validators``: each is ``check(pipeline, base_dir) ->
list[SpecError]``. The core never imports a layer by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from udop.errors import SpecError
from udop.plugins import entry_points_of

GROUP = "udop.validators"


def run_plugin_checks(pipeline: Any, file: str | Path | None = None, loaded: Any = None) -> list[SpecError]:
    types_used = {t.type for t in pipeline.spec.tasks}
    if types_used <= {"python"}:
        return []  # no installed check applies; skip importing them (keeps `udop run` start fast)
    errors: list[SpecError] = []
    for ep in entry_points_of(GROUP):
        check = ep.load()
        for err in check(pipeline, Path(file).parent if file else Path(".")):
            line = loaded.line_of(parse_path(err.path)) if loaded is not None and err.path else None
            errors.append(err if err.file or file is None else err.located(str(file), line))
    return errors


def parse_path(path: str) -> tuple[str | int, ...]:
    """``spec.tasks[2].steps[1]`` -> ``("spec", "tasks", 2, "steps", 1)``."""
    import re

    parts: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        parts.append(int(index) if index else name)
    return tuple(parts)
