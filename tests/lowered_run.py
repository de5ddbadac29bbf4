"""lowered_run.py - the common steps of the scripts that check a lowering
against ONNX Runtime (tests/int4/check_lowered_mse.py,
tests/log4/check_lowered_log.py): nibble runs a model with ai.nibble ops on
its fast kernels and with --reference, `nibble convert --passes
lower-to-onnx` lowers it, and ONNX Runtime (tests/ref/ort_run.js) runs the
lowered model, all on the input x = DIR/x.npy."""
import os
import subprocess

import numpy as np
import onnx

ORT_JS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ref", "ort_run.js")


def run_lowered(nibble, d, src, names):
    """Returns ({"fast": {name: array}, "ref": ..., "ort": ...}, the lowered
    ModelProto) for the outputs `names`, or None when onnxruntime-node is not
    installed. Raises RuntimeError when a command fails and AssertionError
    when the lowered model still has an ai.nibble op."""
    x = "x=" + os.path.join(d, "x.npy")
    outs = {}
    for tag, extra in (("fast", []), ("ref", ["--reference"])):
        od = os.path.join(d, tag)
        r = subprocess.run([nibble, "run", src, "--input", x, "--output-dir", od] + extra, capture_output=True,
                           text=True)
        if r.returncode:
            raise RuntimeError("nibble run: " + r.stderr)
        outs[tag] = {n: np.load(os.path.join(od, n + ".npy")) for n in names}
    low = os.path.join(d, "low.onnx")
    r = subprocess.run([nibble, "convert", src, "-o", low, "--passes", "lower-to-onnx"], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError("nibble convert: " + r.stderr)
    lm = onnx.load(low)
    assert all(n.domain in ("", "ai.onnx") for n in lm.graph.node), "ai.nibble op left"
    od = os.path.join(d, "ort")
    r = subprocess.run(["node", ORT_JS, "run", low, "--input", x, "--output-dir", od], capture_output=True, text=True)
    if r.returncode == 2 and "not installed" in r.stderr:
        return None
    if r.returncode:
        raise RuntimeError("ort_run.js: " + r.stderr)
    outs["ort"] = {n: np.load(os.path.join(od, n + ".npy")) for n in names}
    return outs, lm
