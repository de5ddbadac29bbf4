#!/usr/bin/env bash
# The cleanup pipeline leaves every conformance model's outputs unchanged and
# its IR valid: each model.onnx is rewritten with `nibble convert --passes
# PIPELINE --verify-each` into a mirror folder (test data linked, not copied)
# and the mirror is run with `nibble test` against the same expected-failures
# list and tolerances as the untouched models.
set -euo pipefail
NIBBLE=${NIBBLE:?path to the nibble binary}
DATA=${NBL_TESTDATA:-/usr/share/libonnx-testdata/data}
SRC=${NBL_SOURCE_ROOT:?}
PIPELINE=${1:-infer-shapes,fold-constants,eliminate-identity,dce}
shift || true
FOLDERS=("${@:-node simple pytorch-converted pytorch-operator}")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
convert_failed=0
converted=0
for folder in ${FOLDERS[@]}; do
  [ -d "$DATA/$folder" ] || { echo "missing $DATA/$folder"; exit 77; }
  for t in "$DATA/$folder"/*/; do
    name=$(basename "$t")
    [ -f "$t/model.onnx" ] || continue
    mkdir -p "$OUT/$folder/$name"
    for d in "$t"/test_data_set_*; do ln -s "$d" "$OUT/$folder/$name/"; done
    if ! "$NIBBLE" convert "$t/model.onnx" -o "$OUT/$folder/$name/model.onnx" \
        --passes "$PIPELINE" --verify-each 2>"$OUT/err.txt" >/dev/null; then
      echo "convert failed: $folder/$name: $(head -c 300 "$OUT/err.txt")"
      convert_failed=$((convert_failed + 1))
      rm -rf "${OUT:?}/$folder/$name"
      continue
    fi
    converted=$((converted + 1))
  done
done
echo "pipeline '$PIPELINE': $converted models converted, $convert_failed failed to convert"
rc=0
for folder in ${FOLDERS[@]}; do
  echo "== nibble test on the rewritten $folder models"
  if ! "$NIBBLE" test "$OUT/$folder"/* --expected-failures "$SRC/tests/conformance/expected_failures.txt" \
      --tolerances "$SRC/tests/conformance/tolerances.txt" >"$OUT/test.txt" 2>&1; then
    rc=1
    grep -v '^XFAIL' "$OUT/test.txt" | tail -n 40
  fi
  tail -n 2 "$OUT/test.txt"
done
[ "$convert_failed" -eq 0 ] || rc=1
exit $rc
