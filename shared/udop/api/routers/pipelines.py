"""Pipelines: register or update from a definition, list, get with versions, delete."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, HTTPException, Path, Request, Response, status
from starlette.concurrency import run_in_threadpool

from udop.api.deps import Admin, Ctx, Operator, Viewer
from udop.api.schemas import PipelineDetail, PipelineRegistered, PipelineSummary, Problem
from udop.errors import SpecError, SpecErrors
from udop.sandbox import active
from udop.spec.loader import MAX_DEFINITION_BYTES, load_pipeline
from udop.spec.secure import mask_definition

if TYPE_CHECKING:
    from udop.sandbox import Policy
    from udop.spec.models import Pipeline

router = APIRouter(prefix="/pipelines", tags=["pipelines"])

PipelineName = Annotated[str, Path(description="the pipeline's metadata.name", max_length=200)]

_DEFINITION_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a udop/v1 Pipeline definition, as YAML or JSON",
        "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}},
            "application/yaml": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_DEFINITION_BODY,
    responses={
        200: {"model": PipelineRegistered, "description": "the definition was already the latest"},
        413: {"model": Problem},
        422: {"model": Problem, "description": "every error, located"},
    },
)
async def register_pipeline(
    request: Request, response: Response, _: Operator, ctx: Ctx
) -> PipelineRegistered:
    """Register a pipeline, or add a version when its definition changed (matched by metadata.name)."""
    body = await _read_limited(request, MAX_DEFINITION_BYTES)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    filename = "request.json" if kind.endswith("json") else "request.yaml"
    try:
        # off the event loop, a few at a time, within a time budget: /health answers while a hostile
        # upload is being refused, and many of them cannot take every worker thread; under the
        # server's policy: a python task's module is checked before it is imported
        pipeline = await anyio.to_thread.run_sync(
            functools.partial(
                _load_under_policy, ctx.launcher.policy, body, filename, ctx.settings.definition_parse_seconds
            ),
            limiter=ctx.parsers,
        )
    except SpecErrors as exc:
        raise _invalid(exc.errors) from None
    except SpecError as exc:
        raise _invalid([exc]) from None
    previous = await run_in_threadpool(ctx.store.get_pipeline, pipeline.name)
    latest = previous.latest if previous else None
    version = await run_in_threadpool(ctx.launcher.register, pipeline, body, filename)
    created = latest is None or latest.version != version.version
    if not created:
        response.status_code = status.HTTP_200_OK
    request.state.audit_detail = f"pipeline {pipeline.name} version {version.version}" + (
        "" if created else " (unchanged)"
    )
    return PipelineRegistered(
        name=pipeline.name, version=version.version, content_hash=version.content_hash, created=created
    )


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over ``limit`` (never held whole)."""
    too_big = HTTPException(413, f"a definition may have at most {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


class DefinitionInvalid(Exception):
    def __init__(self, errors: list[SpecError]) -> None:
        # one error is the answer's detail itself ("request.yaml:5: nested more than ...")
        super().__init__(str(errors[0]) if len(errors) == 1 else f"the definition has {len(errors)} errors")
        self.errors = errors


def _invalid(errors: list[SpecError]) -> DefinitionInvalid:
    return DefinitionInvalid(errors)


@router.get("")
def list_pipelines(_: Viewer, ctx: Ctx) -> list[PipelineSummary]:
    return [PipelineSummary.from_record(p) for p in ctx.store.list_pipelines()]


@router.get("/{name}", responses={404: {"model": Problem}})
def get_pipeline(name: PipelineName, _: Viewer, ctx: Ctx) -> PipelineDetail:
    """A pipeline with every version and its definition, oldest first."""
    record = ctx.store.get_pipeline(name)
    if record is None:
        raise HTTPException(404, f"no pipeline {name!r}")
    detail = PipelineDetail.from_record(record)
    # never a secret value, whoever stored the definition and however (rows from before masking too)
    for version in detail.versions:
        version.definition = mask_definition(version.definition)
    return detail


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses={404: {"model": Problem}})
def delete_pipeline(request: Request, name: PipelineName, _: Admin, ctx: Ctx) -> None:
    if not ctx.store.delete_pipeline(name):
        raise HTTPException(404, f"no pipeline {name!r}")
    from udop.schedule.aws import forget_pipeline  # its EventBridge schedule goes too (Step Functions)

    forget_pipeline(ctx.launcher.executor_name, name)
    request.state.audit_detail = f"pipeline {name} deleted"


def _load_under_policy(policy: Policy, body: bytes, filename: str, budget: float) -> Pipeline:
    with active(policy):
        return load_pipeline(body, filename=filename, time_budget=budget)
