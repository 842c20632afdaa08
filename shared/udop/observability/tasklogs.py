"""Per-attempt task logs: what a task logs through ``logging`` and prints to stdout/stderr, kept
per attempt with a size limit, so that ``udop logs``, ``udop runs show`` and the API find it after the
run from the attempt's record in the metadata store (``AttemptRecord.log``).

Locally the lines of all attempts of a run go to one file, ``<data_root>/_logs/<run>.log``, each line
tagged with its attempt (``<task>.<attempt>\t<text>``): creating a file per attempt cost about as much
as the whole rest of the logging (a file create is 60 us to 1 ms depending on the disk), while an
appending ``os.write`` on a descriptor the run's attempts share costs about a microsecond and is one
atomic append, so attempts in threads and in child processes never split each other's lines.

Records are captured by the log record factory (not a root handler): capture then needs no handler
configuration, and costs one context-variable lookup per record outside attempts. stdout and stderr
are routed per attempt by a thin stream wrapper that finds the attempt in the context, so concurrent
attempts in worker threads each keep their own output.

On Lambda there is no local file: ``StreamCapture`` turns the attempt's printed lines into JSON lines
with the attempt's ids on the function's stdout (CloudWatch), beside its log records.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar, cast

from udop.observability.context import _current, bound
from udop.observability.timestamps import iso_time as _iso
from udop.settings import ProcessSettings, load_settings

__all__ = ["AttemptLog", "RecordingLogs", "StreamCapture", "attempt_key", "attempt_log_path", "attempt_scope",
           "delegate", "describe", "install_capture", "log_record", "max_bytes", "public_log",
           "read_attempt_lines", "recording_logs", "render_log", "run_log_path", "stored_logs"]

DEFAULT_MAX_BYTES = 1_048_576


def max_bytes() -> int:
    """The ``UDOP_TASK_LOG_MAX_BYTES`` setting (default 1 MiB per attempt)."""
    raw = load_settings(ProcessSettings).task_log_max_bytes
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        from udop.errors import ConfigError

        raise ConfigError(
            f"environment variable UDOP_TASK_LOG_MAX_BYTES: {raw!r} is not a whole number") from None
    return max(0, value)


def _safe(part: str) -> str:
    # run and task ids are validated identifiers already; this keeps a path inside the logs folder anyway
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part).lstrip(".") or "_"


@lru_cache(maxsize=64)
def run_log_path(data_root: str, run_id: str) -> Path | None:
    """The file a run's attempts log to; None when the data root is not a local folder (S3: CloudWatch)."""
    if "://" in data_root and not data_root.startswith("file://"):
        return None
    return Path(data_root.removeprefix("file://")) / "_logs" / f"{_safe(run_id)}.log"


def attempt_key(task_id: str, attempt: int) -> str:
    """The tag of an attempt's lines in its run's log file."""
    return f"{_safe(task_id)}.{int(attempt)}"


def attempt_log_path(data_root: str, run_id: str, task_id: str, attempt: int) -> Path | None:
    """Where an attempt's lines are kept (its run's file, tagged with ``attempt_key``)."""
    return run_log_path(data_root, run_id)


class _Shared:
    """One append-only descriptor per run file, shared by the attempts that write to it.

    Attempts take a reference while they run; a file nobody references stays open (the next attempt
    of a chain needs it at once) until more than ``_IDLE`` files are idle, then the oldest is closed.
    """

    _IDLE = 16

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fds: dict[str, list[int]] = {}  # path -> [fd, references]
        self._idle: dict[str, None] = {}  # insertion-ordered: oldest first

    def acquire(self, path: str) -> int:
        with self._lock:
            entry = self._fds.get(path)
            if entry is None:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                entry = [os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), 0]
                self._fds[path] = entry
            entry[1] += 1
            self._idle.pop(path, None)
            return entry[0]

    def release(self, path: str) -> None:
        with self._lock:
            entry = self._fds.get(path)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            self._idle[path] = None
            while len(self._idle) > self._IDLE:
                oldest = next(iter(self._idle))
                del self._idle[oldest]
                os.close(self._fds.pop(oldest)[0])

    def close_all(self) -> None:
        """Close every idle descriptor (tests; a process about to remove its data root)."""
        with self._lock:
            for path in list(self._idle):
                os.close(self._fds.pop(path)[0])
            self._idle.clear()


_files = _Shared()
close_idle_files = _files.close_all


class AttemptLog:
    """The size-limited lines of one attempt, appended to its run's log file (opened on the first line).

    ``redact``: mask each line (printed output); records arrive redacted already (``udop.sandbox``).
    """

    echo = True  # printed lines also reach the process's own stream

    def __init__(self, path: Path, limit: int, *, key: str = "", redact: bool = True) -> None:
        self.path = path
        self._where = str(path)
        self.key = key
        self.limit = limit
        self.redact = redact
        self.written = 0
        self.truncated = False
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._prefix = f"{key}\t" if key else ""
        self.delegated = False  # a child process writes the attempt's lines (its own count)

    def write_line(self, line: str, *, redacted: bool = False) -> None:
        if self.truncated:
            return
        if self.redact and not redacted:
            from udop.sandbox import redactor

            line = redactor.redact(line)
        text = line[:-1] if line.endswith("\n") else line
        size = len(text.encode("utf-8", "replace")) + 1  # what the attempt said, without the tags
        with self._lock:
            if self.truncated:
                return
            if self.written + size > self.limit:
                text = f"[udop: log truncated at {self.limit} bytes (UDOP_TASK_LOG_MAX_BYTES)]"
                size = len(text) + 1
                self.truncated = True
            if self._prefix:
                text = self._prefix + text.replace("\n", "\n" + self._prefix)
            if self._fd is None:
                self._fd = _files.acquire(self._where)
            os.write(self._fd, (text + "\n").encode("utf-8", "replace"))  # O_APPEND: one atomic append
            self.written += size

    def write_record(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call (wrong args): logging itself reports it
            return
        text = f"{_iso(record.created)} {record.levelname} {record.name}: {message}"
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + (record.exc_text or logging.Formatter().formatException(record.exc_info))
        # the record was redacted when it was made (install_capture puts redaction beneath it)
        self.write_line(text, redacted=True)

    def record(self) -> dict[str, Any]:
        """What the metadata store keeps about this log (``AttemptRecord.log``)."""
        return {"kind": "file", "path": str(self.path), "key": self.key, "bytes": self.written,
                "truncated": self.truncated}

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                self._fd = None
                _files.release(self._where)


class StreamCapture:
    """Inside a Lambda attempt: printed lines become JSON lines with the attempt's ids on the real
    stdout (the function's CloudWatch stream); log records are the root handler's to format. A line
    that is a JSON object already (an EMF metric blob, a structured log line) passes unchanged."""

    echo = False
    redact = True
    truncated = False

    def __init__(self, stream: Any, fields: Mapping[str, Any]) -> None:
        self._stream = stream
        self._fields = dict(fields)

    def write_line(self, line: str, *, redacted: bool = False) -> None:
        from udop.sandbox import redactor

        name, _, message = line.partition(": ")
        if message.startswith("{") and message.endswith("}") and _json_object(message):
            # already structured: EMF metric blobs (Powertools prints them) and JSON log lines pass as
            # they are, or CloudWatch would not read the metrics
            self._stream.write(redactor.redact(message) + "\n")
            return
        body: dict[str, Any] = {"ts": _iso(time.time()), "level": "INFO" if name == "stdout" else "WARNING",
                                "logger": f"task.{name}", "message": redactor.redact(message)}
        body.update(self._fields)
        self._stream.write(json.dumps(body, default=str, ensure_ascii=False) + "\n")

    def write_record(self, record: logging.LogRecord) -> None:
        return None  # the root logger's JSON handler writes records once

    def close(self) -> None:
        return None


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


class _Router:
    """Stands in for sys.stdout/sys.stderr: inside an attempt, whole lines go to its log (and on to
    the real stream, so `udop run` still shows them); elsewhere it is the real stream."""

    def __init__(self, real: Any, name: str) -> None:
        self._real = real
        self._name = name
        self._partial = threading.local()

    def write(self, text: str) -> int:
        capture = _current.get().capture
        if capture is not None:
            pending: str = getattr(self._partial, "text", "") + text
            *lines, rest = pending.split("\n")
            self._partial.text = rest
            for line in lines:
                capture.write_line(f"{self._name}: {line}")
            if not capture.echo:
                return len(text)
            if capture.redact:  # a task's output reaches the process's own stream masked too
                from udop.sandbox import redactor

                self._real.write(redactor.redact(text))
                return len(text)
        return int(self._real.write(text))

    def flush(self) -> None:
        self._real.flush()

    @property
    def real(self) -> Any:
        return self._real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


_installed = threading.Lock()
_capturing: list[Any] = []  # the record factory on top when capture was last checked


def install_capture() -> None:
    """Route log records and std streams of attempts to their logs (idempotent)."""
    if _capturing and isinstance(sys.stdout, _Router) and isinstance(sys.stderr, _Router) \
            and logging.getLogRecordFactory() is _capturing[0]:
        return  # the per-attempt check: nothing changed since
    from udop.sandbox import factory_installed, install_log_redaction

    with _installed:
        if not factory_installed(logging.getLogRecordFactory(), "udop_capturing"):
            install_log_redaction()  # beneath the capture: records reach it redacted
            previous = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                capture = _current.get().capture
                if capture is not None:
                    capture.write_record(record)
                return record

            factory.udop_capturing = True  # type: ignore[attr-defined]
            factory.udop_previous = previous  # type: ignore[attr-defined]
            logging.setLogRecordFactory(factory)
        _capturing[:] = [logging.getLogRecordFactory()]
        _route_streams()


def _route_streams() -> None:
    # checked at every attempt: a test harness or a user may have replaced the streams since
    if not isinstance(sys.stdout, _Router):
        sys.stdout = _Router(sys.stdout, "stdout")
    if not isinstance(sys.stderr, _Router):
        sys.stderr = _Router(sys.stderr, "stderr")


#: (run, task, attempt) -> the store record of an attempt whose scope ended in this process
_finished: dict[tuple[str, str, int], AttemptLog] = {}
_finished_lock = threading.Lock()
_MAX_FINISHED = 4096


@contextmanager
def attempt_scope(*, data_root: str, run_id: str, pipeline: str, task_id: str, attempt: int,
                  logical_date: str | None, correlation_id: str | None) -> Iterator[AttemptLog | None]:
    """Bind an attempt's ids to the context and capture its logs for the block."""
    path = run_log_path(data_root, run_id)
    capture = AttemptLog(path, max_bytes(), key=attempt_key(task_id, attempt)) if path is not None else None
    if capture is not None:
        install_capture()
    try:
        with bound(correlation_id=correlation_id, run_id=run_id, pipeline=pipeline, task_id=task_id,
                   attempt=attempt, logical_date=logical_date, capture=capture):
            yield capture
    finally:
        if capture is not None:
            capture.close()
            if not capture.delegated:
                with _finished_lock:
                    _finished[(run_id, task_id, attempt)] = capture
                    if len(_finished) > _MAX_FINISHED:  # an attempt recorded before its scope ended
                        del _finished[next(iter(_finished))]  # (a timeout) is never asked for again


def delegate() -> None:
    """The current attempt's lines are written by a child process: count them in the file at the end."""
    capture = _current.get().capture
    if isinstance(capture, AttemptLog):
        capture.delegated = True


def log_record(data_root: str, run_id: str, task_id: str, attempt: int) -> dict[str, Any] | None:
    """The store record of an attempt's log (once): what its scope counted, else (the attempt ran in
    a child process, or was abandoned while running) its lines counted in the file."""
    with _finished_lock:
        found = _finished.pop((run_id, task_id, attempt), None)
    path = run_log_path(data_root, run_id)
    if path is None:
        return None
    key = attempt_key(task_id, attempt)
    if found is not None:
        return found.record()
    if not path.exists():
        return None
    lines = list(_tagged(path, key)) if path.exists() else []
    size = sum(len(line.encode()) for line in lines)
    return {"kind": "file", "path": str(path), "key": key, "bytes": size,
            "truncated": bool(lines) and lines[-1].startswith("[udop: log truncated at ")}


def _tagged(path: Path, key: str) -> Iterator[str]:
    prefix = key + "\t"
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(prefix):
                yield line[len(prefix):]


def read_attempt_lines(path: Path, key: str, *, limit: int | None = None) -> str:
    """The text of one attempt's stored lines, redacted again (a server may know more secrets by now)."""
    from udop.sandbox import redactor

    if not path.exists():
        return ""
    out: list[str] = []
    size = 0
    for line in _tagged(path, key):
        if limit is not None and size + len(line) > limit:
            out.append(line[: max(0, limit - size)])
            break
        out.append(line)
        size += len(line)
    return redactor.redact("".join(out))


def render_log(log: Mapping[str, Any] | None, *, limit: int | None = None, fetch: bool = True) -> str:
    """An attempt's log as text, from its store record: the lines of a local file; for CloudWatch the
    pointer, and (``fetch``) the request's lines when the logs can be read from here."""
    if not log:
        return ""
    if log.get("kind") == "file":
        return read_attempt_lines(Path(str(log["path"])), str(log.get("key") or ""), limit=limit)
    if log.get("kind") == "cloudwatch":
        from udop.observability.cloudwatch import render_pointer

        return render_pointer(log, limit=limit, fetch=fetch)
    return ""


class RecordingLogs:
    """A metadata store whose ``finish_attempt`` also keeps where the attempt's log is (the
    ``log`` of ``AttemptRecord``); every other call goes to ``store`` unchanged."""

    def __init__(self, store: Any, data_root: str) -> None:
        self._store = store
        self._data_root = data_root

    def finish_attempt(self, run_id: str, task_id: str, number: int, **kwargs: Any) -> None:
        if "log" not in kwargs:
            kwargs["log"] = log_record(self._data_root, run_id, task_id, number)
        self._store.finish_attempt(run_id, task_id, number, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def stored_logs(run: Any, task_id: str | None = None, attempt: int | None = None, *,
                data_root: str | None = None) -> list[tuple[str, int, dict[str, Any]]]:
    """(task id, attempt, log record) of a run's attempts from its store record, in order. An attempt
    without a record (still running, or cut off) points at its tag in the run's file under
    ``data_root`` when that file has its lines."""
    found: list[tuple[str, int, dict[str, Any]]] = []
    path = run_log_path(data_root, run.id) if data_root and run.executor == "local" else None
    for task in run.tasks:
        if task_id is not None and task.task_id != task_id:
            continue
        for a in task.attempts:
            if attempt is not None and a.number != attempt:
                continue
            log = a.log
            if log is None and path is not None and path.exists():
                key = attempt_key(task.task_id, a.number)
                if any(True for _ in _tagged(path, key)):
                    log = {"kind": "file", "path": str(path), "key": key}
            if log is not None and not (log.get("kind") == "file" and log.get("bytes") == 0):
                found.append((task.task_id, a.number, dict(log)))
    return found


def public_log(log: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the API says about an attempt's log: a CloudWatch pointer whole; of a local file its
    size and truncation, not the server's path (the lines are served by the logs endpoint)."""
    if not log:
        return None
    if log.get("kind") == "file":
        return {k: log[k] for k in ("kind", "bytes", "truncated") if k in log}
    return dict(log)


def describe(log: Mapping[str, Any]) -> str:
    """One line saying where an attempt's log is."""
    if log.get("kind") == "cloudwatch":
        return (f"CloudWatch {log.get('log_group')} stream {log.get('log_stream')}"
                + (f" request {log['request_id']}" if log.get("request_id") else ""))
    size = log.get("bytes")
    return (f"{log.get('path')} [{log.get('key')}]" + (f", {size} bytes" if size is not None else "")
            + (", truncated" if log.get("truncated") else ""))


_Store = TypeVar("_Store")


def recording_logs(store: _Store, data_root: str) -> _Store:
    """``store`` whose ``finish_attempt`` keeps each attempt's log record (see ``RecordingLogs``)."""
    return cast("_Store", RecordingLogs(store, data_root))
