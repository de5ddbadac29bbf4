#!/bin/sh
# run_bench_load.sh BENCH_LOAD DIR - time nbl_model_load of DIR/resnet18.onnx (inline
# weights) and DIR/resnet18_ext.onnx (external data) against reading the files once.
set -eu
"$1" "$2/resnet18.onnx" --repeat 10
echo
"$1" "$2/resnet18_ext.onnx" --repeat 10
