#!/usr/bin/env bash
# One short libFuzzer run of a target on its committed corpus (the meson tests
# of suite 'fuzz' in a -Dfuzz=true build):
#   run_target.sh FUZZ_BINARY OUT_CORPUS [CORPUS_DIR...]
# New inputs go to OUT_CORPUS (emptied first); missing corpus folders are
# skipped. 2,000 executions, at most 20 s ($NBL_FUZZ_RUNS, $NBL_FUZZ_TIME).
# Exit status: libFuzzer's (0, or 1 on a crash/leak/sanitizer report, whose
# input is written next to OUT_CORPUS as crash-*, leak-*, timeout-*, oom-*).
set -euo pipefail
exe=$1 out=$2
shift 2
rm -rf "$out"
mkdir -p "$out"
dirs=()
for d in "$@"; do [ -d "$d" ] && dirs+=("$d"); done
exec "$exe" -runs="${NBL_FUZZ_RUNS:-2000}" -max_total_time="${NBL_FUZZ_TIME:-20}" \
  -max_len=262144 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
  -artifact_prefix="$out-" "$out" "${dirs[@]}"
