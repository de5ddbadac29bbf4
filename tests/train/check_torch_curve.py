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

Asserted:
  - every step's loss (--metrics --log-every 1): |nibble - torch| <= LOSS_TOL;
  - every trained parameter of the exported model: max |nibble - torch| over
    the tensor <= PARAM_TOL * max |torch|, and BatchNorm's running statistics
    (ONNX's formula: the biased batch variance, where PyTorch keeps the
    unbiased one, so the expected running variance is tracked here with hooks
    on PyTorch's BatchNorm inputs) within the same bound;
  - with --control: PyTorch at 1.01x the rate must be outside both bounds (the
    test can fail: a wrong rate, schedule, momentum, decay or data order is
    not hidden by the tolerance).
How the tolerances were chosen: two float32 implementations of the same step
differ by rounding (the convolutions, GEMMs and reductions sum in different
orders), and training amplifies the difference, so it grows with the step.
Its natural size is the spread between PyTorch's own two float32 paths
(--spread: oneDNN convolutions, the default, against PyTorch's native ones,
torch.backends.mkldnn.enabled = False). On LeNet-5 over these 200 steps:
momentum loss 6.1e-5, parameters 4.6e-4 (of their magnitude); Adam loss
2.4e-7, parameters 2.0e-6. nibble against PyTorch: momentum 6.1e-5 / 4.6e-4
(and 3.0e-7 / 2.0e-5 against PyTorch's native path; 2.0e-4 / 1.1e-3 with an
earlier chunking of nibble's ConvGrad, whose sums ran in another order),
Adam 4.8e-7 / 2.5e-6. LOSS_TOL = 1e-3 is the issue's bound, 5 times the
largest loss difference seen; PARAM_TOL = 1e-2 is about 10 times the largest
parameter difference seen. PyTorch at 1.01x the rate lands at 2.9e-2 / 4.5e-2
(momentum) and 2.6e-2 / 5.2e-1 (Adam): at least 4 times outside both bounds.
The differences grow fastest while the loss leaves its initial plateau
(steps 100-190 with momentum); float64 is
no yardstick: the momentum run in float64 differs from float32 by 1.3e-2 in
the loss, as does a float32 run whose initial weights are moved by one ulp
(both perturb every weight at once, where implementations differ by less).
ResNet-8 (BatchNorm on batches of 64) is chaotic in the same setting: PyTorch's
own two paths already differ by 4.3e-2 (Adam) and 1.2e-2 (momentum) in the
loss within 100 steps, and nibble against PyTorch by 3.7e-2 and 9.8e-3, so no
float32 implementation can be held to 1e-3 there; `check_torch_curve.py
resnet8 ...` prints the comparison, the suite runs LeNet-5.
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
LOSS_TOL, PARAM_TOL = 1e-3, 1e-2
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


def torch_run(mm, model, opt, x, y, order, lr_factor, dtype):
    """PyTorch's 200 steps: the losses and the final state (parameters, and
    running statistics with ONNX's biased variance)."""
    net = mm.MODELS[model]()
    w0 = {t.name: numpy_helper.to_array(t).copy()
          for t in onnx.load(os.path.join(common.ROOT, "models", model + "_init.onnx")).graph.initializer}
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
    dl = float(np.max(np.abs(nl - tl)))
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
    dl, dp, worst = compare(nl, ns, tl, ts)
    ok = dl <= LOSS_TOL and dp <= PARAM_TOL
    print("%s %s, %d steps: loss %.4f -> %.4f (PyTorch %.4f -> %.4f); largest loss difference %.2e "
          "(bound %.0e, at step %d), parameters %.2e of their magnitude (bound %.0e, %s)" %
          ("ok  " if ok else "FAIL", tag, STEPS, nl[0], nl[-1], tl[0], tl[-1], dl, LOSS_TOL,
           int(np.argmax(np.abs(nl - tl))) + 1, dp, PARAM_TOL, worst))
    for s in (1, 10, 50, 100, 150, 200):
        print("     step %3d: |nibble - torch| %.2e" % (s, abs(nl[s - 1] - tl[s - 1])))
    if args.spread:
        torch.backends.mkldnn.enabled = False
        sl, ss = torch_run(mm, args.model, args.optimizer, x, y, order, args.torch_lr_factor, torch.float32)
        torch.backends.mkldnn.enabled = True
        pl, pp, pw = compare(sl, ss, tl, ts)
        ql, qp, _ = compare(nl, ns, sl, ss)
        print("     PyTorch oneDNN vs native convolutions: loss %.2e, parameters %.2e (%s); nibble vs PyTorch "
              "native: loss %.2e, parameters %.2e" % (pl, pp, pw, ql, qp))
    if args.control:
        # the negative control: PyTorch at 1.01x the rate must be told apart
        bl, bs = torch_run(mm, args.model, args.optimizer, x, y, order, 1.01, torch.float32)
        cl, cp, _ = compare(nl, ns, bl, bs)
        caught = cl > LOSS_TOL and cp > PARAM_TOL
        print("     %s against PyTorch at 1.01x the rate: loss %.2e, parameters %.2e (%s)" %
              ("ok  " if caught else "FAIL", cl, cp, "both out of bounds" if caught else "NOT detected"))
        ok = ok and caught
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(common.cleanup(main()))
