#!/usr/bin/env bash
# Installs everything mmer-rt's demo and tests need on a fresh Debian/Ubuntu machine (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng sox libsndfile1 >/dev/null
fi
PY=${PYTHON:-python3}
# An unpinned torch pulls a multi-GB CUDA build: install the CPU 2.13.0 first unless a torch is already there.
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q torch==2.13.0
$PY -m pip install -q -e ".[test]"
