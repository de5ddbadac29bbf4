#!/usr/bin/env bash
# The main job on the shipped default model and data: load the LeNet-5
# Fashion-MNIST classifier, show it, rewrite it with the cleanup pipeline while
# dumping every stage, run the rewritten model on the shipped test batch and
# report its accuracy next to the original's; train LeNet-5 from its initial
# weights for one epoch and draw the loss curve (build/demo/loss.png); then
# train the untrained LeNet-5 in 4 bits (INT4 weights and activations, log
# radix-4 gradients) next to FP32 on the same data and print both accuracies.
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
if "$NIBBLE" passes | grep '^build-training' >/dev/null && [ -d /usr/share/datasets/fashion-mnist ]; then
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

# 4-bit training (issue 16) next to FP32: the untrained LeNet-5 (models/lenet5_init.onnx),
# one epoch on 12,000 Fashion-MNIST training images each, the same data order and schedule;
# 4 bits = INT4 weights and activations recomputed every step (quantize-int4: SAWB weights,
# affine activations, first and last layers in 8 bits) and log radix-4 gradients with
# two-phase rounding (quantize-grad-log4). Test accuracy on 2,000 test images.
echo
if "$NIBBLE" passes | grep '^quantize-grad-log4' >/dev/null && [ -d /usr/share/datasets/fashion-mnist ]; then
  sub=$OUT/fmnist_12k
  /usr/bin/python3 "$here/../experiments/fmnist_subset.py" "$sub" 12000 2000
  for mode in fp32 4bit; do
    extra=()
    [ "$mode" = 4bit ] && extra=(--int4 --log4-grad=tpr --dump-dir "$OUT/train4-dump")
    echo "== nibble train $(basename "$here")/lenet5_init.onnx ${extra[*]:0:2} (1 epoch, 12,000 images)"
    "$NIBBLE" train "$here/lenet5_init.onnx" --data "npy:$sub" --epochs 1 --optimizer momentum \
      --lr 0.02 --schedule cosine --seed 1 --metrics "$OUT/train_$mode.csv" --log-every 10 \
      --export "$OUT/lenet5.$mode.onnx" "${extra[@]}" 2>&1 | grep -v '^build-training\|^quantize-int4'
  done
  /usr/bin/python3 - "$OUT/train_fp32.csv" "$OUT/train_4bit.csv" <<'PY'
import csv, sys
acc = []
for p in sys.argv[1:]:
    rows = [r for r in csv.DictReader(open(p)) if r["kind"] == "epoch"]
    acc.append((100 * float(rows[-1]["test_accuracy"]), float(rows[-1]["seconds"])))
print("4-bit training vs FP32 (LeNet-5 from scratch, 1 epoch, 2,000 test images):")
print("  FP32:                                                  %.2f %% test accuracy (%.1f s)" % acc[0])
print("  4-bit (INT4 weights/activations, radix-4 TPR gradients): %.2f %% test accuracy (%.1f s), %+.2f points"
      % (acc[1][0], acc[1][1], acc[1][0] - acc[0][0]))
PY
  if command -v gnuplot >/dev/null; then
    gnuplot <<GP
set terminal pngcairo size 800,480
set output "$OUT/loss_4bit.png"
set datafile separator ","
set xlabel "update"
set ylabel "training loss (mean over 10 updates)"
set title "nibble train: LeNet-5 from scratch, FP32 and 4-bit"
plot "< grep '^step' $OUT/train_fp32.csv" using 4:6 with lines title "FP32", \
     "< grep '^step' $OUT/train_4bit.csv" using 4:6 with lines title "INT4 + log radix-4 gradients (TPR)"
GP
    echo "loss curves: $OUT/loss_4bit.png; the 4-bit training graph: $OUT/train4-dump/"
  fi
else
  echo "== 4-bit training: skipped (no quantize-grad-log4 pass in this build, or Fashion-MNIST not installed)"
fi
