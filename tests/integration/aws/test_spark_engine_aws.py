"""``engine: spark`` on emulated AWS: the task runner's prepare call writes the EMR Serverless job's spec
(Spark SQL, typed parameters, the input's S3 objects, the output folder) from the input's Parquet
footers; the spec, run by udop's entry script on local Spark (moto runs no job), gives the answer; the
finish call records the result from the output's footers, with lineage and the job run's billing."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from udop.aws.definitions import canonical_definition, put_version
from udop.spec.models import Pipeline

pytestmark = [
    pytest.mark.aws,
    pytest.mark.redis,
    pytest.mark.slow,  # starts Spark
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]


def _pipeline(log_dir: str) -> Pipeline:
    tasks = [
        {
            "id": "numbers",
            "type": "python",
            "callable": "udop_aws_test_tasks:numbers",
            "args": {"n": 10, "log_dir": log_dir},
        },
        {
            "id": "groups",
            "type": "transform",
            "engine": "spark",
            "depends_on": ["numbers"],
            "steps": [
                {"filter": "id > ${params.min}"},
                {"aggregate": {"by": ["grp"], "metrics": {"n": "count(*)", "total": {"sum": "id"}}}},
                {"sort": ["grp"]},
            ],
        },
    ]
    return Pipeline.model_validate(
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": "sparky"},
            "spec": {"params": {"min": {"type": "int", "default": 2}}, "tasks": tasks},
        }
    )


def _invoke(aws: Any, payload: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    resp = aws.client("lambda").invoke(FunctionName=aws.task_runner_arn, Payload=json.dumps(payload))
    return json.loads(resp["Payload"].read()), resp.get("FunctionError")


def _payload(run_id: str, task_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "run": {"run_id": run_id, "params": {"min": 2}, "logical_date": "2026-01-02"},
        "pipeline": "sparky",
        "version": 1,
        "task_id": task_id,
        "attempt": 0,
        "execution": f"arn:aws:states:us-east-1:123456789012:execution:udop-sparky:{run_id}",
        **extra,
    }


def test_prepare_job_finish_on_emulated_aws(moto_aws: Any, tmp_path: Path) -> None:
    aws = moto_aws
    s3 = aws.client("s3")
    put_version(s3, aws.definitions_bucket, "sparky", 1, canonical_definition(_pipeline(str(aws.log_root))))
    run_id = uuid.uuid4().hex
    _, err = _invoke(aws, _payload(run_id, "numbers"))
    assert err is None

    prepared, err = _invoke(aws, _payload(run_id, "groups", engine_phase="prepare"))
    assert err is None, prepared
    bucket, _, key = prepared["spec_uri"].removeprefix("s3://").partition("/")
    spec = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert spec["output"] == f"s3://{aws.data_bucket}/runs/sparky/{run_id}/groups/"
    assert spec["params"] == {"p0": {"type": "int", "value": 2}}  # bound, typed, never spliced
    (numbers,) = spec["inputs"]["numbers"]
    assert numbers.startswith(f"s3://{aws.data_bucket}/runs/sparky/{run_id}/numbers/")

    # what EMR Serverless would do: the entry script over the spec (S3 objects fetched to local files)
    from udop_transforms import spark_entry
    from udop_transforms._spark import spark_session, stop_spark

    b, _, k = numbers.removeprefix("s3://").partition("/")
    local_in = tmp_path / "numbers.parquet"
    local_in.write_bytes(s3.get_object(Bucket=b, Key=k)["Body"].read())
    local = {**spec, "inputs": {"numbers": [str(local_in)]}, "output": str(tmp_path / "out")}
    try:
        spark_entry.run_job(spark_session(), local)
    finally:
        stop_spark()
    written = sorted((tmp_path / "out").glob("*.parquet"))
    rows = [r for f in written for r in pq.read_table(f).to_pylist()]
    # numbers 1..10 with id > 2, grouped by id % 3
    assert sorted((r["grp"], r["n"], r["total"]) for r in rows) == [(0, 3, 18), (1, 3, 21), (2, 2, 13)]
    out_bucket, _, out_prefix = spec["output"].removeprefix("s3://").partition("/")
    for f in written:
        s3.put_object(Bucket=out_bucket, Key=out_prefix + f.name, Body=f.read_bytes())

    emr = aws.client("emr-serverless")
    app = emr.create_application(name="udop", releaseLabel="emr-7.5.0", type="SPARK")["applicationId"]
    job = emr.start_job_run(
        applicationId=app,
        executionRoleArn="arn:aws:iam::123456789012:role/udop-emr",
        jobDriver={
            "sparkSubmit": {
                "entryPoint": "s3://code/udop_spark_entry.py",
                "entryPointArguments": [prepared["spec_uri"]],
            }
        },
    )
    finished, err = _invoke(
        aws,
        _payload(
            run_id,
            "groups",
            engine_phase="finish",
            job_run={"ApplicationId": app, "JobRunId": job["jobRunId"]},
        ),
    )
    assert err is None, finished
    assert finished["output"]["rows"] == 3 and finished["output"]["uri"] == spec["output"]
    result = json.loads(
        s3.get_object(Bucket=aws.data_bucket, Key=f"results/sparky/{run_id}/groups.json")["Body"].read()
    )
    assert result["metrics"]["engine"] == "spark" and result["metrics"]["emr_job_run_id"] == job["jobRunId"]
    # the cost, from GetJobRun's billedResourceUtilization (moto answers the documented shape, zeros)
    billed = emr.get_job_run(applicationId=app, jobRunId=job["jobRunId"])["jobRun"]["billedResourceUtilization"]
    assert {k: result["metrics"][k] for k in ("emr_vcpu_hours", "emr_memory_gb_hours", "emr_storage_gb_hours")} \
        == {"emr_vcpu_hours": billed["vCPUHour"], "emr_memory_gb_hours": billed["memoryGBHour"],
            "emr_storage_gb_hours": billed["storageGBHour"]}
    assert result["output"]["schema_fingerprint"]
    numbers_uri = f"s3://{aws.data_bucket}/runs/sparky/{run_id}/numbers/"
    assert result["inputs"] == [numbers_uri]
    assert result["column_lineage"]["total"] == [[numbers_uri, "id"]]
    table = pq.read_table(
        io.BytesIO(s3.get_object(Bucket=out_bucket, Key=out_prefix + written[0].name)["Body"].read())
    )
    assert table.num_rows <= 3


def _validate_pipeline(log_dir: str) -> Pipeline:
    doc = _pipeline(log_dir).model_dump(mode="json", by_alias=True, exclude_unset=True)
    numbers = doc["spec"]["tasks"][0]
    checks = {
        "id": "checks",
        "type": "validate",
        "engine": "spark",
        "depends_on": ["numbers"],
        "rules": [
            {"not_null": ["id"]},
            {"range": {"column": "id", "max": 8}, "severity": "warn"},  # 9 and 10 fail
            {"unique": ["grp"], "severity": "warn"},  # 3 groups over 10 rows
            {"row_count": {"min": 1}},
        ],
    }
    strict = {
        "id": "strict",
        "type": "validate",
        "engine": "spark",
        "depends_on": ["numbers"],
        "rules": [{"expect": "id > ${params.min}"}],  # error severity: ids 1 and 2 fail
    }
    doc["spec"]["tasks"] = [numbers, checks, strict]
    doc["spec"]["masking"] = {"columns": ["GRP"]}
    return Pipeline.model_validate(doc)


def test_spark_validate_prepare_job_finish_on_emulated_aws(moto_aws: Any, tmp_path: Path) -> None:
    """A spark validate task on AWS: the prepare call's rule queries, run by the entry script on local
    Spark (moto runs no job), give the check results a duckdb validate records, samples masked; an
    error rule that fails fails the record call with udop.DataQualityError, its checks kept."""
    from udop_transforms import spark_entry
    from udop_transforms._spark import spark_session, stop_spark

    aws = moto_aws
    s3 = aws.client("s3")
    put_version(
        s3, aws.definitions_bucket, "sparky", 1, canonical_definition(_validate_pipeline(str(aws.log_root)))
    )
    run_id = uuid.uuid4().hex
    _, err = _invoke(aws, _payload(run_id, "numbers"))
    assert err is None
    specs = {}
    for task in ("checks", "strict"):
        prepared, err = _invoke(aws, _payload(run_id, task, engine_phase="prepare"))
        assert err is None, prepared
        bucket, _, key = prepared["spec_uri"].removeprefix("s3://").partition("/")
        specs[task] = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    spec = specs["checks"]
    assert spec["results"] == f"s3://{aws.data_bucket}/runs/sparky/{run_id}/checks.checks/"
    assert spec["mask"]["columns"] == ["grp"]
    assert specs["strict"]["queries"][0]["params"] == {"p0": {"type": "int", "value": 2}}  # bound, typed
    (numbers,) = spec["inputs"]["numbers"]
    b, _, k = numbers.removeprefix("s3://").partition("/")
    local_in = tmp_path / "numbers.parquet"
    local_in.write_bytes(s3.get_object(Bucket=b, Key=k)["Body"].read())
    try:  # what EMR Serverless would do: the entry script over each spec, its JSON put where it writes
        for task_spec in specs.values():
            answer = spark_entry.run_checks(
                spark_session(), {**task_spec, "inputs": {"numbers": [str(local_in)]}}
            )
            out_bucket, _, out_prefix = task_spec["results"].removeprefix("s3://").partition("/")
            s3.put_object(
                Bucket=out_bucket, Key=out_prefix + "part-00000.txt", Body=json.dumps(answer).encode()
            )
    finally:
        stop_spark()

    finished, err = _invoke(
        aws, _payload(run_id, "checks", engine_phase="finish", job_run={"JobRunId": "j1"})
    )
    assert err is None, finished
    result = json.loads(
        s3.get_object(Bucket=aws.data_bucket, Key=f"results/sparky/{run_id}/checks.json")["Body"].read()
    )
    checks = {c["rule"]: c for c in result["checks"]}
    assert [c["passed"] for c in result["checks"]] == [True, False, False, True]
    assert checks["range(id)"]["failing_rows"] == 2 and checks["range(id)"]["message"] == "2 of 10 rows fail"
    assert sorted(r["id"] for r in checks["range(id)"]["sample"]) == [9, 10]
    assert {r["grp"] for r in checks["range(id)"]["sample"]} == {"**********"}  # masked as locally
    assert checks["unique(grp)"]["failing_rows"] == 10
    assert checks["row_count"]["message"] == "10 rows; expected at least 1"
    assert result["metrics"]["rules_failed_warn"] == 2 and result["metrics"]["engine"] == "spark"
    assert result["metrics"]["emr_job_run_id"] == "j1"
    numbers_uri = f"s3://{aws.data_bucket}/runs/sparky/{run_id}/numbers/"
    assert result["inputs"] == [numbers_uri] and result["column_lineage"]["grp"] == [[numbers_uri, "grp"]]
    # the validated data passes through to the task's own folder, as a duckdb validate's does
    assert result["output"]["uri"] == f"s3://{aws.data_bucket}/runs/sparky/{run_id}/checks/"
    assert result["output"]["rows"] == 10
    copied = s3.list_objects_v2(Bucket=aws.data_bucket, Prefix=f"runs/sparky/{run_id}/checks/")["Contents"]
    assert len(copied) == result["output"]["files"] == 1

    failed, err = _invoke(aws, _payload(run_id, "strict", engine_phase="finish", job_run={}))
    assert err is not None and failed["errorType"] == "udop.DataQualityError", failed
    assert "1 of 1 data-quality rules failed" in failed["errorMessage"]
    kept = json.loads(
        s3.get_object(Bucket=aws.data_bucket, Key=f"results/sparky/{run_id}/strict.failed-checks.json")[
            "Body"
        ].read()
    )
    (check,) = kept["checks"]
    assert check["failing_rows"] == 2 and sorted(r["id"] for r in check["sample"]) == [1, 2]


def _athena_job_run(answer: dict[str, Any]) -> dict[str, Any]:
    """What the compiled athena job state passes to the record call: its ResultSelector (JSONPath) over
    the query execution the ``.sync`` integration answers (GetQueryExecution's shape)."""
    from udop.compiler import compile_pipeline

    def find(path: str) -> Any:  # the selector's paths are plain $.a.b
        value: Any = answer
        for key in path.removeprefix("$.").split("."):
            value = value[key]
        return value

    doc = _pipeline("/tmp").model_dump(mode="json", by_alias=True, exclude_unset=True)
    doc["spec"]["tasks"][1]["engine"] = "athena"
    doc["spec"]["tasks"][1]["steps"] = [{"filter": "id > 2"}]
    states = compile_pipeline(Pipeline.model_validate(doc)).definition["States"]
    selector = states["groups job"]["ResultSelector"]
    return {key.removesuffix(".$"): find(path) for key, path in selector.items()}


def test_athena_prepare_registers_glue_tables_and_finish_records_the_unload(moto_aws: Any) -> None:
    """Athena runs no query on moto: the prepared UNLOAD is checked by parsing and the transpiler's
    round trip, moto accepts it, and the finish call reads what an UNLOAD would have written."""
    import duckdb
    import sqlglot

    from udop_transforms._dialects import round_trip

    aws = moto_aws
    s3, glue = aws.client("s3"), aws.client("glue")
    pipeline = _pipeline(str(aws.log_root)).model_dump(mode="json", by_alias=True, exclude_unset=True)
    pipeline["spec"]["tasks"][1].update(
        engine="athena",
        steps=[
            {"filter": "id > 2"},
            {"aggregate": {"by": ["grp"], "metrics": {"n": "count(*)", "total": {"sum": "id"}}}},
        ],
    )
    put_version(
        s3, aws.definitions_bucket, "sparky", 1, canonical_definition(Pipeline.model_validate(pipeline))
    )
    glue.create_database(DatabaseInput={"Name": "udop_test"})
    run_id = uuid.uuid4().hex
    _, err = _invoke(aws, _payload(run_id, "numbers"))
    assert err is None

    prepared, err = _invoke(
        aws, _payload(run_id, "groups", engine_phase="prepare", glue_database="udop_test")
    )
    assert err is None, prepared
    ((table,),) = [[t["Name"] for t in glue.get_tables(DatabaseName="udop_test")["TableList"]]]
    described = glue.get_table(DatabaseName="udop_test", Name=table)["Table"]["StorageDescriptor"]
    assert described["Location"] == f"s3://{aws.data_bucket}/runs/sparky/{run_id}/numbers/"
    assert [(c["Name"], c["Type"]) for c in described["Columns"]] == [("id", "bigint"), ("grp", "bigint")]
    query = prepared["query"]
    output = f"s3://{aws.data_bucket}/runs/sparky/{run_id}/groups/"
    assert query.startswith("UNLOAD (") and query.endswith(
        f"TO '{output}' WITH (format = 'PARQUET', compression = 'ZSTD')"
    )
    select = query[len("UNLOAD (") : query.rindex(") TO '")]
    assert round_trip(select, "athena") == select
    tables = list(sqlglot.parse_one(select, read="athena").find_all(sqlglot.exp.Table))
    # the input is read from its Glue table; everything else is the query's own CTEs (s0, s1)
    assert {(t.db, t.name) for t in tables if t.db} == {("udop_test", table)}
    assert all(t.name.startswith("s") for t in tables if not t.db)
    athena = aws.client("athena")
    athena.create_work_group(Name="udop")
    started = athena.start_query_execution(
        QueryString=query, WorkGroup="udop", QueryExecutionContext={"Database": "udop_test"}
    )

    # what the UNLOAD would write: Parquet files without an extension
    numbers = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=aws.data_bucket, Prefix=f"runs/sparky/{run_id}/numbers/")[
            "Contents"
        ]
    ]
    table_data = pq.read_table(
        io.BytesIO(s3.get_object(Bucket=aws.data_bucket, Key=numbers[0])["Body"].read())
    )
    con = duckdb.connect()
    con.register("numbers", table_data)
    result_table = con.sql(
        "SELECT grp, count(*) AS n, sum(id) AS total FROM numbers WHERE id > 2 GROUP BY grp"
    ).to_arrow_table()
    buf = io.BytesIO()
    pq.write_table(result_table, buf)
    s3.put_object(
        Bucket=aws.data_bucket,
        Key=f"runs/sparky/{run_id}/groups/20261130_000000_00001_abcde",
        Body=buf.getvalue(),
    )

    finished, err = _invoke(
        aws,
        _payload(
            run_id,
            "groups",
            engine_phase="finish",
            job_run=_athena_job_run(athena.get_query_execution(QueryExecutionId=started["QueryExecutionId"])),
        ),
    )
    assert err is None, finished
    assert finished["output"]["rows"] == 3
    result = json.loads(
        s3.get_object(Bucket=aws.data_bucket, Key=f"results/sparky/{run_id}/groups.json")["Body"].read()
    )
    assert result["metrics"]["engine"] == "athena"
    assert result["metrics"]["athena_query_execution_id"] == started["QueryExecutionId"]
    assert result["metrics"]["athena_bytes_scanned"] == 0  # moto's DataScannedInBytes
    assert result["column_lineage"]["total"] == [
        [f"s3://{aws.data_bucket}/runs/sparky/{run_id}/numbers/", "id"]
    ]
    assert glue.get_tables(DatabaseName="udop_test")["TableList"] == []  # the run's tables are dropped


def test_the_deployer_refuses_engine_pipelines_when_the_platform_has_no_engines(moto_aws: Any) -> None:
    """The deployer function of a platform without engines (no UDOP_EMR_* settings) refuses an
    upload with one error naming what to enable, and makes no state machine."""
    doc = _pipeline(str(moto_aws.log_root)).model_dump(mode="json", by_alias=True, exclude_unset=True)
    moto_aws.client("s3").put_object(
        Bucket=moto_aws.definitions_bucket, Key="pipelines/sparky.yaml", Body=yaml.safe_dump(doc).encode()
    )
    report = moto_aws.status("sparky")
    assert not report["ok"]
    (error,) = report["errors"]
    assert error["text"] == (
        "pipelines/sparky.yaml: pipeline 'sparky' has tasks with engine: spark but the platform has no such "
        "engine: deploy the CDK app with spark_engine=True (context udop:sparkEngine), then deploy this "
        "pipeline again"
    )
    sfn = moto_aws.client("stepfunctions")
    assert "udop-sparky" not in [m["name"] for m in sfn.list_state_machines()["stateMachines"]]


_ENGINE_ENV = {
    "UDOP_EMR_APPLICATION_ID": "00fabc123",
    "UDOP_EMR_JOB_ROLE_ARN": "arn:aws:iam::123456789012:role/udop-emr-job",
    "UDOP_SPARK_ENTRY_POINT": "s3://cdk-assets-123456789012/abc123.py",
}


def test_the_deployer_wires_the_platforms_engines_into_the_machine(
    moto_aws: Any, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the platform's engines in its settings (the CDK stack sets them on the deployer and the
    API), a spark pipeline deploys: the machine's job states name the application, role and script;
    an athena task still needs the Athena engine and is refused, naming it."""
    from udop.aws.deployer import deploy_definition, engine_substitutions
    from udop.settings import AwsResources, load_settings

    for key, value in _ENGINE_ENV.items():
        monkeypatch.setenv(key, value)
    engines = engine_substitutions(load_settings(AwsResources))
    assert engines == {
        "EmrApplicationId": "00fabc123",
        "EmrJobRoleArn": "arn:aws:iam::123456789012:role/udop-emr-job",
        "SparkEntryPoint": "s3://cdk-assets-123456789012/abc123.py",
    }
    pipeline = _validate_pipeline(str(moto_aws.log_root)).model_dump(
        mode="json", by_alias=True, exclude_unset=True
    )
    pipeline["spec"]["tasks"].insert(
        1, _pipeline("").model_dump(mode="json", by_alias=True)["spec"]["tasks"][1]
    )
    sfn = moto_aws.client("stepfunctions")

    def deploy(doc: dict[str, Any]) -> Any:
        return deploy_definition(
            yaml.safe_dump(doc),
            source="pipelines/sparky.yaml",
            bucket=moto_aws.definitions_bucket,
            s3=moto_aws.client("s3"),
            sfn=sfn,
            store=store,
            task_runner_arn=moto_aws.task_runner_arn,
            role_arn=moto_aws.role_arn,
            engines=engines,
        )

    result = deploy(pipeline)
    assert result.ok, result.errors
    asl = sfn.describe_state_machine(stateMachineArn=result.state_machine_arn)["definition"]
    assert "${" not in asl
    states = json.loads(asl)["States"]
    flat = {}
    pending = [states]
    while pending:
        for name, state in pending.pop().items():
            flat[name] = state
            pending += [b["States"] for b in state.get("Branches", ())]
    for task in ("groups", "checks", "strict"):
        params = flat[f"{task} job"]["Parameters"]
        assert params["ApplicationId"] == "00fabc123"
        assert params["ExecutionRoleArn"] == _ENGINE_ENV["UDOP_EMR_JOB_ROLE_ARN"]
        assert params["JobDriver"]["SparkSubmit"]["EntryPoint"] == _ENGINE_ENV["UDOP_SPARK_ENTRY_POINT"]

    pipeline["spec"]["tasks"][1]["engine"] = "athena"
    refused = deploy(pipeline)
    assert not refused.ok
    assert (
        "engine: athena but the platform has no such engine: deploy the CDK app with athena_engine=True"
        in (refused.errors[0]["text"])
    )


def test_udop_deploy_file_reads_the_engines_from_the_settings(
    moto_aws: Any,
    store: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from udop.cli import main
    from udop.settings import get_settings

    for key, value in {
        "UDOP_DEFINITIONS_BUCKET": moto_aws.definitions_bucket,
        "UDOP_TASK_RUNNER_ARN": moto_aws.task_runner_arn,
        "UDOP_STATE_MACHINE_ROLE_ARN": moto_aws.role_arn,
        "UDOP_DATABASE_URL": moto_aws.database_url,
    }.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "sparky.yaml"
    path.write_text(yaml.safe_dump(_pipeline(str(moto_aws.log_root)).model_dump(mode="json", by_alias=True)))

    def deploy() -> tuple[int, str, str]:
        get_settings.cache_clear()
        with pytest.raises(SystemExit) as exit_info:
            main(["deploy", str(path)])
        out, err = capsys.readouterr()
        return int(exit_info.value.code or 0), out, err

    code, _, err = deploy()  # no engine settings and no stack outputs: refused, nothing deployed
    assert code == 2 and "the platform has no such engine: deploy the CDK app with spark_engine=True" in err
    for key, value in _ENGINE_ENV.items():
        monkeypatch.setenv(key, value)
    code, out, err = deploy()
    get_settings.cache_clear()
    assert code == 0, err
    asl = moto_aws.client("stepfunctions").describe_state_machine(
        stateMachineArn=out.rsplit("-> ", 1)[1].strip()
    )["definition"]
    assert '"ApplicationId": "00fabc123"' in asl or '"ApplicationId":"00fabc123"' in asl


def _lake_pipeline(bucket: str) -> Pipeline:
    """A Parquet source read in place (hive folders), an athena transform and a spark validate on it."""
    return Pipeline.model_validate(
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": "lake"},
            "spec": {
                "tasks": [
                    {"id": "orders", "type": "extract", "source": {"connector": "s3", "path": f"s3://{bucket}/orders/"}},
                    {
                        "id": "totals",
                        "type": "transform",
                        "engine": "athena",
                        "depends_on": ["orders"],
                        "steps": [
                            {"filter": "amount > 1.5"},
                            {"aggregate": {"by": ["region"], "metrics": {"total": "sum(amount)", "n": "count(*)"}}},
                        ],
                    },
                    {
                        "id": "fresh",
                        "type": "validate",
                        "engine": "spark",
                        "depends_on": ["orders"],
                        "rules": [{"freshness": {"column": "ts", "max_age": "1d"}}],
                    },
                ]
            },
        }
    )


def test_athena_and_spark_validate_read_a_source_in_place(moto_aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An athena task reads a Parquet source in place: one Glue table at the snapshot's folder, the
    query kept to exactly the snapshot's objects (``"$path"``) with the hive folders' values as columns.
    Athena runs nothing here: the UNLOAD is parsed and round-tripped, and its SELECT, transpiled back to
    DuckDB by sqlglot over a table that gives each row its ``$path`` (an object added after the
    snapshot included), gives DuckDB's answer over the snapshot. A spark validate's freshness rule
    measures age when the job counted (``counted_at``), not when the record call runs."""
    from datetime import UTC, datetime

    import duckdb
    import pyarrow as pa
    import sqlglot

    from udop_transforms._dialects import round_trip
    from udop_transforms.spark_entry import encode_params

    aws = moto_aws
    s3, glue = aws.client("s3"), aws.client("glue")
    bucket = f"{aws.prefix}-lake"
    s3.create_bucket(Bucket=bucket)
    ts = datetime(2026, 1, 1)
    parts = {
        "orders/region=eu/part-0.parquet": pa.table({"id": [1, 2, 3], "amount": [10.0, 2.5, 1.0], "ts": [ts] * 3}),
        "orders/region=us/part-0.parquet": pa.table({"id": [4, 5], "amount": [7.0, 1.0], "ts": [ts] * 2}),
    }
    for key, table in parts.items():
        buf = io.BytesIO()
        pq.write_table(table, buf)
        s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
    s3.put_object(Bucket=bucket, Key="orders/_SUCCESS", Body=b"")
    put_version(s3, aws.definitions_bucket, "lake", 1, canonical_definition(_lake_pipeline(bucket)))
    glue.create_database(DatabaseInput={"Name": "udop_lake"})
    run_id = uuid.uuid4().hex

    def call(task: str, **extra: Any) -> dict[str, Any]:
        answer, err = _invoke(aws, {**_payload(run_id, task, **extra), "pipeline": "lake", "run": {
            "run_id": run_id, "params": {}, "logical_date": "2026-01-02"}})
        assert err is None, answer
        return answer

    call("orders")
    prepared = call("totals", engine_phase="prepare", glue_database="udop_lake")
    ((name,),) = [[t["Name"] for t in glue.get_tables(DatabaseName="udop_lake")["TableList"]]]
    described = glue.get_table(DatabaseName="udop_lake", Name=name)["Table"]["StorageDescriptor"]
    assert described["Location"] == f"s3://{bucket}/orders/"  # the source's own folder: nothing copied
    # the files' columns; the hive key comes from each object's path in the query
    assert [(c["Name"], c["Type"]) for c in described["Columns"]] == [
        ("id", "bigint"), ("amount", "double"), ("ts", "timestamp")
    ]
    query = prepared["query"]
    select = query[len("UNLOAD (") : query.rindex(") TO '")]
    assert round_trip(select, "athena") == select
    assert f"\"$path\" IN ('s3://{bucket}/orders/region=eu/part-0.parquet', " in select
    aws.client("athena").create_work_group(Name="udop")
    aws.client("athena").start_query_execution(
        QueryString=query, WorkGroup="udop", QueryExecutionContext={"Database": "udop_lake"}
    )

    # the SELECT's meaning, on DuckDB: the table with each row's object; a file added after the snapshot
    con = duckdb.connect()
    later = pa.table({"id": [6], "amount": [99.0], "ts": [ts]})
    files = {**parts, "orders/region=us/part-1.parquet": later}
    rows = pa.concat_tables(
        [t.append_column("$path", pa.array([f"s3://{bucket}/{k}"] * t.num_rows)) for k, t in files.items()]
    )
    con.execute("CREATE SCHEMA udop_lake")
    con.register("all_rows", rows)
    con.execute(f'CREATE TABLE udop_lake."{name}" AS SELECT * FROM all_rows')
    got = sorted(con.execute(sqlglot.transpile(select, read="athena", write="duckdb")[0]).fetchall())
    assert got == [("eu", 12.5, 2), ("us", 7.0, 1)]  # 99.0 came after the snapshot: not read

    # the finish call: what UNLOAD would write, lineage naming the snapshot, the tables dropped
    out = io.BytesIO()
    pq.write_table(pa.table({"region": ["eu", "us"], "total": [12.5, 7.0], "n": [2, 1]}), out)
    s3.put_object(Bucket=aws.data_bucket, Key=f"runs/lake/{run_id}/totals/20261130_0001", Body=out.getvalue())
    call("totals", engine_phase="finish", job_run={"query_execution_id": "q1", "bytes_scanned": 0})
    result = json.loads(
        s3.get_object(Bucket=aws.data_bucket, Key=f"results/lake/{run_id}/totals.json")["Body"].read()
    )
    assert result["output"]["rows"] == 2
    assert result["inputs"] == [f"s3://{aws.data_bucket}/runs/lake/{run_id}/orders/"]  # S3, not the runner's /tmp
    assert glue.get_tables(DatabaseName="udop_lake")["TableList"] == []

    # more objects than fit in Athena's query string: one line naming task and what to do, no table left
    from udop_transforms import _remote

    with monkeypatch.context() as patched:
        patched.setattr(_remote, "ATHENA_QUERY_MAX_BYTES", 300)
        refused, err = _invoke(aws, {**_payload(run_id, "totals", engine_phase="prepare", glue_database="udop_lake"),
                                     "pipeline": "lake", "run": {"run_id": run_id, "params": {}}})
    assert err is not None and "\n" not in refused["errorMessage"], refused
    assert refused["errorMessage"].startswith("task 'totals': engine athena: the query naming the files of its")
    assert "set materialize: true on the extract" in refused["errorMessage"]
    assert glue.get_tables(DatabaseName="udop_lake")["TableList"] == []

    # spark validate: the job counted on 2026-01-01 12:00 (12 h after the newest ts), recorded today
    prepared = call("fresh", engine_phase="prepare")
    b, _, k = prepared["spec_uri"].removeprefix("s3://").partition("/")
    spec = json.loads(s3.get_object(Bucket=b, Key=k)["Body"].read())
    assert spec["inputs"]["orders"] == [f"s3://{bucket}/{key}" for key in parts]
    assert len(spec["queries"]) == 1  # one scan: count(*) and the newest ts
    answer = {"results": [{"columns": ["n", "newest"], "rows": [list(encode_params({"n": 5, "t": ts}).values())]}],
              "counted_at": datetime(2026, 1, 1, 12, tzinfo=UTC).isoformat()}
    rb, _, rk = spec["results"].removeprefix("s3://").partition("/")
    s3.put_object(Bucket=rb, Key=rk + "part-00000.txt", Body=json.dumps(answer).encode())
    call("fresh", engine_phase="finish", job_run={})
    checked = json.loads(
        s3.get_object(Bucket=aws.data_bucket, Key=f"results/lake/{run_id}/fresh.json")["Body"].read()
    )
    ((check,),) = [checked["checks"]]
    assert check["passed"] and "12.0h old" in check["message"], check
