#!/usr/bin/env bash
# nibble's one entry point for people and CI.
#   ./build.sh demo   install what is missing, build, run the main job on the shipped model and data
#   ./build.sh test   install what is missing, build (plain + ASan/UBSan + without MPI), run the
#                     whole test suite (the 'mpi' suite trains on 2 MPI ranks)
#   ./build.sh deps   only install what is missing
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(meson ninja-build pkg-config gcc libprotobuf-c-dev protobuf-c-compiler check zlib1g-dev
  libonnx-dev libonnx-testdata dataset-fashion-mnist libopenblas-dev libopenblas0-pthread
  python3-onnx python3-torch python3-torchvision python3-numpy graphviz gnuplot-nox
  python3-matplotlib # the loss curves of experiments/report_4bit.py
  clang # clang with libFuzzer: the fuzz targets' short CI run (tests/fuzz/README.md)
  libopenmpi-dev openmpi-bin) # Open MPI: data-parallel training and its 'mpi' test suite

deps() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  # node and npm may come from elsewhere (a newer Node.js): only ask Debian when absent.
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  if ((${#missing[@]})); then
    echo "== installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  # ONNX Runtime (the reference runtime for whole-model checks and benchmarks) comes from npm.
  if [ ! -d node_modules/onnxruntime-node ] && command -v npm >/dev/null; then
    echo "== installing onnxruntime-node (npm)"
    npm install --no-audit --no-fund --ignore-scripts onnxruntime-node >/dev/null || \
      echo "warning: npm install onnxruntime-node failed; the ONNX Runtime comparisons will be skipped"
  fi
}

build() { # build DIR [meson options...]
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$@" >/dev/null
  fi
  ninja -C "$dir"
}

case "${1:-}" in
  deps)
    deps ;;
  demo)
    deps
    build build -Dwerror=true
    ./models/demo.sh build/tools/nibble ;;
  test)
    deps
    build build -Dwerror=true
    meson test -C build --print-errorlogs --num-processes 2
    build build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      meson test -C build-asan --print-errorlogs --num-processes 2 --no-suite ref --no-suite mpi
    # the 2-rank tests under the sanitizers too; Open MPI's own allocations outlive MPI_Finalize
    # (LeakSanitizer would report them), so leaks are checked by the one-process tests only
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      meson test -C build-asan --print-errorlogs --suite mpi
    # MPI is optional: the library and nibble build and run without it
    build build-nompi -Dwerror=true -Dmpi=disabled -Dtests=disabled
    tests/train/check_no_mpi.sh build-nompi/tools/nibble ;;
  *)
    echo "usage: ./build.sh demo|test|deps" >&2
    exit 2 ;;
esac
