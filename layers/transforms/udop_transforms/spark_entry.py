"""udop's Spark entry script: runs one transform's Spark SQL over Parquet inputs and writes Parquet.

Self-contained on purpose (PySpark and the standard library only, and Python 3.9 syntax and library:
the python3 of EMR Serverless 7.x images, Amazon Linux 2023, is 3.9): on AWS this file is shipped to S3
and is the EMR Serverless job's entry point, called with the URI of the job's spec (JSON); locally the
``engine: spark`` task calls ``run_job`` with the same spec on the process's SparkSession, so both
paths run this code. The spec::

    {"sql": "<Spark SQL, parameters :p0 ...>", "params": {"p0": {"type": "date", "value": "1994-01-01"}},
     "inputs": {"<view name>": ["<parquet file or folder URI>", ...]}, "output": "<folder URI>",
     "base_paths": {"<view name>": "<folder whose key=value subfolders are partition columns>"}}

A validate task's spec has ``queries`` (``[{"sql", "params"}]``, the rules' Spark SQL) and ``results``
(a folder URI) instead of ``sql`` and ``output``: each query's rows (values typed as parameters are,
the values of ``mask.columns`` and what ``mask.patterns`` match replaced by ``mask.text``) are written
there as one JSON document, ``{"results": [{"columns": [...], "rows": [[...]]}]}``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from decimal import Decimal
from typing import Any

__all__ = ["decode_params", "decode_value", "encode_params", "main", "run_checks", "run_job"]

_DECODE: dict[str, Any] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "decimal": Decimal,
    "date": dt.date.fromisoformat,
    "datetime": dt.datetime.fromisoformat,
}


def encode_params(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Bound parameter values as JSON with their types (a date stays a date on the other side)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[key] = {"type": "bool", "value": value}
        elif isinstance(value, int):
            out[key] = {"type": "int", "value": value}
        elif isinstance(value, float):
            out[key] = {"type": "float", "value": value}
        elif isinstance(value, Decimal):
            out[key] = {"type": "decimal", "value": str(value)}
        elif isinstance(value, dt.datetime):
            out[key] = {"type": "datetime", "value": value.isoformat()}
        elif isinstance(value, dt.date):
            out[key] = {"type": "date", "value": value.isoformat()}
        elif isinstance(value, str):
            out[key] = {"type": "str", "value": value}
        else:
            raise ValueError(f"parameter {key}: a {type(value).__name__} cannot be sent to Spark")
    return out


def decode_params(encoded: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {key: decode_value(item) for key, item in encoded.items()}


def decode_value(item: dict[str, Any]) -> Any:
    return None if item["type"] == "null" else _DECODE[item["type"]](item["value"])


def _encode_value(value: Any, mask: dict[str, Any], column: str) -> dict[str, Any]:
    """One result value, typed; masked as the task's ``spec.masking`` says (a check sample is stored)."""
    if value is None:
        return {"type": "null", "value": None}
    if column.lower() in mask.get("columns", []):
        return {"type": "str", "value": mask.get("text", "**********")}
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        for pattern in mask.get("patterns", []):
            value = re.sub(pattern, mask.get("text", "**********"), value)
    try:
        return encode_params({"v": value})["v"]
    except ValueError:  # a list, a map, a struct...: as text, like a sample shows it
        return {"type": "str", "value": str(value)}


def run_job(spark: Any, spec: dict[str, Any]) -> None:
    """Register each input as a temp view, run the SQL, write the result as Parquet (zstd)."""
    base_paths = spec.get("base_paths", {})
    for name, paths in spec["inputs"].items():
        reader = spark.read
        if name in base_paths:  # hive-partitioned files: key=value folders below it become columns
            reader = reader.option("basePath", base_paths[name])
        reader.parquet(*paths).createOrReplaceTempView(name)
    frame = spark.sql(spec["sql"], args=decode_params(spec.get("params", {})))
    frame.write.mode("overwrite").option("compression", "zstd").parquet(spec["output"])


def run_checks(spark: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """A validate task's rule queries over the registered inputs: their rows, typed (and masked)."""
    base_paths = spec.get("base_paths", {})
    for name, paths in spec["inputs"].items():
        reader = spark.read
        if name in base_paths:
            reader = reader.option("basePath", base_paths[name])
        reader.parquet(*paths).createOrReplaceTempView(name)
    mask = spec.get("mask", {})
    # a freshness rule's "now": when the data was counted (not when the record call reads this)
    counted_at = dt.datetime.now(dt.timezone.utc).isoformat()  # noqa: UP017 (Python 3.9, see above)
    results = []
    for query in spec["queries"]:
        frame = spark.sql(query["sql"], args=decode_params(query.get("params", {})))
        names = list(frame.columns)
        rows = [
            [_encode_value(v, mask, n) for n, v in zip(names, tuple(row))]  # noqa: B905 (3.9)
            for row in frame.collect()
        ]
        results.append({"columns": names, "rows": rows})
    return {"results": results, "counted_at": counted_at}


def main(argv: list[str]) -> int:
    from pyspark.sql import SparkSession

    if len(argv) != 2:
        print("usage: udop_spark_entry.py <job spec URI>", file=sys.stderr)
        return 2
    spark = SparkSession.builder.appName("udop").getOrCreate()
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    spark.conf.set("spark.sql.runSQLOnFiles", "false")
    spark.conf.set("spark.sql.session.timeZone", "UTC")  # as locally: timestamps read and counted in UTC
    spec = json.loads("\n".join(spark.sparkContext.textFile(argv[1], 1).collect()))
    if "queries" in spec:  # a validate task: one small JSON document with every query's rows
        text = json.dumps(run_checks(spark, spec))
        spark.createDataFrame([(text,)], "value string").coalesce(1).write.mode("overwrite").text(
            spec["results"]
        )
    else:
        run_job(spark, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
