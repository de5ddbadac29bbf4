#!/usr/bin/python3
"""ternary_report.py RESULTS.csv PTQ.csv OUT.md [--lenet-n N] [--resnet-n N] [--epochs E]
[--seconds S] - the markdown report of experiments/run_ternary.sh."""
import argparse
import csv
import datetime
import platform
import statistics


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("ptq")
    ap.add_argument("out")
    ap.add_argument("--lenet-n", type=int, default=0)
    ap.add_argument("--resnet-n", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=0)
    ap.add_argument("--seconds", type=int, default=0)
    a = ap.parse_args()
    rows = list(csv.DictReader(open(a.results)))
    ptq = list(csv.DictReader(open(a.ptq)))
    names = {"fp32": "FP32", "int4": "INT4 (first/last 8-bit)", "ternary": "ternary (first/last 8-bit)"}
    models = {"lenet5": "LeNet-5", "resnet8": "ResNet-8"}
    out = []
    out.append("# Ternary weights on Fashion-MNIST (experiments/run_ternary.sh)\n")
    out.append("%s, %s, %d cores online; %d s in all.\n" % (
        datetime.date.today().isoformat(), cpu_name(), __import__("os").cpu_count() or 0, a.seconds))
    out.append("## Trained from scratch\n")
    out.append("From the shipped initial weights (`models/*_init.onnx`), Adam lr 1e-3, batch 64, "
               "%d epochs on the first %d (LeNet-5) / %d (ResNet-8) training images; test accuracy "
               "on all 10,000 test images after the last epoch; seeds of the data order 0, 1, 2.\n"
               % (a.epochs, a.lenet_n, a.resnet_n))
    out.append("| model | weights | seed 0 | seed 1 | seed 2 | mean | vs FP32 | s per run |")
    out.append("|---|---|---|---|---|---|---|---|")
    for m in models:
        base = None
        for f in names:
            r = [x for x in rows if x["model"] == m and x["format"] == f]
            acc = [100.0 * float(x["accuracy"]) for x in r if x["accuracy"]]
            if not acc:
                continue
            mean = statistics.mean(acc)
            if f == "fp32":
                base = mean
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            cells = ["%.2f %%" % v for v in acc] + [""] * (3 - len(acc))
            secs = statistics.mean(float(x["seconds"]) for x in r)
            out.append("| %s | %s | %s | %.2f ± %.2f %% | %s | %.0f |" % (
                models[m], names[f], " | ".join(cells[:3]), mean, sd,
                "" if f == "fp32" or base is None else "%+.2f" % (mean - base), secs))
    out.append("")
    out.append("## Post-training quantization of the trained models\n")
    out.append("`models/lenet5.onnx` and `models/resnet8.onnx` (trained in FP32), quantized without "
               "training; accuracy on the 10,000 test images.\n")
    settings = {"fp32": "FP32", "int4": "INT4 (`quantize-int4`, first/last 8-bit)",
                "ternary": "ternary (`quantize-ternary`, first/last 8-bit)",
                "ternary-all": "ternary, every layer (`skip-first-last=0`)"}
    out.append("| model | " + " | ".join(settings.values()) + " |")
    out.append("|---|" + "---|" * len(settings))
    for m in models:
        cells = []
        for s in settings:
            r = [x for x in ptq if x["model"] == m and x["setting"] == s]
            cells.append("%.2f %%" % (100.0 * float(r[0]["accuracy"])) if r else "")
        out.append("| %s | %s |" % (models[m], " | ".join(cells)))
    out.append("")
    open(a.out, "w").write("\n".join(out))


if __name__ == "__main__":
    main()
