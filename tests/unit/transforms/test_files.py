"""File connectors: reading CSV/Parquet/JSON/NDJSON with globs and hive partitions, writing with
overwrite/append/partition_by, and atomic loads that keep the previous target when they fail."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transform_helpers import context_for, make_pipeline, read_output

from udop.errors import FatalError
from udop.tasks import run_task


def extract(run, source: dict) -> pa.Table:
    results = run([{"id": "e", "type": "extract", "source": source}])
    out = results["e"].output
    table = read_output(out)
    assert out.rows == table.num_rows
    assert out.files == (1 if out.format != "snapshot" else out.files)  # a snapshot counts source files
    assert out.bytes > 0
    assert out.schema_fingerprint.startswith("sha256:")
    return table


def test_csv_glob_reads_every_file(tmp_path, run):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("id,name\n1,x\n2,y\n")
    (tmp_path / "in" / "b.csv").write_text("id,name\n3,z\n")
    (tmp_path / "in" / "ignored.txt").write_text("nope\n")
    t = extract(run, {"connector": "csv", "path": "in/*.csv"})
    assert sorted(t.to_pydict()["id"]) == [1, 2, 3]


def test_csv_options_delimiter_nulls_and_types(tmp_path, run):
    (tmp_path / "a.csv").write_text("id;price;note\n1;10.50;NA\n2;3.25;hello\n")
    t = extract(
        run, {"connector": "csv", "path": "a.csv", "delimiter": ";", "columns": {"price": "decimal(15,2)"}}
    )
    assert t.schema.field("price").type == pa.decimal128(15, 2)
    assert t.to_pydict()["note"] == [None, "hello"]


def test_parquet_hive_partitions_become_columns(tmp_path, run):
    for year, month in [(2023, 12), (2024, 1)]:
        folder = tmp_path / "lake" / f"year={year}" / f"month={month}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"v": [year * 100 + month]}), folder / "part.parquet")
    t = extract(run, {"connector": "parquet", "path": "lake/**/*.parquet", "hive_partitioning": True})
    got = sorted(zip(t["year"].to_pylist(), t["month"].to_pylist(), t["v"].to_pylist(), strict=True))
    assert got == [(2023, 12, 202312), (2024, 1, 202401)]


def test_parquet_union_by_name(tmp_path, run):
    pq.write_table(pa.table({"a": [1]}), tmp_path / "x1.parquet")
    pq.write_table(pa.table({"a": [2], "b": ["new"]}), tmp_path / "x2.parquet")
    t = extract(run, {"connector": "parquet", "path": "x*.parquet", "union_by_name": True})
    assert sorted(zip(t["a"].to_pylist(), t["b"].to_pylist(), strict=True)) == [(1, None), (2, "new")]


def test_json_array_and_ndjson(tmp_path, run):
    (tmp_path / "a.json").write_text(json.dumps([{"k": 1, "v": "a"}, {"k": 2, "v": "b"}]))
    (tmp_path / "b.ndjson").write_text('{"k": 3, "v": "c"}\n{"k": 4, "v": null}\n')
    assert extract(run, {"connector": "json", "path": "a.json"}).to_pydict() == {"k": [1, 2], "v": ["a", "b"]}
    assert extract(run, {"connector": "ndjson", "path": "b.ndjson"}).to_pydict() == {
        "k": [3, 4],
        "v": ["c", None],
    }


def test_source_path_is_rendered(tmp_path, run):
    (tmp_path / "2024-01-02.csv").write_text("a\n1\n")
    t = extract(run, {"connector": "csv", "path": "${run.logical_date}.csv"})
    assert t.to_pydict() == {"a": [1]}


# ------------------------------------------------------------------------------------ loads

DATA = pa.table({"k": ["a", "b", "a"], "v": [1, 2, 3]})


@pytest.fixture
def data(tmp_path: Path) -> Path:
    pq.write_table(DATA, tmp_path / "data.parquet")
    return tmp_path


def load(run, target: dict, run_id: str = "r1") -> dict:
    return run(
        [
            {"id": "e", "type": "extract", "source": {"connector": "parquet", "path": "data.parquet"}},
            {"id": "l", "type": "load", "depends_on": "e", "target": target},
        ],
        run_id=run_id,
    )


def read_any(path: Path, fmt: str) -> list[tuple]:
    fn = {"parquet": "read_parquet", "csv": "read_csv", "json": "read_json", "ndjson": "read_json"}[fmt]
    target = str(path) if path.is_file() else str(path / "**" / "*")
    return sorted(duckdb.sql(f"SELECT k, v FROM {fn}('{target}')").fetchall())


EXPECTED = sorted(zip(DATA["k"].to_pylist(), DATA["v"].to_pylist(), strict=True))


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("parquet", "out.parquet"),
        ("csv", "out.csv"),
        ("json", "out.json"),
        ("ndjson", "out.ndjson"),
        ("parquet", "outdir"),
        ("csv", "outdir"),
    ],
)
def test_load_formats_round_trip(data, run, fmt, name):
    result = load(run, {"connector": fmt, "path": name})
    target = data / name
    assert read_any(target, fmt) == EXPECTED
    assert result["l"].metrics["rows_written"] == 3
    assert result["l"].output.uri == str(target)


def test_overwrite_replaces_and_append_adds(data, run):
    load(run, {"connector": "parquet", "path": "out.parquet"})
    load(run, {"connector": "parquet", "path": "out.parquet", "mode": "append"}, run_id="r2")
    assert read_any(data / "out.parquet", "parquet") == sorted(EXPECTED * 2)
    load(run, {"connector": "parquet", "path": "out.parquet"}, run_id="r3")
    assert read_any(data / "out.parquet", "parquet") == EXPECTED


def test_append_to_a_folder_adds_files(data, run):
    load(run, {"connector": "parquet", "path": "lake"})
    second = load(run, {"connector": "parquet", "path": "lake", "mode": "append"}, run_id="r2")
    assert len(list((data / "lake").glob("*.parquet"))) == 2
    assert second["l"].output.rows == 6
    assert read_any(data / "lake", "parquet") == sorted(EXPECTED * 2)


def test_partition_by_writes_hive_folders(data, run):
    load(run, {"connector": "parquet", "path": "lake", "partition_by": ["k"]})
    assert sorted(p.name for p in (data / "lake").iterdir()) == ["k=a", "k=b"]
    t = pq.read_table(data / "lake" / "k=a")
    assert sorted(t["v"].to_pylist()) == [1, 3]
    load(run, {"connector": "parquet", "path": "lake", "partition_by": "k", "mode": "append"}, run_id="r2")
    assert len(list((data / "lake" / "k=a").glob("*.parquet"))) == 2


def _poison(folder: Path) -> None:
    """Replace a task's Parquet output with many good row groups followed by one whose data pages are
    garbled (the footer still reads): a reader fails part-way through, after rows were written."""
    for old in folder.glob("*.parquet"):
        old.unlink()
    file = folder / "part-0.parquet"
    rows = 50_000
    pq.write_table(pa.table({"k": [f"x{i}" for i in range(rows)], "v": list(range(rows))}), file,
                   compression="zstd", row_group_size=5_000)
    meta = pq.ParquetFile(file).metadata
    last = meta.row_group(meta.num_row_groups - 1)
    raw = bytearray(file.read_bytes())
    for c in range(last.num_columns):
        col = last.column(c)
        start = col.dictionary_page_offset or col.data_page_offset
        for i in range(start + 16, start + col.total_compressed_size):
            raw[i] = 0xAB
    file.write_bytes(bytes(raw))


def _targets(root: Path) -> list[Path]:
    """Everything under ``root`` except udop's own data folder (where task outputs go)."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.relative_to(root).parts[0] != "data")


@pytest.mark.parametrize(
    "target",
    [
        {"connector": "parquet", "path": "lake"},
        {"connector": "parquet", "path": "lake", "partition_by": ["k"]},
        {"connector": "parquet", "path": "out.parquet"},
        {"connector": "csv", "path": "out.csv"},
    ],
    ids=["folder", "partitioned", "file", "csv-file"],
)
def test_a_load_failing_while_it_writes_leaves_the_previous_target_intact(data, run, tmp_path, target):
    load(run, {**target, "mode": "overwrite"})
    path = data / target["path"]
    before = read_any(path, target["connector"])
    listing = _targets(data)
    # the next run's extract succeeds; its output then breaks part-way through the load's read
    pipeline = make_pipeline([
        # materialize: the load reads the extract's own copy, which is then broken (not the source)
        {"id": "e", "type": "extract", "materialize": True,
         "source": {"connector": "parquet", "path": "data.parquet"}},
        {"id": "l", "type": "load", "depends_on": "e", "target": target},
    ])
    extracted = run_task(context_for(pipeline, "e", tmp_path, run_id="r2"), pipeline.task("e"), {})
    assert extracted.output.rows == 3
    _poison(Path(extracted.output.uri))
    with pytest.raises(FatalError, match=r"^task 'l': writing ") as info:
        run_task(context_for(pipeline, "l", tmp_path, run_id="r2"), pipeline.task("l"), {"e": extracted})
    assert "\n" not in str(info.value)
    assert read_any(path, target["connector"]) == before
    # nothing left aside: no half-written file or folder beside the target
    assert _targets(data) == listing


def test_partition_by_unknown_column(data, run):
    with pytest.raises(
        FatalError, match=r"task 'l': target.partition_by: column 'kk' not found; did you mean 'k'"
    ):
        load(run, {"connector": "parquet", "path": "lake", "partition_by": ["kk"]})
    assert not (data / "lake").exists()


def test_unknown_connector_is_a_fatal_error_naming_the_task(data, run):
    with pytest.raises(FatalError, match=r"^task 'x': source: unknown connector 'nosuch'"):
        run([{"id": "x", "type": "extract", "source": {"connector": "nosuch", "table": "t"}}])


def test_json_columns_choose_and_type_the_columns(tmp_path, run):
    (tmp_path / "a.ndjson").write_text('{"k": "1", "v": "2024-01-02", "x": 1}\n')
    t = extract(run, {"connector": "ndjson", "path": "a.ndjson", "columns": {"k": "integer", "v": "date"}})
    assert t.column_names == ["k", "v"]
    assert t.schema.field("k").type == pa.int32()
    assert t.schema.field("v").type == pa.date32()
