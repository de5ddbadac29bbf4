#!/usr/bin/python3
"""torch_step.py - PyTorch's FP32 training step, for run_train4_bench.py.

usage: /usr/bin/python3 bench/train4/torch_step.py MODEL X.npy Y.npy --threads T
                        [--batch B] [--warmup W] [--runs N]

MODEL is lenet5 or resnet8: the module models/make_models.py builds (after
torch.manual_seed(0), the weights of models/*_init.onnx), in training mode.
One step is what `nibble train` does per batch with SGD: forward,
cross-entropy, backward, optimizer step, gradients zeroed (eager mode,
torch.set_num_threads(T)); the batch is the first B rows of X.npy / Y.npy.
Prints one JSON line {"torch_version", "threads", "runs", "median_ms",
"mean_ms", "min_ms", "cpu_median_ms"} over N steps after W warm-up steps
(wall time; the last the process's CPU time per step).
Exit status: 0 done, 2 bad usage.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models"))
import make_models  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", choices=["lenet5", "resnet8"])
    ap.add_argument("x")
    ap.add_argument("y")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = make_models.LeNet5() if args.model == "lenet5" else make_models.ResNet8()
    model.train()
    x = torch.from_numpy(np.load(args.x)[:args.batch].copy())
    y = torch.from_numpy(np.load(args.y)[:args.batch].copy())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ms, cpu = [], []
    for k in range(args.warmup + args.runs):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        if k >= args.warmup:
            ms.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
    print(json.dumps({"torch_version": torch.__version__, "threads": args.threads, "runs": args.runs,
                      "median_ms": statistics.median(ms), "mean_ms": statistics.mean(ms), "min_ms": min(ms),
                      "cpu_median_ms": statistics.median(cpu)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
