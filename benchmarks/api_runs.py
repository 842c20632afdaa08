"""Requests per second and p99 latency of ``GET /runs`` under 50 concurrent clients on loopback,
with 10,000 runs in the metadata store (SQLite file by default, or ``--database-url``).

Printed beside two baselines measured in the same run: the same server's unauthenticated
``GET /health`` (one ``SELECT 1``) and a bare Starlette app on the same uvicorn returning a
pre-rendered page of the same size (what the HTTP stack alone costs). The server runs in its own
process (one uvicorn worker, as ``udop serve`` runs it); the load comes from this process through
50 keep-alive connections speaking plain HTTP/1.1, so the client costs little CPU.

    .venv/bin/python benchmarks/api_runs.py [--runs 10000] [--clients 50] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

SECRET = "benchmark-secret-" + "b" * 32


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
    for i in range(runs):
        store.create_run(
            run_id=f"run-{i:06d}",
            pipeline=("orders", "customers", "inventory", "billing")[i % 4],
            pipeline_version=1,
            task_ids=tasks,
            params={"n": i},
            logical_date=day + timedelta(hours=i),
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


def load(port: int, path: str, headers: dict[str, str], clients: int, seconds: float) -> dict[str, float]:
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

    elapsed = asyncio.run(main())
    if errors:
        raise SystemExit(f"{path}: {len(errors)} answers were not 200 (first: {errors[0]})")
    ordered = sorted(latencies)
    return {
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[int(len(ordered) * 0.99) - 1] * 1000,
        "n": len(latencies),
    }


def _wait(port: int) -> None:
    deadline = time.monotonic() + 30
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="udop-bench-api-")
    url = args.database_url or f"sqlite:///{os.path.join(tmp, 'meta.db')}"
    seconds = seed(url, args.runs)
    print(f"seeded {args.runs} runs in {seconds:.1f} s ({url.split('://')[0]})")

    data_layer = _direct_list_runs(url, args.seconds)
    token = jwt.encode(
        {"sub": "bench", "role": "viewer", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
    )
    auth = {"Authorization": f"Bearer {token}"}
    udop, port = _run_server(_serve_udop, url, os.path.join(tmp, "data"))
    try:
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{port}/runs", headers=auth)
        with urllib.request.urlopen(req) as resp:
            page = resp.read()
        results = {
            "GET /runs (JWT, 50 a page)": load(port, "/runs", auth, args.clients, args.seconds),
            "GET /runs?pipeline=orders&state=pending": load(
                port, "/runs?pipeline=orders&state=pending", auth, args.clients, args.seconds
            ),
            "baseline: GET /health (same server)": load(port, "/health", {}, args.clients, args.seconds),
        }
    finally:
        udop.terminate()
        udop.join(10)
    static, sport = _run_server(_serve_static, page)
    try:
        results[f"baseline: bare Starlette, same {len(page)} B page"] = load(
            sport, "/runs", {}, args.clients, args.seconds
        )
    finally:
        static.terminate()
        static.join(10)

    print(
        f"\ndata layer alone: store.list_runs(limit=51) in one thread: {data_layer:.0f} calls/s "
        f"({1000 / data_layer:.1f} ms a call): the ceiling of GET /runs on one core"
    )
    print(f"\n{args.clients} concurrent clients, {args.seconds:g} s each, loopback, {os.cpu_count()} CPUs")
    print(f"{'':48} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9}")
    for name, r in results.items():
        print(f"{name:48} {r['rps']:8.0f} {r['p50']:8.1f} {r['p99']:8.1f} {r['n']:9.0f}")


if __name__ == "__main__":
    main()
