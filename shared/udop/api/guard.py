"""The checks every request passes before a handler, FastAPI or the authenticator read any of it.

In order: characters no handler should see (NUL and control characters in the path or query: 400), a
client that failed authentication too often (429 with ``Retry-After``), a declared body over the limit
(413 before a byte is read), credentials of a request with a body (401/403 before its body is read),
and the body's size while it streams in (413 as soon as it passes the limit). A flood of large
unauthenticated uploads therefore costs the server headers, never bodies.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import OrderedDict, deque
from urllib.parse import unquote_to_bytes

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from udop.api.auth import Authenticator, AuthError

__all__ = ["FailureLimiter", "RequestGuard", "has_bad_characters"]

#: answered without credentials, so neither limited nor pre-authenticated
_PUBLIC = frozenset({"/health"})

#: C0 controls (NUL included), DEL and lone surrogates: no name, id or cursor udop issues holds them,
#: PostgreSQL refuses NUL in text, and logs and terminals misread the rest
_BAD = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_BAD_BYTES = re.compile(rb"[\x00-\x1f\x7f]")


def has_bad_characters(text: str) -> bool:
    return _BAD.search(text) is not None


class FailureLimiter:
    """Counts each client's authentication failures in a sliding window; over ``limit`` it is refused.

    Per process: on Lambda each warm instance counts alone, which still slows a guesser by the factor
    of instances it reaches. ``max_clients`` bounds the memory a spoofed-address flood can take.
    """

    def __init__(self, limit: int, window: float, max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str, now: float | None = None) -> int | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        if self.limit <= 0:
            return None
        hits = self._failures.get(client)
        if not hits:
            return None
        now = time.monotonic() if now is None else now
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) < self.limit:
            return None
        return max(1, math.ceil(hits[0] + self.window - now))

    def failed(self, client: str, now: float | None = None) -> None:
        if self.limit <= 0:
            return
        hits = self._failures.get(client)
        if hits is None:
            hits = self._failures[client] = deque(maxlen=self.limit)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(client)
        hits.append(time.monotonic() if now is None else now)


class _BodyTooLarge(Exception):
    pass


class RequestGuard:
    """ASGI middleware; sits inside the audit middleware so that what it refuses is audited."""

    def __init__(
        self, app: ASGIApp, *, auth: Authenticator, max_body_bytes: int, limiter: FailureLimiter
    ) -> None:
        self.app = app
        self.auth = auth
        self.max_body = max_body_bytes
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        client = scope.get("client")
        ip = str(client[0]) if client else "unknown"
        path: str = scope.get("path", "")
        headers = Headers(scope=scope)

        if has_bad_characters(path) or _BAD_BYTES.search(unquote_to_bytes(scope.get("query_string", b""))):
            await _refuse(send, state, 400, "the path or query holds a control character (NUL, ...)")
            return
        public = path in _PUBLIC
        if not public and (wait := self.limiter.retry_after(ip)) is not None:
            await _refuse(
                send,
                state,
                429,
                f"too many failed authentications from this client; retry in {wait} s",
                {"Retry-After": str(wait)},
            )
            return
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or len(declared) > 18):
            await _refuse(send, state, 400, "the Content-Length header is not a number")
            return
        if declared is not None and int(declared) > self.max_body:
            await _refuse(send, state, 413, f"a request body may have at most {self.max_body} bytes")
            return
        has_body = (declared is not None and int(declared) > 0) or "chunked" in headers.get(
            "transfer-encoding", ""
        ).lower()
        if has_body and not public:
            try:
                authorization, api_key = headers.get("authorization"), headers.get("x-api-key")
                state["principal"] = self.auth.cached(authorization, api_key) or await run_in_threadpool(
                    self.auth.authenticate, authorization, api_key
                )
            except AuthError as exc:
                if exc.principal is not None:
                    state["principal"] = exc.principal
                detail = exc.reason
                if exc.claimed:
                    detail = f"{exc.reason} (credentials claimed {exc.claimed!r}, unverified)"
                extra = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
                if exc.status == 401:
                    self.limiter.failed(ip)
                await _refuse(send, state, exc.status, exc.reason, extra, audit_detail=detail)
                return

        received = 0
        overflowed = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    overflowed = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                if overflowed:  # whatever the app made of the cut body, the answer is 413
                    started = True
                    await self._too_large(send, state)
                    return
                started = True
                if message["status"] == 401:
                    self.limiter.failed(ip)
            elif overflowed:
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not started:
                await self._too_large(send, state)

    async def _too_large(self, send: Send, state: dict[str, object]) -> None:
        await _refuse(send, state, 413, f"a request body may have at most {self.max_body} bytes")


async def _refuse(
    send: Send,
    state: dict[str, object],
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
    *,
    audit_detail: str | None = None,
) -> None:
    state["audit_detail"] = audit_detail or detail
    state["audit_always"] = True  # a refused request is audited whatever its method
    state.setdefault("audit_action", "refused_by_guard")
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # the body (if any) was not read: closing is cheaper than draining what a flood still sends
    raw.append((b"connection", b"close"))
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
