#!/bin/sh
# run_bench.sh - nibble vs ONNX Runtime: latency of ResNet-18 and MobileNetV2
# (batch 1, 224x224) at 1 and 2 threads, and peak memory of each.
#
# usage: bench/run_bench.sh [BUILD_DIR] [bench_models.py options...]
#   BUILD_DIR  a configured and built meson dir (default: build); nibble is
#              BUILD_DIR/tools/nibble, reference models go to BUILD_DIR/ref-models
#   options    --runs N, --warmup W, --threads 1,2, --models a,b, --out FILE
#
# Writes a markdown table to stdout and to bench/results.md.
# Run it on a quiet machine: other processes distort both columns.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=${1:-build}
[ $# -gt 0 ] && shift
case $build in /*) ;; *) build="$root/$build" ;; esac
nibble="$build/tools/nibble"
if [ ! -x "$nibble" ]; then
  echo "run_bench.sh: $nibble not found: build first (meson setup $build && ninja -C $build)" >&2
  exit 2
fi
sh "$root/tests/ref/prepare.sh" "$build/ref-models"
buildtype=$(meson introspect --buildoptions "$build" 2>/dev/null | /usr/bin/python3 -c \
  'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"] == "buildtype"][0])' \
  2>/dev/null || true)
blas=$(meson introspect --dependencies "$build" 2>/dev/null | grep -o '"name": "[a-z]*blas[a-z]*"' |
       head -n 1 | sed 's/.*: "\(.*\)"/\1/' || true)
exec /usr/bin/python3 "$here/bench_models.py" --nibble "$nibble" --refdir "$build/ref-models" \
  --out "$here/results.md" \
  --note "nibble: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'), meson buildtype ${buildtype:-?}, BLAS: ${blas:-none}" \
  "$@"
