"""``GET /metrics`` (Prometheus text) and ``GET /runs/{id}/tasks/{task}/logs`` (a task's own logs),
and the middleware that gives every request a correlation id that follows the runs it starts."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from udop.api.deps import Ctx, Viewer
from udop.api.schemas import Problem
from udop.observability.context import LogContext, _current, new_correlation_id

router = APIRouter(tags=["observability"])

#: what a log file may send in one answer; a larger one is cut (its start is kept)
MAX_LOG_RESPONSE = 1_048_576


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(_: Viewer) -> Response:
    """Prometheus text format: runs and tasks by state, attempt durations, rows, retries, backlog."""
    from udop.observability.prometheus import CONTENT_TYPE_LATEST, render

    return Response(render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/runs/{run_id}/tasks/{task_id}/logs", response_class=PlainTextResponse,
            responses={404: {"model": Problem}})
def task_logs(
    run_id: Annotated[str, Path(max_length=100)],
    task_id: Annotated[str, Path(max_length=200)],
    _: Viewer,
    ctx: Ctx,
    attempt: Annotated[int | None, Query(ge=1, description="one attempt; default: every attempt")] = None,
) -> PlainTextResponse:
    """What the task logged and printed, attempt by attempt (secrets masked)."""
    from udop.observability.tasklogs import render_log, stored_logs

    run = ctx.store.get_run(run_id)
    if run is None:
        raise HTTPException(404, f"no run {run_id!r}")
    if task_id not in {t.task_id for t in run.tasks}:
        raise HTTPException(404, f"run {run_id!r} has no task {task_id!r}")
    parts: list[str] = []
    left = MAX_LOG_RESPONSE
    data_root = getattr(ctx.launcher, "data_root", None) or ctx.settings.resolved_data_root
    for _task, number, log in stored_logs(run, task_id, attempt, data_root=data_root):
        text = f"==> {task_id} attempt {number} <==\n" + render_log(log, limit=left)
        parts.append(text)
        left -= len(text)
        if left <= 0:
            break
    if not parts:
        raise HTTPException(404, f"no logs for task {task_id!r} of run {run_id!r}")
    return PlainTextResponse("".join(parts))


_HEADER = b"x-correlation-id"
_VALID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class CorrelationMiddleware:
    """Takes the caller's ``X-Correlation-Id`` (or makes one), binds it to the request's context,
    from which a triggered run inherits it, and returns it in the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == _HEADER), None)
        raw = given if given is not None and _VALID.fullmatch(given) else new_correlation_id().encode()
        value = raw.decode()
        token = _current.set(LogContext(correlation_id=value))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (_HEADER, raw)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)
