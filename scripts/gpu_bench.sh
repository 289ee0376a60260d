#!/usr/bin/env bash
# The benchmark's CUDA cases on a lent GPU machine, from the kit scripts/gpu_kit.sh made here (see its header):
#
#   bash scripts/gpu_bench.sh receive    keep the carried .gpu-kit/part-N under $GPU_KIT_STORE (outside the
#                                        repository, so it survives between calls while the machine stays warm)
#   bash scripts/gpu_bench.sh run        once every part is there: check and unpack the kit, install it under
#                                        $GPU_KIT_STORE/site, then run the GPU cases (fp16 graphs on the CUDA
#                                        provider with IOBinding against PyTorch fp16 autocast) and copy the
#                                        pytest-benchmark JSON and the report to $OUT
#
# Settings: GPU_KIT_DIR (default .gpu-kit), GPU_KIT_STORE (default /tmp/mmer-gpu-kit), MMER_BENCH_SECONDS
# (default 2 here), GPU_BENCH_SELECT (pytest -k expression; default: the two GPU routes).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${GPU_KIT_DIR:-.gpu-kit}
STORE=${GPU_KIT_STORE:-/tmp/mmer-gpu-kit}
OUT=${OUT:-$STORE/out}
PY=${PYTHON:-python3}
mkdir -p "$STORE" "$OUT"

case "${1:-}" in
  receive)
    found=0
    for chunk in "$KIT"/part-*/chunk-*; do
      [ -f "$chunk" ] || continue
      cp "$chunk" "$STORE/"
      found=1
    done
    [ "$found" = 1 ] || { echo "no .gpu-kit/part-* was carried: name one in the call's carry" >&2; exit 2; }
    echo "kit parts held in $STORE: $(cd "$STORE" && ls chunk-* | tr '\n' ' ')"
    ;;
  run)
    [ -f "$KIT/SHA256SUMS" ] || { echo "carry .gpu-kit/SHA256SUMS with this call" >&2; exit 2; }
    # The sums name part-N/chunk-M; the chunks sit flat in the store.
    sums=$(realpath "$KIT/SHA256SUMS")
    (cd "$STORE" && sed 's#part-[0-9]*/##' "$sums" | sha256sum -c --quiet) || {
      echo "kit incomplete or damaged in $STORE (have: $(cd "$STORE" && ls chunk-* 2>/dev/null | tr '\n' ' '))" >&2
      exit 2
    }
    if [ ! -d "$STORE/site/onnxruntime" ]; then
      cat "$STORE"/chunk-* | xz -d | tar -C "$STORE" -xf -
      "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$STORE/site" "$STORE"/wheels/*.whl
    fi
    # onnxruntime-gpu ahead of the image's CPU onnxruntime; the CUDA and cuDNN libraries from torch's packages.
    export PYTHONPATH="$STORE/site${PYTHONPATH:+:$PYTHONPATH}"
    nvidia_libs=$("$PY" - <<'PYEOF'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
print(":".join(sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True)})))
PYEOF
)
    export LD_LIBRARY_PATH="$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers()); print('torch', torch.__version__, torch.cuda.get_device_name(0))"
    export MMER_BENCH_SECONDS=${MMER_BENCH_SECONDS:-2} PYTHONUNBUFFERED=1
    select=${GPU_BENCH_SELECT:-"pytorch-sdpa-fp16 or mmer-rt-fp16"}
    set -o pipefail
    "$PY" -m pytest benchmarks/ -q -k "$select" --benchmark-json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
    "$PY" -m benchmarks.report "$OUT/gpu.json" --out "$OUT/" \
      --command "bash scripts/gpu_bench.sh run  (MMER_BENCH_SECONDS=$MMER_BENCH_SECONDS, -k \"$select\")"
    ;;
  *)
    echo "usage: bash scripts/gpu_bench.sh receive|run   (see the header of this script)" >&2
    exit 2
    ;;
esac
