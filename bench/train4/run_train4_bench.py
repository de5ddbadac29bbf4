#!/usr/bin/python3
"""run_train4_bench.py - one training step (batch 64) of LeNet-5 and ResNet-8:
nibble's 4-bit step against nibble's FP32 step and PyTorch 1.13's FP32 step,
on the same threads, in one run; writes bench/train4/results.md.

usage: bench/train4/run_train4_bench.py BUILD [--threads 1,2] [--rounds R]
                                        [--runs N] [--warmup W] [--out FILE]

Settings (models/lenet5_init.onnx, models/resnet8_init.onnx, SGD):
  PyTorch FP32   bench/train4/torch_step.py: the same module and weights, eager mode
  nibble FP32    build-training
  nibble 4-bit   quantize-int4, build-training, quantize-grad-log4{rounding=tpr},
                 int4-backward (what `nibble train --int4 --log4-grad=tpr` runs):
                 INT4 weights (SAWB) and activations, first/last layers 8 bits,
                 radix-4 log gradients with two-phase rounding, the backward
                 products of the inner layers and the forward convolutions of
                 quantized operands in integers
  4-bit, float backward products: the same without int4-backward (context)
A step is forward, loss, backward, optimizer update, gradients reset, on the
first 64 shipped Fashion-MNIST test images (models/data). Each setting
reports the median of N timed steps after W warm-up steps (a fresh process);
the settings run interleaved, R rounds, and the table shows the median over
the rounds; a second table takes the fastest step of all rounds, the better
estimate of the uncontended time on a loaded machine. OPENBLAS_NUM_THREADS
and OMP_NUM_THREADS are set to the thread count for every process, and
OMP_WAIT_POLICY=PASSIVE: on a shared machine with more runnable threads than
cores, PyTorch's OpenMP threads spin-waiting at the ends of parallel regions
made its 2-thread step 20 to 40 times slower than its 1-thread step
(measured: LeNet-5 730 ms against 36 ms with PASSIVE, load average 22 on 2
cores); nibble's thread pool does not use OpenMP. The load average (uptime)
is recorded before and after.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
PY = "/usr/bin/python3"
P4 = "quantize-int4,build-training,quantize-grad-log4{rounding=tpr}"
SETTINGS = [
    ("torch", "PyTorch FP32", None),
    ("fp32", "nibble FP32", "build-training"),
    ("int4", "nibble 4-bit", P4 + ",int4-backward"),
    ("int4f", "4-bit, float bwd", P4),
]


def machine():
    name = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d logical CPUs, %s" % (name, os.cpu_count() or 0, platform.platform())


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_one(build, key, model, threads, args, x, y):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OMP_WAIT_POLICY="PASSIVE")
    common = ["--threads", str(threads), "--batch", "64", "--warmup", str(args.warmup), "--runs", str(args.runs)]
    if key == "torch":
        cmd = [PY, os.path.join(HERE, "torch_step.py"), model, x, y] + common
    else:
        pipe = dict((k, p) for k, _, p in SETTINGS)[key]
        cmd = [os.path.join(build, "bench", "bench_train4"), os.path.join(ROOT, "models", model + "_init.onnx"),
               pipe, x, y] + common
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit("run_train4_bench.py: %s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr.strip()[-400:]))
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("build")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--models", default="lenet5,resnet8")
    ap.add_argument("--out", default=os.path.join(HERE, "results.md"))
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    x = os.path.join(ROOT, "models", "data", "fmnist_test_100.npy")
    y = os.path.join(ROOT, "models", "data", "fmnist_test_100_labels.npy")
    threads = [int(t) for t in args.threads.split(",")]
    models = args.models.split(",")
    version = subprocess.run([os.path.join(build, "tools", "nibble"), "--version"], capture_output=True,
                             text=True).stdout.strip().replace("\n", "; ")
    load0, date = uptime(), datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC")
    times, best, cpu = {}, {}, {}
    torch_version = "?"
    for rnd in range(args.rounds):
        for t in threads:
            for m in models:
                for key, _, _ in SETTINGS:
                    res = run_one(build, key, m, t, args, x, y)
                    torch_version = res.get("torch_version", torch_version)
                    times.setdefault((m, t, key), []).append(res["median_ms"])
                    best[(m, t, key)] = min(best.get((m, t, key), float("inf")), res["min_ms"])
                    cpu.setdefault((m, t, key), []).append(res["cpu_median_ms"])
                    print("round %d  %-8s %d thread(s)  %-18s %9.2f ms" %
                          (rnd + 1, m, t, dict((k, n) for k, n, _ in SETTINGS)[key], res["median_ms"]), flush=True)
    load1 = uptime()
    med = {k: statistics.median(v) for k, v in times.items()}
    out = []
    out.append("# One training step: nibble 4-bit vs nibble FP32 vs PyTorch FP32\n")
    out.append("Written by `bench/train4/run_train4_bench.py` (see its header for the settings).\n")
    out.append("- date: %s" % date)
    out.append("- machine: %s" % machine())
    out.append("- nibble: %s" % version)
    out.append("- PyTorch: %s (eager, `torch.set_num_threads(T)`)" % torch_version)
    out.append("- load before: `%s`" % load0)
    out.append("- load after: `%s`" % load1)
    out.append("- batch 64, SGD; each figure is the median over %d rounds of the median of %d steps "
               "(after %d warm-up steps), in ms\n" % (args.rounds, args.runs, args.warmup))
    out.append("| model | threads | PyTorch FP32 | nibble FP32 | nibble 4-bit | 4-bit, float bwd | "
               "4-bit / PyTorch | 4-bit / nibble FP32 | nibble FP32 / PyTorch |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for m in models:
        for t in threads:
            tp, f, q, qf = (med[(m, t, k)] for k in ("torch", "fp32", "int4", "int4f"))
            out.append("| %s | %d | %.2f | %.2f | %.2f | %.2f | **%.2f** | %.2f | %.2f |" %
                       (m, t, tp, f, q, qf, q / tp, q / f, f / tp))
    out.append("\nFastest step of all rounds (ms):\n")
    out.append("| model | threads | PyTorch FP32 | nibble FP32 | nibble 4-bit | 4-bit, float bwd | "
               "4-bit / PyTorch | 4-bit / nibble FP32 | nibble FP32 / PyTorch |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for m in models:
        for t in threads:
            tp, f, q, qf = (best[(m, t, k)] for k in ("torch", "fp32", "int4", "int4f"))
            out.append("| %s | %d | %.2f | %.2f | %.2f | %.2f | **%.2f** | %.2f | %.2f |" %
                       (m, t, tp, f, q, qf, q / tp, q / f, f / tp))
    out.append("\nCPU time per step at 1 thread (median over the rounds of the median; at one thread the "
               "CPU time is what the step costs, whatever else runs on the machine):\n")
    out.append("| model | PyTorch FP32 | nibble FP32 | nibble 4-bit | 4-bit, float bwd | "
               "4-bit / PyTorch | 4-bit / nibble FP32 | nibble FP32 / PyTorch |")
    out.append("|---|---|---|---|---|---|---|---|")
    for m in models:
        if 1 not in threads:
            continue
        tp, f, q, qf = (statistics.median(cpu[(m, 1, k)]) for k in ("torch", "fp32", "int4", "int4f"))
        out.append("| %s | %.2f | %.2f | %.2f | %.2f | **%.2f** | %.2f | %.2f |" % (m, tp, f, q, qf, q / tp, q / f, f / tp))
    out.append("\nTarget (issue 16): the 4-bit step at most 0.5 of PyTorch's FP32 step.")
    out.append("\nAll rounds (ms): " + "; ".join(
        "%s/%dt/%s %s" % (m, t, k, ",".join("%.1f" % v for v in times[(m, t, k)]))
        for m in models for t in threads for k, _, _ in SETTINGS))
    text = "\n".join(out) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
