"""How the UI is served and shipped: redirects, the assets without credentials but the data only with
them, the page's security headers, the committed build being this lockfile's output, the wheel."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import httpx
import pytest

from udop.api.ui import UI_DIST

from .conftest import UI_DIR, UiServer

REPO = UI_DIR.parent


def test_root_and_ui_redirect_to_the_page_which_needs_no_credentials(ui_server: UiServer) -> None:
    with httpx.Client(base_url=ui_server.url) as anonymous:
        for path in ("/", "/ui"):
            r = anonymous.get(path)
            assert r.status_code == 307 and r.headers["location"] == "ui/", path  # relative: keeps a prefix
        page = anonymous.get("/ui/", follow_redirects=True)
        assert page.status_code == 200 and '<script type="module" src="app.js">' in page.text
        script = anonymous.get("/ui/app.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        # the page holds nothing: the data behind it still needs credentials
        assert anonymous.get("/runs").status_code == 401
        assert anonymous.get("/pipelines").status_code == 401


def test_the_page_is_served_with_a_strict_content_security_policy(ui_server: UiServer) -> None:
    r = httpx.get(f"{ui_server.url}/ui/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp  # no inline script, no other origin (no CDN)
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{ui_server.url}/ui/nope.js").status_code == 404


def test_committed_build_is_what_the_lockfile_builds(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (UI_DIR / "node_modules" / "esbuild").exists():
        pytest.skip(
            "UI BUILD CHECK SKIPPED: needs node and `npm ci --prefix ui` (scripts/bootstrap.sh runs it)"
        )
    subprocess.run([node, str(UI_DIR / "build.mjs"), str(tmp_path)], check=True, timeout=120)
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == sorted(p.name for p in UI_DIST.iterdir())
    stale = [name for name in built if (tmp_path / name).read_bytes() != (UI_DIST / name).read_bytes()]
    assert not stale, (
        f"{stale} differ from ui/src: run `node ui/build.mjs` and commit shared/udop/api/ui_dist/"
    )


@pytest.mark.slow
def test_the_wheel_ships_the_ui(tmp_path: Path) -> None:
    uv = REPO / ".tools" / "bin" / "uv"
    if not uv.exists():
        pytest.skip("needs the project's uv (scripts/bootstrap.sh installs it)")
    subprocess.run(
        [str(uv), "build", "--wheel", "--quiet", "-o", str(tmp_path), str(REPO)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("udop-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("index.html", "app.js", "app.css"):
        assert f"udop/api/ui_dist/{asset}" in names


def test_the_api_lambda_serves_the_ui_through_api_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On AWS the same app answers API Gateway's proxy events: the page, its script, the redirect."""
    import importlib.util
    import json
    import uuid

    from tests.integration.api.test_lambda import HANDLER, FakeLambdaContext, load_event

    monkeypatch.setenv("UDOP_DATABASE_URL", f"sqlite:///{tmp_path / 'meta.db'}")
    monkeypatch.setenv("UDOP_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("UDOP_JWT_SECRET", "lambda-ui-secret-" + "x" * 32)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "udop-api")
    spec = importlib.util.spec_from_file_location(f"udop_api_lambda_ui_{uuid.uuid4().hex[:8]}", HANDLER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:

        def get(path: str) -> dict[str, object]:
            event = load_event("get_health.json")
            event.update(path=path, resource="/{proxy+}", pathParameters={"proxy": path.lstrip("/")})
            event["requestContext"].update(resourcePath="/{proxy+}", path=f"/prod{path}")
            response: dict[str, object] = module.handler(event, FakeLambdaContext())
            return response

        page = get("/ui/")
        assert page["statusCode"] == 200, page
        assert '<script type="module" src="app.js">' in str(page["body"])
        assert "script-src 'self'" in json.dumps(page["headers"])
        script = get("/ui/app.js")
        assert script["statusCode"] == 200 and "javascript" in json.dumps(script["headers"])
        root = get("/")
        assert root["statusCode"] == 307 and json.dumps(root["headers"]).find('"ui/"') > 0
    finally:
        module.APP.state.udop.launcher.close()
        module.APP.state.udop.store.close()


def test_without_a_build_there_is_no_ui_and_the_api_is_unaffected(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from tests.integration.api.conftest import LiveServer

    from udop.api.ui import mount_ui

    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    mount_ui(app, folder=tmp_path)  # an empty folder: no index.html
    with LiveServer(app) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/ui/").status_code == 404
        assert client.get("/").status_code == 404
        assert client.get("/health").json() == {"status": "ok"}
