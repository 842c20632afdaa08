"""The API served for real: uvicorn on a free loopback port in a thread, a store per test, tokens.

Tests talk to it over HTTP with httpx, exactly as a client would. Task functions live in a module
written into the test's folder under a unique name, and coordinate with the test through a
``threading.Event`` (the server runs in this process, so the test can open the gate a task waits at).
"""

from __future__ import annotations

import importlib
import socket
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
import yaml

SECRET = "test-secret-" + "s" * 40  # HS256 needs >= 32 bytes


def open_test_store(url: str) -> Any:
    from udop.store import open_store

    return open_store(url)


TASKS = """
import threading
import time

import pyarrow as pa

from udop.errors import FatalError

gate = threading.Event()
entered = threading.Event()  # a task is waiting at the gate (so it is in flight, not about to start)
left = threading.Event()  # wait_for_gate returned (after the gate opened), e.g. late, after a cancel
fail = {"on": False}


def wait_for_gate(context, inputs, **args):
    entered.set()
    if not gate.wait(60):
        raise FatalError("the test never opened the gate")
    left.set()
    return {"waited": True}


# as wait_for_gate, but it stops when told to (as most tasks do): a cancel is not kept waiting for
# the executor's stop grace
def wait_for_gate_or_cancel(context, inputs, **args):
    entered.set()
    deadline = time.monotonic() + 60
    while not gate.wait(0.02):
        if context.cancel_event.is_set():
            return {"waited": False}
        if time.monotonic() > deadline:
            raise FatalError("the test never opened the gate")
    return {"waited": True}


def maybe_fail(context, inputs, **args):
    if fail["on"]:
        raise FatalError("told to fail by the test")
    return {"ok": True}


def numbers(context, inputs, n=5):
    return pa.table({"n": pa.array(range(int(n)), pa.int64())})


def chatty(context, inputs, message="hello", fail=False, **args):
    import logging

    logging.getLogger("user.code").warning("said %s in %s", message, context.task_id)
    print(f"printed {message}")
    if fail:
        raise ValueError(f"failed {message}")
    return {"said": message}


def total(context, inputs, source="numbers"):
    table = inputs[source].to_arrow() if hasattr(inputs[source], "to_arrow") else inputs[source]
    return {"sum": sum(table.column("n").to_pylist())}
"""


def free_port() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any) -> None:
        self.sock = free_port()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60  # a loaded 2-core CI machine can take a while to import and start
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        # shutting down includes the launcher's close, which waits for its runs to stop: a task that
        # ignores its cancel event is given the executor's stop_grace (UDOP_STOP_GRACE, 10 s) before it
        # is abandoned
        self.thread.join(60)
        self.sock.close()


def make_token(
    role: str | list[str] | None, *, sub: str = "alice", secret: str = SECRET, ttl: int = 600, **claims: Any
) -> str:
    body: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + ttl, "iat": int(time.time()), **claims}
    if role is not None:
        body["role"] = role
    return jwt.encode(body, secret, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Api:
    url: str
    store: Any
    engine: Any
    tasks: ModuleType
    module: str
    clients: list[httpx.Client] = field(default_factory=list)
    server: LiveServer | None = None

    def stop(self) -> None:
        """Shut the server down as Ctrl-C would (the store stays open for the test to read)."""
        assert self.server is not None
        self.server.__exit__()
        assert not self.server.thread.is_alive(), "the server did not finish shutting down"

    def client(self, role: str | None = "admin", *, sub: str | None = None, **kw: Any) -> httpx.Client:
        headers = bearer(make_token(role, sub=sub or f"{role}-user")) if role else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)
        self.clients.append(c)
        return c

    def definition(self, name: str, tasks: list[dict[str, Any]], params: dict[str, Any] | None = None) -> str:
        spec: dict[str, Any] = {"tasks": tasks}
        if params:
            spec["params"] = params
        doc = {"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": name}, "spec": spec}
        return yaml.safe_dump(doc, sort_keys=False)

    def task(self, task_id: str, fn: str, **fields: Any) -> dict[str, Any]:
        return {"id": task_id, "type": "python", "callable": f"{self.module}:{fn}", **fields}

    def register(self, text: str, client: httpx.Client | None = None) -> httpx.Response:
        c = client or self.client("operator")
        return c.post("/pipelines", content=text, headers={"Content-Type": "application/yaml"})

    def wait_for_run(self, run_id: str, states: set[str], timeout: float = 30) -> dict[str, Any]:
        c = self.client("viewer")
        deadline = time.monotonic() + timeout
        while True:
            body = c.get(f"/runs/{run_id}").json()
            if body["state"] in states:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {body['state']} after {timeout}s: {body}")
            time.sleep(0.05)

    def audit_rows(self) -> list[dict[str, Any]]:
        from sqlalchemy import select

        from udop.api.audit import audit_log_table

        with self.engine.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(select(audit_log_table).order_by(audit_log_table.c.id)).mappings()
            ]


@pytest.fixture
def tasks_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, ModuleType]]:
    name = f"udop_api_tasks_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("UDOP_PYTHON_MODULES", name)  # the server runs python tasks from it only
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(TASKS))
    sys.path.insert(0, str(tmp_path))
    module = importlib.import_module(name)
    yield name, module
    module.gate.set()  # release any task still waiting, so its worker thread ends
    sys.path.remove(str(tmp_path))
    sys.modules.pop(name, None)


@pytest.fixture
def api_factory(
    tmp_path: Path, tasks_module: tuple[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Api]]:
    from udop.api import ApiSettings, create_app

    # the server's sandbox: sources and targets of these tests live in the test's folder
    monkeypatch.setenv("UDOP_SANDBOX_ROOTS", str(tmp_path))
    opened: list[tuple[LiveServer, Api]] = []

    def start(**settings: Any) -> Api:
        url = settings.pop("database_url", f"sqlite:///{tmp_path / 'meta.db'}")
        store = open_test_store(url)
        cfg = ApiSettings(database_url=url, data_root=str(tmp_path / "data"), jwt_secret=SECRET, **settings)
        app = create_app(cfg, store=store)
        server = LiveServer(app).__enter__()
        api = Api(
            url=server.url,
            store=store,
            engine=store.engine,
            tasks=tasks_module[1],
            module=tasks_module[0],
            server=server,
        )
        opened.append((server, api))
        return api

    yield start
    for server, api in opened:
        api.tasks.gate.set()
        for c in api.clients:
            c.close()
        server.__exit__()
        api.store.close()


@pytest.fixture
def api(api_factory: Callable[..., Api]) -> Api:
    return api_factory()
