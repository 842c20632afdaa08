"""What the per-request shortcuts of ``GET /runs`` and ``GET /runs/{id}`` must not change.

Verified credentials are remembered (``auth_cache_seconds``), yet a revoked API key stops working
within that delay (at once when revoked through the server), and a remembered token never outlives its
``exp``. The pre-serialised answers are byte for byte what the declared response models give.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from udop.api.keys import ApiKeys
from udop.api.schemas import RunDetail, RunPage, RunSummary

from .conftest import Api, bearer, make_token


def _new_key(api: Api, role: str = "viewer") -> tuple[str, str]:
    created = api.client("admin").post("/api-keys", json={"name": "svc", "role": role})
    assert created.status_code == 201
    body = created.json()
    return body["id"], body["key"]


def test_a_key_revoked_elsewhere_stops_working_within_the_cache_delay(
    api_factory: Callable[..., Api],
) -> None:
    api = api_factory(auth_cache_seconds=0.5)
    key_id, key = _new_key(api)
    with httpx.Client(base_url=api.url, headers={"X-API-Key": key}) as svc:
        assert svc.get("/runs").status_code == 200  # verified, and now remembered
        # revoked as the CLI or another API instance does it: straight in the database
        assert ApiKeys(api.engine).revoke(key_id)
        time.sleep(0.7)
        refused = svc.get("/runs")
        assert refused.status_code == 401
        assert "revoked" in refused.json()["detail"]


def test_with_the_cache_off_a_key_revoked_elsewhere_stops_at_once(api_factory: Callable[..., Api]) -> None:
    api = api_factory(auth_cache_seconds=0)
    key_id, key = _new_key(api)
    with httpx.Client(base_url=api.url, headers={"X-API-Key": key}) as svc:
        assert svc.get("/runs").status_code == 200
        assert ApiKeys(api.engine).revoke(key_id)
        assert svc.get("/runs").status_code == 401


def test_a_key_revoked_through_the_server_stops_at_once_whatever_the_delay(
    api_factory: Callable[..., Api],
) -> None:
    api = api_factory(auth_cache_seconds=3600)
    key_id, key = _new_key(api)
    with httpx.Client(base_url=api.url, headers=bearer(key)) as svc:  # the key as a bearer token
        assert svc.get("/runs").status_code == 200
        assert api.client("admin").delete(f"/api-keys/{key_id}").status_code == 204
        assert svc.get("/runs").status_code == 401


def test_a_remembered_token_is_refused_once_it_expires(api_factory: Callable[..., Api]) -> None:
    api = api_factory(jwt_leeway=0, auth_cache_seconds=3600)
    token = make_token("viewer", ttl=4)
    with httpx.Client(base_url=api.url, headers=bearer(token)) as client:
        assert client.get("/runs").status_code == 200
        time.sleep(max(0.0, jwt_exp(token) - time.time()) + 0.3)
        refused = client.get("/runs")
        assert refused.status_code == 401
        assert "expired" in refused.json()["detail"]


def jwt_exp(token: str) -> float:
    import jwt

    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


def test_a_refused_credential_is_not_remembered_as_valid(api: Api) -> None:
    token = make_token("viewer", secret="another-secret-" + "x" * 40)
    with httpx.Client(base_url=api.url, headers=bearer(token)) as client:
        assert client.get("/runs").status_code == 401
        assert client.get("/runs").status_code == 401


def test_run_answers_are_the_response_models_json(api: Api) -> None:
    ok = api.task("a", "maybe_fail")
    fails = api.task("b", "maybe_fail", depends_on=["a"], retry={"max_attempts": 2, "base_delay": 0})
    assert api.register(
        api.definition("fast", [ok, fails], params={"n": {"type": "int", "default": 1}})
    ).is_success
    operator = api.client("operator")
    viewer = api.client("viewer")
    first = operator.post("/pipelines/fast/runs", json={"params": {"n": 2}}).json()["run_id"]
    api.wait_for_run(first, {"succeeded"})
    api.tasks.fail["on"] = True
    second = operator.post("/pipelines/fast/runs", json={"params": {"n": 3}}).json()["run_id"]
    api.wait_for_run(second, {"failed"})

    for run_id in (first, second):
        answer = viewer.get(f"/runs/{run_id}")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        record = api.store.get_run(run_id)
        assert answer.content == RunDetail.from_record(record).model_dump_json().encode()
    assert any(t["attempts"] and t["error_message"] for t in viewer.get(f"/runs/{second}").json()["tasks"])

    page = viewer.get("/runs", params={"limit": 1})
    records = api.store.list_runs(limit=1)
    expected = RunPage(
        items=[RunSummary.from_record(r) for r in records], next_cursor=page.json()["next_cursor"]
    )
    assert page.json()["next_cursor"] is not None
    assert page.content == expected.model_dump_json().encode()
    rest = viewer.get("/runs", params={"cursor": page.json()["next_cursor"]}).json()
    assert [r["id"] for r in rest["items"]] == [first] and rest["next_cursor"] is None
