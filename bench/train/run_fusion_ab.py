#!/usr/bin/python3
"""run_fusion_ab.py - the training-graph fusions (runtime/fusions/fuse_bn_act.c,
fuse_bn_grad.c, fuse_log_pair.c) on and off in one run: one training step
(batch 64) of LeNet-5 and ResNet-8, FP32 (build-training) and 4-bit (the
pipeline of `nibble train --int4 --log4-grad=tpr`), 1 and 2 threads, with
the fusions (default) and without (NBL_NO_FUSION=all: the unfused graph, the
same build); interleaved rounds, a fresh process each. Then one profiled run
of each setting for the time per op type. Writes a Markdown report.

usage: bench/train/run_fusion_ab.py BUILD [--base BASE_BUILD] [--rounds R] [--runs N] [--threads 1,2]
                                      [--out FILE]

--base: a build of the code before the fusions (its bench/bench_train), run
as a third setting in the same rounds.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
P4 = "quantize-int4,build-training,quantize-grad-log4{rounding=tpr},int4-backward"
PIPES = [("fp32", "build-training"), ("4-bit", P4)]
MODELS = ["lenet5", "resnet8"]
# the op types the fusions replace, and the fused nodes
OPS = ["BatchNormInternal", "Relu", "QuantizeInt4", "Add", "QuantizeInt4Grad", "ReluGrad",
       "BatchNormalizationGrad", "QuantizeLog"]


def run(build, model, pipe, threads, fused, runs, profile):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    env.pop("NBL_NO_FUSION", None)
    if fused == 0:
        env["NBL_NO_FUSION"] = "all"
    cmd = [os.path.join(build, "bench", "bench_train"), os.path.join(ROOT, "models", model + "_init.onnx"),
           "--passes", pipe, "--data", os.path.join(ROOT, "models/data/fmnist_test_100.npy"),
           os.path.join(ROOT, "models/data/fmnist_test_100_labels.npy"), "--threads", str(threads), "--runs",
           str(runs), "--warmup", "3"]
    if profile:
        cmd.append("--profile=0")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    res = json.loads([l for l in out.stdout.splitlines() + out.stderr.splitlines() if l.startswith("{")][-1])
    ops = {}
    if profile:
        for line in (out.stdout + out.stderr).splitlines():
            f = line.split()
            if len(f) >= 5 and f[1] == "gradient":
                try:
                    ops[f[0]] = (int(f[2]), float(f[3]))
                except ValueError:
                    pass
    return res, ops


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--base", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", default=os.path.join(HERE, "fusion_ab.md"))
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    keys = [(m, p, t) for m in MODELS for p in PIPES for t in threads]
    variants = (0, 1, 2) if a.base else (0, 1)  # unfused, fused, base build
    builds = {0: a.build, 1: a.build, 2: a.base}
    wall = {(k, f): [] for k in keys for f in variants}
    cpu = {(k, f): [] for k in keys for f in variants}
    up0 = uptime()
    for r in range(a.rounds):
        for k in keys:
            for f in variants if r % 2 == 0 else tuple(reversed(variants)):
                res, _ = run(builds[f], k[0], k[1][1], k[2], f, a.runs, False)
                wall[(k, f)].append(res["median_ms"])
                cpu[(k, f)].append(res.get("cpu_median_ms", float("nan")))
        print("round", r + 1, "done", file=sys.stderr)
    prof = {}
    for k in keys:
        for f in (0, 1):
            prof[(k, f)] = run(a.build, k[0], k[1][1], k[2], f, a.runs, True)[1]
    up1 = uptime()
    med = statistics.median
    lines = ["# Training-graph fusions on and off (bench/train/run_fusion_ab.py)", "",
             "- load before: `%s`" % up0, "- load after: `%s`" % up1,
             "- batch 64; unfused = the same build with NBL_NO_FUSION=all; each figure is the median over %d rounds"
             " (alternating order) of the median of %d steps (after 3 warm-up steps), fresh process each" %
             (a.rounds, a.runs), "",
             "| model | pipeline | threads | unfused ms | fused ms | fused / unfused | fastest unfused | fastest fused |"
             " CPU ms unfused | CPU ms fused |" + (" base ms | fastest base | CPU ms base | fused / base |" if a.base else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if a.base else "")]
    for k in keys:
        u, f = med(wall[(k, 0)]), med(wall[(k, 1)])
        line = "| %s | %s | %d | %.2f | %.2f | **%.2f** | %.2f | %.2f | %.2f | %.2f |" % (
            k[0], k[1][0], k[2], u, f, f / u, min(wall[(k, 0)]), min(wall[(k, 1)]), med(cpu[(k, 0)]), med(cpu[(k, 1)]))
        if a.base:
            b = med(wall[(k, 2)])
            line += " %.2f | %.2f | %.2f | **%.2f** |" % (b, min(wall[(k, 2)]), med(cpu[(k, 2)]), f / b)
        lines.append(line)
    lines += ["", "Time per op type (ms per step, one profiled run of %d steps each; fused nodes by their op type):" %
              a.runs, ""]
    for k in keys:
        if k[0] != "resnet8":
            continue
        u, f = prof[(k, 0)], prof[(k, 1)]
        lines.append("%s %s, %d thread(s):" % (k[0], k[1][0], k[2]))
        lines.append("")
        lines.append("| op | nodes unfused | ms unfused | nodes fused | ms fused |")
        lines.append("|---|---|---|---|---|")
        names = [o for o in OPS if o in u or o in f] + sorted(o for o in f if ("+" in o or "*" in o))
        tu = tf = 0.0
        for o in names:
            nu, mu = u.get(o, (0, 0.0))
            nf, mf = f.get(o, (0, 0.0))
            tu += mu
            tf += mf
            lines.append("| %s | %d | %.3f | %d | %.3f |" % (o, nu, mu, nf, mf))
        lines.append("| **sum** | | **%.3f** | | **%.3f** |" % (tu, tf))
        lines.append("")
    lines.append("All rounds (ms): " + "; ".join("%s/%s/%dt/%s %s" % (k[0], k[1][0], k[2], ("unfused", "fused", "base")[f],
                                                                     ",".join("%.1f" % x for x in wall[(k, f)]))
                                              for k in keys for f in variants))
    with open(a.out, "w") as fo:
        fo.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
