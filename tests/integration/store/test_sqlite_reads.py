"""The SQLite read path (``udop.store.sqlite_reads``) gives the records the SQLAlchemy path gives.

``list_runs`` and ``get_run`` on SQLite skip SQLAlchemy and convert the driver's values themselves; the
same store with that path switched off reads the same file through SQLAlchemy Core, and both must agree
field by field: timestamps (aware, UTC), JSON documents, states, NULLs, order, filters and the cursor.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from udop.errors import RunNotFound
from udop.states import AttemptState, RunState, TaskState
from udop.store import open_store
from udop.store.sql import SqlMetadataStore

DEFINITION = {
    "apiVersion": "udop/v1",
    "kind": "Pipeline",
    "metadata": {"name": "p"},
    "spec": {"tasks": [{"id": t, "type": "python", "callable": "m:f"} for t in ("a", "b", "c")]},
}


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SqlMetadataStore, SqlMetadataStore]]:
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    fast, plain = open_store(url), open_store(url)
    assert isinstance(fast, SqlMetadataStore) and isinstance(plain, SqlMetadataStore)
    plain._sqlite = False  # the same Core statements through SQLAlchemy, as on PostgreSQL
    yield fast, plain
    fast.close()
    plain.close()


def _fill(store: SqlMetadataStore) -> list[str]:
    for name in ("p", "q"):
        store.register_pipeline(name, {**DEFINITION, "metadata": {"name": name}})
    day = datetime(2026, 3, 1, 12, 30, 15, 120000, tzinfo=UTC)
    ids = []
    for i in range(7):
        run = store.create_run(
            run_id=f"r{i}",
            pipeline="p" if i % 2 else "q",
            pipeline_version=1,
            task_ids=["a", "b", "c"],
            params={"n": i, "name": "ünï\u2028", "x": 1.5e-7, "big": 2**70, "nested": [{"k": None}]},
            logical_date=day + timedelta(days=i, microseconds=i),
            external_id=f"arn:{i}" if i == 3 else None,
        )
        ids.append(run.id)
    # one run that ran: started and ended timestamps, an error, attempts with and without errors
    store.set_run_state("r3", RunState.RUNNING, owner="pid@host")
    store.start_attempt("r3", "a", 1)
    store.finish_attempt("r3", "a", 1, attempt_state=AttemptState.SUCCEEDED, task_state=TaskState.SUCCEEDED,
                         result={"rows": 3, "output": {"uri": "file:///x", "rows": 3}, "ratio": 0.25})
    store.start_attempt("r3", "b", 1)
    store.finish_attempt("r3", "b", 1, attempt_state=AttemptState.FAILED, task_state=TaskState.RETRYING,
                         error_type="ValueError", error_message="bad ünï")
    store.start_attempt("r3", "b", 2)
    store.finish_attempt("r3", "b", 2, attempt_state=AttemptState.FAILED, task_state=TaskState.FAILED,
                         error_type="ValueError", error_message="still bad")
    store.set_run_state("r3", RunState.FAILED, error="task b failed")
    store.set_run_state("r5", RunState.RUNNING, owner="pid@host")
    return ids


def test_get_run_is_the_sqlalchemy_record(stores: tuple[SqlMetadataStore, SqlMetadataStore]) -> None:
    fast, plain = stores
    ids = _fill(fast)
    for run_id in ids:
        record = fast.get_run(run_id)
        assert record == plain.get_run(run_id)
    ran = fast.get_run("r3")
    assert ran is not None and ran.ended_at is not None and ran.ended_at.tzinfo is not None
    assert ran.ended_at.utcoffset() == timedelta(0)
    assert [len(t.attempts) for t in ran.tasks] == [1, 2, 0]
    assert ran.params["big"] == 2**70 and ran.params["name"] == "ünï\u2028"
    assert fast.get_run("nope") is None and plain.get_run("nope") is None


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"limit": 1},
        {"limit": 3},
        {"pipeline": "p"},
        {"pipeline": "none"},
        {"state": RunState.PENDING},
        {"state": RunState.FAILED},
        {"pipeline": "p", "state": RunState.RUNNING},
        {"before": "r4"},
        {"before": "r4", "pipeline": "q", "limit": 2},
        {"before": "r4", "state": RunState.PENDING, "pipeline": "p"},
    ],
)
def test_list_runs_is_the_sqlalchemy_page(
    stores: tuple[SqlMetadataStore, SqlMetadataStore], query: dict[str, object]
) -> None:
    fast, plain = stores
    _fill(fast)
    assert fast.list_runs(**query) == plain.list_runs(**query)  # type: ignore[arg-type]


def test_a_cursor_whose_run_is_gone_is_refused_alike(stores: tuple[SqlMetadataStore, SqlMetadataStore]) -> None:
    fast, plain = stores
    _fill(fast)
    for store in (fast, plain):
        with pytest.raises(RunNotFound, match="'gone'"):
            store.list_runs(before="gone")
