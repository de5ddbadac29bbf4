#!/bin/sh
# run_int4_bench.sh - INT4 fast path vs nibble FP32 vs ONNX Runtime FP32 (ResNet-18,
# MobileNetV2) and file sizes after pack-int4; writes bench/int4/results.md.
#
# usage: bench/int4/run_int4_bench.sh [BUILD_DIR] [bench_int4.py options...]
#   BUILD_DIR  a configured and built meson dir (default: build)
#   options    --runs N, --warmup W, --rounds R, --threads 1,2, --models a,b, --out FILE
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build}
[ $# -gt 0 ] && shift
case $build in /*) ;; *) build="$root/$build" ;; esac
nibble="$build/tools/nibble"
if [ ! -x "$nibble" ]; then
  echo "run_int4_bench.sh: $nibble not found: build first" >&2
  exit 2
fi
sh "$root/tests/ref/prepare.sh" "$build/ref-models"
exec /usr/bin/python3 "$here/bench_int4.py" --nibble "$nibble" --refdir "$build/ref-models" \
  --out "$here/results.md" "$@"
