#!/usr/bin/python3
"""check_lowered_mse.py - QuantizeInt4 with scale_source=mse (the grid's top
pulled in to the clip of least estimated squared error, runtime/formats/int4.h)
lowered to standard ONNX gives ONNX Runtime the same values as nibble, bit
for bit.

Models X -> ai.nibble QuantizeInt4{scale_source=mse, mode affine|symmetric,
bits 4|8} -> Y on tensors below and above the sample size
(NBL_Q4_MSE_SAMPLE = 16384: every element, or blocks of 64 at a stride),
with a leading dimension left symbolic in one of them: post-ReLU-like data
(a third exact zeros, a heavy tail, a few outliers) for affine, signed data
for symmetric, and evenly spread data (a clip near the top). nibble runs
them (fast kernels and --reference), `nibble convert --passes lower-to-onnx`
lowers them and ONNX Runtime (tests/ref/ort_run.js) runs the result. Pass:
every element equal (bits) between nibble's two paths and ONNX Runtime, and
the clip taken where the data has outliers (the largest |y| below 0.9
max|x|: not silently max). Exit 0 pass, 1 fail, 77 skip (no
node/onnxruntime-node, onnx or numpy)."""
import os
import shutil
import sys
import tempfile

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
try:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from lowered_run import run_lowered
except ImportError:
    print("check_lowered_mse.py: numpy or onnx missing: skipped", file=sys.stderr)
    sys.exit(SKIP)


def model(path, mode, bits, shape):
    node = helper.make_node("QuantizeInt4", ["x"], ["y"], name="q", domain="ai.nibble", mode=mode,
                            scale_source="mse", bits=bits)
    g = helper.make_graph([node], "qmse", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.nibble", 1)])
    m.ir_version = 8
    onnx.save(m, path)


def data(rng, kind, shape):
    n = int(np.prod(shape))
    if kind == "relu":
        x = rng.standard_normal(n).astype(np.float32) * 1.3 + 0.2
        x = np.maximum(x, 0) ** 1.5
        x[rng.integers(0, n, 5)] *= 6.0  # outliers
    elif kind == "signed":
        x = rng.laplace(0, 1.0, n).astype(np.float32)
        x[rng.integers(0, n, 3)] = 40.0
    else:  # evenly spread
        x = np.linspace(-1.0, 3.0, n, dtype=np.float32)
        rng.shuffle(x)
    return x.astype(np.float32).reshape(shape)


def main():
    nibble = os.environ.get("NIBBLE") or os.path.join(ROOT, "build", "tools", "nibble")
    if len(sys.argv) > 2 and sys.argv[1] == "--nibble":
        nibble = sys.argv[2]
    if not shutil.which("node"):
        print("check_lowered_mse.py: node not installed: skipped", file=sys.stderr)
        return SKIP
    rng = np.random.default_rng(11)
    cases = [("affine", 4, "relu", [1000], None), ("affine", 4, "relu", [70001], None),
             ("affine", 4, "relu", [3, 16, 28, 28], "N"), ("affine", 8, "relu", [20000], None),
             ("symmetric", 4, "signed", [50000], None), ("symmetric", 4, "signed", [777], None),
             ("affine", 4, "even", [40000], None), ("symmetric", 4, "even", [5000], None)]
    tmp = tempfile.mkdtemp(prefix="nbl-mse-")
    failed = 0
    try:
        for k, (mode, bits, kind, shape, sym) in enumerate(cases):
            d = os.path.join(tmp, "c%d" % k)
            os.makedirs(d)
            src = os.path.join(d, "q.onnx")
            model(src, mode, bits, [sym] + shape[1:] if sym else shape)
            x = data(rng, kind, shape)
            np.save(os.path.join(d, "x.npy"), x)
            res = run_lowered(nibble, d, src, ["y"])
            if res is None:
                print("check_lowered_mse.py: onnxruntime-node not installed: skipped", file=sys.stderr)
                return SKIP
            outs = {k: v["y"] for k, v in res[0].items()}
            lm, ort = res[1], outs["ort"]
            errs = []
            if outs["fast"].tobytes() != outs["ref"].tobytes():
                errs.append("fast vs reference: %d elements differ" % int((outs["fast"] != outs["ref"]).sum()))
            if outs["fast"].tobytes() != ort.tobytes():
                errs.append("nibble vs ONNX Runtime: %d elements differ (max |diff| %g)" %
                            (int((outs["fast"] != ort).sum()), float(np.abs(outs["fast"] - ort).max())))
            top, mx = float(np.abs(outs["fast"]).max()), float(np.abs(x).max())
            if kind != "even" and not top < 0.9 * mx:
                errs.append("no clip: top level %g of max|x| %g" % (top, mx))
            print("%-9s %d bits %-6s %-16s top %.4g of max|x| %.4g (%.3f), %d nodes lowered: %s" %
                  (mode, bits, kind, "x".join(map(str, shape)), top, mx, top / mx, len(lm.graph.node),
                   "; ".join(errs) if errs else "same bits"))
            failed += bool(errs)
    finally:
        if not os.environ.get("NBL_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
    print("%d cases, %d failed" % (len(cases), failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
