"""Checks that installed task types add to validation (e.g. SQL expressions of transform steps).

Found through the entry point group ``udop.validators``: each is ``check(pipeline, base_dir) ->
list[SpecError]``. The core never imports a layer by name.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from udop.errors import SpecError

GROUP = "udop.validators"


def run_plugin_checks(pipeline: Any, file: str | Path | None = None) -> list[SpecError]:
    types_used = {t.type for t in pipeline.spec.tasks}
    if types_used <= {"python"}:
        return []  # no installed check applies; skip importing them (keeps `udop run` start fast)
    errors: list[SpecError] = []
    for ep in entry_points(group=GROUP):
        check = ep.load()
        for err in check(pipeline, Path(file).parent if file else Path(".")):
            errors.append(err if err.file or file is None else err.located(str(file)))
    return errors
