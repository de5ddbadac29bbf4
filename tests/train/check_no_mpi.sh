#!/usr/bin/env bash
# check_no_mpi.sh NIBBLE - a nibble built without MPI (meson -Dmpi=disabled):
# it is not linked to libmpi, trains alone as usual (the 4-bit exchange then
# quantizes its own gradients), and when a launcher starts it as one of
# several processes it says so and exits 2 instead of training alone.
set -euo pipefail
nibble=${1:?usage: check_no_mpi.sh NIBBLE}
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

if ldd "$nibble" | grep -q libmpi; then fail "$nibble is linked to libmpi"; fi
rc=0
OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=1 "$nibble" train "$root/models/lenet5_init.onnx" \
  --data "npy:$tmp" >"$tmp/out" 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "under a launcher of 2 processes: exit $rc, want 2"
grep -q "built without MPI" "$tmp/out" || fail "no 'built without MPI' message: $(cat "$tmp/out")"
/usr/bin/python3 - "$tmp" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(0)
np.save(sys.argv[1] + "/x.npy", rng.standard_normal((128, 1, 28, 28)).astype(np.float32))
np.save(sys.argv[1] + "/y.npy", rng.integers(0, 10, 128).astype(np.int64))
PY
"$nibble" train "$root/models/lenet5_init.onnx" --data "npy:$tmp" --batch 64 --threads 1 \
  --grad-exchange log4 >"$tmp/out" 2>&1 || fail "single-process run with --grad-exchange log4: $(cat "$tmp/out")"
grep -q "data-parallel: 1 rank (none), log4 exchange" "$tmp/out" || fail "no summary: $(cat "$tmp/out")"
echo "ok: no libmpi; 'built without MPI' under a launcher (exit 2); trains alone, log4 simulated"
