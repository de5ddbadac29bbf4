#!/usr/bin/python3
"""lenet_ptq.py - post-training INT4 quantization of the shipped LeNet-5 keeps
Fashion-MNIST test accuracy within 2 points of FP32.

usage: /usr/bin/python3 lenet_ptq.py [--nibble PATH] [--data DIR] [--passes P]
(the suite runs it twice: the default passes, and quantize-int4{skip-first-last=0})

Reads the 10,000 test images (t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz
from Debian's dataset-fashion-mnist), normalizes them as models/README.md says,
runs `nibble run` on models/lenet5.onnx (FP32) and on the model after
`nibble convert --passes PASSES` (default quantize-int4, whose defaults are:
INT4 SAWB weights, INT4 affine activations, first and last layers in 8 bits;
post-ReLU activations use all 16 codes that way, where symmetric codes waste
the negative half), on the full test set in batches of 1000, and
compares top-1 accuracy. Also checks the pack-int4 form (packed INT4 weights
feeding DequantizeLinear) gives exactly the same logits as the fake-quantized
model. Exit 0 pass, 1 fail, 77 skip (numpy or the data set missing).
"""
import argparse
import gzip
import os
import subprocess
import sys
import tempfile

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))

try:
    import numpy as np
except ImportError:
    print("lenet_ptq.py: numpy not installed: skipped", file=sys.stderr)
    sys.exit(SKIP)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def sh(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr.strip()))
    return r.stdout + r.stderr


def logits(nibble, model, batches, tmp, tag):
    out = []
    for i, xf in enumerate(batches):
        od = os.path.join(tmp, "%s%d" % (tag, i))
        sh([nibble, "run", model, "--input", "input=" + xf, "--output-dir", od, "--threads", "2"])
        out.append(np.load(os.path.join(od, "logits.npy")))
    return np.concatenate(out)


def main():
    build_root = os.environ.get("NBL_BUILD_ROOT", os.path.join(ROOT, "build"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--nibble", default=os.environ.get("NIBBLE",
                                                       os.path.join(build_root, "tools", "nibble")))
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--passes", default="quantize-int4")
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    img = os.path.join(args.data, "t10k-images-idx3-ubyte.gz")
    lab = os.path.join(args.data, "t10k-labels-idx1-ubyte.gz")
    if not os.path.isfile(img) or not os.path.isfile(lab):
        print("lenet_ptq.py: %s not found: skipped" % img, file=sys.stderr)
        return SKIP
    x = read_idx(img).astype(np.float32)
    y = read_idx(lab).astype(np.int64)
    x = ((x / 255.0 - 0.2860) / 0.3530).astype(np.float32).reshape(-1, 1, 28, 28)
    model = os.path.join(ROOT, "models", "lenet5.onnx")
    with tempfile.TemporaryDirectory(prefix="nbl_ptq_") as tmp:
        batches = []
        for i in range(0, len(x), args.batch):
            f = os.path.join(tmp, "b%d.npy" % i)
            np.save(f, x[i:i + args.batch])
            batches.append(f)
        q = os.path.join(tmp, "q.onnx")
        p = os.path.join(tmp, "p.onnx")
        log = sh([args.nibble, "convert", model, "-o", q, "--passes", args.passes])
        log += sh([args.nibble, "convert", q, "-o", p, "--passes", "pack-int4"])
        sys.stdout.write(log)
        fp = logits(args.nibble, model, batches, tmp, "f")
        qi = logits(args.nibble, q, batches, tmp, "q")
        pk = logits(args.nibble, p, batches, tmp, "p")
        acc_fp = 100.0 * float((fp.argmax(1) == y).mean())
        acc_q = 100.0 * float((qi.argmax(1) == y).mean())
        agree = 100.0 * float((fp.argmax(1) == qi.argmax(1)).mean())
        same_packed = bool(np.array_equal(qi, pk))
        print("LeNet-5 Fashion-MNIST, %d test images" % len(y))
        print("  FP32 accuracy:            %.2f %%" % acc_fp)
        print("  INT4 (%s) accuracy: %.2f %% (drop %.2f points)" % (args.passes, acc_q,
                                                                    acc_fp - acc_q))
        print("  top-1 agreement FP32/INT4: %.2f %%" % agree)
        print("  pack-int4 logits identical to fake-quant: %s" % same_packed)
        print("  file sizes: FP32 %d bytes, packed INT4 %d bytes" % (os.path.getsize(model),
                                                                     os.path.getsize(p)))
        ok = acc_fp - acc_q <= 2.0 and same_packed
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
