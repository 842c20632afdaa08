"""The web UI in Chromium (Debian's /usr/bin/chromium, driven by Playwright): how long a run page with
1,000 tasks takes to become interactive, and how long each page of the runs list takes with 10,000 runs
in the store, first pages against the deepest.

1. Run page: a pipeline of 1,000 tasks (20 ranks of 50, each task depending on one to three of the
   rank before) and a run of it with every task recorded (most succeeded, some failed, running,
   pending). Timed from navigation to ``#/runs/{id}`` until a click on the task's timeline row has
   opened its panel ("interactive"), and until the 1,000 boxes of the graph are drawn (dagre's layout,
   in a Web Worker, included).
   Baseline, measured the same way in the same run: a 10-task run page.
2. Runs list: 10,000 runs seeded as ``benchmarks/api_runs.py`` seeds them; the list's first page, then
   "Older" clicked through every page (50 runs each, cursor paging) to the last: time per page by depth.
   Baseline: the first page with 100 runs in the store.

The API server runs in its own process (``udop serve``'s app on uvicorn, SQLite). Each figure is
repeated ``--repeats`` times; best and median are printed, as the machine may be shared.

    .venv/bin/python benchmarks/ui_pages.py [--tasks 1000] [--runs 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_runs import SECRET, _free_port, _serve_udop, seed  # benchmarks/ is no package

CHROMIUM = "/usr/bin/chromium"
# bypass_csp on every context: wait_for_function evaluates strings, which the page's policy forbids


def _token() -> str:
    import jwt

    now = int(time.time())
    return jwt.encode(
        {"sub": "bench", "role": "viewer", "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256"
    )


def seed_big_run(database_url: str, tasks: int, run_id: str) -> None:
    """A pipeline of ``tasks`` tasks in ranks of 50 and one run of it with every task recorded."""
    from sqlalchemy import update

    from udop.states import AttemptState, RunState, TaskState
    from udop.store import open_store
    from udop.store.tables import task_runs

    rng = random.Random(7)
    width = min(50, tasks)
    ids = [f"r{i // width:02d}_t{i % width:02d}" for i in range(tasks)]
    spec = []
    for i, task_id in enumerate(ids):
        rank = i // width
        deps = (
            sorted({ids[(rank - 1) * width + rng.randrange(width)] for _ in range(rng.randint(1, 3))})
            if rank
            else []
        )
        spec.append({"id": task_id, "type": "python", "callable": "m:f", "depends_on": deps})
    name = f"big{tasks}"
    store = open_store(database_url)
    store.register_pipeline(
        name,
        {"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": name}, "spec": {"tasks": spec}},
    )
    store.create_run(
        run_id=run_id,
        pipeline=name,
        pipeline_version=1,
        task_ids=ids,
        params={},
        logical_date=datetime(2026, 1, 1, tzinfo=UTC),
    )
    store.set_run_state(run_id, RunState.RUNNING)
    # one task recorded through the store's own calls, so its panel has an attempt with an error
    store.start_attempt(run_id, ids[-1], 1)
    store.finish_attempt(
        run_id,
        ids[-1],
        1,
        attempt_state=AttemptState.FAILED,
        task_state=TaskState.FAILED,
        error_type="FatalError",
        error_message="benchmark failure",
    )
    start = datetime.now(UTC)
    with store.engine.begin() as conn:  # states and times in bulk: 1,000 attempt writes would take minutes
        for i, task_id in enumerate(ids[:-1]):
            state = (
                "succeeded"
                if i < tasks * 0.9
                else ("failed" if i % 3 == 0 else "running" if i % 3 else "pending")
            )
            conn.execute(
                update(task_runs)
                .where(task_runs.c.run_id == run_id, task_runs.c.task_id == task_id)
                .values(
                    state=state,
                    started_at=start + timedelta(seconds=i // width),
                    ended_at=start + timedelta(seconds=i // width + 1) if state != "running" else None,
                )
            )
    store.close()


def _stats(values: list[float]) -> str:
    return f"best {min(values) * 1000:7.0f} ms   median {statistics.median(values) * 1000:7.0f} ms"


def run_page(
    browser: Any, url: str, run_id: str, tasks: int, repeats: int
) -> tuple[list[float], list[float]]:
    drawn, interactive = [], []
    for _ in range(repeats):
        context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
        context.add_init_script(f"sessionStorage.setItem('udop.credential', {_token()!r})")
        page = context.new_page()
        page.set_default_timeout(120_000)
        t0 = time.perf_counter()
        page.goto(f"{url}/ui/#/runs/{run_id}")
        # interactive: the run, its timeline and buttons are there and a click opens a task's panel
        page.locator(".gantt-row").last.click()
        page.get_by_test_id("task-panel").wait_for()
        t1 = time.perf_counter()
        # the graph is laid out by dagre in a Web Worker meanwhile; drawn when every box is there
        page.wait_for_function(f"document.querySelectorAll('[data-task]').length === {tasks}", polling="raf")
        t2 = time.perf_counter()
        interactive.append(t1 - t0)
        drawn.append(t2 - t0)
        context.close()
    return drawn, interactive


def runs_pages(browser: Any, url: str, pages: int) -> list[float]:
    """Seconds per page: the first load, then each "Older" click until the last page."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    context.add_init_script(f"sessionStorage.setItem('udop.credential', {_token()!r})")
    page = context.new_page()
    page.set_default_timeout(60_000)
    times = []
    t0 = time.perf_counter()
    page.goto(f"{url}/ui/#/runs")
    page.locator("[data-testid=runs] tbody tr").first.wait_for()
    times.append(time.perf_counter() - t0)
    older = page.get_by_role("button", name="Older")
    for _ in range(pages - 1):
        if older.is_disabled():
            break
        first = page.locator("[data-testid=runs] tbody tr").first.get_attribute("data-run")
        t0 = time.perf_counter()
        older.click()
        page.wait_for_function(
            f"(document.querySelector('[data-testid=runs] tbody tr')?.dataset.run ?? {first!r})"
            f" !== {first!r}",
            polling="raf",
        )
        times.append(time.perf_counter() - t0)
    context.close()
    return times


def _serve(database_url: str, data_root: str) -> tuple[BaseProcess, str]:
    import httpx

    port = _free_port()
    proc = multiprocessing.get_context("spawn").Process(
        target=_serve_udop, args=(database_url, data_root, port), daemon=True
    )
    proc.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit("the API server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        db = f"sqlite:///{tmp}/meta.db"
        small_db = f"sqlite:///{tmp}/small.db"
        seed_big_run(db, args.tasks, "big-run")
        seed_big_run(db, 10, "small-run")
        t = time.perf_counter()
        seed(db, args.runs)
        print(f"seeded {args.runs} runs in {time.perf_counter() - t:.1f} s")
        seed(small_db, 100)
        proc, url = _serve(db, f"{tmp}/data")
        small_proc, small_url = _serve(small_db, f"{tmp}/data-small")
        try:
            print(f"\nrun page, {args.repeats} loads each (machine shared: figures are noisy)")
            for label, run_id, n in (
                (f"{args.tasks} tasks", "big-run", args.tasks),
                ("10 tasks (baseline)", "small-run", 10),
            ):
                drawn, interactive = run_page(browser, url, run_id, n, args.repeats)
                print(f"  {label:22} interactive: {_stats(interactive)}   graph drawn: {_stats(drawn)}")
            print(f"\nruns list, {args.runs} runs, 50 a page, every page clicked through")
            times = runs_pages(browser, url, args.runs // 50 + 1)
            print(f"  first load:                {_stats(times[:1])}")
            print(f"  pages 2-11:                {_stats(times[1:11])}")
            print(f"  last 10 pages (to {len(times)}):    {_stats(times[-10:])}")
            print(f"  all {len(times) - 1} 'Older' clicks:      {_stats(times[1:])}")
            base = [runs_pages(browser, small_url, 1)[0] for _ in range(args.repeats)]
            print(f"  baseline, first load with 100 runs: {_stats(base)}")
        finally:
            browser.close()
            for pr in (proc, small_proc):
                pr.terminate()
                pr.join(10)


if __name__ == "__main__":
    main()
