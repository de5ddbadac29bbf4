#!/usr/bin/python3
"""compare_models.py - whole-model check of `nibble run` against ONNX Runtime.

usage: /usr/bin/python3 compare_models.py [--nibble PATH] [--refdir DIR]
           [--models a,b,...] [--tol T] [--threads N] [--no-prepare]
           [--modes fast,reference,roundtrip,passes]

For every model of the reference set (tests/ref/export_models.py: ResNet-18,
MobileNetV2, SqueezeNet 1.1, a transformer encoder with random weights;
ResNet-18 and MobileNetV2 trained on Fashion-MNIST) and the models nibble
ships (models/mlp.onnx, models/lenet5.onnx on models/data/fmnist_test_100.npy),
runs `nibble run MODEL --input NAME=FILE ... --output-dir DIR` on the fast path
and with --reference, and compares every output with ONNX Runtime's. Mode
"roundtrip" instead saves the model with `nibble convert MODEL -o OUT` (no
passes) and runs OUT under ONNX Runtime, which checks the parser's load/save
path; mode "passes" does the same after the pipeline PASSES (below), which
checks that the rewrites keep the model's meaning. Every check: relative
error = max|nibble - ort| / max|ort| must be <= T (default 1e-4).
Prints a table; exit status 0 all passed, 1 a model failed or mismatched,
2 bad usage, 77 (skip) node, npm, numpy, or torch/torchvision/onnx for
/usr/bin/python3 is not installed (ONNX Runtime itself is installed by
prepare.sh with npm when missing).

Defaults come from the meson test environment: $NIBBLE (the nibble binary),
$NBL_BUILD_ROOT/ref-models (reference set, made by prepare.sh if missing).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

SKIP = 77
MODES = ("fast", "reference", "roundtrip", "passes")
PASSES = "infer-shapes,fold-constants,eliminate-identity,fold-batchnorm,fuse-bias,dce"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
SHIPPED = [("mlp", "models/mlp.onnx"), ("lenet5", "models/lenet5.onnx")]
SHIPPED_INPUT = "models/data/fmnist_test_100.npy"

try:
    import numpy as np
except ImportError:
    print("compare_models.py: numpy not installed: skipped", file=sys.stderr)
    sys.exit(SKIP)


def rel_err(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if b.size == 0:
        return 0.0, 0.0
    diff = float(np.max(np.abs(a - b)))
    denom = float(np.max(np.abs(b)))
    return (diff / denom if denom > 0 else diff), diff


def read_tensor(path):
    if path.endswith(".npy"):
        return np.load(path)
    import onnx
    from onnx import numpy_helper
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def find_output(outdir, name, index):
    """nibble's file for output `name`: <name>.npy/.pb (unsafe characters -> '_')
    or output_<index>.npy/.pb."""
    safe = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name)
    for stem in (name, safe, "output_%d" % index):
        for ext in (".npy", ".pb"):
            p = os.path.join(outdir, stem + ext)
            if os.path.isfile(p):
                return p
    return None


def have_tools():
    if shutil.which("node") is None:
        return "node is not installed"
    try:
        import torch  # noqa: F401
        import onnx  # noqa: F401
    except ImportError:
        return "torch or onnx (python) is not installed for %s" % sys.executable
    return None


def ort_outputs(model, inputs, outdir):
    """Run ONNX Runtime on `model` (inputs: name -> file); returns name -> file."""
    cmd = ["node", os.path.join(HERE, "ort_run.js"), "run", model, "--output-dir", outdir,
           "--threads", "1"]
    for n, f in inputs.items():
        cmd += ["--input", "%s=%s" % (n, f)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("ONNX Runtime failed on %s: %s" % (model, r.stderr.strip()))
    outs = {}
    for line in r.stdout.splitlines():
        name, _, rest = line.partition(": ")
        if " -> " in rest:
            outs[name] = rest.split(" -> ", 1)[1]
    return outs


def collect_cases(refdir):
    """(name, model path, {input: file}, {output: ort file}) for every model."""
    cases = []
    with open(os.path.join(refdir, "manifest.json")) as f:
        manifest = json.load(f)
    for e in manifest["models"]:
        cases.append((e["name"], os.path.join(refdir, e["model"]),
                      {k: os.path.join(refdir, v) for k, v in e["inputs"].items()},
                      {k: os.path.join(refdir, v) for k, v in e["outputs"].items()}))
    for name, rel in SHIPPED:
        model = os.path.join(ROOT, rel)
        inputs = {"input": os.path.join(ROOT, SHIPPED_INPUT)}
        odir = os.path.join(refdir, "shipped", name, "ort")
        os.makedirs(odir, exist_ok=True)
        cases.append((name, model, inputs, ort_outputs(model, inputs, odir)))
    return cases


def run_nibble(nibble, model, inputs, outdir, threads, reference):
    cmd = [nibble, "run", model, "--output-dir", outdir, "--threads", str(threads)]
    for n, f in inputs.items():
        cmd += ["--input", "%s=%s" % (n, f)]
    if reference:
        cmd.append("--reference")
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r, time.time() - t0, " ".join(cmd)


def run_roundtrip(nibble, model, inputs, outdir, passes=None):
    """nibble convert MODEL -o OUTDIR/model.onnx [--passes P], then ONNX Runtime
    on it into OUTDIR."""
    saved = os.path.join(outdir, "model.onnx")
    cmd = [nibble, "convert", model, "-o", saved]
    if passes:
        cmd += ["--passes", passes, "--verify-each"]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode == 0:
        cmd = ["node", os.path.join(HERE, "ort_run.js"), "run", saved, "--output-dir", outdir,
               "--threads", "1"]
        for n, f in inputs.items():
            cmd += ["--input", "%s=%s" % (n, f)]
        r = subprocess.run(cmd, capture_output=True, text=True)
    return r, time.time() - t0, " ".join(cmd)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nibble", default=os.environ.get("NIBBLE"))
    build_root = os.environ.get("NBL_BUILD_ROOT", os.path.join(ROOT, "build"))
    ap.add_argument("--refdir", default=os.path.join(build_root, "ref-models"))
    ap.add_argument("--models", default="")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--no-prepare", action="store_true")
    args = ap.parse_args()
    if not args.nibble or not os.path.isfile(args.nibble):
        print("compare_models.py: nibble binary not found (--nibble PATH or $NIBBLE)",
              file=sys.stderr)
        return 2
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in MODES for m in modes):
        print("compare_models.py: --modes takes %s" % ",".join(MODES), file=sys.stderr)
        return 2
    missing = have_tools()
    if missing:
        print("compare_models.py: %s: skipped" % missing, file=sys.stderr)
        return SKIP
    if not args.no_prepare:
        r = subprocess.run(["sh", os.path.join(HERE, "prepare.sh"), args.refdir])
        if r.returncode != 0:
            return r.returncode
    try:
        cases = collect_cases(args.refdir)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        print("compare_models.py: %s" % e, file=sys.stderr)
        return 1
    if args.models:
        want = set(args.models.split(","))
        cases = [c for c in cases if c[0] in want]

    rows, failures = [], []
    with tempfile.TemporaryDirectory(prefix="nbl-cmp-") as tmp:
        for name, model, inputs, ort in cases:
            for mode in modes:
                outdir = os.path.join(tmp, name, mode)
                os.makedirs(outdir)
                if mode in ("roundtrip", "passes"):
                    r, secs, cmd = run_roundtrip(args.nibble, model, inputs, outdir,
                                                 PASSES if mode == "passes" else None)
                else:
                    r, secs, cmd = run_nibble(args.nibble, model, inputs, outdir, args.threads,
                                              mode == "reference")
                if r.returncode != 0:
                    msg = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
                    rows.append((name, "-", mode, None, None, secs, "RUN FAILED"))
                    failures.append("%s [%s]: exit %d: %s\n    %s"
                                    % (name, mode, r.returncode, msg, cmd))
                    continue
                for i, (oname, ofile) in enumerate(ort.items()):
                    ref = np.load(ofile)
                    got_path = find_output(outdir, oname, i)
                    if got_path is None:
                        rows.append((name, oname, mode, None, None, secs, "NO OUTPUT"))
                        failures.append("%s [%s]: no file for output '%s' in --output-dir "
                                        "(found: %s)" % (name, mode, oname,
                                                         ", ".join(os.listdir(outdir)) or "none"))
                        continue
                    got = read_tensor(got_path)
                    if got.shape != ref.shape:
                        rows.append((name, oname, mode, None, None, secs, "SHAPE"))
                        failures.append("%s [%s]: output '%s' has shape %s, ONNX Runtime %s"
                                        % (name, mode, oname, got.shape, ref.shape))
                        continue
                    rel, mx = rel_err(got, ref)
                    ok = rel <= args.tol  # NaN fails
                    rows.append((name, oname, mode, rel, mx, secs, "ok" if ok else "MISMATCH"))
                    if not ok:
                        failures.append("%s [%s]: output '%s' relative error %.3e > %.1e"
                                        % (name, mode, oname, rel, args.tol))

    print("| model | output | path | rel err | max abs err | wall s | result |")
    print("|---|---|---|---|---|---|---|")
    for name, oname, mode, rel, mx, secs, res in rows:
        print("| %s | %s | %s | %s | %s | %.2f | %s |"
              % (name, oname, mode, "-" if rel is None else "%.2e" % rel,
                 "-" if mx is None else "%.2e" % mx, secs, res))
    print("\ntolerance: max|nibble - ort| / max|ort| <= %.1e; %d checks, %d failed"
          % (args.tol, len(rows), len(failures)))
    for f in failures:
        print("FAIL " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
