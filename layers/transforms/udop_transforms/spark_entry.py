"""udop's Spark entry script: runs one transform's Spark SQL over Parquet inputs and writes Parquet.

Self-contained on purpose (PySpark and the standard library only): on AWS this file is shipped to S3
and is the EMR Serverless job's entry point, called with the URI of the job's spec (JSON); locally the
``engine: spark`` task calls ``run_job`` with the same spec on the process's SparkSession, so both
paths run this code. The spec::

    {"sql": "<Spark SQL, parameters :p0 ...>", "params": {"p0": {"type": "date", "value": "1994-01-01"}},
     "inputs": {"<view name>": ["<parquet file or folder URI>", ...]}, "output": "<folder URI>",
     "base_paths": {"<view name>": "<folder whose key=value subfolders are partition columns>"}}
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from decimal import Decimal
from typing import Any

__all__ = ["decode_params", "encode_params", "main", "run_job"]

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
    return {key: _DECODE[item["type"]](item["value"]) for key, item in encoded.items()}


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


def main(argv: list[str]) -> int:
    from pyspark.sql import SparkSession

    if len(argv) != 2:
        print("usage: udop_spark_entry.py <job spec URI>", file=sys.stderr)
        return 2
    spark = SparkSession.builder.appName("udop").getOrCreate()
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    spark.conf.set("spark.sql.runSQLOnFiles", "false")
    spec = json.loads("\n".join(spark.sparkContext.textFile(argv[1], 1).collect()))
    run_job(spark, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
