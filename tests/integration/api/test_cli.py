"""``udop serve`` as a user starts it, and ``udop api-key`` (create, list, revoke) against the store
the server reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from .conftest import SECRET, Api, bearer, free_port, make_token

UDOP = Path(sys.executable).parent / "udop"


@pytest.mark.slow  # a fresh interpreter importing FastAPI and SQLAlchemy
def test_udop_serve_serves_the_api_until_stopped(tmp_path: Path) -> None:
    sock = free_port()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "UDOP_HOME": str(tmp_path / ".udop"), "UDOP_JWT_SECRET": SECRET}
    proc = subprocess.Popen(
        [str(UDOP), "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "udop serve did not answer"
                time.sleep(0.1)
        assert health.json()["status"] == "ok"
        runs = httpx.get(f"http://127.0.0.1:{port}/runs", headers=bearer(make_token("viewer")))
        assert runs.json() == {"items": [], "next_cursor": None}
        assert (tmp_path / ".udop" / "udop.db").exists()  # the embedded default store
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    # uvicorn shuts down cleanly, then re-raises the signal it caught
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Traceback" not in err


@pytest.mark.slow
def test_udop_serve_refuses_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "UDOP_HOME": str(tmp_path), "UDOP_JWT_SECRET": "short"}
    done = subprocess.run(
        [str(UDOP), "serve", "--port", "1"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert "UDOP_JWT_SECRET" in done.stderr
    assert "32 bytes" in done.stderr
    assert "Traceback" not in done.stderr


def test_api_keys_from_the_command_line(
    api_factory: Callable[..., Api], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from udop.api.cli import api_key

    # a key revoked with the CLI stops working on a running server within UDOP_AUTH_CACHE_SECONDS
    # (test_http_fast_paths holds that bound); with 0 it is at once, which this test can assert
    api = api_factory(auth_cache_seconds=0)

    monkeypatch.setenv("UDOP_DATABASE_URL", f"sqlite:///{tmp_path / 'meta.db'}")  # the server's store
    runner = CliRunner()
    created = runner.invoke(api_key, ["create", "--name", "nightly-etl", "--role", "operator"])
    assert created.exit_code == 0, created.output
    fields = dict(line.split(":", 1) for line in created.stdout.splitlines() if ":" in line)
    key, key_id = fields["key"].strip(), fields["id"].strip()

    with httpx.Client(base_url=api.url, headers={"X-API-Key": key}) as svc:
        assert svc.get("/me").json()["role"] == "operator"
        listed = runner.invoke(api_key, ["list"])
        assert key_id in listed.stdout
        assert "nightly-etl" in listed.stdout
        assert key not in listed.stdout
        assert runner.invoke(api_key, ["revoke", key_id]).exit_code == 0
        assert svc.get("/me").status_code == 401
    again = runner.invoke(api_key, ["revoke", key_id])
    assert again.exit_code != 0
    assert "no active API key" in again.output
    bad = runner.invoke(api_key, ["create", "--name", "x", "--role", "root"])
    assert bad.exit_code == 2
    audit = api.client("admin").get("/audit", params={"actor": "cli"}).json()["items"]
    assert [i["action"] for i in audit] == ["revoke_api_key", "create_api_key"]
