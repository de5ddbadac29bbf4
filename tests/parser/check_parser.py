#!/usr/bin/python3
"""Checks of nibble's ONNX parser against the onnx python package.

  check_parser.py pb TOOL TESTDATA        every tensor .pb of the ONNX test data: nibble's
                                          dtype, shape and data == onnx.numpy_helper.to_array
  check_parser.py checker TOOL TESTDATA   every model.onnx: load+save with nibble, the saved file
                                          passes onnx.checker.check_model and holds the same
                                          initializers (numpy_helper) as the original
  check_parser.py resnet TOOL DIR         DIR/resnet18.onnx and DIR/resnet18_ext.onnx (external
                                          data) round-trip with identical weights
TOOL is tests/parser/rt_tool. Exit 0 on success, 1 on any mismatch.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper

SUITES = ["node", "simple", "pytorch-converted", "pytorch-operator", "real"]
MASK = (1 << 64) - 1


def checksum(b):
    a = np.frombuffer(b, dtype=np.uint8).astype(np.uint64)
    i = np.arange(len(a), dtype=np.uint64)
    with np.errstate(over="ignore"):
        return int(np.sum(a * (i * np.uint64(2654435761) + np.uint64(1)), dtype=np.uint64))


def tensor_sig(t):
    """(dtype, dims, checksum) of a TensorProto as numpy sees it."""
    arr = numpy_helper.to_array(t)
    if t.data_type == onnx.TensorProto.STRING:
        h = 0
        for k, s in enumerate(arr.reshape(-1)):
            if isinstance(s, str):
                s = s.encode()
            h = (h + checksum(s) * (k + 1)) & MASK
    else:
        h = checksum(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
    return t.data_type, ",".join(str(d) for d in t.dims), h


def model_dirs(testdata):
    for s in SUITES:
        root = os.path.join(testdata, s)
        if not os.path.isdir(root):
            continue
        for d in sorted(os.listdir(root)):
            if os.path.isfile(os.path.join(root, d, "model.onnx")):
                yield os.path.join(root, d)


def cmd_pb(tool, testdata):
    files, expect = [], {}
    for d in model_dirs(testdata):
        m = onnx.load(os.path.join(d, "model.onnx"), load_external_data=False)
        ins = [v.type.HasField("tensor_type") for v in m.graph.input
               if v.name not in {i.name for i in m.graph.initializer}]
        outs = [v.type.HasField("tensor_type") for v in m.graph.output]
        for ds in sorted(os.listdir(d)):
            if not ds.startswith("test_data_set"):
                continue
            for f in sorted(os.listdir(os.path.join(d, ds))):
                kind, _, idx = f[:-3].partition("_")
                flags = ins if kind == "input" else outs
                if not f.endswith(".pb") or not idx.isdigit() or int(idx) >= len(flags) or not flags[int(idx)]:
                    continue
                p = os.path.join(d, ds, f)
                t = onnx.TensorProto()
                with open(p, "rb") as fh:
                    t.ParseFromString(fh.read())
                files.append(p)
                expect[p] = tensor_sig(t)
    bad = 0
    for i in range(0, len(files), 500):
        out = subprocess.run([tool, "pbdump"] + files[i:i + 500], capture_output=True, text=True).stdout
        for line in out.splitlines():
            p, rest = line.split(" ", 1)
            parts = rest.split(" ")
            if parts[0] == "ERROR":
                print("FAIL", p, rest)
                bad += 1
                continue
            got = (int(parts[0]), parts[1], int(parts[2], 16))
            if got != expect[p]:
                print("FAIL", p, "nibble", got, "onnx", expect[p])
                bad += 1
    print(f"pb: {len(files)} tensors, {len(files) - bad} passed, {bad} failed")
    return 1 if bad or not files else 0


def init_sigs(path):
    m = onnx.load(path)
    sigs = {t.name: tensor_sig(t) for t in m.graph.initializer}
    return m, sigs


def cmd_checker(tool, testdata):
    bad = n = 0
    with tempfile.TemporaryDirectory() as tmp:
        for d in model_dirs(testdata):
            n += 1
            src = os.path.join(d, "model.onnx")
            dst = os.path.join(tmp, "out.onnx")
            r = subprocess.run([tool, "save", src, dst], capture_output=True, text=True)
            if r.returncode:
                print("FAIL save", src, r.stderr.strip())
                bad += 1
                continue
            try:
                orig, a = init_sigs(src)
                saved, b = init_sigs(dst)
                # the checker's verdict on the saved file must match the one on the original
                try:
                    onnx.checker.check_model(orig)
                    orig_ok = True
                except Exception:
                    orig_ok = False
                if orig_ok:
                    onnx.checker.check_model(saved)
                if a != b:
                    raise ValueError("initializers differ")
                if len(orig.graph.node) != len(saved.graph.node):
                    raise ValueError("node count differs")
            except Exception as e:  # noqa: BLE001
                print("FAIL", src, e)
                bad += 1
    print(f"checker: {n} models, {n - bad} passed, {bad} failed")
    return 1 if bad or not n else 0


def cmd_resnet(tool, d):
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        cases = [(os.path.join(d, "resnet18.onnx"), os.path.join(tmp, "r.onnx"), "keep"),
                 (os.path.join(d, "resnet18_ext.onnx"), os.path.join(tmp, "ext", "model.onnx"), "keep"),
                 (os.path.join(d, "resnet18.onnx"), os.path.join(tmp, "all", "model.onnx"), "all")]
        os.makedirs(os.path.join(tmp, "ext"))
        os.makedirs(os.path.join(tmp, "all"))
        ref = {t.name: numpy_helper.to_array(t) for t in onnx.load(cases[0][0]).graph.initializer}
        for src, dst, mode in cases:
            r = subprocess.run([tool, "save", src, dst, mode], capture_output=True, text=True)
            if r.returncode:
                print("FAIL save", src, r.stderr.strip())
                bad += 1
                continue
            r = subprocess.run([tool, "equal", src, dst], capture_output=True, text=True)
            if r.returncode and mode == "keep":
                print("FAIL equal", src, r.stderr.strip())
                bad += 1
            onnx.checker.check_model(dst)
            ext = sum(1 for t in onnx.load(dst, load_external_data=False).graph.initializer
                      if t.data_location == onnx.TensorProto.EXTERNAL)
            m = onnx.load(dst)
            got = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
            same = got.keys() == ref.keys() and all(
                got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape and np.array_equal(got[k], ref[k])
                for k in ref)
            print(f"resnet: {src} -> {mode}: {len(got)} initializers ({ext} external), "
                  f"{'identical' if same else 'DIFFERENT'}")
            if not same:
                bad += 1
            if mode != "keep" or "ext" in dst:
                if ext == 0:
                    print("FAIL: expected external tensors in", dst)
                    bad += 1
    return 1 if bad else 0


def main():
    if len(sys.argv) < 4:
        print(__doc__)
        return 2
    cmd, tool, arg = sys.argv[1:4]
    return {"pb": cmd_pb, "checker": cmd_checker, "resnet": cmd_resnet}[cmd](tool, arg)


if __name__ == "__main__":
    sys.exit(main())
