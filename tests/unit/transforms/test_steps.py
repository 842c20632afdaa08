"""Each transform step on small data, against results worked out by hand or in plain Python."""

from __future__ import annotations

import sys
from datetime import date
from decimal import Decimal, localcontext
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from udop.errors import FatalError

FLIGHTS = pa.table(
    {
        "id": [1, 2, 3, 4, 5, 6],
        "carrier": ["AA", "UA", "AA", "DL", "UA", "AA"],
        "delay": [5, None, 20, -3, 7, 20],
        "month": [1, 1, 2, 2, 2, 1],
    }
)
CARRIERS = pa.table({"carrier": ["AA", "UA", "B6"], "name": ["American", "United", "JetBlue"]})


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    pq.write_table(FLIGHTS, tmp_path / "flights.parquet")
    pq.write_table(CARRIERS, tmp_path / "carriers.parquet")
    return tmp_path


def _extracts() -> list[dict]:
    return [
        {"id": "flights", "type": "extract", "source": {"connector": "parquet", "path": "flights.parquet"}},
        {"id": "carriers", "type": "extract", "source": {"connector": "parquet", "path": "carriers.parquet"}},
    ]


def transform(run, steps: list[dict], params=None, declared=None) -> pa.Table:
    results = run(
        [
            *_extracts(),
            {"id": "t", "type": "transform", "depends_on": ["flights", "carriers"], "steps": steps},
        ],
        params=params,
        declared=declared,
    )
    out = results["t"].output
    assert out is not None
    table = pq.read_table(Path(out.uri) / "part-0.parquet")
    assert out.rows == table.num_rows
    return table


def rows(table: pa.Table, *cols: str) -> list[tuple]:
    data = table.to_pydict()
    names = cols or tuple(data)
    return [tuple(data[c][i] for c in names) for i in range(table.num_rows)]


def test_select_keeps_only_named_columns_in_order(sources, run):
    t = transform(run, [{"select": ["month", "id"]}])
    assert t.column_names == ["month", "id"]
    assert sorted(rows(t)) == sorted(
        zip(FLIGHTS["month"].to_pylist(), FLIGHTS["id"].to_pylist(), strict=True)
    )


def test_select_exclude_drops_columns(sources, run):
    t = transform(run, [{"select": {"exclude": ["delay", "month"]}}])
    assert t.column_names == ["id", "carrier"]


def test_rename_and_cast(sources, run):
    t = transform(
        run, [{"rename": {"delay": "dep_delay"}}, {"cast": {"dep_delay": "double", "id": "varchar"}}]
    )
    assert t.schema.field("dep_delay").type == pa.float64()
    assert t.schema.field("id").type in (pa.string(), pa.large_string(), pa.string_view())
    assert "delay" not in t.column_names


def test_filter_with_bound_parameter(sources, run):
    t = transform(
        run,
        [{"filter": "delay > ${params.min_delay}"}, {"sort": ["id"]}],
        params={"min_delay": 5},
        declared={"min_delay": {"type": "int", "default": 0}},
    )
    assert rows(t, "id") == [(3,), (5,), (6,)]


def test_parameter_values_are_bound_not_spliced(sources, run):
    # a value that would change the query if it were pasted into the SQL text
    evil = "AA' OR '1'='1"
    t = transform(
        run,
        [{"filter": "carrier = ${params.c}"}],
        params={"c": evil},
        declared={"c": {"type": "str", "default": "x"}},
    )
    assert t.num_rows == 0


def test_parameter_inside_quotes_is_rejected(sources, run):
    with pytest.raises(FatalError, match=r"steps\[0\] \(filter\).*inside a quoted string"):
        transform(
            run,
            [{"filter": "carrier = '${params.c}'"}],
            params={"c": "AA"},
            declared={"c": {"type": "str", "default": "x"}},
        )


def test_derive_adds_and_replaces_and_chains(sources, run):
    t = transform(
        run,
        [
            {"filter": "delay is not null"},
            {"derive": {"delay": "delay * 10", "late": "delay > 60", "minutes": "delay + 1"}},
            {"sort": ["id"]},
        ],
    )
    assert t.column_names == ["id", "carrier", "delay", "month", "late", "minutes"]
    # later entries see the replaced value of earlier ones (delay * 10)
    expected = [
        (i, d * 10, d * 10 > 60, d * 10 + 1)
        for i, d in zip(FLIGHTS["id"].to_pylist(), FLIGHTS["delay"].to_pylist(), strict=True)
        if d is not None
    ]
    assert rows(t, "id", "delay", "late", "minutes") == expected


def test_aggregate_named_functions_and_expressions(sources, run):
    t = transform(
        run,
        [
            {
                "aggregate": {
                    "by": ["carrier"],
                    "metrics": {
                        "n": {"count": "*"},
                        "total": {"sum": "delay"},
                        "mean": {"avg": "delay"},
                        "lo": {"min": "delay"},
                        "hi": {"max": "delay"},
                        "months": {"count_distinct": "month"},
                        "late": "count(*) filter (where delay > 6)",
                    },
                }
            },
            {"sort": ["carrier"]},
        ],
    )
    expected = {}
    for c, d, m in zip(
        FLIGHTS["carrier"].to_pylist(),
        FLIGHTS["delay"].to_pylist(),
        FLIGHTS["month"].to_pylist(),
        strict=True,
    ):
        expected.setdefault(c, []).append((d, m))
    want = []
    for c in sorted(expected):
        ds = [d for d, _ in expected[c] if d is not None]
        want.append(
            (
                c,
                len(expected[c]),
                sum(ds),
                sum(ds) / len(ds),
                min(ds),
                max(ds),
                len({m for _, m in expected[c]}),
                sum(d > 6 for d in ds),
            )
        )
    assert rows(t, "carrier", "n", "total", "mean", "lo", "hi", "months", "late") == want


def test_aggregate_without_by_gives_one_row(sources, run):
    t = transform(run, [{"aggregate": {"metrics": {"n": "count(*)"}}}])
    assert rows(t) == [(6,)]


@pytest.mark.parametrize(
    ("how", "expected_ids"),
    [
        ("inner", [1, 2, 3, 5, 6]),
        ("left", [1, 2, 3, 4, 5, 6]),
        ("semi", [1, 2, 3, 5, 6]),
        ("anti", [4]),
    ],
)
def test_join_kinds(sources, run, how, expected_ids):
    t = transform(run, [{"join": {"with": "carriers", "on": ["carrier"], "how": how}}, {"sort": ["id"]}])
    assert [r[0] for r in rows(t, "id")] == expected_ids
    if how in ("semi", "anti"):
        assert t.column_names == FLIGHTS.column_names
    else:
        names = dict(zip(CARRIERS["carrier"].to_pylist(), CARRIERS["name"].to_pylist(), strict=True))
        assert rows(t, "carrier", "name") == [
            (c, names.get(c))
            for i, c in sorted(zip(FLIGHTS["id"].to_pylist(), FLIGHTS["carrier"].to_pylist(), strict=True))
            if i in expected_ids
        ]


@pytest.mark.parametrize("how", ["right", "full"])
def test_right_and_full_join_merge_the_key(sources, run, how):
    t = transform(run, [{"join": {"with": "carriers", "on": ["carrier"], "how": how}}])
    got = sorted((c, i) for c, i in rows(t, "carrier", "id"))
    expected = [
        (c, i)
        for i, c in zip(FLIGHTS["id"].to_pylist(), FLIGHTS["carrier"].to_pylist(), strict=True)
        if how == "full" or c in ("AA", "UA")
    ]
    expected.append(("B6", None))  # JetBlue has no flights: key from the right side, no id
    assert got == sorted(expected, key=lambda x: (x[0], x[1] is None, x[1]))


def test_join_clashing_columns_get_a_suffix(sources, run):
    t = transform(run, [{"derive": {"name": "'flight'"}}, {"join": {"with": "carriers", "on": "carrier"}}])
    assert "name" in t.column_names
    assert "name_carriers" in t.column_names
    assert set(t["name"].to_pylist()) == {"flight"}


def test_join_on_differently_named_keys(sources, run):
    t = transform(
        run,
        [
            {"rename": {"carrier": "code"}},
            {"join": {"with": "carriers", "on": {"code": "carrier"}, "how": "inner"}},
            {"sort": ["id"]},
        ],
    )
    assert "carrier" not in t.column_names
    assert rows(t, "id", "name")[0] == (1, "American")


def test_union_by_name_fills_missing_columns(sources, run):
    t = transform(run, [{"select": ["carrier"]}, {"union": {"with": "carriers"}}])
    assert t.num_rows == 6 + 3
    assert sorted(t.column_names) == ["carrier", "name"]
    assert t["name"].null_count == 6


def test_union_distinct(sources, run):
    t = transform(
        run,
        [
            {"select": ["carrier"]},
            {"union": {"with": ["carriers"], "distinct": True}},
            {"select": ["carrier"]},
            {"distinct": True},
        ],
    )
    assert sorted(t["carrier"].to_pylist()) == ["AA", "B6", "DL", "UA"]


def test_distinct_rows(sources, run):
    t = transform(run, [{"select": ["carrier", "month"]}, {"distinct": True}])
    pairs = set(zip(FLIGHTS["carrier"].to_pylist(), FLIGHTS["month"].to_pylist(), strict=True))
    assert sorted(rows(t)) == sorted(pairs)


def test_dedupe_by_key_keeps_the_first_in_tie_break_order(sources, run):
    t = transform(
        run,
        [
            {"distinct": {"on": ["carrier"], "order_by": ["delay desc nulls last", "id"]}},
            {"sort": ["carrier"]},
        ],
    )
    # AA: delays 5, 20 (id 3), 20 (id 6) -> 20 wins, tie broken by the lower id; UA: 7 beats NULL
    assert rows(t, "carrier", "id") == [("AA", 3), ("DL", 4), ("UA", 5)]


def test_sort_and_limit(sources, run):
    t = transform(run, [{"sort": ["delay desc nulls last", "id desc"]}, {"limit": 3}])
    assert rows(t, "id") == [(6,), (3,), (5,)]


def test_sql_step_sees_this_and_inputs_by_task_id(sources, run):
    t = transform(
        run,
        [
            {"filter": "month = 1"},
            {
                "sql": "SELECT c.name, count(*) AS n FROM this JOIN carriers c USING (carrier) "
                "WHERE this.delay >= ${params.d} GROUP BY c.name ORDER BY c.name"
            },
        ],
        params={"d": 0},
        declared={"d": {"type": "int", "default": 0}},
    )
    assert rows(t) == [("American", 2)]


def test_sql_step_must_be_one_select(sources, run):
    with pytest.raises(FatalError, match=r"steps\[0\] \(sql\): a sql step is exactly one SELECT"):
        transform(run, [{"sql": "SELECT 1; SELECT 2"}])
    with pytest.raises(FatalError, match=r"steps\[0\] \(sql\)"):
        transform(run, [{"sql": "DELETE FROM carriers"}])


def test_check_step_records_warnings_and_continues(sources, run):
    results = run(
        [
            *_extracts(),
            {
                "id": "t",
                "type": "transform",
                "depends_on": ["flights", "carriers"],
                "steps": [
                    {"check": [{"not_null": "delay", "severity": "warn"}]},
                    {"filter": "delay is not null"},
                    {"check": [{"not_null": "delay"}]},
                ],
            },
        ]
    )
    checks = results["t"].checks
    assert [(c.rule, c.passed, c.failing_rows) for c in checks] == [
        ("not_null(delay)", False, 1),
        ("not_null(delay)", True, 0),
    ]
    assert results["t"].output.rows == 5


def test_decimal_products_stay_exact_decimals(tmp_path, run):
    big = Decimal("9999999999999.99")  # the largest decimal(15,2)
    table = pa.table(
        {
            "a": pa.array([big, Decimal("1.10")], pa.decimal128(15, 2)),
            "b": pa.array([big, Decimal("0.07")], pa.decimal128(15, 2)),
            "d": pa.array([Decimal("0.05"), Decimal("0.10")], pa.decimal128(15, 2)),
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    results = run(
        [
            {"id": "d", "type": "extract", "source": {"connector": "parquet", "path": "d.parquet"}},
            {
                "id": "t",
                "type": "transform",
                "depends_on": "d",
                "steps": [{"aggregate": {"metrics": {"s": "sum(a * b)", "c": "sum(a * (1 - d) * (1 + d))"}}}],
            },
        ]
    )
    out = pq.read_table(Path(results["t"].output.uri))
    assert pa.types.is_decimal(out.schema.field("s").type)
    assert pa.types.is_decimal(out.schema.field("c").type)
    with localcontext(prec=80):  # Python's default 28 digits would round the exact answer
        assert out["s"].to_pylist() == [big * big + Decimal("1.10") * Decimal("0.07")]
        # the TPC-H charge shape: price * (1 - discount) * (1 + tax)
        assert out["c"].to_pylist() == [
            big * Decimal("0.95") * Decimal("1.05") + Decimal("1.10") * Decimal("0.90") * Decimal("1.10")
        ]


def test_decimal_columns_keep_exact_values_row_by_row(tmp_path, run):
    a = [Decimal("12345678901.23"), Decimal("0.01")]
    b = [Decimal("98765432109.87"), Decimal("0.03")]
    pq.write_table(
        pa.table({"a": pa.array(a, pa.decimal128(15, 2)), "b": pa.array(b, pa.decimal128(15, 2))}),
        tmp_path / "d.parquet",
    )
    results = run(
        [
            {"id": "d", "type": "extract", "source": {"connector": "parquet", "path": "d.parquet"}},
            {"id": "t", "type": "transform", "depends_on": "d", "steps": [{"derive": {"p": "a * b"}}]},
        ]
    )
    out = pq.read_table(Path(results["t"].output.uri))
    assert pa.types.is_decimal(out.schema.field("p").type)
    assert sorted(out["p"].to_pylist()) == sorted(x * y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("arrow_type", [pa.string_view(), pa.large_string()])
def test_string_view_and_large_string_inputs(tmp_path, run, arrow_type):
    table = pa.table({"k": pa.array(["a", "b", "a", None], arrow_type), "v": [1, 2, 3, 4]})
    pq.write_table(table, tmp_path / "s.parquet")
    assert pq.read_schema(tmp_path / "s.parquet").field("k").type == arrow_type
    results = run(
        [
            {"id": "s", "type": "extract", "source": {"connector": "parquet", "path": "s.parquet"}},
            {
                "id": "t",
                "type": "transform",
                "depends_on": "s",
                "steps": [
                    {"filter": "k is not null"},
                    {"derive": {"u": "upper(k)"}},
                    {"aggregate": {"by": "u", "metrics": {"v": "sum(v)"}}},
                    {"sort": "u"},
                ],
            },
            {
                "id": "v",
                "type": "validate",
                "depends_on": "t",
                "rules": [
                    {"accepted_values": {"column": "u", "values": ["A", "B"]}},
                    {"regex": {"column": "u", "pattern": "[A-Z]"}},
                ],
            },
        ]
    )
    out = pq.read_table(Path(results["t"].output.uri))
    assert out.to_pydict() == {"u": ["A", "B"], "v": [4, 2]}
    assert all(c.passed for c in results["v"].checks)


def test_output_is_replaced_whole_on_a_retry(sources, run, tmp_path):
    first = transform(run, [{"filter": "month = 1"}])
    again = transform(run, [{"filter": "month = 2"}])  # same run id and task: the same output location
    assert first.num_rows == 3
    assert again.num_rows == 3
    out_dir = tmp_path / "data" / "runs" / "t" / "r1" / "t"
    assert sorted(p.name for p in out_dir.iterdir()) == ["part-0.parquet"]
    assert set(pq.read_table(out_dir)["month"].to_pylist()) == {2}
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(".")]


def test_dependencies_without_data_only_order_the_run(sources, run, tmp_path):
    # a python task (no dataset) upstream of a transform that does not read it
    (tmp_path / "marker.py").write_text("def go(context, inputs):\n    return {'ok': True}\n")
    sys.path.insert(0, str(tmp_path))
    try:
        results = run(
            [
                {"id": "marker", "type": "python", "callable": "marker:go"},
                *_extracts(),
                {
                    "id": "t",
                    "type": "transform",
                    "depends_on": ["marker", "flights"],
                    "input": "flights",
                    "steps": [{"limit": 2}],
                },
            ]
        )
    finally:
        sys.path.remove(str(tmp_path))
    assert results["t"].output.rows == 2


def test_empty_result_is_a_readable_dataset_with_its_columns(sources, run):
    t = transform(run, [{"filter": "false"}, {"derive": {"x": "delay * 2"}}])
    assert t.num_rows == 0
    assert t.column_names == ["id", "carrier", "delay", "month", "x"]


@pytest.mark.parametrize(("a", "precision"), [(Decimal("12.50"), 18), (Decimal("9999999999999.99"), 38)])
def test_decimal_product_type_widens_only_when_the_values_need_it(tmp_path, run, a, precision):
    pq.write_table(pa.table({"a": pa.array([a], pa.decimal128(15, 2))}), tmp_path / "d.parquet")
    results = run([{"id": "d", "type": "extract", "source": {"connector": "parquet", "path": "d.parquet"}},
                   {"id": "t", "type": "transform", "depends_on": "d", "steps": [{"derive": {"p": "a * a"}}]},
                   {"id": "v", "type": "validate", "depends_on": "d",
                    "rules": [{"expect": "a * a > 0"}]}])
    out = pq.read_table(Path(results["t"].output.uri))
    assert out.schema.field("p").type == pa.decimal128(precision, 4)
    with localcontext(prec=80):
        assert out["p"].to_pylist() == [a * a]
    assert results["v"].checks[0].passed


def test_run_dates_bind_as_dates(tmp_path, run):
    # the test context's logical date is 2024-01-02
    days = [date(2023, 12, 31), date(2024, 1, 1), date(2024, 1, 2)]
    pq.write_table(pa.table({"d": days}), tmp_path / "d.parquet")
    results = run([{"id": "d", "type": "extract", "source": {"connector": "parquet", "path": "d.parquet"}},
                   {"id": "t", "type": "transform", "depends_on": "d",
                    "steps": [{"filter": "d >= ${run.logical_date} - INTERVAL 1 DAY"},
                              {"derive": {"age": "${run.logical_ts} - d"}}, {"sort": "d"}]}])
    out = pq.read_table(Path(results["t"].output.uri))
    assert out["d"].to_pylist() == days[1:]
