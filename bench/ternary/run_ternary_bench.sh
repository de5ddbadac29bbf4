#!/bin/sh
# run_ternary_bench.sh - ternary weights vs INT4 vs FP32 (one Gemm/Conv, ResNet-18,
# MobileNetV2) and ONNX Runtime FP32, and file sizes; writes bench/ternary/results.md.
#
# usage: bench/ternary/run_ternary_bench.sh [BUILD_DIR] [bench_ternary.py options...]
#   BUILD_DIR  a configured and built meson dir (default: build)
#   options    --runs N, --warmup W, --rounds R, --threads 1,2, --models a,b, --out FILE
# The reference models come from REFDIR (default BUILD_DIR/ref-models), made by
# tests/ref/prepare.sh when it has no manifest.json.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build}
[ $# -gt 0 ] && shift
case $build in /*) ;; *) build="$root/$build" ;; esac
nibble="$build/tools/nibble"
ops="$build/bench/bench_ternary_ops"
if [ ! -x "$nibble" ] || [ ! -x "$ops" ]; then
  echo "run_ternary_bench.sh: $nibble or $ops not found: build first" >&2
  exit 2
fi
refdir=${REFDIR:-$build/ref-models}
[ -f "$refdir/manifest.json" ] || sh "$root/tests/ref/prepare.sh" "$refdir"
exec /usr/bin/python3 "$here/bench_ternary.py" --nibble "$nibble" --ops "$ops" \
  --refdir "$refdir" --out "$here/results.md" "$@"
