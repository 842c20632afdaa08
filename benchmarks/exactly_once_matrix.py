"""The exactly-once matrix: SIGKILL at each commit boundary of an incremental load x each target,
then ``--resume`` and a next run; prints "fault x target -> rows expected / rows found".

Each cell is the one tests/integration/connectors/test_exactly_once.py asserts (the same code,
``exactly_once_support.run_cell``): ``udop run`` kills itself (``UDOP_FAULT_INJECT``) before the
target's commit, between the target's commit and the watermark's, or between the watermark's and the
task's record; ``udop run --resume`` finishes the run ("after resume": ``FIRST`` source rows
expected); a next run reads ``MORE`` rows added since ("after next run"). Rows are counted as
``rows/distinct ids`` (RabbitMQ: messages/distinct message ids). Needs the services of the
integration tests (PostgreSQL, MariaDB, RabbitMQ on 127.0.0.1); every cell uses names of its own.

    .venv/bin/python benchmarks/exactly_once_matrix.py [--targets postgres,file] [--faults ...] [--jobs 2]

Seconds per cell are printed too; they measure process start-up on a shared machine more than the
load, and are not a figure to compare across machines.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration" / "connectors"))

from exactly_once_support import (  # type: ignore[import-not-found,unused-ignore]  # (the path above)
    FIRST,
    MORE,
    TARGETS,
    Cell,
    open_target,
    run_cell,
)

from udop.faults import POINTS


def _cell(kind: str, fault: str) -> tuple[Cell | None, float, str]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="udop-eo-") as tmp:
        try:
            with open_target(kind, Path(tmp)) as target:
                cell = run_cell(Path(tmp), kind, target, fault)
        except Exception as exc:  # a service down, a timeout: reported in the cell, not a traceback
            return None, time.monotonic() - started, f"{type(exc).__name__}: {exc}"[:200]
    return cell, time.monotonic() - started, ""


def _status(cell: Cell) -> str:
    notes = []
    if cell.killed.returncode != -signal.SIGKILL:
        notes.append(f"not killed (exit {cell.killed.returncode})")
    if cell.resumed.returncode != 0:
        notes.append(f"resume exit {cell.resumed.returncode}")
    if cell.nxt.returncode != 0:
        notes.append(f"next run exit {cell.nxt.returncode}")
    if cell.found != cell.expected:
        notes.append("MISMATCH")
    return "; ".join(notes) or "equal"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--faults", default=",".join(POINTS))
    parser.add_argument("--jobs", type=int, default=2, help="cells run at the same time")
    args = parser.parse_args()
    cells = [(f, t) for f in args.faults.split(",") for t in args.targets.split(",")]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda ft: _cell(ft[1], ft[0]), cells))

    def pair(counts: tuple[int, int]) -> str:
        return f"{counts[0]:,}/{counts[1]:,}"

    print(f"\nrows as rows/distinct ids; source: {FIRST:,} rows, then {MORE:,} more\n")
    header = ("fault", "target", "expected after resume", "found", "expected after next run", "found",
              "result")
    rows = []
    for (fault, kind), (cell, _seconds, error) in zip(cells, results, strict=True):
        if cell is None:
            rows.append((fault, kind, pair((FIRST, FIRST)), "-", pair((FIRST + MORE, FIRST + MORE)), "-",
                         f"error: {error}"))
            continue
        rows.append((fault, kind, pair(cell.expected[0]), pair(cell.after_resume), pair(cell.expected[1]),
                     pair(cell.after_next), _status(cell)))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) + " |")
    seconds = [s for _c, s, _e in results]
    print(f"\nseconds per cell (shared machine, {args.jobs} at a time): best {min(seconds):.1f}, "
          f"median {statistics.median(seconds):.1f}")
    ok = all(c is not None and _status(c) == "equal" for c, _s, _e in results)
    print("every cell equal" if ok else "NOT every cell equal")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
