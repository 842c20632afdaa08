"""The FastAPI application: ``create_app(settings)`` wires the store, auth, audit and the run launcher.

Served locally by ``udop serve`` (uvicorn) and on AWS by ``functions/api/app.py`` (Mangum behind
API Gateway). Every answer that is not a success is ``{"detail": "<one line>"}``; a caller never sees a
traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, create_engine
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from udop.api.audit import AuditLog, ensure_api_tables
from udop.api.auth import Authenticator, AuthError, Principal
from udop.api.deps import ApiContext
from udop.api.guard import FailureLimiter, RequestGuard
from udop.api.keys import ApiKeys
from udop.api.launcher import LocalLauncher, RunLauncher
from udop.api.reads import FastReads, health_answer
from udop.api.routers import admin, backfills, lineage, observability, pipelines, runs
from udop.api.routers.pipelines import DefinitionInvalid
from udop.api.schemas import Health, Problem
from udop.api.settings import ApiSettings, load_api_settings
from udop.api.ui import mount_ui
from udop.errors import ConfigError, InputError, RunNotFound, SpecErrors, StoreError, TransitionError
from udop.store.api import MetadataStore

__all__ = ["create_app"]

log = logging.getLogger("udop.api")

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def create_app(
    settings: ApiSettings | None = None,
    *,
    store: MetadataStore | None = None,
    launcher: RunLauncher | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    """Build the app. ``store``/``launcher``/``engine`` default to what ``settings`` describe."""
    settings = settings or load_api_settings()
    if store is None:
        from udop.store import open_store

        if settings.database_url is None:  # the embedded default under UDOP_HOME: ours to create
            settings.home.mkdir(parents=True, exist_ok=True)
        store = open_store(settings.resolved_database_url)
    engine = engine or getattr(store, "engine", None) or create_engine(settings.resolved_database_url)
    ensure_api_tables(engine)
    if settings.code_dir:
        _add_code_dir(settings.code_dir)
    if launcher is None:
        launcher = _default_launcher(settings, store)
    keys = ApiKeys(engine)
    audit = AuditLog(engine, retention_days=settings.audit_retention_days)
    audit.prune()
    ctx = ApiContext(
        settings=settings,
        store=store,
        audit=audit,
        keys=keys,
        auth=Authenticator(settings, keys),
        launcher=launcher,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        ctx.parsers = anyio.CapacityLimiter(settings.definition_parsers)
        yield
        launcher.close()

    app = FastAPI(
        title="udop",
        version=_version(),
        lifespan=lifespan,
        root_path=settings.api_root_path,
        description="Pipelines and runs of the Universal Data Orchestration Platform. Authenticate with "
        "a bearer JWT or an X-API-Key; roles are viewer < operator < admin.",
        responses={
            401: {"model": Problem, "description": "no or invalid credentials"},
            403: {"model": Problem, "description": "the caller's role is too low"},
            422: {"model": Problem, "description": "the request is invalid"},
            503: {"model": Problem, "description": "the metadata store is unavailable"},
        },
    )
    app.state.udop = ctx
    app.include_router(pipelines.router)
    app.include_router(runs.router)
    app.include_router(admin.router)
    app.include_router(observability.router)
    _add_metrics(launcher)
    app.include_router(lineage.router)
    app.include_router(backfills.router)
    _add_health(app, ctx, engine)
    mount_ui(app)  # the web UI at /ui/ (docs/ui.md): static assets over this same API
    _add_error_handlers(app)
    # the first added is the innermost: ordinary GET /runs, /runs/{id} and /health are answered here,
    # after the guard, the audit and the correlation id, without FastAPI's per-request work
    app.add_middleware(FastReads, ctx=ctx, engine=engine)
    # the last added is the outermost: the audit middleware sees what the guard refuses
    app.add_middleware(
        RequestGuard,
        auth=ctx.auth,
        max_body_bytes=settings.max_body_bytes,
        limiter=FailureLimiter(settings.auth_failure_limit, settings.auth_failure_window),
    )
    app.add_middleware(AuditMiddleware, audit=ctx.audit)
    # outermost: the audit row and every log line of the request carry its correlation id
    app.add_middleware(observability.CorrelationMiddleware)
    return app


def _add_metrics(launcher: RunLauncher) -> None:
    """Count this process's runs for /metrics."""
    from udop.observability.prometheus import sink

    backlog = getattr(launcher, "backlog", None)
    if callable(backlog):
        sink().watch_backlog(backlog)
    else:
        sink()


def _add_code_dir(folder: str) -> None:
    """Put the folder holding python tasks' code first on sys.path, as ``udop run`` does with the
    definition's folder, so that ``tasks:fn`` imports on a server started from anywhere."""
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"environment variable UDOP_CODE_DIR: {folder!r} is not a folder")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("udop")
    except PackageNotFoundError:
        return "0"


def _default_launcher(settings: ApiSettings, store: MetadataStore) -> RunLauncher:
    if settings.executor == "stepfunctions":
        from udop.api.stepfunctions import StepFunctionsLauncher

        return StepFunctionsLauncher(store, settings)
    if settings.executor == "celery":
        from udop.api.launcher import CeleryLauncher

        return CeleryLauncher(store, workers=settings.local_workers, max_runs=settings.max_concurrent_runs,
                              data_root=settings.resolved_data_root, stop_grace=settings.stop_grace)
    return LocalLauncher(
        store,
        workers=settings.local_workers,
        max_runs=settings.max_concurrent_runs,
        data_root=settings.resolved_data_root,
        stop_grace=settings.stop_grace,
    )


def _add_health(app: FastAPI, ctx: ApiContext, engine: Engine) -> None:
    @app.get("/health", tags=["health"], responses={503: {"model": Health}})
    def health() -> JSONResponse:
        """Unauthenticated: 200 when the metadata store answers, 503 when it does not."""
        ok, why = health_answer(engine)
        if not ok:
            log.warning("health: metadata store unavailable: %s", why)
        body = Health(
            status="ok" if ok else "unavailable",
            store="ok" if ok else "unreachable",
            executor=ctx.launcher.executor_name,
        )
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def _detail(request: Request, status: int, detail: str, **extra: Any) -> JSONResponse:
    request.state.audit_detail = detail
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        if exc.principal is not None:
            request.state.principal = exc.principal
        request.state.audit_always = True  # an auth failure is audited whatever its status (503: JWKS down)
        response = _detail(request, exc.status, exc.reason)
        if exc.claimed:
            request.state.audit_detail = f"{exc.reason} (credentials claimed {exc.claimed!r}, unverified)"
        return response

    @app.exception_handler(DefinitionInvalid)
    async def definition_invalid(request: Request, exc: DefinitionInvalid) -> JSONResponse:
        errors = [{"path": e.path, "line": e.line, "message": e.message} for e in exc.errors]
        return _detail(request, 422, str(exc), errors=errors)

    @app.exception_handler(SpecErrors)
    async def spec_errors(request: Request, exc: SpecErrors) -> JSONResponse:
        errors = [{"path": e.path, "line": e.line, "message": e.message} for e in exc.errors]
        first = exc.errors[0].message if exc.errors else "invalid input"
        return _detail(request, 422, first if len(errors) == 1 else f"{len(errors)} errors", errors=errors)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"path": ".".join(str(p) for p in e.get("loc", ())), "line": None, "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        where = errors[0]["path"] if errors else "request"
        message = f"{where}: {errors[0]['message']}" if errors else "invalid request"
        return _detail(request, 422, message, errors=errors)

    @app.exception_handler(RunNotFound)
    async def run_not_found(request: Request, exc: RunNotFound) -> JSONResponse:
        return _detail(request, 404, str(exc))

    @app.exception_handler(InputError)
    async def conflict(request: Request, exc: InputError) -> JSONResponse:
        # what remains of InputError here is a request that conflicts with the run's state
        return _detail(request, 409, str(exc))

    @app.exception_handler(TransitionError)
    async def transition(request: Request, exc: TransitionError) -> JSONResponse:
        return _detail(request, 409, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback for the operator; the caller gets one line
        return _detail(request, 500, "internal error; the server log has the details")

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        log.error("metadata store error on %s %s: %s", request.method, request.url.path, exc)
        return _detail(request, 503, "the metadata store is unavailable; try again later")


class AuditMiddleware:
    """Writes one audit row per mutating call and per 401/403, before the answer leaves.

    Writing before the response starts means a client that saw the answer can already read its row.
    """

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        written = False

        async def send_audited(message: Message) -> None:
            nonlocal written
            if message["type"] == "http.response.start" and not written:
                written = True
                await self._maybe_record(scope, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except Exception:
            if not written:
                written = True
                await self._maybe_record(scope, 500, "internal error")
            raise

    async def _maybe_record(self, scope: Scope, status: int, detail: str | None = None) -> None:
        method = scope["method"]
        state = scope.get("state", {})
        if method not in _MUTATING and status not in (401, 403) and not state.get("audit_always"):
            return
        principal: Principal | None = state.get("principal")
        route = scope.get("route")
        client = scope.get("client")
        # a failed write is logged loudly by AuditLog.record; the call itself has already happened
        with contextlib.suppress(StoreError):
            await run_in_threadpool(
                self.audit.record,
                actor=principal.subject if principal else "anonymous",
                actor_kind=principal.kind if principal else "anonymous",
                role=principal.role.label if principal and principal.role else None,
                action=getattr(route, "name", None) or state.get("audit_action") or "unknown",
                method=method,
                path=scope.get("path", ""),
                status=status,
                detail=detail or state.get("audit_detail"),
                client=client[0] if client else None,
            )
