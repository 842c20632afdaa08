"""``udop backfill``: one run per logical date, kept as one unit that can be listed, cancelled from
another process's point of view (the row), and resumed; ``runs list`` shows and filters logical dates."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

from udop.schedule.backfill import BackfillRunner, cancel_backfill, parse_date
from udop.schedule.store import ScheduleStore
from udop.spec.loader import load_pipeline


def test_a_backfill_runs_each_logical_date_once_and_runs_list_filters_by_it(project: Any, cli: Any) -> None:
    path = project.pipeline([project.task("a", "echo_args", args={"day": "${run.logical_date}"})])
    code, out, err = cli("backfill", str(path), "--from", "2024-01-01", "--to", "2024-01-03",
                         "--max-parallel", "2", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["state"] == "succeeded" and body["counts"] == {"succeeded": 3}
    assert [d["logical_date"] for d in body["dates"]] == [
        "2024-01-01T00:00:00+00:00", "2024-01-02T00:00:00+00:00", "2024-01-03T00:00:00+00:00"]
    # each run's tasks see its logical date
    code, out, _ = cli("runs", "show", body["dates"][2]["run_id"], "--json")
    assert json.loads(out)["tasks"][0]["result"]["value"] == {"day": "2024-01-03"}
    code, out, _ = cli("runs", "list", "--logical-date", "2024-01-02", "--json")
    [run] = json.loads(out)
    assert run["id"] == body["dates"][1]["run_id"]
    assert run["trigger"] == "backfill"
    assert run["logical_date"].startswith("2024-01-02 00:00:00")
    code, out, _ = cli("runs", "list")
    assert "LOGICAL DATE" in out and "2024-01-03 00:00:00" in out
    # as GET /runs?trigger=: the three backfill runs, none started otherwise
    code, out, _ = cli("runs", "list", "--trigger", "backfill", "--json")
    assert code == 0 and sorted(r["id"] for r in json.loads(out)) == sorted(d["run_id"] for d in body["dates"])
    code, out, _ = cli("runs", "list", "--trigger", "schedule", "--json")
    assert code == 0 and json.loads(out) == []
    code, _, err = cli("runs", "list", "--trigger", "nope")
    assert code == 2 and "--trigger" in err
    code, out, _ = cli("backfills", "list")
    assert body["id"] in out and "3 succeeded" in out


def test_bad_ranges_are_one_line_errors(project: Any, cli: Any) -> None:
    path = project.pipeline([project.task("a")])
    for args, message in [
        (("--from", "2024-01-03", "--to", "2024-01-01"), "is before --from"),
        (("--from", "2024-13-01", "--to", "2024-01-01"), "--from '2024-13-01' is not an ISO date"),
        (("--from", "2024-01-01", "--to", "2024-01-02", "--step", "1y"), "--step '1y'"),
        (("--from", "2000-01-01", "--to", "2024-01-01", "--step", "30m"), "more than 10000"),
    ]:
        code, _, err = cli("backfill", str(path), *args)
        assert code != 0
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_cancelled_backfill_stops_and_resume_finishes_it(project: Any, store: Any) -> None:
    marker = project.root / "started"
    path = project.pipeline([project.task("a", "sleep_once", args={"seconds": 60, "marker": str(marker)})])
    pipeline = load_pipeline(path)
    runner = BackfillRunner(store, pipeline, watch_seconds=0.05)
    record = runner.create(start=parse_date("2024-01-01", what="--from"),
                           end=parse_date("2024-01-04", what="--to"), step="1d", max_parallel=1)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(runner.run(record.id)))
    thread.start()
    stop = threading.Event()
    while not marker.exists() and not stop.wait(0.05):
        pass  # the first date's task is sleeping
    cancel_backfill(store, record.id)
    thread.join(timeout=60)
    [cancelled] = result
    assert cancelled.state == "cancelled"
    first = datetime(2024, 1, 1, tzinfo=UTC)
    assert cancelled.run_states[cancelled.dates[first] or ""] == "cancelled"
    assert cancelled.counts() == {"cancelled": 1, "not started": 3}
    # resume: the cancelled run goes on (sleep_once returns at once the second time), the rest start
    done = BackfillRunner(store, pipeline).run(record.id, resume=True)
    assert done.state == "succeeded" and done.counts() == {"succeeded": 4}
    assert done.dates[first] == cancelled.dates[first]  # the same run, resumed
    assert [b.id for b in ScheduleStore(store).list_backfills("demo")] == [record.id]


def test_unknown_backfills_and_folders_are_one_line_errors(cli: Any, tmp_path: Any) -> None:
    for args, message in [
        (("backfills", "show", "bf-nope"), "no backfill 'bf-nope'"),
        (("backfills", "cancel", "bf-nope"), "no backfill 'bf-nope'"),
        (("scheduler", "--pipelines", str(tmp_path / "missing")), "is not a folder of pipeline definitions"),
    ]:
        code, _, err = cli(*args)
        assert code == 2, err
        assert message in err and len(err.strip().splitlines()) == 1, err
