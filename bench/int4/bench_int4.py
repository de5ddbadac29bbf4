#!/usr/bin/python3
"""bench_int4.py - INT4 fast path vs nibble FP32 vs ONNX Runtime FP32, and file sizes.

usage: /usr/bin/python3 bench/int4/bench_int4.py --nibble PATH --refdir DIR
           [--models resnet18,mobilenet_v2] [--threads 1,2] [--runs N] [--warmup W] [--rounds R]
           [--workdir DIR] [--out bench/int4/results.md]

For each model (torchvision export of tests/ref/export_models.py, batch 1, 3x224x224):
- FP32: the exported model.onnx;
- INT4: `nibble convert --passes default,quantize-int4,pack-int4` (weights and activations of
  every Conv/Gemm/MatMul in 4 bits, first and last layer in 8 bits, 4-bit weights stored
  packed); `nibble run` fuses every QuantizeInt4 -> Conv/Gemm/MatMul into the integer kernels
  (runtime/fusions/fuse_int4.c);
- latency: nibble's "mean of the next N-1 runs" (`nibble run --repeat N`), ONNX Runtime's
  in-process mean (`node tests/ref/ort_run.js time`), same thread count, in one run of this
  script: R rounds (default 3) of ORT, nibble FP32, nibble INT4 one after the other per model
  and thread count, the median of the round means reported (with the per-round ratio range:
  the machine's speed drifts between runs);
- sizes: bytes of FP32 model.onnx, of the INT4 file, and their ratio; also of the file with
  every layer in 4 bits (quantize-int4{skip-first-last=0}), timed in the same rounds;
- the default INT4 model again with the kernels capped to AVX2 (NBL_ISA=avx2: what a
  CPU without AVX-512 VNNI runs), in the same rounds, unless the cap is already set;
- agreement: top-1 class of the INT4 fast path vs the INT4 reference path (`--reference`)
  and vs FP32, on the exported input.
Exit status: 0 done, 1 a step failed, 2 bad usage.
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..")))
import bench_models as bm  # noqa: E402  (shares the timing helpers)


@contextlib.contextmanager
def isa_cap(isa):
    """Child processes started inside see NBL_ISA=isa (the variable is unset before); also
    NBL_INT4_ISA, its older name, which is what binaries built before NBL_ISA read (they
    capped only the INT4 path with it)."""
    os.environ["NBL_ISA"] = isa
    os.environ["NBL_INT4_ISA"] = isa
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


def top1(nibble, model, inputs, outdir, reference):
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
        print("bench_int4.py: --threads takes a list like 1,2", file=sys.stderr)
        return 2
    work = args.workdir or os.path.join(args.refdir, "int4")
    avx2_col = "NBL_ISA" not in os.environ and "NBL_INT4_ISA" not in os.environ
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(args.refdir, "manifest.json")) as f:
        manifest = {e["name"]: e for e in json.load(f)["models"]}
    rows, sizes, agree = [], [], []
    ort_version = "?"
    try:
        for name in [m for m in args.models.split(",") if m]:
            if name not in manifest:
                raise bm.BenchError("%s: not in %s/manifest.json" % (name, args.refdir))
            e = manifest[name]
            fp32 = os.path.join(args.refdir, e["model"])
            inputs = {k: os.path.join(args.refdir, v) for k, v in e["inputs"].items()}
            int4 = os.path.join(work, name + "_int4.onnx")
            print("bench_int4: converting %s..." % name, file=sys.stderr, flush=True)
            convert(args.nibble, fp32, int4, "default,quantize-int4,pack-int4")
            # every layer in 4 bits (the paper keeps the first and last in 8)
            all4 = os.path.join(work, name + "_int4_all.onnx")
            convert(args.nibble, fp32, all4, "default,quantize-int4{skip-first-last=0},pack-int4")
            sizes.append((name, os.path.getsize(fp32), os.path.getsize(int4),
                          os.path.getsize(all4)))
            yf = top1(args.nibble, int4, inputs, os.path.join(work, name + "_fast"), False)
            yr = top1(args.nibble, int4, inputs, os.path.join(work, name + "_ref"), True)
            y32 = top1(args.nibble, fp32, inputs, os.path.join(work, name + "_fp32"), False)
            same2 = None
            if avx2_col:
                with isa_cap("avx2"):
                    y2 = top1(args.nibble, int4, inputs, os.path.join(work, name + "_avx2"), False)
                same2 = y2.tobytes() == yf.tobytes()
            agree.append((name, int(yf.argmax()), int(yr.argmax()), int(y32.argmax()),
                          float(abs(yf - yr).max() / max(abs(yr).max(), 1e-30)), same2))
            for t in threads:
                print("bench_int4: %s, %d thread(s)..." % (name, t), file=sys.stderr, flush=True)
                # rounds of ORT, nibble FP32, nibble INT4 one after the other, so that a
                # slow spell of the machine hits all three; medians of the round means
                ort_r, f32_r, i4_r, a4_r, v2_r = [], [], [], [], []
                for _ in range(args.rounds):
                    ort_ms, _, ort_version = bm.ort_latency(fp32, inputs, t, args.runs,
                                                            args.warmup)
                    ort_r.append(ort_ms)
                    f32_r.append(bm.nibble_latency(args.nibble, fp32, inputs, t, args.runs,
                                                   args.warmup)[0])
                    i4_r.append(bm.nibble_latency(args.nibble, int4, inputs, t, args.runs,
                                                  args.warmup)[0])
                    a4_r.append(bm.nibble_latency(args.nibble, all4, inputs, t, args.runs,
                                                  args.warmup)[0])
                    if avx2_col:
                        with isa_cap("avx2"):
                            v2_r.append(bm.nibble_latency(args.nibble, int4, inputs, t,
                                                          args.runs, args.warmup)[0])
                per_round = [i / o for i, o in zip(i4_r, ort_r)]
                per_round_a = [i / o for i, o in zip(a4_r, ort_r)]
                rows.append((name, t, statistics.median(i4_r), statistics.median(f32_r),
                             statistics.median(ort_r), min(per_round), max(per_round),
                             statistics.median(a4_r), min(per_round_a), max(per_round_a),
                             statistics.median(v2_r) if v2_r else None,
                             statistics.median([i / o for i, o in zip(v2_r, ort_r)])
                             if v2_r else None))
    except bm.BenchError as ex:
        print("bench_int4.py: %s" % ex, file=sys.stderr)
        return 1

    isa = os.environ.get("NBL_ISA", os.environ.get("NBL_INT4_ISA", "best available (CPUID)"))
    L = ["# INT4 fast path vs FP32: latency and file size\n",
         "Machine: %s, %d logical CPUs (%s). ONNX Runtime %s (npm onnxruntime-node, CPU). "
         "Batch 1, 3x224x224, random weights (tests/ref/export_models.py). %d rounds of "
         "(ORT, nibble FP32, nibble INT4, nibble INT4 all layers, nibble INT4 on AVX2 kernels), each %d warmup + %d timed runs; the table gives "
         "the median of the round means. INT4 kernels: %s.\n"
         % (platform.machine(), os.cpu_count() or 0, bm.cpu_name(), ort_version, args.rounds,
            args.warmup, args.runs, isa),
         "| model | threads | nibble INT4 ms | nibble FP32 ms | ORT FP32 ms | INT4 / ORT FP32 "
         "| INT4 / ORT FP32 per round | INT4 / nibble FP32 | all-INT4 ms | all-INT4 / ORT FP32 "
         "(per round) | INT4 AVX2 kernels ms | INT4 AVX2 / ORT FP32 |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, t, i4, f32, ort, lo, hi, a4, alo, ahi, v2, v2r in rows:
        L.append("| %s | %d | %.2f | %.2f | %.2f | %.2fx | %.2f-%.2fx | %.2fx | %.2f | "
                 "%.2fx (%.2f-%.2fx) | %s | %s |"
                 % (name, t, i4, f32, ort, i4 / ort, lo, hi, i4 / f32, a4, a4 / ort, alo, ahi,
                    "%.2f" % v2 if v2 is not None else "-",
                    "%.2fx" % v2r if v2r is not None else "-"))
    L += ["", "| model | FP32 file bytes | INT4 file bytes (pack-int4) | ratio | "
          "all layers INT4 (skip-first-last=0) | ratio |", "|---|---|---|---|---|---|"]
    for name, a, b, c in sizes:
        L.append("| %s | %d | %d | %.3fx | %d | %.3fx |" % (name, a, b, b / a, c, c / a))
    L += ["", "| model | top-1 INT4 fast | top-1 INT4 reference | top-1 FP32 | "
          "max rel. diff fast vs reference | AVX2 kernels' output byte-identical |",
          "|---|---|---|---|---|---|"]
    for name, f, r, x, d, same2 in agree:
        L.append("| %s | %d | %d | %d | %.3g | %s |"
                 % (name, f, r, x, d, "-" if same2 is None else "yes" if same2 else "NO"))
    L += ["",
          "- ratio < 1 means the INT4 path is faster / the file smaller.",
          "- INT4 model: `nibble convert --passes default,quantize-int4,pack-int4` (first and "
          "last layers in 8 bits, per-tensor activation scales recomputed every run).",
          "- all-INT4 model: the same with `quantize-int4{skip-first-last=0}`: every Conv, "
          "Gemm and MatMul in 4 bits, weights and activations.",
          ("- INT4 AVX2 kernels: the INT4 model with `NBL_ISA=avx2`, the code a CPU without "
           "AVX-512 VNNI runs (ONNX Runtime still uses AVX-512 here, so this ratio is "
           "pessimistic for such a CPU); whether its output is byte-identical to the default "
           "one is in the last table." if bm.cpu_has("avx512f") else
           "- INT4 AVX2 kernels: the INT4 model with `NBL_ISA=avx2`; this CPU has no AVX-512, "
           "so it runs the same code as the INT4 column (and ONNX Runtime its AVX2 kernels): "
           "the two columns differ only by the machine's noise."),
          "- fast vs reference: the integer kernels are exact, but the reference path sums "
          "float products in float32; a 1-ulp difference upstream can move an activation code "
          "across a rounding boundary and the change propagates, so the whole-model outputs "
          "differ by more than float rounding while each fused layer agrees to 1e-5 "
          "(tests/runtime/kernels/test_int4_kernels.c).",
          "- made by `bench/int4/run_int4_bench.sh` on %s." % time.strftime("%Y-%m-%d")]
    text = "\n".join(L) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
