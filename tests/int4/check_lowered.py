#!/usr/bin/python3
"""check_lowered.py - INT4 models lowered to standard ONNX run in ONNX Runtime
and agree with nibble's reference path.

usage: /usr/bin/python3 check_lowered.py [--nibble PATH] [--refdir DIR]
           [--models resnet18,mobilenet_v2] [--inputs N] [--tol T]

For each model of the reference set (tests/ref/export_models.py):
  1. nibble convert MODEL --passes quantize-int4            -> q.onnx (ai.nibble ops)
  2. nibble convert q.onnx --passes lower-to-onnx          -> lowered.onnx (opset 21)
  3. nibble convert q.onnx --passes pack-int4               -> packed.onnx (sizes)
  4. on N inputs (the exported input and N-1 perturbed copies, seeded):
     nibble run q.onnx --reference --dump-tensors  vs  node ort_run.js run on
     lowered.onnx with every quantized activation added as a graph output.
     Pass: the same top-1 class for every input; every quantized activation
     within one code step of nibble's (|ort - nibble| <= s, s = the tensor's
     scale: a rounding tie decided differently after float reassociation in
     a convolution moves a code by one step, nothing more); and the output
     relative error max|nibble - ort| / max|ort| <= T (default 1e-2) whenever
     no code moved. When codes moved (4-bit MobileNetV2 amplifies one flipped
     code through the following layers) the output error is reported, with
     the number of moved codes, and bounded by --flip-tol (default 0.25).
Prints a table with errors, top-1 agreement and file sizes (FP32, lowered,
and the quantized layers' FP32 weights vs their packed INT4 codes, which must
be <= 0.15x). Exit 0 pass, 1 fail, 77 skip (node, ONNX Runtime, torch or
numpy missing).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))

try:
    import numpy as np
    import onnx
except ImportError:
    print("check_lowered.py: numpy or onnx not installed: skipped", file=sys.stderr)
    sys.exit(SKIP)


def safe_name(n):
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in n)


def expose_quantized(src, dst):
    """Copy of the lowered model with every quantized activation (outputs of
    DequantizeLinear named *_q4 / *_q8 by quantize-int4) as a graph output."""
    m = onnx.load(src)
    have = {o.name for o in m.graph.output}
    names = []
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and re.search(r"_q[48](_\d+)?$", n.output[0]) \
                and n.output[0] not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n.output[0],
                                                                     onnx.TensorProto.FLOAT, None))
            names.append(n.output[0])
    onnx.save(m, dst)
    return names


def sh(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), r.returncode,
                                                    r.stderr.strip()[-2000:]))
    return r.stdout + r.stderr


def main():
    build_root = os.environ.get("NBL_BUILD_ROOT", os.path.join(ROOT, "build"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--nibble", default=os.environ.get("NIBBLE",
                                                       os.path.join(build_root, "tools", "nibble")))
    ap.add_argument("--refdir", default=os.path.join(build_root, "ref-models"))
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--flip-tol", type=float, default=0.25)
    args = ap.parse_args()
    if shutil.which("node") is None:
        print("check_lowered.py: node not installed: skipped", file=sys.stderr)
        return SKIP
    r = subprocess.run(["sh", os.path.join(ROOT, "tests", "ref", "prepare.sh"), args.refdir])
    if r.returncode == SKIP:
        return SKIP
    if r.returncode != 0:
        print("check_lowered.py: prepare.sh failed", file=sys.stderr)
        return 1
    with open(os.path.join(args.refdir, "manifest.json")) as f:
        manifest = {e["name"]: e for e in json.load(f)["models"]}
    ort_js = os.path.join(ROOT, "tests", "ref", "ort_run.js")
    failed = False
    rng = np.random.default_rng(0)
    print("%-14s %5s %10s %6s %7s %10s %12s %10s %10s %10s" %
          ("model", "input", "rel.err", "top-1", "moved", "max step", "fp32 bytes", "lowered",
           "int4 codes", "codes/fp32"))
    for name in args.models.split(","):
        e = manifest.get(name)
        if e is None:
            print("%s: not in %s" % (name, args.refdir), file=sys.stderr)
            return 1
        model = os.path.join(args.refdir, e["model"])
        in_name, in_file = next(iter(e["inputs"].items()))
        x0 = np.load(os.path.join(args.refdir, in_file)).astype(np.float32)
        with tempfile.TemporaryDirectory(prefix="nbl_int4_") as tmp:
            q = os.path.join(tmp, "q.onnx")
            low = os.path.join(tmp, "lowered.onnx")
            packed = os.path.join(tmp, "packed.onnx")
            sh([args.nibble, "convert", model, "-o", q, "--passes", "quantize-int4"])
            sh([args.nibble, "convert", q, "-o", low, "--passes", "lower-to-onnx",
                "--verify-each"])
            log = sh([args.nibble, "convert", q, "-o", packed, "--passes", "pack-int4"])
            m = re.search(r"packed (\d+) weight\(s\) into INT4: (\d+) bytes \(FP32 (\d+) bytes",
                          log)
            codes, fp32w = (int(m.group(2)), int(m.group(3))) if m else (0, 1)
            ratio = codes / fp32w
            lowx = os.path.join(tmp, "lowered_x.onnx")
            qnames = expose_quantized(low, lowx)
            for k in range(args.inputs):
                x = x0 if k == 0 else (x0 * rng.uniform(0.5, 1.5) +
                                       rng.normal(0, 0.5, x0.shape)).astype(np.float32)
                xf = os.path.join(tmp, "x%d.npy" % k)
                np.save(xf, x)
                nd, od = os.path.join(tmp, "n%d" % k), os.path.join(tmp, "o%d" % k)
                dd = os.path.join(tmp, "d%d" % k)
                sh([args.nibble, "run", q, "--reference", "--input", "%s=%s" % (in_name, xf),
                    "--output-dir", nd, "--dump-tensors", dd])
                sh(["node", ort_js, "run", lowx, "--input", "%s=%s" % (in_name, xf),
                    "--output-dir", od, "--threads", "1"])
                moved, max_step = 0, 0.0
                for qn in qnames:
                    a = np.load(os.path.join(dd, safe_name(qn) + ".npy")).astype(np.float64)
                    b = np.load(os.path.join(od, safe_name(qn) + ".npy")).astype(np.float64)
                    qmax = 7.0 if re.search(r"_q4(_\d+)?$", qn) else 127.0
                    step = max(np.abs(a).max(), np.abs(b).max()) / qmax
                    if step <= 0:
                        continue
                    d = np.abs(a - b) / step
                    moved += int((d > 0.5).sum())
                    max_step = max(max_step, float(d.max()))
                for out in e["outputs"]:
                    a = np.load(os.path.join(nd, safe_name(out) + ".npy")).astype(np.float64)
                    b = np.load(os.path.join(od, safe_name(out) + ".npy")).astype(np.float64)
                    err = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
                    top = bool((a.argmax(-1) == b.argmax(-1)).all())
                    ok = (top and ratio <= 0.15 and max_step <= 1.0 + 1e-3 and
                          err <= (args.tol if moved == 0 else args.flip_tol))
                    failed |= not ok
                    print("%-14s %5d %10.3e %6s %7d %10.3f %12d %10d %10d %10.4f%s" %
                          (name, k, err, "same" if top else "DIFF", moved, max_step,
                           os.path.getsize(model), os.path.getsize(low), codes, ratio,
                           "" if ok else "  FAIL"))
                    sys.stdout.flush()
                shutil.rmtree(dd, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
