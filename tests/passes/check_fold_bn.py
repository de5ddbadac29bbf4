#!/usr/bin/python3
"""fold-batchnorm + dce on a torchvision ResNet-18 exported with its 20
BatchNormalization nodes kept (TrainingMode.PRESERVE, no constant folding,
random running statistics so the folding has something to do): every
BatchNormalization is gone, the IR verifies after each pass, and the outputs of
`nibble run` before and after agree (relative error <= 1e-4), as do ONNX
Runtime's on the folded model when onnxruntime-node is installed.
Exit 0 pass, 1 fail, 77 skip (no torch/torchvision/onnx)."""
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import onnx
    import torch
    import torchvision
except ImportError as e:
    print("check_fold_bn: %s: skipped" % e)
    sys.exit(77)

NIBBLE = os.environ["NIBBLE"]
ROOT = os.environ.get("NBL_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print("FAILED: %s\n%s%s" % (" ".join(cmd), r.stdout, r.stderr))
        sys.exit(1)
    return r.stdout


def main():
    torch.manual_seed(0)
    m = torchvision.models.resnet18()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    m.eval()
    with tempfile.TemporaryDirectory(prefix="nbl-foldbn-") as d:
        src, dst = os.path.join(d, "r18.onnx"), os.path.join(d, "r18.folded.onnx")
        x = torch.randn(2, 3, 224, 224)
        torch.onnx.export(m, x, src, opset_version=13, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE,
                          input_names=["input"], output_names=["output"])
        n_bn = sum(n.op_type == "BatchNormalization" for n in onnx.load(src).graph.node)
        if n_bn != 20:
            print("export kept %d BatchNormalization nodes, expected 20" % n_bn)
            return 1
        stats = run([NIBBLE, "convert", src, "-o", dst, "--passes", "fold-batchnorm,dce",
                     "--verify-each", "--pass-stats"])
        print(stats)
        folded = onnx.load(dst)
        left = [n.name for n in folded.graph.node if n.op_type == "BatchNormalization"]
        if left:
            print("BatchNormalization left after fold-batchnorm: %s" % left)
            return 1
        onnx.checker.check_model(folded)
        inp = os.path.join(d, "x.npy")
        np.save(inp, x.numpy())
        outs = {}
        for name, model in (("before", src), ("after", dst)):
            od = os.path.join(d, name)
            run([NIBBLE, "run", model, "--input", "input=" + inp, "--output-dir", od])
            outs[name] = np.load(os.path.join(od, "output.npy"))
        want = m(x).detach().numpy()
        worst = 0.0
        for name, got in outs.items():
            rel = float(np.abs(got - want).max() / np.abs(want).max())
            worst = max(worst, rel)
            print("%-6s nibble vs PyTorch: relative error %.3g" % (name, rel))
        rel = float(np.abs(outs["after"] - outs["before"]).max() / np.abs(outs["before"]).max())
        print("folded vs unfolded (nibble): relative error %.3g" % rel)
        ort = os.path.join(ROOT, "tests", "ref", "ort_run.js")
        if os.path.isdir(os.path.join(ROOT, "node_modules", "onnxruntime-node")):
            od = os.path.join(d, "ort")
            run(["node", ort, "run", dst, "--input", "input=" + inp, "--output-dir", od])
            got = np.load(os.path.join(od, os.listdir(od)[0]))
            r2 = float(np.abs(got - outs["after"]).max() / np.abs(got).max())
            print("folded model, ONNX Runtime vs nibble: relative error %.3g" % r2)
            worst = max(worst, r2)
        if max(worst, rel) > 1e-4:
            print("FAIL: error above 1e-4")
            return 1
        print("fold-batchnorm: 20 BatchNormalization nodes folded, outputs unchanged")
        print("1 passed, 0 failed")
        return 0


if __name__ == "__main__":
    sys.exit(main())
