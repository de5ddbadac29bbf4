#!/usr/bin/python3
"""export_models.py - export the whole-model reference set for nibble.

usage: /usr/bin/python3 export_models.py OUTDIR [--models a,b,...] [--no-ort]

For each model (random weights, torch.manual_seed(0), BatchNorm running
statistics calibrated on 4 random batches, then eval mode; or, for the
*_fmnist models, trained here on Fashion-MNIST, see train_fmnist) writes
  OUTDIR/<model>/model.onnx
  OUTDIR/<model>/inputs/<input name>.npy     fixed random inputs (seeded)
  OUTDIR/<model>/torch/<output name>.npy     PyTorch's outputs
  OUTDIR/<model>/ort/<output name>.npy       ONNX Runtime's outputs (ort_run.js)
and OUTDIR/manifest.json listing models, inputs and outputs. ONNX Runtime's
outputs are the reference the comparison test uses; PyTorch's are checked
against them here (relative error max|a-b|/max|b|) so a bad export is caught
at the source.
Exit status: 0 success, 1 an export or check failed, 2 bad usage.
"""
import argparse
import json
import os
import subprocess
import sys
from typing import List
import numpy as np
import torch
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
ORT_RUN = os.path.join(HERE, "ort_run.js")
TORCH_ORT_TOL = 1e-4


def make_resnet18():
    return torchvision.models.resnet18(weights=None), [("input", (1, 3, 224, 224))], 13


def make_mobilenet_v2():
    return torchvision.models.mobilenet_v2(weights=None), [("input", (1, 3, 224, 224))], 13


def make_squeezenet1_1():
    return torchvision.models.squeezenet1_1(weights=None), [("input", (1, 3, 224, 224))], 13


class Encoder(torch.nn.Module):
    """torch.nn.TransformerEncoder, d_model 64, 2 layers, 4 heads; input [seq, batch, d]."""

    def __init__(self):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128,
                                                 dropout=0.1)
        # enable_nested_tensor=False: the nested-tensor fast path does not export.
        self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2,
                                                   enable_nested_tensor=False)

    def forward(self, src):
        return self.encoder(src)


def make_transformer():
    return Encoder(), [("src", (16, 2, 64))], 14


FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_STEPS = 250  # SGD steps of 64 images: ResNet-18 ~85%, MobileNetV2 ~83% test accuracy
# (500 steps gave ~88% and ~85% for twice the time: the checks need outputs that
# mean something, not the best network, and this training is most of the ref suite)
FMNIST_BATCH = 16   # test images in the exported input


class SeqOps(torch.nn.Module):
    """A scripted loop over the rows that appends to a list, then the list
    concatenated and stacked, and a split by lengths: PyTorch exports it with
    ONNX's sequence ops (SequenceEmpty, SequenceInsert in a Loop body,
    ConcatFromSequence, SplitToSequence, SequenceAt)."""

    def forward(self, x):
        outs: List[torch.Tensor] = []
        h = x[0]
        for i in range(x.size(0)):
            h = torch.tanh(h * 0.5 + x[i])
            outs.append(h)
        parts = torch.split(x, [1, 2], dim=1)
        return torch.cat(outs, dim=0), torch.stack(outs, dim=1), parts[1] + 1.0


def make_seq_script():
    return torch.jit.script(SeqOps()), [("input", (4, 3))], 13


def fmnist_images(x):
    """Fashion-MNIST [N,1,28,28] (normalized) -> [N,3,32,32]: padded with the
    background value and repeated to the three channels torchvision expects."""
    x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=float(x.min()))
    return np.ascontiguousarray(np.repeat(x, 3, axis=1), dtype=np.float32)


def train_fmnist(arch):
    """torchvision `arch` with 10 classes, trained from a fixed seed on
    Fashion-MNIST (SGD, momentum 0.9, one-cycle learning rate 0.05,
    FMNIST_STEPS steps of 64 random training images at 32x32). Real weights
    and real inputs: the check of INT4 models lowered to ONNX needs a network
    whose outputs mean something (a random-weight network amplifies any
    difference). Returns the model in eval mode, its inputs, opset, the
    input array (the first FMNIST_BATCH test images) and their labels."""
    sys.path.insert(0, os.path.join(HERE, "..", "..", "models"))
    from make_models import load_split
    xtr, ytr = load_split(FMNIST_DIR, "train")
    xte, yte = load_split(FMNIST_DIR, "t10k")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=FMNIST_STEPS)
    model.train()
    for _ in range(FMNIST_STEPS):
        idx = rng.integers(0, len(xtr), 64)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(fmnist_images(xtr[idx]))),
                                                 torch.from_numpy(ytr[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(fmnist_images(xte[:2000]))).argmax(1).numpy()
    print("%-22s trained %d steps: test accuracy %.1f%% (first 2000 test images)"
          % (arch + "_fmnist", FMNIST_STEPS, 100.0 * float((pred == yte[:2000]).mean())))
    x = fmnist_images(xte[:FMNIST_BATCH])
    return model, [("input", x.shape)], 13, [x], yte[:FMNIST_BATCH]


MODELS = {
    "resnet18": make_resnet18,
    "mobilenet_v2": make_mobilenet_v2,
    "squeezenet1_1": make_squeezenet1_1,
    "transformer_encoder": make_transformer,
    "seq_script": make_seq_script,
    "resnet18_fmnist": lambda: train_fmnist("resnet18"),
    "mobilenet_v2_fmnist": lambda: train_fmnist("mobilenet_v2"),
}
TRAINED = {"resnet18_fmnist", "mobilenet_v2_fmnist"}


def calibrate_batchnorm(model, shape, rng):
    """Give BatchNorm layers real running statistics: with untouched defaults
    (mean 0, var 1) eval-mode BN is the identity and MobileNetV2's outputs shrink
    to ~1e-9, a weak test. Cumulative averages over 4 random batches of 8."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.from_numpy(rng.standard_normal((8,) + tuple(shape[1:]))
                                   .astype(np.float32)))
    model.eval()


def rel_err(a, b):
    denom = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if b.size else 0.0
    return diff / denom if denom > 0 else diff


def build_model(name):
    """The PyTorch module `name` exactly as exported (seeded weights, calibrated
    BatchNorm, eval mode), with its [(input name, shape)] and opset. Not for
    the trained models (train_fmnist)."""
    torch.manual_seed(0)
    model, inputs, opset = MODELS[name]()
    model.eval()
    calibrate_batchnorm(model, inputs[0][1], np.random.default_rng(99))
    return model, inputs, opset


def export_one(name, outdir, run_ort):
    labels = None
    if name in TRAINED:
        model, inputs, opset, arrays, labels = MODELS[name]()
    else:
        model, inputs, opset = build_model(name)
        rng = np.random.default_rng(1234)
        arrays = [rng.standard_normal(shape).astype(np.float32) for _, shape in inputs]
    mdir = os.path.join(outdir, name)
    for sub in ("inputs", "torch", "ort"):
        os.makedirs(os.path.join(mdir, sub), exist_ok=True)
    tensors = tuple(torch.from_numpy(a) for a in arrays)
    path = os.path.join(mdir, "model.onnx")
    with torch.no_grad():
        outs = model(*tensors)
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        out_names = ["output"] if len(outs) == 1 else ["output_%d" % i for i in range(len(outs))]
        torch.onnx.export(model, tensors, path, opset_version=opset,
                          input_names=[n for n, _ in inputs], output_names=out_names,
                          do_constant_folding=True)
    entry = {"name": name, "model": os.path.relpath(path, outdir), "opset": opset,
             "inputs": {}, "outputs": {}, "trained": labels is not None}
    if labels is not None:
        f = os.path.join(mdir, "labels.npy")
        np.save(f, labels)
        entry["labels"] = os.path.relpath(f, outdir)
    for (iname, _), arr in zip(inputs, arrays):
        f = os.path.join(mdir, "inputs", iname + ".npy")
        np.save(f, arr)
        entry["inputs"][iname] = os.path.relpath(f, outdir)
    for oname, o in zip(out_names, outs):
        np.save(os.path.join(mdir, "torch", oname + ".npy"), o.numpy())
        entry["outputs"][oname] = os.path.relpath(os.path.join(mdir, "ort", oname + ".npy"),
                                                  outdir)
    ok = True
    if run_ort:
        cmd = ["node", ORT_RUN, "run", path, "--output-dir", os.path.join(mdir, "ort"),
               "--threads", "1"]
        for iname in entry["inputs"]:
            cmd += ["--input", "%s=%s" % (iname, os.path.join(outdir, entry["inputs"][iname]))]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print("%s: ONNX Runtime failed: %s" % (name, r.stderr.strip()), file=sys.stderr)
            return entry, False
        for oname, o in zip(out_names, outs):
            ref = np.load(os.path.join(mdir, "ort", oname + ".npy"))
            err = rel_err(o.numpy(), ref)
            status = "ok" if err <= TORCH_ORT_TOL and ref.shape == o.shape else "MISMATCH"
            ok = ok and status == "ok"
            print("%-22s %-10s %-18s torch vs ORT rel err %.2e  %s"
                  % (name, oname, "x".join(map(str, ref.shape)), err, status))
    else:
        print("%-22s exported (ONNX Runtime not run)" % name)
    return entry, ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--models", default=",".join(
        m for m in MODELS if m not in TRAINED or os.path.isdir(FMNIST_DIR)))
    ap.add_argument("--no-ort", action="store_true", help="skip running ONNX Runtime")
    args = ap.parse_args()
    names = [m for m in args.models.split(",") if m]
    for m in names:
        if m not in MODELS:
            print("export_models.py: unknown model '%s' (known: %s)" % (m, ", ".join(MODELS)),
                  file=sys.stderr)
            return 2
    torch.set_num_threads(2)
    os.makedirs(args.outdir, exist_ok=True)
    manifest_path = os.path.join(args.outdir, "manifest.json")
    manifest = {"models": []}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    all_ok = True
    for m in names:
        entry, ok = export_one(m, args.outdir, not args.no_ort)
        all_ok = all_ok and ok
        manifest["models"] = [e for e in manifest["models"] if e["name"] != m] + [entry]
    manifest["models"].sort(key=lambda e: list(MODELS).index(e["name"]))
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
