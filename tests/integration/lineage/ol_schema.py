"""Check the OpenLineage events udop emits, with nothing but packages from PyPI and our own words.

Two checks, both on the JSON an event was sent as (``validate_event``):

1. ``structure_event``: the event is structured back into ``openlineage-python``'s own typed model
   (the ``openlineage.client.event_v2`` / ``facet_v2`` attrs classes the OpenLineage project generates
   from its specification) with ``cattrs``: a field the model does not have, a value of the wrong type
   or a missing required field fails, each facet must be the class its ``_schemaURL`` names (in the
   client's version of that facet), and the structured event must serialise back to the same JSON.
2. ``RUN_EVENT_SCHEMA``: a JSON Schema of our own (see its docstring) validated with ``jsonschema``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import attrs
import cattrs
import openlineage.client.generated as ol_generated
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from openlineage.client.event_v2 import RunEvent
from openlineage.client.generated.base import (
    BaseFacet,
    DatasetFacet,
    InputDatasetFacet,
    JobFacet,
    OutputDatasetFacet,
    RunFacet,
)
from openlineage.client.serde import Serde

__all__ = ["RUN_EVENT_SCHEMA", "structure_event", "validate_event"]

# ----------------------------------------------------------------------- 1. the client's typed model

_FACET_BASES: tuple[type[BaseFacet], ...] = (RunFacet, JobFacet, DatasetFacet, InputDatasetFacet,
                                              OutputDatasetFacet)


def _facet_classes() -> dict[str, type[BaseFacet]]:
    """Every facet class the client generates, by the schema URL it emits (``_schemaURL``)."""
    found: dict[str, type[BaseFacet]] = {}
    for info in pkgutil.iter_modules(ol_generated.__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{ol_generated.__name__}.{info.name}")
        for value in vars(module).values():
            if (isinstance(value, type) and attrs.has(value) and issubclass(value, BaseFacet)
                    and value not in _FACET_BASES and value.__module__ == module.__name__):
                found[value._get_schema()] = value
    return found


FACETS = _facet_classes()


def _strict(kind: type[Any]) -> Any:
    """cattrs turns 5 into "5" with ``str(5)``; a JSON value must already be of the type."""
    accepted: tuple[type[Any], ...] = (int, float) if kind is float else (kind,)

    def structure(value: Any, _: Any) -> Any:
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, accepted):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    return structure


def _pop_schema_url(data: dict[str, Any], key: str, cls: type[Any], where: str) -> dict[str, Any]:
    """``schemaURL`` / ``_schemaURL`` are set by the class, not passed to it: compare, then drop."""
    data = dict(data)
    url = data.pop(key, None)
    if url != cls._get_schema():
        raise ValueError(f"{where}: {key} {url!r} is not {cls.__name__}'s {cls._get_schema()!r}")
    return data


def _converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    for kind in (str, int, float, bool):
        converter.register_structure_hook(kind, _strict(kind))

    def structure_facet(value: Any, base: type[BaseFacet]) -> BaseFacet:
        if not isinstance(value, dict):
            raise TypeError(f"a facet is an object, got {type(value).__name__}")
        url = value.get("_schemaURL")
        cls = FACETS.get(str(url))
        if cls is None:
            raise ValueError(f"_schemaURL {url!r} names no facet class of openlineage-python")
        if not issubclass(cls, base):
            raise TypeError(f"{cls.__name__} is not a {base.__name__}")
        data = _pop_schema_url(value, "_schemaURL", cls, cls.__name__)
        structured: BaseFacet = converter.structure(data, cls)
        return structured

    converter.register_structure_hook_func(lambda t: t in _FACET_BASES, structure_facet)
    return converter


CONVERTER = _converter()


def structure_event(event: dict[str, Any]) -> RunEvent:
    """``event`` as the client's ``RunEvent``; raises when it does not fit the client's model."""
    if not isinstance(event, dict):
        raise TypeError(f"an event is an object, got {type(event).__name__}")
    structured = CONVERTER.structure(_pop_schema_url(event, "schemaURL", RunEvent, "event"), RunEvent)
    back = Serde.to_dict(structured)
    if back != event:
        raise ValueError(f"the event does not survive the client's model: sent {event!r}, "
                         f"structured and serialised again {back!r}")
    return structured


# ----------------------------------------------------------------------- 2. our own JSON Schema

_UUID = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# RFC 3339 date-time: a date, "T", a time, an offset (jsonschema checks format "date-time" only with an
# extra package installed, so the pattern says it)
_DATE_TIME = r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
_URI = r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$"
_POINTER_URI = r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s#]+#/\S+$"  # a URI whose fragment is a JSON pointer
_STR: dict[str, Any] = {"type": "string", "minLength": 1}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _facet(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"allOf": [{"$ref": "#/$defs/facet"}, _obj(required, **properties)]}


def _facets(**named: Any) -> dict[str, Any]:
    """A facets object: the facets named here have their own schema, any other is at least a facet."""
    return {"type": "object", "properties": named, "additionalProperties": {"$ref": "#/$defs/facet"}}


_JOB_REF = _obj(["namespace", "name"], namespace=_STR, name=_STR)
_RUN_REF = _obj(["runId"], runId={"type": "string", "pattern": _UUID})
_ASSERTIONS = _facet(["assertions"], assertions={"type": "array", "items": _obj(
    ["assertion", "success"], assertion=_STR, success={"type": "boolean"}, column={"type": "string"},
    severity={"type": "string"})})


def _run_event_schema() -> dict[str, Any]:
    """A JSON Schema of the OpenLineage ``RunEvent`` udop emits, written by us from the public
    documentation of the OpenLineage 2-0-2 specification (https://openlineage.io/spec/) and its facet
    pages; it is not the specification's own file. It checks the subset udop emits: the event's required
    fields (``eventTime``, ``producer``, ``schemaURL``, ``eventType`` and its values, ``run.runId`` a
    UUID, ``job`` namespace and name), each input's and output's namespace and name, every facet's
    ``_producer`` and ``_schemaURL``, and the fields udop uses of the facets it sends: ``parent`` (run
    and job, and the root), ``errorMessage``, ``processing_engine``, ``nominalTime``, ``jobType``,
    ``schema`` (field name and type), ``columnLineage`` (fields -> inputFields namespace/name/field),
    ``outputStatistics`` (rowCount, size, fileCount) and ``dataQualityAssertions`` (assertion, success,
    column). Fields it does not name are allowed, as in the specification; the client's model
    (``structure_event``) is the check that refuses them."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "udop's OpenLineage RunEvent",
        **_obj(["eventTime", "producer", "schemaURL", "eventType", "run", "job"],
               eventTime={"type": "string", "pattern": _DATE_TIME},
               producer={"type": "string", "pattern": _URI},
               schemaURL={"type": "string", "pattern": _URI},
               eventType={"enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]},
               run=_obj(["runId"], runId={"type": "string", "pattern": _UUID}, facets=_facets(
                   parent=_facet(["run", "job"], run=_RUN_REF, job=_JOB_REF,
                                 root=_obj(["run", "job"], run=_RUN_REF, job=_JOB_REF)),
                   errorMessage=_facet(["message", "programmingLanguage"], message={"type": "string"},
                                       programmingLanguage=_STR, stackTrace={"type": "string"}),
                   processing_engine=_facet(["version", "name"], version=_STR, name=_STR),
                   nominalTime=_facet(["nominalStartTime"],
                                      nominalStartTime={"type": "string", "pattern": _DATE_TIME}))),
               job=_obj(["namespace", "name"], namespace=_STR, name=_STR, facets=_facets(
                   jobType=_facet(["processingType", "integration", "jobType"],
                                  processingType={"enum": ["BATCH", "STREAMING"]}, integration=_STR,
                                  jobType=_STR))),
               inputs={"type": "array", "items": {"allOf": [{"$ref": "#/$defs/dataset"}, {"properties": {
                   "inputFacets": _facets(dataQualityAssertions=_ASSERTIONS)}}]}},
               outputs={"type": "array", "items": {"allOf": [{"$ref": "#/$defs/dataset"}, {"properties": {
                   "outputFacets": _facets(outputStatistics=_facet(
                       [], rowCount={"type": "integer", "minimum": 0}, size={"type": "integer", "minimum": 0},
                       fileCount={"type": "integer", "minimum": 0}))}}]}}),
        "$defs": {
            # every facet says who made it and which schema (a JSON pointer into it) describes it
            "facet": _obj(["_producer", "_schemaURL"], _producer={"type": "string", "pattern": _URI},
                          _schemaURL={"type": "string", "pattern": _POINTER_URI}),
            "dataset": _obj(["namespace", "name"], namespace=_STR, name=_STR, facets=_facets(
                schema=_facet(["fields"], fields={"type": "array", "items": _obj(
                    ["name"], name=_STR, type={"type": "string"}, description={"type": "string"})}),
                columnLineage=_facet(["fields"], fields={"type": "object", "additionalProperties": _obj(
                    ["inputFields"], inputFields={"type": "array", "items": _obj(
                        ["namespace", "name", "field"], namespace=_STR, name=_STR, field=_STR,
                        transformations={"type": "array", "items": _obj(["type"], type=_STR,
                                                                         subtype={"type": "string"})})})}),
                dataQualityAssertions=_ASSERTIONS)),
        },
    }


RUN_EVENT_SCHEMA = _run_event_schema()
_VALIDATOR = Draft202012Validator(RUN_EVENT_SCHEMA)


def validate_event(event: dict[str, Any]) -> None:
    """Raise unless ``event`` fits both the client's typed model and ``RUN_EVENT_SCHEMA``."""
    _VALIDATOR.validate(event)
    try:
        structure_event(event)
    except cattrs.BaseValidationError as exc:  # one line a problem, with where it is in the event
        raise AssertionError("the event does not fit openlineage-python's model:\n  "
                             + "\n  ".join(cattrs.transform_error(exc))) from exc
