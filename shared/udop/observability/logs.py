"""The one logging setup of the CLI, the server and the Lambda handlers.

``configure(fmt)`` sends the root logger's records to stderr as JSON lines (``json``) or human text
(``text``), each with the ids of ``udop.observability.context`` (run, pipeline, task, attempt, logical
date, correlation id). Every record is redacted when it is created (``udop.sandbox``), before any
handler, ours or Powertools', sees it. Records logged inside a task attempt also go to that
attempt's log file (``udop.observability.tasklogs``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from functools import lru_cache
from typing import IO, Literal

from udop.observability.context import LogContext, current
from udop.observability.timestamps import iso_time as _iso
from udop.settings import ProcessSettings, load_settings

__all__ = ["JsonFormatter", "LogFormat", "TextFormatter", "configure", "resolve_format"]

LogFormat = Literal["json", "text"]
_HANDLER_NAME = "udop-console"
_configured: list[tuple[LogFormat, int]] = []  # what configure() chose, for child processes to repeat


def configured() -> tuple[LogFormat, int] | None:
    """The (format, level) this process was configured with, if any."""
    return _configured[-1] if _configured else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context ids, and a traceback.

    Built by hand from pre-encoded parts: a context's ids are encoded once per context (every line
    of an attempt shares them), the time stamp once per second, so a line costs one ``json.dumps``
    of its message."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        line = (f'{{"ts": "{_iso(record.created)}", "level": {_encoded(record.levelname)}, '
                f'"logger": {_encoded(record.name)}, "message": {_dumps(record.getMessage())}'
                f"{_ids(current())}")
        if record.exc_text:
            line += f', "exception": {_dumps(record.exc_text)}'
        return line + "}"


def _dumps(value: object) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


@lru_cache(maxsize=512)
def _encoded(text: str) -> str:
    """Level and logger names: a handful per process."""
    return _dumps(text)


@lru_cache(maxsize=256)
def _ids(ctx: LogContext) -> str:
    """``, "correlation_id": ..., "run_id": ...`` of a context, encoded once (contexts are frozen)."""
    fields = ctx.fields()
    return ", " + _dumps(fields)[1:-1] if fields else ""


class TextFormatter(logging.Formatter):
    """``06:40:01 INFO  udop.executor [run=... task=load#2 cid=...] message``."""

    def format(self, record: logging.LogRecord) -> str:
        ctx = current()
        parts = []
        if ctx.run_id:
            parts.append(f"run={ctx.run_id}")
        if ctx.task_id:
            parts.append(f"task={ctx.task_id}" + (f"#{ctx.attempt}" if ctx.attempt else ""))
        if ctx.correlation_id:
            parts.append(f"cid={ctx.correlation_id}")
        where = f" [{' '.join(parts)}]" if parts else ""
        line = (f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<5} "
                f"{record.name}{where} {record.getMessage()}")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


def resolve_format(fmt: str | None = None) -> LogFormat:
    """``fmt`` if given, else the ``UDOP_LOG_FORMAT`` setting, else text."""
    value = (fmt or load_settings(ProcessSettings).log_format or "text").strip().lower()
    if value not in ("json", "text"):
        from udop.errors import ConfigError

        raise ConfigError(f"environment variable UDOP_LOG_FORMAT: {value!r} is not 'json' or 'text'")
    return "json" if value == "json" else "text"


def configure(fmt: str | None = None, *, level: int | str = logging.INFO, stream: IO[str] | None = None,
              console: bool = True) -> LogFormat:
    """Set up logging for this process (idempotent: a second call replaces the console handler).

    ``console=False`` leaves the console alone (Lambda: Powertools' logger owns stdout) and only
    installs redaction and the per-attempt capture.
    """
    from udop.observability.tasklogs import install_capture
    from udop.sandbox import install_log_redaction

    chosen = resolve_format(fmt)
    install_log_redaction()
    install_capture()
    root = logging.getLogger()
    if console:
        for handler in list(root.handlers):
            if handler.get_name() == _HANDLER_NAME:
                root.removeHandler(handler)
        # the real stream, not the per-attempt router: console lines are not the task's own output
        handler = logging.StreamHandler(stream or getattr(sys.stderr, "real", sys.stderr))
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
        root.addHandler(handler)
        root.setLevel(level)
        _configured[:] = [(chosen, root.level)]
    return chosen
