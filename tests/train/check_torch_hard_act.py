#!/usr/bin/python3
"""check_torch_hard_act.py - `nibble train` on a model with HardSwish and
HardSigmoid (their gradient rules) against PyTorch on the same run.

A small MLP (Flatten, Linear, Hardswish, Linear, Hardsigmoid, Linear) is
exported by torch.onnx.export at opset 14 (HardSwish, HardSigmoid with alpha
1/6), trained by `nibble train` with plain SGD (constant rate, batch 32, one
epoch of an npy dataset, softmax cross-entropy), and by PyTorch 1.13 from the
same initial weights on the same batches in the same order (nibble's data
order, common.py). The first layer's scale puts many pre-activations beyond
the kinks (|x| > 3), so both branches of each backward formula are taken.
Asserted: every step's loss within 1e-4 relative, every trained parameter of
the exported model within 1e-4 of its largest magnitude; with the gradient of
either activation wrong (PyTorch run with it replaced by its plain forward
slope sign, --control) the comparison fails.
Exit 0 pass, 1 fail, 77 skip (no torch/onnx/numpy).
"""
import os
import sys

try:
    import numpy as np
    import onnx
    from onnx import numpy_helper
    import torch
    import common
except ImportError as e:
    print("check_torch_hard_act: %s: skipped" % e)
    sys.exit(77)

N, SHAPE, K, H, B, LR, SEED = 640, (1, 8, 8), 5, 24, 32, 0.2, 3


class HardswishWrongGrad(torch.autograd.Function):
    """Hardswish with a wrong backward (x/3 + 0.5 clamped to [0, 1]): the control."""
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.nn.functional.hardswish(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.clamp(x / 3 + 0.5, 0, 1)


class Net(torch.nn.Module):
    def __init__(self, wrong=False):
        super().__init__()
        self.l1, self.l2, self.l3 = torch.nn.Linear(64, H), torch.nn.Linear(H, H), torch.nn.Linear(H, K)
        self.wrong = wrong

    def forward(self, x):
        h = self.l1(torch.flatten(x, 1))
        h = HardswishWrongGrad.apply(h) if self.wrong else torch.nn.functional.hardswish(h)
        return self.l3(torch.nn.functional.hardsigmoid(self.l2(h)))


def torch_run(x, y, w0, wrong):
    net = Net(wrong)
    with torch.no_grad():
        for p in ("l1", "l2", "l3"):
            getattr(net, p).weight.copy_(torch.from_numpy(w0[p + ".weight"]))
            getattr(net, p).bias.copy_(torch.from_numpy(w0[p + ".bias"]))
    losses = common.torch_sgd_epoch(net, net.parameters(), x, y, LR, B, SEED)
    return losses, {k: v.detach().numpy() for k, v in net.state_dict().items()}


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tmp = common.tmpdir("nbl_torch_hard_")
    x, y = common.make_npy_data(os.path.join(tmp, "data"), N, SHAPE, K, seed=2)
    x *= 3  # pre-activations well past the kinks at +-3
    np.save(os.path.join(tmp, "data", "x.npy"), x)
    net = Net()
    model = os.path.join(tmp, "hard.onnx")
    torch.onnx.export(net, torch.zeros((1,) + SHAPE), model, opset_version=14, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    ops = sorted({n.op_type for n in onnx.load(model).graph.node})
    if "HardSwish" not in ops or "HardSigmoid" not in ops:
        print("FAIL: the export has %s, not HardSwish and HardSigmoid" % ops)
        return 1
    w0 = {t.name: numpy_helper.to_array(t).copy() for t in onnx.load(model).graph.initializer}
    out, metrics = os.path.join(tmp, "out.onnx"), os.path.join(tmp, "m.csv")
    r, rows, w1 = common.nibble_sgd_epoch(model, os.path.join(tmp, "data"), B, LR, SEED, out, metrics)
    if rows is None:
        print("FAIL: nibble train exited %d: %s" % (r.returncode, r.stderr))
        return 1
    return common.against_torch(rows, w1, lambda wrong: torch_run(x, y, w0, wrong),
                                "control (wrong Hardswish backward in PyTorch)")


if __name__ == "__main__":
    sys.exit(common.cleanup(main()))
