"""The web UI: static assets built from ``ui/`` (committed under ``ui_dist/``) served at ``/ui/``.

The assets hold no data and no secret: every figure on a page comes from the REST API, called by the
browser with the credential the user typed (``X-API-Key`` or a bearer token), so the UI has exactly the
API's authentication, roles and audit. ``/`` and ``/ui`` redirect to ``/ui/``. A strict Content Security
Policy keeps the page to its own scripts and to this server.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["UI_DIST", "mount_ui"]

#: built by ``node ui/build.mjs`` from ui/package-lock.json; shipped in the wheel
UI_DIST = Path(__file__).with_name("ui_dist")

#: the page loads its own script and stylesheet and talks to this server only; nothing inline, no CDN
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # a new build must be picked up at once: the files are small and revalidated each load
    (b"cache-control", b"no-cache"),
]


class _UiHeaders:
    """Adds the security headers to every answer of the static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def mount_ui(app: FastAPI, folder: Path = UI_DIST) -> None:
    """Serve the UI at ``/ui/`` when its assets are there (a source checkout without a build has none)."""
    if not (folder / "index.html").is_file():
        return

    @app.get("/", include_in_schema=False)
    @app.get("/ui", include_in_schema=False)
    def to_ui() -> RedirectResponse:
        # relative, so a proxy's or an API Gateway stage's path prefix is kept ("/prod/" -> "/prod/ui/")
        return RedirectResponse("ui/", status_code=307)

    app.mount("/ui", _UiHeaders(StaticFiles(directory=folder, html=True)), name="ui")
