#!/usr/bin/python3
"""check_lowered_log.py - QuantizeLog lowered to standard ONNX gives ONNX
Runtime the same values as nibble, bit for bit.

For every configuration (radix 2/4/10, exponent bits 1..4, nearest and both
tpr phases) a model X -> ai.nibble QuantizeLog -> Y (and the `top` output for
some) is run by nibble (fast kernels and --reference), lowered with
`nibble convert --passes lower-to-onnx` and run by ONNX Runtime
(tests/ref/ort_run.js). The input holds gradient-like values over many
octaves and, for each level and threshold of the grid, the float neighbours
around it (the decisions where an error would show), both signs, zeros, NaN
and +-Inf. Pass: every output element equal in value and sign bit (NaN where
NaN) between nibble's two paths and ONNX Runtime; the levels also equal the
numbers of this script's own transcription of runtime/formats/log.h.
Stochastic rounding must be refused by the lowering with a message naming
the node (exit 1 or 2, nothing written). Exit 0 pass, 1 fail, 77 skip (no node/onnxruntime-node,
onnx or numpy)."""
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
try:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from lowered_run import run_lowered
except ImportError:
    print("check_lowered_log.py: numpy or onnx missing: skipped", file=sys.stderr)
    sys.exit(SKIP)


def model(path, attrs, with_top, shape):
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    node_out = ["y"]
    if with_top:
        outs.append(helper.make_tensor_value_info("top", TensorProto.FLOAT, []))
        node_out.append("top")
    node = helper.make_node("QuantizeLog", ["x"], node_out, name="q", domain="ai.nibble", **attrs)
    g = helper.make_graph([node], "qlog", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.nibble", 1)])
    m.ir_version = 8
    onnx.save(m, path)


def grid(x, radix, exp_bits, phase):
    """log.h in numpy: top, levels (float32) and thresholds (float64)."""
    a = np.abs(x[np.isfinite(x)]).astype(np.float32)
    mx = float(a.max()) if a.size else 0.0
    top = mx if mx > 0 else 1.0
    if phase == 1:
        top = top * np.sqrt(float(radix))
    top = np.float32(top)
    L = (1 << exp_bits) - 1
    lev = np.array([np.float64(top) * float(radix) ** (-k) for k in range(L)]).astype(np.float32)
    levd = lev.astype(np.float64)
    thr = np.concatenate([np.sqrt(levd[:-1] * levd[1:]), levd[-1:] * 0.5])
    return top, lev, thr


def probe(rng, radix, exp_bits, phase, n):
    base = (rng.choice([-1, 1], n) * np.exp2(-rng.uniform(0, 2 + ((1 << exp_bits)) * np.log2(radix), n))).astype(
        np.float32)
    base[0] = 1.0  # the max: the grid is known
    top, lev, thr = grid(base, radix, exp_bits, phase)
    edges = []
    for v in list(lev) + [np.float32(t) for t in thr]:
        v = np.float32(v)
        for e in (np.nextafter(v, np.float32(0)), v, np.nextafter(v, np.float32(np.inf))):
            if 0 < e <= 1:
                edges += [e, -e]
    edges += [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30, -1e-38]
    x = np.concatenate([base, np.array(edges, dtype=np.float32)]).astype(np.float32)
    return x.reshape(1, -1)


def same(a, b):
    a, b = a.ravel(), b.ravel()
    if a.shape != b.shape:
        return "shapes %s and %s" % (a.shape, b.shape)
    bad = ~((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b)))
    if bad.any():
        i = int(np.argmax(bad))
        return "%d elements differ, first at %d: %r vs %r" % (int(bad.sum()), i, a[i], b[i])
    return None


def main():
    build_root = os.environ.get("NBL_BUILD_ROOT", os.path.join(ROOT, "build"))
    nibble = os.environ.get("NIBBLE", os.path.join(build_root, "tools", "nibble"))
    if shutil.which("node") is None:
        print("check_lowered_log.py: node not installed: skipped", file=sys.stderr)
        return SKIP
    tmp = tempfile.mkdtemp(prefix="nbl_log4_")
    rng = np.random.default_rng(7)
    configs = []
    for radix in (2, 4, 10):
        for exp_bits in (1, 2, 3, 4):
            configs.append((radix, exp_bits, "nearest", 0))
        configs.append((radix, 3, "tpr", 0))
        configs.append((radix, 3, "tpr", 1))
    configs.append((2, 4, "tpr", 1))
    failed = 0
    try:
        for k, (radix, exp_bits, rounding, phase) in enumerate(configs):
            x = probe(rng, radix, exp_bits, phase, 3000)
            attrs = {"radix": radix, "exp_bits": exp_bits, "rounding": rounding}
            if rounding == "tpr":
                attrs["phase"] = phase
            with_top = k % 3 == 0
            d = os.path.join(tmp, "c%d" % k)
            os.makedirs(d)
            src = os.path.join(d, "q.onnx")
            model(src, attrs, with_top, list(x.shape))
            np.save(os.path.join(d, "x.npy"), x)
            res = run_lowered(nibble, d, src, ["y", "top"] if with_top else ["y"])
            if res is None:
                print("check_lowered_log.py: onnxruntime-node not installed: skipped", file=sys.stderr)
                return SKIP
            outs, ort = res[0], res[0]["ort"]
            top, lev, thr = grid(x.ravel(), radix, exp_bits, phase)
            y = outs["fast"]["y"].ravel()
            mags = set(np.abs(y[np.isfinite(y)]).tolist())
            errs = [e for e in (same(outs["fast"]["y"], outs["ref"]["y"]) and "fast vs reference: " +
                                same(outs["fast"]["y"], outs["ref"]["y"]),
                                same(outs["fast"]["y"], ort["y"]) and "nibble vs ONNX Runtime: " +
                                same(outs["fast"]["y"], ort["y"]),
                                not mags <= set([0.0] + lev.astype(np.float64).tolist()) and
                                "values off the grid %s" % sorted(mags - set(lev.tolist()))[:3]) if e]
            if with_top:
                if same(outs["fast"]["top"], ort["top"]) or float(outs["fast"]["top"]) != float(top):
                    errs.append("top: nibble %r, ORT %r, script %r" % (outs["fast"]["top"], ort["top"], top))
            used = len(mags)
            print("radix %2d exp_bits %d %-7s phase %d: %5d values, %2d levels used of %2d: %s" %
                  (radix, exp_bits, rounding, phase, x.size, used, len(lev) + 1, "; ".join(errs) if errs else "same bits"))
            failed += bool(errs)
        # stochastic modes: a clear refusal
        d = os.path.join(tmp, "stoch")
        os.makedirs(d)
        src = os.path.join(d, "q.onnx")
        model(src, {"rounding": "stochastic"}, False, [1, 8])
        r = subprocess.run([nibble, "convert", src, "-o", os.path.join(d, "low.onnx"), "--passes", "lower-to-onnx"],
                           capture_output=True, text=True)
        ok = r.returncode in (1, 2) and "node 'q' (QuantizeLog): rounding=stochastic" in r.stderr and \
            "no standard ONNX lowering" in r.stderr
        print("stochastic: %s (%s)" % ("refused" if ok else "NOT refused as expected", r.stderr.strip()))
        failed += not ok
    finally:
        if not os.environ.get("NBL_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
    print("%d configurations, %d failed" % (len(configs) + 1, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
