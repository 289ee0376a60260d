#!/usr/bin/env bash
# Builds .venv-optimum, the peer baseline's own environment (optimum-onnx needs transformers<4.58, which cannot
# live beside the transformers 5 of training/ and export/), then exports the benchmark's encoders with it.
#
#   bash scripts/optimum_env.sh           the base-size encoders that `pytest benchmarks/` runs
#   bash scripts/optimum_env.sh --quick   the tiny encoders of the quick mode (MMER_BENCH_QUICK=1)
#
# The main environment saves the encoders with save_pretrained first (python3 -m benchmarks.peer_weights), so
# optimum exports the very weights the other routes run. Re-running skips whatever is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${OPTIMUM_VENV:-.venv-optimum}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  $PY -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
if ! "$VENV/bin/python" -c "import optimum.exporters.onnx, optimum.onnxruntime" 2>/dev/null; then
  # torch pinned: pip takes the CPU 2.13.0 wheel from local disk; an unpinned torch pulls a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0" "transformers<4.58" "optimum-onnx" "onnxruntime" "numpy"
fi
PEER_DIR=$($PY -m benchmarks.peer_weights "$@" | tail -n 1)
"$VENV/bin/python" benchmarks/optimum_export.py "$PEER_DIR"
