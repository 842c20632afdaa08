#!/usr/bin/env bash
# Set up the development environment: a pinned uv in .tools/, then the locked packages in .venv/
# (Python) and node_modules/ (asl-validator, the CDK CLI). Safe to run again; fast when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
PYTHON=${UDOP_PYTHON:-python3}
if [ ! -x .tools/bin/uv ] || ! .tools/bin/uv --version | grep -q "$UV_VERSION"; then
  echo "udop: installing uv $UV_VERSION into .tools/" >&2
  "$PYTHON" -m venv .tools
  .tools/bin/pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
# --frozen: install exactly uv.lock, never re-resolve (a stale lock is an error, not a surprise upgrade)
.tools/bin/uv sync --quiet --frozen --all-extras --all-groups --python "$PYTHON"
if [ "${1:-}" != "--python-only" ]; then
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
  fi
  # the web UI's build tools and axe-core for its browser tests (ui/package-lock.json, docs/ui.md)
  if [ ! -d ui/node_modules ] || [ ui/package-lock.json -nt ui/node_modules/.package-lock.json ]; then
    npm ci --prefix ui --no-audit --no-fund --loglevel=error
  fi
fi
