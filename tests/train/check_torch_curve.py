#!/usr/bin/python3
"""check_torch_curve.py - 200 steps of `nibble train` against PyTorch 1.13.

usage: check_torch_curve.py MODEL OPTIMIZER [--spread] [--control] [--torch-lr-factor F]
                            [--threads N] [--lr LR]
  MODEL      lenet5 | resnet8 (the shipped models/<MODEL>_init.onnx)
  OPTIMIZER  momentum | adam

Both sides start from the same initial weights (models/<MODEL>_init.onnx,
loaded into the PyTorch module of models/make_models.py) and train 200 steps
of batch 64 on the same batches in the same order: the first 12,800
Fashion-MNIST training images, written as an npy folder for `--data npy:DIR`,
one epoch shuffled by nibble's data order (--seed 5; common.data_order is
its transcription). The learning rate follows warmup:20,cosine on both sides
(every step's `lr` in the metrics is checked against the formula).
  momentum: build-training's ONNX Momentum (0.9, weight decay 5e-4, lr 0.01)
            against torch.optim.SGD(momentum=0.9, weight_decay=5e-4).
  adam:     build-training's ONNX Adam (lr 2e-3, betas 0.9/0.999, eps 1e-8)
            against the ONNX Adam update written with PyTorch tensor ops
            (torch.optim.Adam divides by sqrt(v / (1 - b2^t)) + eps where ONNX
            has sqrt(v) + eps, i.e. a different effective epsilon at every step).
PyTorch runs on one thread, its modules in train() mode (BatchNorm on batch
statistics).

Asserted, against PyTorch's own rounding envelope:
  - the envelope: PyTorch's same 200 steps from its initial weights moved by
    one ulp, four ways (every element up; every element down; each element up
    or down at random, two seeds). Its width at step t, W(t), is the largest
    loss difference any of the four has from the unmoved run up to step t
    (a running maximum); its parameter width Wp the largest parameter
    difference at the end (as below);
  - every step's loss (--metrics --log-every 1):
    |nibble - torch| <= LOSS_TOL + BAND * W(t);
  - every trained parameter of the exported model: max |nibble - torch| over
    the tensor <= (PARAM_TOL + BAND * Wp) * max |torch|, and BatchNorm's
    running statistics (ONNX's formula: the biased batch variance, where
    PyTorch keeps the unbiased one, so the expected running variance is
    tracked here with hooks on PyTorch's BatchNorm inputs) within the same
    bound;
  - with --control: PyTorch at 1.01x the rate must leave the loss band at some
    step (the test can fail: a wrong rate, schedule, momentum, decay or data
    order is not hidden by the tolerance).
Why an envelope: two float32 implementations of the same step differ by
rounding (the convolutions, GEMMs and reductions sum in different orders),
and this run has knife edges that turn such differences into visible ones.
Fashion-MNIST's background pixels all hold one value, so a first-layer
channel's output over the background is one number for hundreds of pixels in
an image; where the run takes it across zero, an ulp decides whether its ReLU
passes all of them, and the curve after that step follows one branch or the
other. Measured on LeNet-5 (2026-12-06, AMD EPYC with AVX2, OpenBLAS's Zen
kernels): features.0.bias[0] moved up by one ulp alone moves PyTorch's Adam
curve by 1.9e-4 by step 10 and 4.2e-2 by step 200; down by one ulp, or any
other single tensor's first element, by at most 2.4e-7. The four envelope
runs: momentum W(200) 1.3e-2 (W(80) 4.6e-4), Adam 6.1e-2 (W(20) 1.4e-3).
nibble against PyTorch: momentum 1.3e-2 (within 4.7e-7, over all 200 steps,
of a PyTorch run with each weight moved one ulp at random: the same branch),
Adam 4.2e-2; at most 0.72 of the band with BAND = 2. PyTorch at 1.01x the rate
leaves the band 9.4 (momentum) and 2.9 times (Adam) over its width, early
(steps 20-80), before the knife edges set in. Which side of an edge a run
takes depends on the CPU's kernels: on an AVX-512 machine with OpenBLAS's
SkylakeX kernels nibble took PyTorch's own branch (loss within 6.1e-5 and
4.8e-7 over the 200 steps), so a fixed 1e-3 held there and not here.
LOSS_TOL = 1e-3 is the training issue's bound; PARAM_TOL = 1e-2 is about 10
times the largest parameter difference seen on the branch PyTorch takes.
float64 is no yardstick: the momentum run in float64 differs from float32
by 1.3e-2 in the loss. --spread prints PyTorch's two float32 paths (oneDNN
convolutions, the default, against its native ones) too.
ResNet-8 (BatchNorm on batches of 64) is chaotic in the same setting: PyTorch's
own two paths already differ by 4.3e-2 (Adam) and 1.2e-2 (momentum) in the
loss within 100 steps, and nibble against PyTorch by 3.7e-2 and 9.8e-3;
`check_torch_curve.py resnet8 ...` prints the comparison, the suite runs
LeNet-5.
Exit 0 pass, 1 fail, 77 skip (no torch/onnx, no Fashion-MNIST).
"""
import argparse
import csv
import importlib.util
import math
import os
import sys

try:
    import numpy as np
    import onnx
    import torch
    import torch.nn.functional as F
    from onnx import numpy_helper
    import common
    from torch_onnx_adam import OnnxAdam
except ImportError as e:
    print("check_torch_curve: %s: skipped" % e)
    sys.exit(77)

FMNIST = os.environ.get("NBL_FMNIST", "/usr/share/datasets/fashion-mnist")
STEPS, B, SEED, WARM = 200, 64, 5, 20
LOSS_TOL, PARAM_TOL, BAND = 1e-3, 1e-2, 2.0
OPTS = {  # nibble options, lr, weight decay
    "momentum": (["--optimizer", "momentum", "--weight-decay", 0.0005], 0.01, 0.0005),
    "adam": (["--optimizer", "adam"], 0.002, 0.0),
}


def make_models():
    spec = importlib.util.spec_from_file_location("make_models", os.path.join(common.ROOT, "models", "make_models.py"))
    mm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mm)
    return mm


def lr_at(base, t):
    """warmup:WARM,cosine over STEPS updates (runtime/train/schedule.c)."""
    if t < WARM:
        return base * (t + 1) / WARM
    return base * 0.5 * (1 + math.cos(math.pi * (t - WARM) / (STEPS - WARM)))


def one_ulp(way):
    """The envelope's moves of the initial weights: every element one ulp up
    ("up"), down ("down"), or up or down at random (an int: the seed)."""
    def move(name, a):
        if a.dtype != np.float32:
            return a
        if way in ("up", "down"):
            to = np.float32(np.inf if way == "up" else -np.inf)
        else:
            rng = np.random.default_rng([way, sum(name.encode())])
            to = np.where(rng.random(a.shape) < 0.5, -np.inf, np.inf).astype(np.float32)
        return np.nextafter(a, to).astype(np.float32)
    return move


ENVELOPE = ("up", "down", 1, 2)


def torch_run(mm, model, opt, x, y, order, lr_factor, dtype, move=None):
    """PyTorch's 200 steps: the losses and the final state (parameters, and
    running statistics with ONNX's biased variance); move(name, array), if
    given, changes the initial weights first."""
    net = mm.MODELS[model]()
    w0 = {t.name: numpy_helper.to_array(t).copy()
          for t in onnx.load(os.path.join(common.ROOT, "models", model + "_init.onnx")).graph.initializer}
    if move:
        w0 = {k: move(k, v) for k, v in w0.items()}
    sd = net.state_dict()
    missing = [k for k in sd if k not in w0 and not k.endswith("num_batches_tracked")]
    if missing:
        raise SystemExit("the init model lacks %s" % missing)
    net.load_state_dict({k: (torch.from_numpy(w0[k]) if k in w0 else v) for k, v in sd.items()})
    net = net.to(dtype).train()
    onnx_var = {}  # BatchNorm module -> running variance updated with the biased batch variance

    def bn_hook(mod, inp):
        with torch.no_grad():
            v = inp[0].var(dim=(0, 2, 3), unbiased=False)
            onnx_var[mod] = onnx_var.get(mod, mod.running_var.clone()) * 0.9 + v * 0.1
    bns = {name: m for name, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    for m in bns.values():
        m.register_forward_pre_hook(bn_hook)
    _, base, wd = OPTS[opt]
    if opt == "momentum":
        o = torch.optim.SGD(net.parameters(), lr=base, momentum=0.9, weight_decay=wd)
    else:
        o = OnnxAdam(net.parameters(), lr=base)
    xt, yt = torch.from_numpy(x).to(dtype), torch.from_numpy(y)
    losses = []
    for t in range(STEPS):
        idx = torch.tensor(order[t * B:(t + 1) * B])
        for g in o.param_groups:
            g["lr"] = lr_at(base, t) * lr_factor
        o.zero_grad()
        loss = F.cross_entropy(net(xt[idx]), yt[idx])
        loss.backward()
        o.step()
        losses.append(loss.item())
    state = {k: p.detach().double().numpy().copy() for k, p in net.named_parameters()}
    for name, m in bns.items():
        state[name + ".running_mean"] = m.running_mean.double().numpy().copy()
        state[name + ".running_var"] = onnx_var[m].double().numpy().copy()
    return np.array(losses), state


def compare(nl, ns, tl, ts):
    """Largest per-step loss difference, and the largest parameter difference
    relative to the tensor's largest magnitude (with the tensor's name)."""
    dl = float(np.max(np.abs(nl - tl))) if len(nl) == len(tl) else math.inf
    dp, worst = 0.0, ""
    for k, v in ts.items():
        d = float(np.max(np.abs(ns[k] - v)) / max(np.max(np.abs(v)), 1e-30))
        if d > dp:
            dp, worst = d, k
    return dl, dp, worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=["lenet5", "resnet8"])
    ap.add_argument("optimizer", choices=sorted(OPTS))
    ap.add_argument("--torch-lr-factor", type=float, default=1.0,
                    help="PyTorch's rate times F (a deliberate mismatch: the test must fail)")
    ap.add_argument("--spread", action="store_true",
                    help="also run PyTorch with oneDNN off (its native convolutions) and print the "
                         "difference between PyTorch's two float32 paths")
    ap.add_argument("--control", action="store_true",
                    help="also compare with PyTorch at 1.01x the rate, which must fail both bounds")
    ap.add_argument("--threads", type=int, default=2, help="nibble's threads (PyTorch runs on one)")
    ap.add_argument("--lr", type=float, help="the base rate (default: the optimizer's in OPTS)")
    args = ap.parse_args()
    if args.lr:
        OPTS[args.optimizer] = (OPTS[args.optimizer][0], args.lr, OPTS[args.optimizer][2])
    if not os.path.isdir(FMNIST):
        print("check_torch_curve: %s missing (Debian package dataset-fashion-mnist): skipped" % FMNIST)
        return 77
    torch.set_num_threads(1)  # OpenMP on a busy machine: two threads can be 10x slower
    mm = make_models()
    tmp = common.tmpdir("nbl_torch_curve_")
    x, y = mm.load_split(FMNIST, "train")
    x, y = np.ascontiguousarray(x[:STEPS * B]), np.ascontiguousarray(y[:STEPS * B])
    data = os.path.join(tmp, "data")
    os.makedirs(data)
    np.save(os.path.join(data, "x.npy"), x)
    np.save(os.path.join(data, "y.npy"), y)
    nopts, base, _ = OPTS[args.optimizer]
    metrics, out = os.path.join(tmp, "m.csv"), os.path.join(tmp, "trained.onnx")
    init = os.path.join(common.ROOT, "models", args.model + "_init.onnx")
    r = common.run(["train", init, "--data", "npy:" + data, "--epochs", 1, "--batch", B, "--lr", base,
                    "--schedule", "warmup:%d,cosine" % WARM, "--seed", SEED, "--threads", args.threads,
                    "--metrics", metrics, "--log-every", 1, "--export", out] + nopts)
    if r.returncode != 0:
        print("FAIL: nibble train exited %d: %s" % (r.returncode, r.stderr))
        return 1
    rows = [row for row in csv.DictReader(open(metrics)) if row["kind"] == "step"]
    if len(rows) != STEPS:
        print("FAIL: %d step rows in the metrics, expected %d" % (len(rows), STEPS))
        return 1
    for t, row in enumerate(rows):
        if abs(float(row["lr"]) - lr_at(base, t)) > 1e-6 * base:
            print("FAIL step %d: nibble's lr %s, the schedule's %.9g" % (t + 1, row["lr"], lr_at(base, t)))
            return 1
    nl = np.array([float(row["loss"]) for row in rows])
    ns = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in onnx.load(out).graph.initializer}
    order = common.data_order(SEED, 0, STEPS * B)
    tag = "%s %s" % (args.model, args.optimizer)

    tl, ts = torch_run(mm, args.model, args.optimizer, x, y, order, args.torch_lr_factor, torch.float32)
    # PyTorch's rounding envelope: the same run from weights one ulp away
    width, pwidth = np.zeros(STEPS), 0.0
    for way in ENVELOPE:
        el, es = torch_run(mm, args.model, args.optimizer, x, y, order, args.torch_lr_factor, torch.float32,
                           one_ulp(way))
        width = np.maximum(width, np.maximum.accumulate(np.abs(el - tl)))
        pwidth = max(pwidth, compare(el, es, tl, ts)[1])
    band = LOSS_TOL + BAND * width
    pband = PARAM_TOL + BAND * pwidth

    def judge(ol, os_):
        """(inside both bounds, worst loss difference / band and its step,
        parameter difference, its tensor)"""
        r = np.abs(ol - tl) / band
        _, dp, worst = compare(ol, os_, tl, ts)
        return bool(np.all(r <= 1.0)) and dp <= pband, float(np.max(r)), int(np.argmax(r)) + 1, dp, worst

    ok, r, at, dp, worst = judge(nl, ns)
    print("%s %s%s, %d steps: loss %.4f -> %.4f (PyTorch %.4f -> %.4f); largest loss difference %.2e; "
          "worst step %d at %.2f of its band (%.0e + %g x envelope %.2e); parameters %.2e of their magnitude "
          "(bound %.2e, %s)" %
          ("ok  " if ok else "FAIL", tag, "" if ok else " outside PyTorch's envelope", STEPS, nl[0], nl[-1],
           tl[0], tl[-1], float(np.max(np.abs(nl - tl))), at, r, LOSS_TOL, BAND, width[at - 1], dp, pband, worst))
    for s in (1, 10, 50, 100, 150, 200):
        print("     step %3d: |nibble - torch| %.2e, envelope %.2e" % (s, abs(nl[s - 1] - tl[s - 1]), width[s - 1]))
    print("     envelope at the end: loss %.2e, parameters %.2e of their magnitude" % (width[-1], pwidth))
    if args.spread:
        torch.backends.mkldnn.enabled = False
        sl, ss = torch_run(mm, args.model, args.optimizer, x, y, order, args.torch_lr_factor, torch.float32)
        torch.backends.mkldnn.enabled = True
        pl, pp, pw = compare(sl, ss, tl, ts)
        ql, qp, _ = compare(nl, ns, sl, ss)
        print("     PyTorch oneDNN vs native convolutions: loss %.2e, parameters %.2e (%s); nibble vs PyTorch "
              "native: loss %.2e, parameters %.2e" % (pl, pp, pw, ql, qp))
    if args.control:
        # the negative control: PyTorch at 1.01x the rate must leave the loss band
        bl, bs = torch_run(mm, args.model, args.optimizer, x, y, order, 1.01, torch.float32)
        _, cr, cat, cp, _ = judge(bl, bs)
        caught = cr > 1.0
        print("     %s against PyTorch at 1.01x the rate: loss %.2f of its band at step %d, parameters %.2e (%s)" %
              ("ok  " if caught else "FAIL", cr, cat, cp, "out of the band" if caught else "NOT detected"))
        ok = ok and caught
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(common.cleanup(main()))
