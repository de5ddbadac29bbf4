#!/usr/bin/env bash
# Assemble the seed corpora of the fuzz targets into a folder (not committed):
#   tests/fuzz/make_corpus.sh OUT [TESTDATA]
# OUT/<target>/ gets copies of
#   load:        every conformance model.onnx and the shipped models/*.onnx
#                up to 256 KB (the campaign's -max_len for them)
#   print, run:  every conformance model.onnx up to 64 KB (printing every
#                weight of a bigger model costs time, not coverage)
#   tensor_pb, value: every conformance test_data_set_*/*.pb up to 64 KB
#   npy:         models/data/*.npy, and .npy versions 1.0/2.0/3.0 of the small
#                .pb tensors (needs python3 with onnx and numpy; skipped otherwise)
#   dataset:     small Fashion-MNIST IDX pairs (plain, gzip'd, test split) and
#                npy folders of several element types, in fuzz_dataset.c's
#                layout (flags, length, samples file, labels file; needs python3
#                with numpy)
#   checkpoint:  checkpoints of fuzz_checkpoint.c's training model (Adam, SGD,
#                Momentum, Adagrad), written by the target itself
#                (NBL_FUZZ_WRITE_SEEDS) from the folder $NBL_FUZZ_BIN holding
#                fuzz_checkpoint or fuzz_checkpoint_replay; also copied to load
# TESTDATA defaults to $NBL_TESTDATA or /usr/share/libonnx-testdata/data.
# Files are named <suite>__<test>[__<set>__<file>] so that they stay unique.
set -euo pipefail
out=${1:?usage: make_corpus.sh OUT [TESTDATA]}
testdata=${2:-${NBL_TESTDATA:-/usr/share/libonnx-testdata/data}}
src=$(cd "$(dirname "$0")/../.." && pwd)
py=/usr/bin/python3
[ -x "$py" ] || py=python3

mkdir -p "$out"/{load,print,run,tensor_pb,npy,value,dataset,checkpoint}

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
    cp "$f" "$out/value/${rel//\//__}"
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

# dataset seeds: byte 0 flags (bit 0 IDX, bit 1 test split, bit 2 .gz names,
# bits 3-4 the model input's shape, bit 5 ten classes), 2 bytes length of the
# samples file, the samples file, the labels file
if "$py" -c 'import numpy' 2>/dev/null; then
  "$py" - "$out/dataset" <<'PY'
import gzip, io, os, struct, sys
import numpy as np
dst = sys.argv[1]
def idx(a):
    return bytes([0, 0, 8, a.ndim]) + b''.join(struct.pack('>I', d) for d in a.shape) + a.astype(np.uint8).tobytes()
def npy(a, version=(1, 0)):
    f = io.BytesIO()
    np.lib.format.write_array(f, a, version=version)
    return f.getvalue()
def seed(name, flags, x, y):
    with open(os.path.join(dst, name), 'wb') as f:
        f.write(bytes([flags]) + struct.pack('<H', len(x)) + x + y)
r = np.random.RandomState(0)
img, lab = r.randint(0, 256, (3, 4, 5)), np.array([0, 9, 4])
seed('idx_plain', 1 | 1 << 5, idx(img), idx(lab))
seed('idx_gz_test', 1 | 2 | 4 | 1 << 3, gzip.compress(idx(img), mtime=0), gzip.compress(idx(lab), mtime=0))
seed('idx_flat', 1 | 2 << 3, idx(img[:2, :2]), idx(lab[:2]))
seed('npy_f32', 1 << 5, npy(r.randn(5, 2, 3).astype(np.float32)), npy(np.array([1, 2, 0, 2, 1], np.int64)))
seed('npy_u8_flat', 2 << 3, npy(r.randint(0, 9, (4, 6)).astype(np.uint8), (2, 0)), npy(np.arange(4, dtype=np.int32)))
seed('npy_f64_test', 2 | 1 << 3, npy(r.randn(3, 4)), npy(np.array([0., 1., 2.], np.float32), (3, 0)))
seed('npy_bad_shape', 3 << 3, npy(r.randn(2, 3).astype(np.float16)), npy(np.array([1, 0], np.int16)))
seed('npy_empty', 0, npy(np.zeros((0, 3), np.float32)), npy(np.zeros((0,), np.int64)))
print('make_corpus: 8 dataset seeds')
PY
else
  echo "make_corpus: python3 with numpy not found; no dataset seeds" >&2
fi

# checkpoint seeds: written by the target (fuzz_checkpoint.c, NBL_FUZZ_WRITE_SEEDS)
bin=${NBL_FUZZ_BIN:-}
ck=
for c in "$bin/fuzz_checkpoint" "$bin/fuzz_checkpoint_replay"; do
  [ -n "$bin" ] && [ -x "$c" ] && ck=$c && break
done
if [ -n "$ck" ]; then
  : >"$out/empty-input"
  NBL_FUZZ_WRITE_SEEDS=$out/checkpoint "$ck" "$out/empty-input" >/dev/null 2>&1 ||
    echo "make_corpus: $ck could not write the checkpoint seeds" >&2
  rm -f "$out/empty-input"
  for f in "$out"/checkpoint/*.ckpt; do
    [ -e "$f" ] && cp "$f" "$out/load/checkpoint__$(basename "$f" .ckpt).onnx"
  done
else
  echo "make_corpus: no fuzz_checkpoint binary in \$NBL_FUZZ_BIN; no checkpoint seeds" >&2
fi

for d in "$out"/*/; do
  printf 'make_corpus: %-10s %5d files\n' "$(basename "$d")" "$(find "$d" -type f | wc -l)"
done
