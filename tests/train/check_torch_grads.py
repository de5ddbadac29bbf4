#!/usr/bin/python3
"""check_torch_grads.py - nibble's training graph against PyTorch autograd.

usage: check_torch_grads.py lenet|resnet|optim [--keep DIR]

lenet:  the shipped models/lenet5.onnx, its weights loaded into the PyTorch
        LeNet5 of models/make_models.py; the batch is the first 64 of the 100
        Fashion-MNIST test images in models/data.
resnet: a small ResNet with BatchNorm (a 3x3 stem, two basic blocks of which
        one downsamples with a 1x1 projection, global average pooling, a
        linear classifier), seeded weights and randomized BatchNorm statistics,
        exported by PyTorch 1.13 (opset 13, BatchNormalization kept as nodes);
        the batch is 8 seeded random images 3x16x16 with random labels.

optim:  the optimizer part: LeNet, the same batch, 3 updates with each
        optimizer of build-training (sgd, momentum, nesterov, adam, adamw,
        adagrad, all with weight decay) against torch.optim (SGD, SGD with
        momentum / nesterov, Adam, AdamW, Adagrad) from the same weights. The
        error is max |nibble - torch| / max |torch - initial| over each
        parameter (relative to the change the updates made); bound 1e-4,
        except Adam and AdamW, whose ONNX update puts epsilon outside the bias
        correction (lr sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v) + eps) where PyTorch
        has lr/(1-b1^t) m / (sqrt(v/(1-b2^t)) + eps)): they are compared
        with that formula computed in float64 from PyTorch's gradients, bound
        1e-4, over the elements whose first gradient is at least 1e-2 of the
        tensor's largest (Adam moves every element about lr, so an element
        with a tiny gradient amplifies float32's absolute error).

Both sides compute the mean cross-entropy of the same batch with the same
weights: PyTorch with the model in train() mode (BatchNorm on batch
statistics), nibble with the model after `build-training` (BatchNorm becomes
BatchNormInternal), run once by tests/train/grad_dump. Every parameter's
gradient must agree with PyTorch's float32 autograd within 1e-4 relative
(max |nibble - torch| / max |torch| over the tensor); the loss too. PyTorch in
float64 is printed alongside as the exact reference.
Environment: NIBBLE (the CLI), NBL_GRAD_DUMP (the helper), NBL_SOURCE_ROOT.
Exit status: 0 pass, 1 mismatch or failure, 77 skipped (no torch).
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import onnx
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from onnx import numpy_helper
except ImportError as e:  # pragma: no cover
    print("skip: %s" % e)
    sys.exit(77)

SRC = os.environ.get("NBL_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
TOL = 1e-4


def lenet_module():
    spec = importlib.util.spec_from_file_location("make_models", os.path.join(SRC, "models", "make_models.py"))
    mm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mm)
    return mm.LeNet5()


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print("FAILED: %s\n%s%s" % (" ".join(cmd), r.stdout, r.stderr))
        sys.exit(1)
    return r.stdout

OPTIMS = [  # name, build-training options, torch optimizer factory
    ("sgd", "optimizer=sgd,weight-decay=0.001", lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.001), 0.05),
    ("momentum", "optimizer=momentum,momentum=0.9,weight-decay=0.001",
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.001), 0.05),
    ("nesterov", "optimizer=nesterov,momentum=0.9,weight-decay=0.001",
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.001), 0.05),
    ("adam", "optimizer=adam,beta1=0.9,beta2=0.999,epsilon=1e-8,weight-decay=0.001",
     lambda p: torch.optim.Adam(p, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.001), 0.001),
    ("adamw", "optimizer=adamw,beta1=0.9,beta2=0.999,epsilon=1e-8,weight-decay=0.01",
     lambda p: torch.optim.AdamW(p, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01), 0.001),
    ("adagrad", "optimizer=adagrad,epsilon=1e-10,weight-decay=0.001",
     lambda p: torch.optim.Adagrad(p, lr=0.05, eps=1e-10, weight_decay=0.001), 0.05),
]
STEPS = 3


def onnx_adam(p0, grads_fn, lr, wd, decoupled, steps):
    """ONNX Adam (norm_coefficient = wd, or AdamW's decay X (1 - lr wd) first), float64."""
    p = {k: v.astype(np.float64).copy() for k, v in p0.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    for t in range(1, steps + 1):
        g = grads_fn(p)
        for k in p:
            x = p[k] * (1 - lr * wd) if decoupled else p[k]
            gr = g[k] + (0 if decoupled else wd * x)
            m[k] = 0.9 * m[k] + 0.1 * gr
            v2[k] = 0.999 * v2[k] + 0.001 * gr * gr
            r = lr * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
            p[k] = x - r * m[k] / (np.sqrt(v2[k]) + 1e-8)
    return p


def check_optim(nibble, dump, work):
    model = lenet_module()
    src = os.path.join(SRC, "models", "lenet5.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(src).graph.initializer}
    x = np.load(os.path.join(SRC, "models", "data", "fmnist_test_100.npy"))[:64]
    y = np.load(os.path.join(SRC, "models", "data", "fmnist_test_100_labels.npy"))[:64].astype(np.int64)
    np.save(os.path.join(work, "x.npy"), x)
    np.save(os.path.join(work, "y.npy"), y)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    m64 = lenet_module().double()

    def grads(p):
        m64.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in p.items()})
        m64.zero_grad()
        F.cross_entropy(m64(xt.double()), yt).backward()
        return {k: q.grad.numpy().copy() for k, q in m64.named_parameters()}
    g0 = grads(inits)
    ok = True
    for name, opts, make, lr in OPTIMS:
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in inits.items()})
        opt = make(model.parameters())
        for _ in range(STEPS):
            opt.zero_grad()
            F.cross_entropy(model(xt), yt).backward()
            opt.step()
        tp = {k: p.detach().double().numpy().copy() for k, p in model.named_parameters()}
        train = os.path.join(work, "train_%s.onnx" % name)
        run([nibble, "convert", src, "-o", train, "--verify-each", "--passes",
             "build-training{loss=cross-entropy,%s}" % opts])
        out = os.path.join(work, "opt_" + name)
        os.makedirs(out, exist_ok=True)
        run([dump, train, out, "--lr", repr(lr), "--steps", str(STEPS), "input=" + os.path.join(work, "x.npy"),
             "label=" + os.path.join(work, "y.npy")])
        ref = tp
        if name in ("adam", "adamw"):
            ref = onnx_adam(inits, grads, lr, 0.001 if name == "adam" else 0.01, name == "adamw", STEPS)
        worst = worst_t = 0.0
        for k in tp:
            nb = np.load(os.path.join(out, k + ".npy")).astype(np.float64)
            # Adam normalizes every element's step: an element whose gradient is
            # tiny against the tensor's largest moves as far as the others on a
            # gradient known only to float32's absolute precision, so Adam is
            # compared where |g| >= 1e-2 max |g| (first step)
            sel = np.abs(g0[k]) >= 1e-2 * np.max(np.abs(g0[k])) if ref is not tp else np.ones(nb.shape, bool)
            moved = max(np.max(np.abs(ref[k] - inits[k])[sel]), 1e-30)
            worst = max(worst, np.max(np.abs(nb - ref[k])[sel]) / moved)
            worst_t = max(worst_t, np.max(np.abs(nb - tp[k])[sel]) / max(np.max(np.abs(tp[k] - inits[k])[sel]), 1e-30))
        good = worst <= TOL
        ok &= good
        print("optim %-9s %d updates: parameters vs %s %.2e%s  %s" %
              (name, STEPS, "ONNX Adam formula (fp64)" if ref is not tp else "torch.optim", worst,
               "  (vs torch.optim %.2e)" % worst_t if ref is not tp else "", "OK" if good else "FAIL"))
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=["lenet", "resnet", "optim"])
    ap.add_argument("--keep", help="work in this folder and keep it")
    args = ap.parse_args()
    nibble = os.environ.get("NIBBLE", "nibble")
    dump = os.environ.get("NBL_GRAD_DUMP")
    if not dump:
        print("NBL_GRAD_DUMP is not set")
        return 1
    torch.manual_seed(0)
    torch.set_num_threads(2)
    work = args.keep or tempfile.mkdtemp(prefix="nbl_torch_grads_")
    os.makedirs(work, exist_ok=True)
    if args.model == "optim":
        return check_optim(nibble, dump, work)
    if args.model == "lenet":
        model = lenet_module()
        src = os.path.join(SRC, "models", "lenet5.onnx")
        inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(src).graph.initializer}
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in inits.items()})
        x = np.load(os.path.join(SRC, "models", "data", "fmnist_test_100.npy"))[:64]
        y = np.load(os.path.join(SRC, "models", "data", "fmnist_test_100_labels.npy"))[:64].astype(np.int64)
    else:
        model = SmallResNet()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.8, 1.2)
        model.eval()
        src = os.path.join(work, "small_resnet.onnx")
        torch.onnx.export(model, torch.zeros(1, 3, 16, 16), src, opset_version=13,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
        ops = [n.op_type for n in onnx.load(src).graph.node]
        if "BatchNormalization" not in ops:
            print("the export folded BatchNormalization away (%s)" % sorted(set(ops)))
            return 1
        x = torch.randn(8, 3, 16, 16).numpy()
        y = torch.randint(0, 10, (8,)).numpy().astype(np.int64)
    np.save(os.path.join(work, "x.npy"), x)
    np.save(os.path.join(work, "y.npy"), y)
    # PyTorch autograd, float32 and float64, BatchNorm on batch statistics
    ref = {}
    for dt in (torch.float32, torch.float64):
        m = model.to(dt)
        m.train()
        m.zero_grad()
        loss = F.cross_entropy(m(torch.from_numpy(x).to(dt)), torch.from_numpy(y))
        loss.backward()
        ref[dt] = (loss.item(), {k: p.grad.detach().double().numpy().copy() for k, p in m.named_parameters()})
    model.to(torch.float32)
    # nibble: build-training, then one run of the algorithm graph
    train = os.path.join(work, "train.onnx")
    print(run([nibble, "convert", src, "-o", train, "--verify-each", "--passes",
               "build-training{loss=cross-entropy,optimizer=sgd}"]).strip())
    onnx.checker.check_model(onnx.load(train))  # the training model is valid ONNX
    out = os.path.join(work, "grads")
    os.makedirs(out, exist_ok=True)
    print(run([dump, train, out, "input=" + os.path.join(work, "x.npy"),
               "label=" + os.path.join(work, "y.npy")]).strip())
    nloss = float(np.load(os.path.join(out, "loss.npy")))
    l32, g32 = ref[torch.float32]
    l64, g64 = ref[torch.float64]
    ok = True
    lerr = abs(nloss - l32) / abs(l32)
    print("%s: loss nibble %.8f  torch fp32 %.8f  torch fp64 %.8f  rel err vs fp32 %.2e" %
          (args.model, nloss, l32, l64, lerr))
    ok &= lerr <= TOL
    # the exported names of PyTorch parameters are the state-dict keys for both models
    worst = 0.0
    for k in g32:
        path = os.path.join(out, k + "_grad.npy")
        if not os.path.exists(path):
            print("  %-28s no gradient from nibble" % k)
            ok = False
            continue
        ng = np.load(path).astype(np.float64)
        e32 = np.max(np.abs(ng - g32[k])) / max(np.max(np.abs(g32[k])), 1e-30)
        e64 = np.max(np.abs(ng - g64[k])) / max(np.max(np.abs(g64[k])), 1e-30)
        t3264 = np.max(np.abs(g32[k] - g64[k])) / max(np.max(np.abs(g64[k])), 1e-30)
        worst = max(worst, e32)
        print("  %-28s %-14s rel err vs torch fp32 %.2e  vs fp64 %.2e  (torch fp32 vs fp64 %.2e)" %
              (k, "x".join(map(str, ng.shape)), e32, e64, t3264))
        ok &= bool(e32 <= TOL)
    print("%s: %d parameter gradients, worst relative error vs PyTorch fp32 %.2e (bound %.0e): %s" %
          (args.model, len(g32), worst, TOL, "OK" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
