#!/usr/bin/python3
"""report_4bit.py - the table and the loss-curve plot of experiments/run_4bit.sh.

usage: report_4bit.py RESULTS_DIR OUT.md OUT.png [--note TEXT] [--configs "..."] [--models "..."]
                      [--ptq PTQ.csv]

Reads RESULTS_DIR/<model>_<config>_s<seed>.csv (nibble train --metrics) and
writes OUT.md: per setting and model the final test accuracy, mean +- sample
standard deviation over the seeds (and min..max), its difference from FP32,
and the mean wall time of a run; plus the machine and the date. OUT.png: the
training loss (mean over the seeds of each logged window) against the update
count, one panel per model, one line per setting. With --ptq, a second table:
the post-training accuracy of the trained models (columns model,setting,accuracy)."""
import argparse
import csv
import datetime
import glob
import os
import platform
import re
import statistics
import subprocess

NAMES = {
    "fp32": "FP32",
    "int4": "INT4 forward only",
    "log4": "INT4 + radix-4 gradients (nearest)",
    "tpr": "INT4 + radix-4, TPR",
    "stochastic": "INT4 + radix-4, stochastic",
    "luq": "INT4 + LUQ (radix 2, stochastic)",
    "linear": "INT4 + linear INT4 gradients",
    "radix2": "INT4 + radix-2 gradients (nearest)",
    "radix10": "INT4 + radix-10 gradients (nearest)",
    "ternary": "ternary weights, INT8 activations",
}
PTQ_NAMES = {
    "fp32": "FP32",
    "int4": "INT4 (`quantize-int4`, first/last 8-bit)",
    "ternary": "ternary (`quantize-ternary`, first/last 8-bit)",
    "ternary-all": "ternary, every layer (`skip-first-last=0`)",
}
MODEL_NAMES = {"lenet5": "LeNet-5", "resnet8": "ResNet-8"}


def read(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    steps = [(int(r["global_step"]), float(r["loss"])) for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    if not epochs:
        return None
    return {"acc": 100.0 * float(epochs[-1]["test_accuracy"]), "seconds": float(epochs[-1]["seconds"]),
            "steps": steps}


def machine():
    cpu = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        if m:
            cpu = m.group(1).strip()
    except OSError:
        pass
    return "%s, %d cores visible (shared with other work), %s" % (cpu, os.cpu_count() or 0, platform.platform())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("md")
    ap.add_argument("png")
    ap.add_argument("--note", default="")
    ap.add_argument("--configs", default=" ".join(NAMES))
    ap.add_argument("--models", default="lenet5 resnet8")
    ap.add_argument("--ptq", default="")
    a = ap.parse_args()
    configs, models = a.configs.split(), a.models.split()
    data = {}
    for m in models:
        for c in configs:
            runs = []
            for p in sorted(glob.glob(os.path.join(a.results, "%s_%s_s*.csv" % (m, c)))):
                r = read(p)
                if r:
                    runs.append(r)
            data[m, c] = runs
    lines = ["# 4-bit training on Fashion-MNIST", "",
             "Made by `experiments/run_4bit.sh` on %s." % datetime.date.today().isoformat(), "",
             "Machine: %s." % machine(), ""]
    if a.note:
        lines += [a.note + ".", ""]
    head = "| setting |"
    sep = "|---|"
    for m in models:
        head += " %s test accuracy (%%) | vs FP32 |" % MODEL_NAMES.get(m, m)
        sep += "---|---|"
    head += " s per run (%s) |" % ", ".join(MODEL_NAMES.get(m, m) for m in models)
    sep += "---|"
    lines += [head, sep]
    base = {m: statistics.mean([r["acc"] for r in data[m, "fp32"]]) if data.get((m, "fp32")) else None
            for m in models}
    for c in configs:
        row = "| %s |" % NAMES.get(c, c)
        secs = []
        for m in models:
            runs = data[m, c]
            if not runs:
                row += " (no runs) | |"
                continue
            accs = [r["acc"] for r in runs]
            mean = statistics.mean(accs)
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            row += " %.2f ± %.2f (%.2f–%.2f, n=%d) |" % (mean, sd, min(accs), max(accs), len(accs))
            row += " %+.2f |" % (mean - base[m]) if base[m] is not None and c != "fp32" else " |"
            secs.append("%.0f" % statistics.mean([r["seconds"] for r in runs]))
        row += " %s |" % " / ".join(secs)
        lines.append(row)
    lines += ["", "± is the sample standard deviation over the seeds; the range is min–max. "
              "\"vs FP32\" is the difference of the means in percentage points.", ""]
    if a.ptq:
        with open(a.ptq) as f:
            ptq = list(csv.DictReader(f))
        lines += ["## Post-training quantization of the trained models", "",
                  "`models/lenet5.onnx` and `models/resnet8.onnx` (trained in FP32), quantized "
                  "without training; accuracy (%) on the 10,000 test images.", "",
                  "| model | " + " | ".join(PTQ_NAMES.values()) + " |",
                  "|---|" + "---|" * len(PTQ_NAMES)]
        for m in models:
            cells = []
            for s in PTQ_NAMES:
                r = [x for x in ptq if x["model"] == m and x["setting"] == s]
                cells.append("%.2f" % (100.0 * float(r[0]["accuracy"])) if r else "")
            lines.append("| %s | %s |" % (MODEL_NAMES.get(m, m), " | ".join(cells)))
        lines.append("")
    with open(a.md, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report_4bit.py: matplotlib missing: no plot")
        return 0
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.4), squeeze=False)
    for ax, m in zip(axes[0], models):
        for c in configs:
            runs = data[m, c]
            if not runs:
                continue
            n = min(len(r["steps"]) for r in runs)
            xs = [runs[0]["steps"][i][0] for i in range(n)]
            ys = [statistics.mean(r["steps"][i][1] for r in runs) for i in range(n)]
            ax.plot(xs, ys, label=NAMES.get(c, c), linewidth=1.2 if c != "fp32" else 2.0,
                    linestyle="--" if c in ("linear", "radix2", "radix10") else ":" if c == "ternary" else "-")
        ax.set_title("%s on Fashion-MNIST" % MODEL_NAMES.get(m, m))
        ax.set_xlabel("update")
        ax.set_ylabel("training loss (mean of %d seeds)" % len(data[m, configs[0]] or [0]))
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(a.png, dpi=72)
    try:  # a palette PNG: a third of the bytes, for the repository
        from PIL import Image
        Image.open(a.png).convert("RGB").quantize(colors=64).save(a.png, optimize=True)
    except ImportError:
        pass
    print("plot: %s" % a.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
