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
from udop.observability.tasklogs import render_log
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


def _log(store: Any, record: Any, task_id: str, number: int) -> tuple[dict[str, Any], str]:
    """The attempt's log record as the store keeps it, and its text read through that record."""
    task = next(t for t in store.get_run(record.id).tasks if t.task_id == task_id)
    log = next(a.log for a in task.attempts if a.number == number)
    assert log is not None, f"{task_id}#{number} has no log record in the store"
    return log, render_log(log)


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
    first_log, text = _log(store, record, "flaky", 1)
    assert "WARNING user.code: m 0 from flaky" in text
    assert "stdout: printed m" in text and "stderr: to stderr m" in text
    assert "udop: attempt failed: ValueError: chatty failed: m" in text
    assert first_log["kind"] == "file" and first_log["bytes"] == len(text.encode())
    assert not first_log["truncated"]
    _, second = _log(store, record, "flaky", 2)
    assert text.count("printed m") == 1 and second.count("printed m") == 1  # each attempt its own lines


def test_a_log_stops_at_its_size_limit(
    project: Any, store: Any, console: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UDOP_TASK_LOG_MAX_BYTES", "2000")
    path = project.pipeline([project.task("loud", "chatty", args={"lines": 500})])
    record = _run(project, store, path)
    log, text = _log(store, record, "loud", 1)
    assert len(text.encode()) <= 2000 + 100
    assert text.rstrip().endswith("[udop: log truncated at 2000 bytes (UDOP_TASK_LOG_MAX_BYTES)]")
    assert log["truncated"] is True and log["bytes"] <= 2000 + 100


def test_a_secret_logged_by_a_task_is_masked_in_its_log(
    project: Any, store: Any, console: io.StringIO
) -> None:
    from udop.sandbox import redactor

    secret = "s3cr3t-value-4f9a"
    redactor.add_secret(secret)
    path = project.pipeline([project.task("leak", "chatty", args={"secret": secret})])
    record = _run(project, store, path)
    log, text = _log(store, record, "leak", 1)
    assert "the secret is" in text and secret not in text
    assert secret not in Path(log["path"]).read_text()  # masked in the file itself, not only when read
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


def test_udop_logs_reads_the_location_kept_with_the_attempt_not_a_guessed_path(
    project: Any, cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The run wrote its logs under a data root the CLI's settings do not name: the store knows."""
    from udop.settings import get_settings
    from udop.store import open_store

    db = tmp_path / "shared-meta.db"
    store = open_store(f"sqlite:///{db}")
    path = project.pipeline([project.task("a", "chatty", args={"message": "elsewhere", "lines": 3})])
    record = _run(project, store, path)  # data root: <project>/data
    store.close()
    monkeypatch.setenv("UDOP_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("UDOP_DATA_ROOT", str(tmp_path / "some-other-root"))
    get_settings.cache_clear()
    code, out, err = cli("logs", record.id, "a")
    assert code == 0, err
    assert "elsewhere 0 from a" in out and "elsewhere 2 from a" in out
    code, out, err = cli("runs", "show", record.id, "--json")
    assert code == 0, err
    (entry,) = json.loads(out)["logs"]
    assert entry["task_id"] == "a" and entry["attempt"] == 1 and entry["kind"] == "file"
    assert entry["bytes"] > 0 and entry["truncated"] is False
    assert entry["path"].startswith(str(project.root / "data"))
