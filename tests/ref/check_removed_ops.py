#!/usr/bin/python3
"""check_removed_ops.py - the experimental ops ONNX removed, which ONNX Runtime
still runs at opsets 1-9 (Affine, Scale, ScaledTanh, ParametricSoftplus, ImageScaler,
Crop, DynamicSlice, ThresholdedRelu-1, MeanVarianceNormalization-1), against
ONNX Runtime (tests/ref/ort_run.js).

Each case is a small model built here with onnx.helper (one node, or a chain
as an old model has them) on seeded random input. ONNX Runtime's outputs on
it are the reference for: nibble on its fast kernels and with --reference;
the model after `nibble convert --passes convert-opset{target=T}` (T = 13,
21), which must hold none of these ops, in nibble and in ONNX Runtime. Pass:
NaN exactly where the reference has NaN, elsewhere max|a - b| <= 1e-5
max(|b|, 1). Then what both refuse: each op at opset 10 (ONNX removed it
there), ScaledTanh without beta (no default); and the one known difference:
ImageScaler without bias, which ONNX Runtime refuses and nibble runs as the
ONNX spec says (no bias added), checked against that formula.
Exit 0 pass, 1 fail, 77 skip (no node/onnxruntime-node, onnx or numpy)."""
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
ORT_JS = os.path.join(HERE, "ort_run.js")
try:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
except ImportError:
    print("check_removed_ops.py: numpy or onnx missing: skipped", file=sys.stderr)
    sys.exit(SKIP)

REMOVED = {"Affine", "Scale", "ScaledTanh", "ParametricSoftplus", "ImageScaler", "Crop", "DynamicSlice"}
F = TensorProto.FLOAT


def ints(name, vals, dt=TensorProto.INT64):
    return helper.make_tensor(name, dt, [len(vals)], vals)


def model(path, nodes, shape, opset, inits=()):
    """x [shape] -> nodes -> y; below IR 4 the initializers are graph inputs too."""
    ir = 3 if opset < 9 else 4
    ins = [helper.make_tensor_value_info("x", F, shape)]
    if ir < 4:
        ins += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    g = helper.make_graph(nodes, "removed", ins, [helper.make_tensor_value_info("y", F, None)],
                          initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    onnx.save(m, path)


def node(op, inputs=("x",), out="y", name="n0", **attrs):
    return helper.make_node(op, list(inputs), [out], name=name, **attrs)


def cases(rng):
    """(name, opset, nodes, initializers, x)."""
    def rnd(*shape, scale=3.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    img = rng.uniform(0, 255, (1, 3, 8, 8)).astype(np.float32)
    wide = np.concatenate([rnd(2, 3, 4), np.array([[[-60, -20, 20, 60]] * 3] * 2, np.float32)], axis=2)
    mvn_x = rnd(2, 3, 4, 5) + 1.5
    mvn_x[:, 1] = 0.25  # a constant channel: 0 / 0 in version 1
    c = [
        ("affine", 7, [node("Affine", alpha=-1.25, beta=0.75)], [], rnd(2, 3, 4)),
        ("affine_defaults", 8, [node("Affine")], [], rnd(5, 7)),
        ("scale", 7, [node("Scale", scale=-0.3)], [], rnd(3, 4)),
        ("scale_default", 9, [node("Scale")], [], rnd(3, 4)),
        ("scaled_tanh", 7, [node("ScaledTanh", alpha=1.7159, beta=0.6667)], [], rnd(2, 3, 4)),
        ("parametric_softplus", 8, [node("ParametricSoftplus", alpha=0.8, beta=1.3)], [],
         wide.reshape(2, 3, 8)),
        ("image_scaler", 7, [node("ImageScaler", scale=1.0 / 255, bias=[-0.5, -0.4, -0.3])], [], img),
        ("image_scaler_scale1", 9, [node("ImageScaler", bias=[1.0, -2.0, 0.5])], [], rnd(2, 3, 2, 5)),
        ("crop", 7, [node("Crop", border=[1, 2, 0, 1])], [], rnd(2, 3, 6, 5)),
        ("crop_scale", 8, [node("Crop", border=[2, 1, 0, 0], scale=[3, 2])], [], rnd(1, 2, 6, 5)),
        ("dynamic_slice", 7, [node("DynamicSlice", ["x", "s", "e", "a"])],
         [ints("s", [1, -4, 0]), ints("e", [100, -1, 2]), ints("a", [0, -1, 2])], rnd(3, 4, 5, 6)),
        ("dynamic_slice_int32", 9, [node("DynamicSlice", ["x", "s", "e"])],
         [ints("s", [0, 1], TensorProto.INT32), ints("e", [1, 3], TensorProto.INT32)], rnd(2, 4, 3)),
        ("thresholded_relu", 7, [node("ThresholdedRelu")], [],
         np.array([-2, 0.5, 1, 1.0000001, 3], np.float32)),
        ("thresholded_relu_alpha", 9, [node("ThresholdedRelu", alpha=0.3)], [], rnd(4, 5, scale=0.5)),
        # tiny-YOLOv2's start and other old-model chains
        ("chain", 8, [node("ImageScaler", out="s", name="scale", scale=0.5, bias=[0.1, 0.2, 0.3]),
                      node("Crop", ["s"], out="c", name="crop", border=[1, 1, 1, 1]),
                      node("MeanVarianceNormalization", ["c"], out="m", name="mvn"),
                      node("ScaledTanh", ["m"], out="t", name="tanh", alpha=2.0, beta=0.5),
                      node("Affine", ["t"], name="affine", alpha=3.0, beta=-1.0)], [], rnd(2, 3, 6, 6)),
    ]
    for ac in (0, 1):
        for nv in (0, 1):
            c.append(("mvn1_across%d_var%d" % (ac, nv), 7 + ac,
                      [node("MeanVarianceNormalization", across_channels=ac, normalize_variance=nv)],
                      [], mvn_x))
    c.append(("mvn1_defaults", 8, [node("MeanVarianceNormalization")], [], mvn_x))
    return c


def close(a, b):
    if a.shape != b.shape:
        return "shape %s, reference %s" % (a.shape, b.shape)
    na, nb = np.isnan(a), np.isnan(b)
    if (na != nb).any():
        return "NaN at %d places, the reference at %d" % (int(na.sum()), int(nb.sum()))
    if not a.size or na.all():
        return None
    fa, fb = a[~na].astype(np.float64), b[~nb].astype(np.float64)
    err, lim = float(np.abs(fa - fb).max()), 1e-5 * max(float(np.abs(fb).max()), 1.0)
    return None if err <= lim else "max |difference| %.3g > %.3g" % (err, lim)


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


def ort_batch(jobs, tmp):
    """jobs [(model, outdir, x)] in one node process: {model: None or error}."""
    jf = os.path.join(tmp, "jobs.tsv")
    with open(jf, "w") as f:
        for m, od, x in jobs:
            f.write("\t".join([m, od, x]) + "\n")
    p = run(["node", ORT_JS, "batch", jf])
    if p.returncode == 2 and "not installed" in p.stderr:
        return None
    res = {}
    for line in p.stdout.splitlines():
        if line.startswith("OK "):
            res[line[3:]] = None
        elif line.startswith("ERR "):
            m, _, msg = line[4:].partition(": ")
            res[m] = msg or "failed"
    return res


def main():
    build_root = os.environ.get("NBL_BUILD_ROOT", os.path.join(ROOT, "build"))
    nibble = os.environ.get("NIBBLE", os.path.join(build_root, "tools", "nibble"))
    if shutil.which("node") is None:
        print("check_removed_ops.py: node not installed: skipped", file=sys.stderr)
        return SKIP
    tmp = tempfile.mkdtemp(prefix="nbl_removed_")
    fails = []
    try:
        rng = np.random.default_rng(11)
        runs = []  # (case, what, model, x, outdir)
        ort_jobs = []
        for name, opset, nodes, inits, x in cases(rng):
            d = os.path.join(tmp, name)
            os.makedirs(d)
            src = os.path.join(d, "model.onnx")
            xf = os.path.join(d, "x.npy")
            model(src, nodes, list(x.shape), opset, inits)
            np.save(xf, x)
            ort_jobs.append((src, os.path.join(d, "ort"), xf))
            for tag, extra in (("fast", []), ("reference", ["--reference"])):
                runs.append((name, tag, src, xf, os.path.join(d, tag), extra))
            for t in (13, 21):
                conv = os.path.join(d, "opset%d.onnx" % t)
                p = run([nibble, "convert", src, "-o", conv, "--passes", "convert-opset{target=%d}" % t,
                         "--verify-each"])
                if p.returncode:
                    fails.append("%s: convert-opset{target=%d}: %s" % (name, t, p.stderr.strip()))
                    continue
                m = onnx.load(conv)
                left = sorted({n.op_type for n in m.graph.node if n.op_type in REMOVED or (
                    n.op_type == "MeanVarianceNormalization" and opset < 9)})
                if left or m.opset_import[0].version != t:
                    fails.append("%s: converted to %d still holds %s (opset %d)" %
                                 (name, t, left, m.opset_import[0].version))
                ort_jobs.append((conv, os.path.join(d, "ort%d" % t), xf))
                runs.append((name, "opset %d in nibble" % t, conv, xf, os.path.join(d, "nb%d" % t), []))
        res = ort_batch(ort_jobs, tmp)
        if res is None:
            print("check_removed_ops.py: onnxruntime-node not installed: skipped", file=sys.stderr)
            return SKIP
        refs = {}
        for m, od, _ in ort_jobs:
            name = os.path.basename(os.path.dirname(m))
            if res.get(m, "no result"):
                fails.append("%s: ONNX Runtime on %s: %s" % (name, os.path.basename(m), res.get(m, "no result")))
                continue
            y = np.load(os.path.join(od, "out_0.npy"))
            if os.path.basename(m) == "model.onnx":
                refs[name] = y
            elif name in refs:
                e = close(y, refs[name])
                if e:
                    fails.append("%s: ONNX Runtime on %s: %s" % (name, os.path.basename(m), e))
        for name, what, src, xf, od, extra in runs:
            p = run([nibble, "run", src, "--input", "x=" + xf, "--output-dir", od] + extra)
            if p.returncode:
                fails.append("%s: nibble (%s): %s" % (name, what, p.stderr.strip()))
                continue
            if name in refs:
                e = close(np.load(os.path.join(od, "y.npy")), refs[name])
                if e:
                    fails.append("%s: nibble (%s): %s" % (name, what, e))
        n_ok = len(refs)

        # what both refuse, and the one difference
        x4 = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
        xf = os.path.join(tmp, "x4.npy")
        np.save(xf, x4)
        refusals = [("%s_opset10" % op.lower(), 10, [node(op, **attrs)], inits) for op, attrs, inits in (
            ("Affine", {}, []), ("Scale", {}, []), ("ScaledTanh", {"alpha": 1.0, "beta": 1.0}, []),
            ("ParametricSoftplus", {"alpha": 1.0, "beta": 1.0}, []),
            ("ImageScaler", {"bias": [0.0, 0.0, 0.0]}, []), ("Crop", {"border": [0, 0, 0, 0]}, []))]
        refusals.append(("dynamicslice_opset10", 10, [node("DynamicSlice", ["x", "s", "e"])],
                         [ints("s", [0]), ints("e", [1])]))
        refusals.append(("scaled_tanh_no_beta", 7, [node("ScaledTanh", alpha=1.0)], []))
        jobs = []
        for name, opset, nodes, inits in refusals + [("image_scaler_no_bias", 7, [node("ImageScaler", scale=2.0)], [])]:
            m = os.path.join(tmp, name + ".onnx")
            model(m, nodes, list(x4.shape), opset, inits)
            jobs.append((m, os.path.join(tmp, name + "_ort"), xf))
        res = ort_batch(jobs, tmp) or {}
        for (name, _, nodes, _), (m, _, _) in zip(refusals, jobs):
            p = run([nibble, "run", m, "--input", "x=" + xf, "--output-dir", os.path.join(tmp, name + "_nb")])
            if p.returncode not in (1, 2) or "node 'n0' (%s" % nodes[0].op_type not in p.stderr:
                fails.append("%s: nibble should refuse it naming the node (exit %d: %s)" %
                             (name, p.returncode, p.stderr.strip()))
            if res.get(m) is None:
                fails.append("%s: ONNX Runtime runs it (nibble refuses it, as ONNX Runtime did)" % name)
        m = jobs[-1][0]
        od = os.path.join(tmp, "no_bias_nb")
        p = run([nibble, "run", m, "--input", "x=" + xf, "--output-dir", od])
        if p.returncode or close(np.load(os.path.join(od, "y.npy")), 2 * x4):
            fails.append("image_scaler_no_bias: nibble should give 2 x: %s" % p.stderr.strip())
        ort_no_bias = res.get(m)
        if ort_no_bias is None:
            e = close(np.load(os.path.join(jobs[-1][1], "out_0.npy")), 2 * x4)
            if e:
                fails.append("image_scaler_no_bias: ONNX Runtime now runs it, and differs: " + e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for f in fails:
        print("FAIL " + f)
    print("%d models (each as it is and converted to opsets 13 and 21): nibble's fast and reference "
          "kernels and both conversions in nibble and ONNX Runtime against ONNX Runtime; %d refusals "
          "shared; ImageScaler without bias: ONNX Runtime %s, nibble adds no bias; %d failures"
          % (n_ok, len(refusals), "refuses" if ort_no_bias else "runs it", len(fails)))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
