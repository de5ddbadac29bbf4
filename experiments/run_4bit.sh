#!/usr/bin/env bash
# experiments/run_4bit.sh - the 4-bit training table of issue 16: Fashion-MNIST,
# LeNet-5 and ResNet-8 trained from the shipped untrained weights
# (models/*_init.onnx) by `nibble train`, 3 seeds each, in nine settings:
#   fp32        FP32
#   int4        INT4 weights and activations only (--int4)
#   log4        INT4 + log radix-4 gradients, nearest rounding
#   tpr         ... two-phase rounding
#   stochastic  ... stochastic rounding
#   luq         INT4 + LUQ (radix 2, stochastic underflow and rounding)
#   linear      INT4 + linear INT4 gradients (quantize-grad-log4{format=int4}:
#               QuantizeInt4 on the gradients, per-tensor max scale, half-even)
#   radix2      INT4 + log radix-2 gradients (nearest, 3 exponent bits)
#   radix10     INT4 + log radix-10 gradients (nearest, 3 exponent bits)
#   ternary     ternary weights and INT8 absmax activations from scratch
#               (nibble train --ternary: quantize-ternary, BitNet b1.58),
#               float gradients
# Gradient quantizers sit on the output gradients of every Conv/Gemm but the
# first and last and the 1x1 convolutions (kept in float: quantize-grad-log4's
# skip-first-last and skip-1x1), the INT4 forward keeps the first and last in
# 8 bits (quantize-int4's default), as the paper.
#
# Same schedule everywhere: SGD with momentum 0.9, batch 64, cosine learning
# rate; the seed sets the data order (and the stochastic quantizers' seed).
# Budget (CPU time per training sample on one core, from bench/train: LeNet-5 0.04 ms,
# ResNet-8 about 0.7 ms in FP32 and 0.5 ms in 4-bit; roughly 20-30 minutes for the 60 runs on 2
# idle cores, two hours or more at nice 19 on a loaded machine):
#   LeNet-5   all 60,000 training images, 4 epochs, lr 0.02; test: all 10,000
#   ResNet-8  the first 30,000 images of a fixed shuffle (seed 0), 2 epochs,
#             lr 0.05; test: the first 10,000 test images
# (The shorter budget of the first table, experiments/results_short.md:
#  LENET_EPOCHS=2 RESNET_TRAIN=10000 RESNET_EPOCHS=1 RESNET_TEST=5000.)
# A run whose metrics CSV already ends with its last epoch's row is not run
# again (so an interrupted table resumes); FRESH=1, or an empty RESULTS
# folder, reruns everything.
# Override with LENET_EPOCHS, LENET_TRAIN, LENET_TEST (a subset of a fixed
# shuffle instead of the whole set), RESNET_TRAIN, RESNET_TEST, RESNET_EPOCHS,
# SEEDS, JOBS (runs in parallel, each on one thread; default 2), CONFIGS,
# MODELS, RESULTS and REPORT_DIR (where the CSVs and the table/plot go);
# PTQ=0 skips the post-training part.
#
# Then, post-training quantization (PTQ=1, seconds): the shipped trained
# models/lenet5.onnx and models/resnet8.onnx, converted without training to
# INT4 (quantize-int4), ternary (quantize-ternary, first/last 8-bit) and
# ternary in every layer, and their accuracy on all 10,000 test images: the
# collapse that is why BitNet trains ternary weights from scratch.
#
# Writes experiments/results/<model>_<config>_s<seed>.csv (nibble's metrics),
# experiments/results/ptq.csv, experiments/results.md (the tables, machine and
# date) and experiments/loss_curves.png (mean training loss of the seeds).
# Smoke run (a minute): SEEDS=1 LENET_TRAIN=640 LENET_TEST=500 RESNET_TRAIN=320
#   RESNET_TEST=200 RESULTS=/tmp/r REPORT_DIR=/tmp/r experiments/run_4bit.sh
# Usage: experiments/run_4bit.sh [NIBBLE]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
NIBBLE=${1:-$root/build/tools/nibble}
PY=/usr/bin/python3
OUT=${RESULTS:-$here/results}
REPORT_DIR=${REPORT_DIR:-$here}
WORK=${WORK:-$root/build/experiments}
SEEDS=${SEEDS:-"1 2 3"}
JOBS=${JOBS:-2}
LENET_EPOCHS=${LENET_EPOCHS:-4}
LENET_TRAIN=${LENET_TRAIN:-60000}
LENET_TEST=${LENET_TEST:-10000}
PTQ=${PTQ:-1}
FRESH=${FRESH:-0}
RESNET_EPOCHS=${RESNET_EPOCHS:-2}
RESNET_TRAIN=${RESNET_TRAIN:-30000}
RESNET_TEST=${RESNET_TEST:-10000}
CONFIGS=${CONFIGS:-"fp32 int4 log4 tpr stochastic luq linear radix2 radix10 ternary"}
MODELS=${MODELS:-"lenet5 resnet8"}
mkdir -p "$OUT" "$WORK" "$REPORT_DIR"
[ -d /usr/share/datasets/fashion-mnist ] || { echo "run_4bit.sh: Fashion-MNIST not installed (dataset-fashion-mnist)"; exit 2; }
[ -x "$NIBBLE" ] || { echo "run_4bit.sh: no nibble at $NIBBLE (build first)" >&2; exit 2; }
$PY "$here/fmnist_subset.py" "$WORK/resnet_subset" "$RESNET_TRAIN" "$RESNET_TEST"
lenet_data=fashion-mnist
if [ "$LENET_TRAIN" != 60000 ] || [ "$LENET_TEST" != 10000 ]; then
  $PY "$here/fmnist_subset.py" "$WORK/lenet_subset" "$LENET_TRAIN" "$LENET_TEST"
  lenet_data="npy:$WORK/lenet_subset"
fi

# the arguments of one setting (seed $2)
config_args() {
  case $1 in
    fp32) echo "" ;;
    int4) echo "--int4" ;;
    log4) echo "--int4 --passes quantize-grad-log4{rounding=nearest}" ;;
    tpr) echo "--int4 --passes quantize-grad-log4{rounding=tpr}" ;;
    stochastic) echo "--int4 --passes quantize-grad-log4{rounding=stochastic,seed=$2}" ;;
    luq) echo "--int4 --passes quantize-grad-log4{rounding=luq,seed=$2}" ;;
    linear) echo "--int4 --passes quantize-grad-log4{format=int4}" ;;
    radix2) echo "--int4 --passes quantize-grad-log4{radix=2}" ;;
    radix10) echo "--int4 --passes quantize-grad-log4{radix=10}" ;;
    ternary) echo "--ternary" ;;
    *) echo "run_4bit.sh: unknown setting $1" >&2; exit 2 ;;
  esac
}

jobs_file=$WORK/jobs.txt
: > "$jobs_file"
for model in $MODELS; do
  for seed in $SEEDS; do
    for cfg in $CONFIGS; do
      case $model in
        lenet5) data="$lenet_data"; ep=$LENET_EPOCHS; lr=0.02 ;;
        resnet8) data="npy:$WORK/resnet_subset"; ep=$RESNET_EPOCHS; lr=0.05 ;;
      esac
      csv=$OUT/${model}_${cfg}_s${seed}.csv
      if [ "$FRESH" != 1 ] && [ -f "$csv" ] && grep -q "^epoch,$ep," "$csv"; then
        continue
      fi
      echo "$NIBBLE train $root/models/${model}_init.onnx --data $data --epochs $ep --batch 64 --optimizer momentum --lr $lr --schedule cosine --seed $seed --threads 1 --log-every 10 --metrics $csv $(config_args "$cfg" "$seed") > $WORK/${model}_${cfg}_s${seed}.log 2>&1 || echo FAILED ${model}_${cfg}_s${seed}" >> "$jobs_file"
    done
  done
done
echo "run_4bit.sh: $(wc -l < "$jobs_file") runs to do, $JOBS at a time; logs in $WORK"
start=$(date +%s)
# longest first (ResNet-8), so the two workers end together
tac "$jobs_file" | xargs -P "$JOBS" -I{} sh -c '{}'
end=$(date +%s)
echo "run_4bit.sh: the runs took $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s"

# post-training quantization of the shipped trained models
ptq_args=""
if [ "$PTQ" = 1 ]; then
  $PY "$here/fmnist_subset.py" "$WORK/test_all" 1 10000
  ptq=$OUT/ptq.csv
  echo "model,setting,accuracy" > "$ptq"
  for model in $MODELS; do
    for setting in fp32 int4 ternary ternary-all; do
      case $setting in
        fp32) passes="" ;;
        int4) passes="default,quantize-int4,pack-int4" ;;
        ternary) passes="default,quantize-ternary,pack-ternary" ;;
        ternary-all) passes="default,quantize-ternary{skip-first-last=0},pack-ternary" ;;
      esac
      m=$root/models/$model.onnx
      if [ -n "$passes" ]; then
        "$NIBBLE" convert "$m" -o "$WORK/ptq-$model-$setting.onnx" --passes "$passes" > /dev/null
        m=$WORK/ptq-$model-$setting.onnx
      fi
      rm -rf "$WORK/ptq-out"
      "$NIBBLE" run "$m" --input "input=$WORK/test_all/x_test.npy" --output-dir "$WORK/ptq-out" \
        --threads 1 > /dev/null
      acc=$($PY -c "import numpy as np,sys; y=np.load(sys.argv[1]); l=np.load(sys.argv[2]); print('%.4f' % (y.argmax(1)==l).mean())" \
        "$WORK/ptq-out/logits.npy" "$WORK/test_all/y_test.npy")
      echo "$model,$setting,$acc" >> "$ptq"
    done
  done
  ptq_args="--ptq $ptq"
fi
# shellcheck disable=SC2086
$PY "$here/report_4bit.py" "$OUT" "$REPORT_DIR/results.md" "$REPORT_DIR/loss_curves.png" $ptq_args \
  --note "LeNet-5: $LENET_TRAIN training images, $LENET_EPOCHS epochs, lr 0.02, test on $LENET_TEST; ResNet-8: $RESNET_TRAIN training images (fixed shuffle), $RESNET_EPOCHS epoch(s), lr 0.05, test on the first $RESNET_TEST; SGD momentum 0.9, batch 64, cosine schedule; seeds $SEEDS; each run on one thread, $JOBS at a time" \
  --configs "$CONFIGS" --models "$MODELS"
