#!/usr/bin/env bash
# Set up (locked Python and npm packages) and run the whole test suite.
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -m "not slow"   # the fast tier
#   bash scripts/test.sh tests/unit      # one folder; any pytest arguments pass through
# Needs the services the README lists (PostgreSQL, Redis, MariaDB, RabbitMQ on 127.0.0.1).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh || exit $?
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20
# The Lambda layers (python3.12 manylinux wheels, trimmed, stripped, precompiled) are built first so
# the size and cold-import tests check real layers: ~25 s with pip's cache warm, a ~400 MB download
# the first time. Without a python3.12 those tests skip and say why; UDOP_SKIP_LAYERS=1 skips the build.
if [ -z "${UDOP_SKIP_LAYERS:-}" ] && command -v python3.12 >/dev/null 2>&1; then
  echo "udop: building the Lambda layers (layers/build.py)"
  .venv/bin/python layers/build.py >/dev/null || { echo "udop: layer build failed" >&2; exit 1; }
fi
# The web UI's browser tests drive Debian's Chromium (Playwright's own browser download is not
# reachable): installed here when missing and we can (root, apt-get); otherwise they skip and say why.
if [ ! -x /usr/bin/chromium ] && [ -z "${UDOP_CHROMIUM:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "udop: installing Debian's chromium for the UI browser tests (tests/ui)"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; } \
    || echo "udop: could not install chromium; the UI browser tests will skip" >&2
fi
# Lint first: a second, and it names the file and line of every problem.
.venv/bin/ruff check shared layers/connectors layers/transforms layers/build.py functions infra tests benchmarks \
  || { echo "udop: ruff found problems (fix them, or run 'ruff check --fix')" >&2; exit 1; }
# Types: mypy strict (config in pyproject.toml), run beside the tests (it is CPU-bound for ~2 min on a
# fresh clone, the tests mostly wait on databases and subprocesses); its verdict is checked at the end.
# Each function's app.py is its own program (they are all named "app"), so each is checked on its own.
# UDOP_SKIP_MYPY=1 leaves it out (a developer running one test file).
mypy_log=$(mktemp)
if [ -z "${UDOP_SKIP_MYPY:-}" ]; then
  (
    .venv/bin/mypy shared/udop layers/transforms/udop_transforms layers/connectors/udop_connectors \
      infra/udop_infra infra/app.py || exit 1
    for app in functions/*/app.py; do .venv/bin/mypy "$app" || exit 1; done
  ) >"$mypy_log" 2>&1 &
  mypy_pid=$!
fi
# Two workers: the suite is mostly waiting on databases, subprocesses and node; 2 cores is the CI size.
workers=${UDOP_TEST_WORKERS:-2}
.venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
rc=$?
if [ -n "${mypy_pid:-}" ]; then
  if ! wait "$mypy_pid"; then
    cat "$mypy_log" >&2
    echo "udop: mypy found type errors (above)" >&2
    rm -f "$mypy_log"
    exit 1
  fi
  echo "udop: mypy strict: $(tail -n 1 "$mypy_log")"
fi
rm -f "$mypy_log"
if [ "$rc" -eq 5 ]; then
  # pytest's "no tests collected": a selection (-m, -k, a path) matched nothing. Say so; not a failure.
  echo "no tests matched the selection: $*"
  exit 0
fi
exit "$rc"
