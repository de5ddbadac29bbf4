#!/usr/bin/python3
"""torch_time.py - PyTorch latency of a reference model, for bench_models.py.

usage: /usr/bin/python3 bench/torch_time.py MODEL_NAME INPUT.npy... --threads T [--warmup W] [--runs N]

Rebuilds the module tests/ref/export_models.py exports (same seed, same weights),
runs it under torch.no_grad() on the given inputs with torch.set_num_threads(T)
and prints one JSON line {"torch_version", "threads", "runs", "mean_ms", "median_ms"}.
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
import export_models  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    if args.model not in export_models.MODELS:
        print("torch_time.py: unknown model %s" % args.model, file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    model, _, _ = export_models.build_model(args.model)
    xs = tuple(torch.from_numpy(np.load(f)) for f in args.inputs)
    ms = []
    with torch.no_grad():
        for _ in range(args.warmup):
            model(*xs)
        for _ in range(args.runs):
            t0 = time.perf_counter()
            model(*xs)
            ms.append((time.perf_counter() - t0) * 1000.0)
    print(json.dumps({"torch_version": torch.__version__, "threads": args.threads,
                      "runs": args.runs, "mean_ms": round(statistics.mean(ms), 3),
                      "median_ms": round(statistics.median(ms), 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
