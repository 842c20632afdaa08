"""Tick claims and backfills in the metadata database (tables in ``udop.store.tables``, revision 0005).

A tick is claimed by inserting its ``(pipeline, tick)`` row: the primary key lets exactly one of any
number of schedulers on one database (SQLite or PostgreSQL) win it, without a lock held between
polls and without trusting clocks to agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from udop.errors import InputError, StoreError
from udop.store.engine import transaction
from udop.store.sql import SqlMetadataStore
from udop.store.tables import backfill_runs, backfills, runs, schedule_ticks, trigger_events

__all__ = ["BackfillRecord", "ScheduleStore", "TickRecord"]

BACKFILL_STATES = ("running", "succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class TickRecord:
    pipeline: str
    tick: datetime
    claimed_by: str
    claimed_at: datetime
    outcome: str  # claimed | started | skipped | failed
    run_id: str | None
    detail: str | None


@dataclass(frozen=True)
class BackfillRecord:
    id: str
    pipeline: str
    state: str
    start: datetime
    end: datetime
    step: str
    max_parallel: int
    params: dict[str, Any]
    executor: str
    created_at: datetime
    ended_at: datetime | None
    error: str | None
    #: logical date -> run id (None: not started yet), oldest first
    dates: dict[datetime, str | None]
    #: run id -> its state, for the runs that exist
    run_states: dict[str, str]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {"not started": 0}
        for run_id in self.dates.values():
            if run_id is None or run_id not in self.run_states:
                out["not started"] += 1
            else:
                state = self.run_states[run_id]
                out[state] = out.get(state, 0) + 1
        return {k: v for k, v in out.items() if v}


def _now() -> datetime:
    return datetime.now(UTC)


class ScheduleStore:
    """Schedules' and backfills' rows beside the runs of a ``SqlMetadataStore``."""

    def __init__(self, store: SqlMetadataStore) -> None:
        self.store = store
        self._engine = store.engine

    # --- ticks -------------------------------------------------------------------------------------

    def claim_tick(self, pipeline: str, tick: datetime, owner: str, *, run_id: str | None = None,
                   at: datetime | None = None) -> bool:
        """True if this caller won ``tick`` of ``pipeline`` (and must start its run); False if another
        scheduler claimed it first. ``run_id``: the id its run will have (a scheduler that takes the
        tick over after a lease starts the run under the same id, so at most one run exists)."""
        try:
            with transaction(self._engine, write=True) as conn:
                conn.execute(insert(schedule_ticks).values(
                    pipeline=pipeline, tick=tick, claimed_by=owner, claimed_at=at or _now(),
                    outcome="claimed", run_id=run_id))
        except IntegrityError:
            return False
        return True

    def stale_ticks(self, claimed_before: datetime, limit: int = 100) -> list[TickRecord]:
        """Ticks still only ``claimed`` (their run never recorded as started) since before
        ``claimed_before``: their scheduler died between the claim and the start."""
        stmt = (select(schedule_ticks)
                .where(schedule_ticks.c.outcome == "claimed", schedule_ticks.c.claimed_at < claimed_before)
                .order_by(schedule_ticks.c.tick).limit(limit))
        with transaction(self._engine, write=False) as conn:
            rows = conn.execute(stmt).all()
        return [TickRecord(r.pipeline, r.tick, r.claimed_by, r.claimed_at, r.outcome, r.run_id, r.detail)
                for r in rows]

    def retake_tick(self, stale: TickRecord, owner: str, at: datetime) -> bool:
        """Take over a stale claim: True for exactly one of the schedulers that try (the row must still
        be the claim they read: same owner, same claim time, still ``claimed``)."""
        with transaction(self._engine, write=True) as conn:
            changed = conn.execute(
                update(schedule_ticks)
                .where(schedule_ticks.c.pipeline == stale.pipeline, schedule_ticks.c.tick == stale.tick,
                       schedule_ticks.c.outcome == "claimed", schedule_ticks.c.claimed_by == stale.claimed_by,
                       schedule_ticks.c.claimed_at == stale.claimed_at)
                .values(claimed_by=owner, claimed_at=at)).rowcount
        return bool(changed)

    def finish_tick(self, pipeline: str, tick: datetime, *, outcome: str, run_id: str | None = None,
                    detail: str | None = None) -> None:
        with transaction(self._engine, write=True) as conn:
            conn.execute(update(schedule_ticks)
                         .where(schedule_ticks.c.pipeline == pipeline, schedule_ticks.c.tick == tick)
                         .values(outcome=outcome, run_id=run_id, detail=detail))

    def last_tick(self, pipeline: str) -> datetime | None:
        with transaction(self._engine, write=False) as conn:
            value: datetime | None = conn.execute(
                select(func.max(schedule_ticks.c.tick)).where(schedule_ticks.c.pipeline == pipeline)).scalar()
        # max() keeps the column's type (UTCDateTime: aware UTC on both backends); be safe anyway
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def ticks(self, pipeline: str | None = None, limit: int = 100) -> list[TickRecord]:
        stmt = select(schedule_ticks).order_by(schedule_ticks.c.tick.desc()).limit(limit)
        if pipeline is not None:
            stmt = stmt.where(schedule_ticks.c.pipeline == pipeline)
        with transaction(self._engine, write=False) as conn:
            rows = conn.execute(stmt).all()
        return [TickRecord(r.pipeline, r.tick, r.claimed_by, r.claimed_at, r.outcome, r.run_id, r.detail)
                for r in rows]

    # --- trigger events ------------------------------------------------------------------------

    def claim_event(self, pipeline: str, event: str, owner: str, run_id: str | None,
                    at: datetime | None = None) -> bool:
        """True if this caller is the first to see ``event`` (e.g. a file version) for ``pipeline``."""
        try:
            with transaction(self._engine, write=True) as conn:
                conn.execute(insert(trigger_events).values(
                    pipeline=pipeline, event=event, claimed_by=owner, claimed_at=at or _now(), run_id=run_id))
        except IntegrityError:
            return False
        return True

    def event_claimed_at(self, pipeline: str, event: str) -> datetime | None:
        with transaction(self._engine, write=False) as conn:
            value: datetime | None = conn.execute(
                select(trigger_events.c.claimed_at)
                .where(trigger_events.c.pipeline == pipeline, trigger_events.c.event == event)).scalar()
        return value

    def succeeded_runs(self, pipeline: str, since: datetime) -> list[tuple[str, datetime]]:
        """(run id, logical date) of ``pipeline``'s runs that succeeded at or after ``since``, oldest
        first: what a ``trigger: after:`` downstream starts from."""
        stmt = (select(runs.c.id, runs.c.logical_date)
                .where(runs.c.pipeline == pipeline, runs.c.state == "succeeded", runs.c.ended_at >= since)
                .order_by(runs.c.ended_at, runs.c.id))
        with transaction(self._engine, write=False) as conn:
            return [(str(r.id), r.logical_date) for r in conn.execute(stmt).all()]

    def seen_events(self, pipeline: str) -> set[str]:
        with transaction(self._engine, write=False) as conn:
            return {r.event for r in conn.execute(
                select(trigger_events.c.event).where(trigger_events.c.pipeline == pipeline)).all()}

    # --- backfills ---------------------------------------------------------------------------------

    def create_backfill(self, *, backfill_id: str, pipeline: str, dates: list[datetime], start: datetime,
                        end: datetime, step: str, max_parallel: int, params: dict[str, Any],
                        executor: str) -> BackfillRecord:
        if not dates:
            raise InputError(f"backfill of {pipeline!r}: no logical dates from {start.isoformat()} to "
                             f"{end.isoformat()} (step {step})")
        try:
            with transaction(self._engine, write=True) as conn:
                conn.execute(insert(backfills).values(
                    id=backfill_id, pipeline=pipeline, state="running", start=start, end=end, step=step,
                    max_parallel=max_parallel, params=params, executor=executor, created_at=_now()))
                conn.execute(insert(backfill_runs),
                             [{"backfill_id": backfill_id, "logical_date": d} for d in dates])
        except IntegrityError:
            raise StoreError(f"backfill {backfill_id!r} already exists") from None
        record = self.get_backfill(backfill_id)
        assert record is not None
        return record

    def get_backfill(self, backfill_id: str) -> BackfillRecord | None:
        with transaction(self._engine, write=False) as conn:
            head = conn.execute(select(backfills).where(backfills.c.id == backfill_id)).first()
            if head is None:
                return None
            rows = conn.execute(select(backfill_runs.c.logical_date, backfill_runs.c.run_id)
                                .where(backfill_runs.c.backfill_id == backfill_id)
                                .order_by(backfill_runs.c.logical_date)).all()
            ids = [r.run_id for r in rows if r.run_id is not None]
            states = dict(conn.execute(select(runs.c.id, runs.c.state).where(runs.c.id.in_(ids))).all()) \
                if ids else {}
        return BackfillRecord(
            id=head.id, pipeline=head.pipeline, state=head.state, start=head.start, end=head.end,
            step=head.step, max_parallel=head.max_parallel, params=head.params, executor=head.executor,
            created_at=head.created_at, ended_at=head.ended_at, error=head.error,
            dates={r.logical_date: r.run_id for r in rows},
            run_states={str(k): str(v) for k, v in states.items()})

    def list_backfills(self, pipeline: str | None = None, limit: int = 50) -> list[BackfillRecord]:
        stmt = select(backfills.c.id).order_by(backfills.c.created_at.desc()).limit(limit)
        if pipeline is not None:
            stmt = stmt.where(backfills.c.pipeline == pipeline)
        with transaction(self._engine, write=False) as conn:
            ids = [r.id for r in conn.execute(stmt).all()]
        return [b for b in (self.get_backfill(i) for i in ids) if b is not None]

    def attach_run(self, backfill_id: str, logical_date: datetime, run_id: str) -> None:
        with transaction(self._engine, write=True) as conn:
            conn.execute(update(backfill_runs)
                         .where(backfill_runs.c.backfill_id == backfill_id,
                                backfill_runs.c.logical_date == logical_date)
                         .values(run_id=run_id))

    def set_backfill_state(self, backfill_id: str, state: str, *, error: str | None = None) -> bool:
        """Move a backfill to ``state``; False when it is cancelled already (a cancel is final until a
        resume, which moves it back to running explicitly)."""
        assert state in BACKFILL_STATES
        with transaction(self._engine, write=True) as conn:
            stmt = update(backfills).where(backfills.c.id == backfill_id)
            if state != "running":
                stmt = stmt.where(backfills.c.state != "cancelled")
            changed = conn.execute(stmt.values(
                state=state, error=error, ended_at=None if state == "running" else _now())).rowcount
        return bool(changed)
