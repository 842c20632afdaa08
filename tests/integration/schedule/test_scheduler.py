"""The local scheduler driven by a fake clock: DST changes, missed ticks and catch-up, jitter,
max_active_runs, server-mode sandboxing, and two schedulers on one metadata store (SQLite and the
real PostgreSQL) starting one run per tick."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from udop.sandbox import Policy, server_policy
from udop.schedule.scheduler import DirectoryPipelines, ScheduledPipeline, Scheduler, jitter_offset
from udop.schedule.store import ScheduleStore
from udop.spec.loader import load_pipeline
from udop.store import open_store


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.at = now

    def now(self) -> datetime:
        return self.at

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        self.at += timedelta(seconds=seconds)

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def _scheduled(project: Any, schedule: dict[str, Any], *, name: str = "demo", fn: str = "noop",
               max_active_runs: int | None = None, file: str = "pipeline.yaml") -> ScheduledPipeline:
    path = project.pipeline([project.task("a", fn)], name=name, file=file)
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["schedule"] = schedule
    if max_active_runs:
        doc["spec"]["max_active_runs"] = max_active_runs
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return ScheduledPipeline(load_pipeline(path), str(project.root))


@pytest.fixture
def make_scheduler(store: Any) -> Iterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def make(pipelines: list[ScheduledPipeline], clock: FakeClock, *, on: Any = None,
             policy: Policy | None = None, owner: str | None = None) -> Scheduler:
        s = Scheduler(on or store, lambda: pipelines, policy=policy or Policy.trusted(), clock=clock,
                      owner=owner)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _logical_dates(store: Any, pipeline: str = "demo") -> list[datetime]:
    return sorted(r.logical_date for r in store.list_runs(pipeline=pipeline, limit=1000))


def _step(scheduler: Scheduler, clock: FakeClock, until: datetime, every: timedelta) -> None:
    while clock.now() < until:
        clock.at = min(clock.at + every, until)
        scheduler.poll()
    scheduler.wait_idle(timeout=60)


def test_a_daily_schedule_fires_once_per_day_through_both_dst_changes(
    project: Any, store: Any, make_scheduler: Callable[..., Scheduler]
) -> None:
    sp = _scheduled(project, {"cron": "30 2 * * *", "timezone": "Europe/Paris"})
    # spring forward: 2026-03-29 02:30 Paris does not exist
    clock = FakeClock(_utc(2026, 3, 27, 12))
    scheduler = make_scheduler([sp], clock)
    scheduler.poll()  # first sight: nothing was missed
    _step(scheduler, clock, _utc(2026, 3, 30, 12), timedelta(minutes=10))
    assert _logical_dates(store) == [_utc(2026, 3, 28, 1, 30), _utc(2026, 3, 29, 1, 0),
                                     _utc(2026, 3, 30, 0, 30)]
    assert all(r.state == "succeeded" for r in store.list_runs(pipeline="demo"))
    assert {r.trigger for r in store.list_runs(pipeline="demo")} == {"schedule"}  # recorded as started
    # fall back: 2026-10-25 02:30 Paris happens twice; one run (a pipeline the store has not seen)
    fall = _scheduled(project, {"cron": "30 2 * * *", "timezone": "Europe/Paris"}, name="fall",
                      file="fall.yaml")
    clock.at = _utc(2026, 10, 24, 12)
    scheduler2 = make_scheduler([fall], clock)
    scheduler2.poll()
    _step(scheduler2, clock, _utc(2026, 10, 26, 12), timedelta(minutes=10))
    assert _logical_dates(store, "fall") == [_utc(2026, 10, 25, 0, 30), _utc(2026, 10, 26, 1, 30)]


@pytest.mark.parametrize(
    ("catchup", "expected_hours"),
    [("all", [7, 8, 9, 10, 11, 12]), ("latest", [12]), ("none", [])],
)
def test_ticks_missed_while_no_scheduler_ran_are_caught_up_per_policy(
    project: Any, store: Any, make_scheduler: Callable[..., Scheduler], catchup: str,
    expected_hours: list[int]
) -> None:
    sp = _scheduled(project, {"cron": "0 * * * *", "catchup": catchup, "catchup_window": "6 hours"})
    clock = FakeClock(_utc(2026, 5, 1, 0, 30))
    first = make_scheduler([sp], clock)
    first.poll()
    clock.at = _utc(2026, 5, 1, 1, 0)
    first.poll()
    first.wait_idle(timeout=60)
    first.close()
    assert _logical_dates(store) == [_utc(2026, 5, 1, 1)]
    # down from 01:00 to 12:20; back up with the window of 6 hours: 07:00..12:00 count
    clock.at = _utc(2026, 5, 1, 12, 20)
    second = make_scheduler([sp], clock)
    second.poll()
    second.wait_idle(timeout=60)
    assert _logical_dates(store)[1:] == [_utc(2026, 5, 1, h) for h in expected_hours]
    # and from now on it runs each tick once, whatever the policy
    clock.at = _utc(2026, 5, 1, 13, 0)
    second.poll()
    second.poll()
    second.wait_idle(timeout=60)
    assert _logical_dates(store)[-1] == _utc(2026, 5, 1, 13)
    assert len(_logical_dates(store)) == 2 + len(expected_hours)


def test_jitter_delays_a_pipelines_ticks_by_a_fixed_offset(
    project: Any, store: Any, make_scheduler: Callable[..., Scheduler]
) -> None:
    sp = _scheduled(project, {"cron": "0 * * * *", "jitter": 600})
    offset = jitter_offset("demo", 600)
    assert timedelta(0) < offset <= timedelta(seconds=600)
    clock = FakeClock(_utc(2026, 5, 1, 0, 30))
    scheduler = make_scheduler([sp], clock)
    scheduler.poll()
    clock.at = _utc(2026, 5, 1, 1) + offset - timedelta(seconds=1)
    assert scheduler.poll() == []
    clock.at = _utc(2026, 5, 1, 1) + offset
    assert [f.tick for f in scheduler.poll()] == [_utc(2026, 5, 1, 1)]  # the logical date is the tick


def test_a_tick_whose_pipeline_is_at_max_active_runs_is_skipped_and_recorded(
    project: Any, store: Any, make_scheduler: Callable[..., Scheduler]
) -> None:
    marker = project.root / "started"
    path = project.pipeline([project.task("a", "sleep", args={"seconds": 30, "marker": str(marker)})])
    doc = yaml.safe_load(path.read_text())
    doc["spec"].update(schedule={"cron": "* * * * *"}, max_active_runs=1)
    path.write_text(yaml.safe_dump(doc))
    sp = ScheduledPipeline(load_pipeline(path), str(project.root))
    clock = FakeClock(_utc(2026, 5, 1))
    scheduler = make_scheduler([sp], clock)
    scheduler.poll()
    clock.advance(minutes=1)
    [first] = scheduler.poll()
    stop = threading.Event()
    while not marker.exists() and not stop.wait(0.05):
        pass  # the first run is now running (its task has started)
    clock.advance(minutes=1)
    [second] = scheduler.poll()
    assert second.future is not None
    second.future.result(timeout=30)
    ticks = {t.tick: t for t in ScheduleStore(store).ticks("demo")}
    assert second.outcome == ticks[second.tick].outcome == "skipped"
    assert "max_active_runs" in (ticks[second.tick].detail or "")
    assert ticks[first.tick].outcome == "started" and ticks[first.tick].run_id == first.run_id
    scheduler.close()  # stops the sleeping first run cleanly
    run = store.get_run(first.run_id)
    assert run is not None and run.state == "cancelled"


def test_scheduled_runs_are_sandboxed_unless_the_scheduler_is_trusted(
    project: Any, store: Any, make_scheduler: Callable[..., Scheduler], tmp_path: Path
) -> None:
    sp = _scheduled(project, {"cron": "* * * * *"})
    clock = FakeClock(_utc(2026, 5, 1))
    server = make_scheduler([sp], clock, policy=server_policy(data_root=str(tmp_path / "data")))
    server.poll()
    clock.advance(minutes=1)
    [fired] = server.poll()
    server.wait_idle(timeout=60)
    # the test's task module is not on the server's python allowlist: refused before anything ran
    assert fired.outcome == "failed"
    assert project.module in (fired.detail or "")
    assert store.list_runs(pipeline="demo") == []
    trusted = make_scheduler([sp], clock, owner="trusted")
    trusted.poll()
    clock.advance(minutes=1)
    [ran] = trusted.poll()
    trusted.wait_idle(timeout=60)
    assert ran.outcome == "started"
    run = store.get_run(ran.run_id)
    assert run is not None and run.state == "succeeded"


def test_the_folder_is_reloaded_and_a_bad_file_is_one_line(project: Any, tmp_path: Path) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    errors: list[str] = []
    source = DirectoryPipelines(folder, on_error=errors.append, recheck_seconds=0)
    assert source() == []
    good = _scheduled(project, {"cron": "0 6 * * *"})
    (folder / "good.yaml").write_text((project.root / "pipeline.yaml").read_text())
    (folder / "bad.yaml").write_text("apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: b}\nspec:\n"
                                     "  schedule: {cron: '0 6 1 * 1'}\n  tasks: [{id: a, type: python}]\n")
    assert [sp.pipeline.name for sp in source()] == [good.pipeline.name]
    assert len(errors) == 1 and "bad.yaml" in errors[0] and "day of the week" in errors[0]
    source()
    assert len(errors) == 1  # reported once, until the file changes


def _race(schedulers: list[Scheduler], clock: FakeClock, minutes: int) -> None:
    """Every scheduler polls every tick at the same moment, from its own thread."""
    for s in schedulers:
        s.poll()
    for _ in range(minutes):
        clock.advance(minutes=1)
        barrier = threading.Barrier(len(schedulers))

        def go(s: Scheduler, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            s.poll()

        threads = [threading.Thread(target=go, args=(s,)) for s in schedulers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for s in schedulers:
        s.wait_idle(timeout=120)


def test_two_schedulers_on_one_store_start_one_run_per_tick(
    project: Any, db_url: str, make_scheduler: Callable[..., Scheduler]
) -> None:
    pipelines = [_scheduled(project, {"cron": "* * * * *"}, name=f"p{i}", file=f"p{i}.yaml")
                 for i in range(3)]
    clock = FakeClock(_utc(2026, 5, 1))
    stores = [open_store(db_url), open_store(db_url)]
    try:
        schedulers = [make_scheduler(pipelines, clock, on=s, owner=f"s{i}") for i, s in enumerate(stores)]
        _race(schedulers, clock, minutes=5)
        won = [f for s in schedulers for f in s.fired]
        assert len(won) == 15
        for sp in pipelines:
            assert _logical_dates(stores[0], sp.pipeline.name) == [
                _utc(2026, 5, 1, 0, m) for m in range(1, 6)]
        runs = stores[0].list_runs(limit=100)
        assert len(runs) == 15 and all(r.state == "succeeded" for r in runs)
    finally:
        for s in stores:
            s.close()


def test_a_tick_claimed_by_a_scheduler_that_died_is_started_once_by_another_after_the_lease(
    project: Any, db_url: str, make_scheduler: Callable[..., Scheduler]
) -> None:
    sp = _scheduled(project, {"cron": "0 * * * *"})
    clock = FakeClock(_utc(2026, 5, 1, 0, 30))
    stores = [open_store(db_url) for _ in range(3)]
    try:
        dead = make_scheduler([sp], clock, on=stores[0], owner="dead")
        dead.poll()
        claimed: list[Any] = []
        # the process dies between the claim and the start: the claim is all it leaves behind
        dead._start = lambda sp, fired: claimed.append(fired)  # type: ignore[method-assign]
        clock.at = _utc(2026, 5, 1, 1, 0)
        [fired] = dead.poll()
        assert fired.run_id is not None and claimed == [fired]
        live = [make_scheduler([sp], clock, on=s, owner=f"live{i}") for i, s in enumerate(stores[1:])]
        for s in live:
            s.poll()  # within the lease: the claim is respected
        assert stores[1].list_runs(pipeline="demo") == []
        clock.at = _utc(2026, 5, 1, 1, 6)  # past the 5-minute lease: both race to take it over
        barrier = threading.Barrier(len(live))

        def go(s: Scheduler) -> None:
            barrier.wait()
            s.poll()

        threads = [threading.Thread(target=go, args=(s,)) for s in live]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in live:
            s.wait_idle(timeout=120)
        retaken = [f for s in live for f in s.fired if f.tick == _utc(2026, 5, 1, 1)]
        assert len(retaken) == 1 and retaken[0].outcome == "started"
        [run] = stores[1].list_runs(pipeline="demo")
        assert (run.id, run.logical_date, run.state) == (fired.run_id, _utc(2026, 5, 1, 1), "succeeded")
        [tick] = ScheduleStore(stores[1]).ticks("demo")
        taker = "live0" if retaken[0] in live[0].fired else "live1"
        assert (tick.outcome, tick.run_id, tick.claimed_by) == ("started", fired.run_id, taker)
        # the claimer was only slow after all and starts it now: the same run id, no second run
        Scheduler._start(dead, sp, fired)
        assert len(stores[1].list_runs(pipeline="demo")) == 1
        assert ScheduleStore(stores[1]).ticks("demo")[0].outcome == "started"
        # later polls leave the tick alone
        clock.at = _utc(2026, 5, 1, 1, 20)
        for s in live:
            s.poll()
            s.wait_idle(timeout=60)
        assert len(stores[1].list_runs(pipeline="demo")) == 1
    finally:
        for s in stores:
            s.close()


def test_pipelines_registered_in_the_store_are_scheduled_at_their_latest_version(
    project: Any, store: Any, make_scheduler: Callable[..., Scheduler]
) -> None:
    from udop.schedule.scheduler import StorePipelines
    from udop.spec.secure import stored_definition

    sp = _scheduled(project, {"cron": "*/5 * * * *"})
    unscheduled = _scheduled(project, {"cron": "0 0 * * *"}, name="other", file="other.yaml")
    store.register_pipeline("demo", stored_definition(sp.pipeline))
    doc = stored_definition(unscheduled.pipeline)
    doc["spec"].pop("schedule")
    store.register_pipeline("other", doc)
    source = StorePipelines(store, recheck_seconds=0)
    assert [p.pipeline.name for p in source()] == ["demo"]
    clock = FakeClock(_utc(2026, 5, 1))
    scheduler = make_scheduler([], clock)
    scheduler.pipelines = source
    scheduler.poll()
    clock.at = _utc(2026, 5, 1, 0, 5)
    [fired] = scheduler.poll()
    scheduler.wait_idle(timeout=60)
    assert fired.outcome == "started" and _logical_dates(store) == [_utc(2026, 5, 1, 0, 5)]
    # a new version without the schedule stops it
    doc = stored_definition(sp.pipeline)
    doc["spec"].pop("schedule")
    store.register_pipeline("demo", doc)
    assert source() == []


def test_udop_serve_scheduler_starts_and_stops_with_the_server(store: Any) -> None:
    from types import SimpleNamespace

    from udop.schedule.scheduler import serve_scheduler

    local = SimpleNamespace(store=store, launcher=SimpleNamespace(executor_name="local", policy=Policy.trusted(),
                                                                 data_root=None))
    halt = serve_scheduler(local)
    assert halt is not None
    assert any(t.name == "udop-scheduler" for t in threading.enumerate())
    halt()
    assert not any(t.name == "udop-scheduler" for t in threading.enumerate())
    on_aws = SimpleNamespace(store=store, launcher=SimpleNamespace(executor_name="stepfunctions"))
    assert serve_scheduler(on_aws) is None


def _triggered(project: Any, folder: Path, *, name: str = "landing") -> ScheduledPipeline:
    path = project.pipeline([project.task("a", "echo_args", args={"file": "${params.file}"})], name=name,
                            params={"file": {"type": "str"}}, file=f"{name}.yaml")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["trigger"] = {"files": {"path": str(folder), "pattern": "*.csv", "param": "file"}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return ScheduledPipeline(load_pipeline(path), str(project.root))


def _land(path: Path, text: str, age: float = 7200.0) -> None:
    import os
    import time

    path.write_text(text)
    stamp = time.time() - age  # settled: not being written any more
    os.utime(path, (stamp, stamp))


def test_a_file_landing_starts_one_run_per_file_version_with_the_file_as_parameter(
    project: Any, db_url: str, make_scheduler: Callable[..., Scheduler], tmp_path: Path
) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    sp = _triggered(project, folder)
    stores = [open_store(db_url), open_store(db_url)]
    try:
        clock = FakeClock(_utc(2026, 5, 1))
        schedulers = [make_scheduler([sp], clock, on=s, owner=f"s{i}") for i, s in enumerate(stores)]
        for each in schedulers:
            each.settle_seconds = 3600  # a file written during the test is surely "being written"
        _land(folder / "a.csv", "x\n1\n")
        _land(folder / "notes.txt", "not a csv")
        (folder / "fresh.csv").write_text("still being written")  # too young (now): not yet
        _race(schedulers, clock, minutes=2)  # both poll, at the same moments
        runs = stores[0].list_runs(pipeline="landing")
        assert [r.params for r in runs] == [{"file": str(folder / "a.csv")}]
        assert runs[0].trigger == "trigger"  # started by a file event, not a schedule's tick
        run = stores[0].get_run(runs[0].id)
        assert run is not None and run.state == "succeeded"
        assert run.tasks[0].result is not None
        assert run.tasks[0].result["value"] == {"file": str(folder / "a.csv")}
        # the same version again: nothing; a new version of it (changed): one more run
        _land(folder / "a.csv", "x\n1\n2\n", age=7000)
        _land(folder / "fresh.csv", "written now")  # its writer finished a while ago
        _race(schedulers, clock, minutes=2)
        files = sorted(r.params["file"] for r in stores[0].list_runs(pipeline="landing"))
        assert files == [str(folder / "a.csv")] * 2 + [str(folder / "fresh.csv")]
        # a scheduler started later does not run what was already run
        late = make_scheduler([sp], clock, on=stores[1], owner="late")
        assert late.poll() == []
    finally:
        for s in stores:
            s.close()


def test_a_server_refuses_a_trigger_folder_outside_its_roots(
    project: Any, store: Any, make_scheduler: Callable[..., Scheduler], tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _land(outside / "a.csv", "x\n")
    sp = _triggered(project, outside)
    server = make_scheduler([sp], FakeClock(_utc(2026, 5, 1)),
                            policy=server_policy(data_root=str(tmp_path / "data")))
    assert server.poll() == [] and server.poll() == []
    assert store.list_runs(pipeline="landing") == []
