"""Process identities for leases: a holder killed on this machine is known dead at once, a reused
pid is not mistaken for the dead holder, and a holder elsewhere is never called dead."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from udop import procid
from udop.connectors import watermark as wm
from udop.state import MemoryStateStore


def _dead_child_identity() -> str:
    """The identity a child process reported for itself, after it exited."""
    out = subprocess.run(
        [sys.executable, "-c", "from udop import procid; print(procid.current())"],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def test_this_process_is_alive_and_an_exited_one_is_dead() -> None:
    assert not procid.dead(procid.current())
    assert procid.dead(_dead_child_identity())


def test_a_reused_pid_with_another_start_time_is_the_dead_holder() -> None:
    me = procid.current()
    head, *fields = me.split(";")
    other = ";".join([head, *("start=1" if f.startswith("start=") else f for f in fields)])
    assert procid.dead(other)  # this pid is alive, but it is not the process that took the lease


def test_a_process_of_another_host_or_boot_is_never_called_dead() -> None:
    assert not procid.dead(f"999999999@not-{socket.gethostname()};start=1;boot=abc")
    head = procid.current().split(";")[0]
    assert not procid.dead(f"{head.split('@')[0]}9@{socket.gethostname()};start=1;boot=other")


def test_an_old_identity_without_start_time_is_dead_when_its_pid_is_gone() -> None:
    pid = _dead_child_identity().split("@")[0]
    assert procid.dead(f"{pid}@{socket.gethostname()}")
    assert not procid.dead(f"{os.getpid()}@{socket.gethostname()}")


def test_a_child_adopts_the_identity_it_acts_for() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from udop import procid; procid.adopt(sys.argv[1]); "
         "print(procid.current())", procid.current()],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == procid.current()


def test_a_watermark_lease_renewed_by_a_process_that_died_is_free() -> None:
    """The run's extract ran in a process that is still alive (here, this one); its load ran in
    another process, which renewed the lease and was killed: the lease names the dead process and
    the next run takes it over instead of waiting an hour for it to expire."""
    state = MemoryStateStore()
    assert wm.acquire_lease(state, "k", "r1") is None
    held = json.loads(state.get("udop:watermark-lease:k") or "{}")
    assert held["owner"] == procid.current()
    # what the load process's renew_lease left behind
    state.set("udop:watermark-lease:k", json.dumps({**held, "owner": _dead_child_identity()}))
    assert wm.acquire_lease(state, "k", "r2") == "r1"  # r2 holds it; r1's range must be settled
    # while the holder lives, another run is refused, naming the holder
    with pytest.raises(wm.WatermarkBusy, match=rf"held by run r2 \(process {os.getpid()} on "):
        wm.acquire_lease(state, "k", "r3")


def test_renewing_names_the_process_doing_the_work() -> None:
    state = MemoryStateStore()
    wm.acquire_lease(state, "k", "r1")
    state.set("udop:watermark-lease:k",
              json.dumps({**json.loads(state.get("udop:watermark-lease:k") or "{}"), "owner": "x@y"}))
    wm.renew_lease(state, "k", "r1")
    assert json.loads(state.get("udop:watermark-lease:k") or "{}")["owner"] == procid.current()
