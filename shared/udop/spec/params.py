"""Parameters and ``${...}`` references.

Namespaces: ``params`` (declared in ``spec.params``), ``run`` (``id``, ``logical_date``,
``logical_ts``, ``attempt``, ``pipeline``, ``task``) and ``env`` (environment variables).
``$${`` writes a literal ``${``. A string that is exactly one reference takes the referenced value
with its type (an ``int`` param stays an int); elsewhere values are formatted into the text.
SQL text is never rendered here: the transform engine binds parameters instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from udop.errors import SpecError, SpecErrors

if TYPE_CHECKING:
    from udop.spec.loader import LoadedDefinition
    from udop.spec.models import ParamSpec, Pipeline

__all__ = [
    "REFERENCE",
    "RUN_FIELDS",
    "check_env",
    "check_references",
    "coerce_param",
    "find_references",
    "jsonable_params",
    "render",
    "resolve_params",
]

REFERENCE = re.compile(r"(?<!\$)\$\{\s*([A-Za-z_]\w*)\.([A-Za-z_][\w.-]*)\s*\}")
RUN_FIELDS = ("id", "logical_date", "logical_ts", "attempt", "pipeline", "task")
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def find_references(
    value: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
    """Yield ``(path, namespace, name)`` for every ``${ns.name}`` in strings inside ``value``."""
    if isinstance(value, str):
        for m in REFERENCE.finditer(value):
            yield path, m.group(1), m.group(2)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from find_references(v, (*path, str(k)))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from find_references(v, (*path, i))


def check_references(pipeline: Pipeline, loaded: LoadedDefinition | None = None) -> list[SpecError]:
    """Unknown namespaces, undeclared params and unknown run fields, located in the tasks."""
    from udop.spec.location import format_path

    errors = []
    declared = pipeline.spec.params
    for i, task in enumerate(pipeline.spec.tasks):
        raw = task.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        for path, ns, name in find_references(raw, ("spec", "tasks", i)):
            message = None
            if ns == "params" and name not in declared:
                import difflib

                close = difflib.get_close_matches(name, list(declared), n=1)
                message = f"unknown parameter 'params.{name}'" + (
                    f"; did you mean 'params.{close[0]}'?" if close else "; declare it under spec.params"
                )
            elif ns == "run" and name not in RUN_FIELDS:
                message = f"unknown run field 'run.{name}' (known: {', '.join(RUN_FIELDS)})"
            elif ns not in ("params", "run", "env"):
                message = f"unknown reference namespace {ns!r} in '${{{ns}.{name}}}' (use params, run or env)"
            if message:
                errors.append(
                    loaded.error(path, message) if loaded else SpecError(message, path=format_path(path))
                )
    return errors


def coerce_param(name: str, spec: ParamSpec, value: Any) -> Any:
    """Convert a given or default value to the declared type; a bad one is a ``SpecError``."""
    kind = spec.type
    try:
        if kind == "str":
            return str(value)
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        if kind == "date":
            return (
                value
                if isinstance(value, date) and not isinstance(value, datetime)
                else date.fromisoformat(str(value))
            )
        if kind == "datetime":
            return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        pass
    raise SpecError(f"parameter {name!r}: {value!r} is not a valid {kind}", path=f"spec.params.{name}")


def resolve_params(pipeline: Pipeline, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Typed parameter values: the given ones (e.g. ``--param k=v`` strings) over the defaults.

    Raises ``SpecErrors`` for an unknown name, a value of the wrong type, or a required parameter
    with no value — before anything runs.
    """
    given = dict(given or {})
    declared = pipeline.spec.params
    errors: list[SpecError] = []
    for name in given:
        if name not in declared:
            import difflib

            close = difflib.get_close_matches(name, list(declared), n=1)
            errors.append(
                SpecError(
                    f"unknown parameter {name!r}"
                    + (
                        f"; did you mean {close[0]!r}?"
                        if close
                        else f" (declared: {', '.join(declared) or 'none'})"
                    )
                )
            )
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in given:
            raw = given[name]
        elif spec.default is not None:
            raw = spec.default
        elif spec.is_required:
            errors.append(
                SpecError(
                    f"parameter {name!r} has no default and no value; give it with --param {name}=VALUE",
                    path=f"spec.params.{name}",
                )
            )
            continue
        else:
            values[name] = None
            continue
        try:
            values[name] = coerce_param(name, spec, raw)
        except SpecError as exc:
            errors.append(exc)
    SpecErrors.collect(errors)
    return values


def check_env(pipeline: Pipeline, environ: Mapping[str, str] | None = None) -> list[SpecError]:
    """Every ``${env.X}`` used by a task whose variable is not set."""
    from udop.spec.location import format_path

    environ = os.environ if environ is None else environ
    errors = []
    for i, task in enumerate(pipeline.spec.tasks):
        raw = task.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        for path, ns, name in find_references(raw, ("spec", "tasks", i)):
            if ns == "env" and name not in environ:
                errors.append(SpecError(f"environment variable {name!r} is not set", path=format_path(path)))
    return errors


def _format(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def render(value: Any, scope: Mapping[str, Mapping[str, Any]]) -> Any:
    """Replace references in strings (recursively through lists and dicts)."""
    if isinstance(value, str):
        whole = REFERENCE.fullmatch(value.strip())
        if whole and value.strip() == value:
            return _lookup(scope, whole.group(1), whole.group(2))
        rendered = REFERENCE.sub(lambda m: _format(_lookup(scope, m.group(1), m.group(2))), value)
        return rendered.replace("$${", "${")
    if isinstance(value, Mapping):
        return {k: render(v, scope) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render(v, scope) for v in value]
    return value


def _lookup(scope: Mapping[str, Mapping[str, Any]], ns: str, name: str) -> Any:
    try:
        return scope[ns][name]
    except KeyError:
        raise SpecError(f"'${{{ns}.{name}}}' has no value") from None


def jsonable_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """Resolved parameters as stored with a run: dates and datetimes as ISO text."""
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in values.items()}
