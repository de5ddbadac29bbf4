#!/usr/bin/python3
"""check_bad_ternary.py - broken ternary models and options through the command line,
with the harness of tests/int4/check_bad_int4.py: each case must make `nibble` exit with
status 1 or 2 (never a signal or a sanitizer report) and print a last line starting with
"nibble" that names what is at fault (the node or tensor, and the attribute or option); a
failed convert writes no file; `run` cases run on the fast and the reference path.
Exit 0 pass, 1 fail, 77 skip (no python3-onnx or numpy).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "int4"))
try:
    import numpy as np
    from onnx import TensorProto, helper

    import check_bad_int4 as h
except ImportError as e:
    print("check_bad_ternary: %s: skipped" % e)
    sys.exit(77)

F, U8 = TensorProto.FLOAT, TensorProto.UINT8


def tern(op, name, ins, out, **attrs):
    return helper.make_node(op, ins, [out], name=name, domain="ai.nibble", **attrs)


def single(op, attrs, x_type=F):
    return h.model([tern(op, "q", ["x"], "y", **attrs)], [h.vi("x", [2, 3], x_type)],
                   [h.vi("y", [2, 3])])


def packed(raw, shape=(2, 2, 3, 3), scale=0.5, conv=True, **attrs):
    """Conv(QuantizeAbsmax8(x), DequantizeTernary(codes, scale)) (or the DequantizeTernary alone)."""
    codes = helper.make_tensor("codes", U8, [len(raw)], raw, raw=True)
    inits = [codes, h.ftensor("s", scale)]
    a = {"shape": list(shape) if shape else None}
    a.update(attrs)
    a = {k: v for k, v in a.items() if v is not None}
    nodes = [tern("DequantizeTernary", "d", ["codes", "s"], "w", **a)]
    if not conv:
        return h.model(nodes, [], [h.vi("w", list(shape))], inits)
    nodes += [tern("QuantizeAbsmax8", "qx", ["x"], "xq"),
              helper.make_node("Conv", ["xq", "w"], ["y"], name="conv")]
    return h.model(nodes, [h.vi("x", [1, 2, 5, 5])], [h.vi("y", [1, 2, 3, 3])], inits)


def conv_t():
    w = h.ftensor("W", np.linspace(-1, 1, 36).reshape(2, 2, 3, 3))
    nodes = [tern("QuantizeAbsmax8", "qx", ["x"], "xq"), tern("QuantizeTernary", "qw", ["W"], "wq"),
             helper.make_node("Conv", ["xq", "wq"], ["y"], name="conv")]
    return h.model(nodes, [h.vi("x", [1, 2, 5, 5])], [h.vi("y", [1, 2, 3, 3])], [w])


def cases():
    run = ["run"]
    lower = ["convert", "--passes", "lower-to-onnx"]
    ok_codes = bytes([121]) * 8  # 36 codes of 0 in base 3 need 8 bytes
    yield "qt_int", single("QuantizeTernary", {}, TensorProto.INT32), run, ["'q'", "float"]
    yield "a8_int", single("QuantizeAbsmax8", {}, TensorProto.INT32), run, ["'q'", "float"]
    yield "a8_per_row", single("QuantizeAbsmax8", {"per_row": 2}), run, ["'q'", "per_row"]
    yield "a8_per_row_str", single("QuantizeAbsmax8", {"per_row": "yes"}), run, ["'q'", "per_row"]
    yield "dq_noshape", packed(ok_codes, shape=None), run, ["'d'", "'shape'"]
    yield "dq_packing", packed(ok_codes, packing="3bit"), run, ["'d'", "packing '3bit'"]
    yield "dq_short", packed(ok_codes[:7]), run, ["'d'", "bytes"]
    yield "dq_long", packed(ok_codes + b"\x00"), run, ["'d'", "bytes"]
    yield "dq_badbyte", packed(bytes([250]) + ok_codes[1:]), run, ["'d'", "base-3"]
    yield "dq_2bit_three", packed(bytes([255]) * 9, packing="2bit"), run, ["'d'", "2-bit"]
    yield "dq_scale_vec", packed(ok_codes, scale=[0.5, 0.5]), run, ["'d'", "scale"]
    yield "dq_shape_neg", packed(ok_codes, shape=(-2, 2, 3, 3)), run, ["'d'", "shape"]
    yield "dq_badbyte_alone", packed(bytes([250]) * 8, conv=False), run, ["'d'", "base-3"]
    # passes: options, and what lowering and packing cannot express
    good = conv_t()
    yield "opt_acts", good, ["convert", "--passes", "quantize-ternary{activations=per-token}"], \
        ["activations", "per-token"]
    yield "opt_unknown", good, ["convert", "--passes", "quantize-ternary{bits=2}"], ["bits"]
    yield "opt_packing", good, ["convert", "--passes", "quantize-ternary,pack-ternary{packing=3bit}"], \
        ["packing", "3bit"]
    yield "lower_grad", h.model([tern("QuantizeTernaryGrad", "g", ["x", "x"], "y")],
                                [h.vi("x", [2, 3])], [h.vi("y", [2, 3])]), lower, \
        ["'g'", "no lowering"]
    yield "lower_badbyte", packed(bytes([250]) + ok_codes[1:]), lower, ["'d'", "codes"]
    yield "lower_per_row", single("QuantizeAbsmax8", {"per_row": 3}), lower, ["'q'", "per_row"]


if __name__ == "__main__":
    h.cases = cases
    sys.exit(h.main())
