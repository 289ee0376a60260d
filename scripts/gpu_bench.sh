#!/usr/bin/env bash
# The benchmark's CUDA cases on a lent GPU machine, from the kit scripts/gpu_kit.sh made here (see its header):
#
#   bash scripts/gpu_bench.sh receive    keep the carried .gpu-kit/part-N under $GPU_KIT_STORE (outside the
#                                        repository, so it survives between calls while the machine stays warm)
#   bash scripts/gpu_bench.sh unpack     once every part is there: check the parts against SHA256SUMS, unpack the
#                                        kit and install it under $GPU_KIT_STORE/site (once)
#   bash scripts/gpu_bench.sh run        unpack, then check CUDA at tiny size (the gpu-marked test and the
#                                        quick suite's GPU cases: a broken setup stops here within a minute), then
#                                        run the GPU cases at base size (fp16 graphs on the CUDA provider with
#                                        IOBinding against PyTorch fp16 autocast) and copy the pytest-benchmark
#                                        JSON, the report and the export's manifest (its parity) to $OUT
#   bash scripts/gpu_bench.sh profile    unpack, then python -m benchmarks.gpu_profile: where a call's time goes
#                                        and what the CUDA provider's convolution options change
#   bash scripts/gpu_bench.sh lease      what a 15-minute lease holds (benchmarks/README.md), in place of run:
#                                        unpack; the CUDA smoke (tiny: the CUDA test, the CUDA-graph test); the GPU
#                                        table at base size, trimmed (clips 2,5,10 s, batches 1,32,128, 1 s a case,
#                                        no memory probes; PyTorch fp16 eager and torch.compile, the Recognizer
#                                        with and without CUDA graphs), each stage under a time limit so that a
#                                        slow one still leaves the others' results; then `profile` in a 2nd call
#
# Rehearsed on a CPU machine (GPU_KIT_PYTHON_VERSION=3.11 for the kit): everything up to the CUDA check runs.
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
  unpack|run|profile|lease)
    [ -f "$KIT/SHA256SUMS" ] || { echo "carry .gpu-kit/SHA256SUMS with this call" >&2; exit 2; }
    # The sums name part-N/chunk-M; the chunks sit flat in the store.
    sums=$(realpath "$KIT/SHA256SUMS")
    (cd "$STORE" && sed 's#part-[0-9]*/##' "$sums" | sha256sum -c --quiet) || {
      echo "kit incomplete or damaged in $STORE (have: $(cd "$STORE" && ls chunk-* 2>/dev/null | tr '\n' ' '))" >&2
      exit 2
    }
    if [ ! -f "$STORE/site/.installed" ]; then
      rm -rf "$STORE/wheels" "$STORE/site"
      cat "$STORE"/chunk-* | xz -d | tar -C "$STORE" -xf -
      "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$STORE/site" "$STORE"/wheels/*.whl
      touch "$STORE/site/.installed"
    fi
    [ "$1" = unpack ] && { echo "kit installed in $STORE/site: $(ls "$STORE/site" | tr '\n' ' ')"; exit 0; }
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
    "$PY" -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers()); print('torch', torch.__version__, torch.cuda.get_device_name(0))"  || true
    select=${GPU_BENCH_SELECT:-"pytorch-sdpa-fp16 or mmer-rt-fp16"}
    export PYTHONUNBUFFERED=1
    if [ "$1" = profile ]; then
      # The base-size export is cached under .bench-cache while the machine stays warm (made by `lease`).
      timeout -s INT -k 20 "${GPU_PROFILE_S:-540}" "$PY" -m benchmarks.gpu_profile --out "$OUT" --batches "${GPU_PROFILE_BATCHES:-1,32}" \
        --rounds "${GPU_PROFILE_ROUNDS:-5}" 2>&1 | tee "$OUT/profile.log" || echo "profile stopped (status $?)" >&2
      exit 0
    fi
    if [ "$1" = lease ]; then
      logs="$OUT/logs"
      mkdir -p "$logs"
      # $OUT brings back at most 8 files: the report's three, the manifest, and the logs packed into one.
      pack() { tar -C "$OUT" -czf "$OUT/logs.tar.gz" logs && rm -r "$logs"; }
      trap pack EXIT
      timeout "${GPU_SMOKE_S:-120}" "$PY" -m pytest tests/test_recognizer.py tests/test_recognizer_shapes.py -q -m gpu -rs \
        2>&1 | tee "$logs/smoke.log" || true
      grep -q "passed" "$logs/smoke.log" && ! grep -q "skipped" "$logs/smoke.log" \
        || { echo "the CUDA smoke tests did not run: see logs/smoke.log" >&2; exit 1; }
      export MMER_BENCH_SECONDS=${MMER_BENCH_SECONDS:-1} MMER_BENCH_MEMORY=0
      export MMER_BENCH_CLIPS=${MMER_BENCH_CLIPS:-2,5,10} MMER_BENCH_GPU_BATCHES=${MMER_BENCH_GPU_BATCHES:-1,32,128}
      select=${GPU_BENCH_SELECT:-"pytorch-sdpa-fp16 or pytorch-compile-fp16 or mmer-rt-fp16"}
      timeout -s INT -k 30 "${GPU_TABLE_S:-420}" "$PY" -m pytest benchmarks/ -q -rs -k "$select" --benchmark-json "$OUT/gpu.json" \
        2>&1 | tee "$logs/gpu.log" || echo "the table stopped early (status $?): its finished cases are in gpu.json" >&2
      [ -s "$OUT/gpu.json" ] && "$PY" -m benchmarks.report "$OUT/gpu.json" --out "$OUT/" --command \
        "bash scripts/gpu_bench.sh lease  (MMER_BENCH_SECONDS=$MMER_BENCH_SECONDS, clips $MMER_BENCH_CLIPS, GPU batches $MMER_BENCH_GPU_BATCHES, -k \"$select\")"
      cp .bench-cache/base-*/model/mmer.json "$OUT/" 2>/dev/null || true
      exit 0
    fi
    # Smoke first (a minute at tiny size): a CUDA problem then ends the call early, not after the base-size export.
    "$PY" -m pytest tests/test_recognizer.py -q -m gpu -rs 2>&1 | tee "$OUT/smoke.log"
    grep -q "1 passed" "$OUT/smoke.log" || { echo "the CUDA test did not pass: see smoke.log" >&2; exit 1; }
    MMER_BENCH_SECONDS=0.2 "$PY" -m pytest benchmarks/ --quick -q -rs -k "$select" 2>&1 | tee -a "$OUT/smoke.log"
    if grep -q "SKIPPED" "$OUT/smoke.log"; then echo "GPU cases skipped at tiny size: see smoke.log" >&2; exit 1; fi
    export MMER_BENCH_SECONDS=${MMER_BENCH_SECONDS:-2}
    "$PY" -m pytest benchmarks/ -q -rs -k "$select" --benchmark-json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
    "$PY" -m benchmarks.report "$OUT/gpu.json" --out "$OUT/" \
      --command "bash scripts/gpu_bench.sh run  (MMER_BENCH_SECONDS=$MMER_BENCH_SECONDS, -k \"$select\")"
    # The export's own parity report (fp16 measured on the CUDA provider where it starts).
    cp .bench-cache/base-*/model/mmer.json "$OUT/" 2>/dev/null || true
    ;;
  *)
    echo "usage: bash scripts/gpu_bench.sh receive|unpack|run|profile|lease   (see the header of this script)" >&2
    exit 2
    ;;
esac
