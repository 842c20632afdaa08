"""Backfills over the API: start one (an operator, as for triggering a run), list, inspect, cancel.

The backfill runs in a background thread of this server under its sandbox policy, one run per
logical date, like ``udop backfill``; the answer (202) comes as soon as it is recorded. On a Step
Functions server it is one parent execution fanning out on AWS (``udop.schedule.sfn_parent``).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response, status
from pydantic import Field

from udop.api.deps import ApiContext, Ctx, Operator, Viewer
from udop.api.schemas import Body, Problem
from udop.errors import InputError, UdopError

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["backfills"])

_threads: dict[str, threading.Thread] = {}


class BackfillRequest(Body):
    start: datetime = Field(alias="from", description="first logical date (UTC when no offset is given)")
    end: datetime = Field(alias="to", description="last logical date, included")
    step: str = Field("1d", description="between logical dates: 30m, 6h, 1d or 1w", max_length=16)
    max_parallel: int = Field(1, ge=1, le=64)
    params: dict[str, Any] = Field(default_factory=dict, description="values for the pipeline's params")


class BackfillDate(Body):
    logical_date: datetime
    run_id: str | None
    state: str | None


class BackfillDetail(Body):
    id: str
    pipeline: str
    state: str
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    step: str
    max_parallel: int
    error: str | None
    counts: dict[str, int]
    dates: list[BackfillDate]
    href: str

    @classmethod
    def of(cls, record: Any) -> BackfillDetail:
        return cls(
            id=record.id, pipeline=record.pipeline, state=record.state, start=record.start, end=record.end,
            step=record.step, max_parallel=record.max_parallel, error=record.error, counts=record.counts(),
            dates=[BackfillDate(logical_date=d, run_id=r, state=record.run_states.get(r or ""))
                   for d, r in record.dates.items()],
            href=f"/backfills/{record.id}")


def _schedule_store(ctx: ApiContext) -> Any:
    from udop.schedule.store import ScheduleStore

    return ScheduleStore(ctx.store)  # type: ignore[arg-type]  # the API's store is the SQL store


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@router.post(
    "/pipelines/{name}/backfills",
    status_code=status.HTTP_202_ACCEPTED,
    response_model_by_alias=True,
    responses={404: {"model": Problem}, 422: {"model": Problem}},
)
def start_backfill(
    request: Request,
    response: Response,
    name: Annotated[str, Path(max_length=200)],
    body: BackfillRequest,
    _: Operator,
    ctx: Ctx,
) -> BackfillDetail:
    """Run the pipeline's latest version once per logical date from ``from`` to ``to``."""
    from udop.api.routers.runs import _pipeline_version
    from udop.schedule.backfill import BackfillRunner

    pipeline = _pipeline_version(ctx, name)
    if ctx.launcher.executor_name == "stepfunctions":
        return _start_parent(request, response, ctx, pipeline, body)
    runner = BackfillRunner(ctx.store, pipeline, policy=ctx.launcher.policy,  # type: ignore[arg-type]
                            data_root=getattr(ctx.launcher, "data_root", None))
    try:
        record = runner.create(start=_aware(body.start), end=_aware(body.end), step=body.step,
                               max_parallel=body.max_parallel, params=body.params)
    except InputError as exc:
        raise HTTPException(422, str(exc)) from None

    def work() -> None:
        try:
            runner.run(record.id)
        except UdopError as exc:
            log.error("backfill %s: %s", record.id, exc)
        finally:
            _threads.pop(record.id, None)

    thread = threading.Thread(target=work, name=f"udop-backfill-{record.id}", daemon=True)
    _threads[record.id] = thread
    thread.start()
    response.headers["Location"] = f"/backfills/{record.id}"
    request.state.audit_detail = f"backfill {record.id} of {name}: {len(record.dates)} logical date(s)"
    return BackfillDetail.of(record)


def _start_parent(request: Request, response: Response, ctx: ApiContext, pipeline: Any,
                  body: BackfillRequest) -> BackfillDetail:
    """On Step Functions: one parent execution fans out over the dates (``udop.schedule.sfn_parent``);
    nothing runs in this server."""
    from udop.schedule.sfn_parent import ParentBackfillRunner

    launcher: Any = ctx.launcher
    settings = launcher.settings
    runner = ParentBackfillRunner(ctx.store, pipeline, sfn=launcher.sfn, s3=launcher.s3,
                                  role_arn=str(settings.state_machine_role_arn),
                                  data_bucket=str(settings.data_bucket), policy=launcher.policy)
    try:
        record = runner.create(start=_aware(body.start), end=_aware(body.end), step=body.step,
                               max_parallel=body.max_parallel, params=body.params)
    except InputError as exc:
        raise HTTPException(422, str(exc)) from None
    runner.start(record.id)
    started = _schedule_store(ctx).get_backfill(record.id)
    response.headers["Location"] = f"/backfills/{record.id}"
    request.state.audit_detail = (f"backfill {record.id} of {pipeline.name}: {len(record.dates)} logical "
                                  "date(s), one parent execution on Step Functions")
    return BackfillDetail.of(started or record)


@router.get("/backfills", response_model_by_alias=True)
def list_backfills(_: Viewer, ctx: Ctx, pipeline: str | None = None) -> list[BackfillDetail]:
    return [BackfillDetail.of(r) for r in _schedule_store(ctx).list_backfills(pipeline)]


@router.get("/backfills/{backfill_id}", response_model_by_alias=True, responses={404: {"model": Problem}})
def get_backfill(backfill_id: Annotated[str, Path(max_length=100)], _: Viewer, ctx: Ctx) -> BackfillDetail:
    record = _schedule_store(ctx).get_backfill(backfill_id)
    if record is None:
        raise HTTPException(404, f"no backfill {backfill_id!r}")
    return BackfillDetail.of(record)


@router.post("/backfills/{backfill_id}/cancel", response_model_by_alias=True,
             responses={404: {"model": Problem}, 409: {"model": Problem}})
def cancel_backfill(request: Request, backfill_id: Annotated[str, Path(max_length=100)], _: Operator,
                    ctx: Ctx) -> BackfillDetail:
    """Stop a backfill: its running runs are cancelled and no more start."""
    from udop.schedule.backfill import cancel_backfill as cancel
    from udop.schedule.sfn_parent import EXECUTOR, stop_parent_backfill

    found = _schedule_store(ctx).get_backfill(backfill_id)
    if found is None:
        raise HTTPException(404, f"no backfill {backfill_id!r}")
    try:
        if found.executor == EXECUTOR:  # a parent execution on Step Functions: stop it and its dates
            launcher: Any = ctx.launcher
            record = stop_parent_backfill(ctx.store, launcher.sfn, backfill_id)
        else:
            record = cancel(ctx.store, backfill_id)  # type: ignore[arg-type]
    except InputError as exc:
        raise HTTPException(409, str(exc)) from None
    request.state.audit_detail = f"backfill {backfill_id} cancelled"
    return BackfillDetail.of(record)
