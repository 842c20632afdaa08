"""``trigger: after:``: a pipeline starts once per succeeded run of another, with the upstream run id as
a parameter, claimed in the real metadata store (SQLite and PostgreSQL) so that two schedulers start
one downstream run per upstream run."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from udop.errors import UdopError
from udop.executor.local import LocalExecutor
from udop.sandbox import Policy
from udop.schedule.scheduler import ScheduledPipeline, Scheduler
from udop.spec.loader import load_pipeline
from udop.store import open_store


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.at = now

    def now(self) -> datetime:
        return self.at

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        self.at += timedelta(seconds=seconds)


def _upstream(project: Any) -> Any:
    (project.root / "fixed").write_text("")  # its task succeeds with flag=fixed, fails with another
    path = project.pipeline([project.task("a", "fail_unless_flag", args={"flag": "${params.flag}"})],
                            name="up", params={"flag": {"type": "str", "default": "fixed"}}, file="up.yaml")
    return load_pipeline(path)


def _downstream(project: Any, after: dict[str, Any]) -> ScheduledPipeline:
    path = project.pipeline([project.task("a", "echo_args", args={"upstream": "${params.upstream}"})],
                            name="down", params={"upstream": {"type": "str", "default": "none"}},
                            file="down.yaml")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["trigger"] = {"after": after}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return ScheduledPipeline(load_pipeline(path), str(project.root))


def _run_upstream(store: Any, pipeline: Any, day: int, flag: str = "fixed") -> str:
    run_id = f"up-{day}-{flag}"
    with contextlib.suppress(UdopError):  # the failing upstream run: recorded as failed
        LocalExecutor(store).run(pipeline, params={"flag": flag}, run_id=run_id,
                                 logical_date=datetime(2026, 5, day, tzinfo=UTC))
    return run_id


@pytest.fixture
def stores(db_url: str) -> Iterator[list[Any]]:
    opened = [open_store(db_url), open_store(db_url)]
    yield opened
    for s in opened:
        s.close()


def test_a_downstream_runs_once_per_succeeded_upstream_run_with_its_id_and_logical_date(
    project: Any, stores: list[Any]
) -> None:
    up = _upstream(project)
    down = _downstream(project, {"pipeline": "up", "param": "upstream"})
    history = _run_upstream(stores[0], up, 1)  # succeeded before any scheduler knew "down"
    clock = FakeClock(datetime.now(UTC))
    schedulers = [Scheduler(s, lambda: [down], policy=Policy.trusted(), clock=clock, owner=f"s{i}")
                  for i, s in enumerate(stores)]
    try:
        for s in schedulers:
            assert s.poll() == []  # "down" missed nothing
        first, failed, second = (_run_upstream(stores[0], up, 2), _run_upstream(stores[0], up, 3, "broken"),
                                 _run_upstream(stores[0], up, 4))
        assert stores[0].get_run(failed).state == "failed"
        clock.at = datetime.now(UTC)
        barrier = threading.Barrier(2)

        def go(s: Scheduler) -> None:
            barrier.wait()
            s.poll()

        threads = [threading.Thread(target=go, args=(s,)) for s in schedulers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in schedulers:
            s.wait_idle(timeout=60)
            s.poll()  # again: nothing new
            s.wait_idle(timeout=60)
        runs = sorted(stores[0].list_runs(pipeline="down"), key=lambda r: r.logical_date)
        assert [(r.params, r.logical_date, r.state) for r in runs] == [
            ({"upstream": first}, datetime(2026, 5, 2, tzinfo=UTC), "succeeded"),
            ({"upstream": second}, datetime(2026, 5, 4, tzinfo=UTC), "succeeded")]
        assert history not in {r.params["upstream"] for r in runs}
        result = stores[0].get_run(runs[0].id).tasks[0].result
        assert result is not None and result["value"] == {"upstream": first}
        # a scheduler started later does not run them again, but does run a new upstream success
        late = Scheduler(stores[1], lambda: [down], policy=Policy.trusted(), clock=clock, owner="late")
        schedulers.append(late)
        assert late.poll() == []
        third = _run_upstream(stores[0], up, 5)
        clock.at = datetime.now(UTC)
        [fired] = late.poll()
        late.wait_idle(timeout=60)
        assert fired.params == {"upstream": third} and fired.outcome == "started"
    finally:
        for s in schedulers:
            s.close()


def test_without_a_param_the_downstream_runs_with_its_defaults(project: Any, store: Any) -> None:
    up = _upstream(project)
    down = _downstream(project, {"pipeline": "up"})
    clock = FakeClock(datetime.now(UTC))
    scheduler = Scheduler(store, lambda: [down], policy=Policy.trusted(), clock=clock)
    try:
        scheduler.poll()
        _run_upstream(store, up, 2)
        clock.at = datetime.now(UTC)
        assert len(scheduler.poll()) == 1
        scheduler.wait_idle(timeout=60)
        [run] = store.list_runs(pipeline="down")
        assert run.params == {"upstream": "none"} and run.state == "succeeded"
    finally:
        scheduler.close()


def test_the_local_scheduler_leaves_s3_triggers_to_aws(
    project: Any, store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = project.pipeline([project.task("a", "noop")], name="landing", params={"file": {"type": "str"}},
                            file="landing.yaml")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["trigger"] = {"files": {"path": "s3://bucket/incoming/", "param": "file"}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    sp = ScheduledPipeline(load_pipeline(path), str(project.root))
    scheduler = Scheduler(store, lambda: [sp], policy=Policy.trusted(), clock=FakeClock(datetime.now(UTC)))
    try:
        assert scheduler.poll() == [] and scheduler.poll() == []
    finally:
        scheduler.close()
    said = [r.getMessage() for r in caplog.records if "s3://bucket/incoming/" in r.getMessage()]
    assert len(said) == 1 and "on AWS only" in said[0]  # said once, not at every poll
