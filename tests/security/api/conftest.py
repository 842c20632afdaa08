"""A real ``udop serve`` process, attacked over HTTP as a stranger or an operator would.

One server per metadata backend (SQLite under UDOP_HOME, and PostgreSQL in a database of its own) for
each test module, started as docs/api.md says: a JWT secret, an issuer and audience, a code folder.
Each test talks from its own loopback address (127.x.y.z), so the per-client limit on failed
authentication one test provokes never answers another test's requests. The server's log goes to a
file the tests read: no traceback, no secret may appear in it.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from sqlalchemy import Engine, create_engine, select

SECRET = "security-suite-secret-" + "k" * 40
ISSUER = "https://udop.example.test"
AUDIENCE = "udop-api"
UDOP = Path(sys.executable).parent / "udop"
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
FAILURE_LIMIT = 5

TASKS = """
def hello(context, inputs, **args):
    return {"hello": "world"}
"""

_addresses = itertools.count(2)


def _next_address() -> str:
    n = next(_addresses) + (os.getpid() % 200) * 5000  # xdist workers share the loopback net
    return f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{max(n & 255, 1)}"


def token(
    role: str | None = "admin",
    *,
    sub: str = "mallory",
    secret: str = SECRET,
    ttl: int = 600,
    iat: int | None = None,
    omit: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": iat if iat is not None else now,
    }
    body["exp"] = body["iat"] + ttl
    if role is not None:
        body["role"] = role
    body.update(claims)
    for name in omit:
        body.pop(name, None)
    return jwt.encode(body, secret, algorithm="HS256")


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@dataclass
class Served:
    """A running ``udop serve``; ``client()`` talks to it from an address of its own."""

    url: str
    port: int
    backend: str
    home: Path
    engine: Engine
    log: Path
    proc: subprocess.Popen[bytes]
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, role: str | None = "admin", *, bearer: str | None = None, **kw: Any) -> httpx.Client:
        headers = {}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        elif role is not None:
            headers["Authorization"] = f"Bearer {token(role, sub=f'{role}-user')}"
        transport = httpx.HTTPTransport(local_address=_next_address())
        c = httpx.Client(base_url=self.url, headers=headers, timeout=60, transport=transport, **kw)
        self.clients.append(c)
        return c

    def audit_since(self, last: int) -> list[dict[str, Any]]:
        from udop.api.audit import audit_log_table as t

        with self.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.id > last).order_by(t.c.id)).mappings()
            return [dict(r) for r in rows]

    def last_audit_id(self) -> int:
        rows = self.audit_since(0)
        return rows[-1]["id"] if rows else 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def raw(self, head: bytes, body: bytes = b"", *, wait: float = 30) -> bytes:
        """Send ``head`` (and ``body``) on a plain socket and return what the server answers."""
        with socket.create_connection(
            ("127.0.0.1", self.port), timeout=wait, source_address=(_next_address(), 0)
        ) as sock:
            sock.sendall(head + body)
            chunks = []
            try:
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
                    if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                        break
            except TimeoutError:
                pass
        return b"".join(chunks)


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def definition(name: str, tasks: list[dict[str, Any]], **spec: Any) -> str:
    doc = {
        "apiVersion": "udop/v1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {"tasks": tasks, **spec},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_healthy(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180  # a loaded CI machine starts Python slowly
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "udop serve did not answer"
        time.sleep(0.2)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    backend: str = request.param
    root = tmp_path_factory.mktemp(f"serve-{backend}")
    home = root / ".udop"
    code = root / "code"
    code.mkdir()
    (root / "sources").mkdir()
    (code / "sec_tasks.py").write_text(textwrap.dedent(TASKS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("UDOP_") and k not in ("PYTHONPATH",)}
    env.update(
        UDOP_HOME=str(home),
        UDOP_DATA_ROOT=str(root / "data"),
        UDOP_JWT_SECRET=SECRET,
        UDOP_JWT_ISSUER=ISSUER,
        UDOP_JWT_AUDIENCE=AUDIENCE,
        UDOP_CODE_DIR=str(code),
        # the one folder besides the data root that this server's definitions may read (sandbox)
        UDOP_SANDBOX_ROOTS=str(root / "sources"),
        UDOP_AUTH_FAILURE_LIMIT=str(FAILURE_LIMIT),
        UDOP_AUTH_FAILURE_WINDOW="600",
    )
    database = None
    if backend == "postgres":
        database = f"udop_sec_{uuid.uuid4().hex[:12]}"
        _admin(f'CREATE DATABASE "{database}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
        env["UDOP_DATABASE_URL"] = url
    else:
        url = f"sqlite:///{home / 'udop.db'}"
    port = _free_port()
    log = root / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(UDOP), "serve", "--port", str(port), "--log-level", "info"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
    try:
        _wait_until_healthy(port, proc, log)
    except BaseException:
        proc.kill()  # a server that never answered must not outlive the test session
        proc.wait(10)
        if database:
            _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        raise
    engine = create_engine(url)
    server = Served(
        url=f"http://127.0.0.1:{port}",
        port=port,
        backend=backend,
        home=home,
        engine=engine,
        log=log,
        proc=proc,
    )
    yield server
    for c in server.clients:
        c.close()
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    engine.dispose()
    if database:
        _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    # whatever the module threw at it, the server never logged a traceback or the secret
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-4000:]
    assert SECRET not in text


#: this module, taken while it is being imported: later ``sys.modules["conftest"]`` may be another
#: folder's conftest (tests/security/sandbox has one too, and neither folder is a package)
_HELPERS = sys.modules[__name__]


@pytest.fixture
def helpers() -> Any:
    """The module-level helpers, for test modules (a conftest is not importable by name)."""
    return _HELPERS
