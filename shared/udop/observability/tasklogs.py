"""Per-attempt task logs: what a task logs through ``logging`` and prints to stdout/stderr, kept in a
file per attempt under the data root (``<data_root>/_logs/<run>/<task>.<attempt>.log``: one folder
per run, since creating a folder costs as much as the file), with a size limit, so that
``udop logs``, ``udop runs show`` and the API find it after the run.

Records are captured by the log record factory (not a root handler): capture then needs no handler
configuration, and costs one context-variable lookup per record outside attempts. stdout and stderr
are routed per attempt by a thin stream wrapper that finds the attempt in the context, so concurrent
attempts in worker threads each keep their own output.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from udop.observability.context import _current, bound
from udop.settings import ProcessSettings, load_settings

__all__ = ["AttemptLog", "attempt_log_path", "attempt_logs", "attempt_scope", "install_capture", "max_bytes",
           "read_attempt_log"]

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


def attempt_log_path(data_root: str, run_id: str, task_id: str, attempt: int) -> Path | None:
    """Where an attempt's log lives; None when the data root is not a local folder (S3: CloudWatch)."""
    if "://" in data_root and not data_root.startswith("file://"):
        return None
    root = Path(data_root.removeprefix("file://"))
    return root / "_logs" / _safe(run_id) / f"{_safe(task_id)}.{int(attempt)}.log"


class AttemptLog:
    """An append-only, size-limited log file of one attempt (opened on the first line)."""

    def __init__(self, path: Path, limit: int, *, redact: bool = True) -> None:
        self.path = path
        self.limit = limit
        self.redact = redact
        self.written = 0
        self.truncated = False
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    def write_line(self, line: str) -> None:
        if self.truncated:
            return
        if self.redact:
            from udop.sandbox import redactor

            line = redactor.redact(line)
        data = line if line.endswith("\n") else line + "\n"
        with self._lock:
            if self.truncated:
                return
            if self.written + len(data) > self.limit:
                data = f"[udop: log truncated at {self.limit} bytes (UDOP_TASK_LOG_MAX_BYTES)]\n"
                self.truncated = True
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(data)  # flushed when the attempt ends (close), not per line
            self.written += len(data)

    def write_record(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call (wrong args): logging itself reports it
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        text = f"{stamp}.{int(record.created % 1 * 1000):03d}Z {record.levelname} {record.name}: {message}"
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + (record.exc_text or logging.Formatter().formatException(record.exc_info))
        self.write_line(text)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


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


def install_capture() -> None:
    """Route log records and std streams of attempts to their logs (idempotent)."""
    with _installed:
        previous = logging.getLogRecordFactory()
        if not getattr(previous, "udop_capturing", False):
            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                capture = _current.get().capture
                if capture is not None:
                    capture.write_record(record)
                return record

            factory.udop_capturing = True  # type: ignore[attr-defined]
            logging.setLogRecordFactory(factory)
        _route_streams()


def _route_streams() -> None:
    # checked at every attempt: a test harness or a user may have replaced the streams since
    if not isinstance(sys.stdout, _Router):
        sys.stdout = _Router(sys.stdout, "stdout")
    if not isinstance(sys.stderr, _Router):
        sys.stderr = _Router(sys.stderr, "stderr")


@contextmanager
def attempt_scope(*, data_root: str, run_id: str, pipeline: str, task_id: str, attempt: int,
                  logical_date: str | None, correlation_id: str | None) -> Iterator[AttemptLog | None]:
    """Bind an attempt's ids to the context and capture its logs for the block."""
    path = attempt_log_path(data_root, run_id, task_id, attempt)
    capture = AttemptLog(path, max_bytes()) if path is not None else None
    if capture is not None:
        install_capture()
    try:
        with bound(correlation_id=correlation_id, run_id=run_id, pipeline=pipeline, task_id=task_id,
                   attempt=attempt, logical_date=logical_date, capture=capture):
            yield capture
    finally:
        if capture is not None:
            capture.close()


def read_attempt_log(path: Path, *, limit: int | None = None) -> str:
    """The text of a stored attempt log, redacted again (a server may know more secrets by now)."""
    from udop.sandbox import redactor

    with path.open(encoding="utf-8", errors="replace") as f:
        text = f.read() if limit is None else f.read(limit)
    return redactor.redact(text)


def attempt_logs(data_root: str, run_id: str, task_id: str | None = None) -> Iterator[tuple[str, int, Path]]:
    """(task id, attempt, path) of every stored log of a run (or of one task), in order."""
    base = attempt_log_path(data_root, run_id, task_id or "_", 1)
    if base is None or not base.parent.is_dir():
        return
    found = []
    for path in base.parent.glob(f"{_safe(task_id)}.*.log" if task_id else "*.log"):
        task, _, number = path.name.removesuffix(".log").rpartition(".")
        if task and number.isdigit():
            found.append((task, int(number), path))
    yield from sorted(found)


