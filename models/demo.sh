#!/usr/bin/env bash
# The main job on the shipped default model and data: load the LeNet-5
# Fashion-MNIST classifier, show it, rewrite it with the cleanup pipeline while
# dumping every stage, run the rewritten model on the shipped test batch and
# report its accuracy next to the original's; then train LeNet-5 from its
# initial weights for one epoch and draw the loss curve (build/demo/loss.png).
# Usage: models/demo.sh [NIBBLE]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
NIBBLE=${1:-$here/../build/tools/nibble}
MODEL=$here/lenet5.onnx
BATCH=$here/data/fmnist_test_100.npy
LABELS=$here/data/fmnist_test_100_labels.npy
OUT=${DEMO_OUT:-$here/../build/demo}
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== nibble info $(basename "$MODEL")"
"$NIBBLE" info "$MODEL"
echo
echo "== nibble convert --passes default (infer-shapes,fold-constants,eliminate-identity,dce) (dumps in $OUT/dump)"
"$NIBBLE" convert "$MODEL" -o "$OUT/lenet5.opt.onnx" \
  --passes default --verify-each --pass-stats \
  --dump-dir "$OUT/dump"
ls "$OUT/dump"
echo
for m in "$MODEL" "$OUT/lenet5.opt.onnx"; do
  name=$(basename "$m" .onnx)
  echo "== nibble run $name on the 100-image Fashion-MNIST test batch"
  "$NIBBLE" run "$m" --input "input=$BATCH" --output-dir "$OUT/$name.out" | head -n 5
  /usr/bin/python3 - "$OUT/$name.out/logits.npy" "$LABELS" <<'PY'
import sys, numpy as np
logits, labels = np.load(sys.argv[1]), np.load(sys.argv[2])
print("top-1 accuracy: %d/%d correct" % ((logits.argmax(1) == labels).sum(), len(labels)))
PY
done

# Training (issue 15): train the shipped LeNet-5 from its initial weights (lenet5_init.onnx,
# PyTorch's initialization) for one epoch on Fashion-MNIST with the training graph that
# build-training makes (progress bar on a terminal), then draw the loss curve from the
# metrics CSV next to the dumps (models/plot_train.sh, gnuplot).
echo
if "$NIBBLE" passes | grep -q '^build-training' && [ -d /usr/share/datasets/fashion-mnist ]; then
  echo "== nibble train lenet5_init.onnx --data fashion-mnist --epochs 1 (training graph dumped to $OUT/train-dump)"
  "$NIBBLE" train "$here/lenet5_init.onnx" --data fashion-mnist --epochs 1 --optimizer momentum \
    --lr 0.05 --schedule cosine --weight-decay 0.0005 \
    --metrics "$OUT/train.csv" --log-every 20 --checkpoint "$OUT/lenet5.ckpt" \
    --export "$OUT/lenet5.trained.onnx" --dump-dir "$OUT/train-dump"
  if command -v gnuplot >/dev/null; then
    "$here/plot_train.sh" "$OUT/train.csv" "$OUT/loss.png" "nibble train: LeNet-5 on Fashion-MNIST, 1 epoch"
    echo "loss curve: $OUT/loss.png"
  fi
else
  echo "== nibble train: skipped (no build-training pass in this build, or Fashion-MNIST not installed)"
fi
