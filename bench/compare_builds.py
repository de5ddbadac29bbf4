#!/usr/bin/env python3
"""compare_builds.py - latency of two nibble builds in one run (issue 14: the
restructured runtime must be no slower than the build before it).

usage: /usr/bin/python3 bench/compare_builds.py --old OLD_NIBBLE --new NEW_NIBBLE
           [--refdir BUILD/ref-models] [--rounds 7] [--repeat 10] [--threads 1]
           [--old-label TEXT] [--new-label TEXT] [--out FILE.md]

For ResNet-18 and MobileNetV2 (tests/ref/prepare.sh's reference models) in
FP32 and in INT4 (quantize-int4, written once by the new build and run by
both), the two binaries run alternately, round after round, each run doing
`nibble run --repeat R` on the model's input. Two figures per run:
  - the mean time of the runs after the first, as `nibble run` prints it
    (wall clock of the session's runs, no loading);
  - the process's CPU time (user + system, from wait4), which includes
    loading but counts only cycles this process got: on a shared machine it
    moves less with the neighbours than the wall clock.
The table gives per setting the median over rounds of each build and the
ratio new/old (below 1: the new build is faster). Interleaving puts both
builds under the same load; the machine's load average is written too.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

MODELS = ["resnet18", "mobilenet_v2"]


def measure(nibble, model, inp, repeat, threads):
    with tempfile.TemporaryFile(mode="w+") as out:
        p = subprocess.Popen([nibble, "run", model, "--input", "input=" + inp, "--repeat", str(repeat),
                              "--threads", str(threads)], stdout=out, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = status  # reaped here, so Popen does not wait again
        out.seek(0)
        text = out.read()
    if status != 0:
        raise RuntimeError("%s %s failed:\n%s" % (nibble, model, text))
    m = re.search(r"mean of the next \d+ runs ([0-9.]+) ms", text)
    if not m:
        raise RuntimeError("no timing line in the output of %s:\n%s" % (nibble, text))
    return float(m.group(1)), ru.ru_utime + ru.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--refdir", default="build/ref-models")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--old-label", default="old", help="what the old build is, for the report")
    ap.add_argument("--new-label", default="new", help="what the new build is, for the report")
    ap.add_argument("--out")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="nbl_cmp_")
    settings = []
    for name in MODELS:
        src = os.path.join(a.refdir, name, "model.onnx")
        inp = os.path.join(a.refdir, name, "inputs", "input.npy")
        if not os.path.exists(src):
            print("compare_builds.py: %s missing (tests/ref/prepare.sh makes it)" % src, file=sys.stderr)
            return 2
        q = os.path.join(tmp, name + "_int4.onnx")
        subprocess.run([a.new, "convert", src, "-o", q, "--passes", "quantize-int4"], check=True,
                       stdout=subprocess.DEVNULL)
        settings += [(name, "FP32", src, inp), (name, "INT4", q, inp)]
    res = {(s[0], s[1], b): ([], []) for s in settings for b in ("old", "new")}
    load0 = os.getloadavg()
    t0 = time.time()
    for r in range(a.rounds):
        for name, fmt, model, inp in settings:
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for b in order:
                ms, cpu = measure(a.old if b == "old" else a.new, model, inp, a.repeat, a.threads)
                res[(name, fmt, b)][0].append(ms)
                res[(name, fmt, b)][1].append(cpu)
    load1 = os.getloadavg()
    lines = ["| model | format | old ms | new ms | new/old | old CPU s | new CPU s | new/old (CPU) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, fmt, _, _ in settings:
        om, nm = (statistics.median(res[(name, fmt, b)][0]) for b in ("old", "new"))
        oc, nc = (statistics.median(res[(name, fmt, b)][1]) for b in ("old", "new"))
        lines.append("| %s | %s | %.2f | %.2f | %.3f | %.3f | %.3f | %.3f |" % (name, fmt, om, nm, nm / om, oc, nc,
                                                                              nc / oc))
    head = ("# Old build vs new build\n\n%s, %s thread(s), %d rounds (alternating order) of `nibble run --repeat %d`; "
            "medians. Load average %.1f at the start, %.1f at the end; %.0f s.\n\nold: %s\nnew: %s\n\n"
            % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), a.threads, a.rounds, a.repeat, load0[0],
               load1[0], time.time() - t0, a.old_label, a.new_label))
    text = head + "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
