#!/usr/bin/env bash
# Set up udop (Python packages only) and run the example pipeline on the embedded default:
# metadata in .udop/udop.db (SQLite), data as Parquet under .udop/data/. No servers needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --python-only
example=${1:-examples/flights/pipeline.yaml}
.venv/bin/udop run "$example"
