"""The same app as a Lambda: API Gateway REST proxy events (JSON fixtures) through the Mangum handler.

``functions/api/app.py`` is imported as Lambda would (settings from the environment at cold start)
and its ``handler`` called with the fixtures in ``tests/events/api/``.
"""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .conftest import SECRET, make_token

ROOT = Path(__file__).resolve().parents[3]
EVENTS = ROOT / "tests" / "events" / "api"
HANDLER = ROOT / "functions" / "api" / "app.py"


def load_event(fixture: str, **replace: str) -> dict[str, Any]:
    """A JSON event fixture from tests/events/api/, with ``{placeholders}`` filled in."""
    text = (EVENTS / fixture).read_text()
    for key, value in replace.items():
        text = text.replace("{" + key + "}", value)
    return json.loads(text)


@dataclass
class FakeLambdaContext:
    """The attributes Powertools and Mangum read from a Lambda context."""

    function_name: str = "udop-api"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:udop-api"
    memory_limit_in_mb: int = 512
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    log_group_name: str = "/aws/lambda/udop-api"
    log_stream_name: str = "2026/11/26/[$LATEST]abc"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


@pytest.fixture
def lambda_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tasks_module: tuple[str, ModuleType]
) -> Iterator[Callable[[dict[str, Any]], dict[str, Any]]]:
    monkeypatch.setenv("UDOP_DATABASE_URL", f"sqlite:///{tmp_path / 'meta.db'}")
    monkeypatch.setenv("UDOP_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("UDOP_JWT_SECRET", SECRET)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "udop-api")
    name = f"udop_api_lambda_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, HANDLER)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the cold start
    context = FakeLambdaContext()
    yield lambda event: module.handler(event, context)
    module.APP.state.udop.launcher.close()
    module.APP.state.udop.store.close()


def _json(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


def test_health_event(lambda_handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    response = lambda_handler(load_event("get_health.json"))
    assert response["statusCode"] == 200
    assert _json(response)["status"] == "ok"
    assert response["headers"]["content-type"] == "application/json"


def test_register_trigger_and_follow_a_run_through_api_gateway_events(
    lambda_handler: Callable[[dict[str, Any]], dict[str, Any]], tasks_module: tuple[str, ModuleType]
) -> None:
    token = make_token("operator", sub="lambda-user")
    fill = {"token": token, "pipeline": "from-lambda", "callable": f"{tasks_module[0]}:maybe_fail"}

    created = lambda_handler(load_event("post_pipeline_yaml.json", **fill))
    assert created["statusCode"] == 201, created["body"]
    assert _json(created)["version"] == 1

    detail = _json(lambda_handler(load_event("get_pipeline.json", **fill)))
    assert detail["name"] == "from-lambda"
    assert detail["versions"][0]["definition"]["spec"]["tasks"][0]["callable"] == fill["callable"]

    accepted = lambda_handler(load_event("post_run.json", **fill))
    assert accepted["statusCode"] == 202, accepted["body"]
    run_id = _json(accepted)["run_id"]

    deadline = time.monotonic() + 30
    while True:
        run = _json(lambda_handler(load_event("get_run.json", **fill, run_id=run_id)))
        if run["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert run["state"] == "succeeded", run
    assert run["params"] == {"day": "tue"}

    page = _json(lambda_handler(load_event("get_runs_filtered.json", **fill)))
    assert [r["id"] for r in page["items"]] == [run_id]


def test_refusals_through_api_gateway_events(
    lambda_handler: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    fill = {"pipeline": "p", "callable": "m:f"}
    no_token = lambda_handler(load_event("post_pipeline_no_token.json", **fill))
    assert no_token["statusCode"] == 401
    assert no_token["headers"]["www-authenticate"] == "Bearer"

    viewer = lambda_handler(load_event("post_pipeline_yaml.json", **fill, token=make_token("viewer")))
    assert viewer["statusCode"] == 403

    invalid = lambda_handler(load_event("post_pipeline_invalid.json", token=make_token("operator")))
    assert invalid["statusCode"] == 422
    paths = {e["path"] for e in _json(invalid)["errors"]}
    assert {"metadata.name", "spec.tasks"} <= paths, paths

    audit = _json(
        lambda_handler(
            load_event("get_runs_filtered.json", pipeline="p", token=make_token("admin"))
            | {
                "path": "/audit",
                "resource": "/audit",
                "queryStringParameters": None,
                "multiValueQueryStringParameters": None,
            }
        )
    )
    outcomes = [(i["status"], i["client"]) for i in audit["items"]]
    assert outcomes == [(422, "203.0.113.7"), (403, "203.0.113.7"), (401, "203.0.113.7")]


def test_the_function_refuses_to_start_runs_inside_lambda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from udop.errors import ConfigError

    monkeypatch.setenv("UDOP_DATABASE_URL", f"sqlite:///{tmp_path / 'meta.db'}")
    monkeypatch.setenv("UDOP_JWT_SECRET", SECRET)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "udop-api")  # as the Lambda runtime sets it
    spec = importlib.util.spec_from_file_location(f"udop_api_lambda_{uuid.uuid4().hex[:8]}", HANDLER)
    assert spec
    assert spec.loader
    with pytest.raises(ConfigError, match="UDOP_EXECUTOR=stepfunctions"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
