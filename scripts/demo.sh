#!/usr/bin/env bash
# The demo: installs what is missing, then synthesises a corpus, trains, exports and recognises held-out voices.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
source scripts/python_env.sh
PY=$(mmer_python)
exec "$PY" scripts/demo.py "$@"
