#!/usr/bin/python3
"""check_sizes.py - the file-size targets of ternary weights (issue 17) on the
reference ResNet-18 (torchvision, exported by tests/ref/prepare.sh):

  nibble convert --passes default,quantize-ternary,pack-ternary
      (first and last layers 8-bit)           at most 0.09x of the FP32 file;
  ... quantize-ternary{skip-first-last=0} ... (every layer ternary) at most 0.07x;

and, for the record, the 2-bit packing and INT4 (pack-int4). Prints the sizes.
Exit 0 pass, 1 fail, 77 skip (no reference models and no way to make them).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))


def main():
    build_root = os.environ.get("NBL_BUILD_ROOT", os.path.join(ROOT, "build"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--nibble", default=os.environ.get("NIBBLE",
                                                       os.path.join(build_root, "tools", "nibble")))
    ap.add_argument("--refdir", default=os.path.join(build_root, "ref-models"))
    ap.add_argument("--model", default="resnet18")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.refdir, "manifest.json")):
        r = subprocess.run(["sh", os.path.join(ROOT, "tests", "ref", "prepare.sh"), args.refdir])
        if r.returncode == SKIP:
            return SKIP
        if r.returncode != 0:
            print("check_sizes.py: prepare.sh failed", file=sys.stderr)
            return 1
    with open(os.path.join(args.refdir, "manifest.json")) as f:
        manifest = {e["name"]: e for e in json.load(f)["models"]}
    if args.model not in manifest:
        print("check_sizes.py: %s not in the reference models: skipped" % args.model,
              file=sys.stderr)
        return SKIP
    fp32 = os.path.join(args.refdir, manifest[args.model]["model"])
    n32 = os.path.getsize(fp32)
    cases = [("ternary, first/last 8-bit", "default,quantize-ternary,pack-ternary", 0.09),
             ("ternary, every layer", "default,quantize-ternary{skip-first-last=0},pack-ternary",
              0.07),
             ("ternary, 2 bits a weight", "default,quantize-ternary,pack-ternary{packing=2bit}",
              None),
             ("INT4", "default,quantize-int4,pack-int4", None)]
    fails = 0
    print("%s: FP32 %d bytes" % (args.model, n32))
    with tempfile.TemporaryDirectory() as tmp:
        for i, (what, passes, limit) in enumerate(cases):
            out = os.path.join(tmp, "m%d.onnx" % i)
            r = subprocess.run([args.nibble, "convert", fp32, "-o", out, "--passes", passes],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print("  %s: nibble convert failed: %s" % (what, r.stderr.strip()[-300:]))
                fails += 1
                continue
            ratio = os.path.getsize(out) / n32
            ok = limit is None or ratio <= limit
            fails += not ok
            print("  %-26s %9d bytes  %.3fx%s" % (what, os.path.getsize(out), ratio,
                                                 "" if limit is None else
                                                 "  (target <= %.2fx: %s)" % (limit,
                                                                             "ok" if ok else "FAIL")))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
