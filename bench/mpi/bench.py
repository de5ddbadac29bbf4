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
    exchange + optimizer step), in wall-clock time and in the process's CPU
    time, and its split: exchange wait (time the optimizer step blocked on the
    network), codec (packing, quantizing, decoding; wall and thread CPU time);
    on a shared machine (and with 4 ranks on 2 cores) the wall times mostly
    measure the waiting for a core, the CPU times what the work costs;
  - bytes sent per rank and step, twice: the payload nibble reports with the
    ring-algorithm model (2 (N-1)/N * payload for the FP32 all-reduce, (N-1) *
    payload for the all-gather), and what Open MPI's point-to-point layer
    actually sent, counted by its monitoring component (--mca
    pml_monitoring_enable 1): a run of S steps minus a run of S/5 steps,
    divided by the difference (start-up, broadcast and the per-step loss sum
    included in the measurement: 8 bytes per step).
Then the model (MODEL_TEXT below): step time on N = 8..64 machines at 10 and
100 Gbit/s from the measured compute and codec CPU times and the measured
payloads, for the built FP32 and 4-bit exchanges and for a re-quantizing
4-bit ring that is not built, and the bandwidth below which 4-bit pays.
Writes OUT/results.csv, OUT/results.md.
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
MODEL_TEXT = """Weak scaling: every machine trains 64 samples per step (one process per machine, the
compute of the 1-rank run), so only the exchange changes with N. With P32 and P4 the FP32 and 4-bit
payloads (bytes per rank and step), BW the link's bandwidth and lat = 5 us per message:

- FP32 (built): ring all-reduce, T = T_compute + 2 (N-1)/N * P32 / BW + 2 (N-1) lat.
- 4-bit (built): every rank quantizes its gradient, all-gathers the codes and decodes the N
  messages, T = T_compute + q + N d + (N-1) P4 / BW + (N-1) lat, with q + N d the codec time
  fit to the measured 1/2/4-rank codec CPU times (q: quantize and pack, d: decode one rank's
  message).
- 4-bit ring (not built, the issue's other option): a reduce-scatter ring that re-quantizes the
  partial sums, then an all-gather of the reduced chunks: 2 (N-1)/N * P4 / BW + 2 (N-1) lat on the
  wire; every rank quantizes and decodes about one gradient's worth in the reduce-scatter and
  decodes one more in the all-gather: codec q + 2 d.

No overlap is assumed (an upper bound for FP32: nibble launches its FP32 buckets during the
backward pass, so up to the backward pass's time of the all-reduce is hidden; the 4-bit codec runs
on the training thread and is never hidden). The all-gather sends (N-1) P4 per rank against the
ring's 2 (N-1)/N P32: with P4 = P32/8 that is N/16 of the FP32 bytes, so the built 4-bit exchange
sends fewer bytes only below 16 machines.
"""


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
    return {"step_ms": f(r"step ([0-9.]+) ms"), "step_cpu_ms": f(r"step [0-9.]+ ms \(CPU ([0-9.]+) ms\)"),
            "wait_ms": f(r"exchange wait ([0-9.]+) ms"), "codec_ms": f(r"codec ([0-9.]+) ms"),
            "codec_cpu_ms": f(r"codec [0-9.]+ ms \(CPU ([0-9.]+) ms\)"), "payload": f(r"(\d+) bytes payload"),
            "model_sent": f(r"([0-9.]+) bytes sent"), "grad_values": f(r"(\d+) gradient values"),
            "mon_sent_per_rank": sent / max(1, len(files)) if files else float("nan")}


def model_table(rows):
    """Markdown: modelled step time (ms) on N machines at 10 and 100 Gbit/s (MODEL_TEXT), from the CPU times
    (thread and process CPU time: on a shared machine the wall times mostly measure the waiting
    for a core) and the payloads measured here."""
    out = []
    for model in sorted({r["model"] for r in rows}):
        one = {r["exchange"]: r for r in rows if r["model"] == model and int(r["ranks"]) == 1}
        if "fp32" not in one or "log4" not in one:
            continue
        by_n = {int(r["ranks"]): r for r in rows if r["model"] == model and r["exchange"] == "log4"}
        t_c = (float(one["fp32"]["step_cpu_ms"]) - float(one["fp32"]["codec_cpu_ms"])) / 1e3
        p32, p4 = float(one["fp32"]["payload"]), float(one["log4"]["payload"])
        n_val = int(float(one["fp32"]["grad_values"]))
        # codec(N) = quantize + N * decode: a line through the measured codec CPU times
        ns = sorted(by_n)
        cod = [float(by_n[n]["codec_cpu_ms"]) / 1e3 for n in ns]
        if len(ns) >= 2:
            b, a = np.polyfit(ns, cod, 1)
        else:
            a, b = cod[0], 0.0
        a, b = max(a, 0.0), max(b, 0.0)
        out.append("\n### %s\n\nn = %d gradient values: FP32 payload %.0f bytes, 4-bit payload %.0f bytes "
                   "(1/%.1f). Compute per step (batch 64 on one machine, 1 process, CPU time, exchange "
                   "excluded): T_compute = %.2f ms. 4-bit codec (CPU time of the quantizing, packing and "
                   "decoding, fit to the 1/2/4-rank runs): %.3f ms + N x %.3f ms, i.e. %.1f ns per value to "
                   "quantize and %.2f ns per value and rank to decode.\n"
                   % (model, n_val, p32, p4, p32 / p4, t_c * 1e3, a * 1e3, b * 1e3, a / n_val * 1e9,
                      b / n_val * 1e9))
        out.append("| N | link | FP32 ring all-reduce | FP32 step | 4-bit all-gather (built) | 4-bit step "
                   "| 4-bit / FP32 step | 4-bit ring, re-quantizing (modelled only) | its step |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for gbit in (10, 100):
            bw = gbit * 1e9 / 8
            for n in (8, 16, 32, 64):
                ar = 2 * (n - 1) / n * p32 / bw + 2 * (n - 1) * LAT
                ag = (n - 1) * p4 / bw + (n - 1) * LAT
                rs = 2 * (n - 1) / n * p4 / bw + 2 * (n - 1) * LAT
                t32, t4, trs = t_c + ar, t_c + a + n * b + ag, t_c + a + 2 * b + rs
                out.append("| %d | %d Gbit/s | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %.3f | %.2f ms | %.2f ms |"
                           % (n, gbit, ar * 1e3, t32 * 1e3, ag * 1e3, t4 * 1e3, t4 / t32, rs * 1e3, trs * 1e3))
        out.append("")
        for n in (8, 16, 32, 64):
            saved = 2 * (n - 1) / n * p32 - (n - 1) * p4 - (n - 1) * LAT * 0  # bytes
            codec = a + n * b
            saved_rs = 2 * (n - 1) / n * (p32 - p4)
            lat_ag = -(n - 1) * LAT  # the all-gather sends N-1 messages, the ring 2 (N-1)
            rs_txt = "the re-quantizing ring would pay below %.2f Gbit/s" % (saved_rs * 8 / 1e9 / (a + 2 * b))
            if saved <= 0:
                out.append("- N = %d: the all-gather sends %.2fx the bytes of the FP32 ring all-reduce: the "
                           "built 4-bit exchange never pays; %s." % (n, (n - 1) * p4 / (2 * (n - 1) / n * p32),
                                                                     rs_txt))
            else:
                bstar = saved * 8 / 1e9 / max(codec + lat_ag, 1e-12)
                out.append("- N = %d: the built 4-bit exchange pays below %.2f Gbit/s (it saves %.0f bytes per "
                           "step and costs %.2f ms of codec); %s." % (n, bstar, saved, codec * 1e3, rs_txt))
        # the break-even bandwidth does not depend on the model's size: bytes and codec both scale with n
        q_ns, d_ns = a / n_val * 1e9, b / n_val * 1e9
        saved_bits = 2 * (32 - 4)  # per value, the ring's 2 (N-1)/N -> 2 for large N
        out.append("\nPer gradient value a large re-quantizing ring saves about %d bits on the wire and costs "
                   "q + 2 d = %.1f ns of codec: 4-bit pays where %d bits take longer than that, below %.1f "
                   "Gbit/s, whatever the model's size. At 10 Gbit/s the %d bits take %.1f ns, so the quantizer "
                   "would have to get below %.1f ns per value (it takes %.1f); at 100 Gbit/s (%.2f ns) no "
                   "codec at memory speed pays; there the FP32 all-reduce (%.2f ms at N = 64, %.0f %% of "
                   "T_compute) is better shortened by overlapping it with the backward pass (smaller "
                   "buckets: a bucket leaves when its last gradient is final) than by compressing it."
                   % (saved_bits, q_ns + 2 * d_ns, saved_bits, saved_bits / (q_ns + 2 * d_ns), saved_bits,
                      saved_bits / 10, saved_bits / 10 - 2 * d_ns, q_ns, saved_bits / 100,
                      (2 * 63 / 64 * p32 / (100e9 / 8) + 2 * 63 * LAT) * 1e3,
                      100 * (2 * 63 / 64 * p32 / (100e9 / 8) + 2 * 63 * LAT) / t_c))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--models", default="lenet,resnet8")
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "mpi"))
    args = ap.parse_args()
    t_start, load_start = time.time(), os.getloadavg()[0]
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
                       "step_cpu_ms": a["step_cpu_ms"], "wait_ms": a["wait_ms"], "codec_ms": a["codec_ms"],
                       "codec_cpu_ms": a["codec_cpu_ms"], "payload": a["payload"],
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
    load_end = os.getloadavg()[0]
    lines = ["# Data-parallel training: step time and bytes per step", "",
             "Written by `bench/mpi/bench.py` on %s (%s UTC), %s, %d cores shared with other jobs (load "
             "average %.1f at the start, %.1f at the end), Open MPI %s, `nibble train` with one kernel "
             "thread per rank, global batch 64, %d steps per run (and a run of %d steps whose bytes are "
             "subtracted), `mpirun --oversubscribe`." % (time.strftime("%Y-%m-%d", time.gmtime(t_start)),
                                             time.strftime("%H:%M", time.gmtime(t_start)), cpu, os.cpu_count(),
                                             load_start, load_end, mpi_version(), s_long, s_short), "",
             "Wall-clock times on this machine measure mostly the waiting for a core: with a load average "
             "well above the 2 cores, a process runs a fraction of the time, and 4 ranks oversubscribe the "
             "cores anyway. The CPU times (process CPU time for the step, thread CPU time for the codec) "
             "are what the process itself spent, and the model below uses them. Bytes are per rank and "
             "step: the payload and ring model that nibble reports, and what Open MPI's point-to-point "
             "layer actually sent (pml monitoring; the 8 extra bytes are the per-step loss sum).", "",
             "| model | ranks | exchange | step (wall) | step (CPU) | exchange wait (wall) | codec (wall) "
             "| codec (CPU) | payload | sent, ring model | sent, measured |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %s | %d | %s | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %.0f | %.0f | %.0f |" % (
            r["model"], r["ranks"], r["exchange"], r["step_ms"], r["step_cpu_ms"], r["wait_ms"], r["codec_ms"],
            r["codec_cpu_ms"], r["payload"], r["model_sent"], r["measured_sent"]))
    lines += ["", "## Model: step time on 8 to 64 machines", "", MODEL_TEXT, model_table(rows)]
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
