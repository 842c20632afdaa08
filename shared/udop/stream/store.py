"""Stream positions and micro-batches in the metadata database (tables in ``udop.store.tables``,
revisions 0008 to 0010). A batch is recorded ``pending`` before its run starts and ``committed`` together
with the pipeline's new positions, and the ids of its messages where the broker may hand one over again,
in one transaction, after its loads committed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from sqlalchemy import Connection, TextClause, bindparam, delete, insert, or_, select, text, update

from udop.store.engine import transaction
from udop.store.sql import SqlMetadataStore
from udop.store.tables import UTCDateTime, stream_batches, stream_messages, stream_offsets
from udop.stream.source import StreamBatch

__all__ = ["BatchRecord", "Claim", "StreamStore"]


@dataclass(frozen=True)
class BatchRecord:
    pipeline: str
    run_id: str
    state: str  # pending | committed | dead_letter | discarded
    start: dict[str, Any]
    end: dict[str, Any]
    acks: list[Any]
    messages: int
    tries: int
    error: str | None
    #: where its input is kept (``begin(input_uri=...)``): a failed try keeps its claims, for the next
    #: delivery of any of its messages to resume it
    input_uri: str | None = None
    message_ids: list[str] | None = None


def _now() -> datetime:
    return datetime.now(UTC)


#: the ids of a JSON array parameter ``:ids`` as a one-column query (``value``): one statement whatever
#: their number (not a row of parameters per id: 10,000 ids took ~200 ms that way on SQLite)
_IDS = {
    "sqlite": "SELECT value FROM json_each(:ids)",
    "postgresql": "SELECT value FROM jsonb_array_elements_text(CAST(:ids AS jsonb)) AS value",
}
#: ``message_id`` among ``:ids`` (PostgreSQL: ``= ANY(ARRAY(...))``, which its planner takes to the key)
_AMONG = {
    "sqlite": "message_id IN (" + _IDS["sqlite"] + ")",
    "postgresql": "message_id = ANY(ARRAY(" + _IDS["postgresql"] + "))",
}

#: a batch's ids that are kept, with the state of the batch keeping each and when it was kept. An id of a
#: committed (or dead-lettered) batch is a message that committed; of one pending or not recorded yet, a
#: claim (the stream runner on Lambda claims a delivery's ids before its batch is recorded and run)
_KNOWN = {
    dialect: text(
        "SELECT m.message_id, m.run_id, b.state, m.settled_at, b.input_uri, b.running_since "
        "FROM stream_messages m "
        "LEFT JOIN stream_batches b ON b.pipeline = m.pipeline AND b.run_id = m.run_id "
        "WHERE m.pipeline = :pipeline AND m." + among
    ).columns(settled_at=UTCDateTime(), running_since=UTCDateTime())
    for dialect, among in _AMONG.items()
}


@dataclass(frozen=True)
class _Kept:
    run_id: str
    state: str | None  # None: its batch is not recorded yet
    at: datetime
    #: its batch keeps its input (it is resumed, never regrouped); when a try of it started (None: none)
    kept_input: bool = False
    running_since: datetime | None = None

    @property
    def committed(self) -> bool:
        return self.state in ("committed", "dead_letter")

    @property
    def held(self) -> bool:
        """A pending batch whose input is kept: its messages are its own until it settles."""
        return self.state == "pending" and self.kept_input


def _known(conn: Connection, pipeline: str, ids: list[str]) -> dict[str, _Kept]:
    """Which of ``ids`` are kept, and by which batch."""
    rows = conn.execute(_KNOWN[conn.dialect.name], {"pipeline": pipeline, "ids": json.dumps(ids)}).all()
    return {
        r.message_id: _Kept(r.run_id, r.state, r.settled_at, r.input_uri is not None, r.running_since)
        for r in rows
    }


def _insert_ids(dialect: str, *, claim: bool) -> TextClause:
    """Keep ``:ids`` under ``:run_id``; an id already kept keeps its first batch (RabbitMQ looks up only
    redelivered messages, so a producer's repeated ``message_id`` can arrive here). ``claim``: tell which
    ids this insert wrote (the others are another batch's), in the ids' order, so two claims of
    overlapping batches wait on each other's rows in one order, never in a cycle."""
    where = " WHERE true" if dialect == "sqlite" else ""  # SQLite: an upsert's SELECT needs a WHERE
    sql = (
        "INSERT INTO stream_messages (pipeline, message_id, run_id, settled_at) "
        f"SELECT :pipeline, value, :run_id, :now FROM ({_IDS[dialect]}) AS ids{where}"
        + (" ORDER BY value" if claim else "")
        + " ON CONFLICT DO NOTHING"
        + (" RETURNING message_id" if claim else "")
    )
    return text(sql).bindparams(bindparam("now", type_=UTCDateTime()))


_KEEP_IDS = {dialect: _insert_ids(dialect, claim=False) for dialect in _IDS}
_CLAIM = {dialect: _insert_ids(dialect, claim=True) for dialect in _IDS}
_RELABEL = {
    dialect: text(
        "UPDATE stream_messages SET run_id = :run_id "
        "WHERE pipeline = :pipeline AND run_id = :was AND " + among
    )
    for dialect, among in _AMONG.items()
}
_UNCLAIM = {
    dialect: text("DELETE FROM stream_messages WHERE pipeline = :pipeline AND run_id = :run_id AND " + among)
    for dialect, among in _AMONG.items()
}


def claim_run_id(pipeline: str, ids: list[str]) -> str:
    """The run of a batch made of the messages ``ids``: the same messages, the same run."""
    return "stream-" + hashlib.sha256(json.dumps([pipeline, ids]).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Claim:
    """What ``StreamStore.claim`` left a delivery: ``batch``, the messages it owns now (None: none), to run
    as ``run_id``; ``busy``, the rows (of the batch as given) another batch in flight owns; ``resume``,
    the rows held by a pending batch that keeps its input and whose try is not running (it failed, or
    its claimant died), by that batch's run id: resume that batch first (``take`` arbitrates), after
    which those rows are committed repeats."""

    batch: StreamBatch | None
    run_id: str
    busy: list[int]
    resume: dict[str, list[int]] = field(default_factory=dict)


def _record(row: Any) -> BatchRecord:
    return BatchRecord(
        row.pipeline,
        row.run_id,
        row.state,
        dict(row.start_positions),
        dict(row.end_positions),
        list(row.acks or []),
        row.messages,
        row.tries,
        row.error,
        row.input_uri,
        None if row.message_ids is None else [str(i) for i in row.message_ids],
    )


class StreamStore:
    """A stream pipeline's committed positions and its batches, beside the runs of a ``SqlMetadataStore``."""

    def __init__(self, store: SqlMetadataStore) -> None:
        self._engine = store.engine

    def positions(self, pipeline: str) -> dict[str, Any]:
        with transaction(self._engine, write=False) as conn:
            value = conn.execute(
                select(stream_offsets.c.positions).where(stream_offsets.c.pipeline == pipeline)
            ).scalar()
        return dict(value or {})

    def pending(self, pipeline: str) -> BatchRecord | None:
        """The batch whose outcome is not settled yet (at most one: batches run one at a time)."""
        with transaction(self._engine, write=False) as conn:
            row = conn.execute(
                select(stream_batches)
                .where(stream_batches.c.pipeline == pipeline, stream_batches.c.state == "pending")
                .order_by(stream_batches.c.created_at.desc())
            ).first()
        return _record(row) if row is not None else None

    def batch(self, pipeline: str, run_id: str) -> BatchRecord | None:
        with transaction(self._engine, write=False) as conn:
            row = conn.execute(
                select(stream_batches).where(
                    stream_batches.c.pipeline == pipeline, stream_batches.c.run_id == run_id
                )
            ).first()
        return _record(row) if row is not None else None

    def batches(self, pipeline: str, limit: int = 100) -> list[BatchRecord]:
        with transaction(self._engine, write=False) as conn:
            rows = conn.execute(
                select(stream_batches)
                .where(stream_batches.c.pipeline == pipeline)
                .order_by(stream_batches.c.created_at.desc())
                .limit(limit)
            ).all()
        return [_record(r) for r in rows]

    def fresh(self, pipeline: str, batch: StreamBatch) -> StreamBatch | None:
        """``batch`` without the messages whose ids a committed batch of the pipeline had (and without a
        second copy of one inside the batch), of those that may be repeats (``redelivered``); None when
        none is left. Its ``end`` and ``acks`` stay the
        batch's as read, so the repeats are acknowledged with it.

        Called when the batch is about to run, after every earlier batch settled: a message handed over
        again while an earlier batch was still running (a visibility timeout shorter than the batch)
        is recognized as well as one back after a crash, whichever batch it was in."""
        ids = batch.ids
        if ids is None:
            return batch
        again = batch.redelivered
        asked = [i for n, i in enumerate(ids) if i is not None and (again is None or again[n])]
        if asked:
            with transaction(self._engine, write=False) as conn:
                known = _known(conn, pipeline, list(dict.fromkeys(asked)))
            seen = {i for i, kept in known.items() if kept.committed}
        else:
            seen = set()
        keep: list[int] = []
        kept: list[str | None] = []
        for n, i in enumerate(ids):
            if i is not None and (again is None or again[n]):
                if i in seen:
                    continue
                seen.add(i)  # a second copy in the same batch
            keep.append(n)
            kept.append(i)
        if len(keep) == len(ids):
            return batch
        if not keep:
            return None
        table = batch.table.take(pa.array(keep, pa.int64()))
        return StreamBatch(table=table, end=batch.end, acks=batch.acks, ids=kept, keep_ids=batch.keep_ids)

    def claim(self, pipeline: str, batch: StreamBatch, *, stale_after: float) -> Claim:
        """Claim ``batch``'s messages for one run, for a consumer that may run several batches of one
        source at once (the stream runner on Lambda: several pollers of a queue, a retry grouping records
        differently). As ``fresh``, without the committed repeats; the ids left are written now, under
        the batch's run (derived from them: the same messages, the same run, so a batch tried again
        resumes its run), in this transaction, and only those this insert wrote are the batch's: the
        primary key (pipeline, message id) makes one claimant win a message whatever the interleaving;
        a loser leaves it out (its row in ``busy``) and its run never sees it. A claim older than
        ``stale_after`` seconds whose batch is not settled was left by a consumer that died (Lambda
        stops a function after 900 s) and is taken over. Committing the batch keeps its claims as its
        committed ids; ``release`` drops them when its run failed. Messages of a pending batch that keeps
        its input (``begin(input_uri=...)``) are never taken over: they are in ``resume`` under its run
        when no try of it runs (none, or one older than ``stale_after``), else ``busy``."""
        ids = batch.ids
        assert ids is not None and None not in ids, "claim needs every message's id"
        now = _now()
        with transaction(self._engine, write=True) as conn:
            known = _known(conn, pipeline, list(dict.fromkeys(i for i in ids if i is not None)))
            rows: list[int] = []  # first copy of each message not committed yet
            seen: set[str] = set()
            for n, i in enumerate(ids):
                kept = known.get(str(i))
                if i is None or i in seen or (kept is not None and kept.committed):
                    continue
                seen.add(i)
                rows.append(n)
            mine: list[int] = []
            busy: list[int] = []
            resume: dict[str, list[int]] = {}
            stale: dict[str, list[str]] = {}
            for n in rows:
                kept = known.get(str(ids[n]))
                if kept is None:
                    mine.append(n)
                elif kept.held:  # never taken over: some of its loads may have committed; resumed
                    since = kept.running_since
                    if since is None or (now - since).total_seconds() > stale_after:
                        resume.setdefault(kept.run_id, []).append(n)
                    else:
                        busy.append(n)
                elif (now - kept.at).total_seconds() > stale_after:
                    stale.setdefault(kept.run_id, []).append(str(ids[n]))
                    mine.append(n)
                else:  # another batch in flight (or this very one, tried at this moment by another poller)
                    busy.append(n)
            for owner, taken in stale.items():  # its claimant died: the delete, like the insert, races
                conn.execute(
                    _UNCLAIM[conn.dialect.name],
                    {"pipeline": pipeline, "run_id": owner, "ids": json.dumps(taken)},
                )
            run_id = claim_run_id(pipeline, [str(ids[n]) for n in mine])
            if mine:
                wanted = [str(ids[n]) for n in mine]
                # the arbiter: the rows this insert wrote, after it waited for any rival's to commit
                won = set(
                    conn.execute(
                        _CLAIM[conn.dialect.name],
                        {"pipeline": pipeline, "run_id": run_id, "now": now, "ids": json.dumps(wanted)},
                    ).scalars()
                )
                if len(won) != len(mine):
                    busy = sorted(busy + [n for n in mine if str(ids[n]) not in won])
                    mine = [n for n in mine if str(ids[n]) in won]
                    label = claim_run_id(pipeline, [str(ids[n]) for n in mine])
                    conn.execute(
                        _RELABEL[conn.dialect.name],
                        {"pipeline": pipeline, "run_id": label, "was": run_id, "ids": json.dumps([*won])},
                    )
                    run_id = label
        if not mine:
            return Claim(None, run_id, busy, resume)
        if len(mine) == len(ids):
            return Claim(batch, run_id, busy, resume)
        table = batch.table.take(pa.array(mine, pa.int64()))
        return Claim(
            StreamBatch(table=table, end=batch.end, acks=batch.acks, ids=[ids[n] for n in mine],
                        keep_ids=batch.keep_ids),
            run_id,
            busy,
            resume,
        )

    def take(self, pipeline: str, run_id: str, *, stale_after: float) -> bool:
        """Start a try of the pending batch ``run_id`` whose input is kept, if no try of it runs (none
        started, or the one that did is older than ``stale_after`` seconds: its claimant died). One
        statement decides: of two deliveries taking the same batch at once, one wins (True)."""
        now = _now()
        with transaction(self._engine, write=True) as conn:
            won = conn.execute(
                update(stream_batches)
                .where(
                    stream_batches.c.pipeline == pipeline,
                    stream_batches.c.run_id == run_id,
                    stream_batches.c.state == "pending",
                    stream_batches.c.input_uri.is_not(None),
                    or_(
                        stream_batches.c.running_since.is_(None),
                        stream_batches.c.running_since < now - timedelta(seconds=stale_after),
                    ),
                )
                .values(running_since=now)
            )
            return bool(won.rowcount == 1)

    def release(self, pipeline: str, run_id: str) -> None:
        """Drop the claims of ``run_id``'s batch (its run failed): its messages may run in another batch.
        A batch that committed (or was dead-lettered) keeps them: they are its committed ids. A pending
        batch whose input is kept keeps them too, and its try ends (``running_since`` cleared): the next
        delivery of any of its messages resumes it (``Claim.resume``), so a load of it that committed
        is never written again under another grouping."""
        with transaction(self._engine, write=True) as conn:
            row = conn.execute(
                select(stream_batches.c.state, stream_batches.c.input_uri).where(
                    stream_batches.c.pipeline == pipeline, stream_batches.c.run_id == run_id
                )
            ).first()
            if row is not None and row.state in ("committed", "dead_letter"):
                return
            if row is not None and row.state == "pending" and row.input_uri is not None:
                conn.execute(
                    update(stream_batches)
                    .where(stream_batches.c.pipeline == pipeline, stream_batches.c.run_id == run_id)
                    .values(running_since=None)
                )
                return
            conn.execute(
                delete(stream_messages).where(
                    stream_messages.c.pipeline == pipeline, stream_messages.c.run_id == run_id
                )
            )

    def begin(  # noqa: PLR0917 - one batch's fields, named at the one call
        self,
        pipeline: str,
        run_id: str,
        start: Mapping[str, Any] | None,
        end: Mapping[str, Any],
        acks: list[Any],
        messages: int,
        *,
        ids: list[str | None] | None = None,
        keep_ids: float | None = None,
        input_uri: str | None = None,
    ) -> None:
        """Record a batch ``pending``; ``ids`` (``StreamBatch.ids``) are kept when it settles, and ids
        kept longer than ``keep_ids`` seconds are dropped. ``start`` None: the pipeline's positions, read
        in the same transaction. ``input_uri``: where the batch's input is kept durably; such a batch
        holds its claimed ids when a try fails (``release``), to be resumed, and its try runs from now."""
        now = _now()
        with transaction(self._engine, write=True) as conn:
            if start is None:
                start = conn.execute(
                    select(stream_offsets.c.positions).where(stream_offsets.c.pipeline == pipeline)
                ).scalar() or {}
            conn.execute(
                insert(stream_batches).values(
                    pipeline=pipeline,
                    run_id=run_id,
                    state="pending",
                    start_positions=dict(start),
                    end_positions=dict(end),
                    acks=acks,
                    messages=messages,
                    tries=1,
                    created_at=now,
                    message_ids=None if ids is None else [i for i in ids if i is not None],
                    input_uri=input_uri,
                    running_since=now if input_uri is not None else None,
                )
            )
            if ids is not None and keep_ids is not None:
                conn.execute(
                    delete(stream_messages).where(
                        stream_messages.c.pipeline == pipeline,
                        stream_messages.c.settled_at < now - timedelta(seconds=keep_ids),
                    )
                )

    def tried(self, pipeline: str, run_id: str, error: str | None) -> int:
        """Count one more try of a pending batch (its run failed and is resumed); returns the tries."""
        with transaction(self._engine, write=True) as conn:
            conn.execute(
                update(stream_batches)
                .where(stream_batches.c.pipeline == pipeline, stream_batches.c.run_id == run_id)
                .values(tries=stream_batches.c.tries + 1, error=error)
            )
            tries: int = conn.execute(
                select(stream_batches.c.tries).where(
                    stream_batches.c.pipeline == pipeline, stream_batches.c.run_id == run_id
                )
            ).scalar_one()
        return tries

    def settle(self, pipeline: str, run_id: str, state: str, *, error: str | None = None) -> None:
        """End a pending batch: ``committed`` or ``dead_letter`` move the pipeline's positions to the
        batch's end in the same transaction; ``discarded`` (nothing of it ran) leaves them."""
        now = _now()
        with transaction(self._engine, write=True) as conn:
            row = conn.execute(
                select(stream_batches).where(
                    stream_batches.c.pipeline == pipeline, stream_batches.c.run_id == run_id
                )
            ).one()
            conn.execute(
                update(stream_batches)
                .where(
                    stream_batches.c.pipeline == pipeline,
                    stream_batches.c.run_id == run_id,
                    stream_batches.c.state == "pending",
                )
                .values(state=state, ended_at=now, error=error)
            )
            if state == "discarded":
                return
            ids = row.message_ids
            if ids:  # kept with the positions' move; one already kept (RabbitMQ looks up only
                # redelivered messages) keeps its first batch
                conn.execute(
                    _KEEP_IDS[conn.dialect.name],
                    {"pipeline": pipeline, "run_id": run_id, "now": now, "ids": json.dumps(ids)},
                )
            end = {
                **(
                    conn.execute(
                        select(stream_offsets.c.positions).where(stream_offsets.c.pipeline == pipeline)
                    ).scalar()
                    or {}
                ),
                **dict(row.end_positions),
            }
            moved = conn.execute(
                update(stream_offsets)
                .where(stream_offsets.c.pipeline == pipeline)
                .values(
                    positions=end,
                    updated_at=now,
                    batches=stream_offsets.c.batches + 1,
                    messages=stream_offsets.c.messages + row.messages,
                )
            )
            if moved.rowcount == 0:
                conn.execute(
                    insert(stream_offsets).values(
                        pipeline=pipeline, positions=end, updated_at=now, batches=1, messages=row.messages
                    )
                )


#: how long a stream's lease outlives a holder that stopped renewing it (one on another machine)
LEASE_TTL = 60.0


class StreamLease:
    """One ``udop stream`` per pipeline: a lease in the state store (``udop:stream-lease:<pipeline>``),
    renewed while the stream runs. A holder that died on this machine is taken over at once; one on
    another machine after ``LEASE_TTL`` seconds without renewal."""

    def __init__(self, state: Any, pipeline: str) -> None:
        import os
        import socket
        import uuid

        self.state = state
        self.pipeline = pipeline
        self.key = f"udop:stream-lease:{pipeline}"
        self.token = f"{os.getpid()}@{socket.gethostname()}#{uuid.uuid4().hex}"

    def acquire(self) -> None:
        import socket

        from udop.errors import InputError
        from udop.executor.local import owner_alive

        for _ in range(3):
            if self.state.set_if_absent(self.key, self.token, ttl=LEASE_TTL):
                return
            held = self.state.get(self.key)
            if held is None:
                continue  # expired in between
            owner = held.split("#", 1)[0]
            if owner.rsplit("@", 1)[-1] == socket.gethostname() and not owner_alive(owner):
                if self.state.compare_and_set(self.key, held, self.token, ttl=LEASE_TTL):
                    return  # its holder died here (killed): taken over
                continue
            raise InputError(
                f"pipeline {self.pipeline!r} is already streamed by process {owner}; stop it "
                f"first (a holder on another machine frees it {LEASE_TTL:g} s after it stops)"
            )
        raise InputError(f"pipeline {self.pipeline!r}: the stream's lease keeps changing hands; try again")

    def renew(self) -> None:
        from udop.errors import StoreError

        if not self.state.compare_and_set(self.key, self.token, self.token, ttl=LEASE_TTL):
            raise StoreError(
                f"pipeline {self.pipeline!r}: this udop stream lost its lease (another process "
                "took the stream over); stopping"
            )

    def release(self) -> None:
        self.state.delete_if_equals(self.key, self.token)
