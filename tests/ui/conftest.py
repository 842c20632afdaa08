"""The web UI in a real browser: one ``udop`` API server per test module (uvicorn in a thread, SQLite,
the LocalExecutor), Debian's Chromium driven by Playwright through ``executable_path``.

Playwright's own browser download is not used (nor reachable here). Without ``/usr/bin/chromium`` the
browser tests skip and say how to get it; ``scripts/test.sh`` installs it when it can (root + apt-get).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

# anyio imports its file module lazily, on the first static file a server thread sends; under pytest that
# import goes through assertion rewriting (ast.parse), and CPython 3.11's parser is not safe against a
# parse running in the main thread at the same time ("AST constructor recursion depth mismatch").
# Imported here, in the main thread, before any server starts.
from anyio import open_file as _anyio_open_file  # noqa: F401
from tests.integration.api.conftest import SECRET, LiveServer, bearer, make_token

CHROMIUM = Path(os.environ.get("UDOP_CHROMIUM", "/usr/bin/chromium"))
UI_DIR = Path(__file__).resolve().parents[2] / "ui"
#: screenshots of the main pages, kept after the run for a person to look at
ARTIFACTS = (
    Path(os.environ.get("UDOP_TEST_ARTIFACTS", Path(tempfile.gettempdir()) / "udop-test-artifacts")) / "ui"
)

TASKS = """
import threading

from udop.errors import FatalError
from udop.tasks.contract import CheckResult, Manifest, TaskResult

fail = {"on": True}
gate = threading.Event()
gate.set()
SOURCE = "postgres://db:5432/shop.public.orders"


def extract(context, inputs, n=3, label="x", shout=False, **args):
    print(f"extracting {n} rows for {label}")
    return TaskResult(output=Manifest(uri=f"file:///lake/{context.run_id}/orders", rows=int(n),
                                      bytes=1234, schema_fingerprint="sha256:0f1e2d3c4b5a69788796a5b4"),
                      inputs=(SOURCE,))


def check(context, inputs, **args):
    return TaskResult(value={"checked": True}, checks=(
        CheckResult(rule="not_null(email)", severity="warn", passed=False, failing_rows=1,
                    sample=[{"id": 7, "email": "***"}], message="1 row has no email"),
        CheckResult(rule="unique(id)", severity="error", passed=True, message="ids are unique"),
    ))


def wait(context, inputs, **args):
    # a well-behaved long task: it ends when the gate opens or when its run is cancelled (the UI's
    # Cancel reaches it through the executor's cooperative stop; an uncooperative task would hold the
    # run for the executor's stop_grace first, which the API tests cover)
    for _ in range(600):
        if gate.wait(0.1):
            return {"waited": True}
        if context.cancelled:
            raise FatalError("cancelled")
    raise FatalError("the test never opened the gate")


def flaky(context, inputs, **args):
    print("flaky says hello from the log")
    if fail["on"]:
        raise FatalError("told to fail by the test")
    return {"ok": True}


def noop(context, inputs, **args):
    return {"ok": True}
"""


@dataclass
class UiServer:
    url: str
    store: Any
    tasks: ModuleType
    operator_key: str
    admin: httpx.Client

    def token(self, role: str, sub: str | None = None) -> str:
        return str(make_token(role, sub=sub or f"{role}-user", ttl=3600))

    def trigger(self, pipeline: str, params: dict[str, Any] | None = None) -> str:
        r = self.admin.post(f"/pipelines/{pipeline}/runs", json={"params": params or {}})
        assert r.status_code == 202, r.text
        return str(r.json()["run_id"])

    def wait_for(self, run_id: str, states: set[str], timeout: float = 30) -> dict[str, Any]:
        import time

        deadline = time.monotonic() + timeout
        while True:
            body: dict[str, Any] = self.admin.get(f"/runs/{run_id}").json()
            if body["state"] in states:
                return body
            assert time.monotonic() < deadline, f"run {run_id} still {body['state']}"
            time.sleep(0.05)


def _definition(name: str, module: str, tasks: list[dict[str, Any]], **spec: Any) -> str:
    for t in tasks:
        t.setdefault("type", "python")
        t["callable"] = f"{module}:{t['callable']}"
    doc = {
        "apiVersion": "udop/v1",
        "kind": "Pipeline",
        "metadata": {"name": name, "owner": "data-team", "tags": ["ui", "demo"]},
        "spec": {**spec, "tasks": tasks},
    }
    return json.dumps(doc)


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    from udop.api import ApiSettings, create_app
    from udop.store import open_store

    root = tmp_path_factory.mktemp("ui-server")
    module = f"udop_ui_tasks_{uuid.uuid4().hex[:10]}"
    (root / f"{module}.py").write_text(textwrap.dedent(TASKS))
    sys.path.insert(0, str(root))
    tasks = importlib.import_module(module)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UDOP_PYTHON_MODULES", module)
        mp.setenv("UDOP_SANDBOX_ROOTS", str(root))
        mp.setenv("UDOP_HOME", str(root / "home"))
        url = f"sqlite:///{root / 'meta.db'}"
        store = open_store(url)
        settings = ApiSettings(database_url=url, data_root=str(root / "data"), jwt_secret=SECRET)
        server = LiveServer(create_app(settings, store=store)).__enter__()
        admin = httpx.Client(
            base_url=server.url, headers=bearer(make_token("admin", sub="admin-user")), timeout=30
        )
        try:
            params = {
                "n": {"type": "int", "default": 3},
                "label": {"type": "str", "default": "x"},
                "shout": {"type": "bool", "default": False},
            }
            shop: list[dict[str, Any]] = [
                {
                    "id": "extract",
                    "callable": "extract",
                    "args": {"n": "${params.n}", "label": "${params.label}"},
                },
                {"id": "check", "callable": "check", "depends_on": ["extract"]},
                {"id": "report", "callable": "noop", "depends_on": ["check"]},
                {"id": "archive", "callable": "noop", "depends_on": ["extract"]},
            ]
            for text in (
                _definition(
                    "shop", module, [dict(t) for t in shop], params=params, schedule={"cron": "0 6 * * *"}
                ),
                # a second version: the pipeline page diffs the two
                _definition(
                    "shop",
                    module,
                    [dict(t) for t in shop]
                    + [{"id": "notify", "callable": "noop", "depends_on": ["report", "archive"]}],
                    params=params,
                    schedule={"cron": "0 6 * * *"},
                ),
                _definition(
                    "flaky",
                    module,
                    [
                        {"id": "prepare", "callable": "noop"},
                        {"id": "flaky", "callable": "flaky", "depends_on": ["prepare"]},
                        {"id": "publish", "callable": "noop", "depends_on": ["flaky"]},
                    ],
                ),
            ):
                r = admin.post("/pipelines", content=text, headers={"Content-Type": "application/json"})
                assert r.status_code in (200, 201), r.text
            created = admin.post("/api-keys", json={"name": "ui-operator", "role": "operator"})
            assert created.status_code == 201, created.text
            yield UiServer(
                url=server.url, store=store, tasks=tasks, operator_key=created.json()["key"], admin=admin
            )
        finally:
            tasks.gate.set()
            admin.close()
            server.__exit__()
            store.close()
            sys.path.remove(str(root))
            sys.modules.pop(module, None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"BROWSER TESTS SKIPPED: no Chromium at {CHROMIUM}. Install Debian's package "
            "(`apt-get install -y chromium`, which scripts/test.sh does when run as root) or set UDOP_CHROMIUM."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh tab with its own sessionStorage (nobody is signed in)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, f"the page threw: {errors}"


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
