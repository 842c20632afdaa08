"""Data-quality rules: each rule's failing rows and samples, severities, and the error contract."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transform_helpers import read_output

from udop.errors import DataQualityError, FatalError
from udop.tasks import CheckResult

ORDERS = pa.table(
    {
        "id": [1, 2, 2, 3, 4, 5],
        "region": ["eu", "us", "us", "apac", None, "eu"],
        "amount": [10.0, -1.0, 25.0, 300.0, 5.0, None],
        "code": ["A-1", "B-2", "bad", "C-3", "D-4", "E-5"],
        "day": [
            date(2024, 1, 1),
            date(2024, 1, 2),
            date(2024, 1, 2),
            date(2023, 12, 30),
            date(2024, 1, 1),
            date(2024, 1, 1),
        ],
    }
)


@pytest.fixture
def orders(tmp_path: Path) -> Path:
    pq.write_table(ORDERS, tmp_path / "orders.parquet")
    return tmp_path


def validate(run, rules: list[dict], **extra) -> dict:
    return run(
        [
            {"id": "o", "type": "extract", "source": {"connector": "parquet", "path": "orders.parquet"}},
            {"id": "v", "type": "validate", "depends_on": "o", "rules": rules, **extra},
        ]
    )


def only(results: dict) -> CheckResult:
    (check,) = results["v"].checks
    return check


def warn(rule: dict) -> dict:
    return {**rule, "severity": "warn"}


def test_not_null_one_result_per_column(orders, run):
    checks = validate(run, [warn({"not_null": ["region", "amount", "id"]})])["v"].checks
    assert [(c.rule, c.passed, c.failing_rows) for c in checks] == [
        ("not_null(region)", False, 1),
        ("not_null(amount)", False, 1),
        ("not_null(id)", True, 0),
    ]
    assert checks[0].sample == [{"id": 4, "region": None, "amount": 5.0, "code": "D-4", "day": "2024-01-01"}]


def test_unique_single_and_composite(orders, run):
    single, composite = validate(run, [warn({"unique": "id"}), warn({"unique": ["id", "amount"]})])[
        "v"
    ].checks
    assert (single.passed, single.failing_rows) == (False, 2)  # id 2 appears twice
    assert single.sample == [{"id": 2, "duplicates": 2}]
    assert composite.passed
    assert composite.rule == "unique(id, amount)"


def test_accepted_values_nulls_pass(orders, run):
    c = only(validate(run, [warn({"accepted_values": {"column": "region", "values": ["eu", "us"]}})]))
    assert (c.passed, c.failing_rows) == (False, 1)
    assert c.sample[0]["region"] == "apac"


def test_range_inclusive_bounds(orders, run):
    c = only(validate(run, [warn({"range": {"column": "amount", "min": 0, "max": 300}})]))
    assert (c.passed, c.failing_rows) == (False, 1)  # -1; 300 is inside, NULL passes
    assert c.sample[0]["amount"] == -1.0


def test_range_on_dates(orders, run):
    c = only(validate(run, [warn({"range": {"column": "day", "min": date(2024, 1, 1)}})]))
    assert c.failing_rows == 1
    assert c.sample[0]["day"] == "2023-12-30"


def test_regex_must_match_whole_value(orders, run):
    c = only(validate(run, [warn({"regex": {"column": "code", "pattern": "[A-Z]-[0-9]"}})]))
    assert (c.failing_rows, c.sample[0]["code"]) == (1, "bad")


def test_row_count_bounds(orders, run):
    ok, low, high = validate(
        run,
        [
            {"row_count": {"min": 6, "max": 6}},
            warn({"row_count": {"min": 7}}),
            warn({"row_count": {"max": 5}, "name": "small"}),
        ],
    )["v"].checks
    assert ok.passed
    assert not low.passed
    assert not high.passed
    assert high.rule == "small"
    assert "6 rows" in low.message


def test_freshness_relative_to_logical_date(tmp_path, run):
    # the test context's logical date is 2024-01-02T00:00Z; the newest value is 1.5 days older
    pq.write_table(
        pa.table({"ts": [datetime(2023, 12, 31, 12), datetime(2023, 12, 1)]}), tmp_path / "t.parquet"
    )
    results = run(
        [
            {"id": "o", "type": "extract", "source": {"connector": "parquet", "path": "t.parquet"}},
            {
                "id": "v",
                "type": "validate",
                "depends_on": "o",
                "rules": [
                    {"freshness": {"column": "ts", "max_age": "2d", "relative_to": "logical_date"}},
                    warn({"freshness": {"column": "ts", "max_age": "1d", "relative_to": "logical_date"}}),
                ],
            },
        ]
    )
    fresh, stale = results["v"].checks
    assert fresh.passed
    assert not stale.passed
    assert "1.5d old" in stale.message


def test_freshness_relative_to_now(tmp_path, run):
    now = datetime.now(UTC).replace(tzinfo=None)
    pq.write_table(
        pa.table({"ts": [now - timedelta(hours=2), now - timedelta(days=3)]}), tmp_path / "t.parquet"
    )
    results = run(
        [
            {"id": "o", "type": "extract", "source": {"connector": "parquet", "path": "t.parquet"}},
            {
                "id": "v",
                "type": "validate",
                "depends_on": "o",
                "rules": [
                    {"freshness": {"column": "ts", "max_age": "3h"}},
                    warn({"freshness": {"column": "ts", "max_age": "1h"}}),
                ],
            },
        ]
    )
    assert [c.passed for c in results["v"].checks] == [True, False]


def test_expect_custom_predicate_with_parameter(orders, run):
    results = run(
        [
            {"id": "o", "type": "extract", "source": {"connector": "parquet", "path": "orders.parquet"}},
            {
                "id": "v",
                "type": "validate",
                "depends_on": "o",
                "rules": [warn({"expect": "amount < ${params.cap} or region = 'apac'"})],
            },
        ],
        params={"cap": 20},
        declared={"cap": {"type": "int", "default": 1}},
    )
    (c,) = results["v"].checks
    assert c.failing_rows == 1
    assert c.sample[0]["id"] == 2
    assert c.sample[0]["amount"] == 25.0


def test_warn_rules_pass_the_input_through(orders, run):
    results = validate(run, [warn({"not_null": "region"}), {"row_count": {"min": 1}}])
    out = results["v"].output
    assert out.uri.endswith("/v/")
    assert out.rows == 6
    assert out.schema_fingerprint == results["o"].output.schema_fingerprint
    assert read_output(out).to_pydict() == read_output(results["o"].output).to_pydict()


def test_error_rule_fails_after_all_rules_ran_and_carries_every_result(orders, run, tmp_path):
    with pytest.raises(DataQualityError) as info:
        validate(
            run,
            [
                {"not_null": "region"},
                warn({"unique": "id"}),
                {"range": {"column": "amount", "min": 0}},
                {"row_count": {"min": 1}},
            ],
        )
    err = info.value
    assert isinstance(err, FatalError)  # never retried
    assert [(c.rule, c.passed) for c in err.checks] == [
        ("not_null(region)", False),
        ("unique(id)", False),
        ("range(amount)", False),
        ("row_count", True),
    ]
    assert all(isinstance(c, CheckResult) for c in err.checks)
    message = str(err)
    assert "\n" not in message
    assert "'v'" in message
    assert "2 of 4" in message
    assert "not_null(region)" in message
    assert "unique(id)" not in message
    # nothing passed on: the task's output location was never published
    assert not (tmp_path / "data" / "runs" / "t" / "r1" / "v").exists()


def test_sample_rows_limit(orders, run):
    c = only(validate(run, [warn({"expect": "amount > 1000"})], sample_rows=2))
    assert c.failing_rows == 5
    assert len(c.sample) == 2


def test_check_step_error_stops_the_transform(orders, run):
    with pytest.raises(DataQualityError) as info:
        run(
            [
                {"id": "o", "type": "extract", "source": {"connector": "parquet", "path": "orders.parquet"}},
                {
                    "id": "t",
                    "type": "transform",
                    "depends_on": "o",
                    "steps": [
                        {"check": [{"unique": "id"}, {"not_null": "region", "severity": "warn"}]},
                        {"limit": 1},
                    ],
                },
            ]
        )
    assert [c.rule for c in info.value.checks] == ["unique(id)", "not_null(region)"]


def test_rule_on_unknown_column_names_rule_and_column(orders, run):
    with pytest.raises(
        FatalError,
        match=r"task 'v': rules\[1\] \(range\): column 'amout' not found; "
        r"did you mean 'amount'\?",
    ):
        validate(run, [{"not_null": "id"}, {"range": {"column": "amout", "min": 0}}])


def test_check_results_are_json_safe(orders, run):
    results = validate(
        run, [warn({"not_null": "amount"}), warn({"range": {"column": "day", "max": date(2024, 1, 1)}})]
    )
    json.dumps(results["v"].to_dict())
