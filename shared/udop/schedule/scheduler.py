"""The local scheduler: starts each pipeline's runs at its schedule's ticks (``udop scheduler``).

Each tick is claimed in the metadata store before its run starts (``ScheduleStore.claim_tick``), so
any number of schedulers on one database start one run per tick. Ticks missed while no scheduler
ran are caught up per ``schedule.catchup`` within ``schedule.catchup_window``; ``schedule.jitter``
delays every tick of a pipeline by the same offset (a hash of its name), which spreads pipelines
ticking at the same minute. A tick whose run cannot start because the pipeline's
``max_active_runs`` are taken is recorded as skipped, not queued: the next tick runs as usual.

Scheduled runs are hostile input by default (the server-mode ``udop.sandbox`` Policy, as for the
API): whoever can write a definition into the folder a scheduler reads gets runs without typing a
command. ``trusted=True`` (``udop scheduler --trusted``) runs them as ``udop run`` does.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from udop.errors import RunLimitReached, SpecErrors, StoreError, UdopError
from udop.executor.events import RunEvent
from udop.sandbox import Policy
from udop.schedule.expr import fires_between, rate_seconds
from udop.schedule.store import ScheduleStore
from udop.spec.models import Pipeline
from udop.store.sql import SqlMetadataStore

if TYPE_CHECKING:
    from udop.executor.local import LocalExecutor

__all__ = ["Clock", "DirectoryPipelines", "Fired", "ScheduledPipeline", "Scheduler", "StorePipelines",
           "SystemClock", "jitter_offset", "serve_scheduler", "start_in_background"]

log = logging.getLogger(__name__)


class Clock(Protocol):
    def now(self) -> datetime: ...

    def sleep(self, seconds: float, stop: threading.Event) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        stop.wait(seconds)


@dataclass(frozen=True)
class ScheduledPipeline:
    pipeline: Pipeline
    #: the folder its python tasks import from (trusted mode; a server's code_dir otherwise)
    base_dir: str | None = None


@dataclass
class Fired:
    """A tick this scheduler claimed, and what became of it."""

    pipeline: str
    tick: datetime
    run_id: str | None = None
    outcome: str = "claimed"  # started | skipped | failed
    detail: str | None = None
    #: seconds from the tick (plus jitter) to the run being recorded as running
    delay: float | None = None
    #: parameters of the run (a file trigger passes the file); none: the defaults
    params: dict[str, Any] = field(default_factory=dict)
    #: claimed as a trigger event (a file, an upstream run), not as a row of ``schedule_ticks``
    event: str | None = None
    future: Future[None] | None = field(default=None, repr=False)
    #: how its run is recorded as started: a schedule's tick, or a file trigger's event
    trigger: str = "schedule"


def jitter_offset(pipeline: str, jitter: int) -> timedelta:
    """A fixed offset in [0, jitter] seconds per pipeline name: the same on every scheduler."""
    if jitter <= 0:
        return timedelta(0)
    digest = int.from_bytes(hashlib.sha256(pipeline.encode()).digest()[:4], "big")
    return timedelta(seconds=digest % (jitter + 1))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class Scheduler:
    """Fire the ticks of ``pipelines()`` on ``store``; ``poll`` once, or ``run_forever``."""

    def __init__(
        self,
        store: SqlMetadataStore,
        pipelines: Callable[[], Sequence[ScheduledPipeline]],
        *,
        policy: Policy,
        clock: Clock | None = None,
        owner: str | None = None,
        max_runs: int = 8,
        workers: int = 4,
        data_root: str | None = None,
        grace_seconds: float = 60.0,
        max_sleep: float = 5.0,
        settle_seconds: float = 1.0,
        lease_seconds: float = 300.0,
        executor: Callable[..., LocalExecutor] | None = None,
    ) -> None:
        import os
        import socket

        self.store = store
        self.ticks = ScheduleStore(store)
        self.pipelines = pipelines
        self.policy = policy
        self.clock = clock or SystemClock()
        self.owner = owner or f"scheduler-{os.getpid()}@{socket.gethostname()}"
        self.workers = workers
        self.data_root = data_root
        #: makes each run's executor (the LocalExecutor's arguments): ``CeleryExecutor`` sends the
        #: runs' attempts to Celery workers
        self.make_executor = executor
        #: catchup "none": a tick later than this is missed, not run
        self.grace = timedelta(seconds=grace_seconds)
        self.max_sleep = max_sleep
        #: a tick claimed this long ago whose run never started is taken over by another scheduler
        self.lease = timedelta(seconds=lease_seconds)
        self._pool = ThreadPoolExecutor(max_workers=max_runs, thread_name_prefix="udop-sched")
        self._last: dict[str, datetime] = {}  # pipeline -> the latest tick considered
        self._events: dict[str, set[str]] = {}  # pipeline -> trigger events already claimed (by anyone)
        #: trigger "after": upstream runs that ended before this are not looked at (per downstream)
        self._after_since: dict[str, datetime] = {}
        self._refused: set[str] = set()  # pipelines whose trigger folder the policy refuses (said once)
        #: a file younger than this may still be being written: it triggers at a later poll
        self.settle_seconds = settle_seconds
        self._lock = threading.Lock()
        self._executors: dict[str, Any] = {}  # run id -> LocalExecutor (to stop them on close)
        self.fired: list[Fired] = []

    # ------------------------------------------------------------------ deciding

    def _due(self, sp: ScheduledPipeline, now: datetime) -> tuple[list[datetime], datetime | None]:
        """(ticks to fire now, the latest tick considered) for one pipeline at ``now``."""
        schedule = sp.pipeline.spec.schedule
        assert schedule is not None
        name = sp.pipeline.name
        effective = now - jitter_offset(name, schedule.jitter)
        last = self._last.get(name)
        if last is None:
            last = self.ticks.last_tick(name)
            if last is None:  # never scheduled: nothing was missed, start from now
                last = effective
                self._last[name] = last
        window_start = effective - timedelta(seconds=rate_seconds(schedule.catchup_window))
        due = list(fires_between(schedule, max(last, window_start), effective))
        if not due:
            return [], None
        if schedule.catchup == "all":
            chosen = due
        elif schedule.catchup == "latest":
            chosen = due[-1:]
        else:
            chosen = [t for t in due[-1:] if effective - t <= self.grace]
        for missed in due:
            if missed not in chosen:
                log.info("schedule of %s: tick %s missed (catchup %s)", name, missed.isoformat(),
                         schedule.catchup)
        return chosen, due[-1]

    def poll(self) -> list[Fired]:
        """Claim and start every tick due now; return the ticks this scheduler won."""
        from udop.executor.local import new_run_id

        now = self.clock.now()
        won: list[Fired] = []
        for sp in self.pipelines():
            trigger = sp.pipeline.spec.trigger
            if trigger is not None and trigger.files is not None:
                won.extend(self._files_landed(sp, now))
            if trigger is not None and trigger.after is not None:
                won.extend(self._upstream_succeeded(sp, now))
            schedule = sp.pipeline.spec.schedule
            if schedule is None or not schedule.enabled:
                continue
            chosen, latest = self._due(sp, now)
            for tick in chosen:
                run_id = new_run_id()
                if not self.ticks.claim_tick(sp.pipeline.name, tick, self.owner, run_id=run_id, at=now):
                    continue  # another scheduler has it
                fired = Fired(sp.pipeline.name, tick, run_id=run_id)
                fired.future = self._pool.submit(self._start, sp, fired)
                won.append(fired)
            if latest is not None:
                self._last[sp.pipeline.name] = latest
        won.extend(self._retake_stale(now))
        with self._lock:
            self.fired.extend(won)
        return won

    def _retake_stale(self, now: datetime) -> list[Fired]:
        """Ticks claimed more than ``lease`` ago whose run never started (the scheduler that claimed
        them died in between): one scheduler takes each over and starts its run, under the run id the
        claim recorded, so that even a claimer that was only slow cannot make it two runs. A tick whose
        run exists after all is recorded as started; one older than its pipeline's catch-up window is
        recorded as failed (as a missed tick, it would not be run any more)."""
        stale = self.ticks.stale_ticks(now - self.lease)
        if not stale:
            return []
        known = {sp.pipeline.name: sp for sp in self.pipelines()
                 if sp.pipeline.spec.schedule is not None and sp.pipeline.spec.schedule.enabled}
        won = []
        for tick in stale:
            sp = known.get(tick.pipeline)
            if sp is None:
                continue  # not this scheduler's pipeline (another folder, or no longer scheduled)
            if tick.run_id is not None and self.store.get_run(tick.run_id) is not None:
                self.ticks.finish_tick(tick.pipeline, tick.tick, outcome="started", run_id=tick.run_id)
                continue
            schedule = sp.pipeline.spec.schedule
            assert schedule is not None
            if not self.ticks.retake_tick(tick, self.owner, now):
                continue  # another scheduler took it over first
            too_old = now - tick.tick > timedelta(seconds=rate_seconds(schedule.catchup_window))
            if too_old:
                self.ticks.finish_tick(tick.pipeline, tick.tick, outcome="failed",
                                       detail=f"claimed by {tick.claimed_by}, whose run never started; "
                                              "older than the catch-up window when taken over")
                continue
            log.warning("schedule of %s: tick %s was claimed by %s at %s and its run never started; "
                        "starting it", tick.pipeline, tick.tick.isoformat(), tick.claimed_by,
                        tick.claimed_at.isoformat())
            fired = Fired(tick.pipeline, tick.tick, run_id=tick.run_id)
            fired.future = self._pool.submit(self._start, sp, fired)
            won.append(fired)
        return won

    def _files_landed(self, sp: ScheduledPipeline, now: datetime) -> list[Fired]:
        """One run per new file version under the trigger's folder (path, mtime and size): claimed in
        the metadata store, so one run per version whatever the number of schedulers."""
        from udop.executor.local import new_run_id

        trigger = sp.pipeline.spec.trigger.files if sp.pipeline.spec.trigger is not None else None
        assert trigger is not None
        name = sp.pipeline.name
        if trigger.path.startswith("s3://"):  # an EventBridge rule starts those on AWS (udop deploy)
            if name not in self._refused:
                self._refused.add(name)
                log.warning("trigger of %s: %s is watched on AWS only (udop deploy creates its EventBridge "
                            "rule); the local scheduler ignores it", name, trigger.path)
            return []
        folder = Path(trigger.path)
        if not folder.is_absolute() and sp.base_dir:
            folder = Path(sp.base_dir) / folder
        try:
            self.policy.confine(str(folder), what="spec.trigger.files.path")
        except UdopError as exc:
            if name not in self._refused:
                self._refused.add(name)
                log.error("trigger of %s: %s", name, _first_line(exc))
            return []
        if name not in self._events:
            self._events[name] = self.ticks.seen_events(name)
        seen = self._events[name]
        settled = time.time() - self.settle_seconds
        won = []
        for path in sorted(folder.glob(trigger.pattern)) if folder.is_dir() else []:
            try:
                st = path.stat()
            except OSError:
                continue  # gone meanwhile
            if not path.is_file() or st.st_mtime > settled:
                continue  # still being written: next poll
            event = f"{path.relative_to(folder)}@{st.st_mtime_ns}:{st.st_size}"
            if event in seen:
                continue
            seen.add(event)
            run_id = new_run_id()
            if not self.ticks.claim_event(name, event, self.owner, run_id):
                continue
            params = {trigger.param: str(path)} if trigger.param else {}
            fired = Fired(name, now, run_id=run_id, params=params, event=event, trigger="trigger")
            fired.future = self._pool.submit(self._start, sp, fired)
            won.append(fired)
        return won

    def _upstream_succeeded(self, sp: ScheduledPipeline, now: datetime) -> list[Fired]:
        """One run per succeeded run of the upstream pipeline (``trigger: after:``), claimed in the
        metadata store as the event ``run:<upstream run id>``, so one downstream run per upstream run
        whatever the number of schedulers. The downstream run gets the upstream run's logical date.

        Upstream runs that ended before ``window`` are not looked at; nor those that ended before any
        scheduler first saw the downstream (it missed nothing): the first one records that moment as
        the event ``after:since``, which every scheduler reads."""
        from udop.executor.local import new_run_id

        after = sp.pipeline.spec.trigger.after if sp.pipeline.spec.trigger is not None else None
        assert after is not None
        name = sp.pipeline.name
        if name not in self._events:
            self._events[name] = self.ticks.seen_events(name)
        seen = self._events[name]
        since = now - timedelta(seconds=rate_seconds(after.window))
        if name not in self._after_since:
            self.ticks.claim_event(name, "after:since", self.owner, None, at=now)  # the first one wins
            self._after_since[name] = self.ticks.event_claimed_at(name, "after:since") or now
        since = max(since, self._after_since[name])
        won = []
        for upstream_id, logical_date in self.ticks.succeeded_runs(after.pipeline, since):
            event = f"run:{upstream_id}"
            if event in seen:
                continue
            seen.add(event)
            run_id = new_run_id()
            if not self.ticks.claim_event(name, event, self.owner, run_id):
                continue
            params = {after.param: upstream_id} if after.param else {}
            fired = Fired(name, logical_date, run_id=run_id, params=params, event=event, trigger="trigger")
            fired.future = self._pool.submit(self._start, sp, fired)
            won.append(fired)
        return won

    def next_wake(self, now: datetime) -> datetime:
        """When the next tick of any pipeline is due (at most ``max_sleep`` seconds away)."""
        wake = now + timedelta(seconds=self.max_sleep)
        for sp in self.pipelines():
            schedule = sp.pipeline.spec.schedule
            if schedule is None or not schedule.enabled:
                continue
            offset = jitter_offset(sp.pipeline.name, schedule.jitter)
            after = self._last.get(sp.pipeline.name, now - offset)
            upcoming = next(fires_between(schedule, after, None)) + offset
            wake = min(wake, upcoming)
        return wake

    # ------------------------------------------------------------------ starting

    def _start(self, sp: ScheduledPipeline, fired: Fired) -> None:
        from udop.executor.local import LocalExecutor, new_run_id
        from udop.spec.secure import check_definition

        pipeline = sp.pipeline
        run_id = fired.run_id or new_run_id()
        fired.run_id = run_id

        def on_event(event: RunEvent) -> None:
            if event.kind == "run" and event.state == "running" and fired.outcome == "claimed":
                schedule = pipeline.spec.schedule
                jitter = jitter_offset(pipeline.name, schedule.jitter if schedule else 0)
                fired.delay = (self.clock.now() - fired.tick - jitter).total_seconds()
                fired.outcome = "started"
                if fired.event is None:
                    self.ticks.finish_tick(pipeline.name, fired.tick, outcome="started", run_id=run_id)

        try:
            SpecErrors.collect(check_definition(pipeline, self.policy))
            services = {"base_dir": sp.base_dir} if sp.base_dir and not self.policy.is_server else {}
            executor = (self.make_executor or LocalExecutor)(
                self.store, workers=self.workers, data_root=self.data_root, policy=self.policy,
                on_event=on_event, services=services)
            with self._lock:
                self._executors[run_id] = executor
            try:
                executor.run(pipeline, params=fired.params, run_id=run_id, logical_date=fired.tick,
                             trigger=fired.trigger)
            finally:
                with self._lock:
                    self._executors.pop(run_id, None)
        except RunLimitReached as exc:
            self._finish(fired, "skipped", None, f"max_active_runs: {_first_line(exc)}")
        except StoreError as exc:
            if fired.outcome == "claimed" and "already exists" in str(exc) and self.store.get_run(run_id):
                # a tick taken over after its lease, whose first claimer was only slow and started the
                # run (the same id) first: that run is the tick's one run
                fired.outcome = "started"
                if fired.event is None:
                    self.ticks.finish_tick(pipeline.name, fired.tick, outcome="started", run_id=run_id)
            elif fired.outcome == "claimed":
                self._finish(fired, "failed", None, _first_line(exc))
            else:
                log.warning("scheduled run %s of %s: %s", run_id, pipeline.name, _first_line(exc))
        except (UdopError, OSError) as exc:
            if fired.outcome == "claimed":
                self._finish(fired, "failed", None, _first_line(exc))
            else:
                log.warning("scheduled run %s of %s: %s", run_id, pipeline.name, _first_line(exc))
        except Exception as exc:  # a bug must not stop the scheduler; the tick says what happened
            log.exception("scheduled run %s of %s failed to start", run_id, pipeline.name)
            if fired.outcome == "claimed":
                self._finish(fired, "failed", None, _first_line(exc))

    def _finish(self, fired: Fired, outcome: str, run_id: str | None, detail: str) -> None:
        fired.outcome, fired.detail = outcome, detail
        fired.run_id = run_id
        what = fired.event or f"tick {fired.tick.isoformat()}"
        log.warning("schedule of %s: %s %s: %s", fired.pipeline, what, outcome, detail)
        if fired.event is None:
            self.ticks.finish_tick(fired.pipeline, fired.tick, outcome=outcome, run_id=run_id, detail=detail)

    # ------------------------------------------------------------------ running

    def wait_idle(self, timeout: float | None = None) -> None:
        """Wait for the runs started so far to end (tests, and a clean stop)."""
        with self._lock:
            futures = [f.future for f in self.fired if f.future is not None]
        for future in futures:
            future.result(timeout=timeout)

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.poll()
            except UdopError as exc:  # e.g. the database is unreachable for a moment: try again
                log.error("scheduler: %s", _first_line(exc))
            now = self.clock.now()
            self.clock.sleep(max(0.0, (self.next_wake(now) - now).total_seconds()), stop)

    def close(self) -> None:
        """Stop: running scheduled runs are cancelled cleanly (``udop run --resume`` continues them)."""
        with self._lock:
            for executor in self._executors.values():
                executor.request_stop("the scheduler stopped")
        self._pool.shutdown(wait=True, cancel_futures=True)


class DirectoryPipelines:
    """The scheduled definitions in a folder, reloaded when a file changes (by mtime and size).

    A file that does not load is reported once (one line) and left out until it changes.
    """

    SUFFIXES = (".yaml", ".yml", ".json")

    def __init__(self, folder: str | Path, *, on_error: Callable[[str], None] | None = None,
                 recheck_seconds: float = 5.0) -> None:
        self.folder = Path(folder)
        self.on_error = on_error or (lambda line: log.warning("%s", line))
        self.recheck_seconds = recheck_seconds
        self._seen: dict[Path, tuple[int, int]] = {}
        self._loaded: dict[Path, ScheduledPipeline] = {}
        self._current: list[ScheduledPipeline] = []
        self._checked = 0.0

    def _files(self) -> dict[Path, tuple[int, int]]:
        out = {}
        for path in sorted(self.folder.iterdir()):
            if path.suffix in self.SUFFIXES and not path.name.endswith(".status.json") and path.is_file():
                st = path.stat()
                out[path] = (st.st_mtime_ns, st.st_size)
        return out

    def __call__(self) -> list[ScheduledPipeline]:
        from udop.spec.loader import load_pipeline

        if time.monotonic() - self._checked >= self.recheck_seconds or not self._seen:
            self._checked = time.monotonic()
            files = self._files()
            for path in set(self._loaded) - set(files):
                del self._loaded[path]
            for path, stamp in files.items():
                if self._seen.get(path) == stamp:
                    continue
                self._loaded.pop(path, None)
                try:
                    pipeline = load_pipeline(path)
                except SpecErrors as exc:
                    self.on_error(str(exc).splitlines()[0])
                else:
                    if pipeline.spec.schedule is not None or pipeline.spec.trigger is not None:
                        self._loaded[path] = ScheduledPipeline(pipeline, str(path.parent.resolve()))
            self._seen = files
            names: dict[str, Path] = {}
            self._current = []
            for path, sp in self._loaded.items():
                if sp.pipeline.name in names:
                    self.on_error(f"{path}: pipeline {sp.pipeline.name!r} is also defined in "
                                  f"{names[sp.pipeline.name]}; scheduling the first")
                    continue
                names[sp.pipeline.name] = path
                self._current.append(sp)
        return list(self._current)


class StorePipelines:
    """The scheduled pipelines registered in the metadata store (``POST /pipelines`` on a local
    server): each one's latest version, re-read every ``recheck_seconds``."""

    def __init__(self, store: SqlMetadataStore, *, recheck_seconds: float = 5.0) -> None:
        self.store = store
        self.recheck_seconds = recheck_seconds
        self._checked = 0.0
        self._parsed: dict[tuple[str, int], Pipeline | None] = {}
        self._current: list[ScheduledPipeline] = []

    def __call__(self) -> list[ScheduledPipeline]:
        from pydantic import ValidationError

        if self._current and time.monotonic() - self._checked < self.recheck_seconds:
            return list(self._current)
        self._checked = time.monotonic()
        current = []
        for record in self.store.list_pipelines():
            latest = record.latest
            if latest is None:
                continue
            key = (record.name, latest.version)
            if key not in self._parsed:
                try:
                    self._parsed[key] = Pipeline.model_validate(latest.definition)
                except ValidationError as exc:  # stored by an older udop: reported, not scheduled
                    log.warning("pipeline %s version %s cannot be scheduled: %s", record.name,
                                latest.version, _first_line(exc))
                    self._parsed[key] = None
            pipeline = self._parsed[key]
            if pipeline is not None and (pipeline.spec.schedule is not None
                                         or pipeline.spec.trigger is not None):
                current.append(ScheduledPipeline(pipeline))
        self._current = current
        return list(current)


def start_in_background(scheduler: Scheduler) -> Callable[[], None]:
    """Run ``scheduler`` in a daemon thread; returns the function that stops it (and its runs)."""
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run_forever, args=(stop,), name="udop-scheduler", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join()
        scheduler.close()

    return halt


def serve_scheduler(ctx: Any) -> Callable[[], None] | None:
    """``udop serve --scheduler``: schedule the server's registered pipelines under its policy (the
    runs are API input); None when the server runs on Step Functions (EventBridge schedules there)."""
    if ctx.launcher.executor_name != "local":
        log.warning("udop serve --scheduler: runs go to Step Functions here; EventBridge Scheduler "
                    "starts scheduled pipelines (docs/scheduling.md)")
        return None
    scheduler = Scheduler(ctx.store, StorePipelines(ctx.store), policy=ctx.launcher.policy,
                          data_root=getattr(ctx.launcher, "data_root", None))
    return start_in_background(scheduler)
