#!/usr/bin/env bash
# Assemble the seed corpora of the fuzz targets into a folder (not committed):
#   tests/fuzz/make_corpus.sh OUT [TESTDATA]
# OUT/<target>/ gets copies of
#   load:        every conformance model.onnx and the shipped models/*.onnx
#                up to 256 KB (the campaign's -max_len for them)
#   print, run:  every conformance model.onnx up to 64 KB (printing every
#                weight of a bigger model costs time, not coverage)
#   tensor_pb:   every conformance test_data_set_*/*.pb up to 64 KB
#   npy:         models/data/*.npy, and .npy versions 1.0/2.0/3.0 of the small
#                .pb tensors (needs python3 with onnx and numpy; skipped otherwise)
#   (dataset, checkpoint: the training issue's readers get their seeds here
#    when they exist)
# TESTDATA defaults to $NBL_TESTDATA or /usr/share/libonnx-testdata/data.
# Files are named <suite>__<test>[__<set>__<file>] so that they stay unique.
set -euo pipefail
out=${1:?usage: make_corpus.sh OUT [TESTDATA]}
testdata=${2:-${NBL_TESTDATA:-/usr/share/libonnx-testdata/data}}
src=$(cd "$(dirname "$0")/../.." && pwd)
py=/usr/bin/python3
[ -x "$py" ] || py=python3

mkdir -p "$out"/{load,print,run,tensor_pb,npy}

if [ -d "$testdata" ]; then
  while IFS= read -r f; do
    rel=${f#"$testdata"/}
    name=${rel%/model.onnx}
    name=${name//\//__}.onnx
    size=$(stat -c %s "$f")
    [ "$size" -le 262144 ] && cp "$f" "$out/load/$name"
    if [ "$size" -le 65536 ]; then
      cp "$f" "$out/print/$name"
      cp "$f" "$out/run/$name"
    fi
  done < <(find "$testdata" -name model.onnx | sort)
  while IFS= read -r f; do
    rel=${f#"$testdata"/}
    cp "$f" "$out/tensor_pb/${rel//\//__}"
  done < <(find "$testdata" -path '*test_data_set_*' -name '*.pb' -size -65537c | sort)
else
  echo "make_corpus: no conformance data at $testdata; only the shipped models" >&2
fi

for f in "$src"/models/*.onnx; do
  [ -e "$f" ] || continue
  [ "$(stat -c %s "$f")" -le 262144 ] && cp "$f" "$out/load/shipped__$(basename "$f")"
done
for f in "$src"/models/data/*.npy; do
  [ -e "$f" ] && cp "$f" "$out/npy/shipped__$(basename "$f")"
done

# .npy seeds from the small test tensors: up to 6 of each element type and
# rank numpy can store, in the three header versions.
if "$py" -c 'import onnx, numpy' 2>/dev/null; then
  "$py" - "$out/tensor_pb" "$out/npy" <<'PY'
import os, sys
import numpy as np
from onnx import TensorProto, numpy_helper
src, dst = sys.argv[1], sys.argv[2]
n = 0
seen = {}
for i, name in enumerate(sorted(os.listdir(src))):
    path = os.path.join(src, name)
    if os.path.getsize(path) > 8192:
        continue
    t = TensorProto()
    try:
        t.ParseFromString(open(path, 'rb').read())
        a = numpy_helper.to_array(t)
    except Exception:
        continue
    if a.dtype.kind not in 'biufc':
        continue
    key = (a.dtype.str, a.ndim)  # a few of each type and rank are enough
    if seen.get(key, 0) >= 6:
        continue
    seen[key] = seen.get(key, 0) + 1
    a = np.ascontiguousarray(a).astype(a.dtype.newbyteorder('<'))
    version = [(1, 0), (2, 0), (3, 0)][n % 3]
    with open(os.path.join(dst, name[:-3] + '.npy'), 'wb') as f:
        np.lib.format.write_array(f, a, version=version)
    n += 1
print(f'make_corpus: {n} .npy seeds')
PY
else
  echo "make_corpus: python3 with onnx and numpy not found; no .npy seeds beyond models/data" >&2
fi

for d in "$out"/*/; do
  printf 'make_corpus: %-10s %5d files\n' "$(basename "$d")" "$(find "$d" -type f | wc -l)"
done
