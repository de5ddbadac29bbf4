#!/usr/bin/python3
"""Round trip of `nibble dump` through the onnx package (run with Debian's /usr/bin/python3).

For every model.onnx under $NBL_TESTDATA/{node,simple,pytorch-converted,pytorch-operator}:
  - `nibble dump --format text --full` must parse with onnx.parser.parse_model, and the parsed
    model must match the original: opsets, graph inputs/outputs/initializers (names, types,
    values), nodes (op type, domain, inputs, outputs, attribute names, types and values),
    recursively through subgraphs. Names are compared through the printer's documented
    mangling (non-identifier characters become '_', see ir/print_text.c): the mapping
    original -> printed must be one-to-one and follow the mangling rule.
  - Files this parser version cannot read back are listed in text_parse_exceptions.txt with
    the missing feature; the test fails when an unlisted file fails or a listed file passes.
  - For a sample of models, `--format json` must load with json.loads and agree with the
    original on node count and op types, and `--format dot` must render with `dot -Tsvg`.
Exit status 0 when all is as expected, 1 otherwise.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import math

try:
    import numpy as np
    import onnx
    import onnx.numpy_helper
    import onnx.parser
except ImportError as e:  # skipped, not failed, where the onnx package is missing
    print(f"skipping: {e}")
    sys.exit(77)

NIBBLE = os.environ.get("NIBBLE", "build/tools/nibble")
TESTDATA = os.environ.get("NBL_TESTDATA", "/usr/share/libonnx-testdata/data")
HERE = os.path.dirname(os.path.abspath(__file__))
EXCEPTIONS = os.path.join(HERE, "text_parse_exceptions.txt")
SUITES = ["node", "simple", "pytorch-converted", "pytorch-operator"]

TYPE_WORDS = {"float", "uint8", "int8", "uint16", "int16", "int32", "int64", "string", "bool",
              "float16", "double", "uint32", "uint64", "complex64", "complex128", "bfloat16",
              "seq", "map", "optional", "sparse_tensor"}


def mangle_base(s):
    r = re.sub(r"[^A-Za-z0-9_]", "_", s)
    if not s or s[0].isdigit():
        r = "_" + r
    if r in TYPE_WORDS or r.lower() in ("nan", "inf", "infinity"):
        r += "_"
    return r


class Mismatch(Exception):
    pass


class Names:
    """Checks that printed names follow the mangling rule and stay one-to-one."""

    def __init__(self):
        self.fwd = {}
        self.back = {}

    def check(self, orig, got, what):
        if orig == "" or got == "":
            if orig != got:
                raise Mismatch(f"{what}: name '{orig}' printed as '{got}'")
            return
        if orig in self.fwd:
            if self.fwd[orig] != got:
                raise Mismatch(f"{what}: '{orig}' printed as '{got}' and '{self.fwd[orig]}'")
            return
        base = mangle_base(orig)
        if not (got == base or re.fullmatch(re.escape(base) + r"_\d+", got)):
            raise Mismatch(f"{what}: '{orig}' printed as '{got}', expected '{base}'")
        if got in self.back and self.back[got] != orig:
            raise Mismatch(f"{what}: '{orig}' and '{self.back[got]}' both printed as '{got}'")
        self.fwd[orig] = got
        self.back[got] = orig


def same_values(a, b):
    if a.dtype.kind in "fc":
        return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    return a.shape == b.shape and np.array_equal(a, b)


def tensor_array(t):
    if t.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
        return np.array(onnx.numpy_helper.to_array(t)).view(np.uint16)
    return onnx.numpy_helper.to_array(t)


def cmp_type(a, b, what):
    # printed types are the original's (dim params mangled)
    if a.WhichOneof("value") != b.WhichOneof("value"):
        raise Mismatch(f"{what}: type kind {a.WhichOneof('value')} vs {b.WhichOneof('value')}")
    if a.HasField("tensor_type"):
        ta, tb = a.tensor_type, b.tensor_type
        if ta.elem_type != tb.elem_type:
            raise Mismatch(f"{what}: elem type {ta.elem_type} vs {tb.elem_type}")
        if ta.HasField("shape") != tb.HasField("shape"):
            raise Mismatch(f"{what}: shape given {ta.HasField('shape')} vs {tb.HasField('shape')}")
        if len(ta.shape.dim) != len(tb.shape.dim):
            raise Mismatch(f"{what}: rank {len(ta.shape.dim)} vs {len(tb.shape.dim)}")
        for da, db in zip(ta.shape.dim, tb.shape.dim):
            if da.HasField("dim_param") and da.dim_param:
                ok = db.dim_param == mangle_base(da.dim_param) or db.dim_param == da.dim_param
            elif da.HasField("dim_value"):
                ok = db.HasField("dim_value") and db.dim_value == da.dim_value
            else:
                ok = not db.dim_param and not db.HasField("dim_value")
            if not ok:
                raise Mismatch(f"{what}: dim {da} vs {db}")


def cmp_attr(a, b, names, what):
    if a.name != b.name:
        raise Mismatch(f"{what}: attribute {a.name} vs {b.name}")
    what = f"{what} attribute '{a.name}'"
    if a.type != b.type:
        raise Mismatch(f"{what}: type {a.type} vs {b.type}")
    T = onnx.AttributeProto
    if a.type == T.FLOAT:
        ok = a.f == b.f or (math.isnan(a.f) and math.isnan(b.f))
    elif a.type == T.INT:
        ok = a.i == b.i
    elif a.type == T.STRING:
        ok = a.s == b.s
    elif a.type == T.FLOATS:
        ok = len(a.floats) == len(b.floats) and all(
            x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a.floats, b.floats))
    elif a.type == T.INTS:
        ok = list(a.ints) == list(b.ints)
    elif a.type == T.STRINGS:
        ok = list(a.strings) == list(b.strings)
    elif a.type == T.TENSOR:
        ok = same_values(tensor_array(a.t), tensor_array(b.t)) and a.t.data_type == b.t.data_type
    elif a.type == T.GRAPH:
        cmp_graph(a.g, b.g, names, what)
        ok = True
    elif a.type == T.GRAPHS:
        ok = len(a.graphs) == len(b.graphs)
        for ga, gb in zip(a.graphs, b.graphs):
            cmp_graph(ga, gb, names, what)
    elif a.type == T.TENSORS:
        ok = len(a.tensors) == len(b.tensors) and all(
            same_values(tensor_array(x), tensor_array(y)) for x, y in zip(a.tensors, b.tensors))
    else:
        ok = a == b
    if not ok:
        raise Mismatch(f"{what}: value differs")


def cmp_graph(a, b, names, what="graph"):
    names.check(a.name, b.name, f"{what} name")
    what = f"graph '{a.name}'"
    for field in ("input", "output"):
        la, lb = getattr(a, field), getattr(b, field)
        if len(la) != len(lb):
            raise Mismatch(f"{what}: {len(la)} {field}s vs {len(lb)}")
        for va, vb in zip(la, lb):
            names.check(va.name, vb.name, f"{what} {field}")
            if va.HasField("type"):
                cmp_type(va.type, vb.type, f"{what} {field} '{va.name}'")
    ia = {t.name: t for t in a.initializer}
    ib = {t.name: t for t in b.initializer}
    if len(ia) != len(ib):
        raise Mismatch(f"{what}: {len(ia)} initializers vs {len(ib)}")
    for n, t in ia.items():
        want = names.fwd.get(n) or mangle_base(n)
        got = ib.get(want)
        if got is None:
            cands = [k for k in ib if re.fullmatch(re.escape(mangle_base(n)) + r"_\d+", k)]
            got = ib[cands[0]] if len(cands) == 1 else None
        if got is None:
            raise Mismatch(f"{what}: initializer '{n}' missing after parsing")
        names.check(n, got.name, f"{what} initializer")
        if t.data_type != got.data_type or list(t.dims) != list(got.dims):
            raise Mismatch(f"{what}: initializer '{n}' type/dims differ")
        if not same_values(tensor_array(t), tensor_array(got)):
            raise Mismatch(f"{what}: initializer '{n}' values differ")
    if len(a.node) != len(b.node):
        raise Mismatch(f"{what}: {len(a.node)} nodes vs {len(b.node)}")
    # the printer emits nodes in a topological order: match by first output
    b_by_out = {}
    for nb in b.node:
        b_by_out.setdefault(tuple(nb.output), []).append(nb)
    for i, na in enumerate(a.node):
        key = tuple(names.fwd.get(o, mangle_base(o)) if o else "" for o in na.output)
        lst = b_by_out.get(key)
        nb = lst.pop(0) if lst else (b.node[i] if i < len(b.node) else None)
        nwhat = f"{what} node {i} ({na.op_type} '{na.name}')"
        if nb is None or (na.op_type, na.domain) != (nb.op_type, nb.domain):
            raise Mismatch(f"{nwhat}: op differs ({nb.op_type if nb else None})")
        ins_a = list(na.input)
        while ins_a and ins_a[-1] == "" and len(ins_a) > len(nb.input):
            ins_a.pop()  # trailing omitted inputs
        if len(ins_a) != len(nb.input) or len(na.output) != len(nb.output):
            raise Mismatch(f"{nwhat}: inputs {list(na.input)} -> {list(nb.input)}, "
                           f"outputs {list(na.output)} -> {list(nb.output)}")
        for x, y in zip(ins_a, nb.input):
            names.check(x, y, f"{nwhat} input")
        for x, y in zip(na.output, nb.output):
            names.check(x, y, f"{nwhat} output")
        if len(na.attribute) != len(nb.attribute):
            raise Mismatch(f"{nwhat}: {len(na.attribute)} attributes vs {len(nb.attribute)}")
        for x, y in zip(na.attribute, nb.attribute):
            cmp_attr(x, y, names, nwhat)


def cmp_model(a, b):
    if a.ir_version != b.ir_version:
        raise Mismatch(f"ir_version {a.ir_version} vs {b.ir_version}")
    oa = sorted((o.domain, o.version) for o in a.opset_import)
    ob = sorted((o.domain, o.version) for o in b.opset_import)
    if oa != ob:
        raise Mismatch(f"opsets {oa} vs {ob}")
    for f in ("producer_name", "producer_version", "domain", "model_version"):
        if getattr(a, f) != getattr(b, f):
            raise Mismatch(f"{f} differs")
    if len(a.functions) != len(b.functions):
        raise Mismatch("model functions are not printed")
    cmp_graph(a.graph, b.graph, Names())


def run(args):
    return subprocess.run([NIBBLE] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def load_exceptions():
    exc = {}
    with open(EXCEPTIONS) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            path, _, reason = line.partition(" ")
            exc[path] = reason.strip()
    return exc


def main():
    exceptions = load_exceptions()
    models = []
    for suite in SUITES:
        d = os.path.join(TESTDATA, suite)
        if not os.path.isdir(d):
            continue
        for t in sorted(os.listdir(d)):
            p = os.path.join(d, t, "model.onnx")
            if os.path.isfile(p):
                models.append((f"{suite}/{t}", p))
    if not models:
        print(f"no models under {TESTDATA}")
        return 1
    bad = []
    passed = failed_listed = 0
    for key, path in models:
        r = run(["dump", "--format", "text", "--full", path])
        err = None
        if r.returncode != 0:
            err = f"nibble dump exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}"
        else:
            try:
                text = r.stdout.decode("utf-8")
                parsed = onnx.parser.parse_model(text)
                cmp_model(onnx.load(path), parsed)
            except Mismatch as e:
                err = f"mismatch: {e}"
            except Exception as e:  # parse errors come as bytes messages
                msg = str(e).replace("\\n", " ").splitlines()
                err = f"parse: {' '.join(msg)[-200:]}"
        if err is None:
            passed += 1
            if key in exceptions:
                bad.append(f"{key}: listed as an exception ({exceptions[key]}) but now passes")
        elif key in exceptions:
            failed_listed += 1
        else:
            bad.append(f"{key}: {err}")
    # JSON and DOT on a sample
    sample = models[:: max(1, len(models) // 40)]
    have_dot = shutil.which("dot") is not None
    for key, path in sample:
        r = run(["dump", "--format", "json", path])
        try:
            j = json.loads(r.stdout.decode("utf-8"))
            orig = onnx.load(path)
            if [n["op_type"] for n in j["graph"]["nodes"]] != [n.op_type for n in orig.graph.node]:
                bad.append(f"{key}: JSON node op types differ")
            if [i["name"] for i in j["graph"]["inputs"]] != [i.name for i in orig.graph.input]:
                bad.append(f"{key}: JSON inputs differ")
        except Exception as e:
            bad.append(f"{key}: JSON does not load ({e}); nibble exit {r.returncode}")
        if have_dot:
            r = run(["dump", "--format", "dot", path])
            d = subprocess.run(["dot", "-Tsvg", "-o", os.devnull], input=r.stdout,
                               stderr=subprocess.PIPE)
            if r.returncode != 0 or d.returncode != 0:
                bad.append(f"{key}: DOT does not render: {d.stderr.decode(errors='replace')[:200]}")
    total = len(models)
    print(f"text dumps: {passed}/{total} parse back and match; "
          f"{failed_listed} listed exceptions; JSON/DOT checked on {len(sample)} models"
          + ("" if have_dot else " (dot not installed: DOT rendering skipped)"))
    for b in bad:
        print("FAIL", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
