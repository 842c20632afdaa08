"""The stream runner behind ``udop stream FILE``: consume the pipeline's stream source in micro-batches,
each one run of the pipeline (trigger ``stream``) whose stream task is given the batch as Parquet in the
run's folder, and advance the source's positions only after the run (so its loads) committed.

Exactly once, with the load ledger: a batch is recorded ``pending`` (its positions, its run id) after its
Parquet is written and before its run starts; a process killed anywhere after that finds the pending
batch when it starts again and resumes that run, whose committed loads find their ledger entries and
write nothing; only then do the positions move, in the transaction that settles the batch.
"""

from __future__ import annotations

import contextlib
import gc
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from udop import faults
from udop.connectors.held import hold_connections
from udop.executor.local import LocalExecutor, new_run_id
from udop.spec.models import Pipeline, StreamTrigger
from udop.states import RunState
from udop.store.sql import SqlMetadataStore
from udop.stream.source import StreamBatch, StreamSource
from udop.stream.store import LEASE_TTL, BatchRecord, StreamLease, StreamStore
from udop.tasks.contract import TaskResult, dataset_uri
from udop.tasks.datasets import Manifest, write_parquet

__all__ = ["StreamFigures", "StreamRunner", "open_source"]


@dataclass
class StreamFigures:
    """What ``udop stream`` shows while it runs."""

    messages: int = 0
    batches: int = 0
    failed_tries: int = 0
    dead_lettered: int = 0
    lag: int | None = None
    last_rows: int = 0
    last_seconds: float = 0.0
    last_run: str | None = None
    last_state: str | None = None
    started: float = field(default_factory=time.monotonic)
    #: (monotonic time, messages so far) of recent batches: the rate over the last ~10 s
    recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def rate(self) -> float:
        now = time.monotonic()
        while len(self.recent) > 1 and now - self.recent[0][0] > 10:
            self.recent.popleft()
        if not self.recent:
            return 0.0
        since, count = self.recent[0]
        span = now - since
        if span <= 0 or len(self.recent) < 2:
            elapsed = now - self.started
            return self.messages / elapsed if elapsed > 0 else 0.0
        return (self.messages - count) / span

    def line(self) -> str:
        lag = "?" if self.lag is None else f"{self.lag:,}"
        last = (
            f"last batch {self.last_rows:,} msgs in {self.last_seconds:.2f} s ({self.last_state}, run "
            f"{self.last_run})"
            if self.last_run
            else "no batch yet"
        )
        extra = f", {self.dead_lettered} dead-lettered" if self.dead_lettered else ""
        return (
            f"udop stream: {self.messages:,} msgs in {self.batches:,} batches, {self.rate():,.0f} msgs/s, "
            f"lag {lag}{extra}; {last}"
        )


@dataclass(frozen=True)
class _Ready:
    """A batch read ahead, its Parquet already written for the run id it will run as (not yet recorded:
    a batch never recorded pending leaves only this folder, removed when the batch is dropped)."""

    batch: StreamBatch
    run_id: str
    manifest: Manifest


def open_source(pipeline: Pipeline, *, base_dir: str | None = None, state: Any = None) -> StreamSource:
    """The connector named by the stream's source (its connection's settings merged in), as a stream."""
    from udop.connectors import get_connector

    stream = _stream(pipeline)
    task = pipeline.task(stream.id)
    connector = get_connector(
        task.source, connections=pipeline.spec.connections, state=state, base_dir=base_dir
    )
    source: StreamSource = connector.stream()
    return source


def _stream(pipeline: Pipeline) -> StreamTrigger:
    stream = pipeline.stream
    if stream is None:
        from udop.errors import InputError

        raise InputError(
            f"pipeline {pipeline.name!r} has no stream trigger (spec.trigger.stream); run it with udop run"
        )
    return stream


class StreamRunner:
    """Consume until ``stop`` is set; the batch in flight then finishes and commits.

    ``halt`` (a second signal) stops the run in flight as well: its batch stays pending and the next start
    resumes it.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        store: SqlMetadataStore,
        executor: LocalExecutor,
        source: StreamSource | None,
        *,
        stop: threading.Event | None = None,
        report: Callable[[StreamFigures], None] | None = None,
        state: Any = None,
    ) -> None:
        self.pipeline = pipeline
        self.stream = _stream(pipeline)
        self.store = store
        self.batches = StreamStore(store)
        self.executor = executor
        self.source = source
        self.stop = stop or threading.Event()
        self.halted = False
        self.report = report or (lambda _figures: None)
        self.figures = StreamFigures()
        #: the state store of the stream's lease (one udop stream per pipeline); default UDOP_STATE_URL
        self.state = state
        #: run_batch: one try per call, the caller retries (a Lambda delivery)
        self.once = False
        self._last: RunState | None = None

    def halt(self) -> None:
        self.halted = True
        self.stop.set()
        self.executor.request_stop("stream halted")

    def run(self, *, max_batches: int | None = None) -> StreamFigures:
        """Consume until stopped (or ``max_batches`` batches ran, for tests and benchmarks).

        A reader thread polls the next batch while the current one runs, through a queue of one: at
        most one batch waits (back-pressure: a slow sink slows consumption, memory stays bounded). A
        batch read but not yet recorded when the runner stops is read again at the next start (Kafka:
        its offsets were never stored; Redis: never acknowledged, so still pending).
        """
        source = self.source
        if source is None:
            raise ValueError("run() consumes a source; give StreamRunner one (run_batch takes batches in)")
        state = self.state
        if state is None:
            from udop.state import open_state_store

            state = open_state_store()
        lease = StreamLease(state, self.pipeline.name)
        try:
            lease.acquire()
            try:
                # the loads of consecutive batches reuse one connection per database and the runs one
                # pool of worker threads (both closed at the end)
                with hold_connections(), self.executor.reusing_workers():
                    return self._consume(source, lease, max_batches)
            finally:
                lease.release()
        finally:
            if self.state is None:
                state.close()

    def _consume(self, source: StreamSource, lease: StreamLease, max_batches: int | None) -> StreamFigures:
        pending = self.batches.pending(self.pipeline.name)
        if pending is not None:
            self._recover(pending)
        source.seek(self.batches.positions(self.pipeline.name))
        ahead: queue.Queue[_Ready | BaseException | None] = queue.Queue(maxsize=1)
        done = threading.Event()
        reader = threading.Thread(
            target=self._read_ahead, args=(source, ahead, done), name="udop-stream-reader", daemon=True
        )
        reader.start()
        renew_at = time.monotonic() + LEASE_TTL / 3
        frozen = False
        try:
            while not self.stop.is_set() and (max_batches is None or self.figures.batches < max_batches):
                try:
                    item = ahead.get(timeout=0.5)
                except queue.Empty:
                    self.report(self.figures)
                    if time.monotonic() >= renew_at:
                        lease.renew()
                        renew_at = time.monotonic() + LEASE_TTL / 3
                    continue
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    self.figures.lag = source.lag()
                    self.report(self.figures)
                    continue
                self._process(item)
                if not frozen:
                    # what exists once the first batch ran (modules, the pipeline, connections, compiled
                    # statements and transforms) lives as long as the stream: moved out of the collector's
                    # reach, each full collection no longer walks it again (measured: ~140 ms each, a few
                    # every 100,000 messages, down to ~15). Garbage among it is kept: bounded, once.
                    gc.freeze()
                    frozen = True
                self.figures.lag = source.lag()
                if time.monotonic() >= renew_at:
                    lease.renew()
                    renew_at = time.monotonic() + LEASE_TTL / 3
        finally:
            done.set()
            while reader.is_alive():  # unblock a reader waiting for room, then let it see ``done``
                with contextlib.suppress(queue.Empty):
                    self._drop(ahead.get_nowait())
                reader.join(0.1)
            with contextlib.suppress(queue.Empty):
                self._drop(ahead.get_nowait())
        return self.figures

    def _read_ahead(
        self,
        source: StreamSource,
        ahead: queue.Queue[_Ready | BaseException | None],
        done: threading.Event,
    ) -> None:
        while not done.is_set():
            item: _Ready | BaseException | None
            try:
                batch = source.poll(self.stream.max_batch_rows, self.stream.max_batch_seconds, done)
                # the batch's Parquet is written here, while the batch before runs: off the runner's path
                item = self._ready(batch) if batch is not None and batch.rows else None
            # a source error ends the stream (the main thread raises it): retrying here could skip what
            # the failed poll had read; a restart resumes from udop's positions
            except BaseException as exc:
                item = exc
            while not done.is_set():
                try:
                    ahead.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue
            else:
                self._drop(item)
            if isinstance(item, BaseException):
                return

    def _ready(self, batch: StreamBatch) -> _Ready:
        run_id = new_run_id()
        uri = dataset_uri(self.executor.data_root, self.pipeline.name, run_id, self.stream.id)
        return _Ready(batch, run_id, write_parquet(batch.table, uri, dictionary=False))

    def _drop(self, item: _Ready | BaseException | None) -> None:
        """Remove the Parquet of a batch read ahead that will not run (its run was never recorded)."""
        if isinstance(item, _Ready) and "://" not in item.manifest.uri:
            shutil.rmtree(Path(item.manifest.uri).parent, ignore_errors=True)

    # ------------------------------------------------------------------ one batch

    def _process(self, ready: _Ready) -> None:
        batch = ready.batch
        fresh = self.batches.fresh(self.pipeline.name, batch)  # without messages committed before
        if fresh is None:  # all came back after their batches committed: acknowledged, not loaded
            self._drop(ready)
            if self.source is not None:
                self.source.commit(batch.end, batch.acks)
            return
        if fresh is not batch:  # some messages dropped: the run reads the rest, written again
            self._drop(ready)
            ready = self._ready(fresh)
        batch, run_id, manifest = fresh, ready.run_id, ready.manifest
        self.batches.begin(
            self.pipeline.name,
            run_id,
            None,  # the positions now, read in the transaction that records the batch
            batch.end,
            batch.acks,
            batch.rows,
            ids=batch.ids,
            keep_ids=batch.keep_ids,
        )
        self._run(run_id, manifest, batch.end, batch.acks, batch.rows, resume=False, tries=1)

    def _recover(self, pending: BatchRecord) -> None:
        run = self.store.get_run(pending.run_id)
        if run is None:  # killed before its run was recorded: nothing of it ran, read it again
            self.batches.settle(
                self.pipeline.name,
                pending.run_id,
                "discarded",
                error="the process stopped before the batch's run started",
            )
            return
        if run.state == RunState.SUCCEEDED:  # killed after the run, before the positions moved
            self.batches.settle(self.pipeline.name, pending.run_id, "committed")
            if self.source is not None:
                self.source.commit(pending.end, pending.acks)
            return
        task = next(t for t in run.tasks if t.task_id == self.stream.id)
        if task.result is not None:
            manifest = TaskResult.from_dict(task.result).output
            assert manifest is not None
        else:
            manifest = Manifest(
                uri=dataset_uri(self.executor.data_root, self.pipeline.name, pending.run_id, self.stream.id),
                rows=pending.messages,
            )
        self._run(
            pending.run_id,
            manifest,
            pending.end,
            pending.acks,
            pending.messages,
            resume=True,
            tries=pending.tries,
        )

    def _run(
        self,
        run_id: str,
        manifest: Manifest,
        end: Mapping[str, Any],
        acks: list[Any],
        rows: int,
        *,
        resume: bool,
        tries: int,
    ) -> None:
        name = self.pipeline.name
        began = time.monotonic()
        while True:
            record = self.executor.run(
                self.pipeline,
                run_id=run_id,
                resume=resume,
                given={self.stream.id: TaskResult(output=manifest)},
                trigger="stream",
            )
            resume = True
            if record.state == RunState.SUCCEEDED:
                faults.point("stream-run-succeeded")
                self.batches.settle(name, run_id, "committed")
                faults.point("stream-offsets-committed")
                if self.source is not None:
                    self.source.commit(end, acks)
                self._done(run_id, rows, began, "committed")
                return
            if self.halted or record.state == RunState.CANCELLED or self.once:
                if self.once:  # the caller retries the delivery (Lambda): the next try resumes this run
                    self.batches.tried(name, run_id, record.error)
                    self._last = record.state
                return  # stays pending: the next start resumes it
            self.figures.failed_tries += 1
            dead = self.stream.dead_letter
            if dead is not None and tries >= dead.after:
                self._dead_letter(run_id, manifest)
                self.batches.settle(name, run_id, "dead_letter", error=record.error)
                if self.source is not None:
                    self.source.commit(end, acks)
                self.figures.dead_lettered += rows
                self._done(run_id, rows, began, "dead-lettered")
                return
            tries = self.batches.tried(name, run_id, record.error)
            self.figures.last_run, self.figures.last_state = run_id, f"failed, try {tries} next"
            self.report(self.figures)
            if self.stop.wait(self.stream.retry_delay) and self.halted:
                return

    def run_batch(
        self,
        table: pa.Table,
        *,
        run_id: str,
        end: Mapping[str, Any],
        ids: list[str | None] | None = None,
        keep_ids: float | None = None,
        keep_input: Callable[[str], str] | None = None,
    ) -> RunState:
        """Run one batch handed in from outside (a Lambda event's records) as run ``run_id``, once.

        ``run_id`` names the batch (derived from its messages, ``StreamStore.claim``): a batch tried
        again resumes the run of its first try, whose committed loads find their ledger entries, and a
        batch that already committed does nothing. ``ids`` were claimed for ``run_id``: kept when it
        commits, released when its run fails. Returns the run's state; a failed batch stays pending.

        ``keep_input``: makes the batch's input (the local folder of its Parquet) durable and returns
        where it is kept, called before a new batch is recorded; such a batch keeps its claims when its
        run fails (``StreamStore.release``), to be resumed by whichever delivery brings one of them next.
        """
        try:
            state = self._run_batch(
                table, run_id=run_id, end=end, ids=ids, keep_ids=keep_ids, keep_input=keep_input
            )
        except BaseException:
            if ids is not None:
                self.batches.release(self.pipeline.name, run_id)
            raise
        if state != RunState.SUCCEEDED and ids is not None:
            self.batches.release(self.pipeline.name, run_id)
        return state

    def _run_batch(
        self,
        table: pa.Table,
        *,
        run_id: str,
        end: Mapping[str, Any],
        ids: list[str | None] | None,
        keep_ids: float | None,
        keep_input: Callable[[str], str] | None = None,
    ) -> RunState:
        self.once = True
        name = self.pipeline.name
        existing = self.batches.batch(name, run_id)
        if existing is not None and existing.state != "pending":
            return RunState.SUCCEEDED  # committed (or dead-lettered) by an earlier delivery
        self._last = RunState.SUCCEEDED
        if existing is not None and self.store.get_run(run_id) is not None:
            self._recover(existing)  # an earlier try's run: resumed (or, if it succeeded, settled)
            return self._last
        # new, or an earlier try stopped before its run was recorded: nothing of it ran
        uri = dataset_uri(self.executor.data_root, name, run_id, self.stream.id)
        manifest = write_parquet(table, uri, dictionary=False)
        if existing is None:
            # kept before the batch is recorded: a recorded batch that keeps its input can always resume
            input_uri = keep_input(manifest.uri) if keep_input is not None else None
            self.batches.begin(
                name, run_id, None, end, [], int(table.num_rows), ids=ids, keep_ids=keep_ids,
                input_uri=input_uri,
            )
        self._run(
            run_id,
            manifest,
            end,
            [],
            int(table.num_rows),
            resume=False,
            tries=1 if existing is None else existing.tries,
        )
        return self._last

    def _done(self, run_id: str, rows: int, began: float, state: str) -> None:
        f = self.figures
        f.messages += rows
        f.batches += 1
        f.last_rows, f.last_seconds, f.last_run, f.last_state = rows, time.monotonic() - began, run_id, state
        f.recent.append((time.monotonic(), f.messages))
        self.report(f)

    def _dead_letter(self, run_id: str, manifest: Manifest) -> None:
        """Write the batch's messages (its Parquet, as read) to the dead-letter target, once per batch."""
        from udop.stream.deadletter import write_dead_letter

        dead = self.stream.dead_letter
        assert dead is not None
        write_dead_letter(self.pipeline, run_id, manifest, dead.target, self.executor.services)
