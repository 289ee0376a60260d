#!/usr/bin/env bash
# The test command: installs what is missing, then runs the whole suite (GPU tests skip without CUDA), one line per
# test as it finishes (pytest -v: name, outcome, percentage done), the slowest ten timed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
source scripts/python_env.sh
PY=$(mmer_python)
exec "$PY" -m pytest -v -rfEs --durations=10 "$@"
