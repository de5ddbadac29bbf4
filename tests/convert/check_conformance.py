#!/usr/bin/python3
"""check_conformance.py - every conformance model converted to the newest opset
still passes its own test data, in nibble and in ONNX Runtime.

usage: /usr/bin/python3 check_conformance.py [--nibble PATH] [--data DIR]
           [--target N] [--folders node,simple,...] [--no-ort] [--keep DIR]

For every model of the ONNX backend test data (libonnx-testdata folders node,
simple, pytorch-converted, pytorch-operator) whose default-domain opset is
below the target (21):
  1. nibble convert model.onnx --passes convert-opset{target=21} --verify-each
     into a mirror folder (test data linked);
  2. nibble test on the mirror folders with the same expected-failures list and
     tolerances as the conformance tests (tests/conformance/): a converted model
     failing where the list does not expect it is a failure;
  3. a model the converter refuses is counted and listed with the message; one
     whose original passes in nibble is a failure unless KNOWN_REFUSALS names it
     with its reason;
  4. ONNX Runtime (tests/ref/ort_run.js batch) runs every converted model and its
     original on each test data set, and the outputs are compared with the
     expected ones (same tolerances: default rtol 1e-3, atol 1e-7, and the
     overrides). A converted model ONNX Runtime gets wrong or cannot run where
     it gets the original right is a failure; models ONNX Runtime cannot run
     either way are counted (its own limits: old opsets, missing types).
     Models with ops the op table flags random are left out of this step: their
     outputs are random in both forms, so a match would be luck.
The headline figures are for opsets 7 to 20 (what the issue asks); older models
(opset 1 to 6) are converted and checked too and reported on their own line.
Exit 0 pass, 1 fail, 77 skip (no test data or no onnx/numpy).
"""
import argparse
import fnmatch
import glob
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FOLDERS = ["node", "simple", "pytorch-converted", "pytorch-operator"]

# Models the runtime runs but the converter refuses, with the reason.
KNOWN_REFUSALS = {
    "test_scan_sum": "Scan-8 (batched, with sequence_lens) has no adapter to Scan-9",
}

try:
    import numpy as np
    import onnx
    from onnx import numpy_helper
except ImportError:
    print("check_conformance.py: numpy or onnx not installed: skipped", file=sys.stderr)
    sys.exit(SKIP)


sys.path.insert(0, os.path.join(HERE, "..", "conformance"))
from regen_expected import random_ops  # noqa: E402  (one reading of the op table's random flag)


def has_random_op(path, ops):
    m = onnx.load(path, load_external_data=False)
    return any(n.op_type in ops and n.domain in ("", "ai.onnx") for n in m.graph.node)


def default_opset(path):
    m = onnx.load(path, load_external_data=False)
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return None


def run_tests(nibble, dirs, out):
    """nibble test -v over dirs: {test name: status}, status PASS/FAIL/XFAIL/SKIP/..."""
    cmd = [nibble, "test", *dirs, "-v",
           "--expected-failures", os.path.join(ROOT, "tests/conformance/expected_failures.txt"),
           "--tolerances", os.path.join(ROOT, "tests/conformance/tolerances.txt")]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    status, lines = {}, {}
    for line in p.stdout.splitlines():
        word, _, rest = line.partition(" ")
        name = rest.split(":")[0].strip()
        if word.isupper() and name.startswith("test_"):
            status[name] = word
            lines[name] = line
    with open(out, "w") as f:
        f.write(p.stdout)
    return status, lines


def load_tolerances():
    exact, globs = {}, []
    with open(os.path.join(ROOT, "tests/conformance/tolerances.txt")) as f:
        for line in f:
            line = line.split("#")[0].split()
            if len(line) < 3:
                continue
            pat, rtol, atol = line[0], float(line[1]), float(line[2])
            if any(c in pat for c in "*?["):
                globs.append((pat, rtol, atol))
            else:
                exact.setdefault(pat, (rtol, atol))
    def tol(name):
        if name in exact:
            return exact[name]
        for pat, r, a in globs:
            if fnmatch.fnmatchcase(name, pat):
                return (r, a)
        return (1e-3, 1e-7)
    return tol


def read_pb(path):
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def outputs_match(outdir, dataset, rtol, atol):
    """ORT outputs in outdir vs the expected ones of dataset: None if equal, else why."""
    exp = sorted(glob.glob(os.path.join(dataset, "output_*.pb")),
                 key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))
    for i, e in enumerate(exp):
        got_p = os.path.join(outdir, "out_%d.npy" % i)
        if not os.path.exists(got_p):
            return "output %d missing" % i
        want, got = read_pb(e), np.load(got_p)
        if want.shape != got.shape:
            return "output %d shape %s, expected %s" % (i, got.shape, want.shape)
        if want.dtype.kind in "fc":
            w, g = want.astype(np.float64), got.astype(np.float64)
            if not np.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
                return "output %d differs: max |diff| %.3g" % (i, float(np.nanmax(np.abs(g - w))))
        elif not np.array_equal(want, got):
            return "output %d differs" % i
    return None


def ort_same(dir_a, dir_b):
    """Largest difference between the ORT outputs in two folders (None: not comparable)."""
    worst = 0.0
    for fa in sorted(glob.glob(os.path.join(dir_a, "out_*.npy"))):
        fb = os.path.join(dir_b, os.path.basename(fa))
        if not os.path.exists(fb):
            return None
        a, b = np.load(fa), np.load(fb)
        if a.shape != b.shape or a.dtype != b.dtype:
            return None
        if a.dtype.kind in "fc":
            a, b = a.astype(np.float64), b.astype(np.float64)
            both_nan = np.isnan(a) & np.isnan(b)
            d = np.where(both_nan, 0, np.abs(a - b) / np.maximum(1.0, np.abs(b)))
            if d.size:
                worst = max(worst, float(np.nanmax(np.where(np.isnan(d), np.inf, d))))
        elif not np.array_equal(a, b):
            return None
    return worst


def run_ort(jobs, tmp):
    """Run jobs [(key, model, outdir, inputs)] in one node process: {key: None or error}."""
    jf = os.path.join(tmp, "jobs.tsv")
    with open(jf, "w") as f:
        for _, model, outdir, inputs in jobs:
            f.write("\t".join([model, outdir, *inputs]) + "\n")
    p = subprocess.run(["node", os.path.join(ROOT, "tests/ref/ort_run.js"), "batch", jf],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    res = {}
    for line in p.stdout.splitlines():
        if line.startswith("OK "):
            res[line[3:]] = None
        elif line.startswith("ERR "):
            model, _, msg = line[4:].partition(": ")
            res[model] = msg or "failed"
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nibble", default=os.environ.get("NIBBLE", os.path.join(ROOT, "build/tools/nibble")))
    ap.add_argument("--data", default=os.environ.get("NBL_TESTDATA", "/usr/share/libonnx-testdata/data"))
    ap.add_argument("--target", type=int, default=21)
    ap.add_argument("--folders", default=",".join(FOLDERS))
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--keep", help="keep the converted models in this folder")
    a = ap.parse_args()
    folders = [f for f in a.folders.split(",") if os.path.isdir(os.path.join(a.data, f))]
    if not folders:
        print("no test data under %s: skipped" % a.data)
        return SKIP
    tmp = tempfile.mkdtemp(prefix="nbl_convert_")
    out = a.keep or os.path.join(tmp, "conv")
    failures = []
    try:
        models = []  # (folder, name, opset)
        for folder in folders:
            for t in sorted(glob.glob(os.path.join(a.data, folder, "*", "model.onnx"))):
                op = default_opset(t)
                if op is not None and op < a.target:
                    models.append((folder, os.path.basename(os.path.dirname(t)), op))
        opset_of = {name: op for _, name, op in models}
        refused = {}
        for folder, name, op in models:
            src = os.path.join(a.data, folder, name)
            dst = os.path.join(out, folder, name)
            os.makedirs(dst, exist_ok=True)
            for d in glob.glob(os.path.join(src, "test_data_set_*")):
                os.symlink(d, os.path.join(dst, os.path.basename(d)))
            p = subprocess.run([a.nibble, "convert", os.path.join(src, "model.onnx"), "-o",
                                os.path.join(dst, "model.onnx"), "--passes",
                                "convert-opset{target=%d}" % a.target, "--verify-each"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if p.returncode:
                msg = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"
                refused[name] = (folder, msg[msg.rfind(": node ") + 2:] if ": node " in msg else msg)
                shutil.rmtree(dst)
        conv_dirs = [os.path.join(out, f) for f in folders if os.path.isdir(os.path.join(out, f))]
        conv_status, conv_lines = run_tests(a.nibble, conv_dirs, os.path.join(tmp, "conv.txt"))
        # originals of the refused models: does the runtime run them?
        orig_status = {}
        if refused:
            orig_status, _ = run_tests(a.nibble, [os.path.join(a.data, f, n) for n, (f, _) in
                                                  refused.items()], os.path.join(tmp, "orig.txt"))
        for name, st in sorted(conv_status.items()):
            if st in ("FAIL", "XPASS"):
                failures.append("converted %s: %s" % (name, conv_lines[name]))
        for name, (folder, msg) in sorted(refused.items()):
            if orig_status.get(name) == "PASS" and name not in KNOWN_REFUSALS:
                failures.append("refused, but the original runs: %s/%s: %s" % (folder, name, msg))

        def tally(pred):
            sel = [n for _, n, op in models if pred(op)]
            conv = [n for n in sel if n not in refused]
            passed = [n for n in conv if conv_status.get(n) == "PASS"]
            other = [n for n in conv if conv_status.get(n) not in ("PASS", None)]
            return len(sel), len(conv), len(passed), len(other), [n for n in sel if n in refused]

        print("convert-opset{target=%d} over %s" % (a.target, ", ".join(folders)))
        for label, pred in (("opsets 7..%d" % (a.target - 1), lambda op: op >= 7),
                            ("opsets 1..6", lambda op: op < 7)):
            n, c, p, o, r = tally(pred)
            runnable = [x for x in r if orig_status.get(x) == "PASS"]
            print("  %s: %d models, %d converted (%d pass their test data in nibble, %d expected "
                  "failures or skips as before), %d refused (%d of them run in nibble unconverted)"
                  % (label, n, c, p, o, len(r), len(runnable)))
        by_reason = {}
        for name, (folder, msg) in refused.items():
            key = msg.split(": ", 1)[-1] if "not in nibble's op table" in msg else msg
            op = msg.split("(")[1].split(",")[0] if "(" in msg else "?"
            by_reason.setdefault((op, "not in nibble's op table" in msg), []).append(name)
        for (op, no_table), names in sorted(by_reason.items()):
            why = "no table entry (no kernel)" if no_table else refused[names[0]][1]
            extra = " [%s]" % KNOWN_REFUSALS[names[0]] if names[0] in KNOWN_REFUSALS else ""
            print("    refused %-20s %2d: %s%s" % (op, len(names), why if not no_table else
                                                   why + ": " + ", ".join(sorted(names)[:4]) +
                                                   (", ..." if len(names) > 4 else ""), extra))

        if not a.no_ort and shutil.which("node") and \
                os.path.isdir(os.path.join(ROOT, "node_modules", "onnxruntime-node")):
            tol = load_tolerances()
            jobs = []
            rnd = random_ops(a.nibble)
            random_models = [n for f, n, _ in models if n not in refused and
                             has_random_op(os.path.join(a.data, f, n, "model.onnx"), rnd)]
            if random_models:
                print("  ONNX Runtime: %d models with random ops not compared (random outputs): %s"
                      % (len(random_models), ", ".join(sorted(random_models))))
            for folder, name, op in models:
                if name in refused or name in random_models:
                    continue
                for ds in sorted(glob.glob(os.path.join(a.data, folder, name, "test_data_set_*"))):
                    ins = sorted(glob.glob(os.path.join(ds, "input_*.pb")),
                                 key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))
                    d = os.path.basename(ds)
                    for kind, model in (("conv", os.path.join(out, folder, name, "model.onnx")),
                                        ("orig", os.path.join(a.data, folder, name, "model.onnx"))):
                        jobs.append(((kind, name, d), model,
                                     os.path.join(tmp, "ort", kind, folder, name, d), ins))
            res = run_ort(jobs, tmp)
            verdict = {}  # (kind, name) -> None ok / error
            for (key, model, outdir, _) in jobs:
                kind, name, d = key
                err = res.get(model, "no result")
                if err is None:
                    err = outputs_match(outdir, os.path.join(a.data, next(
                        f for f, n, _ in models if n == name), name, d), *tol(name))
                if verdict.get((kind, name)) is None:
                    verdict[(kind, name)] = err
            names = sorted({n for (_, n) in verdict})
            both = [n for n in names if verdict[("conv", n)] is None and verdict[("orig", n)] is None]
            conv_only = [n for n in names if verdict[("conv", n)] is None and verdict[("orig", n)] is not None]
            worse = [n for n in names if verdict[("conv", n)] is not None and verdict[("orig", n)] is None]
            neither = [n for n in names if verdict[("conv", n)] is not None and verdict[("orig", n)] is not None]
            for n in worse:
                failures.append("ONNX Runtime: converted %s: %s (the original agrees)" % (n, verdict[("conv", n)]))
            for label, pred in (("opsets 7..%d" % (a.target - 1), lambda op: op >= 7),
                                ("opsets 1..6", lambda op: op < 7)):
                sel = [n for n in names if pred(opset_of[n])]
                agree = [n for n in sel if verdict[("conv", n)] is None]
                print("  ONNX Runtime, %s: %d converted models run, %d agree with the test data "
                      "(%d of them also unconverted, %d only after conversion), %d get worse, %d "
                      "fail either way" % (label, len(sel), len(agree),
                                           len([n for n in both if n in sel]),
                                           len([n for n in conv_only if n in sel]),
                                           len([n for n in worse if n in sel]),
                                           len([n for n in neither if n in sel])))
            # converted vs original, both in ONNX Runtime, where both run
            same, diff, worst = 0, [], 0.0
            for (key, model, outdir, _) in jobs:
                kind, name, d = key
                if kind != "conv" or res.get(model, "x") is not None:
                    continue
                orig_model = os.path.join(a.data, next(f for f, n, _ in models if n == name), name,
                                          "model.onnx")
                if res.get(orig_model, "x") is not None:
                    continue
                w = ort_same(outdir, outdir.replace(os.sep + "conv" + os.sep, os.sep + "orig" + os.sep, 1))
                if w is not None and w <= 1e-5:
                    same += 1
                    worst = max(worst, w)
                else:
                    diff.append((name, d, w))
            print("  ONNX Runtime, converted vs unconverted model on the same inputs: %d test data "
                  "sets give the same outputs (largest relative difference %.2g), %d differ"
                  % (same, worst, len(diff)))
            for name, d, w in diff:
                print("    differ: %s/%s: %s" % (name, d, "not comparable" if w is None else "%.3g" % w))
            for n in neither:
                print("    ONNX Runtime fails either way: %s: %s" % (n, verdict[("conv", n)][:150]))
        else:
            print("  ONNX Runtime: not run (--no-ort, or node / onnxruntime-node missing)")
        for f in failures:
            print("FAIL " + f)
        print("%d failure(s)" % len(failures))
        return 1 if failures else 0
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
