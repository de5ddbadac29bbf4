#!/usr/bin/python3
"""bench.py - data-parallel step time and bytes per step, and a model of the
step time on 8 to 64 machines.

    bench/mpi/bench.py BUILD [--models lenet,resnet8] [--ranks 1,2,4] [--steps 40]
                       [--out bench/mpi]

Measures, for every model, rank count (1, 2, 4 processes on this machine,
`mpirun --oversubscribe`) and exchange (FP32 all-reduce, 4-bit all-gather with
error feedback), `nibble train` on a global batch of 64 (one kernel thread per
rank; no test split, so no evaluation):
  - step time: nibble train's own mean over the run's steps (train step +
    exchange + optimizer step), and its split: exchange wait (time the
    optimizer step blocked on the network), codec (packing, quantizing,
    decoding);
  - bytes sent per rank and step, twice: the payload nibble reports with the
    ring-algorithm model (2 (N-1)/N * payload for the FP32 all-reduce, (N-1) *
    payload for the all-gather), and what Open MPI's point-to-point layer
    actually sent, counted by its monitoring component (--mca
    pml_monitoring_enable 1): a run of S steps minus a run of S/5 steps,
    divided by the difference (start-up, broadcast and the per-step loss sum
    included in the measurement: 8 bytes per step).
Then the model (MODEL.md): step time on N = 8..64 machines at 10 and 100
Gbit/s from the measured compute and codec times and the measured bytes,
with weak scaling (64 samples per machine per step):
  FP32:  T = T_compute + T_allreduce,  T_allreduce = 2 (N-1)/N * P32 / BW + 2 (N-1) * lat
  4-bit: T = T_compute + T_quant + N * T_decode + T_allgather,
         T_allgather = (N-1) * P4 / BW + (N-1) * lat
(no overlap; with perfect overlap the communication term becomes
max(0, T_comm - T_backward)), lat = 5 us per message. Writes OUT/results.csv,
OUT/results.md.
"""
import argparse
import csv
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MODELS = {"lenet": "lenet5_init.onnx", "resnet8": "resnet8_init.onnx"}
LAT = 5e-6


def env():
    e = dict(os.environ)
    if os.geteuid() == 0:
        e["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        e["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return e


def make_data(folder, n):
    """npy folder with n Fashion-MNIST-shaped samples (random pixels: the step time does not
    depend on the values) and no test split."""
    if os.path.exists(os.path.join(folder, "y.npy")):
        return
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(os.path.join(folder, "x.npy"), rng.standard_normal((n, 1, 28, 28)).astype(np.float32))
    np.save(os.path.join(folder, "y.npy"), rng.integers(0, 10, n).astype(np.int64))


def run(nibble, model, ranks, exchange, data, mon_prefix):
    cmd = ["mpirun", "--oversubscribe", "-np", str(ranks), "--mca", "pml_monitoring_enable", "1",
           "--mca", "pml_monitoring_enable_output", "3", "--mca", "pml_monitoring_filename", mon_prefix,
           nibble, "train", os.path.join(ROOT, "models", MODELS[model]), "--data", "npy:" + data,
           "--epochs", "1", "--batch", "64", "--optimizer", "momentum", "--lr", "0.01", "--threads", "1",
           "--grad-exchange", exchange]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env())
    if r.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(cmd), r.returncode, r.stderr[-1500:]))
    dp = [l for l in r.stdout.replace("\r", "\n").splitlines() if l.startswith("data-parallel:")][-1]
    f = lambda pat: float(re.search(pat, dp).group(1))
    sent = 0
    files = glob.glob(mon_prefix + ".*.prof")
    for fn in files:
        for line in open(fn):
            m = re.match(r"[EI]\s+(\d+)\s+(\d+)\s+(\d+) bytes", line)
            if m:
                sent += int(m.group(3))
        os.unlink(fn)
    return {"step_ms": f(r"step ([0-9.]+) ms"), "wait_ms": f(r"exchange wait ([0-9.]+) ms"),
            "codec_ms": f(r"codec ([0-9.]+) ms"), "payload": f(r"(\d+) bytes payload"),
            "model_sent": f(r"([0-9.]+) bytes sent"), "grad_values": f(r"(\d+) gradient values"),
            "mon_sent_per_rank": sent / max(1, len(files)) if files else float("nan")}


def model_table(rows):
    """Markdown: modelled step time (ms) on N machines at 10 and 100 Gbit/s."""
    out = []
    for model in sorted({r["model"] for r in rows}):
        one = {r["exchange"]: r for r in rows if r["model"] == model and int(r["ranks"]) == 1}
        if "fp32" not in one or "log4" not in one:
            continue
        by_n = {int(r["ranks"]): r for r in rows if r["model"] == model and r["exchange"] == "log4"}
        t_c = (float(one["fp32"]["step_ms"]) - float(one["fp32"]["codec_ms"])) / 1e3
        p32, p4 = float(one["fp32"]["payload"]), float(one["log4"]["payload"])
        # codec(N) = quantize + N * decode: a line through the measured codec times
        ns = sorted(by_n)
        cod = [float(by_n[n]["codec_ms"]) / 1e3 for n in ns]
        if len(ns) >= 2:
            b, a = np.polyfit(ns, cod, 1)
            b = max(b, 0.0)
        else:
            a, b = cod[0], 0.0
        a = max(a, 0.0)
        out.append("\n**%s**: n = %d gradient values, FP32 payload %.0f bytes, 4-bit payload %.0f bytes; "
                   "measured compute per step (batch 64, 1 process, exchange excluded) T_compute = %.1f ms; "
                   "4-bit codec = %.2f ms + N x %.3f ms (fit to the 1/2/4-rank runs).\n"
                   % (model, int(float(one["fp32"]["grad_values"])), p32, p4, t_c * 1e3, a * 1e3, b * 1e3))
        out.append("| N | link | FP32 all-reduce | FP32 step | 4-bit all-gather | 4-bit step | 4-bit / FP32 bytes |")
        out.append("|---|---|---|---|---|---|---|")
        for gbit in (10, 100):
            bw = gbit * 1e9 / 8
            for n in (8, 16, 32, 64):
                ar = 2 * (n - 1) / n * p32 / bw + 2 * (n - 1) * LAT
                ag = (n - 1) * p4 / bw + (n - 1) * LAT
                t32 = t_c + ar
                t4 = t_c + a + n * b + ag
                out.append("| %d | %d Gbit/s | %.2f ms | %.1f ms | %.2f ms | %.1f ms | %.2f |" % (
                    n, gbit, ar * 1e3, t32 * 1e3, ag * 1e3, t4 * 1e3,
                    (n - 1) * p4 / (2 * (n - 1) / n * p32)))
        # where 4-bit pays: bytes saved per step must outweigh the codec
        out.append("")
        for n in (8, 16, 32, 64):
            saved = 2 * (n - 1) / n * p32 - (n - 1) * p4
            lat_saved = (n - 1) * LAT
            codec = a + n * b
            if saved <= 0:
                out.append("- N = %d: the all-gather sends %.1fx the FP32 ring all-reduce's bytes: 4-bit "
                           "never pays (a reduce-scatter ring that re-quantizes would send 1/8)."
                           % (n, (n - 1) * p4 / (2 * (n - 1) / n * p32)))
            elif codec <= lat_saved:
                out.append("- N = %d: 4-bit pays at any bandwidth." % n)
            else:
                bstar = saved / (codec - lat_saved) * 8 / 1e9
                out.append("- N = %d: 4-bit is faster below %.2f Gbit/s (saves %.0f bytes per step, costs "
                           "%.2f ms of codec)." % (n, bstar, saved, codec * 1e3))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--models", default="lenet,resnet8")
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "mpi"))
    args = ap.parse_args()
    if not shutil.which("mpirun"):
        print("bench.py: no mpirun")
        return 1
    nibble = os.path.join(os.path.abspath(args.build), "tools", "nibble")
    tmp = tempfile.mkdtemp(prefix="nbl_bench_mpi_")
    s_long, s_short = args.steps, max(2, args.steps // 5)
    d_long, d_short = os.path.join(tmp, "long"), os.path.join(tmp, "short")
    make_data(d_long, 64 * s_long)
    make_data(d_short, 64 * s_short)
    rows = []
    for model in args.models.split(","):
        for ranks in [int(r) for r in args.ranks.split(",")]:
            for exchange in ("fp32", "log4"):
                a = run(nibble, model, ranks, exchange, d_long, os.path.join(tmp, "mon"))
                b = run(nibble, model, ranks, exchange, d_short, os.path.join(tmp, "mon"))
                row = {"model": model, "ranks": ranks, "exchange": exchange, "step_ms": a["step_ms"],
                       "wait_ms": a["wait_ms"], "codec_ms": a["codec_ms"], "payload": a["payload"],
                       "model_sent": a["model_sent"], "grad_values": a["grad_values"],
                       "measured_sent": (a["mon_sent_per_rank"] - b["mon_sent_per_rank"]) / (s_long - s_short)}
                rows.append(row)
                print("%-8s %d %-5s step %7.2f ms  wait %6.2f  codec %5.2f  sent/rank/step: model %9.0f  "
                      "measured %9.0f" % (model, ranks, exchange, row["step_ms"], row["wait_ms"], row["codec_ms"],
                                          row["model_sent"], row["measured_sent"]), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cpu = "unknown CPU"
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            cpu = l.split(":", 1)[1].strip()
            break
    lines = ["# Data-parallel training: step time and bytes per step", "",
             "Written by `bench/mpi/bench.py` on %s, %s, %d cores shared with other jobs (load average "
             "%.1f at the end), Open MPI %s, one kernel thread per rank, global batch 64, %d steps "
             "(ranks beyond 2 oversubscribe the 2 cores: their step times show the cost of sharing a "
             "core, not of the network)." % (time.strftime("%Y-%m-%d"), cpu, os.cpu_count(),
                                             os.getloadavg()[0], mpi_version(), s_long), "",
             "| model | ranks | exchange | step | exchange wait | codec | bytes sent per rank and step "
             "(ring model) | bytes sent per rank and step (measured, Open MPI pml monitoring) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %s | %d | %s | %.2f ms | %.2f ms | %.2f ms | %.0f | %.0f |" % (
            r["model"], r["ranks"], r["exchange"], r["step_ms"], r["wait_ms"], r["codec_ms"], r["model_sent"],
            r["measured_sent"]))
    lines += ["", "## Model: step time on 8 to 64 machines", "", model_table(rows)]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def mpi_version():
    try:
        r = subprocess.run(["mpirun", "--version"], stdout=subprocess.PIPE, universal_newlines=True)
        return r.stdout.split("\n")[0].split()[-1]
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
