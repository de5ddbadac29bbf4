#!/usr/bin/python3
"""Fixtures for tests/runtime/ops/test_ops_grad.c: PyTorch autograd gradients (float64) of a
grouped, strided, padded, dilated conv2d with bias and of training-mode
batch_norm, written as .npy files into the folder given as argv[1].

Exit status 77 (skip) when torch or numpy is missing."""
import os
import sys

try:
    import numpy as np
    import torch
except ImportError:
    sys.exit(77)

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)


def save(name, t):
    np.save(os.path.join(out, name + ".npy"), t.detach().numpy().astype(np.float64))


# conv: N=2, C=4, H=9, W=8, M=6, groups 2, kernel 3x2, stride (2, 1),
# padding (1, 2), dilation (1, 2)
x = torch.randn(2, 4, 9, 8, dtype=torch.float64, requires_grad=True)
w = torch.randn(6, 2, 3, 2, dtype=torch.float64, requires_grad=True)
b = torch.randn(6, dtype=torch.float64, requires_grad=True)
y = torch.nn.functional.conv2d(x, w, b, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
dy = torch.randn_like(y)
y.backward(dy)
for n, t in (("conv_x", x), ("conv_w", w), ("conv_dy", dy), ("conv_dx", x.grad), ("conv_dw", w.grad),
             ("conv_db", b.grad)):
    save(n, t)

# batch norm in training mode: N=4, C=3, H=3, W=2, eps 1e-5
x = torch.randn(4, 3, 3, 2, dtype=torch.float64, requires_grad=True)
g = torch.rand(3, dtype=torch.float64, requires_grad=True)
bb = torch.randn(3, dtype=torch.float64, requires_grad=True)
y = torch.nn.functional.batch_norm(x, None, None, g, bb, training=True, eps=1e-5)
dy = torch.randn_like(y)
y.backward(dy)
for n, t in (("bn_x", x), ("bn_scale", g), ("bn_bias", bb), ("bn_dy", dy), ("bn_dx", x.grad),
             ("bn_dscale", g.grad), ("bn_dbias", bb.grad)):
    save(n, t)

# fake quantization's straight-through mask (QuantizeInt4Grad): float32 data,
# a fixed scale 0.25 with codes -8..7 (the mask ends at round(x/s) in
# [-8, 7], i.e. x in [-2.125, 1.875)), and a max scale whose largest element
# has s*7 just below it (0.6024338: the code is still 7, so it passes)
xq = (torch.rand(64, dtype=torch.float64) * 5 - 2.5).float()
xq[:6] = torch.tensor([1.8, 1.874, 1.876, -2.1, -2.13, 0.6024338], dtype=torch.float32)
for name, data, scale in (("fq_fixed", xq, 0.25),
                          ("fq_max", xq[5:] * 0 + xq[5:].clamp(-0.6, 0.6), None)):
    data = data.clone()
    if scale is None:
        data[0] = 0.6024338
        scale = float(np.float32(data.abs().max().item()) / np.float32(7))
    data.requires_grad_(True)
    y = torch.fake_quantize_per_tensor_affine(data, scale, 0, -8, 7)
    dy = torch.randn(data.shape, dtype=torch.float32)
    y.backward(dy)
    save(name + "_x", data)
    save(name + "_dy", dy)
    save(name + "_dx", data.grad)
