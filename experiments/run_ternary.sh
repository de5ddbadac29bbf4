#!/bin/sh
# run_ternary.sh - Fashion-MNIST with ternary weights (issue 17), one run:
#   1. training from scratch: the shipped LeNet-5 and ResNet-8 initial
#      weights (models/*_init.onnx) in FP32, INT4 (quantize-int4, first and
#      last layers 8-bit) and ternary (nibble train --ternary: quantize-ternary,
#      first and last layers 8-bit), 3 seeds of the data order each (the
#      initial weights are the shipped ones), Adam, lr 1e-3, batch 64;
#   2. post-training quantization of the trained models/lenet5.onnx and
#      models/resnet8.onnx: FP32, INT4 and ternary accuracy on the 10,000
#      test images.
# Writes a markdown report (default experiments/ternary_results.md).
#
# The development machine has 2 shared cores, so the training runs use
# subsets (sizes below; about 30 minutes in all there): LeNet-5 20,000
# training images for 2 epochs, ResNet-8 6,000 for 2 epochs; the test
# accuracy is always on the 10,000 test images.
#
#   experiments/run_ternary.sh [--out FILE] [--work DIR] [--lenet-n N] [--resnet-n N]
#                              [--epochs E] [--seeds "0 1 2"] [--threads T]
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NIBBLE=${NIBBLE:-$ROOT/build/tools/nibble}
PY=/usr/bin/python3
OUT=$ROOT/experiments/ternary_results.md
WORK=$ROOT/build/experiments-ternary
LENET_N=20000
RESNET_N=6000
EPOCHS=2
SEEDS="0 1 2"
THREADS=2
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --lenet-n) LENET_N=$2; shift 2 ;;
    --resnet-n) RESNET_N=$2; shift 2 ;;
    --epochs) EPOCHS=$2; shift 2 ;;
    --seeds) SEEDS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    *) echo "run_ternary.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$NIBBLE" ] || { echo "run_ternary.sh: no nibble at $NIBBLE (build first)" >&2; exit 2; }
mkdir -p "$WORK"
T0=$(date +%s)

# the datasets: subsets of the training set, the full test set
"$PY" "$ROOT/experiments/fmnist_npy.py" "$WORK/lenet" "$LENET_N"
"$PY" "$ROOT/experiments/fmnist_npy.py" "$WORK/resnet" "$RESNET_N"

RES=$WORK/results.csv
echo "model,format,seed,accuracy,seconds" > "$RES"
for model in lenet5 resnet8; do
  data=$WORK/lenet
  [ $model = resnet8 ] && data=$WORK/resnet
  for fmt in fp32 int4 ternary; do
    for seed in $SEEDS; do
      case $fmt in
        fp32) q="--optimizer adam" ;;
        int4) q="--passes quantize-int4,build-training{optimizer=adam}" ;;
        ternary) q="--optimizer adam --ternary" ;;
      esac
      csv=$WORK/$model-$fmt-$seed.csv
      s0=$(date +%s)
      # shellcheck disable=SC2086
      "$NIBBLE" train "$ROOT/models/${model}_init.onnx" --data "npy:$data" --epochs "$EPOCHS" \
        --lr 0.001 --batch 64 --seed "$seed" --threads "$THREADS" --metrics "$csv" \
        --export "$WORK/$model-$fmt-$seed.onnx" $q > "$WORK/$model-$fmt-$seed.log" 2>&1
      s1=$(date +%s)
      acc=$(awk -F, '$1 == "epoch" { a = $8 } END { print a }' "$csv")
      echo "$model,$fmt,$seed,$acc,$((s1 - s0))" >> "$RES"
      echo "$model $fmt seed $seed: test accuracy $acc ($((s1 - s0)) s)"
    done
  done
done

# post-training quantization of the trained models
PTQ=$WORK/ptq.csv
echo "model,setting,accuracy" > "$PTQ"
for model in lenet5 resnet8; do
  for setting in fp32 int4 ternary ternary-all; do
    case $setting in
      fp32) passes="" ;;
      int4) passes="default,quantize-int4,pack-int4" ;;
      ternary) passes="default,quantize-ternary,pack-ternary" ;;
      ternary-all) passes="default,quantize-ternary{skip-first-last=0},pack-ternary" ;;
    esac
    m=$ROOT/models/$model.onnx
    if [ -n "$passes" ]; then
      "$NIBBLE" convert "$m" -o "$WORK/ptq-$model-$setting.onnx" --passes "$passes" > /dev/null
      m=$WORK/ptq-$model-$setting.onnx
    fi
    rm -rf "$WORK/ptq-out"
    "$NIBBLE" run "$m" --input "input=$WORK/lenet/x_test.npy" --output-dir "$WORK/ptq-out" \
      --threads "$THREADS" > /dev/null
    acc=$("$PY" -c "import numpy as np,sys; y=np.load(sys.argv[1]); l=np.load(sys.argv[2]); print('%.4f' % (y.argmax(1)==l).mean())" \
      "$WORK/ptq-out/logits.npy" "$WORK/lenet/y_test.npy")
    echo "$model,$setting,$acc" >> "$PTQ"
    echo "post-training $model $setting: $acc"
  done
done
T1=$(date +%s)

"$PY" "$ROOT/experiments/ternary_report.py" "$RES" "$PTQ" "$OUT" \
  --lenet-n "$LENET_N" --resnet-n "$RESNET_N" --epochs "$EPOCHS" --seconds $((T1 - T0))
echo "wrote $OUT ($((T1 - T0)) s)"
