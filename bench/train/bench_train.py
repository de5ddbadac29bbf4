#!/usr/bin/python3
"""bench_train.py - nibble vs PyTorch: training step time and peak memory, FP32 or 4-bit.

usage: bench/train/bench_train.py --nibble NIBBLE --bench BENCH_TRAIN [--int4] [--rounds R] [--runs N]
                                  [--warmup W] [--threads 1,2] [--models lenet5,resnet8]
                                  [--out FILE] [--note TEXT]

Both modes time one training step (batch 64) of models/<name>_init.onnx in a
fresh process per setting and round: nibble through bench_train (the C API),
PyTorch 1.13 through torch_train_step.py (the module of models/make_models.py
with the same weights, eager), OMP_NUM_THREADS and OPENBLAS_NUM_THREADS = T.

FP32 (default; writes bench/train/results.md; defaults R 3, N 30, W 5).
For each model (models/<name>_init.onnx) and thread count, R rounds; in each
round nibble (bench_train on the model after build-training{optimizer=momentum})
and PyTorch (torch_train_step.py) each run W warm-up and N timed steps of batch
64 in a process of their own, in alternating order. A step is forward, mean
cross-entropy, backward and an SGD-with-momentum update (lr 0.01, 0.9).
OMP_NUM_THREADS and OPENBLAS_NUM_THREADS are T for both.
Reported: the median over rounds of each round's median step time (and the
best round's median), the CPU time per step (all threads), the ratio nibble / PyTorch of those medians, the peak
resident set of each process (VmHWM: the whole process, PyTorch's includes its
libraries) and its growth during the steps (peak minus the resident set after
the model was loaded, before the first step), and the ratios. The machine, the
date and the load (uptime) before and after the run are written with them.

4-bit (--int4; writes bench/train/results_4bit.md; defaults R 3, N 10, W 3).
nibble's 4-bit step against nibble's FP32 step and PyTorch's FP32 step, plain
SGD (lr 0.01), on the first 64 shipped Fashion-MNIST test images (models/data):
  PyTorch FP32   torch_train_step.py --momentum 0
  nibble FP32    bench_train --passes build-training
  nibble 4-bit   --passes quantize-int4{activations=mse},build-training,
                 quantize-grad-log4{rounding=tpr},int4-backward (what `nibble train
                 --int4 --log4-grad=tpr` runs): INT4 weights (SAWB) and activations
                 (affine, clipped where the squared error is least), first/last layers 8 bits,
                 radix-4 log gradients with two-phase rounding, the backward
                 products of the inner layers and the forward convolutions of
                 quantized operands in integers
  4-bit, stochastic: the same with stochastic rounding of the gradients
                 (`--log4-grad=stochastic`, the most accurate radix-4 rule of the
                 experiments' table)
  4-bit, float backward products: the TPR pipeline without int4-backward (context)
A step is forward, loss, backward, optimizer update, gradients reset. Each
setting reports the median of N timed steps after W warm-up steps; the
settings run interleaved, R rounds, and the table shows the median over the
rounds; a second table takes the fastest step of all rounds, the better
estimate of the uncontended time on a loaded machine; a third the CPU time per
step at 1 thread. OMP_WAIT_POLICY=PASSIVE for every process: on a shared
machine with more runnable threads than cores, PyTorch's OpenMP threads
spin-waiting at the ends of parallel regions made its 2-thread step 20 to 40
times slower than its 1-thread step (measured: LeNet-5 730 ms against 36 ms
with PASSIVE, load average 22 on 2 cores); nibble's thread pool does not use
OpenMP. The load average (uptime) is recorded before and after.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))


P4 = "quantize-int4{activations=mse},build-training,quantize-grad-log4{rounding=tpr}"
P4S = "quantize-int4{activations=mse},build-training,quantize-grad-log4{rounding=stochastic},int4-backward"
SETTINGS4 = [  # --int4: key, column, bench_train --passes (None: PyTorch)
    ("torch", "PyTorch FP32", None),
    ("fp32", "nibble FP32", "build-training"),
    ("int4", "nibble 4-bit", P4 + ",int4-backward"),
    ("int4s", "4-bit, stochastic", P4S),
    ("int4f", "4-bit, float bwd", P4),
]


def run_json(cmd, threads, extra_env=None):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), **(extra_env or {}))
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env)
    if r.returncode != 0:
        raise SystemExit("bench_train.py: %s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr))
    return json.loads(r.stdout.strip().splitlines()[-1])


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def load():
    return "%.2f %.2f %.2f" % os.getloadavg()


def uptime():
    return subprocess.run(["uptime"], stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nibble", required=True)
    ap.add_argument("--bench", required=True, help="BUILD/bench/bench_train")
    ap.add_argument("--int4", action="store_true", help="the 4-bit comparison (results_4bit.md)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--models", default="lenet5,resnet8")
    ap.add_argument("--out", help="where the markdown goes (default: results.md, with --int4 results_4bit.md)")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    if args.runs is None:
        args.runs = 10 if args.int4 else 30
    if args.warmup is None:
        args.warmup = 3 if args.int4 else 5
    if args.out is None:
        args.out = os.path.join(HERE, "results_4bit.md" if args.int4 else "results.md")
    threads = [int(t) for t in args.threads.split(",")]
    models = args.models.split(",")
    return main_int4(args, threads, models) if args.int4 else main_fp32(args, threads, models)


def main_fp32(args, threads, models):
    """nibble FP32 vs PyTorch with SGD + momentum on a random batch: time and memory."""
    tmp = tempfile.mkdtemp(prefix="nbl_bench_train_")
    train = {}
    for m in models:
        train[m] = os.path.join(tmp, m + "_train.onnx")
        r = subprocess.run([args.nibble, "convert", os.path.join(ROOT, "models", m + "_init.onnx"), "-o", train[m],
                            "--passes", "build-training{loss=cross-entropy,optimizer=momentum,momentum=0.9}"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        if r.returncode != 0:
            raise SystemExit("bench_train.py: build-training of %s failed: %s" % (m, r.stderr))
    version = subprocess.run([args.nibble, "--version"], stdout=subprocess.PIPE, universal_newlines=True).stdout
    start, load0, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load(), time.time()
    res = {}
    for rnd in range(args.rounds):
        for m in models:
            for t in threads:
                nib = [args.bench, train[m], "--threads", str(t), "--warmup", str(args.warmup), "--runs", str(args.runs)]
                tor = ["/usr/bin/python3", os.path.join(HERE, "torch_train_step.py"), m, "--threads", str(t),
                       "--warmup", str(args.warmup), "--runs", str(args.runs)]
                pair = [("nibble", nib), ("torch", tor)]
                if rnd % 2:
                    pair.reverse()
                for who, cmd in pair:
                    res.setdefault((m, t, who), []).append(run_json(cmd, t))
                print("round %d %s %d thread(s): nibble %.2f ms, PyTorch %.2f ms" %
                      (rnd + 1, m, t, res[(m, t, "nibble")][-1]["median_ms"], res[(m, t, "torch")][-1]["median_ms"]),
                      file=sys.stderr)
    load1, minutes = load(), (time.time() - t0) / 60
    shutil.rmtree(tmp, ignore_errors=True)
    tv = res[(models[0], threads[0], "torch")][0]["torch_version"]
    kern = [ln for ln in version.splitlines() if "FP32" in ln or "kernels" in ln]
    out = ["# Training step: nibble vs PyTorch (batch 64, SGD with momentum)", "",
           "Machine: %s, %d online cores; %s. Run: %s, %.0f minutes; load (uptime) %s before, %s after "
           "(the machine is shared: other processes take cores, so compare within a row)." %
           (cpu_model(), os.cpu_count(), platform.platform(), start, minutes, load0, load1), "",
           "PyTorch %s eager (torch_train_step.py); %s. %s" % (tv, args.note, " ".join(kern)), "",
           "Step time: median over %d rounds of each round's median of %d steps (after %d warm-up steps); "
           "best: the fastest round's median. CPU: the process's CPU time per step (all threads; "
           "on a busy machine the fairer measure of work, as waiting for a core is not counted), median "
           "over rounds. Peak RSS: VmHWM of the process (PyTorch's includes the "
           "torch libraries, about 240 MB before any step); growth: peak minus the resident set after "
           "loading, before the first step." % (args.rounds, args.runs, args.warmup), "",
           "| model | threads | nibble ms (best) | PyTorch ms (best) | time nibble/PyTorch | CPU ms/step nibble / "
           "PyTorch | CPU nibble/PyTorch | nibble peak RSS MB (growth) | PyTorch peak RSS MB (growth) | "
           "peak RSS nibble/PyTorch | growth nibble/PyTorch |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in models:
        for t in threads:
            n, p = res[(m, t, "nibble")], res[(m, t, "torch")]
            nm, pm = statistics.median(r["median_ms"] for r in n), statistics.median(r["median_ms"] for r in p)
            nb, pb = min(r["median_ms"] for r in n), min(r["median_ms"] for r in p)
            npk, ppk = max(r["peak_rss_kb"] for r in n), max(r["peak_rss_kb"] for r in p)
            ng = max(r["peak_rss_kb"] - r["rss_base_kb"] for r in n)
            pg = max(r["peak_rss_kb"] - r["rss_base_kb"] for r in p)
            nc, pc = statistics.median(r["cpu_ms"] for r in n), statistics.median(r["cpu_ms"] for r in p)
            out.append("| %s | %d | %.2f (%.2f) | %.2f (%.2f) | **%.2f** | %.2f / %.2f | %.2f | %.1f (%.1f) | "
                       "%.1f (%.1f) | **%.2f** | %.2f |" %
                       (m, t, nm, nb, pm, pb, nm / pm, nc, pc, nc / pc, npk / 1024, ng / 1024, ppk / 1024,
                        pg / 1024, npk / ppk, ng / max(pg, 1)))
    text = "\n".join(out) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    return 0


def main_int4(args, threads, models):
    """nibble 4-bit vs nibble FP32 vs PyTorch FP32, plain SGD on the shipped images."""
    x = os.path.join(ROOT, "models", "data", "fmnist_test_100.npy")
    y = os.path.join(ROOT, "models", "data", "fmnist_test_100_labels.npy")
    version = subprocess.run([args.nibble, "--version"], stdout=subprocess.PIPE,
                             universal_newlines=True).stdout.strip().replace("\n", "; ")
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}
    names = dict((k, n) for k, n, _ in SETTINGS4)
    load0, date = uptime(), datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC")
    times, best, cpu = {}, {}, {}
    torch_version = "?"
    for rnd in range(args.rounds):
        for t in threads:
            for m in models:
                for key, _, passes in SETTINGS4:
                    common = ["--threads", str(t), "--batch", "64", "--warmup", str(args.warmup),
                              "--runs", str(args.runs), "--data", x, y]
                    if passes is None:
                        cmd = ["/usr/bin/python3", os.path.join(HERE, "torch_train_step.py"), m,
                               "--momentum", "0"] + common
                    else:
                        cmd = [args.bench, os.path.join(ROOT, "models", m + "_init.onnx"), "--passes", passes] + common
                    res = run_json(cmd, t, passive)
                    torch_version = res.get("torch_version", torch_version)
                    times.setdefault((m, t, key), []).append(res["median_ms"])
                    best[(m, t, key)] = min(best.get((m, t, key), float("inf")), res["min_ms"])
                    cpu.setdefault((m, t, key), []).append(res["cpu_median_ms"])
                    print("round %d  %-8s %d thread(s)  %-18s %9.2f ms" %
                          (rnd + 1, m, t, names[key], res["median_ms"]), file=sys.stderr, flush=True)
    load1 = uptime()
    med = {k: statistics.median(v) for k, v in times.items()}
    head = ("| model | threads | PyTorch FP32 | nibble FP32 | nibble 4-bit | 4-bit, stochastic | 4-bit, float bwd | "
            "4-bit / PyTorch | stochastic / PyTorch | 4-bit / nibble FP32 | nibble FP32 / PyTorch |")
    sep = "|---|---|---|---|---|---|---|---|---|---|---|"
    row = "| %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | **%.2f** | %.2f | %.2f | %.2f |"
    keys = ("torch", "fp32", "int4", "int4s", "int4f")
    out = ["# One training step: nibble 4-bit vs nibble FP32 vs PyTorch FP32\n",
           "Written by `bench/train/bench_train.py --int4` (see its header for the settings).\n",
           "- date: %s" % date,
           "- machine: %s, %d logical CPUs, %s" % (cpu_model(), os.cpu_count() or 0, platform.platform()),
           "- nibble: %s" % version,
           "- PyTorch: %s (eager, `torch.set_num_threads(T)`)" % torch_version,
           "- NBL_ISA: %s (nibble's kernels capped there)" % os.environ["NBL_ISA"] if os.environ.get("NBL_ISA")
           else "- NBL_ISA: unset (nibble's best kernels for this CPU)",
           "- load before: `%s`" % load0,
           "- load after: `%s`" % load1,
           "- batch 64, SGD; each figure is the median over %d rounds of the median of %d steps "
           "(after %d warm-up steps), in ms\n" % (args.rounds, args.runs, args.warmup),
           head, sep]
    for m in models:
        for t in threads:
            tp, f, q, qs, qf = (med[(m, t, k)] for k in keys)
            out.append(row % (m, t, tp, f, q, qs, qf, q / tp, qs / tp, q / f, f / tp))
    out += ["\nFastest step of all rounds (ms):\n", head, sep]
    for m in models:
        for t in threads:
            tp, f, q, qs, qf = (best[(m, t, k)] for k in keys)
            out.append(row % (m, t, tp, f, q, qs, qf, q / tp, qs / tp, q / f, f / tp))
    out.append("\nCPU time per step at 1 thread (median over the rounds of the median; at one thread the "
               "CPU time is what the step costs, whatever else runs on the machine):\n")
    out.append("| model | PyTorch FP32 | nibble FP32 | nibble 4-bit | 4-bit, stochastic | 4-bit, float bwd | "
               "4-bit / PyTorch | stochastic / PyTorch | 4-bit / nibble FP32 | nibble FP32 / PyTorch |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for m in models:
        if 1 not in threads:
            continue
        tp, f, q, qs, qf = (statistics.median(cpu[(m, 1, k)]) for k in keys)
        out.append("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | **%.2f** | %.2f | %.2f | %.2f |" %
                   (m, tp, f, q, qs, qf, q / tp, qs / tp, q / f, f / tp))
    out.append("\nTarget (issue 16): the 4-bit step at most 0.5 of PyTorch's FP32 step.")
    out.append("\nAll rounds (ms): " + "; ".join(
        "%s/%dt/%s %s" % (m, t, k, ",".join("%.1f" % v for v in times[(m, t, k)]))
        for m in models for t in threads for k, _, _ in SETTINGS4))
    text = "\n".join(out) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
