#!/usr/bin/python3
"""Bad input through the command line: every broken model of the foundation
issue makes `nibble info` exit with status 2 (never a crash or a sanitizer
report), printing one message that names the file and the tensor or node at
fault; so does `nibble convert` when a pass refuses the model. The models are made here with onnx.helper (no checker), so they are
broken exactly as a careless exporter would break them.
Exit 0 pass, 1 fail, 77 skip (no python3-onnx)."""
import os
import random
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
except ImportError as e:
    print("check_bad_cli: %s: skipped" % e)
    sys.exit(77)

NIBBLE = os.environ["NIBBLE"]
F = TensorProto.FLOAT


def model(nodes, inputs, outputs, inits=(), name="g"):
    g = helper.make_graph(nodes, name, inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def vi(name, shape=(2,)):
    return helper.make_tensor_value_info(name, F, list(shape))


def cases(d):
    """(file name, bytes or ModelProto, [substrings the message must contain])"""
    good = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x")], [vi("y")])
    raw = good.SerializeToString()
    yield "empty.onnx", b"", ["empty.onnx", "empty"]
    rnd = random.Random(0)
    yield "random.onnx", bytes(rnd.getrandbits(8) for _ in range(4096)), ["random.onnx"]
    for cut in (7, len(raw) // 2, len(raw) - 3):
        yield "cut%d.onnx" % cut, raw[:cut], ["cut%d.onnx" % cut]
    yield "cycle.onnx", model([helper.make_node("Relu", ["b"], ["a"], name="n1"),
                               helper.make_node("Relu", ["a"], ["b"], name="n2")],
                              [vi("x")], [vi("a")]), ["cycle.onnx", "n1"]
    yield "undefined.onnx", model([helper.make_node("Relu", ["q"], ["y"], name="n1")],
                                  [vi("x")], [vi("y")]), ["undefined.onnx", "n1", "'q'"]
    yield "dupout.onnx", model([helper.make_node("Relu", ["x"], ["y"], name="n1"),
                                helper.make_node("Neg", ["x"], ["y"], name="n2")],
                               [vi("x")], [vi("y")]), ["dupout.onnx", "'y'"]
    big = TensorProto(name="W", data_type=F, dims=[2 ** 40, 2 ** 40], raw_data=b"")
    yield "overflow.onnx", model([helper.make_node("Add", ["x", "W"], ["y"], name="n1")],
                                 [vi("x")], [vi("y")], [big]), ["overflow.onnx", "'W'"]
    short = TensorProto(name="W", data_type=F, dims=[2, 3], raw_data=np.zeros(3, np.float32).tobytes())
    yield "short.onnx", model([helper.make_node("Add", ["x", "W"], ["y"], name="n1")],
                              [vi("x")], [vi("y")], [short]), ["short.onnx", "'W'"]
    unk = TensorProto(name="W", data_type=99, dims=[1], raw_data=b"\0\0\0\0")
    yield "dtype.onnx", model([helper.make_node("Add", ["x", "W"], ["y"], name="n1")],
                              [vi("x")], [vi("y")], [unk]), ["dtype.onnx", "'W'"]
    outside = os.path.join(os.path.dirname(d), "outside.bin")
    with open(outside, "wb") as f:
        f.write(b"\0" * 64)
    os.symlink(outside, os.path.join(d, "link.bin"))
    for tag, loc in (("dotdot", "../outside.bin"), ("abs", outside), ("symlink", "link.bin")):
        t = TensorProto(name="W", data_type=F, dims=[2])
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", loc), ("offset", "0"), ("length", "8")):
            e = t.external_data.add()
            e.key, e.value = k, v
        yield "ext_%s.onnx" % tag, model([helper.make_node("Add", ["x", "W"], ["y"], name="n1")],
                                          [vi("x")], [vi("y")], [t]), ["ext_%s.onnx" % tag, "'W'"]


def main():
    failed = passed = 0
    with tempfile.TemporaryDirectory(prefix="nbl-bad-") as top:
        d = os.path.join(top, "models")
        os.mkdir(d)
        for name, content, want in cases(d):
            path = os.path.join(d, name)
            with open(path, "wb") as f:
                f.write(content if isinstance(content, bytes) else content.SerializeToString())
            r = subprocess.run([NIBBLE, "info", path], capture_output=True, text=True)
            msg = r.stderr.strip()
            ok = r.returncode == 2 and msg.startswith("nibble: ") and all(w in msg for w in want)
            ok = ok and "Sanitizer" not in r.stderr and len(msg.splitlines()) == 1
            print("%-4s %-18s exit %d  %s" % ("ok" if ok else "FAIL", name, r.returncode, msg[:160]))
            passed += ok
            failed += not ok
        # a model a pass refuses is bad input for `convert` too (exit 2, as run and train):
        # opset 6 legacy broadcast whose B does not line up with A
        leg = helper.make_model(helper.make_graph(
            [helper.make_node("Add", ["x", "b"], ["y"], name="badd", broadcast=1, axis=1)], "g",
            [vi("x", (1, 4, 3, 3)), vi("b", (5,))], [vi("y", (1, 4, 3, 3))]),
            opset_imports=[helper.make_opsetid("", 6)])
        path = os.path.join(d, "legacy.onnx")
        with open(path, "wb") as f:
            f.write(leg.SerializeToString())
        r = subprocess.run([NIBBLE, "convert", path, "-o", os.path.join(d, "o.onnx"), "--passes", "default"],
                           capture_output=True, text=True)
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        ok = r.returncode == 2 and last.startswith("nibble: ") and "'badd'" in last and "legacy.onnx" in last
        print("%-4s %-18s exit %d  %s" % ("ok" if ok else "FAIL", "convert legacy", r.returncode, last[:160]))
        passed += ok
        failed += not ok
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
