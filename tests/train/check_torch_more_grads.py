#!/usr/bin/python3
"""check_torch_more_grads.py - `nibble train` on a model with GridSample,
ReduceProd and a diagonal Einsum (their gradient rules) against PyTorch on
the same run.

A small net exported by torch.onnx.export at opset 16: a Linear layer's
output is the image of a GridSample (bilinear, border padding) whose grid
another Linear layer computes (tanh, reaching past the border), the factors
of a ReduceProd over its last axis, and the matrices of a diagonal Einsum
('bii->bi'); their outputs, concatenated, feed the classifier. It is trained
by `nibble train` with plain SGD (constant rate, batch 32, one epoch of an
npy dataset, softmax cross-entropy) and by PyTorch 1.13 from the same
initial weights on the same batches in the same order (common.py).
Asserted: every step's loss within 1e-4 relative, every trained parameter
within 1e-4 of its largest magnitude; with the grid's gradient cut in
PyTorch (--control: the grid detached) the comparison fails.
Exit 0 pass, 1 fail, 77 skip (no torch/onnx/numpy).
"""
import os
import sys

try:
    import onnx
    from onnx import numpy_helper
    import torch
    import common
except ImportError as e:
    print("check_torch_more_grads: %s: skipped" % e)
    sys.exit(77)

N, SHAPE, K, H, B, LR, SEED = 640, (1, 8, 8), 5, 24, 32, 0.2, 3


class Net(torch.nn.Module):
    def __init__(self, wrong=False):
        super().__init__()
        self.l1, self.l2, self.l3 = torch.nn.Linear(64, H), torch.nn.Linear(H, 12), torch.nn.Linear(21, K)
        self.wrong = wrong

    def forward(self, x):
        h = self.l1(torch.flatten(x, 1))
        img = h.reshape(-1, 2, 3, 4)
        grid = torch.tanh(self.l2(h)).reshape(-1, 3, 2, 2) * 1.2
        if self.wrong:
            grid = grid.detach()
        s = torch.nn.functional.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
        p = torch.prod(1 + 0.3 * img, dim=3)
        e = torch.einsum("bii->bi", h[:, :9].reshape(-1, 3, 3))
        return self.l3(torch.cat([torch.flatten(s, 1), torch.flatten(p, 1), e], 1))


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
    tmp = common.tmpdir("nbl_torch_more_")
    x, y = common.make_npy_data(os.path.join(tmp, "data"), N, SHAPE, K, seed=2)
    net = Net()
    model = os.path.join(tmp, "more.onnx")
    torch.onnx.export(net, torch.zeros((1,) + SHAPE), model, opset_version=16, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    ops = sorted({n.op_type for n in onnx.load(model).graph.node})
    if not {"GridSample", "ReduceProd", "Einsum"} <= set(ops):
        print("FAIL: the export has %s, not GridSample, ReduceProd and Einsum" % ops)
        return 1
    w0 = {t.name: numpy_helper.to_array(t).copy() for t in onnx.load(model).graph.initializer}
    out, metrics = os.path.join(tmp, "out.onnx"), os.path.join(tmp, "m.csv")
    r, rows, w1 = common.nibble_sgd_epoch(model, os.path.join(tmp, "data"), B, LR, SEED, out, metrics)
    if rows is None:
        print("FAIL: nibble train exited %d: %s" % (r.returncode, r.stderr))
        return 1
    return common.against_torch(rows, w1, lambda wrong: torch_run(x, y, w0, wrong),
                                "control (the grid detached in PyTorch)")


if __name__ == "__main__":
    sys.exit(common.cleanup(main()))
