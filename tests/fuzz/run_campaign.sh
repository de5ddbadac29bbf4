#!/usr/bin/env bash
# The fuzzing campaign (tests/fuzz/README.md): build the libFuzzer targets in a
# clang build folder, assemble the seed corpora, fuzz each target, and print
# executions, exec/s, coverage and findings per target.
#
#   tests/fuzz/run_campaign.sh [options] [TARGET...]     (default: every target)
#     --build DIR     the clang build folder (default $NBL_FUZZ_BUILD, else build-fuzz
#                     in the source root); configured on first use with
#                     CC=clang meson setup DIR -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false
#     --runs N        executions per target (default 1000000; libFuzzer's -runs)
#     --time S        and at most S seconds per target (default 0: no limit)
#     --jobs N        targets fuzzed at once, one process each (default 2: one per core)
#     --nice N        niceness of the fuzzers (default 10)
#     --no-seeds      fuzz from the committed corpus only (no conformance seeds)
#     --keep-going    do not stop at the first finding: libFuzzer's fork mode
#                     (-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1),
#                     every finding is written to the artifacts folder
#     --ci            CI: 2,000 executions or 20 s per target (whichever comes
#                     first), a fresh output corpus, exit 77 without clang's libFuzzer
# Targets: load print tensor_pb npy run dataset checkpoint (one line each in
# tests/fuzz/meson.build too).
# Per target: the corpus grows in DIR/corpus/TARGET (kept between campaigns),
# findings go to DIR/artifacts/TARGET/ (crash-*, leak-*, timeout-*, oom-*),
# the log to DIR/logs/TARGET.log. Exit status 0 when no target found anything,
# 1 otherwise, 77 (--ci) when libFuzzer is unavailable.
set -uo pipefail

ALL_TARGETS=(load print tensor_pb npy value run dataset checkpoint)
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${NBL_FUZZ_BUILD:-$src/build-fuzz}
runs=1000000 max_time=0 jobs=2 nice_level=10 seeds=1 ci=0 keep_going=0
targets=()
while (($#)); do
  case $1 in
    --build) build=$2; shift ;;
    --runs) runs=$2; shift ;;
    --time) max_time=$2; shift ;;
    --jobs) jobs=$2; shift ;;
    --nice) nice_level=$2; shift ;;
    --no-seeds) seeds=0 ;;
    --keep-going) keep_going=1 ;;
    --ci) ci=1 runs=2000 max_time=20 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    -*) echo "run_campaign: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")

max_len() { # inputs longer than this are cut: the largest seeds of each kind
  case $1 in
    load) echo 262144 ;;
    print|run|tensor_pb) echo 65536 ;;
    checkpoint) echo 32768 ;;
    *) echo 16384 ;;
  esac
}

# clang with libFuzzer?
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return 0; }\n' \
  > "$probe/p.c"
if ! clang -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" >/dev/null 2>&1; then
  echo "run_campaign: clang with libFuzzer (clang -fsanitize=fuzzer) is not available"
  ((ci)) && exit 77
  exit 1
fi

if [ ! -f "$build/build.ninja" ]; then
  echo "== configuring $build (clang, -Dfuzz=true, ASan+UBSan)"
  CC=clang meson setup "$build" "$src" -Dfuzz=true -Db_sanitize=address,undefined \
    -Db_lundef=false >"$probe/setup.log" 2>&1 || { cat "$probe/setup.log"; exit 1; }
fi
echo "== building the fuzz targets"
nice -n "$nice_level" ninja -C "$build" >"$probe/build.log" 2>&1 || { cat "$probe/build.log"; exit 1; }

seed_dir=$build/seeds
if ((seeds)) && [ ! -d "$seed_dir" ]; then
  echo "== assembling the seed corpora in $seed_dir"
  NBL_FUZZ_BIN=$build/tests/fuzz "$src/tests/fuzz/make_corpus.sh" "$seed_dir.tmp" >/dev/null && mv "$seed_dir.tmp" "$seed_dir"
fi

mkdir -p "$build/logs"
run_one() {
  local t=$1 corpus art log
  if ((ci)); then
    corpus=$build/ci-corpus/$t
    rm -rf "$corpus"
  else
    corpus=$build/corpus/$t
  fi
  art=$build/artifacts/$t
  log=$build/logs/$t.log
  mkdir -p "$corpus" "$art"
  local dirs=("$corpus")
  for d in "$src/tests/fuzz/regressions/$t" "$src/tests/fuzz/seeds/$t"; do
    [ -d "$d" ] && dirs+=("$d")
  done
  ((seeds)) && [ -d "$seed_dir/$t" ] && dirs+=("$seed_dir/$t")
  local args=(-runs="$runs" -max_len="$(max_len "$t")" -rss_limit_mb=2048 -timeout=10
    -print_final_stats=1 -artifact_prefix="$art/")
  ((max_time > 0)) && args+=(-max_total_time="$max_time")
  ((keep_going)) && args+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  touch "$log.start"
  local start end
  start=$(date +%s%N)
  nice -n "$nice_level" "$build/tests/fuzz/fuzz_$t" "${args[@]}" "${dirs[@]}" >"$log" 2>&1
  local rc=$?
  end=$(date +%s%N)
  echo "$rc $(((end - start) / 1000000))" >"$log.rc"
}

echo "== fuzzing: ${targets[*]} ($runs executions$( ((max_time > 0)) && echo ", at most ${max_time} s") each, $jobs at a time)"
for t in "${targets[@]}"; do
  if [ ! -x "$build/tests/fuzz/fuzz_$t" ]; then
    echo "run_campaign: no target '$t' (known: ${ALL_TARGETS[*]})" >&2
    exit 2
  fi
  rm -f "$build/logs/$t.log.rc"
  while (($(jobs -rp | wc -l) >= jobs)); do wait -n; done
  run_one "$t" &
done
wait

status=0
printf '\n%-10s %10s %8s %7s %8s %7s %6s  %s\n' target executions exec/s cov ft corpus secs result
for t in "${targets[@]}"; do
  log=$build/logs/$t.log
  read -r rc ms <"$log.rc"
  execs=$(grep -a -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  last=$(grep -a -E '^#[0-9]+.*cov: [0-9]+' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(sed -E 's/^#([0-9]+).*/\1/' <<<"$last")
  eps=$( ((ms > 0)) && [ -n "$execs" ] && echo $((execs * 1000 / ms)))
  secs=$(printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)))
  cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+')
  ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+')
  corp=$(grep -oE 'corp: [0-9]+' <<<"$last" | grep -oE '[0-9]+')
  # slow-unit-* files (an input over 10 s, libFuzzer's -report_slow_units) are no finding
  found=$(find "$build/artifacts/$t" -type f -newer "$log.start" \( -name 'crash-*' -o \
    -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  if [ "$rc" = 0 ] && [ "$found" = 0 ]; then
    result=ok
  else
    status=1
    what=$(grep -a -m1 -oE 'ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer): [a-zA-Z -]+|runtime error: .*|fuzz invariant: .*' "$log" | head -1)
    result="FOUND $found (exit $rc): ${what:-see $log} -> $build/artifacts/$t/"
  fi
  printf '%-10s %10s %8s %7s %8s %7s %6s  %s\n' "$t" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" \
    "${corp:-?}" "$secs" "$result"
done
echo "logs: $build/logs/"
exit $status
