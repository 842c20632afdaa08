"""Validate OpenLineage events against the specification's JSON schemas (vendored in tests/support: see
``openlineage_spec/NOTE.md``): the event against ``RunEvent``, each facet against its own schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SPEC = Path(__file__).resolve().parents[2] / "support" / "openlineage_spec"


def _registry() -> Registry[Any]:
    resources = []
    for path in [SPEC / "OpenLineage.json", *sorted((SPEC / "facets").glob("*.json"))]:
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


REGISTRY = _registry()
EVENT_ID = json.loads((SPEC / "OpenLineage.json").read_text())["$id"]


def _check(instance: Any, ref: str) -> None:
    Draft202012Validator({"$ref": ref}, registry=REGISTRY).validate(instance)


def _facets(event: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = list(event["run"].get("facets", {}).items()) + list(event["job"].get("facets", {}).items())
    for ds in event.get("inputs", []) + event.get("outputs", []):
        for key in ("facets", "inputFacets", "outputFacets"):
            found += list(ds.get(key, {}).items())
    return found


def validate_event(event: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``event`` and all its facets are valid."""
    _check(event, f"{EVENT_ID}#/$defs/RunEvent")
    for name, facet in _facets(event):
        url = facet["_schemaURL"]
        base, _, pointer = url.partition("#")
        assert REGISTRY.get(base) is not None, f"facet {name!r}: no vendored schema for {url}"
        _check(facet, f"{base}#{pointer}")
