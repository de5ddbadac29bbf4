#!/bin/sh
# run_train_bench.sh - nibble vs PyTorch 1.13: training step time (batch 64) and
# peak memory of LeNet-5 and ResNet-8 (Fashion-MNIST shape) at 1 and 2 threads;
# with --int4, nibble's 4-bit step against its FP32 step and PyTorch's.
#
# usage: bench/train/run_train_bench.sh [BUILD_DIR] [bench_train.py options...]
#   BUILD_DIR  a configured and built meson dir (default: build)
#   options    --int4, --rounds R, --runs N, --warmup W, --threads 1,2,
#              --models lenet5,resnet8, --out FILE
#
# Writes markdown tables to stdout and to bench/train/results.md (--int4:
# bench/train/results_4bit.md).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build}
[ $# -gt 0 ] && shift
case $build in /*) ;; *) build="$root/$build" ;; esac
for exe in "$build/tools/nibble" "$build/bench/bench_train"; do
  if [ ! -x "$exe" ]; then
    echo "run_train_bench.sh: $exe not found: build first (ninja -C $build)" >&2
    exit 2
  fi
done
buildtype=$(meson introspect --buildoptions "$build" 2>/dev/null | /usr/bin/python3 -c \
  'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"] == "buildtype"][0])' \
  2>/dev/null || true)
exec /usr/bin/python3 "$here/bench_train.py" --nibble "$build/tools/nibble" --bench "$build/bench/bench_train" \
  --note "nibble: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'), meson buildtype ${buildtype:-?}" \
  "$@"
