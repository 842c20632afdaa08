"""The event check the lineage tests rely on (``ol_schema.validate_event``) passes the events udop builds
and refuses a malformed one: both its halves, the client's typed model and our JSON Schema, can fail."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from ol_schema import RUN_EVENT_SCHEMA, structure_event, validate_event
from openlineage.client.serde import Serde

from udop.lineage import openlineage
from udop.tasks.contract import CheckResult, Manifest, TaskResult


def _sent(event: Any) -> dict[str, Any]:
    """The JSON the client's transports send."""
    sent: dict[str, Any] = json.loads(Serde.to_json(event))
    return sent


def _complete() -> dict[str, Any]:
    result = TaskResult(output=Manifest(uri="s3://lake/marts/totals", rows=3, bytes=100),
                        inputs=("s3://lake/orders",), columns={"doubled": [["s3://lake/orders", "amount"]]},
                        checks=(CheckResult(rule="not_null: [region]", severity="error", passed=True),))
    return _sent(openlineage.task_event("COMPLETE", "p", "r1", "totals", 1, result=result))


def _failed_run() -> dict[str, Any]:
    return _sent(openlineage.run_event("FAIL", "p", "r1", logical_date="2026-01-01T00:00:00+00:00",
                                       error="boom"))


def test_the_events_udop_builds_pass_both_checks() -> None:
    complete = _complete()
    # the event has what the malformed cases below take away
    assert complete["outputs"][0]["facets"]["columnLineage"]["fields"]["doubled"]["inputFields"]
    assert complete["inputs"][0]["inputFacets"]["dataQualityAssertions"]["assertions"]
    for event in (complete, _failed_run()):
        validate_event(event)
        assert structure_event(event).run.runId == event["run"]["runId"]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def change(event: dict[str, Any]) -> None:
        node: Any = event
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return change


MALFORMED = {
    "an unknown field on the event": (_set("surprise", 1), "model"),
    "an unknown field in a facet": (_set("outputs.0.outputFacets.outputStatistics.rows", 3), "model"),
    "a row count that is a string": (_set("outputs.0.outputFacets.outputStatistics.rowCount", "3"), "both"),
    "an assertion's success that is a string": (
        _set("inputs.0.inputFacets.dataQualityAssertions.assertions.0.success", "yes"), "both"),
    "a run id that is not a UUID": (_set("run.runId", "r1"), "both"),
    "an unknown event type": (_set("eventType", "DONE"), "both"),
    "no event time": (_set("eventTime", KeyError), "both"),
    "no job name": (_set("job.name", KeyError), "both"),
    "an output without a namespace": (_set("outputs.0.namespace", KeyError), "both"),
    "a facet without its _producer": (_set("outputs.0.facets.schema._producer", KeyError), "both"),
    "a facet whose _schemaURL names no facet": (
        _set("run.facets.parent._schemaURL", "https://example.com/x.json#/$defs/X"), "model"),
    "an input field without its column": (
        _set("outputs.0.facets.columnLineage.fields.doubled.inputFields.0.field", KeyError), "both"),
    "a parent run without its run id": (_set("run.facets.parent.run.runId", KeyError), "both"),
    "a schema field without a name": (_set("outputs.0.facets.schema.fields.0.name", KeyError), "both"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_event_is_refused(case: str) -> None:
    change, by = MALFORMED[case]
    event = copy.deepcopy(_complete())
    change(event)
    with pytest.raises(Exception):  # noqa: B017, PT011 - jsonschema, cattrs or our own check: any refusal
        validate_event(event)
    schema_refuses = not jsonschema.Draft202012Validator(RUN_EVENT_SCHEMA).is_valid(event)
    assert schema_refuses == (by in ("schema", "both")), case
    if by in ("model", "both"):
        with pytest.raises(Exception):  # noqa: B017, PT011
            structure_event(event)


def test_an_error_message_facet_needs_its_message() -> None:
    event = _failed_run()
    del event["run"]["facets"]["errorMessage"]["message"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(event, RUN_EVENT_SCHEMA, cls=jsonschema.Draft202012Validator)
    with pytest.raises(Exception):  # noqa: B017, PT011
        structure_event(event)
