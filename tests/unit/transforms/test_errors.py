"""Bad input while running: each a one-line FatalError naming the task and the step (or the source)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transform_helpers import context_for, make_pipeline

from udop.errors import FatalError, TaskTimeout
from udop.tasks import run_task


@pytest.fixture
def src(tmp_path: Path) -> Path:
    pq.write_table(
        pa.table({"id": [1, 2], "name": ["a", "b"], "ts": ["2024-01-01", "x"]}), tmp_path / "a.parquet"
    )
    pq.write_table(pa.table({"key": [1], "label": ["one"]}), tmp_path / "b.parquet")
    return tmp_path


def transform(run, steps):
    return run(
        [
            {"id": "a", "type": "extract", "source": {"connector": "parquet", "path": "a.parquet"}},
            {"id": "b", "type": "extract", "source": {"connector": "parquet", "path": "b.parquet"}},
            {"id": "t", "type": "transform", "depends_on": ["a", "b"], "steps": steps},
        ]
    )


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    assert "Traceback" not in text
    assert "LINE 1" not in text
    return text


@pytest.mark.parametrize(
    ("steps", "pattern"),
    [
        (
            [{"filter": "id > 0"}, {"filter": "nme = 'a'"}],
            r"^task 't': steps\[1\] \(filter\): Referenced column \"nme\" not found.*candidates: .*name",
        ),
        (
            [{"select": ["id", "nam"]}],
            r"^task 't': steps\[0\] \(select\): column 'nam' not found; did you mean 'name'\?",
        ),
        ([{"derive": {"x": "name + 1"}}], r"^task 't': steps\[0\] \(derive\): .*(\+|VARCHAR)"),
        ([{"filter": "id >"}], r"^task 't': steps\[0\] \(filter\): not a valid SQL expression 'id >'"),
        ([{"filter": "id > 0) OR (1=1"}], r"^task 't': steps\[0\] \(filter\): not a valid SQL expression"),
        (
            [{"join": {"with": "b", "on": ["id"]}}],
            r"^task 't': steps\[0\] \(join\): join key 'id' is missing in 'b'; columns are: key, label",
        ),
        (
            [{"join": {"with": "b", "on": {"idd": "key"}}}],
            r"^task 't': steps\[0\] \(join\): join key 'idd' is missing on the left side; "
            r"did you mean 'id'\?",
        ),
        ([{"cast": {"id": "integr"}}], r"^task 't': steps\[0\] \(cast\): .*integr"),
        (
            [{"aggregate": {"by": ["nam"], "metrics": {"n": "count(*)"}}}],
            r"^task 't': steps\[0\] \(aggregate\): column 'nam'",
        ),
        ([{"sort": ["nope desc"]}], r"^task 't': steps\[0\] \(sort\): Referenced column \"nope\" not found"),
    ],
)
def test_bind_errors_name_task_step_and_column(src, run, steps, pattern):
    with pytest.raises(FatalError) as info:
        transform(run, steps)
    assert __import__("re").search(pattern, one_line(info)), str(info.value)


def test_type_mismatch_at_run_time_names_task_and_step(src, run):
    with pytest.raises(FatalError) as info:
        transform(
            run, [{"filter": "id > 0"}, {"derive": {"day": "CAST(ts AS DATE)"}}, {"select": ["id", "day"]}]
        )
    text = one_line(info)
    assert text.startswith("task 't': steps[1] (derive): ")
    assert '"x"' in text
    assert "date" in text


def test_missing_input_file(tmp_path, run):
    with pytest.raises(FatalError) as info:
        run([{"id": "a", "type": "extract", "source": {"connector": "csv", "path": "nope/*.csv"}}])
    assert one_line(info) == f"task 'a': source: no csv file matches '{tmp_path}/nope/*.csv'"


def test_input_dataset_removed_after_its_run(src, run, tmp_path):
    results = run([{"id": "a", "type": "extract", "source": {"connector": "parquet", "path": "a.parquet"}}])
    shutil.rmtree(results["a"].output.uri)
    pipeline = make_pipeline(
        [
            {"id": "a", "type": "extract", "source": {"connector": "parquet", "path": "a.parquet"}},
            {"id": "t", "type": "transform", "depends_on": "a", "steps": [{"limit": 1}]},
        ]
    )
    with pytest.raises(FatalError, match=r"^task 't': input 'a': dataset .* does not exist"):
        run_task(context_for(pipeline, "t", tmp_path), pipeline.task("t"), results)


def test_corrupt_parquet(tmp_path, run):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(FatalError) as info:
        run([{"id": "a", "type": "extract", "source": {"connector": "parquet", "path": "bad.parquet"}}])
    text = one_line(info)
    assert text.startswith("task 'a': source ")
    assert "bad.parquet" in text


def test_csv_ragged_row_names_file_and_line(tmp_path, run):
    (tmp_path / "r.csv").write_text("a,b,c\n1,2,3\n4,5,6,7\n8,9,10\n")
    with pytest.raises(FatalError) as info:
        run([{"id": "a", "type": "extract", "source": {"connector": "csv", "path": "r.csv"}}])
    assert (
        one_line(info)
        == f"task 'a': source: {tmp_path}/r.csv line 3: 4 fields where the header has 3 (a ragged row)"
    )


def test_csv_ragged_row_after_the_sniffer_sample(tmp_path, run):
    body = "".join(f"{i},{i}\n" for i in range(30000))
    (tmp_path / "r.csv").write_text("a,b\n" + body + "1,2,3\n")
    with pytest.raises(FatalError) as info:
        run([{"id": "a", "type": "extract", "source": {"connector": "csv", "path": "r.csv"}}])
    assert one_line(info).endswith("line 30002: 3 fields where the header has 2 (a ragged row)")


def test_cancel_hook_interrupts_duckdb(tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "x.parquet")
    hooks: list = []
    pipeline = make_pipeline(
        [
            {"id": "a", "type": "extract", "source": {"connector": "parquet", "path": "x.parquet"}},
            {
                "id": "t",
                "type": "transform",
                "depends_on": "a",
                "steps": [
                    {"sql": "SELECT sum(a.range * b.range) AS s FROM range(100000000) a, range(100000) b"}
                ],
            },
        ]
    )
    ctx_a = context_for(pipeline, "a", tmp_path)
    results = {"a": run_task(ctx_a, pipeline.task("a"), {})}
    ctx = context_for(pipeline, "t", tmp_path)
    ctx.on_cancel = hooks.append
    errors: list[BaseException] = []

    def work() -> None:
        try:
            run_task(ctx, pipeline.task("t"), results)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.monotonic() + 10
    while not hooks and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    for hook in hooks:
        hook()
    thread.join(20)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], TaskTimeout)
    assert "task 't'" in str(errors[0])
    assert not (tmp_path / "data" / "runs" / "t" / "r1" / "t").exists()


def test_cancel_event_alone_interrupts_duckdb(tmp_path):
    # the Lambda task runner sets only cancel_event near its deadline; no on_cancel hook
    pq.write_table(pa.table({"x": [1]}), tmp_path / "x.parquet")
    pipeline = make_pipeline([
        {"id": "a", "type": "extract", "source": {"connector": "parquet", "path": "x.parquet"}},
        {"id": "t", "type": "transform", "depends_on": "a", "steps": [
            {"sql": "SELECT sum(a.range * b.range) AS s FROM range(100000000) a, range(100000) b"}]},
    ])
    results = {"a": run_task(context_for(pipeline, "a", tmp_path), pipeline.task("a"), {})}
    ctx = context_for(pipeline, "t", tmp_path)
    timer = threading.Timer(0.5, ctx.cancel_event.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(TaskTimeout, match="task 't'"):
        run_task(ctx, pipeline.task("t"), results)
    assert time.monotonic() - started < 10
    timer.cancel()


@pytest.mark.parametrize(("steps", "where"), [
    ([{"select": ["id", "id"]}], "steps[0] (select)"),
    ([{"rename": {"name": "id"}}], "steps[0] (rename)"),
    ([{"aggregate": {"by": ["name"], "metrics": {"name": "count(*)"}}}], "steps[0] (aggregate)"),
    ([{"derive": {"label": "1", "label_b": "2"}},
      {"join": {"with": "b", "on": {"id": "key"}, "suffix": "_b"}}, {"limit": 1}], "steps[1] (join)"),
])
def test_steps_that_would_duplicate_a_column_name(src, run, steps, where):
    with pytest.raises(FatalError) as info:
        transform(run, steps)
    assert one_line(info).startswith(f"task 't': {where}: the result has duplicate column names")
