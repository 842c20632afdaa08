"""Load a pipeline definition (YAML or JSON) into a checked ``Pipeline``.

Every problem becomes a ``SpecError`` located by file, line and path
(``pipeline.yaml:12: spec.tasks[2].depends_on[0]: unknown task 'x'``); the user never sees a
traceback. Loading does, in order: read (size, encoding), parse (YAML with duplicate-key and
alias-bomb protection, or JSON), validate against the frozen models, check the DAG and the
``${...}`` references, and optionally import ``python`` tasks' callables.
"""

from __future__ import annotations

import difflib
import json
import re
import time
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from udop.errors import SpecError, SpecErrors
from udop.spec.dag import check_dag
from udop.spec.location import PathKey, format_path
from udop.spec.models import API_VERSION, TASK_TYPES, Pipeline
from udop.spec.params import check_references

__all__ = ["MAX_DEFINITION_BYTES", "LoadedDefinition", "load_pipeline", "parse_definition", "unstorable_text"]

#: a definition larger than this is certainly a mistake (the largest real ones are a few hundred KB)
MAX_DEFINITION_BYTES = 10 * 1024 * 1024
#: YAML/JSON nodes in a document, counted while it is parsed and again while aliases are expanded; a
#: hostile upload (millions of list items, a "billion laughs" alias bomb) stops here, not at memory's end
MAX_NODES = 200_000
#: nesting of mappings and lists; real definitions stay under ten, and Python's parsers recurse per level
MAX_DEPTH = 100


@dataclass
class LoadedDefinition:
    """The raw document and where each of its parts starts (1-based line numbers)."""

    data: Any
    filename: str
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line_of(self, path: PathKey) -> int | None:
        for end in range(len(path), -1, -1):
            if (line := self.lines.get(path[:end])) is not None:
                return line
        return None

    def error(self, path: PathKey, message: str) -> SpecError:
        return SpecError(message, file=self.filename, path=format_path(path) or None, line=self.line_of(path))


# --------------------------------------------------------------------------- reading and parsing


def _read(source: str | Path) -> bytes:
    path = Path(source)
    try:
        size = path.stat().st_size
        if size > MAX_DEFINITION_BYTES:
            raise SpecError(
                f"file is {size} bytes; a definition may have at most {MAX_DEFINITION_BYTES}",
                file=str(source),
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise SpecError("no such file", file=str(source)) from None
    except IsADirectoryError:
        raise SpecError("is a directory, not a definition file", file=str(source)) from None
    except PermissionError:
        raise SpecError("permission denied", file=str(source)) from None


def _decode(raw: bytes | str, filename: str) -> str:
    if isinstance(raw, str):
        text = raw
    else:
        if b"\x00" in raw:
            raise SpecError("not a text file (it contains NUL bytes); expected YAML or JSON", file=filename)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise SpecError(
                f"not UTF-8 text (invalid byte at offset {exc.start}); expected YAML or JSON", file=filename
            ) from None
    if not text.strip():
        raise SpecError("file is empty; expected a udop/v1 Pipeline definition", file=filename)
    return text


class _Budget:
    """A parse's time limit: checked every few thousand nodes, so a slow document stops on time."""

    def __init__(self, filename: str, seconds: float | None) -> None:
        self.filename = filename
        self.seconds = seconds
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def check(self, line: int | None = None) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise SpecError(
                f"parsing took longer than {self.seconds:g} s; the definition is too large or too complex",
                file=self.filename,
                line=line,
            )


#: libyaml when installed (it is a wheel dependency of PyYAML on every platform udop ships to): the pure
#: Python scanner spends ~70 us per value, which a 10 MB upload turns into a minute
_YAML_LOADER: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _check_events(text: str, budget: _Budget) -> None:
    """Depth, node count and time limits, enforced on the parser's event stream before anything is built.

    Events arrive one at a time, so a 2-million-item list stops at the limit instead of becoming a
    node tree first, and a 500-deep nesting stops before the (recursive) composer sees it.
    """
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_YAML_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            nodes += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            continue
        elif isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
            nodes += 1
        else:
            continue
        if depth > MAX_DEPTH or nodes > MAX_NODES or nodes % 4096 == 0:
            line = event.start_mark.line + 1 if event.start_mark is not None else None
            if depth > MAX_DEPTH:
                raise SpecError(
                    f"nested more than {MAX_DEPTH} levels deep; a definition does not need this",
                    file=budget.filename,
                    line=line,
                )
            if nodes > MAX_NODES:
                raise SpecError(
                    f"the document has more than {MAX_NODES} values; a definition does not need this",
                    file=budget.filename,
                    line=line,
                )
            budget.check(line)


class _Builder:
    """Builds Python objects from a composed YAML node tree, recording each node's line."""

    def __init__(self, filename: str, budget: _Budget | None = None) -> None:
        self.filename = filename
        self.budget = budget or _Budget(filename, None)
        self.lines: dict[PathKey, int] = {}
        self.visited = 0
        self.constructor = yaml.SafeLoader("")  # used only for its scalar constructors

    def build(self, node: yaml.Node, path: PathKey = ()) -> Any:
        self.visited += 1
        if self.visited % 4096 == 0:
            self.budget.check(node.start_mark.line + 1)
        if len(path) > MAX_DEPTH:  # aliases can nest what the composer saw shallow
            raise SpecError(
                f"nested more than {MAX_DEPTH} levels deep (through aliases)",
                file=self.filename,
                line=node.start_mark.line + 1,
            )
        if self.visited > MAX_NODES:
            raise SpecError(
                f"document expands to more than {MAX_NODES} nodes "
                "(a YAML alias bomb?); write the definition out without deep aliases",
                file=self.filename,
                line=node.start_mark.line + 1,
            )
        if path not in self.lines:
            self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            self.constructor.flatten_mapping(node)  # resolves '<<' merge keys
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.build(key_node, path)
                if isinstance(key, list | dict):
                    raise SpecError(
                        "a mapping key must be a plain value",
                        file=self.filename,
                        path=format_path(path) or None,
                        line=key_node.start_mark.line + 1,
                    )
                if key in out:
                    raise SpecError(
                        f"duplicate key {key!r}",
                        file=self.filename,
                        path=format_path(path) or None,
                        line=key_node.start_mark.line + 1,
                    )
                out[key] = self.build(value_node, (*path, str(key)))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.constructor.construct_object(node, deep=True)


def _parse_yaml(text: str, filename: str, budget: _Budget) -> LoadedDefinition:
    try:
        _check_events(text, budget)
        nodes = list(yaml.compose_all(text, Loader=_YAML_LOADER))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise SpecError(
            f"malformed YAML: {problem}", file=filename, line=mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"malformed YAML: {exc}", file=filename) from None
    found = [n for n in nodes if n is not None]
    if not found:
        raise SpecError("file is empty; expected a udop/v1 Pipeline definition", file=filename)
    if len(found) > 1:
        raise SpecError(
            "the file holds several YAML documents; put one pipeline per file",
            file=filename,
            line=found[1].start_mark.line + 1,
        )
    builder = _Builder(filename, budget)
    try:
        data = builder.build(found[0])
    except yaml.YAMLError as exc:
        raise SpecError(f"malformed YAML: {exc}", file=filename) from None
    return LoadedDefinition(data, filename, builder.lines)


def _parse_json(text: str, filename: str, budget: _Budget) -> LoadedDefinition:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise SpecError(f"duplicate key {key!r}", file=filename)
            out[key] = value
        return out

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"malformed JSON: {exc.msg} (column {exc.colno})", file=filename, line=exc.lineno
        ) from None
    except RecursionError:
        raise SpecError(f"nested more than {MAX_DEPTH} levels deep", file=filename) from None
    _check_shape(data, budget)
    return LoadedDefinition(data, filename, {})


_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def unstorable_text(data: Any) -> str | None:
    """The path of the first key or string in ``data`` that no metadata database can store (it holds
    NUL or a lone surrogate: YAML and JSON escapes can write both), or None when there is none."""
    path = _unstorable_path(data)
    return None if path is None else format_path(path)


def _unstorable_path(data: Any) -> PathKey | None:
    stack: list[tuple[Any, PathKey]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if _UNSTORABLE.search(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and _UNSTORABLE.search(key):
                    return path
                stack.append((item, (*path, str(key))))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))
    return None


def _check_shape(data: Any, budget: _Budget) -> None:
    """The depth and node limits for JSON, which the C parser builds whole (quickly) before we see it."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise SpecError(f"nested more than {MAX_DEPTH} levels deep", file=budget.filename)
        if nodes > MAX_NODES:
            raise SpecError(
                f"the document has more than {MAX_NODES} values; a definition does not need this",
                file=budget.filename,
            )
        if nodes % 4096 == 0:
            budget.check()
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def parse_definition(
    text: str | bytes, filename: str = "<definition>", *, time_budget: float | None = None
) -> LoadedDefinition:
    """Parse YAML or JSON text (JSON when the file name ends in .json or the text starts with '{').

    Depth, node count and ``time_budget`` (seconds, none by default) are enforced while parsing.
    """
    decoded = _decode(text, filename)
    budget = _Budget(filename, time_budget)
    if filename.endswith(".json") or decoded.lstrip().startswith("{"):
        loaded = _parse_json(decoded, filename, budget)
    else:
        loaded = _parse_yaml(decoded, filename, budget)
    if (where := _unstorable_path(loaded.data)) is not None:
        raise loaded.error(where, "holds a NUL or a lone surrogate (a \\0 or \\ud800 escape); remove it")
    if not isinstance(loaded.data, dict):
        kind = type(loaded.data).__name__ if loaded.data is not None else "null"
        raise SpecError(
            f"the document is a {kind}, not a mapping; expected "
            f"'apiVersion: {API_VERSION}' and 'kind: Pipeline' at the top",
            file=filename,
            line=1,
        )
    return loaded


# --------------------------------------------------------------------------- validation errors


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation may hold (Optional/Union/Annotated peeled)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Walk pydantic's raw error location from ``Pipeline`` to the model that holds its last key."""
    current: list[Any] = [Pipeline]
    for part in loc:
        following: list[Any] = []
        for tp in current:
            origin = typing.get_origin(tp)
            if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
                fields = {f.alias or n: f for n, f in tp.model_fields.items()}
                if part in fields:
                    following += _unwrap(fields[part].annotation)
            elif origin in (list, tuple) and isinstance(part, int):
                following += _unwrap(typing.get_args(tp)[0])
            elif origin is dict and isinstance(part, str):
                following += _unwrap(typing.get_args(tp)[1])
        # a discriminated union puts the tag in the location: keep the member it names
        tagged = [
            t
            for t in current
            if isinstance(t, type)
            and issubclass(t, BaseModel)
            and "type" in t.model_fields
            and part in typing.get_args(t.model_fields["type"].annotation)
        ]
        current = following or tagged
        if not current:
            return None
    models = [t for t in current if isinstance(t, type) and issubclass(t, BaseModel)]
    return models[0] if len(models) == 1 else None


def _clean_loc(loc: tuple[Any, ...]) -> PathKey:
    """Drop the parts pydantic adds that are not in the document (union tags, validator names)."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if isinstance(part, str) and ("[" in part or "(" in part):
            continue
        if (
            isinstance(part, str)
            and i > 0
            and isinstance(loc[i - 1], int)
            and part in TASK_TYPES
            and i >= 2
            and loc[i - 2] == "tasks"
        ):
            continue
        out.append(part)
    return tuple(out)


def _close(word: str, options: list[str]) -> str:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _message(err: Any) -> str:
    kind, loc = err["type"], err["loc"]
    if kind == "extra_forbidden":
        model = _model_at(tuple(loc[:-1]))
        allowed = sorted(f.alias or n for n, f in model.model_fields.items()) if model else []
        return f"unknown key {loc[-1]!r}{_close(str(loc[-1]), allowed)}"
    if kind == "missing":
        return f"missing required key {loc[-1]!r}" if loc else "missing required key"
    if kind == "union_tag_invalid":
        tag = err["ctx"]["tag"]
        return (
            f"unknown task type {tag!r}{_close(str(tag), list(TASK_TYPES))} (known: {', '.join(TASK_TYPES)})"
        )
    if kind == "union_tag_not_found":
        return f"missing 'type' (one of: {', '.join(TASK_TYPES)})"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return msg[0].lower() + msg[1:] if msg else kind


def _validation_errors(exc: ValidationError, loaded: LoadedDefinition) -> Iterator[SpecError]:
    seen = set()
    for err in exc.errors(include_url=False):
        path = _clean_loc(tuple(err["loc"]))
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path = (*path, "type")
        message = _message(err)
        if err["type"] == "missing":
            path = path[:-1] if path else path
        if (path, message) in seen:
            continue
        seen.add((path, message))
        yield loaded.error(path, message)


# --------------------------------------------------------------------------- the entry point


def validate_definition(loaded: LoadedDefinition) -> Pipeline:
    """Validate a parsed document: models, DAG, references. Raises ``SpecErrors``."""
    data = loaded.data
    api = data.get("apiVersion")
    if api != API_VERSION:
        found = "missing" if api is None else f"{api!r}"
        raise SpecErrors([loaded.error(("apiVersion",), f"expected {API_VERSION!r}, found {found}")])
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        raise SpecErrors(list(_validation_errors(exc, loaded))) from None
    errors = check_dag(pipeline, loaded)
    errors += check_references(pipeline, loaded)
    SpecErrors.collect(errors)
    return pipeline


def load_pipeline(
    source: str | Path | bytes,
    *,
    filename: str | None = None,
    import_callables: bool = False,
    base_dir: str | Path | None = None,
    plugin_checks: bool = False,
    time_budget: float | None = None,
) -> Pipeline:
    """Load and check a definition.

    ``source`` is a path, or the text itself when ``filename`` is given. With ``import_callables``
    each ``python`` task's callable is imported (from ``base_dir``, default the file's folder), so a
    typo fails before anything runs. With ``plugin_checks`` the installed task types check their own
    fields too (e.g. the SQL of transform steps; entry point group ``udop.validators``).
    ``time_budget`` bounds the parse in seconds (the API sets it: an upload is hostile input).
    """
    try:
        if filename is None:
            filename = str(source)
            raw: str | bytes = _read(source)  # type: ignore[arg-type]
            base_dir = base_dir or Path(source).parent  # type: ignore[arg-type]
        else:
            raw = source  # type: ignore[assignment]
        loaded = parse_definition(raw, filename, time_budget=time_budget)
    except SpecError as exc:
        raise SpecErrors([exc]) from None
    pipeline = validate_definition(loaded)
    if import_callables:
        from udop.tasks.python import check_callables

        SpecErrors.collect(check_callables(pipeline, loaded, base_dir or "."))
    if plugin_checks:
        from udop.spec.checks import run_plugin_checks

        SpecErrors.collect(run_plugin_checks(pipeline, filename, loaded))
    return pipeline
