"""The API Lambda (Mangum behind API Gateway) where it differs from ``udop serve``: the client is the
event's ``sourceIp``, a body arrives whole in the event (no streaming, maybe no Content-Length), and
the app runs without its lifespan."""

from __future__ import annotations

import copy
import importlib.util
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

ROOT = Path(__file__).resolve().parents[3]
HANDLER = ROOT / "functions" / "api" / "app.py"
EVENT = json.loads((ROOT / "tests" / "events" / "api" / "post_pipeline_no_token.json").read_text())


class _Context:
    function_name = "udop-api"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:udop-api"
    memory_limit_in_mb = 512
    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    log_group_name = "/aws/lambda/udop-api"
    log_stream_name = "2026/11/30/[$LATEST]abc"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def _event(
    method: str, path: str, *, ip: str, body: str | None = None, token: str | None = None
) -> dict[str, Any]:
    event = copy.deepcopy(EVENT)
    event["httpMethod"] = event["requestContext"]["httpMethod"] = method
    event["path"] = event["resource"] = path
    event["requestContext"]["identity"]["sourceIp"] = ip
    event["body"] = body
    for headers in (event["headers"], event["multiValueHeaders"]):
        headers.pop("X-Forwarded-For", None)
    if token:
        event["headers"]["Authorization"] = f"Bearer {token}"
        event["multiValueHeaders"]["Authorization"] = [f"Bearer {token}"]
    return event


@pytest.fixture
def handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helpers: Any) -> Iterator[Callable[..., Any]]:
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    monkeypatch.setenv("UDOP_DATABASE_URL", url)
    monkeypatch.setenv("UDOP_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("UDOP_JWT_SECRET", helpers.SECRET)
    monkeypatch.setenv("UDOP_JWT_ISSUER", helpers.ISSUER)
    monkeypatch.setenv("UDOP_JWT_AUDIENCE", helpers.AUDIENCE)
    monkeypatch.setenv("UDOP_AUTH_FAILURE_LIMIT", "3")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "udop-api")
    spec = importlib.util.spec_from_file_location(f"udop_api_sec_{uuid.uuid4().hex[:8]}", HANDLER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the cold start
    engine = create_engine(url)

    def call(event: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = module.handler(event, _Context())
        return answer

    call.audit = lambda: _audit(engine)  # type: ignore[attr-defined]
    yield call
    engine.dispose()
    module.APP.state.udop.launcher.close()
    module.APP.state.udop.store.close()


def _audit(engine: Any) -> list[dict[str, Any]]:
    from udop.api.audit import audit_log_table as t

    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(t).order_by(t.c.id)).mappings()]


def test_failed_authentication_is_limited_per_source_ip(handler: Callable[..., Any], helpers: Any) -> None:
    forged = helpers.token("admin", secret="q" * 40)
    for _ in range(3):
        assert handler(_event("GET", "/me", ip="198.51.100.9", token=forged))["statusCode"] == 401
    blocked = handler(_event("GET", "/me", ip="198.51.100.9", token=helpers.token("viewer")))
    assert blocked["statusCode"] == 429
    assert int(blocked["headers"]["retry-after"]) > 0
    other = handler(_event("GET", "/me", ip="198.51.100.10", token=helpers.token("viewer")))
    assert other["statusCode"] == 200
    rows = handler.audit()  # type: ignore[attr-defined]
    assert [(r["status"], r["client"]) for r in rows] == [(401, "198.51.100.9")] * 3 + [(429, "198.51.100.9")]


def test_a_whole_body_over_the_limit_in_the_event_is_413(handler: Callable[..., Any], helpers: Any) -> None:
    body = "#" * (10 * 1024 * 1024 + 1)  # API Gateway's own cap is 10 MB; Mangum sends no Content-Length
    answer = handler(
        _event("POST", "/pipelines", ip="198.51.100.20", body=body, token=helpers.token("operator"))
    )
    assert answer["statusCode"] == 413
    assert "at most 10485760 bytes" in json.loads(answer["body"])["detail"]
    unauthenticated = handler(_event("POST", "/pipelines", ip="198.51.100.21", body="x: 1"))
    assert unauthenticated["statusCode"] == 401
    rows = handler.audit()  # type: ignore[attr-defined]
    assert [(r["status"], r["path"]) for r in rows] == [(413, "/pipelines"), (401, "/pipelines")]


def test_nul_in_the_path_is_400_and_audited(handler: Callable[..., Any], helpers: Any) -> None:
    answer = handler(_event("GET", "/pipelines/a\x00b", ip="198.51.100.30", token=helpers.token("viewer")))
    assert answer["statusCode"] == 400
    rows = handler.audit()  # type: ignore[attr-defined]
    assert [(r["status"], r["path"]) for r in rows] == [(400, "/pipelines/a\\x00b")]


def test_a_deep_definition_through_the_lambda_is_a_422(handler: Callable[..., Any], helpers: Any) -> None:
    body = (
        "apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: d}\nspec:\n  tasks: " + "[" * 600 + "]" * 600
    )
    answer = handler(
        _event("POST", "/pipelines", ip="198.51.100.40", body=body, token=helpers.token("operator"))
    )
    assert answer["statusCode"] == 422
    assert "nested more than 100 levels" in json.loads(answer["body"])["detail"]
