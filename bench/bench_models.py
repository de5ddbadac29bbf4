#!/usr/bin/python3
"""bench_models.py - latency and peak memory of nibble vs ONNX Runtime on whole models.

usage: /usr/bin/python3 bench/bench_models.py --nibble PATH --refdir DIR
           [--models resnet18,mobilenet_v2] [--threads 1,2] [--runs N] [--warmup W]
           [--out bench/results.md]

For each model (batch 1, 3x224x224, from tests/ref/export_models.py) and thread count:
- nibble latency: the "mean of the next N-1 runs" that `nibble run --repeat N`
  prints (N = warmup + runs; the first run is left out); if not printed, the wall
  time of `--repeat R+N` minus that of `--repeat R`, divided by N (load, plan
  and warmup cancel out), with R = the warmup count.
- ONNX Runtime latency: `node tests/ref/ort_run.js time` (W warmup runs, then
  N timed runs, in process); the mean is compared, the median shown too.
- PyTorch latency (for context): bench/torch_time.py, the same module in eager
  mode with torch.set_num_threads(T); "n/a" if torch is missing.
- peak memory: maximum resident set size (/usr/bin/time -v) of one
  `nibble run` and of one `node ort_run.js run` (the latter includes node's
  own ~40 MB; the node baseline is measured and shown separately).
Both get the same thread count (--threads T; OPENBLAS_NUM_THREADS and
OMP_NUM_THREADS are also set to T). Writes a markdown table to stdout and --out.
Exit status: 0 done, 1 a run failed, 2 bad usage.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, ".."))
ORT_RUN = os.path.join(ROOT, "tests", "ref", "ort_run.js")


class BenchError(Exception):
    pass


# OPENBLAS_CORETYPE, when the environment sets it, forces OpenBLAS's kernels
# for that CPU instead of the ones it detects. Both are measured then.
CORETYPE = os.environ.get("OPENBLAS_CORETYPE")


def env_for(threads, auto_blas=False):
    env = dict(os.environ)
    if auto_blas:
        env.pop("OPENBLAS_CORETYPE", None)
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def run(cmd, threads, what, auto_blas=False):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env_for(threads, auto_blas))
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BenchError("%s failed (exit %d): %s\n  %s" % (what, r.returncode, msg, " ".join(cmd)))
    return r, secs


def peak_rss_mb(cmd, threads, what):
    r, _ = run(["/usr/bin/time", "-v"] + cmd, threads, what)
    m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", r.stderr)
    if not m:
        raise BenchError("%s: /usr/bin/time -v printed no maximum resident set size" % what)
    return int(m.group(1)) / 1024.0


# `nibble run --repeat N` prints "time: first run X ms, mean of the next N-1 runs Y ms".
MEAN_RE = re.compile(r"mean of the next (\d+) runs ([0-9]+(?:\.[0-9]+)?) ms")


def nibble_latency(nibble, model, inputs, threads, runs, warmup, auto_blas=False):
    base = [nibble, "run", model, "--threads", str(threads)]
    for n, f in inputs.items():
        base += ["--input", "%s=%s" % (n, f)]
    r, t_long = run(base + ["--repeat", str(warmup + runs)], threads, "nibble run --repeat",
                    auto_blas)
    m = MEAN_RE.search(r.stdout)
    if m:
        return float(m.group(2)), "mean of runs 2..N printed by `nibble run --repeat N`"
    _, t_short = run(base + ["--repeat", str(max(warmup, 1))], threads, "nibble run", auto_blas)
    n = warmup + runs - max(warmup, 1)
    return max(t_long - t_short, 0.0) / n * 1000.0, "wall time difference, mean"


def ort_latency(model, inputs, threads, runs, warmup):
    cmd = ["node", ORT_RUN, "time", model, "--threads", str(threads), "--warmup", str(warmup),
           "--runs", str(runs)]
    for n, f in inputs.items():
        cmd += ["--input", "%s=%s" % (n, f)]
    r, _ = run(cmd, threads, "ONNX Runtime")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    return res["mean_ms"], res["median_ms"], res["ort_version"]


def torch_latency(name, inputs, threads, runs, warmup):
    """PyTorch's mean latency (bench/torch_time.py), or None if torch is missing."""
    cmd = ["/usr/bin/python3", os.path.join(HERE, "torch_time.py"), name] + list(inputs.values()) \
        + ["--threads", str(threads), "--warmup", str(warmup), "--runs", str(runs)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env_for(threads))
    if r.returncode != 0:
        return None, None
    res = json.loads(r.stdout.strip().splitlines()[-1])
    return res["mean_ms"], res["torch_version"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nibble", required=True)
    ap.add_argument("--refdir", required=True)
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results.md"))
    ap.add_argument("--note", action="append", default=[], help="extra line under the table")
    args = ap.parse_args()
    try:
        threads = [int(t) for t in args.threads.split(",") if t]
    except ValueError:
        print("bench_models.py: --threads takes a list like 1,2", file=sys.stderr)
        return 2
    if args.runs < 2 or args.warmup < 0:
        print("bench_models.py: --runs must be >= 2, --warmup >= 0", file=sys.stderr)
        return 2
    with open(os.path.join(args.refdir, "manifest.json")) as f:
        manifest = {e["name"]: e for e in json.load(f)["models"]}
    rows, notes = [], set()
    ort_version = "?"
    torch_version = None
    try:
        node_base = peak_rss_mb(["node", "-e", "require('onnxruntime-node')"], 1, "node baseline")
        for name in [m for m in args.models.split(",") if m]:
            if name not in manifest:
                raise BenchError("%s: not in %s/manifest.json" % (name, args.refdir))
            e = manifest[name]
            model = os.path.join(args.refdir, e["model"])
            inputs = {k: os.path.join(args.refdir, v) for k, v in e["inputs"].items()}
            feeds = []
            for k, v in inputs.items():
                feeds += ["--input", "%s=%s" % (k, v)]
            for t in threads:
                print("bench: %s, %d thread(s)..." % (name, t), file=sys.stderr, flush=True)
                ort_ms, ort_med, ort_version = ort_latency(model, inputs, t, args.runs, args.warmup)
                nbl_ms, how = nibble_latency(args.nibble, model, inputs, t, args.runs, args.warmup)
                notes.add(how)
                auto_ms = None
                if CORETYPE:
                    auto_ms, _ = nibble_latency(args.nibble, model, inputs, t, args.runs,
                                                args.warmup, auto_blas=True)
                pt_ms, tv = torch_latency(name, inputs, t, args.runs, args.warmup)
                torch_version = tv or torch_version
                nbl_mb = peak_rss_mb([args.nibble, "run", model, "--threads", str(t)] + feeds,
                                     t, "nibble run (memory)")
                ort_mb = peak_rss_mb(["node", ORT_RUN, "run", model, "--threads", str(t)] + feeds,
                                     t, "ONNX Runtime (memory)")
                rows.append((name, t, nbl_ms, ort_ms, ort_med, pt_ms, nbl_mb, ort_mb, auto_ms))
    except BenchError as ex:
        print("bench_models.py: %s" % ex, file=sys.stderr)
        return 1

    lines = []
    lines.append("# nibble vs ONNX Runtime: whole-model latency and memory\n")
    lines.append("Machine: %s, %d logical CPUs (%s). ONNX Runtime %s (npm onnxruntime-node, "
                 "CPU, graph optimizations on). Batch 1, float32, random weights "
                 "(torch.manual_seed(0), BatchNorm statistics calibrated on random batches). %d warmup + %d timed runs.\n"
                 % (platform.machine(), os.cpu_count() or 0, cpu_name(), ort_version,
                    args.warmup, args.runs))
    extra_h = (" nibble ms, OpenBLAS auto | nibble auto / ORT |" if CORETYPE else "")
    lines.append("| model | threads | nibble ms | ORT ms | nibble / ORT | ORT median ms "
                 "| PyTorch ms | nibble / PyTorch | nibble peak RSS MB | ORT peak RSS MB (node) |"
                 + extra_h)
    lines.append("|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if CORETYPE else ""))
    for name, t, nbl_ms, ort_ms, ort_med, pt_ms, nbl_mb, ort_mb, auto_ms in rows:
        pt = ("%.2f" % pt_ms, "%.2fx" % (nbl_ms / pt_ms)) if pt_ms else ("n/a", "n/a")
        extra = (" %.2f | %.2fx |" % (auto_ms, auto_ms / ort_ms)) if auto_ms else ""
        lines.append("| %s | %d | %.2f | %.2f | %.2fx | %.2f | %s | %s | %.0f | %.0f |%s"
                     % (name, t, nbl_ms, ort_ms, nbl_ms / ort_ms if ort_ms > 0 else float("nan"),
                        ort_med, pt[0], pt[1], nbl_mb, ort_mb, extra))
    lines.append("")
    lines.append("- nibble latency: %s; ORT latency: mean in process (ort_run.js time)."
                 % "; ".join(sorted(notes)))
    lines.append("- nibble / ORT > 1 means nibble is slower.")
    if CORETYPE:
        lines.append("- This environment sets OPENBLAS_CORETYPE=%s, which forces OpenBLAS's "
                     "kernels for that CPU; the 'nibble' columns ran with it. 'OpenBLAS auto': "
                     "the same run with the variable removed, so OpenBLAS uses the kernels it "
                     "detects for this CPU (its default, and what a user without the variable "
                     "gets)." % CORETYPE)
    lines.append("- PyTorch %s: the same module and weights in eager mode under torch.no_grad(), "
                 "torch.set_num_threads(T), mean of the timed runs (BatchNorm not folded)."
                 % (torch_version or "(not installed)"))
    lines.append("- peak RSS: /usr/bin/time -v of one run (load + run). The ORT column includes "
                 "node.js itself: node with onnxruntime-node loaded and no model uses %.0f MB."
                 % node_base)
    for n in args.note:
        lines.append("- " + n)
    try:
        ver = subprocess.run([args.nibble, "--version"], capture_output=True, text=True).stdout
        info = ver.strip().splitlines()[1:]
        if info:
            lines.append("- nibble's kernels (`nibble --version`, with the environment as run): "
                         + info[0])
    except OSError:
        pass
    lines.append("- made by `bench/run_bench.sh` on %s." % time.strftime("%Y-%m-%d"))
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cpu_has(flag):
    """True when /proc/cpuinfo lists the CPU feature flag (e.g. "avx512f"), or cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return flag in line.split(":", 1)[1].split()
    except OSError:
        pass
    return True


if __name__ == "__main__":
    sys.exit(main())
