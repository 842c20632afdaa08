"""Admin: API keys for service accounts, the audit log, and who the caller is."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, status

from udop.api.audit import decode_id_cursor, encode_cursor
from udop.api.deps import Admin, Anyone, Ctx
from udop.api.schemas import ApiKey, ApiKeyCreated, ApiKeyRequest, AuditItem, AuditPage, Identity, Problem

router = APIRouter(tags=["admin"])


@router.get("/me")
def who_am_i(principal: Anyone) -> Identity:
    """The authenticated caller and its role."""
    return Identity(
        subject=principal.subject, role=principal.role.label if principal.role else None, kind=principal.kind
    )


@router.post("/api-keys", status_code=status.HTTP_201_CREATED)
def create_api_key(request: Request, body: ApiKeyRequest, principal: Admin, ctx: Ctx) -> ApiKeyCreated:
    """A new service-account key; the key itself is in this answer only."""
    record, key = ctx.keys.create(name=body.name, role=body.role, created_by=principal.subject)
    request.state.audit_detail = f"api key {record.id} ({record.name}, {record.role})"
    return ApiKeyCreated(**ApiKey.from_record(record).model_dump(), key=key)


@router.get("/api-keys")
def list_api_keys(_: Admin, ctx: Ctx) -> list[ApiKey]:
    return [ApiKey.from_record(r) for r in ctx.keys.list()]


@router.delete(
    "/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses={404: {"model": Problem}}
)
def revoke_api_key(request: Request, key_id: Annotated[str, Path(max_length=32)], _: Admin, ctx: Ctx) -> None:
    if not ctx.keys.revoke(key_id):
        raise HTTPException(404, f"no active API key {key_id!r}")
    request.state.audit_detail = f"api key {key_id} revoked"


@router.get("/audit", responses={400: {"model": Problem}})
def read_audit_log(
    _: Admin,
    ctx: Ctx,
    actor: Annotated[str | None, Query(max_length=255)] = None,
    outcome: Literal["success", "denied", "unauthenticated", "rejected", "error"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> AuditPage:
    """Who did what, when, with which outcome; newest first."""
    before = None
    if cursor:
        try:
            before = decode_id_cursor(cursor)
        except ValueError:
            raise HTTPException(400, "cursor is not one this API returned; start again without it") from None
    rows = ctx.audit.list(actor=actor, outcome=outcome, limit=limit + 1, before_id=before)
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(
        items=[AuditItem.from_record(r) for r in rows],
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )
