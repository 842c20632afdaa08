"""The circuit breaker's state is shared by separate processes through the state store (real Redis,
and the SQLite file the embedded default uses): failures counted in different processes open it for
all, and once the cooldown is over exactly one process probes while the others fail fast."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from udop.state import open_state_store

pytestmark = pytest.mark.slow  # each case starts three Python processes that fork nine callers

REDIS_URL = "redis://127.0.0.1:6379/0"
# long enough that no stall of a loaded machine can end it between two steps of the test; the test ends
# it itself, by moving the shared "open until" time into the past (the breaker's own cooldown timing is
# unit-tested in tests/unit/connectors/test_framework.py)
COOLDOWN = 600.0

# one Python process that imports udop once, then forks N callers, as a prefork worker pool does: each
# caller opens its own state store, prints "ready", and makes one call through the breaker of connection
# NAME when it reads its "go" (so the seconds Python takes to start do not count), then prints what
# happened to it. Lines are written with one os.write each, so the callers' lines never interleave.
WORKER = """
import os
import sys
from udop.connectors import CircuitBreaker, CircuitOpen
from udop.connectors.breaker import BreakerSettings
from udop.errors import ConnectionFailed
from udop.state import open_state_store

url, name, action, n = sys.argv[1:5]


def call():
    breaker = CircuitBreaker(open_state_store(url), name, BreakerSettings(failures=4, cooldown=COOLDOWN))
    os.write(1, b"ready\\n")
    if os.read(0, 3) != b"go\\n":  # the test went away (its end of the pipe closed)
        return
    try:
        if action == "fail":
            with breaker.guard():
                raise ConnectionFailed("the database is down")
        else:
            breaker.before()  # and keeps the probe: this process never reports back
            os.write(1, b"probe\\n")
    except CircuitOpen:
        os.write(1, b"open\\n")
    except ConnectionFailed:
        os.write(1, b"failed\\n")


children = []
for _ in range(int(n)):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            call()
            code = 0
        finally:
            os._exit(code)
    children.append(pid)
failed = [pid for pid in children if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0]
sys.exit(1 if failed else 0)
""".replace("COOLDOWN", str(COOLDOWN))


def _start(url: str, name: str, action: str, n: int) -> subprocess.Popen[str]:
    """A process forking ``n`` callers; returns once every caller is ready (its store open)."""
    proc = subprocess.Popen([sys.executable, "-c", WORKER, url, name, action, str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready = [proc.stdout.readline() for _ in range(n)]
    assert ready == ["ready\n"] * n, f"the callers did not all start (stderr above): {ready}"
    return proc


def _go(proc: subprocess.Popen[str], n: int) -> list[str]:
    """Let the ``n`` callers make their calls at once; their outcomes, sorted."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n" * n)
    proc.stdin.flush()
    # read each answer as it is printed: a process may take seconds more to exit on a busy machine
    return sorted(proc.stdout.readline().strip() for _ in range(n))


@pytest.fixture(params=["redis", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    request.applymarker(pytest.mark.redis)
    yield REDIS_URL


def test_failures_in_separate_processes_open_one_breaker_and_one_probes(url: str) -> None:
    name = f"wh-{uuid.uuid4().hex}"
    failing, fifth, probing = (_start(url, name, "fail", 4), _start(url, name, "fail", 1),
                               _start(url, name, "probe", 4))
    store = open_state_store(url)
    try:
        # four processes fail once each: together they reach the limit of four
        assert _go(failing, 4) == ["failed"] * 4
        # so a fifth process is not even let through
        assert _go(fifth, 1) == ["open"]
        # the cooldown ends: what the shared store holds once its wall-clock time has passed
        until = store.get(f"udop:breaker:{name}:open_until")
        assert until is not None and float(until) > time.time() + COOLDOWN / 2  # opened, for the cooldown
        store.set(f"udop:breaker:{name}:open_until", str(time.time() - 1))
        # cooldown over: of four processes asking at once exactly one probes, the others fail fast
        assert _go(probing, 4) == ["open", "open", "open", "probe"]
        for proc in (failing, fifth, probing):
            assert proc.wait(timeout=120) == 0  # every caller exited cleanly
    finally:
        for proc in (failing, fifth, probing):
            proc.kill()
            proc.communicate()  # closes its stdin: a caller still waiting for "go" ends
        for suffix in ("failures", "open_until", "probe"):
            store.delete(f"udop:breaker:{name}:{suffix}")
        store.close()
