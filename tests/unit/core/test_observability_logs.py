"""Structured log lines with the run's ids, per-attempt task logs, `udop logs` and `runs show`."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from udop.executor.local import LocalExecutor
from udop.observability.context import bound
from udop.observability.logs import configure
from udop.observability.tasklogs import attempt_log_path
from udop.spec.loader import load_pipeline


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    """The process's log lines, as JSON, in a buffer; the root logger restored afterwards."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure("json", level=logging.INFO, stream=stream)
    yield stream
    root.handlers[:] = before[0]
    root.setLevel(before[1])


def _run(project: Any, store: Any, path: Path, **kwargs: Any) -> Any:
    executor = LocalExecutor(store, data_root=str(project.root / "data"),
                             services={"base_dir": str(project.root)})
    return executor.run(load_pipeline(path, import_callables=True), **kwargs)


def test_a_task_s_log_lines_are_json_with_the_run_s_ids(project: Any, store: Any, console: io.StringIO) -> None:
    path = project.pipeline([project.task("talk", "chatty", args={"message": "ping"})])
    with bound(correlation_id="req-1234"):
        record = _run(project, store, path)
    lines = [json.loads(line) for line in console.getvalue().splitlines()]
    mine = [line for line in lines if line["logger"] == "user.code"]
    assert mine, console.getvalue()
    assert mine[0] == {
        "ts": mine[0]["ts"], "level": "WARNING", "logger": "user.code", "message": "ping 0 from talk",
        "correlation_id": "req-1234", "run_id": record.id, "pipeline": "demo", "task_id": "talk",
        "attempt": 1, "logical_date": record.logical_date.isoformat(),
    }


def test_a_run_without_a_caller_s_id_gets_one_id_for_all_its_tasks(
    project: Any, store: Any, console: io.StringIO
) -> None:
    path = project.pipeline([project.task("a", "chatty"), project.task("b", "chatty", depends_on=["a"])])
    _run(project, store, path)
    ids = {json.loads(x)["correlation_id"] for x in console.getvalue().splitlines() if '"user.code"' in x}
    assert len(ids) == 1 and len(ids.pop()) == 32


def test_each_attempt_keeps_its_logs_and_output(project: Any, store: Any, console: io.StringIO) -> None:
    retry = {"max_attempts": 2, "base_delay": "10ms", "max_delay": "10ms"}
    path = project.pipeline([project.task("flaky", "chatty", args={"message": "m", "fail": True}, retry=retry)])
    record = _run(project, store, path)
    data = str(project.root / "data")
    first = attempt_log_path(data, record.id, "flaky", 1)
    second = attempt_log_path(data, record.id, "flaky", 2)
    assert first is not None and second is not None
    text = first.read_text()
    assert "WARNING user.code: m 0 from flaky" in text
    assert "stdout: printed m" in text and "stderr: to stderr m" in text
    assert "udop: attempt failed: ValueError: chatty failed: m" in text
    assert second.exists() and text.count("printed m") == 1  # attempt 2 wrote to its own file


def test_a_log_stops_at_its_size_limit(
    project: Any, store: Any, console: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UDOP_TASK_LOG_MAX_BYTES", "2000")
    path = project.pipeline([project.task("loud", "chatty", args={"lines": 500})])
    record = _run(project, store, path)
    log = attempt_log_path(str(project.root / "data"), record.id, "loud", 1)
    assert log is not None
    text = log.read_text()
    assert len(text.encode()) <= 2000 + 100
    assert text.rstrip().endswith("[udop: log truncated at 2000 bytes (UDOP_TASK_LOG_MAX_BYTES)]")


def test_a_secret_logged_by_a_task_is_masked_in_its_log(
    project: Any, store: Any, console: io.StringIO
) -> None:
    from udop.sandbox import redactor

    secret = "s3cr3t-value-4f9a"
    redactor.add_secret(secret)
    path = project.pipeline([project.task("leak", "chatty", args={"secret": secret})])
    record = _run(project, store, path)
    log = attempt_log_path(str(project.root / "data"), record.id, "leak", 1)
    assert log is not None
    assert "the secret is" in log.read_text() and secret not in log.read_text()
    assert secret not in console.getvalue()


def test_udop_logs_prints_a_run_s_task_logs_and_runs_show_points_at_them(
    project: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = project.pipeline([project.task("a", "chatty", args={"message": "alpha"}),
                             project.task("b", "chatty", args={"message": "beta"})])
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        code, _, err = cli("--log-format", "json", "run", str(path), "--no-progress")
        assert code == 0, err
        code, out, _ = cli("runs", "list", "--json")
        run_id = json.loads(out)[0]["id"]
        code, out, err = cli("logs", run_id)
        assert code == 0, err
        assert "==> a attempt 1 <==" in out and "alpha 0 from a" in out and "beta 0 from b" in out
        code, out, _ = cli("logs", run_id, "b")
        assert "beta 0 from b" in out and "alpha" not in out
        code, out, _ = cli("runs", "show", run_id)
        assert f"udop logs {run_id}" in out
        code, _, err = cli("logs", run_id, "nope")
        assert code != 0 and "has no task 'nope'" in err
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
