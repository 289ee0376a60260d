#!/usr/bin/env bash
# Packs what a lent GPU machine lacks for the benchmark's CUDA cases into parts small enough for one device call
# each (the device tool carries at most 64 MiB a call, and that machine reaches no package registry):
#
#   bash scripts/gpu_kit.sh        writes .gpu-kit/part-1 ... part-N (each one chunk of .gpu-kit/kit.tar.xz) and
#                                  .gpu-kit/SHA256SUMS, and prints the device calls to make with them
#   bash scripts/gpu_kit.sh DIR    the same with the wheels in DIR instead of those downloaded below
#
# The kit holds onnxruntime-gpu (CUDA 13, cuDNN 9: the libraries torch's nvidia-* packages bring there),
# soundfile (with cffi) and soxr, as wheels for the device's Python 3.12. scripts/gpu_bench.sh unpacks and uses it
# there.
#
# Settings: GPU_KIT_DIR (default .gpu-kit), GPU_KIT_PART_MIB (default 60), GPU_KIT_PYTHON_VERSION (default 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${GPU_KIT_DIR:-.gpu-kit}
PY=${PYTHON:-python3}
PART_MIB=${GPU_KIT_PART_MIB:-60}
PY_VERSION=${GPU_KIT_PYTHON_VERSION:-3.12}  # the device image's Python; another only to rehearse the kit here
# soundfile needs cffi (and it pycparser), which the image lacks; numpy, typing-extensions, flatbuffers, packaging
# and protobuf are there.
WHEELS=("onnxruntime-gpu==1.31.1" "soundfile==0.14.0" "soxr==1.1.0" "cffi==2.1.1" "pycparser==3.12")

rm -rf "$KIT"
mkdir -p "$KIT/wheels"
if [ -n "${1:-}" ]; then
  ls "$1"/*.whl > /dev/null || { echo "$1: no wheels (*.whl) there" >&2; exit 2; }
  cp "$1"/*.whl "$KIT/wheels/"
else
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$KIT/wheels" "${WHEELS[@]}"
fi
# xz shrinks the CUDA provider's 284 MB library by a fifth more than the wheel's zip does: one call fewer.
tar -C "$KIT" -cf - wheels | xz -T0 -6 > "$KIT/kit.tar.xz"
rm -r "$KIT/wheels"
split -b "${PART_MIB}M" -d -a 1 "$KIT/kit.tar.xz" "$KIT/chunk-"
rm "$KIT/kit.tar.xz"
count=0
for chunk in "$KIT"/chunk-*; do
  count=$((count + 1))
  mkdir "$KIT/part-$count"
  mv "$chunk" "$KIT/part-$count/$(basename "$chunk")"
done
(cd "$KIT" && sha256sum part-*/chunk-* > SHA256SUMS)

echo "kit: $count parts in $KIT ($(du -sh "$KIT" | cut -f1)); device calls, one after another while the machine is warm:"
for n in $(seq 1 "$count"); do
  echo "  run  command='bash scripts/gpu_bench.sh receive'  carry=['$KIT/part-$n', '$KIT/SHA256SUMS']"
done
echo "  run  command='bash scripts/gpu_bench.sh run'  carry=['$KIT/SHA256SUMS']  timeout_s=600"
