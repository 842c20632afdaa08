"""Requests per second and p99 latency of ``GET /runs`` and ``GET /runs/{id}`` under 50 concurrent
clients on loopback, with 10,000 runs in the metadata store: a fresh SQLite file and a fresh
PostgreSQL database (``--postgres-url``; ``--no-postgres`` to skip it).

Printed beside the baselines measured in the same run: the data layer alone (the store call behind
one page, in one thread: the ceiling of the endpoint on one core), the same server's unauthenticated
``GET /health`` (one ``SELECT 1``) and a bare Starlette app on the same uvicorn returning a
pre-rendered page of the same size (what the HTTP stack alone costs). The server runs in its own
process (one uvicorn worker, as ``udop serve`` runs it); the load comes from this process through
50 keep-alive connections speaking plain HTTP/1.1, so the client costs little CPU. Each load is
repeated ``--repeats`` times and the best and the median are printed: the machine may be shared.

Last, the cold start of the API Lambda handler (a fresh process: import of ``functions/api/app.py``
plus its first ``GET /runs`` through Mangum) beside the task runner's (a fresh process importing
``functions/task_runner/app.py``), both from this repository's venv.

    .venv/bin/python benchmarks/api_runs.py [--runs 10000] [--clients 50] [--seconds 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

SECRET = "benchmark-secret-" + "b" * 32
REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_udop(database_url: str, data_root: str, port: int) -> None:
    import uvicorn

    from udop.api import ApiSettings, create_app

    app = create_app(ApiSettings(database_url=database_url, data_root=data_root, jwt_secret=SECRET))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _serve_static(body: bytes, port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def page(_: Any) -> Response:
        return Response(body, media_type="application/json")

    uvicorn.run(
        Starlette(routes=[Route("/runs", page)]),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )


def seed(database_url: str, runs: int) -> float:
    from udop.store import open_store

    store = open_store(database_url)
    tasks = [f"t{i}" for i in range(5)]
    for name in ("orders", "customers", "inventory", "billing"):
        store.register_pipeline(
            name,
            {
                "apiVersion": "udop/v1",
                "kind": "Pipeline",
                "metadata": {"name": name},
                "spec": {"tasks": [{"id": t, "type": "python", "callable": "m:f"} for t in tasks]},
            },
        )
    start = time.perf_counter()
    day = datetime(2026, 1, 1, tzinfo=UTC)
    # the rows create_run writes, inserted 1,000 at a time (one create_run each took ~5 ms here)
    from sqlalchemy import insert

    from udop.store.tables import runs as runs_table
    from udop.store.tables import task_runs

    created = datetime.now(UTC)
    for first in range(0, runs, 1000):
        batch = range(first, min(first + 1000, runs))
        with store.engine.begin() as conn:
            conn.execute(
                insert(runs_table),
                [
                    {
                        "id": f"run-{i:06d}",
                        "pipeline": ("orders", "customers", "inventory", "billing")[i % 4],
                        "pipeline_version": 1,
                        "state": "pending",
                        "executor": "local",
                        "params": {"n": i},
                        "logical_date": day + timedelta(hours=i),
                        "created_at": created + timedelta(milliseconds=i),
                        "external_id": None,
                        "owner": None,
                        "started_at": None,
                        "lease_expires_at": None,
                    }
                    for i in batch
                ],
            )
            conn.execute(
                insert(task_runs),
                [
                    {"run_id": f"run-{i:06d}", "task_id": t, "position": p, "state": "pending"}
                    for i in batch
                    for p, t in enumerate(tasks)
                ],
            )
    elapsed = time.perf_counter() - start
    store.close()
    return elapsed


def _direct_list_runs(database_url: str, seconds: float) -> float:
    """Calls per second of the store query behind one GET /runs page, without HTTP or auth."""
    from udop.store import open_store

    store = open_store(database_url)
    try:
        calls = 0
        stop = time.perf_counter() + min(seconds, 3.0)
        begin = time.perf_counter()
        while time.perf_counter() < stop:
            store.list_runs(limit=51)
            calls += 1
        return calls / (time.perf_counter() - begin)
    finally:
        store.close()


async def _client(
    port: int, request: bytes, stop_at: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(
    port: int, path: str, headers: dict[str, str], clients: int, seconds: float, *, pid: int = 0
) -> dict[str, float]:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    latencies: list[float] = []
    errors: list[int] = []

    async def main() -> float:
        warm = time.perf_counter() + 1.0  # connections, caches, the JIT-less interpreter's first calls
        await asyncio.gather(*(_client(port, request, warm, [], []) for _ in range(clients)))
        begin = time.perf_counter()
        await asyncio.gather(
            *(_client(port, request, begin + seconds, latencies, errors) for _ in range(clients))
        )
        return time.perf_counter() - begin

    cpu = [0.0]

    async def measured() -> float:
        # the server's CPU per request: unlike req/s, barely moved by what else the machine runs
        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(_client(port, request, warm, [], []) for _ in range(clients)))
        cpu[0] = _cpu_seconds(pid)
        begin = time.perf_counter()
        await asyncio.gather(
            *(_client(port, request, begin + seconds, latencies, errors) for _ in range(clients))
        )
        elapsed = time.perf_counter() - begin
        cpu[0] = _cpu_seconds(pid) - cpu[0]
        return elapsed

    elapsed = asyncio.run(measured() if pid else main())
    if errors:
        raise SystemExit(f"{path}: {len(errors)} answers were not 200 (first: {errors[0]})")
    ordered = sorted(latencies)
    return {
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[int(len(ordered) * 0.99) - 1] * 1000,
        "n": len(latencies),
        "cpu_us": cpu[0] / max(len(latencies), 1) * 1e6,
    }


def _wait(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start")


def _run_server(target: Any, *args: Any) -> tuple[multiprocessing.process.BaseProcess, int]:
    port = _free_port()
    proc = multiprocessing.get_context("spawn").Process(target=target, args=(*args, port), daemon=True)
    proc.start()
    _wait(port)
    return proc, port


def _token() -> str:
    now = int(time.time())
    claims = {"sub": "bench", "role": "viewer", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def repeated(
    port: int, path: str, headers: dict[str, str], args: argparse.Namespace, pid: int = 0
) -> dict[str, float]:
    """``load`` ``--repeats`` times: the best and the median of req/s, of p99 and of server CPU a request."""
    runs = [load(port, path, headers, args.clients, args.seconds, pid=pid) for _ in range(args.repeats)]
    rps = [r["rps"] for r in runs]
    p99 = [r["p99"] for r in runs]
    return {
        "rps": max(rps),
        "rps_med": statistics.median(rps),
        "p99": min(p99),
        "p99_med": statistics.median(p99),
        "n": sum(r["n"] for r in runs),
        "cpu_us": min(r["cpu_us"] for r in runs),
    }


def measure_backend(url: str, label: str, args: argparse.Namespace, tmp: str) -> tuple[dict[str, Any], bytes]:
    seconds = seed(url, args.runs)
    print(f"{label}: seeded {args.runs} runs in {seconds:.1f} s", flush=True)
    data_layer = _direct_list_runs(url, args.seconds)
    auth = {"Authorization": f"Bearer {_token()}"}
    udop, port = _run_server(_serve_udop, url, os.path.join(tmp, "data"))
    run_id = f"run-{args.runs // 2:06d}"
    pid = udop.pid or 0
    try:
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{port}/runs", headers=auth)
        with urllib.request.urlopen(req) as resp:
            page = resp.read()
        results = {
            f"{label}: GET /runs (JWT, 50 a page)": repeated(port, "/runs", auth, args, pid),
            f"{label}: GET /runs?pipeline=orders&state=pending": repeated(
                port, "/runs?pipeline=orders&state=pending", auth, args, pid
            ),
            f"{label}: GET /runs/{{id}} (5 tasks)": repeated(port, f"/runs/{run_id}", auth, args, pid),
            f"{label}: baseline GET /health (same server)": repeated(port, "/health", {}, args, pid),
        }
    finally:
        udop.terminate()
        udop.join(10)
    return {"data_layer": data_layer, "results": results}, page


def _postgres_database(admin_url: str) -> tuple[str, Any]:
    """A fresh database on the server of ``admin_url`` and a function that drops it."""
    import psycopg

    name = f"udop_bench_{uuid.uuid4().hex[:10]}"
    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return conninfo.rsplit("/", 1)[0] + f"/{name}", drop


COLD_API = r"""
import importlib.util, json, sys, time
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
imported = time.perf_counter()

class Context:
    function_name = "udop-api"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:udop-api"
    memory_limit_in_mb = 512
    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    log_group_name = "/aws/lambda/udop-api"
    log_stream_name = "cold"
    def get_remaining_time_in_millis(self):
        return 29_000

headers = {"Host": "x.execute-api.eu-west-1.amazonaws.com", "Authorization": "Bearer " + sys.argv[2],
           "X-Forwarded-Proto": "https", "X-Forwarded-Port": "443", "X-Forwarded-For": "203.0.113.7"}
event = {"resource": "/{proxy+}", "path": "/runs", "httpMethod": "GET", "headers": headers,
         "multiValueHeaders": {k: [v] for k, v in headers.items()}, "queryStringParameters": None,
         "multiValueQueryStringParameters": None, "pathParameters": {"proxy": "runs"},
         "stageVariables": None, "body": None, "isBase64Encoded": False,
         "requestContext": {"resourcePath": "/{proxy+}", "httpMethod": "GET", "path": "/prod/runs",
                            "stage": "prod", "requestId": "r1", "accountId": "123456789012",
                            "identity": {"sourceIp": "203.0.113.7"}, "requestTimeEpoch": 0}}
response = module.handler(event, Context())
done = time.perf_counter()
assert response["statusCode"] == 200, response
assert len(json.loads(response["body"])["items"]) == 50
print(f"{imported - start:.4f} {done - imported:.4f}")
"""

COLD_RUNNER = r"""
import importlib.util, sys, time
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(f"{time.perf_counter() - start:.4f}")
"""


def cold_starts(url: str, tmp: str, runs: int) -> dict[str, list[float]]:
    """Fresh processes: the API handler's import and first GET /runs; the task runner's import."""
    shared = str(REPO / "shared")
    base = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": shared,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_EC2_METADATA_DISABLED": "true",
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_METRICS_NAMESPACE": "udop",
    }
    api_env = {
        **base,
        "UDOP_DATABASE_URL": url,
        "UDOP_DATA_ROOT": os.path.join(tmp, "data"),
        "UDOP_JWT_SECRET": SECRET,
        "POWERTOOLS_SERVICE_NAME": "udop-api",
    }
    runner_env = {
        **base,
        "UDOP_DATA_BUCKET": "bench-data",
        "UDOP_DEFINITIONS_BUCKET": "bench-defs",
        "UDOP_STATE_URL": "redis://127.0.0.1:6379/0",
        "POWERTOOLS_SERVICE_NAME": "udop-task-runner",
    }
    found: dict[str, list[float]] = {
        "api import": [],
        "api first GET /runs": [],
        "api total": [],
        "runner": [],
    }
    for _ in range(runs):
        api = str(REPO / "functions" / "api" / "app.py")
        out = subprocess.run(
            [sys.executable, "-c", COLD_API, api, _token()],
            env=api_env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"api_runs: the API handler's cold start failed:\n{out.stderr[-3000:]}")
        imported, first = map(float, out.stdout.split()[-2:])
        found["api import"].append(imported)
        found["api first GET /runs"].append(first)
        found["api total"].append(imported + first)
        runner = str(REPO / "functions" / "task_runner" / "app.py")
        out = subprocess.run(
            [sys.executable, "-c", COLD_RUNNER, runner],
            env=runner_env,
            capture_output=True,
            check=False,
            text=True,
        )
        if out.returncode != 0:
            raise SystemExit(f"api_runs: the task runner's cold import failed:\n{out.stderr[-3000:]}")
        found["runner"].append(float(out.stdout.split()[-1]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3, help="loads per figure; best and median printed")
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh processes per cold start")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("UDOP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a server where a fresh database is created (and dropped after)",
    )
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="udop-bench-api-")
    sqlite_url = f"sqlite:///{os.path.join(tmp, 'meta.db')}"
    backends: dict[str, dict[str, Any]] = {}
    backends["SQLite"], page = measure_backend(sqlite_url, "SQLite", args, tmp)
    if not args.no_postgres:
        pg_url, drop = _postgres_database(args.postgres_url)
        try:
            backends["PostgreSQL"], _ = measure_backend(pg_url, "PostgreSQL", args, tmp)
        finally:
            drop()
    static, sport = _run_server(_serve_static, page)
    try:
        bare = repeated(sport, "/runs", {}, args, static.pid or 0)
    finally:
        static.terminate()
        static.join(10)
    cold = cold_starts(sqlite_url, tmp, args.cold_runs)

    print(
        f"\n{args.clients} concurrent clients, {args.seconds:g} s a load, best and median of {args.repeats} "
        f"loads, loopback, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}: the machine may be "
        "shared, so figures vary from run to run)"
    )
    for label, found in backends.items():
        rate = found["data_layer"]
        print(
            f"  {label} data layer alone: store.list_runs(limit=51) in one thread: {rate:.0f} calls/s "
            f"({1000 / rate:.1f} ms a call): the ceiling of GET /runs on one core"
        )
    heads = ("req/s best", "median", "p99 ms best", "median", "server CPU us/req")
    print(f"{'':52} {heads[0]:>10} {heads[1]:>8} {heads[2]:>12} {heads[3]:>8} {heads[4]:>18}")
    rows = [(k, v) for found in backends.values() for k, v in found["results"].items()]
    rows.append((f"baseline: bare Starlette, same {len(page)} B page", bare))
    for name, r in rows:
        print(
            f"{name:52} {r['rps']:10.0f} {r['rps_med']:8.0f} {r['p99']:12.1f} {r['p99_med']:8.1f} "
            f"{r['cpu_us']:18.0f}"
        )
    print(f"\ncold start, {args.cold_runs} fresh processes each (this venv, SQLite store): best / median s")
    for name, values in cold.items():
        label = {"runner": "task runner: import of functions/task_runner/app.py"}.get(
            name, f"API Lambda handler: {name}"
        )
        print(f"  {label:60} {min(values):6.2f} / {statistics.median(values):6.2f}")


if __name__ == "__main__":
    main()
