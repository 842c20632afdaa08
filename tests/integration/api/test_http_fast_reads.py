"""``FastReads`` answers ordinary ``GET /runs``, ``/runs/{id}`` and ``/health`` exactly as their routes do,
and leaves everything else to them.

Driven in-process at the ASGI level: the middleware in front of a stand-in that records what it is
handed, and the FastAPI router on its own (no middleware) for the answer the route gives the same
request. Over HTTP, a server whose credential cache is off (every request through the routes) and one
with it on (ordinary reads through ``FastReads``) give the same bytes on the same database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from udop.api import ApiSettings, create_app
from udop.api.audit import encode_cursor
from udop.api.reads import FastReads
from udop.states import AttemptState, RunState, TaskState
from udop.store import open_store

from .conftest import SECRET, Api, bearer, make_token

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


def _seed(store: Any) -> None:
    definition = {
        "apiVersion": "udop/v1",
        "kind": "Pipeline",
        "metadata": {"name": "p"},
        "spec": {"tasks": [{"id": t, "type": "python", "callable": "m:f"} for t in ("a", "b")]},
    }
    for name in ("p", "q"):
        store.register_pipeline(name, {**definition, "metadata": {"name": name}})
    for i in range(5):
        store.create_run(run_id=f"r{i}", pipeline="pq"[i % 2], pipeline_version=1, task_ids=["a", "b"],
                         params={"i": i, "s": "ünï"}, logical_date=datetime(2026, 1, 1 + i, tzinfo=UTC))
    store.set_run_state("r2", RunState.RUNNING)
    store.start_attempt("r2", "a", 1)
    store.finish_attempt("r2", "a", 1, attempt_state=AttemptState.FAILED, task_state=TaskState.FAILED,
                         error_type="ValueError", error_message="no")


async def _call(asgi: Any, path: str, query: str = "", headers: dict[str, str] | None = None,
                *, method: str = "GET", app: Any = None) -> Answer | None:
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": query.encode(), "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()], "state": {},
    }
    if app is not None:
        scope["app"] = app
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with AsyncExitStack() as stack:
        scope["fastapi_middleware_astack"] = stack  # what FastAPI's own outer middleware provides
        await asgi(scope, receive, send)
    if not sent:
        return None
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], list(sent[0]["headers"]), body


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    _seed(store)
    app = create_app(ApiSettings(database_url=str(store.engine.url), data_root=str(tmp_path / "d"),
                                 jwt_secret=SECRET), store=store)
    yield app, store
    app.state.udop.launcher.close()
    store.close()


def test_ordinary_reads_are_answered_as_the_routes_answer_them(served: tuple[Any, Any]) -> None:
    app, store = served
    ctx = app.state.udop
    passed: list[str] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:  # what FastReads passes on
        passed.append(f"{scope['method']} {scope['path']}?{scope['query_string'].decode()}")

    reads = FastReads(route, ctx=ctx, engine=store.engine)
    token = make_token("viewer")
    ctx.auth.authenticate(f"Bearer {token}", None)  # verified once: now in the credential cache
    auth = bearer(token)
    cursor = encode_cursor("r3")

    async def check() -> None:
        for path, query, headers in [
            ("/runs", "", auth),
            ("/runs", "limit=2", auth),
            ("/runs", "limit=500&pipeline=p&state=pending", auth),
            ("/runs", f"cursor={cursor}&limit=1", auth),
            ("/runs", "pipeline=none", auth),
            ("/runs", "pipeline=zzz&pipeline=p&limit=1", auth),  # a repeated parameter: the last one
            ("/runs", "pipeline=%C3%BC%20x", auth),
            ("/runs/r2", "", auth),
            ("/runs/r1", "", {"Authorization": f"Bearer   {token}"}),  # the same credential to HTTPBearer
            ("/health", "", {}),
        ]:
            fast = await _call(reads, path, query, headers)
            assert fast is not None, f"{path}?{query} was passed on"
            assert fast == await _call(app.router, path, query, headers, app=app), f"{path}?{query}"
        assert passed == []

    asyncio.run(check())


def test_anything_unusual_is_left_to_the_route(served: tuple[Any, Any]) -> None:
    app, store = served
    ctx = app.state.udop
    passed: list[str] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        passed.append(f"{scope['method']} {scope['path']}?{scope['query_string'].decode()}")

    reads = FastReads(route, ctx=ctx, engine=store.engine)
    viewer, nobody, unverified = make_token("viewer"), make_token(None, sub="nobody"), make_token("admin")
    ctx.auth.authenticate(f"Bearer {viewer}", None)
    ctx.auth.authenticate(f"Bearer {nobody}", None)  # valid, but no role: the route's 403 (audited)
    auth = bearer(viewer)
    cases = [
        ("GET", "/runs", "", {}),  # no credentials: 401
        ("GET", "/runs", "", bearer(unverified)),  # never verified: the route verifies it
        ("GET", "/runs", "", bearer(nobody)),
        ("GET", "/runs", "limit=0", auth),
        ("GET", "/runs", "limit=501", auth),
        ("GET", "/runs", "limit=%2B5", auth),
        ("GET", "/runs", "limit=abc", auth),
        ("GET", "/runs", "state=bogus", auth),
        ("GET", "/runs", "pipeline=", auth),
        ("GET", "/runs", f"pipeline={'x' * 201}", auth),
        ("GET", "/runs", "cursor=%21%21", auth),
        ("GET", "/runs", f"cursor={encode_cursor('gone')}", auth),  # its run no longer exists: 400
        # a parameter it does not read: the route applies it (a filter) or ignores it, never FastReads
        ("GET", "/runs", "logical_date=2026-01-02", auth),
        ("GET", "/runs", "limit=5&unknown=1", auth),
        ("GET", "/runs/missing", "", auth),  # 404
        ("GET", f"/runs/{'x' * 101}", "", auth),
        ("GET", "/runs/r1/lineage", "", auth),
        ("GET", "/runs/", "", auth),
        ("HEAD", "/runs", "", auth),
        ("POST", "/runs/r1/cancel", "", auth),
    ]

    async def check() -> None:
        for method, path, query, headers in cases:
            assert await _call(reads, path, query, headers, method=method) is None, f"{path}?{query}"

    asyncio.run(check())
    assert passed == [f"{m} {p}?{q}" for m, p, q, _ in cases]


def test_a_server_with_and_without_fast_reads_gives_the_same_answers(
    api_factory: Callable[..., Api], tmp_path: Path
) -> None:
    routes_only = api_factory(auth_cache_seconds=0)  # nothing cached: every request reaches a route
    fast = api_factory()
    _seed(fast.store)
    token = make_token("viewer")
    first = httpx.get(f"{fast.url}/runs", params={"limit": 2}, headers=bearer(token)).json()
    requests = [
        ("/runs", {}), ("/runs", {"limit": 2}), ("/runs", {"cursor": first["next_cursor"]}),
        ("/runs", {"pipeline": "p", "state": "running"}), ("/runs/r2", {}), ("/runs/missing", {}),
        ("/runs", {"limit": "x"}), ("/health", {}),
    ]
    with httpx.Client(headers=bearer(token)) as client:
        for path, params in requests:
            a = client.get(f"{routes_only.url}{path}", params=params)
            b = client.get(f"{fast.url}{path}", params=params)
            assert (a.status_code, a.headers["content-type"], a.content) == (
                b.status_code, b.headers["content-type"], b.content), f"{path} {params}"
            assert a.headers["x-correlation-id"] and b.headers["x-correlation-id"]


@pytest.mark.parametrize(
    "value",
    [
        {"f": [1e16, 1e-7, 0.1, -0.0, 5e-324, 1.7976931348623157e308], "i": [2**63 - 1, -(2**63), 2**64 - 1]},
        {"nan": float("nan"), "inf": float("-inf"), "s": "é\u2028\x00\x1f</script>\"\\", "n": None, "b": True},
        {"big": 2**70},  # past orjson's 64 bits: pydantic-core writes it
        {"t": [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 0, 5000, tzinfo=UTC)]},
        {"state": RunState.RUNNING, "nested": [{"k": [{}]}, []]},
    ],
)
def test_answers_are_written_as_pydantic_core_writes_them(value: dict[str, Any]) -> None:
    from pydantic_core import to_json

    from udop.api.schemas import _dumps

    assert _dumps(value) == to_json(value, inf_nan_mode="null")
