"""Backfills: one run per logical date of a range, ``max_parallel`` at a time, kept as one unit.

A backfill is a row (id, pipeline, range, step) and its logical dates, each with the run it got.
It can be listed, cancelled (its running runs stop cleanly; from any process: the runner watches
the row) and resumed (dates without a run start, failed and cancelled runs resume from their failed
tasks, succeeded ones stay).
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any

from udop.errors import InputError, UdopError
from udop.executor.events import RunEvent
from udop.sandbox import Policy
from udop.schedule.store import BackfillRecord, ScheduleStore
from udop.spec.models import Pipeline
from udop.store.sql import SqlMetadataStore

__all__ = ["MAX_DATES", "BackfillRunner", "cancel_backfill", "logical_dates", "parse_date", "parse_step"]

log = logging.getLogger(__name__)

#: a backfill of more dates than this is refused (a typo in --step, not a plan)
MAX_DATES = 10_000
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_step(step: str) -> timedelta:
    """``30m``, ``6h``, ``1d``, ``1w`` -> a timedelta; ``InputError`` otherwise."""
    match = re.fullmatch(r"(\d+)([mhdw])", step.strip())
    if not match or int(match.group(1)) == 0:
        raise InputError(f"--step {step!r}: write a positive number and a unit: 30m, 6h, 1d or 1w")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def parse_date(text: str, *, what: str) -> datetime:
    """An ISO date (midnight UTC) or datetime (UTC when it has no offset)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"{what} {text!r} is not an ISO date or datetime (e.g. 2024-01-31)") from None
    if len(text) == 10:
        value = datetime.combine(date.fromisoformat(text), datetime.min.time())
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def logical_dates(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """``start``, ``start + step``, ... up to and including ``end``."""
    if end < start:
        raise InputError(f"--to {end.isoformat()} is before --from {start.isoformat()}")
    count = int((end - start) / step) + 1
    if count > MAX_DATES:
        raise InputError(f"{count} logical dates from {start.isoformat()} to {end.isoformat()}: more than "
                         f"{MAX_DATES}; use a larger --step or a shorter range")
    return [start + i * step for i in range(count)]


def cancel_backfill(store: SqlMetadataStore, backfill_id: str) -> BackfillRecord:
    """Mark a backfill cancelled: its runner stops its running runs and starts no more. Runs of a
    runner that is gone (e.g. killed) and left running are not touched here."""
    ticks = ScheduleStore(store)
    record = ticks.get_backfill(backfill_id)
    if record is None:
        raise InputError(f"no backfill {backfill_id!r} (see `udop backfills list`)")
    if record.state != "running":
        raise InputError(f"backfill {backfill_id!r} has already ended ({record.state})")
    ticks.set_backfill_state(backfill_id, "cancelled", error="cancelled")
    updated = ticks.get_backfill(backfill_id)
    assert updated is not None
    return updated


class BackfillRunner:
    """Run the dates of a backfill with ``LocalExecutor``s in this process."""

    def __init__(
        self,
        store: SqlMetadataStore,
        pipeline: Pipeline,
        *,
        policy: Policy | None = None,
        workers: int = 4,
        data_root: str | None = None,
        services: Mapping[str, Any] | None = None,
        on_event: Callable[[RunEvent], None] | None = None,
        watch_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.ticks = ScheduleStore(store)
        self.pipeline = pipeline
        self.policy = policy or Policy.trusted()
        self.workers = workers
        self.data_root = data_root
        self.services = dict(services or {})
        self.on_event = on_event
        self.watch_seconds = watch_seconds
        self._lock = threading.Lock()
        self._active: dict[datetime, Any] = {}  # logical date -> its LocalExecutor
        self._cancelled = threading.Event()
        #: python modules are checked where the tasks run (on Step Functions: by the task runner)
        self.check_modules = True

    def create(self, *, start: datetime, end: datetime, step: str, max_parallel: int,
               params: Mapping[str, Any] | None = None, executor: str = "local") -> BackfillRecord:
        """Record a backfill (nothing runs yet); parameters are checked now, not per date."""
        from udop.errors import SpecErrors
        from udop.spec.params import resolve_params
        from udop.spec.secure import check_definition

        if max_parallel < 1:
            raise InputError("--max-parallel must be at least 1")
        SpecErrors.collect(check_definition(self.pipeline, self.policy, check_modules=self.check_modules))
        resolve_params(self.pipeline, params)
        dates = logical_dates(start, end, parse_step(step))
        self.store.register_pipeline(self.pipeline.name, _stored(self.pipeline))
        return self.ticks.create_backfill(
            backfill_id=f"bf-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
            pipeline=self.pipeline.name, dates=dates, start=start, end=end, step=step,
            max_parallel=max_parallel, params=dict(params or {}), executor=executor)

    def run(self, backfill_id: str, *, resume: bool = False) -> BackfillRecord:
        """Run every date that has not succeeded; return the backfill's final record."""
        record = self.ticks.get_backfill(backfill_id)
        if record is None:
            raise InputError(f"no backfill {backfill_id!r} (see `udop backfills list`)")
        if record.pipeline != self.pipeline.name:
            raise InputError(f"backfill {backfill_id!r} is of pipeline {record.pipeline!r}, not "
                             f"{self.pipeline.name!r}")
        if resume:
            if record.state == "succeeded":
                raise InputError(f"backfill {backfill_id!r} already succeeded; nothing to resume")
            self.ticks.set_backfill_state(backfill_id, "running")
        elif record.state != "running":
            raise InputError(f"backfill {backfill_id!r} has ended ({record.state}); resume it instead")
        todo = [d for d, run_id in record.dates.items()
                if run_id is None or record.run_states.get(run_id) != "succeeded"]
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(backfill_id, done), daemon=True,
                                   name="udop-backfill-watch")
        watcher.start()
        try:
            with ThreadPoolExecutor(max_workers=record.max_parallel, thread_name_prefix="udop-bf") as pool:
                for future in [pool.submit(self._one, record, d) for d in todo]:
                    future.result()
        finally:
            done.set()
            watcher.join()
        final = self.ticks.get_backfill(backfill_id)
        assert final is not None
        if final.state == "running":
            states = [final.run_states.get(r or "") for r in final.dates.values()]
            ok = all(s == "succeeded" for s in states)
            self.ticks.set_backfill_state(
                backfill_id, "succeeded" if ok else "failed",
                error=None if ok else f"{sum(s != 'succeeded' for s in states)} of {len(states)} dates "
                "did not succeed; resume with `udop backfills resume`")
        result = self.ticks.get_backfill(backfill_id)
        assert result is not None
        return result

    def _watch(self, backfill_id: str, done: threading.Event) -> None:
        while not done.wait(self.watch_seconds):
            try:
                record = self.ticks.get_backfill(backfill_id)
            except UdopError as exc:
                log.warning("backfill %s: %s", backfill_id, exc)
                continue
            if record is not None and record.state == "cancelled":
                self._cancelled.set()
                with self._lock:
                    for executor in self._active.values():
                        executor.request_stop(f"backfill {backfill_id} cancelled")
                return

    def _one(self, record: BackfillRecord, logical: datetime) -> None:
        from udop.errors import RunLimitReached
        from udop.executor.local import LocalExecutor, new_run_id

        if self._cancelled.is_set():
            return
        run_id = record.dates.get(logical)
        exists = run_id is not None and run_id in record.run_states
        if run_id is None:
            run_id = new_run_id()
            self.ticks.attach_run(record.id, logical, run_id)
        executor = LocalExecutor(self.store, workers=self.workers, data_root=self.data_root,
                                 policy=self.policy, services=self.services, on_event=self.on_event)
        with self._lock:
            if self._cancelled.is_set():
                return
            self._active[logical] = executor
        try:
            if exists:
                executor.run(self.pipeline, run_id=run_id, resume=True, wait=True)
            else:
                executor.run(self.pipeline, params=record.params, run_id=run_id, logical_date=logical,
                             wait=True, trigger="backfill")
        except RunLimitReached:  # stopped while waiting for a slot (cancelled)
            pass
        except UdopError as exc:
            log.error("backfill %s, %s: %s", record.id, logical.isoformat(), exc)
        finally:
            with self._lock:
                self._active.pop(logical, None)


def _stored(pipeline: Pipeline) -> dict[str, Any]:
    from udop.spec.secure import stored_definition

    return stored_definition(pipeline)
