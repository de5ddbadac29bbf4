#!/usr/bin/python3
"""accuracy.py - 4-bit gradient exchange against FP32 exchange on Fashion-MNIST.

    bench/mpi/accuracy.py BUILD [--models lenet,resnet8] [--ranks 2,4] [--seeds 1,2,3]
                          [--train 12000] [--out bench/mpi]

For every model, rank count and seed, `mpirun -np N nibble train` trains from
the shipped untrained weights (models/*_init.onnx) three times: FP32
exchange, 4-bit exchange with error feedback, 4-bit exchange without it. The
same seed gives the same data order (and the 4-bit rounding key), so the runs
of one seed differ only by the exchange. Settings (chosen so that the whole
set, 36 runs, takes about 30 minutes on the 2 shared cores of the machine
this was written on when it is otherwise idle; with other jobs keeping the
load average at 20-30 it took 48 minutes, the sum of the runs' wall times
is in accuracy.md):

  data     the first --train (12,000) of Fashion-MNIST's 60,000 training images
           (Debian's dataset-fashion-mnist), all 10,000 test images
  training build-training{optimizer=momentum} (momentum 0.9), lr 0.02 with a
           cosine decay to 0 (a constant rate leaves ResNet-8's BatchNorm
           running statistics lagging the weights at the end: its test accuracy
           then jumped between 40 and 78 % from seed to seed), global batch 64,
           LeNet-5 2 epochs (376 steps), ResNet-8 1 epoch (188 steps), one
           kernel thread per rank
  4-bit    radix-4 log codes (sign + 3-bit exponent), one scale per gradient
           tensor, stochastic rounding, 256 KiB buckets (one bucket: whole model)

Each run appends a row to OUT/accuracy.csv (a finished row is not run again,
so the script resumes), then OUT/accuracy.md gets the table: test accuracy
(mean and spread over the seeds) and the paired difference 4-bit - FP32.
"""
import argparse
import csv
import gzip
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FMNIST = "/usr/share/datasets/fashion-mnist"
MODELS = {"lenet": ("lenet5_init.onnx", 2), "resnet8": ("resnet8_init.onnx", 1)}
MODES = {"fp32": [], "log4": ["--grad-exchange", "log4"],
         "log4-no-ef": ["--grad-exchange", "log4", "--no-error-feedback"]}
FIELDS = ["model", "ranks", "seed", "exchange", "accuracy", "final_loss", "seconds", "payload_bytes",
          "sent_bytes", "step_ms"]


def idx(path, offset):
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


def make_data(folder, n_train):
    """npy folder: the first n_train training images and the whole test split."""
    if os.path.exists(os.path.join(folder, "y_test.npy")):
        return
    os.makedirs(folder, exist_ok=True)
    norm = lambda a: ((a.astype(np.float32) / 255 - 0.2860) / 0.3530).astype(np.float32)
    x = idx(os.path.join(FMNIST, "train-images-idx3-ubyte.gz"), 16).reshape(-1, 1, 28, 28)[:n_train]
    y = idx(os.path.join(FMNIST, "train-labels-idx1-ubyte.gz"), 8)[:n_train].astype(np.int64)
    xt = idx(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz"), 16).reshape(-1, 1, 28, 28)
    yt = idx(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz"), 8).astype(np.int64)
    np.save(os.path.join(folder, "x.npy"), norm(x))
    np.save(os.path.join(folder, "y.npy"), y)
    np.save(os.path.join(folder, "x_test.npy"), norm(xt))
    np.save(os.path.join(folder, "y_test.npy"), yt)


def env():
    e = dict(os.environ)
    if os.geteuid() == 0:
        e["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        e["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return e


def run_one(nibble, data, model, ranks, seed, mode):
    path, epochs = MODELS[model]
    cmd = ["mpirun", "--oversubscribe", "-np", str(ranks), nibble, "train", os.path.join(ROOT, "models", path),
           "--data", "npy:" + data, "--epochs", str(epochs), "--batch", "64", "--optimizer", "momentum",
           "--lr", "0.02", "--schedule", "cosine", "--seed", str(seed), "--threads", "1"] + MODES[mode]
    t0 = time.time()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env())
    out = r.stdout.replace("\r", "\n")
    if r.returncode != 0:
        raise RuntimeError("%s: exit %d\n%s" % (" ".join(cmd), r.returncode, r.stderr[-2000:]))
    ep = [l for l in out.splitlines() if re.search(r"epoch \d+/\d+: loss", l)][-1]
    acc = float(re.search(r"test accuracy ([0-9.]+)%", ep).group(1))
    loss = float(re.search(r"loss ([0-9.]+)", ep).group(1))
    dp = [l for l in out.splitlines() if l.startswith("data-parallel:")][-1]
    payload = int(re.search(r"(\d+) bytes payload", dp).group(1))
    sent = float(re.search(r"([0-9.]+) bytes sent", dp).group(1))
    step = float(re.search(r"step ([0-9.]+) ms", dp).group(1))
    return {"model": model, "ranks": ranks, "seed": seed, "exchange": mode, "accuracy": acc,
            "final_loss": loss, "seconds": round(time.time() - t0, 1), "payload_bytes": payload,
            "sent_bytes": sent, "step_ms": step}


def table(rows, out_md, args):
    def get(model, ranks, mode):
        return {int(r["seed"]): float(r["accuracy"]) for r in rows
                if r["model"] == model and int(r["ranks"]) == ranks and r["exchange"] == mode}

    lines = ["| model | ranks | FP32 exchange | 4-bit, error feedback | difference | 4-bit, no error feedback"
             " | difference |", "|---|---|---|---|---|---|---|"]
    for model in args.models:
        for ranks in args.ranks:
            f = get(model, ranks, "fp32")
            cells = [model, str(ranks)]
            seeds = sorted(f)
            if not seeds:
                continue
            fa = np.array([f[s] for s in seeds])
            cells.append("%.2f %% (%s)" % (fa.mean(), ", ".join("%.2f" % v for v in fa)))
            for mode in ("log4", "log4-no-ef"):
                q = get(model, ranks, mode)
                common = [s for s in seeds if s in q]
                if not common:
                    cells += ["", ""]
                    continue
                qa = np.array([q[s] for s in common])
                d = qa - np.array([f[s] for s in common])
                cells.append("%.2f %% (%s)" % (qa.mean(), ", ".join("%.2f" % v for v in qa)))
                cells.append("%+.2f pp (worst %+.2f)" % (d.mean(), d[np.argmax(np.abs(d))]))
            lines.append("| " + " | ".join(cells) + " |")
    with open(out_md, "w") as f:
        f.write("# 4-bit gradient exchange vs FP32 exchange: test accuracy (Fashion-MNIST)\n\n")
        f.write("Written by `bench/mpi/accuracy.py` on %s (%s, %d cores). Test accuracy on the 10,000 "
                "test images after training on the first %d training images; per cell the mean over "
                "seeds %s and the values per seed; differences are paired by seed (same data order). "
                "Settings in the script's header.\n\n" % (time.strftime("%Y-%m-%d"), cpu_name(),
                                                          os.cpu_count(), args.train,
                                                          ", ".join(map(str, args.seeds))))
        f.write("\n".join(lines) + "\n")
        total = sum(float(r["seconds"]) for r in rows)
        f.write("\n%d runs, %.0f minutes of wall time in all (the machine's 2 cores were shared with other "
                "jobs: load average 20-30).\n" % (len(rows), total / 60))
    print("\n".join(lines))


def cpu_name():
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                return l.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--models", default="lenet,resnet8")
    ap.add_argument("--ranks", default="2,4")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--train", type=int, default=12000)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "mpi"))
    args = ap.parse_args()
    args.models = args.models.split(",")
    args.ranks = [int(r) for r in args.ranks.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if not shutil.which("mpirun"):
        print("accuracy.py: no mpirun (apt-get install openmpi-bin libopenmpi-dev)")
        return 1
    nibble = os.path.join(os.path.abspath(args.build), "tools", "nibble")
    data = os.path.join(os.path.abspath(args.build), "bench-mpi-data", "fmnist_%d" % args.train)
    make_data(data, args.train)
    csv_path = os.path.join(args.out, "accuracy.csv")
    rows = list(csv.DictReader(open(csv_path))) if os.path.exists(csv_path) else []
    done = {(r["model"], int(r["ranks"]), int(r["seed"]), r["exchange"]) for r in rows}
    t0 = time.time()
    for model in args.models:
        for ranks in args.ranks:
            for seed in args.seeds:
                for mode in MODES:
                    if (model, ranks, seed, mode) in done:
                        continue
                    row = run_one(nibble, data, model, ranks, seed, mode)
                    rows.append(row)
                    new = not os.path.exists(csv_path)
                    with open(csv_path, "a", newline="") as f:
                        w = csv.DictWriter(f, fieldnames=FIELDS)
                        if new:
                            w.writeheader()
                        w.writerow(row)
                    print("%-8s %d ranks seed %d %-10s %.2f %%  %.0f s (total %.0f s)" % (
                        model, ranks, seed, mode, row["accuracy"], row["seconds"], time.time() - t0),
                        flush=True)
    table(rows, os.path.join(args.out, "accuracy.md"), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
