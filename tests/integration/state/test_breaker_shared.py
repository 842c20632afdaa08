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

pytestmark = pytest.mark.slow  # each case starts a dozen Python processes

REDIS_URL = "redis://127.0.0.1:6379/0"
COOLDOWN = 3.0

# one process: one call through the breaker of connection NAME, made when told "go" on stdin (so the
# seconds Python takes to start do not count against the cooldown); prints what happened to it
WORKER = """
import sys
from udop.connectors import CircuitBreaker, CircuitOpen
from udop.connectors.breaker import BreakerSettings
from udop.errors import ConnectionFailed
from udop.state import open_state_store

url, name, action = sys.argv[1:4]
breaker = CircuitBreaker(open_state_store(url), name, BreakerSettings(failures=4, cooldown=COOLDOWN))
print("ready", flush=True)
sys.stdin.readline()
try:
    if action == "fail":
        with breaker.guard():
            raise ConnectionFailed("the database is down")
    else:
        breaker.before()  # and keeps the probe: this process never reports back
        print("probe", flush=True)
except CircuitOpen:
    print("open", flush=True)
except ConnectionFailed:
    print("failed", flush=True)
""".replace("COOLDOWN", str(COOLDOWN))


def _start(url: str, name: str, action: str, n: int) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, url, name, action], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    return procs


def _go(procs: list[subprocess.Popen[str]]) -> list[str]:
    """Let the processes make their calls at once; their outcomes, sorted."""
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    # read each answer as it is printed: a process may take seconds more to exit on a busy machine
    return sorted(p.stdout.readline().strip() for p in procs if p.stdout is not None)


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
    try:
        # four processes fail once each: together they reach the limit of four
        assert _go(failing) == ["failed"] * 4
        # so a fifth process is not even let through
        assert _go(fifth) == ["open"]
        time.sleep(COOLDOWN + 0.2)  # the cooldown is wall-clock time in the shared store
        # cooldown over: of four processes asking at once exactly one probes, the others fail fast
        assert _go(probing) == ["open", "open", "open", "probe"]
    finally:
        for p in failing + fifth + probing:
            p.kill()
            p.communicate()
        store = open_state_store(url)
        for suffix in ("failures", "open_until", "probe"):
            store.delete(f"udop:breaker:{name}:{suffix}")
        store.close()
