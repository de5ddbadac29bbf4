#!/usr/bin/env bash
# CLI contract of `nibble info/dump/convert/passes/ops`, `run --profile` and of sequence and
# optional values in run/compare/test: exit codes (0 ok, 1 run failure, 2 bad usage or bad
# input), messages, --help, --version, and a convert round trip.
# Environment: NIBBLE (the binary), NBL_TESTDATA (libonnx-testdata data folder).
set -u
NIBBLE=${NIBBLE:-build/tools/nibble}
DATA=${NBL_TESTDATA:-/usr/share/libonnx-testdata/data}
PY=/usr/bin/python3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
n=0

# expect RC PATTERN(stdout+stderr, grep -E; "" for any) -- ARGS...
expect() {
  local rc=$1 pat=$2
  shift 3
  n=$((n + 1))
  "$NIBBLE" "$@" >"$T/out" 2>"$T/err"
  local got=$?
  if [ "$got" != "$rc" ]; then
    echo "FAIL: nibble $* -> exit $got, expected $rc"; sed 's/^/  | /' "$T/err" | head -5
    fails=$((fails + 1)); return
  fi
  if [ -n "$pat" ] && ! cat "$T/out" "$T/err" | grep -qE -- "$pat"; then
    echo "FAIL: nibble $* -> output lacks /$pat/"; cat "$T/out" "$T/err" | sed 's/^/  | /' | head -8
    fails=$((fails + 1))
  fi
}

CONV=$DATA/pytorch-converted/test_Conv2d/model.onnx
BIG=$DATA/pytorch-operator/test_operator_conv/model.onnx
[ -f "$CONV" ] && [ -f "$BIG" ] || { echo "test data missing under $DATA"; exit 77; }
printf 'this is not a protobuf \xff\xff\xff\xff' >"$T/garbage.onnx"

# global
expect 0 '^nibble [0-9]+\.[0-9]+\.[0-9]+$' -- --version
expect 0 '^FP32 products: .+; FP32 convolutions: (avx512|as the products); INT4: (avx512vnni|avx2|scalar)(; INT4 training products: AMX tiles)?$' -- --version
expect 0 'usage: nibble COMMAND' -- --help
expect 2 'usage: nibble COMMAND' --
expect 2 "nibble: unknown command 'frobnicate'" -- frobnicate

# --help of each command
for c in info dump convert passes ops; do
  expect 0 "usage: nibble $c" -- "$c" --help
done

# info
expect 2 'nibble info: missing MODEL' -- info
expect 2 "nibble info: unknown option '--bogus'" -- info --bogus "$CONV"
expect 2 '^nibble: .*/nonexistent/model\.onnx' -- info "$T/nonexistent/model.onnx"
expect 2 '^nibble: .*garbage\.onnx' -- info "$T/garbage.onnx"
expect 0 'parameters:  76 in 2 initializers, 304 bytes' -- info "$CONV"
expect 0 '^  Conv +1$' -- info "$CONV"
expect 0 '^opsets:      ai.onnx 6$' -- info "$CONV"
expect 0 '^  0  float\[2,3,7,5\]$' -- info "$CONV"

# dump
expect 2 'nibble dump: missing MODEL' -- dump
expect 2 "nibble dump: unknown format 'xml'" -- dump --format xml "$CONV"
expect 2 'nibble dump: --format needs a value' -- dump "$CONV" --format
expect 2 "nibble dump: unknown option '--bogus'" -- dump --bogus "$CONV"
expect 2 '^nibble: .*nonexistent' -- dump "$T/nonexistent.onnx"
expect 2 'cannot open for writing' -- dump "$CONV" -o "$T/no/such/dir/x.txt"
expect 0 '_3 = Conv <dilations = \[1, 1\], group = 1' -- dump "$CONV"
expect 0 '72 values elided' -- dump "$CONV"
expect 0 '' -- dump --full "$CONV" -o "$T/full.txt"
if grep -q 'elided' "$T/full.txt"; then echo "FAIL: --full output still elides values"; fails=$((fails + 1)); fi
expect 0 '' -- dump --format=json "$CONV" -o "$T/m.json"
if ! $PY -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["graph"]["nodes"][0]["op_type"]=="Conv"' "$T/m.json"; then
  echo "FAIL: JSON dump does not load"; fails=$((fails + 1))
fi
expect 0 '^digraph ' -- dump --format dot "$CONV"

# ops: real rows of the op table (text and Markdown), every entry with a shape rule
expect 2 "nibble ops: unknown format 'xml'" -- ops --format xml
expect 2 "nibble ops: unexpected argument 'extra'" -- ops extra
expect 0 '^ai\.onnx +Conv +1-21 +yes +yes +stable since 1 +yes$' -- ops
expect 0 '^ai\.onnx +Scan +8 +yes +no +no: no rule yet$' -- ops
expect 0 '^ai\.onnx +Equal +1-21 +yes +no +stable since 7, converts from 1 +no: boolean output$' -- ops
expect 0 '^ai\.onnx +DFT +17-21 +yes +no +stable since 20, converts from 17 +no: no rule yet$' -- ops
expect 0 '^ai\.onnx\.preview\.training +Adam +1 +yes +no +no: optimizer update' -- ops
expect 0 '^ai\.nibble +QuantizeInt4 +1 +yes +yes +yes$' -- ops
expect 0 '^\| ai\.onnx \| Gemm \| 1-21 \| yes \| yes \| stable since 7, converts from 1 \| yes \|$' -- ops --format md
expect 0 '^\| domain \| op \| opsets \| shape rule \| fast kernel \| flags \| gradient \|$' -- ops --format md
n=$((n + 1))
summary=$("$NIBBLE" ops | tail -1)
if ! echo "$summary" | grep -qE '^[0-9]+ ops in ([0-9]+) entries: \1 with a shape rule,'; then
  echo "FAIL: nibble ops: not every entry has a shape rule: $summary"; fails=$((fails + 1))
fi
rows=$("$NIBBLE" ops --format md | grep -E '^\| ' | grep -cvE '^\| (domain|-)')
if [ "$rows" != "$(echo "$summary" | sed -E 's/^[0-9]+ ops in ([0-9]+) entries.*/\1/')" ]; then
  echo "FAIL: nibble ops --format md: $rows rows for: $summary"; fails=$((fails + 1))
fi

# passes
expect 0 'passes' -- passes
expect 2 "unexpected argument" -- passes extra

# convert
expect 2 'nibble convert: missing -o OUT' -- convert "$CONV"
expect 2 'nibble convert: missing MODEL' -- convert -o "$T/x.onnx"
expect 2 "nibble convert: unknown pass 'frob'" -- convert "$CONV" -o "$T/x.onnx" --passes frob
expect 2 "nibble convert: unknown pass 'frob'" -- convert "$CONV" -o "$T/x.onnx" --passes 'frob{a=1}'
expect 2 "--external-data must be none, keep or all" -- convert "$CONV" -o "$T/x.onnx" --external-data some
expect 2 '^nibble: .*nonexistent' -- convert "$T/nonexistent.onnx" -o "$T/x.onnx"
[ -e "$T/x.onnx" ] && { echo "FAIL: a failed convert wrote its output"; fails=$((fails + 1)); }
expect 0 '' -- convert "$CONV" -o "$T/rt.onnx"
"$NIBBLE" dump --full "$CONV" >"$T/a.txt" && "$NIBBLE" dump --full "$T/rt.onnx" >"$T/b.txt"
if ! cmp -s "$T/a.txt" "$T/b.txt"; then echo "FAIL: convert round trip changed the model"; diff "$T/a.txt" "$T/b.txt" | head; fails=$((fails + 1)); fi
expect 0 '' -- convert "$BIG" -o "$T/ext.onnx" --external-data all
if [ ! -s "$T/ext.onnx.data" ]; then echo "FAIL: --external-data all wrote no ext.onnx.data"; fails=$((fails + 1)); fi
if [ -x "$PY" ] && ! $PY - "$BIG" "$T/ext.onnx" <<'EOF'
import sys, onnx, onnx.numpy_helper as nh, numpy as np
a, b = onnx.load(sys.argv[1]), onnx.load(sys.argv[2])  # loads external data too
ia = {t.name: nh.to_array(t) for t in a.graph.initializer}
ib = {t.name: nh.to_array(t) for t in b.graph.initializer}
assert ia.keys() == ib.keys(), (ia.keys(), ib.keys())
for k in ia: assert np.array_equal(ia[k], ib[k]), k
assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(sys.argv[2], load_external_data=False).graph.initializer)
EOF
then echo "FAIL: external-data round trip differs under the onnx package"; fails=$((fails + 1)); fi
expect 0 '' -- convert "$T/ext.onnx" -o "$T/inl.onnx" --external-data none
"$NIBBLE" dump --full "$BIG" >"$T/a.txt" && "$NIBBLE" dump --full "$T/inl.onnx" >"$T/b.txt"
if ! cmp -s "$T/a.txt" "$T/b.txt"; then echo "FAIL: external -> inline round trip changed the model"; fails=$((fails + 1)); fi

# nibble run --profile on the shipped LeNet-5: the runs after the first are
# timed, and its Conv -> Relu pairs run fused
SRC=${NBL_SOURCE_ROOT:-.}
LENET=$SRC/models/lenet5.onnx
if [ -f "$LENET" ]; then
  expect 0 'profile: 2 run\(s\), [0-9]+ node\(s\)' -- run "$LENET" --input "input=$SRC/models/data/fmnist_test_100.npy" --repeat 3 --profile
  expect 0 '^Conv\+Relu +2 ' -- run "$LENET" --input "input=$SRC/models/data/fmnist_test_100.npy" --profile
  expect 0 '^Conv +2 ' -- run "$LENET" --input "input=$SRC/models/data/fmnist_test_100.npy" --profile --reference
  expect 0 'slowest nodes' -- run "$LENET" --input "input=$SRC/models/data/fmnist_test_100.npy" --profile=3
  expect 2 'wants a count of nodes' -- run "$LENET" --input "input=$SRC/models/data/fmnist_test_100.npy" --profile=x
fi

# nibble run --timeout: a Loop of 2^40 iterations (endless), alone and inside
# another Loop, stops after about a second with exit 1
if [ -x "$PY" ] && $PY - "$T/endless.onnx" "$T/nested_endless.onnx" <<'EOF'
import sys
import onnx
from onnx import TensorProto, helper as h

def body(name, nodes):
    return h.make_graph(
        nodes, name + "_body",
        [h.make_tensor_value_info(name + "_it", TensorProto.INT64, []),
         h.make_tensor_value_info(name + "_ci", TensorProto.BOOL, []),
         h.make_tensor_value_info(name + "_vi", TensorProto.FLOAT, [1])],
        [h.make_tensor_value_info(name + "_co", TensorProto.BOOL, []),
         h.make_tensor_value_info(name + "_vo", TensorProto.FLOAT, [1])])

inits = [h.make_tensor("M", TensorProto.INT64, [], [2 ** 40]),
         h.make_tensor("M1", TensorProto.INT64, [], [1]),
         h.make_tensor("t", TensorProto.BOOL, [], [True]),
         h.make_tensor("one", TensorProto.FLOAT, [1], [1.0])]
io = ([h.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
      [h.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
inner = body("in", [h.make_node("Identity", ["in_ci"], ["in_co"]),
                    h.make_node("Add", ["in_vi", "one"], ["in_vo"])])
g = h.make_graph([h.make_node("Loop", ["M", "t", "x"], ["y"], body=inner)], "endless",
                 *io, initializer=inits)
onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]), sys.argv[1])
outer = body("out", [h.make_node("Identity", ["out_ci"], ["out_co"]),
                     h.make_node("Loop", ["M", "t", "out_vi"], ["out_vo"], body=inner)])
g = h.make_graph([h.make_node("Loop", ["M1", "t", "x"], ["y"], body=outer)], "nested_endless",
                 *io, initializer=inits)
onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]), sys.argv[2])
EOF
then
  $PY -c 'import numpy as np, sys; np.save(sys.argv[1], np.zeros([1], np.float32))' "$T/x1.npy"
  for mdl in endless nested_endless; do
    t0=$(date +%s%N)
    expect 1 '^nibble run: timed out after 1 s \(.*run terminated\)' -- run "$T/$mdl.onnx" --input "x=$T/x1.npy" --timeout 1
    ms=$((($(date +%s%N) - t0) / 1000000))
    n=$((n + 1))
    if [ "$ms" -gt 3000 ]; then
      echo "FAIL: nibble run $mdl.onnx --timeout 1 took $ms ms"; fails=$((fails + 1))
    fi
  done
  expect 2 'wants a positive number of seconds' -- run "$T/endless.onnx" --input "x=$T/x1.npy" --timeout 0
  expect 2 'wants a positive number of seconds' -- run "$T/endless.onnx" --input "x=$T/x1.npy" --timeout x
  # a run that ends in time is not affected
  expect 0 'time: ' -- run "$CONV" --input "0=$DATA/pytorch-converted/test_Conv2d/test_data_set_0/input_0.pb" --timeout 60
else
  echo "FAIL: could not build the endless Loop models"; fails=$((fails + 1))
fi

# run --seed: the random ops without a seed attribute draw the same values for the same N
BERN=$DATA/node/test_bernoulli
if [ -f "$BERN/model.onnx" ]; then
  for k in a b; do
    expect 0 'time: ' -- run "$BERN/model.onnx" --input "x=$BERN/test_data_set_0/input_0.pb" --seed 7 --output-dir "$T/seed_$k"
  done
  expect 0 'time: ' -- run "$BERN/model.onnx" --input "x=$BERN/test_data_set_0/input_0.pb" --seed 8 --output-dir "$T/seed_c"
  n=$((n + 1))
  a=$(ls "$T/seed_a" | head -1)
  if [ -z "$a" ] || ! cmp -s "$T/seed_a/$a" "$T/seed_b/$a" || cmp -s "$T/seed_a/$a" "$T/seed_c/$a"; then
    echo "FAIL: run --seed: seed 7 twice should match and seed 8 differ"; fails=$((fails + 1))
  fi
  expect 2 'wants a positive integer' -- run "$BERN/model.onnx" --seed -3
  expect 2 'wants a positive integer' -- run "$BERN/model.onnx" --seed 0
fi

# sequence and optional values (Identity passes them through): printed element by element,
# read as the model declares the input, saved as SequenceProto / OptionalProto .pb files
SEQ=$DATA/node/test_identity_sequence
OPT=$DATA/node/test_identity_opt
if [ -f "$SEQ/model.onnx" ] && [ -f "$OPT/model.onnx" ]; then
  expect 0 '^y: sequence of 2 float tensors$' -- run "$SEQ/model.onnx" --input "x=$SEQ/test_data_set_0/input_0.pb"
  expect 0 '^  \[1\]: float \[1, 1, 2, 2\] \[2, 3, 1, 5\]$' -- run "$SEQ/model.onnx" --input "x=$SEQ/test_data_set_0/input_0.pb" --output-dir "$T/seq_out" --dump-tensors "$T/seq_dump"
  n=$((n + 1))
  if ! cmp -s "$T/seq_out/y.pb" "$SEQ/test_data_set_0/output_0.pb" || ! cmp -s "$T/seq_dump/y.pb" "$SEQ/test_data_set_0/output_0.pb"; then
    echo "FAIL: run --output-dir/--dump-tensors: y.pb differs from the test data's output_0.pb"; fails=$((fails + 1))
  fi
  expect 0 '^    \[0\]: float \[5\] \[1, 2, 3, 4, 5\]$' -- run "$OPT/model.onnx" --input "opt_in=$OPT/test_data_set_0/input_0.pb"
  expect 0 '^opt_out: optional holding a sequence$' -- run "$OPT/model.onnx" --input "opt_in=$OPT/test_data_set_0/input_0.pb"
  expect 2 "input 'x' \(sequence of float\) not given" -- run "$SEQ/model.onnx"
  expect 2 'input_0\.pb: not a valid SequenceProto' -- run "$SEQ/model.onnx" --input "x=$DATA/pytorch-converted/test_Conv2d/test_data_set_0/input_0.pb"
  expect 0 '^output +y\[1\] +4 +0 +inf' -- compare "$SEQ/model.onnx" "$SEQ/model.onnx" --input "x=$SEQ/test_data_set_0/input_0.pb"
  expect 0 '^PASS test_identity_sequence$' -- test -v "$SEQ"
fi

echo "$((n - fails)) of $n CLI checks passed (plus round-trip checks); $fails failed"
[ "$fails" -eq 0 ]
