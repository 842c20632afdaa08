"""Find connectors: entry point group ``udop.connectors`` (built-in and third-party alike), plus
classes registered at run time with ``register_connector``."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from udop import sandbox
from udop.connectors.base import Connector
from udop.connectors.secrets import mask_text
from udop.errors import ConfigError
from udop.state.api import StateStore

__all__ = [
    "ENTRY_POINT_GROUP",
    "available_connectors",
    "connector_class",
    "get_connector",
    "register_connector",
]

ENTRY_POINT_GROUP = "udop.connectors"
_registered: dict[str, type[Connector]] = {}
#: keys of a source/target mapping that are not connector settings
_ROUTING_KEYS = ("connector", "connection")


def register_connector(cls: type[Connector], name: str | None = None) -> type[Connector]:
    _registered[name or cls.name] = cls
    return cls


@cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_connectors() -> list[str]:
    return sorted(set(_entry_points()) | set(_registered))


def connector_class(name: str) -> type[Connector]:
    if name in _registered:
        return _registered[name]
    ep = _entry_points().get(name)
    if ep is None:
        _entry_points.cache_clear()  # a package may have been installed since the first look
        ep = _entry_points().get(name)
    if ep is None:
        raise ConfigError(
            f"unknown connector {name!r}; installed: {', '.join(available_connectors())} "
            f"(third-party connectors register in entry point group {ENTRY_POINT_GROUP!r})"
        )
    try:
        cls = ep.load()
    except ImportError as exc:
        raise ConfigError(
            f"connector {name!r} cannot be loaded ({exc}); is its extra installed, "
            f"e.g. pip install 'udop[{name}]'?"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise ConfigError(f"connector {name!r}: entry point {ep.value} is not a udop Connector class")
    return cls


def as_dict(value: Any) -> dict[str, Any]:
    """A source/target/connection as a plain mapping. A pydantic model (the spec's ``SourceSpec``,
    ``TargetSpec``, ``ConnectionSpec``) gives only what was written, so defaults meant for other
    connectors (file options, ``mode``) do not leak into this connector's settings."""
    if hasattr(value, "model_dump"):
        return dict(value.model_dump(exclude_unset=True))
    return dict(value)


def get_connector(
    spec_or_name: str | Mapping[str, Any],
    *,
    connections: Mapping[str, Any] | None = None,
    state: StateStore | None = None,
    base_dir: str | None = None,
) -> Connector:
    """Build a connector from a source/target mapping (or a connection or connector name).

    ``{connector: postgres, connection: warehouse, table: t, ...}``: the named connection's settings
    (from ``spec.connections``) are merged under the mapping's own options and validated by the
    connector's ``Settings``.
    """
    connections = connections or {}
    if isinstance(spec_or_name, str):
        spec: dict[str, Any] = (
            {"connection": spec_or_name} if spec_or_name in connections else {"connector": spec_or_name}
        )
    else:
        spec = as_dict(spec_or_name)
    connection = spec.get("connection")
    settings: dict[str, Any] = {}
    connector = spec.get("connector")
    if connection is not None:
        if connection not in connections:
            known = ", ".join(sorted(connections)) or "none defined"
            raise ConfigError(f"unknown connection {connection!r} (spec.connections: {known})")
        base = as_dict(connections[connection])
        named = base.pop("connector", None)
        if connector is not None and named is not None and connector != named:
            raise ConfigError(
                f"connection {connection!r} is a {named!r} connection, "
                f"but the task asks for connector {connector!r}"
            )
        connector = connector or named
        settings.update(base)
    if not connector:
        raise ConfigError("a source or target needs 'connector' (or a 'connection' that names one)")
    settings.update({k: v for k, v in spec.items() if k not in _ROUTING_KEYS})
    cls = connector_class(connector)
    if base_dir:
        # relative local paths are relative to the pipeline definition's folder, as for file sources
        for option in cls.path_options:
            value = settings.get(option)
            if isinstance(value, str) and value and "://" not in value and value != ":memory:":
                settings[option] = str(Path(base_dir) / Path(value).expanduser())
    where = f"connection {connection!r} ({connector})" if connection else f"connector {connector!r}"
    policy = sandbox.current()
    for option in cls.path_options:
        value = settings.get(option)
        # local files only: remote URIs go through the connector's own credentials
        if isinstance(value, str) and value and "://" not in value and value != ":memory:":
            policy.confine(value, what=f"{where}: {option}")
    try:
        parsed = cls.Settings.model_validate(settings)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(settings)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(mask_text(f"{where}: {problems}")) from None
    return cls(parsed, connection=connection, state=state)
