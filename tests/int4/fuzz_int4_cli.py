#!/usr/bin/python3
"""fuzz_int4_cli.py - byte-mutated INT4 models through the command line.

Makes LeNet-5 with INT4 quantizers and packed INT4 weights (`nibble convert
models/lenet5.onnx --passes quantize-int4` and then `pack-int4`), then
overwrites 1 to 4 random bytes of each file (half of them in the first 3000
and last 1000 bytes, where the graph's structure is), seeded, COUNT times
(default 100),
and runs every mutant through `nibble run` (the fused INT4 path and
`--reference`) and `nibble convert --passes lower-to-onnx --verify-each`.
A mutant may load and run, or be refused; it must never crash: every exit
status is 0, 1 or 2 and no sanitizer report appears (the suite runs this
under AddressSanitizer and UndefinedBehaviorSanitizer too).

usage: /usr/bin/python3 fuzz_int4_cli.py [--count N] [--seed S]
Exit 0 pass, 1 fail (the failing mutants are kept in a directory it names),
77 skip (numpy missing).
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    print("fuzz_int4_cli.py: numpy not installed: skipped")
    sys.exit(77)

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
NIBBLE = os.environ.get("NIBBLE") or os.path.join(
    os.environ.get("NBL_BUILD_ROOT", os.path.join(ROOT, "build")), "tools", "nibble")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="nbl-fuzz4-")
    q = os.path.join(d, "q.onnx")
    packed = os.path.join(d, "packed.onnx")
    for src, dst, passes in ((os.path.join(ROOT, "models", "lenet5.onnx"), q, "quantize-int4"),
                             (q, packed, "pack-int4")):
        r = subprocess.run([NIBBLE, "convert", src, "-o", dst, "--passes", passes],
                           capture_output=True)
        if r.returncode != 0:
            print("fuzz_int4_cli.py: nibble convert --passes %s failed" % passes)
            return 1
    x = os.path.join(d, "x.npy")
    np.save(x, np.load(os.path.join(ROOT, "models", "data", "fmnist_test_100.npy"))[:4])
    rnd = random.Random(args.seed)
    seeds = [open(q, "rb").read(), open(packed, "rb").read()]
    codes = {}
    bad = 0
    for i in range(args.count):
        b = bytearray(seeds[i % 2])
        for _ in range(rnd.randint(1, 4)):
            # half the bytes anywhere (mostly weights), half in the first 3000 and the
            # last 1000 bytes (the nodes, attributes, names, types and opsets)
            pos = rnd.randrange(len(b)) if rnd.random() < 0.5 else \
                rnd.choice([rnd.randrange(min(3000, len(b))), len(b) - 1 - rnd.randrange(1000)])
            b[pos] = rnd.randrange(256)
        f = os.path.join(d, "m%d.onnx" % i)
        with open(f, "wb") as fh:
            fh.write(b)
        cmds = [[NIBBLE, "run", f, "--input", "input=" + x],
                [NIBBLE, "run", f, "--input", "input=" + x, "--reference"],
                [NIBBLE, "convert", f, "-o", os.path.join(d, "out.onnx"), "--passes",
                 "lower-to-onnx", "--verify-each"]]
        keep = False
        for cmd in cmds:
            r = subprocess.run(cmd, capture_output=True, timeout=300)
            err = r.stderr.decode("utf-8", "replace")
            codes[r.returncode] = codes.get(r.returncode, 0) + 1
            if r.returncode not in (0, 1, 2) or "Sanitizer" in err or "runtime error" in err:
                bad += 1
                keep = True
                print("FAIL mutant %d: %s: exit %d\n%s" % (i, " ".join(cmd[1:2] + cmd[3:]),
                                                          r.returncode, err[-1500:]))
        if not keep:
            os.remove(f)
    print("%d mutants, %d runs, exit statuses %s, %d failures" %
          (args.count, 3 * args.count, dict(sorted(codes.items())), bad))
    if bad:
        print("failing mutants kept in %s" % d)
        return 1
    shutil.rmtree(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
