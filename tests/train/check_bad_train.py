#!/usr/bin/python3
"""check_bad_train.py - bad input to `nibble train`.

Each case must exit with status 2 and a message naming what is at fault on
the first line that nibble writes (usage may follow; a pass's summary may come first), and must leave a good checkpoint given with --checkpoint (and, where it
applies, --resume) byte-identical with the same modification time: labels of
the wrong type or out of range, samples of the wrong size, a missing dataset
(naming the Debian package for Fashion-MNIST), truncated, foreign and missing
checkpoints, a resume with other settings, an inference model while there is
no build-training pass, bad options (--int4 with a training model, an unknown
--log4-grad mode); with build-training, a frozen or trainable glob that matches
nothing, models whose output does not fit the loss (loss=output on LeNet-5's
logits, cross-entropy on a rank-1 output) and --int4 with a --passes list
naming build-training.
Exit 0 pass, 1 fail, 77 skip (no numpy).
"""
import os
import sys

try:
    import numpy as np
    import common
except ImportError as e:
    print("check_bad_train: %s: skipped" % e)
    sys.exit(77)


def main():
    tmp = common.tmpdir("nbl_bad_train_")
    model = os.path.join(tmp, "mlp.onnx")
    common.make_model(model, "--input", "1x4x4", "--hidden", 8, "--classes", 3)
    good = os.path.join(tmp, "good")
    x, y = common.make_npy_data(good, 60, (1, 4, 4), 3, n_test=20)
    ckpt = os.path.join(tmp, "good.ckpt")
    base = ["train", model, "--batch", 16, "--threads", 1]
    r = common.run(base + ["--data", "npy:" + good, "--checkpoint", ckpt, "--export", os.path.join(tmp, "inf.onnx")])
    if r.returncode != 0:
        print("the good run failed: %s" % r.stderr)
        return 1
    ck_bytes = open(ckpt, "rb").read()

    def folder(name, xx, yy):
        d = os.path.join(tmp, name)
        os.makedirs(d, exist_ok=True)
        np.save(os.path.join(d, "x.npy"), xx)
        np.save(os.path.join(d, "y.npy"), yy)
        return "npy:" + d

    trunc = os.path.join(tmp, "trunc.ckpt")
    open(trunc, "wb").write(ck_bytes[: len(ck_bytes) // 2])
    noise = os.path.join(tmp, "noise.ckpt")
    open(noise, "wb").write(b"\x08\x07garbage" * 50)
    other = os.path.join(tmp, "other.onnx")
    common.make_model(other, "--input", "1x4x4", "--hidden", 9, "--classes", 3)
    other_ck = os.path.join(tmp, "other.ckpt")
    r = common.run(["train", other, "--data", "npy:" + good, "--batch", 16, "--checkpoint", other_ck])
    if r.returncode != 0:
        print("the other run failed: %s" % r.stderr)
        return 1
    has_build_training = "build-training" in common.run(["passes"]).stdout
    # inference models for build-training: the shipped LeNet-5, and one whose
    # output (one score per sample, rank 1) does not fit cross-entropy
    lenet = os.path.join(common.ROOT, "models", "lenet5.onnx")
    rank1 = os.path.join(tmp, "rank1.onnx")
    try:
        import onnx
        from onnx import TensorProto, helper
        g = helper.make_graph(
            [helper.make_node("Flatten", ["input"], ["f"]),
             helper.make_node("MatMul", ["f", "W"], ["s"]),
             helper.make_node("ReduceSum", ["s", "axes"], ["logits"], keepdims=0)],
            "rank1", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N"])],
            [helper.make_tensor("W", TensorProto.FLOAT, [16, 3], [0.1] * 48),
             helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), rank1)
        # a model exported with a fixed batch of 8 (no dynamic axis)
        fixed8 = os.path.join(tmp, "fixed8.onnx")
        g = helper.make_graph(
            [helper.make_node("Flatten", ["input"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["logits"])],
            "fixed8", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [8, 1, 4, 4])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [8, 3])],
            [helper.make_tensor("W", TensorProto.FLOAT, [16, 3], [0.1] * 48)])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), fixed8)
    except ImportError:
        rank1 = fixed8 = None
    cases = [
        ("labels of type float32", ["--data", folder("yfloat", x, y.astype(np.float32))],
         "labels are float, the model's label 'label' takes int64"),
        ("labels of type int32", ["--data", folder("yint32", x, y.astype(np.int32))], "labels are int32"),
        ("a label out of range", ["--data", folder("yrange", x, np.where(np.arange(60) == 17, 3, y))],
         "label 3 of sample 17 is outside [0, 3) (the model has 3 classes)"),
        ("a negative label", ["--data", folder("yneg", x, np.where(np.arange(60) == 5, -1, y))],
         "label -1 of sample 5"),
        ("samples of the wrong size", ["--data", folder("xsize", np.zeros((60, 1, 5, 5), np.float32), y)],
         "samples are 1x5x5 (25 values), the model's input 'input' takes Nx1x4x4"),
        ("samples of type float64", ["--data", folder("xf64", x.astype(np.float64), y)], "samples are double"),
        ("as many labels as samples", ["--data", folder("ylen", x, y[:50])], "50 labels for 60 samples"),
        ("a missing Fashion-MNIST folder", ["--data", "fashion-mnist:" + os.path.join(tmp, "nope")],
         "dataset-fashion-mnist"),
        ("a missing npy folder", ["--data", "npy:" + os.path.join(tmp, "nope")], "no such folder"),
        ("an unknown dataset kind", ["--data", "mnist"], "expected fashion-mnist, fashion-mnist:DIR or npy:DIR"),
        ("a truncated checkpoint", ["--data", "npy:" + good, "--resume", trunc], "trunc.ckpt"),
        ("random bytes as a checkpoint", ["--data", "npy:" + good, "--resume", noise], "noise.ckpt"),
        ("an inference model as a checkpoint", ["--data", "npy:" + good, "--resume", os.path.join(tmp, "inf.onnx")],
         "not a nibble training checkpoint"),
        ("a checkpoint of another model", ["--data", "npy:" + good, "--resume", other_ck], "'W1' differs"),
        ("a missing checkpoint", ["--data", "npy:" + good, "--resume", os.path.join(tmp, "none.ckpt")],
         "cannot open"),
        ("a resume with another batch size", ["--data", "npy:" + good, "--resume", ckpt, "--batch", "8"],
         "was trained with --batch 16"),
        ("a resume with another seed", ["--data", "npy:" + good, "--resume", ckpt, "--seed", "4"],
         "was trained with --seed 0"),
        ("a bad schedule", ["--data", "npy:" + good, "--schedule", "cosine:x"], "schedule 'cosine:x'"),
        ("--optimizer with a training model", ["--data", "npy:" + good, "--optimizer", "adam"],
         "already a training model"),
        ("an unknown optimizer", ["--data", "npy:" + good, "--optimizer", "lion"], "--optimizer must be"),
        ("a zero batch", ["--data", "npy:" + good, "--batch", "0"], "--batch must be an integer >= 1"),
        ("no batch with --last-batch drop", ["--data", "npy:" + good, "--batch", "100", "--last-batch", "drop"],
         "make no batch of 100"),
        ("an unknown option", ["--data", "npy:" + good, "--frobnicate"], "unknown option"),
        ("--label naming no input", ["--data", "npy:" + good, "--label", "target"], "(give --label NAME)"),
        ("--int4 with a training model", ["--data", "npy:" + good, "--int4"], "already a training model; --int4"),
        ("an unknown --log4-grad mode", ["--data", "npy:" + good, "--log4-grad=even"],
         "MODE must be nearest, tpr, stochastic or luq, not 'even'"),
    ]
    if has_build_training:
        cases += [
            ("a frozen glob that matches nothing", ["@model=" + lenet, "--data", "npy:" + good, "--passes",
                                                    "build-training{frozen=classifier.9.*}"],
             "frozen glob 'classifier.9.*' matches no initializer"),
            ("a trainable glob that matches nothing", ["@model=" + lenet, "--data", "npy:" + good, "--passes",
                                                       "build-training{trainable=conv*}"],
             "trainable glob 'conv*' matches no initializer"),
            ("loss=output on a model whose output is not a scalar",
             ["@model=" + lenet, "--data", "npy:" + good, "--passes", "build-training{loss=output}"],
             "does not fit loss=output"),
        ]
        if rank1:
            cases.append(("a model whose output does not fit cross-entropy", ["@model=" + rank1, "--data", "npy:" + good],
                          "does not fit loss=cross-entropy"))
        if fixed8:  # 60 training samples, 20 test
            cases += [
                ("a batch the model's fixed batch dimension does not take",
                 ["@model=" + fixed8, "--data", "npy:" + good, "--batch", "16"],
                 "input 'input' has a fixed batch dimension of 8, but a training batch has 16 sample(s)"),
                ("a last partial batch with a fixed batch dimension",
                 ["@model=" + fixed8, "--data", "npy:" + good, "--batch", "8"],
                 "but the last training batch (--last-batch drop leaves it out) has 4 sample(s) here; "
                 "give --last-batch drop"),
                ("a last partial evaluation batch with a fixed batch dimension",
                 ["@model=" + fixed8, "--data", "npy:" + good, "--batch", "8", "--last-batch", "drop"],
                 "but the last evaluation batch has 4 sample(s) here; give a test split of a multiple of 8"),
            ]
        cases.append(("--int4 with a --passes list naming build-training",
                      ["--data", "npy:" + good, "@inference", "--int4", "--passes", "build-training"],
                      "write quantize-int4 (before build-training)"))
    if not has_build_training:
        cases.append(("an inference model without build-training", ["--data", "npy:" + good, "@inference"],
                      "has no build-training pass"))
    failures = 0
    st0 = os.stat(ckpt)
    for what, args, expect in cases:
        argv = list(base)
        if "@inference" in args:
            args = [a for a in args if a != "@inference"]
            argv[1] = os.path.join(tmp, "inf.onnx")
        for a in [a for a in args if a.startswith("@model=")]:
            args = [b for b in args if b != a]
            argv[1] = a[len("@model="):]
        argv += args
        if "--resume" not in args or args[args.index("--resume") + 1] != ckpt:
            argv += ["--checkpoint", ckpt]
        r = common.run(argv)
        # the message: the first line of nibble's own (a pass's summary lines may come first)
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("nibble")]
        last = lines[0] if lines else ""
        ok = r.returncode == 2 and expect in last and last.startswith("nibble")
        st = os.stat(ckpt)
        same = open(ckpt, "rb").read() == ck_bytes and st.st_mtime_ns == st0.st_mtime_ns
        if not ok or not same:
            failures += 1
            print("FAIL %s: exit %d, stderr %r%s" % (what, r.returncode, r.stderr.strip(),
                                                     "" if same else "; the good checkpoint changed"))
        else:
            print("ok   %s: %s" % (what, last))
    print("%d of %d cases failed" % (failures, len(cases)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(common.cleanup(main()))
