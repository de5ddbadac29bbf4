#!/usr/bin/python3
"""Regenerate expected_failures.txt from the actual results of `nibble test`.

usage: regen_expected.py NIBBLE [TESTDATA]  (writes tests/conformance/expected_failures.txt)

Every failing test gets one line "test_name  reason", grouped by folder and
kind. Tests that need sequence/optional values or string-only ops are listed
as "skip: ..." (not run). Tests of models with random ops (those the op
table flags random, `nibble ops`; their expected outputs come from NumPy's
generator) are listed as "random: ..." whether or not their values happened
to match: `nibble test` then checks only the outputs' types and shapes. The list may only shrink: run this after fixing
things, never to hide a new failure without a reason.
"""
import os
import re
import subprocess
import sys

import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
FOLDERS = ["node", "simple", "pytorch-converted", "pytorch-operator"]
STRING_ONLY = {"StringNormalizer", "RegexFullMatch", "StringConcat", "StringSplit"}


def random_ops(nibble):
    """The default-domain ops the op table flags random (`nibble ops`: NBL_OPF_RANDOM)."""
    out = subprocess.run([nibble, "ops", "--format", "md"], capture_output=True, text=True).stdout
    ops = set()
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and cells[0] == "ai.onnx" and "random" in cells[5].split(", "):
            ops.add(cells[1])
    return ops


RANDOM_REASON = ("random: values drawn by nibble's generator; the expected ones come from "
                 "NumPy's (no seed can make them agree), so only the output's type and shape "
                 "are checked")
SEQ_OPS = re.compile(r"^(Sequence\w*|SplitToSequence|ConcatFromSequence|Optional\w*)$")

# Failures whose cause is known and is not a missing kernel.
MANUAL = {
    "test_adam_multiple":
        "ONNX test-data bug (onnx/onnx#7749): expected outputs use epsilon=1e-2 but model.onnx "
        "has no epsilon attribute (default 1e-6)",
    "test_cast_FLOAT_to_BFLOAT16":
        "test data of onnx 1.12 truncates float->bfloat16; nibble rounds to nearest even "
        "(as onnx >= 1.14 and ONNX Runtime)",
    "test_castlike_FLOAT_to_BFLOAT16":
        "test data: input 'like' has shape [1], the model declares [3,4]",
    "test_castlike_FLOAT_to_BFLOAT16_expanded":
        "test data: input 'like' has shape [1], the model declares [3,4]",
    "test_castlike_BFLOAT16_to_FLOAT":
        "test data: input 'like' has shape [1], the model declares [3,4]",
    "test_castlike_BFLOAT16_to_FLOAT_expanded":
        "test data: input 'like' has shape [1], the model declares [3,4]",
    "test_training_dropout":
        "random mask: the expected outputs come from NumPy's generator, nibble draws its own seeded mask (scaled by 1/(1-ratio) as ONNX says)",
    "test_training_dropout_mask":
        "random mask: the expected outputs come from NumPy's generator, nibble draws its own seeded mask (scaled by 1/(1-ratio) as ONNX says)",
    "test_training_dropout_default":
        "random mask: the expected outputs come from NumPy's generator, nibble draws its own seeded mask (scaled by 1/(1-ratio) as ONNX says)",
    "test_training_dropout_default_mask":
        "random mask: the expected outputs come from NumPy's generator, nibble draws its own seeded mask (scaled by 1/(1-ratio) as ONNX says)",
}


def uses_sequences(model):
    def graph_has(g):
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            k = vi.type.WhichOneof("value")
            if k in ("sequence_type", "optional_type", "map_type"):
                return True
        for n in g.node:
            if SEQ_OPS.match(n.op_type):
                return True
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH and graph_has(a.g):
                    return True
                if a.type == onnx.AttributeProto.GRAPHS and any(graph_has(x) for x in a.graphs):
                    return True
        return False
    return graph_has(model.graph)


def string_only_op(model):
    for n in model.graph.node:
        if n.op_type in STRING_ONLY:
            return n.op_type
    return None


def random_op(model, ops):
    for n in model.graph.node:
        if n.op_type in ops and n.domain in ("", "ai.onnx"):
            return n.op_type
    return None


def classify(folder_path, name, why, rnd):
    model = onnx.load(os.path.join(folder_path, name, "model.onnx"), load_external_data=False)
    if uses_sequences(model):
        return "skip", "skip: sequence/optional values are not supported by the runtime"
    op = string_only_op(model)
    if op:
        return "skip", f"skip: string-only op {op}"
    if name in MANUAL:
        return "known", MANUAL[name]
    if random_op(model, rnd):
        return "random", RANDOM_REASON
    m = re.search(r"\((\w+), domain '([^']*)', opset (\d+)\): no kernel", why)
    if m:
        return "kernel", f"no kernel: {m.group(1)} (domain '{m.group(2)}', opset {m.group(3)})"
    why = re.sub(r"^\S*/model\.onnx: ", "", why)
    why = re.sub(r"/usr/share/libonnx-testdata/data/[\w-]+/", "", why)
    return "other", why


def main():
    nibble = sys.argv[1]
    rnd = random_ops(nibble)
    data = sys.argv[2] if len(sys.argv) > 2 else "/usr/share/libonnx-testdata/data"
    out = ["# Expected failures of `nibble test` over libonnx-testdata (one line per test:",
           "# 'test_name  reason'; 'skip: reason' = not run; 'random: reason' = random outputs,",
           "# only their types and shapes are checked and the test stays an expected failure).",
           "# Regenerated by regen_expected.py from actual results. The list may only shrink:",
           "# a listed test that passes fails the run until its line is removed.", ""]
    titles = {"skip": "skipped (sequence/optional/string-only)", "known": "known causes",
              "kernel": "missing kernels",
              "random": "random outputs (types and shapes checked, values not)",
              "other": "wrong results or run errors"}
    for folder in FOLDERS:
        path = os.path.join(data, folder)
        res = subprocess.run([nibble, "test", path, "-v"], capture_output=True, text=True)
        groups = {k: [] for k in titles}
        for line in res.stdout.splitlines():
            m = re.match(r"^FAIL (\S+): (.*)$", line)
            if not m:
                # a random model whose values matched by chance is listed all the same
                p = re.match(r"^PASS (\S+)$", line)
                if not p or not random_op(onnx.load(os.path.join(path, p.group(1), "model.onnx"),
                                                    load_external_data=False), rnd):
                    continue
                m = re.match(r"^PASS (\S+)()$", line)
            kind, reason = classify(path, m.group(1), m.group(2), rnd)
            groups[kind].append((m.group(1), reason))
        last = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "?"
        out.append(f"# ---- {folder}: {last} (before this list)")
        for kind, title in titles.items():
            if groups[kind]:
                out.append(f"# {folder}: {title}")
                for name, reason in sorted(groups[kind], key=lambda x: (x[1], x[0])):
                    out.append(f"{name}  {reason}")
        out.append("")
    with open(os.path.join(HERE, "expected_failures.txt"), "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
