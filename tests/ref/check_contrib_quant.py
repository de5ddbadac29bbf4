#!/usr/bin/python3
"""check_contrib_quant.py - the quantized contrib ops of ONNX Runtime (domain
com.microsoft, version 1) that int8 models of the ONNX Model Zoo hold:
QLinearAdd, QLinearMul, QLinearLeakyRelu, QLinearSigmoid,
QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat, and the two
more ONNX Runtime's quantizer (QOperator format) writes, QGemm and
QLinearSoftmax (runtime/ops/quant_contrib.c), against ONNX Runtime
(tests/ref/ort_run.js) and against the formula computed here in NumPy.

Each case is a one-node model built here with onnx.helper: the codes are
graph inputs (seeded random codes over the whole range, or all 256 codes),
the scales and zero points initializers. uint8 and int8, with and without the
optional zero points, broadcasting, both layouts of the pools, pads, strides,
ceil_mode, count_include_pad, auto_pad, a 3-input concat on a negative axis;
QGemm: every uint8/int8 A and B pair, transA/transB, per-tensor and
per-column B parameters, C of each broadcast shape or none, quantized and
float32 (no y_scale) outputs, alpha != 1, sizes like 1, 7, 33; QLinearSoftmax:
uint8/int8, a 3-D input, axis -1, 1 and absent, opset 11 (2-D coercion) and 13.
ONNX Runtime runs neither int8 A with uint8 B, nor omitted a/b zero points,
nor y_scale without y_zero_point: those cases are checked against the
formula only. With uint8 A its AVX2 kernel saturates full-range int8 B
(vpmaddubsw, as in chain_model): int8 B there stays within +-63.
QLinearSoftmax: y_scale 1/256 (ONNX Runtime uses floor(1 / y_scale)).

The formula (what nibble implements): every input dequantized in float32,
x = (float)(q - zp) * scale; the op in float (Add, Mul, LeakyRelu in
float32; Sigmoid 1 / (1 + exp(-x)) in double rounded to float32; the
average pools: the window's sum in double divided by AveragePool's element
count, rounded to float32; QGemm: the exact integer sum scaled by
(alpha * a_scale * b_scale[n]) in float32; QLinearSoftmax: exp(x - max) in
double over the row, divided by the sum, rounded to float32); quantized as QuantizeLinear does: rint(v /
y_scale) (half to even, in float32) + zero point, saturated.

Pass:
  - nibble (fast and --reference) against that NumPy computation (the same
    float32 operations): the same shape and type and every code equal; for
    QLinearSigmoid and QLinearSoftmax (NumPy's exp and sums against the C
    library's) one code off is
    allowed where v / y_scale lies within float rounding of a tie (1e-5
    relative; counted and printed, "np tie off1");
  - nibble against ONNX Runtime: the same shape and type, every code within 1
    of ONNX Runtime's, at most 2% of each op's codes off by one (ONNX Runtime
    computes in fixed point or lookup tables and adds the zero point before
    rounding: it can land on the other side of a tie). Where ONNX Runtime's
    QLinearAveragePool divides by another element count than AveragePool
    (count_include_pad=1 with ceil_mode: ONNX Runtime divides by the whole
    kernel size also for a window that runs past the end padding), ONNX
    Runtime is checked against the formula with its own count instead and
    the outputs concerned are counted and printed;
    Two cases with scales that put many results exactly on ties (x.5) and
    an odd output zero point show that difference; they are reported on
    their own lines, "(ties)", where every one-off code must be on a tie
    and the 2% limit does not apply. ONNX Runtime refuses an empty name
    for a zero point in the middle of the inputs (its type inference, for
    QLinearAdd, QLinearMul, QLinearAveragePool, QLinearSoftmax): it runs
    those cases with explicit zero points 0; QGemm's float32 output
    within 1e-5 relative of ONNX Runtime's (and equal to the formula's);
  - a chain QuantizeLinear -> QLinearConv -> every op here ->
    QLinearGlobalAveragePool against ONNX Runtime: within one code;
  - nibble's shape rules (infer-shapes) give the shape and type of the run;
  - malformed nodes (wrong zero-point type, non-scalar scale, incomplete
    QLinearConcat triple, missing required inputs, ...) make `nibble run`
    exit 1 with a message naming the node, not crash.
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
    print("check_contrib_quant.py: numpy or onnx missing: skipped", file=sys.stderr)
    sys.exit(SKIP)

MS = "com.microsoft"
U8, I8, F = TensorProto.UINT8, TensorProto.INT8, TensorProto.FLOAT
NP = {U8: np.uint8, I8: np.int8}
RANGE = {U8: (0, 255), I8: (-128, 127)}
MAX_OFF1 = 0.02  # largest share of codes one off ONNX Runtime, per op


# ---------------------------------------------------------------- the formula in NumPy

def deq(q, s, zp):
    """(float)(q - zp) * scale in float32."""
    return (q.astype(np.int32) - np.int32(zp)).astype(np.float32) * np.float32(s)


def quant(v, s, zp, t):
    """QuantizeLinear: rint(v / s) in float32 + zp, saturated; NaN -> 0.
    Also returns where v / s lies within float rounding of a tie."""
    v = np.asarray(v, np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = v / np.float32(s)
        q = np.rint(r).astype(np.float64)
        frac = np.abs(r.astype(np.float64) - np.floor(r.astype(np.float64)) - 0.5)
    tie = frac <= 1e-5 * np.maximum(1.0, np.abs(r.astype(np.float64)))
    nan = np.isnan(q)
    lo, hi = RANGE[t]
    q = np.clip(np.where(nan, 0, q + zp), lo, hi)
    q = np.where(nan, 0, q)
    return q.astype(NP[t]), tie


def ref_binary(mul, t, a, pa, b, pb, pc):
    va, vb = deq(a, *pa), deq(b, *pb)
    return quant(va * vb if mul else va + vb, pc[0], pc[1], t)


def ref_unary(kind, t, x, px, py, alpha=0.01):
    v = deq(x, *px)
    if kind == "leaky":
        y = np.where(v >= 0, v, np.float32(alpha) * v).astype(np.float32)
    else:
        y = (1.0 / (1.0 + np.exp(-v.astype(np.float64)))).astype(np.float32)
    return quant(y, py[0], py[1], t)


def ref_gap(t, x, px, py, cl):
    v = deq(x, *px).astype(np.float64)
    axes = tuple(range(1, x.ndim - 1)) if cl else tuple(range(2, x.ndim))
    n = int(np.prod([x.shape[a] for a in axes]))
    avg = (v.sum(axis=axes, keepdims=True) / n).astype(np.float32)
    return quant(avg, py[0], py[1], t)


def pool_geometry(in_sp, attrs):
    """Per spatial dim: (out, pad_begin, pad_end, kernel, stride), from the
    ONNX formulas (auto_pad, pads, ceil_mode: a window never starts in the end padding)."""
    ks = attrs["kernel_shape"]
    ns = len(ks)
    st = attrs.get("strides", [1] * ns)
    pads = attrs.get("pads", [0] * (2 * ns))
    ap = attrs.get("auto_pad", "NOTSET")
    ceil = attrs.get("ceil_mode", 0)
    g = []
    for i in range(ns):
        n, k, s = in_sp[i], ks[i], st[i]
        if ap in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-n // s)
            tot = max((o - 1) * s + k - n, 0)
            pb = tot // 2 if ap == "SAME_UPPER" else tot - tot // 2
            g.append((o, pb, tot - pb, k, s))
            continue
        pb, pe = (0, 0) if ap == "VALID" else (pads[i], pads[ns + i])
        span = n + pb + pe - k
        if ceil:
            o = -(-span // s) + 1
            if (o - 1) * s >= n + pb:
                o -= 1
        else:
            o = span // s + 1
        g.append((o, pb, pe, k, s))
    return g


def ref_avgpool(t, x, px, py, attrs, ort_count=False):
    """The average over each window: AveragePool's count (count_include_pad:
    the window's positions inside the padded input), or with ort_count ONNX
    Runtime's (count_include_pad: the kernel size). Also returns where the
    two counts differ."""
    cl = attrs.get("channels_last", 0)
    v = deq(x, *px).astype(np.float64)
    if cl:
        v = np.moveaxis(v, -1, 1)
    N, C, sp = v.shape[0], v.shape[1], v.shape[2:]
    g = pool_geometry(sp, attrs)
    cip = attrs.get("count_include_pad", 0)
    out_sp = tuple(o for o, _, _, _, _ in g)
    y = np.zeros((N, C) + out_sp, np.float32)
    differ = np.zeros((N, C) + out_sp, bool)
    for idx in np.ndindex(*out_sp):
        sl, n_in, n_pad = [], 1, 1
        for (o, pb, pe, k, s), oi, n in zip(g, idx, sp):
            start = oi * s - pb
            lo, hi = max(start, 0), min(start + k, n)
            sl.append(slice(lo, hi))
            n_in *= max(hi - lo, 0)
            n_pad *= max(min(start + k, n + pe) - max(start, -pb), 0)
        win = v[(slice(None), slice(None)) + tuple(sl)]
        s_ = win.reshape(N, C, -1).sum(axis=2)
        kern = int(np.prod([k for _, _, _, k, _ in g]))
        cnt = (kern if ort_count else n_pad) if cip else n_in
        with np.errstate(divide="ignore", invalid="ignore"):
            y[(slice(None), slice(None)) + idx] = (s_ / cnt).astype(np.float32)
        differ[(slice(None), slice(None)) + idx] = bool(cip) and kern != n_pad
    if cl:
        y, differ = np.moveaxis(y, 1, -1), np.moveaxis(differ, 1, -1)
    q, tie = quant(y, py[0], py[1], t)
    return q, tie, differ


def ref_concat(t, xs, pxs, py, axis):
    qs, ties = [], []
    for x, px in zip(xs, pxs):
        q, tie = quant(deq(x, *px), py[0], py[1], t)
        qs.append(q)
        ties.append(tie)
    return np.concatenate(qs, axis=axis), np.concatenate(ties, axis=axis)


def ref_qgemm(A, pa, B, pb, C, alpha, ta, tb, py, yt):
    """QGemm: acc = (A - a_zp) @ (B - b_zp[n]) + C exactly (int64); v =
    (alpha * a_scale * b_scale[n]) in float32 times float32(acc); float32 v
    without y (py None), else QuantizeLinear(v) of type yt. b_scale and b_zp
    scalars or per output column."""
    a = A.T if ta else A
    b = B.T if tb else B
    acc = (a.astype(np.int64) - np.int64(pa[1])) @ (b.astype(np.int64) - np.asarray(pb[1], np.int64))
    if C is not None:
        acc = acc + C.astype(np.int64)
    osc = (np.float32(alpha) * np.float32(pa[0])) * np.asarray(pb[0], np.float32)
    v = (osc * acc.astype(np.float32)).astype(np.float32)
    if py is None:
        return v, np.zeros(v.shape, bool)
    return quant(v, py[0], py[1], yt)


def ref_softmax(t, x, px, py, axis, opset):
    """QLinearSoftmax: dequantize, exp(x - max) in double over the axis
    (opset < 13: over all dims from axis, X seen as 2-D), divided by the sum,
    rounded to float32, quantized."""
    v = deq(x, *px)
    ax = axis % x.ndim
    if opset < 13:
        w = v.reshape(int(np.prod(x.shape[:ax], dtype=np.int64)), -1)
        e = np.exp((w - w.max(axis=1, keepdims=True)).astype(np.float64))
        y = (e / e.sum(axis=1, keepdims=True)).astype(np.float32).reshape(x.shape)
    else:
        e = np.exp((v - v.max(axis=ax, keepdims=True)).astype(np.float64))
        y = (e / e.sum(axis=ax, keepdims=True)).astype(np.float32)
    return quant(y, py[0], py[1], t)


# ---------------------------------------------------------------- models

def scalar(name, dt, v):
    return helper.make_tensor(name, dt, [], [v])


def save_model(path, op, inputs, ins, inits, y_dt, **attrs):
    """One com.microsoft node n0: graph inputs ins [(name, array, dt)]."""
    node = helper.make_node(op, inputs, ["y"], name="n0", domain=MS, **attrs)
    gin = [helper.make_tensor_value_info(n, dt, list(a.shape)) for n, a, dt in ins]
    g = helper.make_graph([node], "contrib_quant", gin, [helper.make_tensor_value_info("y", y_dt, None)],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)],
                          ir_version=7)
    onnx.save(m, path)


def explicit_zeros(inputs, ins, inits, t, op=""):
    """The same node with every omitted ("") zero point an explicit 0 (absent
    = 0): ONNX Runtime's type inference refuses an empty name in the middle of
    the inputs of QLinearAdd, QLinearMul and QLinearAveragePool."""
    inputs, inits = list(inputs), list(inits)
    for i, n in enumerate(inputs):
        if n == "":
            inputs[i] = "zero_%d" % i
            inits.append(scalar(inputs[i], TensorProto.INT32 if (op, i) == ("QGemm", 6) else t, 0))
    return inputs, ins, inits


def qparams(prefix, t, s, zp):
    """Initializers of a scale and an optional zero point; their input names."""
    inits = [scalar(prefix + "_scale", F, s)]
    names = [prefix + "_scale"]
    if zp is None:
        names.append("")
    else:
        inits.append(scalar(prefix + "_zp", t, zp))
        names.append(prefix + "_zp")
    return inits, names


def codes(rng, t, shape):
    lo, hi = RANGE[t]
    return rng.integers(lo, hi + 1, size=shape).astype(NP[t])


def all_codes(t, shape):
    lo, hi = RANGE[t]
    return np.arange(lo, hi + 1).astype(NP[t]).reshape(shape)


def cases(rng):
    """(name, op, model builder args, expected (codes, tie, ort_differ or None))."""
    out = []
    tname = {U8: "u8", I8: "i8"}

    def zps(t, with_zp, u, i):
        return (u if t == U8 else i) if with_zp else None

    # QLinearAdd, QLinearMul: broadcasting
    for op, mul in (("QLinearAdd", 0), ("QLinearMul", 1)):
        for t in (U8, I8):
            for with_zp in (1, 0):
                shapes = [((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 4, 5), (5,)), ((2, 3, 4, 5), (2, 1, 4, 1)),
                          ((4, 1), (3, 1, 5))] if with_zp else [((2, 3, 4, 5), (2, 1, 4, 1))]
                for sa, sb in shapes:
                    a, b = codes(rng, t, sa), codes(rng, t, sb)
                    pa = (0.0213, zps(t, with_zp, 131, 7))
                    pb = (0.0347, zps(t, with_zp, 118, -11))
                    pc = ((0.0911 if mul else 0.0419), zps(t, with_zp, 127, -3))
                    ia, na = qparams("a", t, *pa)
                    ib, nb = qparams("b", t, *pb)
                    ic, nc = qparams("c", t, *pc)
                    name = "%s_%s_%s_%s_%s" % (op, tname[t], "zp" if with_zp else "nozp",
                                               "x".join(map(str, sa)), "x".join(map(str, sb)))
                    z = lambda p: (p[0], p[1] or 0)
                    exp = ref_binary(mul, t, a, z(pa), b, z(pb), z(pc))
                    out.append((name, op, (["a"] + na + ["b"] + nb + nc, [("a", a, t), ("b", b, t)],
                                           ia + ib + ic, t, {}), exp + (None,)))
    # one zero point given, the others not
    t = U8
    a, b = codes(rng, t, (3, 4, 5)), codes(rng, t, (3, 4, 5))
    ia, na = qparams("a", t, 0.0213, 131)
    ib, nb = qparams("b", t, 0.0347, None)
    ic, nc = qparams("c", t, 0.0419, None)
    out.append(("QLinearAdd_u8_mixed_zp", "QLinearAdd",
                (["a"] + na + ["b"] + nb + nc, [("a", a, t), ("b", b, t)], ia + ib + ic, t, {}),
                ref_binary(0, t, a, (0.0213, 131), b, (0.0347, 0), (0.0419, 0)) + (None,)))

    # the output zero point omitted by leaving it off the end of the inputs
    t = I8
    a, b = codes(rng, t, (2, 3, 4)), codes(rng, t, (4,))
    ia, na = qparams("a", t, 0.0213, 5)
    ib, nb = qparams("b", t, 0.0347, -7)
    out.append(("QLinearMul_i8_trailing_omitted", "QLinearMul",
                (["a"] + na + ["b"] + nb + ["c_scale"], [("a", a, t), ("b", b, t)],
                 ia + ib + [scalar("c_scale", F, 0.0911)], t, {}),
                ref_binary(1, t, a, (0.0213, 5), b, (0.0347, -7), (0.0911, 0)) + (None,)))
    # a ResNet-sized residual add
    t = U8
    a, b = codes(rng, t, (1, 32, 14, 14)), codes(rng, t, (1, 32, 14, 14))
    ia, na = qparams("a", t, 0.0213, 131)
    ib, nb = qparams("b", t, 0.0347, 118)
    ic, nc = qparams("c", t, 0.0419, 127)
    out.append(("QLinearAdd_u8_1x32x14x14", "QLinearAdd",
                (["a"] + na + ["b"] + nb + nc, [("a", a, t), ("b", b, t)], ia + ib + ic, t, {}),
                ref_binary(0, t, a, (0.0213, 131), b, (0.0347, 118), (0.0419, 127)) + (None,)))
    # scales that put many results exactly on a tie (x.5 codes) and an odd
    # output zero point: where ONNX Runtime rounds after adding the zero
    # point, half to even lands on the other code (reported, not limited)
    for op, mul in (("QLinearAdd", 0), ("QLinearMul", 1)):
        t = U8
        a, b = codes(rng, t, (4, 64)), codes(rng, t, (4, 64))
        pa, pb, pc = (0.5, 128), (0.25, 128), ((1.0 if not mul else 2.0), 127)
        ia, na = qparams("a", t, *pa)
        ib, nb = qparams("b", t, *pb)
        ic, nc = qparams("c", t, *pc)
        out.append((op + "_u8_ties", op, (["a"] + na + ["b"] + nb + nc, [("a", a, t), ("b", b, t)],
                                          ia + ib + ic, t, {}), ref_binary(mul, t, a, pa, b, pb, pc) + (None,)))

    # QLinearLeakyRelu, QLinearSigmoid: all 256 codes
    for op, kind in (("QLinearLeakyRelu", "leaky"), ("QLinearSigmoid", "sigmoid")):
        for t in (U8, I8):
            for with_zp in (1, 0):
                alphas = [None, 0.1] if kind == "leaky" else [None]
                for alpha in alphas:
                    x = all_codes(t, (4, 64))
                    px = (0.0473, zps(t, with_zp, 128, -5))
                    if kind == "sigmoid":
                        py = (1.0 / 256 if t == U8 else 1.0 / 128, zps(t, with_zp, 0, -128))
                    else:
                        py = (0.0391, zps(t, with_zp, 32, 9))
                    ix, nx = qparams("x", t, *px)
                    iy, ny = qparams("y", t, *py)
                    attrs = {} if alpha is None else {"alpha": alpha}
                    name = "%s_%s_%s%s" % (op, tname[t], "zp" if with_zp else "nozp",
                                           "" if alpha is None else "_alpha%g" % alpha)
                    exp = ref_unary(kind, t, x, (px[0], px[1] or 0), (py[0], py[1] or 0),
                                    0.01 if alpha is None else alpha)
                    out.append((name, op, (["x"] + nx + ny, [("x", x, t)], ix + iy, t, attrs), exp + (None,)))

    # QLinearGlobalAveragePool: both layouts (zero points required)
    for t in (U8, I8):
        for cl, shape in ((0, (2, 3, 5, 7)), (1, (2, 5, 7, 3)), (0, (2, 4, 9)), (1, (1, 2, 3, 2, 6)),
                          (0, (2, 64, 7, 7)), (1, (2, 7, 7, 64))):
            x = codes(rng, t, shape)
            px, py = (0.0291, 129 if t == U8 else -6), (0.0113, 118 if t == U8 else 4)
            ix, nx = qparams("x", t, *px)
            iy, ny = qparams("y", t, *py)
            name = "QLinearGlobalAveragePool_%s_%s_%s" % (tname[t], "nhwc" if cl else "nchw",
                                                            "x".join(map(str, shape)))
            exp = ref_gap(t, x, px, py, cl)
            out.append((name, "QLinearGlobalAveragePool", (["x"] + nx + ny, [("x", x, t)], ix + iy, t,
                                                           {"channels_last": cl}), exp + (None,)))

    # QLinearAveragePool
    pools = [
        ("k3_p1_cip0", (2, 3, 7, 8), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
        ("k3_p1_cip1", (2, 3, 7, 8), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)),
        ("k3_s2_p1", (2, 3, 7, 8), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
        ("k3_s2_p1_ceil_cip0", (2, 3, 8, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 0],
                                                  ceil_mode=1)),
        ("k3_s2_p1_ceil_cip1", (2, 3, 8, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                                  ceil_mode=1, count_include_pad=1)),
        ("k2_s2", (1, 4, 6, 6), dict(kernel_shape=[2, 2], strides=[2, 2])),
        ("k3x2_asym_pads", (1, 2, 6, 7), dict(kernel_shape=[3, 2], strides=[1, 2], pads=[2, 0, 0, 1])),
        ("same_upper", (1, 3, 7, 6), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
        ("same_lower_cip1", (1, 3, 7, 6), dict(kernel_shape=[2, 3], strides=[2, 1], auto_pad="SAME_LOWER",
                                               count_include_pad=1)),
        ("valid", (1, 2, 7, 6), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID")),
        ("global_kernel", (2, 3, 5, 5), dict(kernel_shape=[5, 5])),  # ONNX Runtime's global-pool path
        ("1d_k3_s2_p1", (2, 3, 10), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
        ("3d_k2", (1, 2, 4, 5, 4), dict(kernel_shape=[2, 3, 2], strides=[2, 1, 2], pads=[0, 1, 1, 0, 1, 1])),
    ]
    for t in (U8, I8):
        for pname, shape, attrs in pools:
            for cl in (0, 1):
                if cl and pname not in ("k3_p1_cip1", "k3_s2_p1_ceil_cip0", "k3_s2_p1_ceil_cip1", "same_upper",
                                        "1d_k3_s2_p1", "global_kernel"):
                    continue
                for with_zp in ((1, 0) if pname in ("k3_p1_cip0", "k3_s2_p1") else (1,)):
                    a = dict(attrs, channels_last=cl) if cl else dict(attrs)
                    xs = shape if not cl else (shape[0],) + shape[2:] + (shape[1],)
                    x = codes(rng, t, xs)
                    px = (0.0317, zps(t, with_zp, 121, -9))
                    py = (0.0243, zps(t, with_zp, 125, 3))
                    ix, nx = qparams("x", t, *px)
                    iy, ny = qparams("y", t, *py)
                    z = lambda p: (p[0], p[1] or 0)
                    q, tie, differ = ref_avgpool(t, x, z(px), z(py), a)
                    ort = None
                    if differ.any():
                        ort = ref_avgpool(t, x, z(px), z(py), a, ort_count=True)
                    name = "QLinearAveragePool_%s_%s%s%s" % (tname[t], pname, "_nhwc" if cl else "",
                                                             "" if with_zp else "_nozp")
                    out.append((name, "QLinearAveragePool",
                                (["x"] + nx + ny, [("x", x, t)], ix + iy, t, a), (q, tie, ort)))

    # QLinearConcat: 3 inputs, different scales and zero points, negative axis
    for t in (U8, I8):
        for axis, shapes in ((-2, [(2, 3, 4), (2, 5, 4), (2, 1, 4)]), (0, [(1, 6), (3, 6), (2, 6)]),
                             (-1, [(2, 2, 3), (2, 2, 1), (2, 2, 4)])):
            xs = [codes(rng, t, s) for s in shapes]
            py = (0.0412, 120 if t == U8 else -4)
            pxs = [(0.0377, 133 if t == U8 else 2), py, (0.0619, 101 if t == U8 else -20)]
            inputs, inits = ["y_scale", "y_zp"], [scalar("y_scale", F, py[0]), scalar("y_zp", t, py[1])]
            for k, (x, px) in enumerate(zip(xs, pxs)):
                inputs += ["x%d" % k, "x%d_scale" % k, "x%d_zp" % k]
                inits += [scalar("x%d_scale" % k, F, px[0]), scalar("x%d_zp" % k, t, px[1])]
            name = "QLinearConcat_%s_axis%d" % (tname[t], axis)
            exp = ref_concat(t, xs, pxs, py, axis)
            out.append((name, "QLinearConcat", (inputs, [("x%d" % k, x, t) for k, x in enumerate(xs)], inits, t,
                                                {"axis": axis}), exp + (None,)))
    return out


def cases_gemm_softmax(rng):
    """QGemm and QLinearSoftmax cases, as cases() (their own generator, so that
    the cases above and the chain keep their codes). The expected tuple's
    third element is "no-ort: why" for the cases ONNX Runtime cannot run
    (int8 A with uint8 B: no kernel; y_scale without y_zero_point: ONNX
    Runtime decides on y_zero_point; omitted a/b zero points: it dereferences
    them)."""
    out = []
    tname = {U8: "u8", I8: "i8"}
    # (M, N, K), transA, transB, per-column B, C shape ("M"/"N" resolved), quantized Y, alpha, zero points
    cfgs = [((1, 7, 33), 0, 0, 0, None, 1, 1.0, 1),
            ((7, 33, 1), 1, 0, 1, ("N",), 1, 1.0, 1),
            ((33, 1, 7), 0, 1, 0, ("M", "N"), 1, 0.75, 1),
            ((7, 33, 33), 1, 1, 1, ("M", 1), 1, 1.0, 1),
            ((5, 17, 64), 0, 1, 1, (1, "N"), 0, 1.0, 1),
            ((7, 7, 33), 0, 0, 0, (), 0, 2.5, 1),
            ((16, 24, 40), 0, 1, 1, ("N",), 1, 0.5, 1),
            ((3, 9, 11), 0, 0, 1, ("M", "N"), 1, 1.0, 0)]
    for ta_, tb_ in ((U8, U8), (U8, I8), (I8, I8), (I8, U8)):
        for (M, N, K), trA, trB, percol, cshape, yq, alpha, with_zp in cfgs:
            A = codes(rng, ta_, (K, M) if trA else (M, K))
            B = codes(rng, tb_, (N, K) if trB else (K, N))
            if (ta_, tb_) == (U8, I8):
                # 7-bit weights (the quantizer's reduce_range): ONNX Runtime's
                # AVX2 uint8 x int8 kernel (vpmaddubsw) saturates 16-bit pair
                # sums of full-range codes (see chain_model)
                B = rng.integers(-63, 64, size=B.shape).astype(np.int8)
            azp = (131 if ta_ == U8 else -7) if with_zp else None
            if percol:
                bs = rng.uniform(0.004, 0.02, N).astype(np.float32)
                bzp = codes(rng, tb_, (N,)) if with_zp else None
                if bzp is not None and (ta_, tb_) == (U8, I8):
                    bzp = rng.integers(-8, 9, size=N).astype(np.int8)
            else:
                bs, bzp = np.float32(0.0117), ((119 if tb_ == U8 else 5) if with_zp else None)
            C = None
            if cshape is not None:
                dims = tuple({"M": M, "N": N}.get(d, d) for d in cshape)
                C = rng.integers(-6000, 6001, size=dims).astype(np.int32)
            pa, pb = (0.0213, azp or 0), (bs, 0 if bzp is None else bzp)
            py, yt = None, F
            if yq:
                v, _ = ref_qgemm(A, pa, B, pb, C, alpha, trA, trB, None, F)
                yt = ta_
                py = (float(np.float32(np.abs(v).max() / 110 + 1e-3)), 127 if ta_ == U8 else -3)
            inits, inputs = [scalar("a_scale", F, pa[0])], ["a", "a_scale"]
            if azp is None:
                inputs.append("")
            else:
                inits.append(scalar("a_zp", ta_, azp))
                inputs.append("a_zp")
            inputs += ["b", "b_scale"]
            if percol:
                inits.append(helper.make_tensor("b_scale", F, [N], bs.tolist()))
            else:
                inits.append(scalar("b_scale", F, float(bs)))
            if bzp is None:
                inputs.append("")
            elif percol:
                inits.append(helper.make_tensor("b_zp", tb_, [N], bzp.tolist()))
                inputs.append("b_zp")
            else:
                inits.append(scalar("b_zp", tb_, bzp))
                inputs.append("b_zp")
            ins = [("a", A, ta_), ("b", B, tb_)]
            if C is not None:
                ins.append(("c", C, TensorProto.INT32))
                inputs.append("c")
            elif yq:
                inputs.append("")
            if yq:
                inits += [scalar("y_scale", F, py[0]), scalar("y_zp", yt, py[1])]
                inputs += ["y_scale", "y_zp"]
            attrs = {"transA": trA, "transB": trB}
            if alpha != 1.0:
                attrs["alpha"] = alpha
            name = "QGemm_%s%s_%dx%dx%d%s%s%s%s%s%s" % (
                tname[ta_], tname[tb_], M, N, K, "_tA" if trA else "", "_tB" if trB else "",
                "_percol" if percol else "", "" if C is None else "_C" + "x".join(map(str, C.shape)),
                "" if yq else "_float", "" if with_zp else "_nozp")
            exp = ref_qgemm(A, pa, B, pb, C, alpha, trA, trB, py, yt)
            why = None
            if ta_ == I8 and tb_ == U8:
                why = "no-ort: int8 A with uint8 B"
            elif not with_zp:
                why = "no-ort: omitted a/b zero points"
            out.append((name, "QGemm", (inputs, ins, inits, yt, attrs), exp + (why,)))
    # y_scale without y_zero_point: codes of A's type with zero point 0 (ONNX Runtime: not run)
    A, B = codes(rng, U8, (4, 9)), codes(rng, I8, (9, 6))
    v, _ = ref_qgemm(A, (0.02, 128), B, (0.01, 0), None, 1.0, 0, 0, None, F)
    ys = float(np.float32(np.abs(v).max() / 200))
    out.append(("QGemm_u8i8_yscale_no_yzp", "QGemm",
                (["a", "a_scale", "a_zp", "b", "b_scale", "b_zp", "", "y_scale"], [("a", A, U8), ("b", B, I8)],
                 [scalar("a_scale", F, 0.02), scalar("a_zp", U8, 128), scalar("b_scale", F, 0.01),
                  scalar("b_zp", I8, 0), scalar("y_scale", F, ys)], U8, {}),
                ref_qgemm(A, (0.02, 128), B, (0.01, 0), None, 1.0, 0, 0, (ys, 0), U8)
                + ("no-ort: y_scale without y_zero_point",)))

    # QLinearSoftmax: 3-D input, axis -1 and 1, opset 11 and 13. y_scale
    # 1/256 (ONNX Runtime multiplies by floor(1 / y_scale)); x_scale small
    # enough that no probability rounds to 256/256 (ONNX Runtime's int8
    # path does not saturate at 127)
    for t in (U8, I8):
        for axis in (-1, 1, None):
            for opset in (11, 13):
                if axis is None and opset == 13:
                    continue
                x = codes(rng, t, (3, 5, 16))
                px = (0.021, 128 if t == U8 else 3)
                py = (1.0 / 256, 0 if t == U8 else -128)
                ix, nx = qparams("x", t, *px)
                iy, ny = qparams("y", t, *py)
                attrs = {"opset": opset}
                if axis is not None:
                    attrs["axis"] = axis
                eff = axis if axis is not None else -1  # the schema's default, for every opset
                name = "QLinearSoftmax_%s_axis%s_opset%d" % (tname[t], "none" if axis is None else axis, opset)
                exp = ref_softmax(t, x, px, py, eff, opset)
                out.append((name, "QLinearSoftmax", (["x"] + nx + ny, [("x", x, t)], ix + iy, t, attrs),
                            exp + (None,)))
    # all 256 codes in one row, no zero points given
    for t in (U8, I8):
        x = all_codes(t, (2, 128))
        px, py = (0.015, None), (1.0 / 256, None)
        ix, nx = qparams("x", t, *px)
        iy, ny = qparams("y", t, *py)
        out.append(("QLinearSoftmax_%s_2x128_nozp" % tname[t], "QLinearSoftmax",
                    (["x"] + nx + ny, [("x", x, t)], ix + iy, t, {"opset": 13, "axis": -1}),
                    ref_softmax(t, x, (0.015, 0), (1.0 / 256, 0), -1, 13) + (None,)))
    return out


def chain_model(path, rng):
    """A small int8 network as the quantization tools write them: float x ->
    QuantizeLinear -> QLinearConv (ai.onnx) -> QLinearLeakyRelu -> QLinearAdd
    (residual) -> QLinearAveragePool -> QLinearSigmoid -> QLinearConcat ->
    QLinearMul -> QLinearGlobalAveragePool -> codes y (uint8). The int8
    weights stay within +-63 (7 bits, the quantization tools' reduce_range):
    with full-range weights ONNX Runtime's uint8 x int8 convolution on AVX2
    without VNNI saturates its 16-bit pair sums (vpmaddubsw), 27 codes off
    the exact QLinearConv here."""
    def p(name, s, zp, t=U8):
        return [scalar(name + "_s", F, s), scalar(name + "_z", t, zp)], [name + "_s", name + "_z"]
    inits, nodes = [], []

    def add(op, ins, out, domain=MS, **attrs):
        nodes.append(helper.make_node(op, ins, [out], name=out, domain=domain, **attrs))
    i0, n0 = p("q0", 2.0 / 255, 128)
    i1, n1 = p("c1", 6.0 / 255, 128)
    i2, n2 = p("r2", 6.0 / 255, 128)
    i3, n3 = p("a3", 12.0 / 255, 128)
    i4, n4 = p("p4", 0.041, 127)
    i5, n5 = p("s5", 1.0 / 256, 0)
    i6, n6 = p("k6", 0.037, 121)
    i7, n7 = p("m7", 0.033, 3)
    i8, n8 = p("g8", 0.0071, 119)
    w = rng.integers(-63, 64, size=(8, 3, 3, 3)).astype(np.int8)
    inits += i0 + i1 + i2 + i3 + i4 + i5 + i6 + i7 + i8 + [
        helper.make_tensor("w", I8, list(w.shape), w.flatten().tolist()), scalar("w_s", F, 0.004),
        scalar("w_z", I8, 0)]
    add("QuantizeLinear", ["x"] + n0, "q0", domain="")
    add("QLinearConv", ["q0"] + n0 + ["w", "w_s", "w_z"] + n1, "c1", domain="", pads=[1, 1, 1, 1])
    add("QLinearLeakyRelu", ["c1"] + n1 + n2, "r2", alpha=0.1)
    add("QLinearAdd", ["r2"] + n2 + ["c1"] + n1 + n3, "a3")
    add("QLinearAveragePool", ["a3"] + n3 + n4, "p4", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    add("QLinearSigmoid", ["p4"] + n4 + n5, "s5")
    add("QLinearConcat", n6 + ["p4"] + n4 + ["s5"] + n5, "k6", axis=-3)
    add("QLinearMul", ["k6"] + n6 + ["k6"] + n6 + n7, "m7")
    add("QLinearGlobalAveragePool", ["m7"] + n7 + n8, "y")
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", F, [2, 3, 10, 10])],
                          [helper.make_tensor_value_info("y", U8, None)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)],
                          ir_version=7)
    onnx.save(m, path)
    return rng.uniform(-1, 1, (2, 3, 10, 10)).astype(np.float32)


def malformed():
    """(name, op, inputs, ins, inits, attrs): nibble must refuse each naming the node."""
    u8 = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    sc = lambda n, v=0.05: scalar(n, F, v)
    m = []
    m.append(("add_zp_type", "QLinearAdd", ["a", "as", "az", "b", "bs", "", "cs", ""],
              [("a", u8, U8), ("b", u8, U8)], [sc("as"), scalar("az", I8, 3), sc("bs"), sc("cs")], {}))
    m.append(("add_b_type", "QLinearAdd", ["a", "as", "", "b", "bs", "", "cs", ""],
              [("a", u8, U8), ("b", u8.astype(np.int8), I8)], [sc("as"), sc("bs"), sc("cs")], {}))
    m.append(("add_float_a", "QLinearAdd", ["a", "as", "", "b", "bs", "", "cs", ""],
              [("a", u8.astype(np.float32), F), ("b", u8, U8)], [sc("as"), sc("bs"), sc("cs")], {}))
    m.append(("add_no_b_scale", "QLinearAdd", ["a", "as", "", "b", "", "", "cs", ""],
              [("a", u8, U8), ("b", u8, U8)], [sc("as"), sc("cs")], {}))
    m.append(("add_no_broadcast", "QLinearAdd", ["a", "as", "", "b", "bs", "", "cs", ""],
              [("a", u8, U8), ("b", u8[:, :2], U8)], [sc("as"), sc("bs"), sc("cs")], {}))
    m.append(("sigmoid_vector_scale", "QLinearSigmoid", ["x", "xs", "", "ys", ""], [("x", u8, U8)],
              [helper.make_tensor("xs", F, [2], [0.1, 0.2]), sc("ys")], {}))
    m.append(("leaky_int_scale", "QLinearLeakyRelu", ["x", "xs", "", "ys", ""], [("x", u8, U8)],
              [scalar("xs", TensorProto.INT32, 1), sc("ys")], {}))
    m.append(("leaky_zp_2d", "QLinearLeakyRelu", ["x", "xs", "xz", "ys", ""], [("x", u8, U8)],
              [sc("xs"), helper.make_tensor("xz", U8, [1, 1], [3]), sc("ys")], {}))
    m.append(("gap_no_zero_point", "QLinearGlobalAveragePool", ["x", "xs", "", "ys", "yz"],
              [("x", u8.reshape(1, 2, 3, 4), U8)], [sc("xs"), sc("ys"), scalar("yz", U8, 0)], {}))
    m.append(("gap_rank2", "QLinearGlobalAveragePool", ["x", "xs", "xz", "ys", "yz"],
              [("x", u8.reshape(4, 6), U8)], [sc("xs"), scalar("xz", U8, 0), sc("ys"), scalar("yz", U8, 0)], {}))
    m.append(("avgpool_no_kernel", "QLinearAveragePool", ["x", "xs", "", "ys", ""],
              [("x", u8.reshape(1, 2, 3, 4), U8)], [sc("xs"), sc("ys")], {}))
    m.append(("avgpool_rank2", "QLinearAveragePool", ["x", "xs", "", "ys", ""],
              [("x", u8.reshape(4, 6), U8)], [sc("xs"), sc("ys")], {"kernel_shape": [2]}))
    m.append(("concat_incomplete_triple", "QLinearConcat", ["ys", "yz", "x0", "s0", "z0", "x1", "s1"],
              [("x0", u8, U8), ("x1", u8, U8)], [sc("ys"), scalar("yz", U8, 0), sc("s0"), scalar("z0", U8, 0),
                                                sc("s1")], {"axis": 0}))
    m.append(("concat_no_axis", "QLinearConcat", ["ys", "yz", "x0", "s0", "z0"],
              [("x0", u8, U8)], [sc("ys"), scalar("yz", U8, 0), sc("s0"), scalar("z0", U8, 0)], {}))
    m.append(("concat_zp_type", "QLinearConcat", ["ys", "yz", "x0", "s0", "z0", "x1", "s1", "z1"],
              [("x0", u8, U8), ("x1", u8, U8)], [sc("ys"), scalar("yz", U8, 0), sc("s0"), scalar("z0", U8, 0),
                                                sc("s1"), scalar("z1", I8, 0)], {"axis": 0}))
    m.append(("concat_dims", "QLinearConcat", ["ys", "yz", "x0", "s0", "z0", "x1", "s1", "z1"],
              [("x0", u8, U8), ("x1", u8[:, :2], U8)], [sc("ys"), scalar("yz", U8, 0), sc("s0"),
                                                       scalar("z0", U8, 0), sc("s1"), scalar("z1", U8, 0)],
              {"axis": 2}))
    m.append(("concat_axis_range", "QLinearConcat", ["ys", "yz", "x0", "s0", "z0"],
              [("x0", u8, U8)], [sc("ys"), scalar("yz", U8, 0), sc("s0"), scalar("z0", U8, 0)], {"axis": 3}))
    a8, b8 = np.arange(12, dtype=np.uint8).reshape(3, 4), np.arange(20, dtype=np.uint8).reshape(4, 5)
    qg = ["a", "as", "az", "b", "bs", "bz"]
    qgi = [sc("as"), scalar("az", U8, 0), scalar("bz", U8, 0)]
    m.append(("qgemm_percol_scale_len", "QGemm", qg, [("a", a8, U8), ("b", b8, U8)],
              qgi + [helper.make_tensor("bs", F, [4], [0.1] * 4)], {}))
    m.append(("qgemm_c_float", "QGemm", qg + ["c"], [("a", a8, U8), ("b", b8, U8)],
              qgi + [sc("bs"), helper.make_tensor("c", F, [5], [1.0] * 5)], {}))
    m.append(("qgemm_inner_dims", "QGemm", qg, [("a", a8, U8), ("b", b8, U8)], qgi + [sc("bs")], {"transB": 1}))
    m.append(("qgemm_b_zp_type", "QGemm", ["a", "as", "az", "b", "bs", "bz"], [("a", a8, U8), ("b", b8, U8)],
              [sc("as"), scalar("az", U8, 0), sc("bs"), scalar("bz", I8, 0)], {}))
    m.append(("qgemm_yzp_without_yscale", "QGemm", qg + ["", "", "yz"], [("a", a8, U8), ("b", b8, U8)],
              qgi + [sc("bs"), scalar("yz", U8, 0)], {}))
    m.append(("softmax_no_opset", "QLinearSoftmax", ["x", "xs", "", "ys", ""], [("x", u8, U8)],
              [sc("xs"), sc("ys")], {"axis": -1}))
    m.append(("softmax_axis_range", "QLinearSoftmax", ["x", "xs", "", "ys", ""], [("x", u8, U8)],
              [sc("xs"), sc("ys")], {"axis": 3, "opset": 13}))
    return m


# ---------------------------------------------------------------- running

def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


def ort_batch(jobs, tmp):
    """jobs [(model, outdir, [input files])] in one node process: {model: None or error}."""
    jf = os.path.join(tmp, "jobs.tsv")
    with open(jf, "w") as f:
        for m, od, xs in jobs:
            f.write("\t".join([m, od] + xs) + "\n")
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


def inferred_type(path):
    """Element type and dims of y after infer-shapes (None when not found)."""
    m = onnx.load(path)
    for vi in list(m.graph.output) + list(m.graph.value_info):
        if vi.name == "y" and vi.type.tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            return vi.type.tensor_type.elem_type, dims
    return None


def main():
    build_root = os.environ.get("NBL_BUILD_ROOT", os.path.join(ROOT, "build"))
    nibble = os.environ.get("NIBBLE", os.path.join(build_root, "tools", "nibble"))
    if len(sys.argv) > 2 and sys.argv[1] == "--nibble":
        nibble = sys.argv[2]
    if shutil.which("node") is None:
        print("check_contrib_quant.py: node not installed: skipped", file=sys.stderr)
        return SKIP
    tmp = tempfile.mkdtemp(prefix="nbl_contrib_quant_")
    fails = []
    stats = {}  # op -> counters
    try:
        rng = np.random.default_rng(20240607)
        all_cases = cases(rng) + cases_gemm_softmax(np.random.default_rng(20261206))
        jobs, prepared, alt_jobs, n_ort_ez = [], [], {}, []
        for name, op, (inputs, ins, inits, t, attrs), exp in all_cases:
            d = os.path.join(tmp, name)
            os.makedirs(d)
            src = os.path.join(d, "model.onnx")
            save_model(src, op, inputs, ins, inits, t, **attrs)
            files = []
            for n, a, _ in ins:
                f = os.path.join(d, n + ".npy")
                np.save(f, a)
                files.append((n, f))
            prepared.append((name, op, d, src, files, t, exp))
            if isinstance(exp[2], str):  # "no-ort: why"
                continue
            jobs.append((src, os.path.join(d, "ort"), [f for _, f in files]))
            if "" in inputs:
                ez = os.path.join(d, "explicit_zeros.onnx")
                save_model(ez, op, *explicit_zeros(inputs, ins, inits, t, op), t, **attrs)
                alt_jobs[src] = (ez, os.path.join(d, "ort_ez"), [f for _, f in files])
        res = ort_batch(jobs, tmp)
        if res is None:
            print("check_contrib_quant.py: onnxruntime-node not installed: skipped", file=sys.stderr)
            return SKIP
        # what ONNX Runtime refuses for its empty zero-point names: the same
        # node with explicit zero points 0
        redo = [alt_jobs[m] for m in alt_jobs if res.get(m, "no result")]
        res_ez = ort_batch(redo, tmp) or {}
        ort_out = {m: od for m, od, _ in jobs}
        for src, (ez, od, _) in alt_jobs.items():
            if res.get(src, "no result") and ez in res_ez:
                n_ort_ez.append(os.path.basename(os.path.dirname(src)))
                res[src], ort_out[src] = res_ez[ez], od
        for name, op, d, src, files, t, (want, tie, ort_alt) in prepared:
            key = op + " (ties)" if name.endswith("_ties") else op + " (float)" if t == F else op
            s = stats.setdefault(key, dict(cases=0, codes=0, off1=0, maxdiff=0, ties=0, count_differs=0,
                                          np_exact=0, np_tie_off1=0, no_ort=0, maxrel=0.0,
                                          ort_codes=0))
            s["cases"] += 1
            s["codes"] += want.size
            # nibble, fast and reference kernels, against the formula
            outs = {}
            for tag, extra in (("fast", []), ("reference", ["--reference"])):
                od = os.path.join(d, tag)
                cmd = [nibble, "run", src, "--output-dir", od] + extra
                for n, f in files:
                    cmd += ["--input", "%s=%s" % (n, f)]
                p = run(cmd)
                if p.returncode:
                    fails.append("%s: nibble (%s) exit %d: %s" % (name, tag, p.returncode, p.stderr.strip()))
                    continue
                y = np.load(os.path.join(od, "y.npy"))
                outs[tag] = y
                if y.dtype != want.dtype or y.shape != want.shape:
                    fails.append("%s: nibble (%s) gives %s%s, the formula %s%s" % (
                        name, tag, y.dtype, y.shape, want.dtype, want.shape))
                    continue
                if t == F:
                    # QGemm's float output: the same float32 operations, equal values
                    bad = ~((y == want) | (np.isnan(y) & np.isnan(want)))
                    if bad.any():
                        i = np.argwhere(bad)[0]
                        fails.append("%s: nibble (%s) differs from the formula at %d values (first at %s: %r, "
                                     "formula %r)" % (name, tag, int(bad.sum()), tuple(i), y[tuple(i)],
                                                      want[tuple(i)]))
                    if tag == "fast":
                        s["np_exact"] += int((~bad).sum())
                    continue
                diff = np.abs(y.astype(np.int32) - want.astype(np.int32))
                # the same float32 operations here and in nibble: equal codes;
                # Sigmoid's and Softmax's exp and sums (NumPy's, the C
                # library's) may differ in the last bit of the double: one
                # code off allowed on a tie
                bad = (diff > 1) | ((diff == 1) & ~(tie & (op in ("QLinearSigmoid", "QLinearSoftmax"))))
                if bad.any():
                    i = np.argwhere(bad)[0]
                    fails.append("%s: nibble (%s) differs from the formula at %d codes (first at %s: %d, "
                                 "formula %d)" % (name, tag, int(bad.sum()), tuple(i), y[tuple(i)], want[tuple(i)]))
                if tag == "fast":
                    s["np_tie_off1"] += int((diff == 1).sum())
                    s["np_exact"] += int((diff == 0).sum())
            # infer-shapes gives the run's type and shape
            conv = os.path.join(d, "inferred.onnx")
            p = run([nibble, "convert", src, "-o", conv, "--passes", "infer-shapes"])
            if p.returncode:
                fails.append("%s: infer-shapes: %s" % (name, p.stderr.strip()))
            else:
                it = inferred_type(conv)
                if it != (t, list(want.shape)):
                    fails.append("%s: infer-shapes gives %s, the run %s" % (name, it, (t, list(want.shape))))
            # against ONNX Runtime
            if isinstance(ort_alt, str):
                s["no_ort"] += 1
                continue
            if res.get(src, "no result"):
                fails.append("%s: ONNX Runtime: %s" % (name, res.get(src, "no result")))
                continue
            r = np.load(os.path.join(ort_out[src], "out_0.npy"))
            y = outs.get("fast")
            if y is None:
                continue
            if r.dtype != y.dtype or r.shape != y.shape:
                fails.append("%s: nibble gives %s%s, ONNX Runtime %s%s" % (name, y.dtype, y.shape, r.dtype, r.shape))
                continue
            if t == F:
                # float output: within 1e-5 relative
                rel = np.abs(y.astype(np.float64) - r) / np.maximum(np.abs(r.astype(np.float64)), 1e-30)
                rel = np.where(y == r, 0.0, rel)
                s["maxrel"] = max(s["maxrel"], float(rel.max()))
                if rel.max() > 1e-5:
                    fails.append("%s: nibble differs from ONNX Runtime by %.3g relative" % (name, float(rel.max())))
                continue
            s["ort_codes"] += want.size
            diff = np.abs(y.astype(np.int32) - r.astype(np.int32))
            keep = np.ones(y.shape, bool)
            if ort_alt is not None:
                # ONNX Runtime's own count where it differs from AveragePool's
                alt, alt_tie, differ = ort_alt
                da = np.abs(r.astype(np.int32) - alt.astype(np.int32))[differ]
                if (da > 1).any():
                    fails.append("%s: ONNX Runtime differs from the formula with its count (kernel size) by "
                                 "up to %d" % (name, int(da.max())))
                s["count_differs"] += int(differ.sum())
                keep = ~differ
            kd = diff[keep]
            s["maxdiff"] = max(s["maxdiff"], int(kd.max()) if kd.size else 0)
            s["off1"] += int((kd == 1).sum())
            s["ties"] += int((tie[keep] & (kd == 1)).sum())
            if key.endswith("(ties)") and ((kd == 1) & ~tie[keep]).any():
                fails.append("%s: one off ONNX Runtime at %d codes that are not on a tie" % (
                    name, int(((kd == 1) & ~tie[keep]).sum())))
            if (kd > 1).any():
                i = np.argwhere((diff > 1) & keep)[0]
                fails.append("%s: nibble differs from ONNX Runtime by %d at %s (nibble %d, ONNX Runtime %d)" % (
                    name, int(kd.max()), tuple(i), y[tuple(i)], r[tuple(i)]))

        # a chain of them with QuantizeLinear and QLinearConv: one code at most
        chain = os.path.join(tmp, "chain.onnx")
        xf = os.path.join(tmp, "chain_x.npy")
        np.save(xf, chain_model(chain, rng))
        od = os.path.join(tmp, "chain_nb")
        chain_res = "not run"
        p = run([nibble, "run", chain, "--input", "x=" + xf, "--output-dir", od])
        rc = ort_batch([(chain, os.path.join(tmp, "chain_ort"), [xf])], tmp) or {}
        if p.returncode:
            fails.append("chain: nibble: %s" % p.stderr.strip())
        elif rc.get(chain, "no result"):
            fails.append("chain: ONNX Runtime: %s" % rc.get(chain, "no result"))
        else:
            y = np.load(os.path.join(od, "y.npy"))
            r = np.load(os.path.join(tmp, "chain_ort", "out_0.npy"))
            if y.dtype != r.dtype or y.shape != r.shape:
                fails.append("chain: nibble gives %s%s, ONNX Runtime %s%s" % (y.dtype, y.shape, r.dtype, r.shape))
            else:
                diff = np.abs(y.astype(np.int32) - r.astype(np.int32))
                chain_res = "%d output codes (%d distinct), max |difference| %d, %d one off" % (
                    y.size, len(np.unique(y)), int(diff.max()), int((diff == 1).sum()))
                if diff.max() > 1:
                    fails.append("chain: nibble differs from ONNX Runtime by %d" % int(diff.max()))

        # malformed nodes: nibble exits 1 naming the node
        n_refused = 0
        mal = malformed()
        for name, op, inputs, ins, inits, attrs in mal:
            d = os.path.join(tmp, "bad_" + name)
            os.makedirs(d)
            src = os.path.join(d, "model.onnx")
            save_model(src, op, inputs, ins, inits, ins[0][2] if ins[0][2] != F else U8, **attrs)
            cmd = [nibble, "run", src, "--output-dir", os.path.join(d, "out")]
            for n, a, _ in ins:
                f = os.path.join(d, n + ".npy")
                np.save(f, a)
                cmd += ["--input", "%s=%s" % (n, f)]
            p = run(cmd)
            msg = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
            if p.returncode != 1 or "node 'n0' (%s)" % op not in p.stderr:
                fails.append("%s: nibble should refuse it naming the node (exit %d: %s)" % (
                    name, p.returncode, p.stderr.strip()))
            else:
                n_refused += 1
                print("refused %-26s %s" % (name, msg))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("%-26s %5s %7s %6s %8s %8s %7s %9s %11s" % ("op", "cases", "codes", "max|d|", "off-by-1", "share",
                                                      "on ties", "np exact", "np tie off1"))
    for op, s in stats.items():
        extra = ""
        if s["count_differs"]:
            extra = "  (+%d codes where ONNX Runtime divides by the kernel size: checked against that count)" % (
                s["count_differs"])
        if op.endswith("(float)"):
            extra += "  (float32 values; max relative difference to ONNX Runtime %.3g)" % s["maxrel"]
        if s["no_ort"]:
            extra += "  (%d cases not run by ONNX Runtime: formula only)" % s["no_ort"]
        share = s["off1"] / max(s["ort_codes"] - s["count_differs"], 1)
        print("%-26s %5d %7d %6d %8d %7.3f%% %7d %9d %11d%s" % (
            op, s["cases"], s["codes"], s["maxdiff"], s["off1"], 100 * share, s["ties"], s["np_exact"],
            s["np_tie_off1"], extra))
        if share > MAX_OFF1 and not op.endswith("(ties)"):
            fails.append("%s: %.2f%% of the codes one off ONNX Runtime (limit %.0f%%)" % (op, 100 * share,
                                                                                        100 * MAX_OFF1))
    print("chain QuantizeLinear -> QLinearConv -> QLinearLeakyRelu -> QLinearAdd -> QLinearAveragePool -> "
          "QLinearSigmoid -> QLinearConcat -> QLinearMul -> QLinearGlobalAveragePool against ONNX Runtime: "
          + chain_res)
    if n_ort_ez:
        print("ONNX Runtime refuses an empty zero-point name in the middle of the inputs (type inference): "
              "%d cases ran there with explicit zero points 0 (%s)" % (len(n_ort_ez), ", ".join(n_ort_ez)))
    for f in fails:
        print("FAIL " + f)
    print("%d models against ONNX Runtime and the formula (nibble's fast and reference kernels, infer-shapes); "
          "%d of %d malformed nodes refused naming the node; %d failures" % (
              len(all_cases), n_refused, len(mal), len(fails)))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
