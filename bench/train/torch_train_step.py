#!/usr/bin/python3
"""torch_train_step.py - PyTorch's training step time and peak memory, for bench_train.py.

usage: /usr/bin/python3 bench/train/torch_train_step.py MODEL --threads T [--batch B]
                                                        [--warmup W] [--runs N]
                                                        [--momentum M] [--data X.npy Y.npy]
  MODEL  lenet5 | resnet8: the module of models/make_models.py with the weights of
         models/MODEL_init.onnx (PyTorch's initialization after torch.manual_seed(0))

One training step, as `nibble train` takes it: zero_grad, forward (train() mode:
BatchNorm on batch statistics), mean cross-entropy, backward, torch.optim.SGD
(lr 0.01, momentum M: 0.9 by default, 0 for plain SGD) step, on a fixed random
batch (float32 [B,1,28,28], labels in 0..9, seeded) or the first B rows of
X.npy / Y.npy. Prints one JSON line: torch_version, threads, batch, runs,
median_ms, mean_ms, min_ms (wall time of a step), cpu_ms (CPU time of the
process per step, all threads), cpu_median_ms (the median of each step's CPU
time), the resident set before the first step (after importing torch and
building the module: rss_base_kb) and its peak over the run (peak_rss_kb,
VmHWM).
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "models"))
import make_models  # noqa: E402


def status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", choices=["lenet5", "resnet8"])
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--data", nargs=2, metavar=("X", "Y"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = make_models.MODELS[args.model]()
    w0 = {t.name: numpy_helper.to_array(t).copy()
          for t in onnx.load(os.path.join(ROOT, "models", args.model + "_init.onnx")).graph.initializer}
    net.load_state_dict({k: (torch.from_numpy(w0[k]) if k in w0 else v) for k, v in net.state_dict().items()})
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=args.momentum)
    if args.data:
        x = torch.from_numpy(np.load(args.data[0])[:args.batch].copy())
        y = torch.from_numpy(np.load(args.data[1])[:args.batch].copy())
    else:
        rng = np.random.default_rng(0)
        x = torch.from_numpy(rng.standard_normal((args.batch, 1, 28, 28)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, 10, args.batch).astype(np.int64))
    base = status_kb("VmRSS")
    ms, cpus, c0 = [], [], 0.0
    for i in range(args.warmup + args.runs):
        if i == args.warmup:
            c0 = time.process_time()
        t0, p0 = time.perf_counter(), time.process_time()
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        dt, dc = (time.perf_counter() - t0) * 1000.0, (time.process_time() - p0) * 1000.0
        if i >= args.warmup:
            ms.append(dt)
            cpus.append(dc)
    cpu = (time.process_time() - c0) * 1000.0 / args.runs
    if not np.isfinite(loss.item()):
        print("torch_train_step.py: the loss is not finite", file=sys.stderr)
        return 1
    print(json.dumps({"torch_version": torch.__version__, "threads": args.threads, "batch": args.batch,
                      "runs": args.runs, "median_ms": round(statistics.median(ms), 3),
                      "mean_ms": round(statistics.mean(ms), 3), "min_ms": round(min(ms), 3),
                      "cpu_ms": round(cpu, 3), "cpu_median_ms": round(statistics.median(cpus), 3),
                      "rss_base_kb": base, "peak_rss_kb": status_kb("VmHWM")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
