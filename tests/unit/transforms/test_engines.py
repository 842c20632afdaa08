"""``engine:`` on transform and validate tasks, checked before anything runs (no JVM, no AWS): the step
compiler's DuckDB SQL is transpiled to Spark SQL and Athena (Trino) SQL by sqlglot, and a step the
engine cannot express is one located error naming the task, the step and the engine.

Athena SQL cannot run here: it is checked by parsing it as Athena SQL and by the transpiler's round
trip (read back and written again, unchanged)."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot
from transform_helpers import make_pipeline

from udop_transforms import check_pipeline
from udop_transforms._dialects import round_trip, to_dialect
from udop_transforms._engine import Session
from udop_transforms._sql import Params
from udop_transforms._steps import compile_steps

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from tpch import Q1_STEPS, Q3_STEPS, Q6_STEPS


@pytest.fixture
def base(tmp_path: Path) -> Path:
    pq.write_table(
        pa.table({"id": [1, 2], "carrier": ["AA", "UA"], "delay": [3.0, 20.0]}), tmp_path / "flights.parquet"
    )
    pq.write_table(pa.table({"carrier": ["AA"], "name": ["American"]}), tmp_path / "carriers.parquet")
    return tmp_path


def pipeline(
    engine: str,
    steps: list,
    rules: list | None = None,
    params: dict | None = None,
    validate_engine: str | None = None,
):
    tasks = [
        {"id": "flights", "type": "extract", "source": {"connector": "parquet", "path": "flights.parquet"}},
        {"id": "carriers", "type": "extract", "source": {"connector": "parquet", "path": "carriers.parquet"}},
        {
            "id": "t",
            "type": "transform",
            "engine": engine,
            "depends_on": ["flights", "carriers"],
            "steps": steps,
        },
        {
            "id": "v",
            "type": "validate",
            "engine": validate_engine or engine,
            "depends_on": ["t"],
            "rules": rules or [{"row_count": {"min": 0}}],
        },
    ]
    return make_pipeline(tasks, params)


GOOD_STEPS = [
    {"filter": "delay > 1"},
    {"join": {"with": "carriers", "on": "carrier", "how": "left"}},
    {"derive": {"late": "delay > 15", "delay": "coalesce(delay, 0) * 2"}},
    {"distinct": {"on": ["id"], "order_by": ["delay desc"]}},
    {"select": {"exclude": ["late"]}},
    {"rename": {"name": "carrier_name"}},
    {"cast": {"delay": "decimal(10,2)"}},
    {"aggregate": {"by": ["carrier"], "metrics": {"n": "count(*)", "worst": {"max": "delay"}}}},
    {"sort": ["n desc nulls last"]},
    {"limit": 10},
]


@pytest.mark.parametrize("engine", ["spark", "athena"])
def test_every_kind_of_step_transpiles(base, engine):
    rules = [
        {"not_null": ["carrier"]},
        {"regex": {"column": "carrier", "pattern": "[A-Z]{2}"}},
        {"accepted_values": {"column": "carrier", "values": ["AA", "UA"]}},
        {"unique": ["carrier"]},
    ]
    assert check_pipeline(pipeline(engine, GOOD_STEPS, rules, validate_engine="spark"), base) == []


def test_union_by_name_is_refused_on_spark_naming_task_step_and_engine(base):
    steps = [{"select": ["carrier"]}, {"union": {"with": ["carriers"], "by_name": True}}]
    (err,) = check_pipeline(pipeline("spark", steps), base)
    assert err.path == "spec.tasks[2].steps[1]"
    assert str(err).splitlines() == [str(err)]
    assert "task 't', union step: engine spark: spark has no UNION BY NAME" in str(err)
    # the same steps are fine on DuckDB
    assert check_pipeline(pipeline("duckdb", steps), base) == []


def test_a_function_the_transpiler_does_not_know_is_refused(base):
    (err,) = check_pipeline(
        pipeline("spark", [{"derive": {"x": "damerau_levenshtein(carrier, 'AA')"}}]), base
    )
    assert err.path == "spec.tasks[2].steps[0]"
    assert "task 't', derive step: engine spark: function 'damerau_levenshtein'" in str(err)


def test_athena_refuses_bound_references_but_spark_binds_them(base):
    steps = [{"filter": "delay > ${params.d}"}]
    params = {"d": {"type": "int", "default": 0}}
    (err,) = check_pipeline(pipeline("athena", steps, params=params, validate_engine="duckdb"), base)
    assert err.path == "spec.tasks[2].steps[0]"
    assert "task 't', filter step: engine athena: athena tasks cannot bind ${...} references" in str(err)
    assert check_pipeline(pipeline("spark", steps, params=params), base) == []


def test_check_steps_run_on_duckdb_only(base):
    (err,) = check_pipeline(pipeline("spark", [{"check": [{"not_null": ["id"]}]}, {"limit": 1}]), base)
    assert err.path == "spec.tasks[2].steps[0]"
    assert "task 't', check step: engine spark: check steps run on duckdb only" in str(err)


def test_a_validate_rule_the_engine_cannot_express_names_the_rule(base):
    rules = [{"not_null": ["carrier"]}, {"expect": "damerau_levenshtein(carrier, 'AA') < 2"}]
    (err,) = check_pipeline(pipeline("spark", [{"limit": 5}], rules), base)
    assert err.path == "spec.tasks[3].rules[1]"
    assert "task 'v', expect rule: engine spark: function 'damerau_levenshtein'" in str(err)


def test_validate_tasks_run_on_duckdb_or_spark():
    with pytest.raises(Exception, match="validate tasks run on duckdb or spark"):
        pipeline("athena", [{"limit": 1}])


def test_an_unknown_engine_is_a_spec_error():
    with pytest.raises(Exception, match=r"duckdb.*spark.*athena"):
        make_pipeline(
            [
                {"id": "a", "type": "python", "callable": "m:f"},
                {
                    "id": "t",
                    "type": "transform",
                    "engine": "flink",
                    "depends_on": ["a"],
                    "steps": [{"limit": 1}],
                },
            ]
        )


TPCH = {
    "lineitem": [
        ("l_orderkey", "BIGINT"),
        ("l_quantity", "DECIMAL(15,2)"),
        ("l_extendedprice", "DECIMAL(15,2)"),
        ("l_discount", "DECIMAL(15,2)"),
        ("l_tax", "DECIMAL(15,2)"),
        ("l_returnflag", "VARCHAR"),
        ("l_linestatus", "VARCHAR"),
        ("l_shipdate", "DATE"),
    ],
    "orders": [
        ("o_orderkey", "BIGINT"),
        ("o_custkey", "BIGINT"),
        ("o_orderdate", "DATE"),
        ("o_shippriority", "INTEGER"),
    ],
    "customer": [("c_custkey", "BIGINT"), ("c_mktsegment", "VARCHAR")],
}


@pytest.mark.parametrize(
    ("steps", "tables", "scope"),
    [
        (Q1_STEPS, ["lineitem"], {"delta": 90}),
        (Q3_STEPS, ["customer", "orders", "lineitem"], {"segment": "BUILDING", "day": date(1995, 3, 15)}),
        (Q6_STEPS, ["lineitem"], {"start": date(1994, 1, 1)}),
    ],
    ids=["Q1", "Q3", "Q6"],
)
def test_tpch_steps_in_athena_sql_parse_and_round_trip(steps, tables, scope):
    """Athena cannot run here: its SQL (references written in, as an athena task must) is parsed as
    Athena SQL and survives the transpiler's round trip unchanged."""
    from udop.spec.data_tasks import TransformTask

    task = TransformTask.model_validate(
        {"id": "q", "type": "transform", "depends_on": tables, "steps": steps}
    )
    with Session() as session:
        for name in tables:
            body = ", ".join(f'"{c}" {t}' for c, t in TPCH[name])
            session.con.execute(f'CREATE OR REPLACE TEMP TABLE "_{name}" ({body})')
        columns = {name: session.register_view(name, f'"_{name}"') for name in tables}
        params = Params({"params": scope, "run": {}, "env": {}})
        plan = compile_steps(session, list(task.steps), task.primary_input, columns, params)
        # an athena task has no bound references: write the values into the SQL for this check
        sql = plan.query()
        for key, value in sorted(plan.params.values.items(), reverse=True):
            literal = (
                str(value)
                if isinstance(value, int)
                else f"DATE '{value}'"
                if isinstance(value, date)
                else f"'{value}'"
            )
            sql = sql.replace(f"${key}", literal)
    athena = to_dialect(sql, columns, "athena")
    assert round_trip(athena, "athena") == athena
    tree = sqlglot.parse_one(athena, read="athena")
    assert "ORDER BY" in athena or steps is Q6_STEPS
    # what Athena would reject: DuckDB-only stars and QUALIFY are gone
    assert " EXCLUDE " not in athena and " REPLACE (" not in athena and "QUALIFY" not in athena
    assert tree.find(sqlglot.exp.Placeholder) is None
