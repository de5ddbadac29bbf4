#!/usr/bin/python3
"""Export torchvision's ResNet-18 (random weights, torch.manual_seed(0)) with PyTorch
(opset 13) to OUTDIR/resnet18.onnx, and the same model with external data to
OUTDIR/resnet18_ext.onnx + OUTDIR/resnet18_ext.onnx.data.
Usage: gen_resnet.py OUTDIR"""
import os
import sys

import onnx
import torch
import torchvision


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torchvision.models.resnet18()
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    path = os.path.join(out, "resnet18.onnx")
    torch.onnx.export(model, x, path, opset_version=13, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    m = onnx.load(path)
    ext = os.path.join(out, "resnet18_ext.onnx")
    if os.path.exists(ext + ".data"):
        os.remove(ext + ".data")
    onnx.save_model(m, ext, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="resnet18_ext.onnx.data", size_threshold=1024)
    return 0


if __name__ == "__main__":
    sys.exit(main())
