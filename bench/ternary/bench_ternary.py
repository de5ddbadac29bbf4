#!/usr/bin/python3
"""bench_ternary.py - ternary weights vs INT4 vs FP32 in nibble and ONNX Runtime FP32:
whole-model latency, file sizes, and (with --ops BIN) the one-op throughput table.

usage: /usr/bin/python3 bench/ternary/bench_ternary.py --nibble PATH --refdir DIR
           [--ops PATH/bench_ternary_ops] [--models resnet18,mobilenet_v2] [--threads 1,2]
           [--runs N] [--warmup W] [--rounds R] [--workdir DIR] [--out bench/ternary/results.md]

For each model (torchvision export of tests/ref/export_models.py, batch 1, 3x224x224,
random weights):
- FP32: the exported model.onnx, in nibble and in ONNX Runtime;
- INT4: `nibble convert --passes default,quantize-int4,pack-int4` (first and last layers
  8-bit), the fused INT4 kernels;
- ternary: `nibble convert --passes default,quantize-ternary,pack-ternary` (weights of every
  Conv/Gemm/MatMul ternary, activations INT8 absmax per tensor, first and last layers 8-bit
  through the INT4 path), the fused ternary kernels; and with every layer ternary
  (quantize-ternary{skip-first-last=0});
- ternary and INT4 again with the kernels capped to AVX2 (NBL_ISA=avx2 and NBL_INT4_ISA=avx2:
  what a CPU without AVX-512 VNNI runs), in the same rounds, unless a cap is set already;
- latency: R rounds (default 3) of all of them one after the other per model and thread count,
  the median of the round means reported, with the per-round ratio range of ternary / INT4;
- sizes: the FP32, INT4 and ternary files (base 3; every layer ternary; 2 bits a weight);
- agreement: top-1 of the ternary fast path vs its reference path (--reference) and FP32.
Exit status: 0 done, 1 a step failed, 2 bad usage.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..")))
import bench_models as bm  # noqa: E402  (shares the timing helpers)


@contextlib.contextmanager
def avx2_cap():
    """Child processes started inside run the AVX2 kernels (ternary and INT4)."""
    os.environ["NBL_ISA"] = "avx2"
    os.environ["NBL_INT4_ISA"] = "avx2"
    try:
        yield
    finally:
        del os.environ["NBL_ISA"]
        del os.environ["NBL_INT4_ISA"]


def convert(nibble, src, dst, passes):
    r = subprocess.run([nibble, "convert", src, "-o", dst, "--passes", passes],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise bm.BenchError("nibble convert %s failed: %s" % (src, r.stderr.strip()[-300:]))


def output(nibble, model, inputs, outdir, reference):
    import numpy as np
    cmd = [nibble, "run", model, "--output-dir", outdir]
    for n, f in inputs.items():
        cmd += ["--input", "%s=%s" % (n, f)]
    if reference:
        cmd.append("--reference")
    bm.run(cmd, 1, "nibble run (outputs)")
    files = sorted(f for f in os.listdir(outdir) if f.endswith(".npy"))
    return np.load(os.path.join(outdir, files[0]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nibble", required=True)
    ap.add_argument("--refdir", required=True)
    ap.add_argument("--ops", default=None, help="bench_ternary_ops binary: the one-op table")
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results.md"))
    args = ap.parse_args()
    try:
        threads = [int(t) for t in args.threads.split(",") if t]
    except ValueError:
        print("bench_ternary.py: --threads takes a list like 1,2", file=sys.stderr)
        return 2
    work = args.workdir or os.path.join(args.refdir, "ternary-bench")
    capped = "NBL_ISA" in os.environ or "NBL_INT4_ISA" in os.environ
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(args.refdir, "manifest.json")) as f:
        manifest = {e["name"]: e for e in json.load(f)["models"]}
    rows, sizes, agree, ops = [], [], [], {}
    ort_version = "?"
    t_start = time.time()
    try:
        if args.ops:
            for t in threads:
                print("bench_ternary: ops, %d thread(s)..." % t, file=sys.stderr, flush=True)
                r, _ = bm.run([args.ops, str(t), str(args.runs)], t, "bench_ternary_ops")
                ops[t] = r.stdout
                if not capped:
                    with avx2_cap():
                        r, _ = bm.run([args.ops, str(t), str(args.runs)], t, "bench_ternary_ops")
                    ops[-t] = r.stdout
        for name in [m for m in args.models.split(",") if m]:
            if name not in manifest:
                raise bm.BenchError("%s: not in %s/manifest.json" % (name, args.refdir))
            e = manifest[name]
            fp32 = os.path.join(args.refdir, e["model"])
            inputs = {k: os.path.join(args.refdir, v) for k, v in e["inputs"].items()}
            p = lambda s: os.path.join(work, "%s_%s.onnx" % (name, s))
            print("bench_ternary: converting %s..." % name, file=sys.stderr, flush=True)
            convert(args.nibble, fp32, p("int4"), "default,quantize-int4,pack-int4")
            convert(args.nibble, fp32, p("tern"), "default,quantize-ternary,pack-ternary")
            convert(args.nibble, fp32, p("tern_all"),
                    "default,quantize-ternary{skip-first-last=0},pack-ternary")
            convert(args.nibble, fp32, p("tern_2bit"),
                    "default,quantize-ternary,pack-ternary{packing=2bit}")
            sizes.append((name, os.path.getsize(fp32), os.path.getsize(p("int4")),
                          os.path.getsize(p("tern")), os.path.getsize(p("tern_all")),
                          os.path.getsize(p("tern_2bit"))))
            yf = output(args.nibble, p("tern"), inputs, os.path.join(work, name + "_fast"), False)
            yr = output(args.nibble, p("tern"), inputs, os.path.join(work, name + "_ref"), True)
            y32 = output(args.nibble, fp32, inputs, os.path.join(work, name + "_fp32"), False)
            same2 = None
            if not capped:
                with avx2_cap():
                    y2 = output(args.nibble, p("tern"), inputs, os.path.join(work, name + "_avx2"),
                                False)
                same2 = float(abs(y2 - yf).max() / max(abs(yf).max(), 1e-30))
            agree.append((name, int(yf.argmax()), int(yr.argmax()), int(y32.argmax()),
                          float(abs(yf - yr).max() / max(abs(yr).max(), 1e-30)), same2))
            for t in threads:
                print("bench_ternary: %s, %d thread(s)..." % (name, t), file=sys.stderr,
                      flush=True)
                r = {k: [] for k in ("ort", "f32", "i4", "t", "ta", "t2", "i42")}
                lat = lambda m: bm.nibble_latency(args.nibble, m, inputs, t, args.runs,
                                                  args.warmup)[0]
                for _ in range(args.rounds):
                    ort_ms, _, ort_version = bm.ort_latency(fp32, inputs, t, args.runs,
                                                            args.warmup)
                    r["ort"].append(ort_ms)
                    r["f32"].append(lat(fp32))
                    r["i4"].append(lat(p("int4")))
                    r["t"].append(lat(p("tern")))
                    r["ta"].append(lat(p("tern_all")))
                    if not capped:
                        with avx2_cap():
                            r["t2"].append(lat(p("tern")))
                            r["i42"].append(lat(p("int4")))
                med = {k: statistics.median(v) if v else None for k, v in r.items()}
                ratio = [a / b for a, b in zip(r["t"], r["i4"])]
                rows.append((name, t, med, min(ratio), max(ratio)))
    except bm.BenchError as ex:
        print("bench_ternary.py: %s" % ex, file=sys.stderr)
        return 1

    L = ["# Ternary weights vs INT4 vs FP32: throughput, latency and file size\n",
         "Machine: %s, %d logical CPUs (%s); %s. ONNX Runtime %s (npm onnxruntime-node, CPU). "
         "One run of `bench/ternary/run_ternary_bench.sh` (%d s).\n"
         % (os.uname().machine, os.cpu_count() or 0, bm.cpu_name(), time.strftime("%Y-%m-%d"),
            ort_version, int(time.time() - t_start))]
    for t in sorted(k for k in ops if k > 0):
        L += ["## One op, %d thread(s), the CPU's best kernels\n" % t, ops[t]]
        if -t in ops:
            L += ["## One op, %d thread(s), kernels capped to AVX2 (NBL_ISA=avx2)\n" % t, ops[-t]]
    L += ["## Whole models (batch 1, 3x224x224, random weights)\n",
         "%d rounds of (ORT FP32, nibble FP32, INT4, ternary, ternary every layer%s), each %d "
         "warmup + %d timed runs; medians of the round means.\n"
         % (args.rounds, ", ternary and INT4 on AVX2 kernels" if not capped else "", args.warmup,
            args.runs),
         "| model | threads | ORT FP32 ms | nibble FP32 ms | INT4 ms | ternary ms | ternary / INT4 "
         "(per round) | ternary / ORT FP32 | ternary / nibble FP32 | ternary every layer ms | "
         "ternary AVX2 ms | INT4 AVX2 ms |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, t, m, lo, hi in rows:
        f = lambda v: "%.2f" % v if v is not None else "-"
        L.append("| %s | %d | %s | %s | %s | %s | %.2fx (%.2f-%.2fx) | %.2fx | %.2fx | %s | %s | %s |"
                 % (name, t, f(m["ort"]), f(m["f32"]), f(m["i4"]), f(m["t"]), m["t"] / m["i4"],
                    lo, hi, m["t"] / m["ort"], m["t"] / m["f32"], f(m["ta"]), f(m["t2"]),
                    f(m["i42"])))
    L += ["", "## File sizes\n",
          "| model | FP32 bytes | INT4 (pack-int4) | ternary, first/last 8-bit (pack-ternary) | "
          "ternary, every layer | ternary, 2 bits a weight |", "|---|---|---|---|---|---|"]
    for name, a, b, c, d, e2 in sizes:
        L.append("| %s | %d | %d (%.3fx) | %d (%.3fx) | %d (%.3fx) | %d (%.3fx) |"
                 % (name, a, b, b / a, c, c / a, d, d / a, e2, e2 / a))
    L += ["", "## Agreement\n",
          "| model | top-1 ternary fast | top-1 ternary reference | top-1 FP32 | max rel. diff "
          "fast vs reference | AVX2 kernels vs default, max rel. diff |", "|---|---|---|---|---|---|"]
    for name, a, b, c, d, s2 in agree:
        L.append("| %s | %d | %d | %d | %.3g | %s |" % (name, a, b, c, d,
                                                        "-" if s2 is None else "%.3g" % s2))
    L += ["",
          "- ratios below 1: ternary is faster / the file smaller.",
          "- ternary model: `nibble convert --passes default,quantize-ternary,pack-ternary`; the "
          "first and last layers stay 8-bit (QuantizeInt4 bits=8, run by the INT4 kernels).",
          "- fast vs reference: the integer kernels are exact, but the reference path sums float "
          "products in float32; a 1-ulp difference upstream can move an activation code across a "
          "rounding boundary, so random-weight networks differ by more than float rounding while "
          "each fused layer agrees to 1e-5 (tests/runtime/kernels/test_ternary_kernels.c).",
          "- made by `bench/ternary/run_ternary_bench.sh`."]
    text = "\n".join(L) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
