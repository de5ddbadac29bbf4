#!/usr/bin/python3
"""check_torch_untie.py - `nibble train` on a PyTorch eval-mode export, whose
equal tensors are Identity aliases of one initializer, against PyTorch on the
same run (build-training's untie).

torch.onnx.export of a model in eval mode with do_constant_folding=False
(torch 1.13; TrainingMode.PRESERVE keeps the BatchNorm nodes, which EVAL
folds into the Conv before them) writes parameters and buffers that hold
equal values once and each other one as an Identity of the survivor. A fresh BatchNorm's weight
and running variance are ones, its bias and running mean zeros, so here every
BatchNorm tensor and the second Conv's bias (set to zeros) are such aliases:
e.g. conv2.bias = Identity(bn1.bias). build-training gives each alias
an initializer of its own (untie=1, the default), so the model trains as in
PyTorch, where they are separate tensors.

A small net (Conv, BatchNorm, ReLU, strided Conv, BatchNorm, ReLU, global
average pool, Linear) is exported at opset 14 in eval mode (the script checks
that the file has Identity nodes reading initializers, among them one feeding
a running mean and one feeding a trained parameter), trained by
`nibble train` with plain SGD (constant rate, batch 32, one epoch of an npy
dataset, softmax cross-entropy, BatchNorm in training mode) and by PyTorch
1.13 (model.train()) from the same initial weights on the same batches in
the same order (nibble's data order, common.py). Asserted: every step's loss
within 1e-4 relative; every parameter and running mean of nibble's export
within 1e-4 of its largest magnitude (at least 0.1: the Conv bias before a
BatchNorm gets no gradient and stays near 0), the running variances within
5e-3 (ONNX's BatchNormalization averages in the biased batch variance,
PyTorch the unbiased one); tensors that were tied in the file end more than
10 times that tolerance apart. Controls: PyTorch trained with the file's parameter aliases tied
(one shared tensor each) must fail the comparison, and
`build-training{untie=0}` must stop with exit 2 naming an Identity node.
Exit 0 pass, 1 fail, 77 skip (no torch/onnx/numpy).
"""
import collections
import os
import sys

try:
    import numpy as np
    import onnx
    import torch
    import common
except ImportError as e:
    print("check_torch_untie: %s: skipped" % e)
    sys.exit(77)

N, SHAPE, K, C, B, LR, SEED, TOL, TOL_VAR = 384, (3, 8, 8), 3, 8, 32, 0.1, 7, 1e-4, 5e-3


def tol(k):
    return TOL_VAR if k.endswith("running_var") else TOL


def scale(v):
    return max(float(np.max(np.abs(v))), 0.1)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, C, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(C)
        self.conv2 = torch.nn.Conv2d(C, C, 3, stride=2, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(C)
        self.fc = torch.nn.Linear(C, K)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1))


def aliases(model):
    """{alias: root} for the Identity nodes reading an initializer, and the
    set of (alias, op, input index) of their consumers."""
    g = onnx.load(model).graph
    inits = {t.name for t in g.initializer}
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input[0] in inits}
    uses = {(i, n.op_type, k) for n in g.node for k, i in enumerate(n.input) if i in alias}
    return alias, uses


def torch_run(x, y, state, alias, tied):
    net = Net()
    net.load_state_dict(state)
    if tied:  # the control: every parameter alias shares its group's first parameter
        params = dict(net.named_parameters())
        groups = collections.defaultdict(list)
        for a, r in sorted(alias.items()):
            groups[r].append(a)
        for r, members in groups.items():
            names = [n for n in [r] + members if n in params]
            for n in names[1:]:
                mod, attr = n.rsplit(".", 1)
                setattr(net.get_submodule(mod), attr, params[names[0]])
    net.train()
    losses = common.torch_sgd_epoch(net, net.parameters(), x, y, LR, B, SEED)
    return losses, {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def main():
    torch.set_num_threads(1)
    torch.manual_seed(3)
    tmp = common.tmpdir("nbl_torch_untie_")
    x, y = common.make_npy_data(os.path.join(tmp, "data"), N, SHAPE, K, seed=6)
    net = Net()
    with torch.no_grad():
        net.conv2.bias.zero_()  # tied to the BatchNorm biases and running means
    state = {k: v.clone() for k, v in net.state_dict().items()}
    model = os.path.join(tmp, "eval.onnx")
    torch.onnx.export(net.eval(), torch.zeros((1,) + SHAPE), model, opset_version=14, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    alias, uses = aliases(model)
    stat = [a for a, op, k in uses if op == "BatchNormalization" and k in (3, 4)]
    param = [a for a, op, k in uses if (op, k) in (("BatchNormalization", 1), ("BatchNormalization", 2), ("Conv", 2))]
    print("export: %d Identity aliases of initializers, e.g. %s" % (
        len(alias), ", ".join("%s = Identity(%s)" % (a, alias[a]) for a in sorted(alias)[:3])))
    if not stat or not param:
        print("FAIL: the eval-mode export has no Identity alias feeding a running statistic (%s) and one "
              "feeding a parameter (%s)" % (stat, param))
        return 1
    rc = 0
    # control: the tie kept is an error naming the Identity
    r = common.run(["train", model, "--data", "npy:" + os.path.join(tmp, "data"), "--batch", B,
                    "--passes", "build-training{untie=0}", "--threads", 1])
    named = r.returncode == 2 and "(Identity)" in r.stderr and "untie=0" in r.stderr
    print("%s control untie=0: exit %d, %s" % ("ok  " if named else "FAIL", r.returncode,
                                                 r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""))
    rc |= not named
    out, metrics = os.path.join(tmp, "out.onnx"), os.path.join(tmp, "m.csv")
    r, rows, w1 = common.nibble_sgd_epoch(model, os.path.join(tmp, "data"), B, LR, SEED, out, metrics)
    if rows is None:
        print("FAIL: nibble train exited %d: %s" % (r.returncode, r.stderr))
        return 1
    if "untied %d Identity alias" % len(alias) not in r.stderr + r.stdout:
        print("FAIL: no 'untied %d Identity alias(es)' line in the log:\n%s" % (len(alias), r.stderr + r.stdout))
        rc = 1
    for tied in (False, True):
        losses, s = torch_run(x, y, state, alias, tied)
        keys = [k for k in s if s[k].dtype == np.float32]
        if len(rows) != len(losses) or any(k not in w1 for k in keys):
            print("FAIL: %d step rows (PyTorch %d); not in nibble's export: %s" % (
                len(rows), len(losses), [k for k in keys if k not in w1]))
            return 1
        lw = max(abs(a - b) / abs(b) for a, b in zip(rows, losses))
        # each tensor's difference in units of its tolerance (<= 1 passes)
        pw, worst = max((float(np.max(np.abs(w1[k] - s[k]))) / (tol(k) * scale(s[k])), k) for k in keys)
        ok = lw <= TOL and pw <= 1
        what = "control (PyTorch with the file's parameter aliases tied)" if tied else "nibble against PyTorch"
        print("%s %s: %d steps, loss %.4f -> %.4f; largest relative loss difference %.2e, largest tensor "
              "difference %.2e of its tolerance (%s)" % ("ok  " if ok != tied else "FAIL", what, len(rows), rows[0],
                                                         rows[-1], lw, pw, worst))
        if ok == tied:
            rc = 1
        if not tied:  # formerly tied tensors now apart, in both
            apart, pair = min((min(float(np.max(np.abs(s[a] - s[r]))), float(np.max(np.abs(w1[a] - w1[r])))) /
                               (tol(a) * scale(s[a])), "%s, %s" % (a, r)) for a, r in alias.items())
            ok = apart > 10
            print("%s formerly tied tensors: the closest pair (%s) ends %.1f times its tolerance apart in nibble "
                  "and in PyTorch" % ("ok  " if ok else "FAIL", pair, apart))
            rc |= not ok
    return rc


if __name__ == "__main__":
    sys.exit(common.cleanup(main()))
