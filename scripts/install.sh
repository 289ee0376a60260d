#!/usr/bin/env bash
# Installs everything mmer-rt's demo and tests need on a fresh Debian/Ubuntu machine (CPU), into the Python that
# scripts/python_env.sh chooses (a project .venv where the system Python is externally managed, PEP 668).
#
# Settings: PYTHON (the interpreter to start from, default python3); MMER_INSTALL_ONLY=REQUIREMENT installs only
# that (a wheel file, say) in place of the system packages, torch and the project, after the same choice of
# interpreter: tests/test_install.py uses it to test the choice in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python_env.sh
PY=$(mmer_python --create)
echo "installing into $("$PY" -c 'import sys; print(sys.prefix)') ($PY)"
if [ -n "${MMER_INSTALL_ONLY:-}" ]; then
  "$PY" -m pip install "$MMER_INSTALL_ONLY"
  exit 0
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null || ! command -v curl >/dev/null; then
  echo "[install 1/3] espeak-ng, sox, libsndfile1 and curl (the README's serving commands) with apt-get"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q espeak-ng sox libsndfile1 curl
else
  echo "[install 1/3] espeak-ng, sox and curl: already there"
fi
# An unpinned torch pulls a multi-GB CUDA build: install the CPU 2.13.0 first unless a torch is already there.
if "$PY" -c "import torch" 2>/dev/null; then
  echo "[install 2/3] torch: $("$PY" -c 'import torch; print(torch.__version__)') already there"
else
  echo "[install 2/3] torch 2.13.0 (CPU): a download of about 200 MB"
  "$PY" -m pip install torch==2.13.0
fi
echo "[install 3/3] mmer-rt with its test extras (pip install -e \".[test]\"): transformers, onnx, pytest ..."
"$PY" -m pip install -e ".[test]"
echo "installed; Python for the other commands: $PY"
