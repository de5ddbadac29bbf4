#!/usr/bin/python3
"""Compare nibble's infer-shapes with onnx.shape_inference on whole models.

For each MODEL: strip value_info and the graph outputs' shapes, save the
stripped copy, run `nibble convert --passes infer-shapes` on it and
onnx.shape_inference.infer_shapes(data_prop=True) on it, then compare every
value both typed: element type, rank, and each dim (numbers and symbol names).
A value ONNX types and nibble leaves unknown counts as "unknown"; different
known facts count as "disagree". Exit 1 if anything disagrees.

With --batch-symbol N, dim 0 of every graph input is first renamed to the
symbol N (a dynamic batch), so symbolic dims are exercised too. A DIR argument
stands for every DIR/*/model.onnx (an ONNX test-data folder). Models that ONNX
itself cannot infer are skipped. Exit 77 (skipped) when no model is found,
1 when nothing could be compared.

usage: compare_onnx.py [--batch-symbol N] NIBBLE MODEL.onnx|DIR... (Debian's /usr/bin/python3)
"""
import glob
import os
import subprocess
import sys
import tempfile

import onnx
from onnx import shape_inference


def types_of(model):
    out = {}
    g = model.graph
    for vi in list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        dims = None
        if t.HasField("shape"):
            # onnx.shape_inference names the dims it cannot compute "unk__N": unknown
            dims = [d.dim_value if d.HasField("dim_value") else
                    (d.dim_param if d.HasField("dim_param") and not d.dim_param.startswith("unk__")
                     else None) for d in t.shape.dim]
        out[vi.name] = (t.elem_type, dims)
    return out


def main():
    args = sys.argv[1:]
    sym = None
    if args and args[0] == "--batch-symbol":
        sym, args = args[1], args[2:]
    nibble, models = args[0], []
    for a in args[1:]:
        models += sorted(glob.glob(os.path.join(a, "*", "model.onnx"))) if os.path.isdir(a) else [a]
    if not models:
        print("no models found, skipped")
        return 77
    bad = total = 0
    for path in models:
        m = onnx.load(path)
        del m.graph.value_info[:]
        inits = {t.name for t in m.graph.initializer}
        for i in m.graph.input:
            if sym and i.name not in inits and i.type.tensor_type.shape.dim:
                i.type.tensor_type.shape.dim[0].dim_param = sym
        for o in m.graph.output:
            if not o.type.HasField("tensor_type"):  # a sequence or optional: its whole type
                o.ClearField("type")  # (writing tensor_type's fields would make it a tensor)
                continue
            o.type.tensor_type.ClearField("shape")
            o.type.tensor_type.elem_type = 0
        with tempfile.TemporaryDirectory() as tmp:
            stripped = os.path.join(tmp, "in.onnx")
            onnx.save(m, stripped)
            res = os.path.join(tmp, "out.onnx")
            r = subprocess.run([nibble, "convert", stripped, "-o", res, "--passes", "infer-shapes"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{path}: nibble failed: {r.stderr.strip()}")
                bad += 1
                continue
            ours = types_of(onnx.load(res))
        try:
            ref = types_of(shape_inference.infer_shapes(m, data_prop=True))
        except Exception as e:  # ONNX cannot infer this model: nothing to compare with
            print(f"{path}: skipped, onnx.shape_inference failed: {str(e).splitlines()[0]}")
            continue
        agree = unknown = disagree = 0
        for name, (et, dims) in ref.items():
            if not et:
                continue
            mine = ours.get(name)
            if mine is None or not mine[0]:
                unknown += 1
                continue
            if mine[0] != et:
                disagree += 1
                print(f"{path}: {name}: dtype {mine[0]} vs onnx {et}")
                continue
            if dims is None or mine[1] is None:
                unknown += dims is not None
                agree += dims is None
                continue
            if len(dims) != len(mine[1]):
                disagree += 1
                print(f"{path}: {name}: {mine[1]} vs onnx {dims}")
                continue
            full = True
            for a, b in zip(mine[1], dims):
                if b is None:
                    continue
                if a is None:
                    full = False
                elif a != b:
                    disagree += 1
                    full = None
                    print(f"{path}: {name}: {mine[1]} vs onnx {dims}")
                    break
            if full:
                agree += 1
            elif full is False:
                unknown += 1
        extra = len([n for n in ours if n not in ref])
        print(f"{os.path.basename(os.path.dirname(path)) or path}: {agree} agree, {unknown} less known "
              f"than onnx, {disagree} disagree, {extra} typed only by nibble")
        bad += disagree
        total += agree
    print(f"{len(models)} models: {total} values agree with onnx.shape_inference, {bad} disagree")
    return 1 if bad or not total else 0


if __name__ == "__main__":
    sys.exit(main())
