#!/usr/bin/python3
"""bench_train.py - nibble vs PyTorch: training step time and peak memory.

usage: bench/train/bench_train.py --nibble NIBBLE --bench BENCH_TRAIN [--rounds R] [--runs N]
                                  [--threads 1,2] [--models lenet5,resnet8] [--out FILE] [--note TEXT]

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
"""
import argparse
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


def run_json(cmd, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nibble", required=True)
    ap.add_argument("--bench", required=True, help="BUILD/bench/bench_train")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--models", default="lenet5,resnet8")
    ap.add_argument("--out", help="also write the markdown here")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    models = args.models.split(",")
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
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
