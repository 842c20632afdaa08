"""Which process is doing a run's work, and whether that process is gone.

A lease (on a watermark) names its holder's process so that a holder killed on this machine
(SIGKILL, an OOM kill, a power cut of its container) is known dead at once instead of when the
lease expires. A pid alone is not enough: pids are reused (a new process may have the dead one's
pid), and a pid from another machine or another boot means nothing here. So an identity is

    ``<pid>@<host>;start=<process start, clock ticks after boot>;boot=<boot id>``

and it is dead when it names this host and this boot and no process with that pid and that start
time exists. An identity from another host or boot is never called dead: there only the lease's
expiry frees it.

The identity is that of the process *running the run's task*, which is not always this process:
a ``python`` task's attempt runs in a child process (``udop.executor.attempt``), which ``adopt``\\ s
the identity of the executor that started it, so that a lease the child renews stays tied to the
run, not to a child that exits after its attempt.
"""

from __future__ import annotations

import functools
import os
import socket

__all__ = ["adopt", "current", "dead", "describe"]

_adopted: list[str] = []  # the identity this process acts for, when it is not its own


@functools.cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()[:8]
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks after boot, field 22 of ``/proc/<pid>/stat``); ``""``
    where /proc is not there; ``None`` when no such process exists."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # the command name (field 2) may hold spaces and parentheses: count fields after its last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else ""


def _own() -> str:
    pid = os.getpid()
    return f"{pid}@{socket.gethostname()};start={_start_time(pid) or ''};boot={_boot_id()}"


def current() -> str:
    """The identity of the process doing this run's work (see the module docstring)."""
    return _adopted[-1] if _adopted else _own()


def adopt(identity: str) -> None:
    """Act for ``identity`` from now on (a task's child process acting for its executor)."""
    _adopted.append(identity)


def _parse(identity: str) -> tuple[str, str, dict[str, str]]:
    head, *extra = identity.split(";")
    pid, _, host = head.partition("@")
    fields = dict(part.partition("=")[::2] for part in extra)
    return pid, host, fields


def dead(identity: str) -> bool:
    """True only when ``identity`` is a process of this machine and boot that no longer exists.

    An older identity without start time (``pid@host``) is dead when its pid is gone."""
    pid, host, fields = _parse(identity)
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if fields.get("boot") and _boot_id() and fields["boot"] != _boot_id():
        return False  # another boot (or another VM with the same host name): we cannot tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, another user's: fall through to the start time check
    started = fields.get("start")
    if not started:
        return False
    now = _start_time(int(pid))
    return now is None or now not in ("", started)  # gone, or a new process with that pid


def describe(identity: str) -> str:
    """``process 1234 on host-a`` (for messages)."""
    pid, host, _ = _parse(identity)
    return f"process {pid} on {host}" if host else f"process {identity}"
