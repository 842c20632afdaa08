"""The connector framework without servers: registry, settings merge, secrets, circuit breaker,
Parquet output, and watermarks that wait for every downstream load (SQLite files as source/target)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from udop.connectors import (
    CircuitBreaker,
    CircuitOpen,
    Connector,
    ConnectorSettings,
    Secret,
    SecretRef,
    extract_to_parquet,
    get_connector,
    load_from_parquet,
    register_connector,
)
from udop.connectors.breaker import BreakerSettings
from udop.connectors.watermark import WatermarkBusy
from udop.errors import ConfigError, ConnectionFailed, FatalError, TaskTimeout
from udop.spec.models import Pipeline
from udop.state import MemoryStateStore
from udop.tasks.contract import Manifest, TaskContext, TaskResult


def pipeline(tasks: list[dict[str, Any]], connections: dict[str, Any] | None = None) -> Pipeline:
    return Pipeline.model_validate(
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": f"p-{uuid.uuid4().hex[:6]}"},
            "spec": {"connections": connections or {}, "tasks": tasks},
        }
    )


def context(p: Pipeline, task_id: str, tmp_path: Path, state: Any, run_id: str = "r1") -> TaskContext:
    return TaskContext(
        pipeline=p,
        task_id=task_id,
        run_id=run_id,
        attempt=1,
        logical_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        params={"n": 3},
        data_root=str(tmp_path / "data"),
        services={"state": state},
    )


# -- registry and settings ------------------------------------------------------------------------
def test_unknown_connector_lists_the_installed_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown connector 'nope'.*postgres"):
        get_connector({"connector": "nope"})


def test_connection_settings_merge_under_the_task_options(tmp_path: Path) -> None:
    connections = {"db": {"connector": "sqlite", "database": str(tmp_path / "a.db"), "table": "default_t"}}
    c = get_connector({"connection": "db", "table": "override"}, connections=connections)
    assert c.settings.table == "override"
    assert c.settings.database == str(tmp_path / "a.db")
    assert c.connection == "db"
    with pytest.raises(ConfigError, match=r"unknown connection 'other'.*db"):
        get_connector({"connection": "other"}, connections=connections)
    with pytest.raises(ConfigError, match="is a 'sqlite' connection"):
        get_connector({"connector": "postgres", "connection": "db"}, connections=connections)
    with pytest.raises(ConfigError, match=r"connection 'db' \(sqlite\): colour: Extra inputs"):
        get_connector({"connection": "db", "colour": "red"}, connections=connections)


# -- secrets --------------------------------------------------------------------------------------
def test_secrets_resolve_from_env_and_file_and_never_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UDOP_TEST_PW", "env-pass-1")
    (tmp_path / "pw").write_text("file-pass-2\n")
    env, file = SecretRef.parse({"env": "UDOP_TEST_PW"}), SecretRef.parse({"file": str(tmp_path / "pw")})
    literal = SecretRef.parse("literal-pass-3")
    assert (env.get_secret_value(), file.get_secret_value(), literal.get_secret_value()) == (
        "env-pass-1",
        "file-pass-2",
        "literal-pass-3",
    )
    c = get_connector({"connector": "postgres", "host": "h", "password": "literal-pass-3", "table": "t"})
    shown = repr(c) + str(c.settings) + c.settings.model_dump_json()
    assert "literal-pass-3" not in shown
    assert "**********" in shown
    monkeypatch.delenv("UDOP_TEST_PW")
    with pytest.raises(ConfigError, match="UDOP_TEST_PW is not set"):
        env.get_secret_value()
    with pytest.raises(ConfigError, match="cannot read"):
        SecretRef.parse({"file": str(tmp_path / "missing")}).get_secret_value()
    with pytest.raises(ValueError, match="a secret is"):
        SecretRef.parse({"vault": "x"})


@pytest.mark.aws
def test_secret_from_secrets_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        sm = boto3.client("secretsmanager")
        arn = sm.create_secret(Name="udop/wh", SecretString=json.dumps({"password": "sm-pass-4"}))["ARN"]
        sm.create_secret(Name="udop/plain", SecretString="sm-pass-5")
        assert SecretRef.parse({"secret": arn, "key": "password"}).get_secret_value() == "sm-pass-4"
        assert SecretRef.parse({"secret": "udop/plain"}).get_secret_value() == "sm-pass-5"
        with pytest.raises(ConfigError, match="ResourceNotFoundException"):
            SecretRef.parse({"secret": "udop/missing"}).get_secret_value()
        with pytest.raises(ConfigError, match="key"):
            SecretRef.parse({"secret": "udop/plain", "key": "password"}).get_secret_value()


class _Flaky(Connector):
    """A connector whose reads fail while ``down`` is set; used to drive the breaker."""

    name = "flaky-test"

    class Settings(ConnectorSettings):
        token: Secret | None = None

    down = True
    calls = 0

    def read(self, *, since: Any = None) -> Iterator[pa.RecordBatch]:
        type(self).calls += 1
        token = self.secret(self.settings.token)  # type: ignore[attr-defined]
        if type(self).down:
            self.fail(f"server said no to token {token}", retryable=True)
        yield pa.RecordBatch.from_pydict({"x": [1]})


register_connector(_Flaky)


def test_errors_mask_resolved_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UDOP_TEST_TOKEN", "tok-very-secret")
    c = get_connector({"connector": "flaky-test", "token": {"env": "UDOP_TEST_TOKEN"}})
    with pytest.raises(ConnectionFailed) as info:
        list(c.read())
    assert "tok-very-secret" not in str(info.value)
    assert str(info.value) == "connector 'flaky-test': server said no to token **********"


# -- circuit breaker ------------------------------------------------------------------------------
def test_breaker_opens_after_n_failures_then_lets_one_probe(tmp_path: Path) -> None:
    state = MemoryStateStore()
    p = pipeline(
        [
            {
                "id": "ext",
                "type": "extract",
                "source": {"connector": "flaky-test", "circuit_breaker": {"failures": 2, "cooldown": 0.3}},
            }
        ]
    )
    source = p.task("ext").source
    _Flaky.down, _Flaky.calls = True, 0

    def attempt() -> None:
        extract_to_parquet(context(p, "ext", tmp_path, state), source, str(tmp_path / "out"))

    for _ in range(2):
        with pytest.raises(ConnectionFailed, match="said no"):
            attempt()
    with pytest.raises(CircuitOpen, match="circuit open after 2 consecutive failures"):
        attempt()
    assert _Flaky.calls == 2  # failed fast, the source was not called
    time.sleep(0.35)
    with pytest.raises(ConnectionFailed, match="said no"):  # the probe fails: open again
        attempt()
    assert _Flaky.calls == 3
    with pytest.raises(CircuitOpen):
        attempt()
    time.sleep(0.35)
    _Flaky.down = False
    attempt()  # the probe succeeds and closes the circuit
    attempt()
    assert _Flaky.calls == 5


def test_breaker_allows_one_probe_at_a_time() -> None:
    state = MemoryStateStore()
    breaker = CircuitBreaker(state, "wh", BreakerSettings(failures=1, cooldown=0.1))
    breaker.before()
    breaker.failure()
    time.sleep(0.15)
    breaker.before()  # the probe
    other = CircuitBreaker(state, "wh", BreakerSettings(failures=1, cooldown=0.1))
    with pytest.raises(CircuitOpen, match="probing"):
        other.before()
    breaker.success()
    other.before()


def test_fatal_errors_do_not_open_the_breaker() -> None:
    state = MemoryStateStore()
    breaker = CircuitBreaker(state, "wh", BreakerSettings(failures=1, cooldown=60))
    for _ in range(3):
        with pytest.raises(FatalError), breaker.guard():
            raise FatalError("missing table")
    breaker.before()


# -- extract/load through files -------------------------------------------------------------------
def make_sqlite(path: Path, rows: list[tuple[int, str]]) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS src (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO src VALUES (?, ?)", rows)


def sqlite_ids(path: Path, table: str) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


def test_extract_writes_parquet_atomically_and_replaces_an_earlier_attempt(tmp_path: Path) -> None:
    db = tmp_path / "src.db"
    make_sqlite(db, [(i, f"n{i}") for i in range(1, 6)])
    p = pipeline(
        [
            {
                "id": "ext",
                "type": "extract",
                "source": {
                    "connector": "sqlite",
                    "database": str(db),
                    "query": "SELECT * FROM src WHERE id <= :n",
                    "params": {"n": 4},
                    "batch_size": 2,
                },
            }
        ]
    )
    ctx = context(p, "ext", tmp_path, MemoryStateStore())
    out = Path(ctx.output_uri)
    out.mkdir(parents=True)
    (out / "stale-from-attempt-1.parquet").write_bytes(b"junk")
    manifest = extract_to_parquet(ctx, p.task("ext").source, ctx.output_uri)
    assert manifest.rows == 4
    assert sorted(f.name for f in out.iterdir()) == ["part-00000.parquet"]
    table = pq.read_table(out / "part-00000.parquet")
    assert table.column("id").to_pylist() == [1, 2, 3, 4]
    assert manifest.bytes == (out / "part-00000.parquet").stat().st_size
    assert not [f for f in out.parent.iterdir() if ".tmp-" in f.name]


def test_extract_failure_leaves_no_partial_output(tmp_path: Path) -> None:
    p = pipeline([{"id": "ext", "type": "extract", "source": {"connector": "flaky-test"}}])
    ctx = context(p, "ext", tmp_path, MemoryStateStore())
    _Flaky.down = True
    with pytest.raises(ConnectionFailed):
        extract_to_parquet(ctx, p.task("ext").source, ctx.output_uri)
    assert not Path(ctx.output_uri).exists()
    assert not list(Path(ctx.data_root).rglob("*.parquet"))


def test_watermark_waits_for_every_downstream_load(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    make_sqlite(src, [(1, "a"), (2, "b")])
    p = pipeline(
        [
            {
                "id": "ext",
                "type": "extract",
                "source": {
                    "connector": "sqlite",
                    "database": str(src),
                    "table": "src",
                    "incremental": {"column": "id"},
                },
            },
            {
                "id": "load_a",
                "type": "load",
                "depends_on": ["ext"],
                "target": {"connector": "sqlite", "database": str(dst), "table": "a", "mode": "append"},
            },
            {
                "id": "load_b",
                "type": "load",
                "depends_on": ["ext"],
                "target": {"connector": "sqlite", "database": str(dst), "table": "b", "mode": "append"},
            },
        ]
    )
    state = MemoryStateStore()

    def extract(run: str) -> TaskResult:
        ctx = context(p, "ext", tmp_path, state, run)
        return TaskResult(output=extract_to_parquet(ctx, p.task("ext").source, ctx.output_uri))

    def load(run: str, task_id: str, r: TaskResult) -> dict[str, Any]:
        assert r.output is not None
        return load_from_parquet(
            context(p, task_id, tmp_path, state, run), p.task(task_id).target, r.output, {"ext": r}
        )

    r1 = extract("r1")
    assert load("r1", "load_a", r1)["watermarks_committed"] == []  # load_b has not committed yet
    # run r1 stops before load_b: a new run may not read (load_a would get rows 1-2 twice) ...
    make_sqlite(src, [(3, "c")])
    with pytest.raises(WatermarkBusy, match=r"held by run r1.*--resume r1"):
        extract("r2")
    # ... not even once r1's lease is gone: its ledger shows load_a done and load_b not
    lease_key = f"udop:watermark-lease:udop:watermark:{p.name}:ext"
    held = json.loads(state.get(lease_key) or "{}")
    state.set(lease_key, json.dumps({**held, "until": 0}))
    with pytest.raises(FatalError, match="run r1 stopped after loading its rows into load_a but not load_b"):
        extract("r2")
    # resuming r1 finishes load_b and commits the watermark; the next run reads only row 3
    m = load("r1", "load_b", r1)
    assert m["watermarks_committed"] == [{"key": f"udop:watermark:{p.name}:ext", "value": 2}]
    r2 = extract("r2")
    assert r2.output is not None and r2.output.rows == 1
    load("r2", "load_a", r2)
    m = load("r2", "load_b", r2)
    assert m["watermarks_committed"] == [{"key": f"udop:watermark:{p.name}:ext", "value": 3}]
    with sqlite3.connect(dst) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM a").fetchone() == (3, 3)
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM b").fetchone() == (3, 3)
    make_sqlite(src, [(4, "d")])
    r3 = extract("r3")
    assert r3.output is not None and r3.output.rows == 1


def test_incremental_filter_for_connectors_that_cannot_push_it_down(tmp_path: Path) -> None:
    class Rows(Connector):
        name = "rows-test"

        def read(self, *, since: Any = None) -> Iterator[pa.RecordBatch]:
            yield pa.RecordBatch.from_pydict(
                {"id": [1, 2, 3], "ts": [dt.datetime(2024, 1, d) for d in (1, 2, 3)]}
            )
            yield pa.RecordBatch.from_pydict({"id": [4], "ts": [dt.datetime(2024, 1, 4)]})

    register_connector(Rows)
    p = pipeline(
        [
            {
                "id": "ext",
                "type": "extract",
                "source": {
                    "connector": "rows-test",
                    "incremental": {"column": "ts", "initial": "2024-01-02"},
                },
            }
        ]
    )
    state = MemoryStateStore()
    ctx = context(p, "ext", tmp_path, state)
    m = extract_to_parquet(ctx, p.task("ext").source, ctx.output_uri)
    assert m.rows == 2  # after the initial watermark (given as text, compared as a timestamp)
    assert pq.read_table(Path(ctx.output_uri)).column("id").to_pylist() == [3, 4]
    pending = json.loads(state.get(f"udop:watermark-pending:{p.name}:r1:ext") or "{}")
    assert json.loads(pending["value"]) == {"t": "datetime", "v": "2024-01-04T00:00:00"}


def test_inline_connectors_get_a_breaker_per_endpoint(tmp_path: Path) -> None:
    a = get_connector({"connector": "postgres", "host": "db-a", "table": "t1"})
    a2 = get_connector(
        {"connector": "postgres", "host": "db-a", "table": "t2", "mode": "upsert", "keys": ["id"]}
    )
    b = get_connector({"connector": "postgres", "host": "db-b", "table": "t1"})
    named = get_connector({"connection": "wh", "table": "t"}, connections={"wh": {"connector": "postgres"}})
    assert a.breaker_key() == a2.breaker_key() != b.breaker_key()
    assert named.breaker_key() == "wh"


def test_mask_text_hides_url_passwords_and_known_secrets() -> None:
    from udop.connectors import mask_text

    text = "could not connect to postgresql://loader:pa55word@db:5432/x with token abc123token"
    masked = mask_text(text, {"abc123token"})
    assert masked == "could not connect to postgresql://loader:**********@db:5432/x with token **********"


def test_sql_url_password_never_shows(tmp_path: Path) -> None:
    url = "postgresql://loader:url-pass-9@127.0.0.1:1/x"
    c = get_connector({"connector": "postgres", "url": url, "table": "t", "connect_timeout": 1})
    assert "url-pass-9" not in repr(c)
    with pytest.raises(ConnectionFailed) as info:
        c.check()
    assert "url-pass-9" not in str(info.value)
    assert str(info.value).startswith("connector 'postgres': ")


class _CancelOnceStarted(threading.Event):
    """A cancel signal that arrives once the load has taken its first batch (the overwrite has begun:
    the table was emptied and that batch inserted, in the load's open transaction)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def is_set(self) -> bool:
        self.asked += 1
        if self.asked == 2:  # asked again before the second batch
            self.set()
        return super().is_set()


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_a_load_cancelled_part_way_changes_nothing(tmp_path: Path, mode: str) -> None:
    dst = tmp_path / "dst.db"
    make_sqlite(dst, [(0, "before")])
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for i in range(2):  # two files: the load writes them as two batches
        ids = list(range(1 + 500 * i, 501 + 500 * i))
        pq.write_table(pa.table({"id": ids, "name": [f"n{x}" for x in ids]}), dataset / f"part-{i}.parquet")
    manifest = Manifest(uri=str(dataset))
    p = pipeline(
        [
            {"id": "ext", "type": "python", "callable": "x:y"},
            {
                "id": "load",
                "type": "load",
                "depends_on": ["ext"],
                "target": {"connector": "sqlite", "database": str(dst), "table": "src", "mode": mode},
            },
        ]
    )
    load_ctx = context(p, "load", tmp_path, MemoryStateStore())
    cancel = _CancelOnceStarted()
    load_ctx.cancel_event = cancel
    with pytest.raises(TaskTimeout, match="cancelled or timed out"):
        load_from_parquet(load_ctx, p.task("load").target, manifest, {"ext": TaskResult(output=manifest)})
    assert cancel.asked == 2  # it stopped before the second batch, not before the first
    assert sqlite_ids(dst, "src") == [0]


def test_column_types_are_checked_with_the_settings() -> None:
    with pytest.raises(ConfigError, match=r"^connector 'local': columns: .*unknown type 'wibble'"):
        get_connector({"connector": "local", "path": "x", "columns": {"a": "BIGINT", "b": "wibble"}})
    ok = get_connector({"connector": "local", "path": "x", "columns": {"a": "BIGINT", "b": "numeric(9,2)"}})
    assert str(ok.schema()) == "a: int64\nb: decimal128(9, 2)"


def test_a_load_that_writes_files_itself_commits_through_commit_watermarks(tmp_path: Path) -> None:
    from udop.connectors import commit_watermarks

    src = tmp_path / "src.db"
    make_sqlite(src, [(1, "a"), (2, "b")])
    p = pipeline([
        {"id": "ext", "type": "extract",
         "source": {"connector": "sqlite", "database": str(src), "table": "src",
                    "incremental": {"column": "id"}}},
        {"id": "to_csv", "type": "load", "depends_on": ["ext"],
         "target": {"connector": "csv", "path": str(tmp_path / "out.csv")}},
    ])  # fmt: skip
    state = MemoryStateStore()
    ctx = context(p, "ext", tmp_path, state)
    assert extract_to_parquet(ctx, p.task("ext").source, ctx.output_uri).rows == 2
    # ... the file load writes out.csv itself, then:
    advanced = commit_watermarks(context(p, "to_csv", tmp_path, state))
    assert advanced == [{"key": f"udop:watermark:{p.name}:ext", "value": 2}]
    ctx2 = context(p, "ext", tmp_path, state, run_id="r2")
    assert extract_to_parquet(ctx2, p.task("ext").source, ctx2.output_uri).rows == 0


def test_a_source_reporting_its_position_keeps_it_as_the_watermark_even_without_rows(tmp_path: Path) -> None:
    """``Connector.position()``: a change stream knows where it stands after a read that found
    nothing; that position (not the column's maximum) is kept pending and committed by the load."""
    seen: list[Any] = []

    class Changes(Connector):
        name = "changes-test"
        pushes_down_incremental = True
        feed: ClassVar[list[list[int]]] = [[], [7, 8]]

        def read(self, *, since: Any = None) -> Iterator[pa.RecordBatch]:
            seen.append(since)
            rows = Changes.feed.pop(0)
            self._end = f"p{len(seen)}"
            yield pa.RecordBatch.from_pydict({"pos": pa.array([f"x{r}" for r in rows], pa.string())})

        def position(self) -> Any:
            return self._end

    register_connector(Changes)
    dst = tmp_path / "dst.db"
    p = pipeline(
        [
            {"id": "ext", "type": "extract", "source": {"connector": "changes-test", "incremental": {"column": "pos"}}},
            {"id": "load", "type": "load", "depends_on": ["ext"],
             "target": {"connector": "sqlite", "database": str(dst), "table": "t"}},
        ]
    )  # fmt: skip
    state = MemoryStateStore()
    for run in ("r1", "r2"):
        ctx = context(p, "ext", tmp_path, state, run)
        r = TaskResult(output=extract_to_parquet(ctx, p.task("ext").source, ctx.output_uri))
        assert r.output is not None
        done = load_from_parquet(
            context(p, "load", tmp_path, state, run), p.task("load").target, r.output, {"ext": r}
        )
        # the position the source reported, not max(pos) ("x8" > "p2" as text)
        assert done["watermarks_committed"] == [
            {"key": f"udop:watermark:{p.name}:ext", "value": f"p{run[-1]}"}
        ]
    assert seen == [None, "p1"]
