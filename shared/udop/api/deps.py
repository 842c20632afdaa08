"""What every endpoint shares: the app's services and the per-endpoint role check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from udop.api.audit import AuditLog
from udop.api.auth import Authenticator, AuthError, Principal, Role, require
from udop.api.keys import ApiKeys
from udop.api.launcher import RunLauncher
from udop.api.settings import ApiSettings
from udop.store.api import MetadataStore

__all__ = ["ApiContext", "context", "needs"]


@dataclass
class ApiContext:
    settings: ApiSettings
    store: MetadataStore
    audit: AuditLog
    keys: ApiKeys
    auth: Authenticator
    launcher: RunLauncher
    #: how many uploaded definitions are parsed at once; made at start, in the server's event loop
    parsers: anyio.CapacityLimiter | None = None


async def context(request: Request) -> ApiContext:
    # async: a plain function here would cost every request a hop to the thread pool
    ctx: ApiContext = request.app.state.udop
    return ctx


# Declared as security schemes so that /docs offers both ways to authenticate.
_bearer = HTTPBearer(auto_error=False, description="a JWT (HS256 or from the OIDC issuer) or an API key")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="a service account's API key")


def needs(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the caller and checks it has at least ``role``.

    Credentials verified before are taken from the authenticator's cache on the event loop; only the
    first use of a credential goes to a worker thread (an API key is a database read, a JWKS a fetch).
    """

    async def check(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        api_key: Annotated[str | None, Security(_api_key)],
        ctx: Annotated[ApiContext, Depends(context)],
    ) -> Principal:
        if bearer is not None:
            authorization: str | None = f"{bearer.scheme} {bearer.credentials}"
        else:
            authorization = request.headers.get("authorization")
        # a request with a body was authenticated by the guard before its body was read
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:
            principal = ctx.auth.cached(authorization, api_key)
            if principal is None:
                principal = await run_in_threadpool(ctx.auth.authenticate, authorization, api_key)
            request.state.principal = principal  # the audit middleware reads it
        require(principal, role)
        return principal

    check.__name__ = f"needs_{role.label}"
    return check


Ctx = Annotated[ApiContext, Depends(context)]
Viewer = Annotated[Principal, Depends(needs(Role.VIEWER))]
Operator = Annotated[Principal, Depends(needs(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(needs(Role.ADMIN))]
Anyone = Annotated[Principal, Depends(needs(Role.NONE))]  # authenticated, any role or none

__all__ += ["Admin", "Anyone", "AuthError", "Ctx", "Operator", "Viewer"]
