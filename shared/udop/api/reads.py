"""The API's most frequent reads, answered without FastAPI's per-request machinery when nothing is unusual.

``GET /runs``, ``GET /runs/{id}`` and ``GET /health`` are what a web UI, a scheduler and a load balancer
poll. Through FastAPI each of them paid, per request, for routing, the resolution of five dependencies
(bearer scheme, API key header, context, role check, query parameters) and a hop to a worker thread:
several times the cost of the store call itself (``benchmarks/api_runs.py``). ``FastReads`` sits inside
the correlation, audit and request-guard middleware, so every request still passes the guard and carries
its correlation id, and answers these three only when the request is an ordinary one:

* the credentials are in the authenticator's cache (verified before, not expired, not revoked) and
  hold at least the viewer role;
* every query parameter the endpoint reads is well-formed and within its limits, and there is no
  other (a filter only the route applies, such as ``logical_date``, or one it will refuse).

Anything else (no or unknown credentials, a role too low, a bad parameter or cursor, a missing run, the
store failing) goes on to the FastAPI route, which answers exactly as before (401/403 audited, 422, 400,
404, 503). The bytes of an answer are the route's own: both paths call the functions below
(``tests/integration/api/test_http_fast_reads.py`` compares them).

The store call of a file-backed SQLite database runs on the event loop: it is an in-process read of a
bounded page (WAL readers never wait for writers) and a hop to a worker thread cost more than the read;
PostgreSQL and in-memory SQLite (one shared, locked connection) calls go to the thread pool.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import parse_qsl

from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from udop.api.audit import decode_cursor, encode_cursor
from udop.api.auth import Role
from udop.api.schemas import Health, RunDetail, run_page_json
from udop.errors import RunNotFound, StoreError
from udop.states import RunState
from udop.store.engine import is_memory

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from udop.api.deps import ApiContext

__all__ = ["FastReads", "health_answer", "run_json", "runs_page_json"]

log = logging.getLogger("udop.api")

_T = TypeVar("_T")
_STATES = frozenset(s.value for s in RunState)
_JSON_HEADERS = b"application/json"
#: the query parameters of ``GET /runs`` answered here; any other (``logical_date``, ``trigger``, a typo)
#: goes to the route, which applies it or refuses it: never a page silently unfiltered
_PAGE_PARAMS = frozenset({"pipeline", "state", "limit", "cursor"})


def runs_page_json(
    ctx: ApiContext,
    pipeline: str | None,
    state: RunState | None,
    limit: int,
    before: str | None,
    *,
    logical_date: datetime | None = None,
    trigger: str | None = None,
) -> bytes:
    """The JSON of a ``RunPage``: ``limit`` runs newest first and the cursor of the next page.

    ``RunNotFound`` when ``before`` names a run that no longer exists.
    """
    runs = ctx.store.list_runs(
        pipeline=pipeline, state=state, limit=limit + 1, before=before, logical_date=logical_date,
        trigger=trigger,
    )
    more = len(runs) > limit
    runs = runs[:limit]
    return run_page_json(runs, encode_cursor(runs[-1].id) if more and runs else None)


def run_json(ctx: ApiContext, run_id: str) -> bytes | None:
    """The JSON of a ``RunDetail``, or None when there is no such run."""
    run = ctx.store.get_run(run_id)
    return None if run is None else RunDetail.json_of(run)


def health_answer(engine: Engine) -> tuple[bool, str | None]:
    """Whether the metadata store answers ``SELECT 1``, and why not when it does not."""
    try:
        # on the pooled driver connection: a statement through SQLAlchemy cost more than the query
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("SELECT 1")
            cursor.fetchall()
            cursor.close()
        finally:
            raw.close()
    except Exception as exc:  # any failure to reach the database is "unavailable", not a 500
        return False, str(exc)
    return True, None


def _health_body(ok: bool, executor: str) -> bytes:
    body = Health(
        status="ok" if ok else "unavailable", store="ok" if ok else "unreachable", executor=executor
    )
    return bytes(JSONResponse(body.model_dump()).body)


def _route_path(scope: Scope) -> str:
    """The path the router matches (Starlette's rule: the root path taken off when it prefixes it)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        if path == root:
            return ""
        if path[len(root)] == "/":
            return path[len(root) :]
    return path


def _header(scope: Scope, name: bytes) -> str | None:
    # the first of its name, as starlette's Headers.get reads it
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _authorization(raw: str | None) -> str | None:
    """The Authorization value as the route's dependency hands it to the authenticator.

    FastAPI's ``HTTPBearer`` rebuilds a bearer credential as ``"<scheme> <credentials stripped>"``;
    anything else reaches the authenticator as sent. The cache is keyed by this text, so both paths
    look the same credential up under the same key.
    """
    if not raw:
        return raw
    scheme, _, credentials = raw.partition(" ")
    credentials = credentials.strip()
    if scheme and credentials and scheme.lower() == "bearer":
        return f"{scheme} {credentials}"
    return raw


class FastReads:
    """ASGI middleware answering ordinary ``GET /runs``, ``GET /runs/{id}`` and ``GET /health`` (see above).

    Added first, so it runs inside the request guard, the audit and the correlation middleware.
    """

    def __init__(self, app: ASGIApp, *, ctx: ApiContext, engine: Engine) -> None:
        self.app = app
        self.ctx = ctx
        self.engine = engine
        sqlite_file = engine.dialect.name == "sqlite" and not is_memory(engine.url)
        #: where a store call runs: on the loop for a file-backed SQLite database, else a worker thread
        self._inline = sqlite_file
        executor = ctx.launcher.executor_name
        self._health = {ok: _health_body(ok, executor) for ok in (True, False)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = _route_path(scope)
            if path == "/health":
                await self._answer_health(send)
                return
            if path.startswith("/runs") and await self._read(scope, path, send):
                return
        await self.app(scope, receive, send)

    async def _call(self, fn: Callable[[], _T]) -> _T:
        if self._inline:
            return fn()
        return await run_in_threadpool(fn)

    async def _answer_health(self, send: Send) -> None:
        ok, why = await self._call(lambda: health_answer(self.engine))
        if not ok:
            log.warning("health: metadata store unavailable: %s", why)
        await _send_json(send, 200 if ok else 503, self._health[ok])

    async def _read(self, scope: Scope, path: str, send: Send) -> bool:
        """Answer the request and return True, or return False for the FastAPI route to answer it."""
        make: Callable[[], bytes | None] | None
        if path == "/runs":
            make = self._page(scope)
        elif path.count("/") == 2 and len(path) > 6 and len(path) <= 106:  # "/runs/" + at most 100
            run_id = path[6:]
            if path[5] != "/":
                return False
            ctx = self.ctx

            def make_run() -> bytes | None:
                return run_json(ctx, run_id)

            make = make_run
        else:
            return False
        if make is None or not self._authorised(scope):
            return False
        try:
            body = await self._call(make)
        except (StoreError, RunNotFound):
            return False  # the route says it the usual way (503; a vanished cursor's 400)
        if body is None:
            return False  # no such run: the route's 404
        await _send_json(send, 200, body)
        return True

    def _authorised(self, scope: Scope) -> bool:
        state = scope.setdefault("state", {})
        principal = state.get("principal")  # set by the guard for a request with a body
        if principal is None:
            principal = self.ctx.auth.cached(
                _authorization(_header(scope, b"authorization")), _header(scope, b"x-api-key") or None
            )
        if principal is None or principal.role < Role.VIEWER:
            return False
        state["principal"] = principal
        return True

    def _page(self, scope: Scope) -> Callable[[], bytes] | None:
        """The page of ``GET /runs`` the query asks for, or None when the route must judge the query."""
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        if not query.keys() <= _PAGE_PARAMS:
            return None
        pipeline = query.get("pipeline")
        if pipeline is not None and not 0 < len(pipeline) <= 200:
            return None
        raw_state = query.get("state")
        if raw_state is not None and raw_state not in _STATES:
            return None
        state = RunState(raw_state) if raw_state is not None else None
        limit = 50
        raw_limit = query.get("limit")
        if raw_limit is not None:
            if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 3):
                return None
            limit = int(raw_limit)
            if not 1 <= limit <= 500:
                return None
        before = None
        cursor = query.get("cursor")
        if cursor is not None:
            if not 0 < len(cursor) <= 400:
                return None
            try:
                before = decode_cursor(cursor)
            except ValueError:
                return None
        ctx = self.ctx

        def page() -> bytes:
            return runs_page_json(ctx, pipeline, state, limit, before)

        return page


async def _send_json(send: Send, status: int, body: bytes) -> None:
    # the headers Starlette's Response writes for a JSON body, in its order
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", _JSON_HEADERS)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
