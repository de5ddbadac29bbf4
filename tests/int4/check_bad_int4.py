#!/usr/bin/python3
"""check_bad_int4.py - broken INT4 models and options through the command line.

Every case below is a model (made here with onnx.helper, no checker) or an
option that is wrong the way a careless exporter or user gets it wrong:
QuantizeInt4 attributes out of range, a PACT clip that is not a scalar, a
fixed scale that is not a positive finite number, a non-float input, packed
INT4 initializers whose bytes do not match their shape, DequantizeLinear of
INT4 with a bad scale or zero point, Conv/Gemm whose quantized weight does
not fit, options of quantize-int4 that do not exist, lowering what ONNX
cannot express (a failed convert writes no output file). Each must make `nibble` exit with status 1 or 2 (never a
signal or a sanitizer report) and print a last line starting with "nibble: " (or
("nibble run: ", "nibble convert: ") that names what is at fault (the node or tensor, and the attribute or
option). The fast path (`nibble run`) and the reference path
(`--reference`) are both run for the `run` cases; `nibble compare` with a
second model that cannot be loaded or run prints nothing on stdout.
Exit 0 pass, 1 fail, 77 skip (no python3-onnx or numpy).
"""
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from onnx import TensorProto, helper
except ImportError as e:
    print("check_bad_int4: %s: skipped" % e)
    sys.exit(77)

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
NIBBLE = os.environ.get("NIBBLE") or os.path.join(
    os.environ.get("NBL_BUILD_ROOT", os.path.join(ROOT, "build")), "tools", "nibble")
F = TensorProto.FLOAT
INT4 = 22  # TensorProto.INT4 in ONNX >= 1.16; a plain number in the 1.12 schema


def model(nodes, inputs, outputs, inits=(), opset=13):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    ops = [helper.make_opsetid("", opset), helper.make_opsetid("ai.nibble", 1)]
    return helper.make_model(g, opset_imports=ops)


def vi(name, shape, t=F):
    return helper.make_tensor_value_info(name, t, list(shape))


def q4(name, x, y, **attrs):
    return helper.make_node("QuantizeInt4", x, [y], name=name, domain="ai.nibble", **attrs)


def ftensor(name, a):
    a = np.asarray(a, np.float32)
    return helper.make_tensor(name, F, list(a.shape), a.flatten().tolist())


def int4_tensor(name, dims, raw):
    t = TensorProto(name=name, data_type=INT4, dims=list(dims))
    t.raw_data = raw
    return t


def single_q(attrs, x_type=F, extra_inputs=(), inits=()):
    """y = QuantizeInt4(x, ...) with the given attributes."""
    return model([q4("q", ["x"] + list(extra_inputs), "y", **attrs)], [vi("x", [2, 3], x_type)],
                 [vi("y", [2, 3])], inits)


def conv_q(wshape, xshape=(1, 2, 5, 5), qattrs=None):
    """Conv(QuantizeInt4(x), QuantizeInt4(W)): the fused INT4 path's input."""
    w = ftensor("W", np.linspace(-1, 1, int(np.prod(wshape))).reshape(wshape))
    nodes = [q4("qx", ["x"], "xq", **(qattrs or {})), q4("qw", ["W"], "wq"),
             helper.make_node("Conv", ["xq", "wq"], ["y"], name="conv")]
    return model(nodes, [vi("x", xshape)], [vi("y", [1, 2, 3, 3])], [w])


def packed_dq(dims, raw, scale, zero=None, axis=None):
    """y = MatMul(x, DequantizeLinear(W_int4, scale[, zero]))."""
    inits = [int4_tensor("W", dims, raw), scale]
    ins = ["W", scale.name]
    if zero is not None:
        inits.append(zero)
        ins.append(zero.name)
    kw = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("DequantizeLinear", ins, ["Wd"], name="dq", **kw),
             helper.make_node("MatMul", ["x", "Wd"], ["y"], name="mm")]
    return model(nodes, [vi("x", [1, dims[0]])], [vi("y", [1, dims[-1]])], inits, opset=21)


def cases():
    """(tag, model or None, command after the model path, [substrings of the message])"""
    run = ["run"]
    yield "bits9", single_q({"bits": 9}), run, ["'q'", "bits=9"]
    yield "bits1", single_q({"bits": 1}), run, ["'q'", "bits=1"]
    yield "mode", single_q({"mode": "asymmetric"}), run, ["'q'", "mode 'asymmetric'"]
    yield "source", single_q({"scale_source": "entropy"}), run, ["'q'", "scale_source 'entropy'"]
    yield "rounding", single_q({"rounding": "up"}), run, ["'q'", "rounding 'up'"]
    yield "narrow", single_q({"narrow": 2}), run, ["'q'", "narrow"]
    yield "fixed_noscale", single_q({"scale_source": "fixed"}), run, ["'q'", "'scale'"]
    for tag, s in (("zero", 0.0), ("neg", -1.0), ("nan", float("nan")), ("inf", float("inf"))):
        yield "fixed_" + tag, single_q({"scale_source": "fixed", "scale": s}), run, ["'q'", "scale"]
    yield "pact_noalpha", single_q({"scale_source": "pact", "mode": "affine"}), run, \
        ["'q'", "alpha"]
    yield "pact_vector", single_q({"scale_source": "pact", "mode": "affine"}, extra_inputs=["a"],
                                  inits=[ftensor("a", [1.0, 2.0])]), run, ["'q'", "alpha"]
    for tag, a in (("neg", -1.0), ("nan", float("nan"))):
        yield "pact_" + tag, single_q({"scale_source": "pact", "mode": "affine"},
                                      extra_inputs=["a"], inits=[ftensor("a", a)]), run, \
            ["'q'", "alpha"]
    yield "int_input", single_q({}, x_type=TensorProto.INT32), run, ["'q'", "float"]
    yield "no_input", model([q4("q", [], "y")], [vi("x", [2])], [vi("y", [2])]), run, ["'q'"]
    # the fused path's candidates: a quantizer it cannot take falls back to the kernel,
    # which names it; a weight that does not fit the Conv is the Conv's error
    yield "conv_bits9", conv_q((2, 2, 3, 3), qattrs={"bits": 9}), run, ["'qx'", "bits=9"]
    yield "conv_wrank", conv_q((2, 2, 3)), run, ["'conv'"]
    yield "conv_wchan", conv_q((2, 3, 3, 3)), run, ["'conv'"]
    # packed INT4 initializers: bytes that do not match the shape
    yield "int4_short", packed_dq([4, 3], b"\x12" * 5, ftensor("s", 0.5)), run, ["'W'"]
    yield "int4_long", packed_dq([4, 3], b"\x12" * 9, ftensor("s", 0.5)), run, ["'W'"]
    yield "int4_empty", packed_dq([4, 3], b"", ftensor("s", 0.5)), run, ["'W'"]
    yield "dq_scale_shape", packed_dq([4, 3], b"\x12" * 6, ftensor("s", [0.5, 0.5])), run, \
        ["'dq'"]
    yield "dq_zero_type", packed_dq([4, 3], b"\x12" * 6, ftensor("s", 0.5),
                                    zero=ftensor("z", 0.0)), run, ["'dq'"]
    yield "dq_axis", packed_dq([4, 3], b"\x12" * 6, ftensor("s", [0.5, 0.5, 0.5]), axis=5), \
        run, ["'dq'"]
    # passes: unknown options and values, what lower-to-onnx cannot express
    good = conv_q((2, 2, 3, 3))
    yield "opt_unknown", good, ["convert", "--passes", "quantize-int4{bitz=3}"], ["bitz"]
    yield "opt_acts", good, ["convert", "--passes", "quantize-int4{activations=log}"], \
        ["activations", "log"]
    yield "opt_weights", good, ["convert", "--passes", "quantize-int4{weights=entropy}"], \
        ["weights", "entropy"]
    yield "opt_alpha", good, ["convert", "--passes", "quantize-int4{pact-alpha=-1}"], \
        ["pact-alpha"]
    yield "lower_stochastic", single_q({"rounding": "stochastic"}), \
        ["convert", "--passes", "lower-to-onnx"], ["'q'", "stochastic"]
    yield "lower_bits9", single_q({"bits": 9}), ["convert", "--passes", "lower-to-onnx"], \
        ["'q'", "bits"]
    # the one attribute decoder: lowering refuses what the kernel refuses
    yield "lower_narrow2", single_q({"narrow": 2}), ["convert", "--passes", "lower-to-onnx"], \
        ["'q'", "narrow"]
    yield "lower_fixed_noscale", single_q({"scale_source": "fixed"}), \
        ["convert", "--passes", "lower-to-onnx"], ["'q'", "'scale'"]
    yield "pack_bits9", conv_q((2, 2, 3, 3), qattrs={"bits": 9}), \
        ["convert", "--passes", "pack-int4"], ["'qx'"]
    # compare: a second model that cannot be read, or that fails, stops before any row
    yield "cmp_missing", good, ["compare", "@/missing.onnx"], ["missing.onnx"]
    yield "cmp_bits9", good, ["compare", "@conv_bits9.onnx"], ["conv_bits9.onnx", "'qx'"]


def main():
    if not os.access(NIBBLE, os.X_OK):
        print("check_bad_int4: %s not found" % NIBBLE)
        return 1
    failed = passed = 0
    with tempfile.TemporaryDirectory(prefix="nbl-bad4-") as d:
        for tag, m, cmd, want in cases():
            path = os.path.join(d, tag + ".onnx")
            with open(path, "wb") as f:
                f.write(m.SerializeToString())
            variants = [[]]
            # "@NAME": a file of this run's directory (or a path that does not exist)
            cmd = [os.path.join(d, c[1:]) if c.startswith("@") else c for c in cmd]
            if cmd[0] in ("run", "compare"):
                variants = [[], ["--reference"]] if cmd[0] == "run" else [[]]
                for i, vin in enumerate(m.graph.input):
                    t = vin.type.tensor_type
                    shape = [dd.dim_value for dd in t.shape.dim]
                    dt = np.int32 if t.elem_type == TensorProto.INT32 else np.float32
                    xf = os.path.join(d, "%s_in%d.npy" % (tag, i))
                    np.save(xf, (np.arange(int(np.prod(shape))) % 7 - 3).astype(dt).reshape(shape))
                    cmd = cmd + ["--input", "%s=%s" % (vin.name, xf)]
            out = os.path.join(d, tag + ".out.onnx")
            for extra in variants:
                full = [NIBBLE, cmd[0], path] + cmd[1:] + extra
                if cmd[0] == "convert":
                    full += ["-o", out, "--verify-each"]
                r = subprocess.run(full, capture_output=True, text=True)
                msg = r.stderr.strip()
                last = msg.splitlines()[-1] if msg else ""
                ok = r.returncode in (1, 2) and last.startswith("nibble")
                ok = ok and all(w in last for w in want) and "Sanitizer" not in r.stderr
                ok = ok and "runtime error" not in r.stderr
                ok = ok and (cmd[0] != "compare" or r.stdout == "")  # no table begun
                ok = ok and not os.path.exists(out)  # a failed convert writes nothing
                print("%-4s %-18s %-12s exit %d  %s" % ("ok" if ok else "FAIL", tag,
                                                        " ".join(extra) or cmd[0], r.returncode,
                                                        last[:150]))
                if not ok and msg:
                    print("     stderr: %s" % msg[-400:].replace("\n", " | "))
                passed += ok
                failed += not ok
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
