"""``check_pipeline``: data tasks checked before anything runs, with schemas flowing through the DAG
when the sources exist and a syntax check otherwise."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transform_helpers import make_pipeline

from udop.errors import SpecError
from udop_transforms import check_pipeline


@pytest.fixture
def base(tmp_path: Path) -> Path:
    pq.write_table(pa.table({"id": [1], "carrier": ["AA"], "delay": [3.0]}), tmp_path / "flights.parquet")
    (tmp_path / "carriers.csv").write_text("carrier,name\nAA,American\n")
    return tmp_path


def pipeline(steps=None, rules=None, target=None, source_path="flights.parquet", params=None):
    tasks = [
        {"id": "flights", "type": "extract", "source": {"connector": "parquet", "path": source_path}},
        {"id": "carriers", "type": "extract", "source": {"connector": "csv", "path": "carriers.csv"}},
        {
            "id": "t",
            "type": "transform",
            "depends_on": ["flights", "carriers"],
            "steps": steps or [{"limit": 1}],
        },
        {"id": "v", "type": "validate", "depends_on": "t", "rules": rules or [{"row_count": {"min": 0}}]},
        {
            "id": "l",
            "type": "load",
            "depends_on": "v",
            "target": target or {"connector": "parquet", "path": "out"},
        },
    ]
    return make_pipeline(tasks, params)


def messages(errors: list[SpecError]) -> list[str]:
    return [str(e) for e in errors]


def test_a_good_pipeline_has_no_errors(base):
    p = pipeline(
        steps=[
            {"filter": "delay > ${params.d}"},
            {"join": {"with": "carriers", "on": "carrier"}},
            {"derive": {"late": "delay > 15"}},
            {"aggregate": {"by": ["name"], "metrics": {"n": "count(*)", "late": {"sum": "late::int"}}}},
        ],
        rules=[{"not_null": "name"}, {"range": {"column": "n", "min": 1}}],
        target={"connector": "parquet", "path": "out", "partition_by": "name"},
        params={"d": {"type": "int", "default": 0}},
    )
    assert check_pipeline(p, base) == []


def test_unknown_column_is_located_at_the_step(base):
    errors = check_pipeline(pipeline(steps=[{"limit": 5}, {"filter": "dleay > 3"}]), base)
    assert len(errors) == 1
    assert errors[0].path == "spec.tasks[2].steps[1]"
    assert "task 't', filter step: Referenced column \"dleay\" not found" in str(errors[0])
    assert "delay" in str(errors[0])


def test_schema_flows_to_validate_and_load(base):
    p = pipeline(
        steps=[{"aggregate": {"by": "carrier", "metrics": {"n": "count(*)"}}}],
        rules=[{"not_null": "delay"}],
        target={"connector": "parquet", "path": "o", "partition_by": "nn"},
    )
    got = messages(check_pipeline(p, base))
    assert got == [
        "spec.tasks[3].rules[0]: task 'v', not_null rule: column 'delay' not found; columns are: carrier, n",
        "spec.tasks[4].target.partition_by: task 'l': column 'nn' not found for partition_by; "
        "did you mean 'n'?",
    ]


def test_join_key_missing_on_one_side(base):
    (err,) = check_pipeline(pipeline(steps=[{"join": {"with": "carriers", "on": "id"}}]), base)
    assert err.path == "spec.tasks[2].steps[0]"
    assert "join key 'id' is missing in 'carriers'; columns are: carrier, name" in str(err)


def test_check_step_rules_are_bound(base):
    (err,) = check_pipeline(pipeline(steps=[{"select": ["id"]}, {"check": [{"unique": "carrier"}]}]), base)
    assert err.path == "spec.tasks[2].steps[1]"
    assert "column 'carrier' not found" in str(err)


def test_without_sources_only_syntax_is_checked(base):
    p = pipeline(
        source_path="later/*.parquet",
        steps=[
            {"filter": "unknown_col > 1"},
            {"derive": {"x": "a +"}},
            {"sql": "SELECT 1; SELECT 2"},
            {"sort": ["a desc", "b +"]},
            {"cast": {"a": "not a type"}},
        ],
    )
    got = check_pipeline(p, base)
    assert [e.path for e in got] == [
        "spec.tasks[2].steps[1]",
        "spec.tasks[2].steps[2]",
        "spec.tasks[2].steps[3]",
        "spec.tasks[2].steps[4]",
    ]
    assert "not a valid SQL expression 'a +'" in str(got[0])
    assert "exactly one SELECT" in str(got[1])


def test_parameters_bind_with_their_defaults_and_must_not_be_quoted(base):
    p = pipeline(
        steps=[{"filter": "carrier = '${params.c}'"}], params={"c": {"type": "str", "default": "AA"}}
    )
    (err,) = check_pipeline(p, base)
    assert "inside a quoted string" in str(err)


def test_ragged_csv_source_is_rejected_before_running(base):
    (base / "carriers.csv").write_text("carrier,name\nAA,American,extra\n")
    errors = check_pipeline(pipeline(), base)
    assert messages(errors) == [
        f"spec.tasks[1].source.path: task 'carriers': cannot read the source: {base}/carriers.csv "
        "line 2: 3 fields "
        "where the header has 2 (a ragged row)"
    ]


def test_plugin_entry_point_is_registered():
    (ep,) = [e for e in entry_points(group="udop.validators") if e.name == "transforms"]
    assert ep.load() is check_pipeline


def test_unknown_connector_is_rejected_before_running(base):
    p = pipeline(target={"connector": "postgress", "table": "x"})
    (err,) = check_pipeline(p, base)
    assert err.path == "spec.tasks[4].target.connector"
    assert "unknown connector 'postgress'" in str(err)
    assert "postgres" in str(err)
