#!/usr/bin/python3
"""torch_grad_quant.py - an independent reference for the accuracy cost of log-quantized
gradients: PyTorch 1.13 trains ResNet-8 (models/make_models.py, weights of
models/resnet8_init.onnx) on an npy dataset made by fmnist_subset.py, with SGD momentum 0.9,
batch 64 and the cosine schedule per step of `nibble train --schedule cosine`. With
--mode nearest|stochastic the gradient arriving at the output of every convolution but the
first (the fc layer stays float too: quantize-grad-log4's skip-first-last) is quantized to a
sign and an exponent, 2^3 - 1 levels top * r^-k with top = max|g| of the tensor, rounded as
runtime/formats/log.h defines (nearest in the log domain, or unbiased stochastic with
stochastic underflow). The forward stays FP32. It answers "is nibble's gap the method's?":
compare its FP32-vs-quantized gap with nibble's on the same data and budget.

usage: /usr/bin/python3 experiments/torch_grad_quant.py DATA_DIR [--mode fp32|nearest|stochastic]
           [--radix 4] [--epochs 2] [--lr 0.05] [--seed 1] [--train N] [--stats K]
Prints the training loss and test accuracy after every epoch. --train N uses the first N
training images. --stats K (a diagnostic of the rounding rules, any --mode) prints every K
steps, on the step's batch and the current weights: for each quantized convolution output
gradient dY under the radix-4 nearest rule, the fraction of non-zero elements that underflow
to 0 and E|q(dY)|/E|dY| (the magnitude bias of one quantizer); then for every convolution's
weight gradient under nearest, stochastic (radix 4) and LUQ-like stochastic radix 2 (all
inner layers quantized at once, as in training), the norm ratio and the cosine against the
float backward's: how the per-layer biases compound towards the first layers."""
import sys, os, math, argparse
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F, onnx
from onnx import numpy_helper
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(ROOT, "models")); import make_models
ap = argparse.ArgumentParser()
ap.add_argument("data"); ap.add_argument("--mode", default="fp32"); ap.add_argument("--radix", type=float, default=4)
ap.add_argument("--epochs", type=int, default=2); ap.add_argument("--lr", type=float, default=0.05); ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--train", type=int, default=0); ap.add_argument("--stats", type=int, default=0)
a = ap.parse_args()
torch.set_num_threads(1); torch.manual_seed(a.seed)
L = 7
def qlog(g, r, mode):
    top = g.abs().max()
    if top == 0 or not torch.isfinite(top): return g
    lev = top * r ** -torch.arange(L, dtype=g.dtype)
    ab = g.abs()
    if mode == "nearest":
        q = torch.zeros_like(ab)
        for j in range(L - 1):
            T = torch.sqrt(lev[j] * lev[j + 1])
            q = torch.where((q == 0) & (ab >= T), lev[j], q)
        q = torch.where((q == 0) & (ab >= lev[-1] / 2), lev[-1], q)
    else:  # stochastic: unbiased between the two neighbouring levels, and between 0 and m
        k = torch.floor(-torch.log(torch.clamp(ab, min=1e-30) / top) / math.log(r))
        k = torch.clamp(k, 0, L - 1)
        hi = top * r ** -k
        lo = torch.where(k >= L - 1, torch.zeros_like(hi), hi / r)
        hi = torch.where(k >= L - 1, lev[-1].expand_as(hi), hi)
        hi = torch.where(ab >= hi, torch.maximum(ab, hi), hi)  # x at or above a level (top clamp)
        p = torch.clamp((ab - lo) / (hi - lo), 0, 1)
        q = torch.where(torch.rand_like(ab) < p, hi, lo)
        q = torch.minimum(q, top)
    return torch.sign(g) * q
def make_q(name):
    class Q(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x): return x.view_as(x)
        @staticmethod
        def backward(ctx, g):
            if STATS["on"]:
                if STATS["mode"] == "fp32": return g
                q = qlog(g, STATS["radix"], STATS["mode"])
                if STATS["mode"] == "nearest":
                    nz = g != 0
                    STATS["dy"][name] = (float(((q == 0) & nz).sum()) / max(float(nz.sum()), 1.0),
                                         float(q.abs().sum() / g.abs().sum().clamp(min=1e-30)))
                return q
            return qlog(g, a.radix, a.mode)
    return Q
STATS = {"on": False, "mode": "fp32", "radix": 4, "dy": {}}
net = make_models.MODELS["resnet8"]()
w0 = {t.name: numpy_helper.to_array(t).copy() for t in onnx.load(os.path.join(ROOT, "models/resnet8_init.onnx")).graph.initializer}
net.load_state_dict({k: (torch.from_numpy(w0[k]) if k in w0 else v) for k, v in net.state_dict().items()})
named = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
if a.mode != "fp32" or a.stats:
    for n, m in named[1:]:  # all but the stem (the fc stays float too)
        m.register_forward_hook(lambda mod, inp, out, Q=make_q(n): Q.apply(out))
x = torch.from_numpy(np.load(os.path.join(a.data, "x.npy"))); y = torch.from_numpy(np.load(os.path.join(a.data, "y.npy")))
if a.train: x, y = x[:a.train], y[:a.train]
xt = torch.from_numpy(np.load(os.path.join(a.data, "x_test.npy"))); yt = torch.from_numpy(np.load(os.path.join(a.data, "y_test.npy")))
opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=0.9)
steps = a.epochs * ((len(x) + 63) // 64); t = 0
gen = torch.Generator().manual_seed(a.seed)
for ep in range(a.epochs):
    net.train(); perm = torch.randperm(len(x), generator=gen); tot = 0.0
    for i in range(0, len(x), 64):
        for gq in opt.param_groups: gq["lr"] = a.lr * 0.5 * (1 + math.cos(math.pi * t / steps))
        idx = perm[i:i + 64]
        if a.stats and t % a.stats == 0:
            STATS["on"] = True; wg = {}
            for md, r in (("fp32", 4), ("nearest", 4), ("stochastic", 4), ("stochastic", 2)):
                STATS["mode"], STATS["radix"] = md, r
                net.zero_grad(); F.cross_entropy(net(x[idx]), y[idx]).backward()
                wg[(md, r)] = {n: m.weight.grad.clone() for n, m in named}
            STATS["on"] = False
            print(f"step {t}: dY under radix-4 nearest (underflow fraction, E|q|/E|g|):", flush=True)
            for n, _ in named[1:]: print(f"  {n:18s} {STATS['dy'][n][0]:.3f} {STATS['dy'][n][1]:.3f}")
            print("  weight gradient vs float backward: norm ratio / cosine for nearest r4, stochastic r4, stochastic r2")
            for n, _ in named:
                g0 = wg[("fp32", 4)][n]
                print(f"  {n:18s}" + "".join(f"  {float(wg[k][n].norm() / g0.norm()):.2f} / {float(F.cosine_similarity(wg[k][n].flatten(), g0.flatten(), dim=0)):.3f}"
                                              for k in (("nearest", 4), ("stochastic", 4), ("stochastic", 2))), flush=True)
        opt.zero_grad()
        loss = F.cross_entropy(net(x[idx]), y[idx]); loss.backward(); opt.step(); t += 1; tot += float(loss) * len(idx)
    net.eval()
    with torch.no_grad(): acc = float((net(xt).argmax(1) == yt).float().mean())
    print(f"{a.mode} r{a.radix:g} seed {a.seed} epoch {ep+1}: loss {tot/len(x):.4f} test {acc*100:.2f}", flush=True)
