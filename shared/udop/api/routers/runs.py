"""Runs: trigger (202 at once), list with filters and a cursor, inspect, cancel, resume, lineage, checks."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from udop.api.audit import decode_cursor
from udop.api.deps import ApiContext, Ctx, Operator, Viewer
from udop.api.reads import run_json, runs_page_json
from udop.api.schemas import (
    Check,
    Lineage,
    Problem,
    RunAccepted,
    RunDetail,
    RunPage,
    RunRequest,
)
from udop.errors import InputError, RunNotFound
from udop.lineage.columns import task_column_lineage
from udop.spec.models import Pipeline
from udop.states import RunState
from udop.store.api import RunRecord

router = APIRouter(tags=["runs"])

RunId = Annotated[str, Path(description="the run's id", max_length=100)]
#: ``udop.store.api.RUN_TRIGGERS``
Trigger = Literal["cli", "api", "schedule", "trigger", "backfill"]


def _pipeline_version(ctx: ApiContext, name: str, version: int | None = None) -> Pipeline:
    record = ctx.store.get_pipeline(name)
    if record is None or not record.versions:
        raise HTTPException(404, f"no pipeline {name!r}; register it with POST /pipelines first")
    chosen = (
        record.latest if version is None else next((v for v in record.versions if v.version == version), None)
    )
    if chosen is None:
        raise HTTPException(404, f"pipeline {name!r} has no version {version}")
    return Pipeline.model_validate(chosen.definition)


def _run(ctx: ApiContext, run_id: str) -> RunRecord:
    run = ctx.store.get_run(run_id)
    if run is None:
        raise HTTPException(404, f"no run {run_id!r}")
    return run


def _accepted(run: RunRecord, state: RunState) -> RunAccepted:
    return RunAccepted(run_id=run.id, pipeline=run.pipeline, state=state, href=f"/runs/{run.id}")


@router.post(
    "/pipelines/{name}/runs",
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"model": Problem}, 422: {"model": Problem}},
)
def trigger_run(
    request: Request,
    response: Response,
    name: Annotated[str, Path(max_length=200)],
    _: Operator,
    ctx: Ctx,
    body: RunRequest | None = None,
) -> RunAccepted:
    """Start a run of the pipeline's latest version; answers at once, before any task runs."""
    from udop.executor.local import new_run_id

    body = body or RunRequest()
    pipeline = _pipeline_version(ctx, name)
    run = ctx.launcher.trigger(
        pipeline, params=body.params, logical_date=body.logical_date, run_id=new_run_id()
    )
    response.headers["Location"] = f"/runs/{run.id}"
    request.state.audit_detail = f"run {run.id} of {name} v{run.pipeline_version}"
    return _accepted(run, run.state)


@router.get("/runs", response_model=RunPage, responses={400: {"model": Problem}})
async def list_runs(
    _: Viewer,
    ctx: Ctx,
    *,
    pipeline: Annotated[str | None, Query(max_length=200)] = None,
    state: RunState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=400, description="the previous page's next_cursor")
    ] = None,
    logical_date: Annotated[
        str | None,
        Query(
            max_length=40,
            description="only runs of this logical date: an ISO date (midnight UTC) or datetime (UTC "
            "when it has no offset), as `udop runs list --logical-date` reads it",
        ),
    ] = None,
    trigger: Annotated[
        Trigger | None,
        Query(description="only runs started this way (runs recorded before udop kept it have none)"),
    ] = None,
) -> Response:
    """Newest first."""
    logical = _logical_date(logical_date)
    before = None
    if cursor:
        try:
            before = decode_cursor(cursor)
        except ValueError:
            raise HTTPException(400, "cursor is not one this API returned; start again without it") from None

    def page() -> bytes:
        try:
            return runs_page_json(ctx, pipeline, state, limit, before, logical_date=logical, trigger=trigger)
        except RunNotFound:
            raise HTTPException(
                400, "the cursor's run no longer exists; start again without a cursor"
            ) from None

    # the store call and the JSON in one trip to a worker thread: the event loop never waits on the
    # database, and the request pays one thread hand-off, not one per dependency and handler
    return _json(await run_in_threadpool(page))


def _logical_date(text: str | None) -> datetime | None:
    if text is None:
        return None
    from udop.schedule.backfill import parse_date

    try:
        return parse_date(text, what="logical_date")
    except InputError as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("/runs/{run_id}", response_model=RunDetail, responses={404: {"model": Problem}})
async def get_run(run_id: RunId, _: Viewer, ctx: Ctx) -> Response:
    """The run with each task's state, attempts and errors."""
    body = await run_in_threadpool(run_json, ctx, run_id)
    if body is None:
        raise HTTPException(404, f"no run {run_id!r}")
    return _json(body)


def _json(body: bytes) -> Response:
    # already JSON of the declared model: FastAPI neither validates nor serialises it again
    return Response(body, media_type="application/json")


@router.post("/runs/{run_id}/cancel", responses={404: {"model": Problem}, 409: {"model": Problem}})
def cancel_run(request: Request, run_id: RunId, principal: Operator, ctx: Ctx) -> RunDetail:
    run = _run(ctx, run_id)
    record = ctx.launcher.cancel(run, reason=f"cancelled by {principal.subject}")
    request.state.audit_detail = f"run {run_id} cancelled"
    return RunDetail.from_record(record)


@router.post(
    "/runs/{run_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"model": Problem}, 409: {"model": Problem}},
)
def resume_run(request: Request, run_id: RunId, _: Operator, ctx: Ctx) -> RunAccepted:
    """Run a failed or cancelled run again from the tasks that did not succeed (a redrive on AWS)."""
    run = _run(ctx, run_id)
    pipeline = _pipeline_version(ctx, run.pipeline, run.pipeline_version)
    ctx.launcher.resume(run, pipeline)
    request.state.audit_detail = f"run {run_id} resumed"
    return _accepted(run, RunState.RUNNING if run.state != RunState.PENDING else RunState.PENDING)


@router.post(
    "/runs/{run_id}/tasks/{task_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"model": Problem}, 409: {"model": Problem}},
)
def retry_task(
    request: Request,
    run_id: RunId,
    task_id: Annotated[str, Path(description="the task to run again, with everything downstream of it",
                                 max_length=200)],
    _: Operator,
    ctx: Ctx,
) -> RunAccepted:
    """Run an ended run again from a task: it and every task downstream of it go back to pending, then
    the run resumes as ``/resume`` does (tasks elsewhere that did not succeed run again too). 409 while
    the run is pending or running."""
    run = _run(ctx, run_id)
    pipeline = _pipeline_version(ctx, run.pipeline, run.pipeline_version)
    reset = ctx.launcher.retry(run, pipeline, task_id)
    request.state.audit_detail = f"run {run_id} retried from task {task_id} ({len(reset)} tasks reset)"
    return _accepted(run, RunState.PENDING)


@router.get("/runs/{run_id}/lineage", responses={404: {"model": Problem}})
def run_lineage(run_id: RunId, _: Viewer, ctx: Ctx) -> list[Lineage]:
    """What each task read and wrote: inputs, output URI, rows, bytes, schema fingerprint, and for
    transform and validate tasks which input columns each output column derives from."""
    run = _run(ctx, run_id)
    columns = task_column_lineage(run)
    return [Lineage.from_record(r, columns.get(r.task_id)) for r in ctx.store.get_lineage(run_id)]


@router.get("/runs/{run_id}/checks", responses={404: {"model": Problem}})
def run_checks(run_id: RunId, _: Viewer, ctx: Ctx) -> list[Check]:
    """Data-quality results of the run's validate tasks."""
    _run(ctx, run_id)
    return [Check.from_record(r) for r in ctx.store.get_checks(run_id)]
