#!/usr/bin/python3
"""make_models.py - train and export the small models nibble ships.

usage: /usr/bin/python3 models/make_models.py [--data DIR] [--out DIR] [--epochs E]
                                             [--models mlp,lenet5,resnet8]

Trains, on Fashion-MNIST (IDX files read with gzip + numpy), with a fixed seed:
  mlp.onnx     Flatten - 784-256 - ReLU - 256-128 - ReLU - 128-10
  lenet5.onnx  conv5x5(6) - ReLU - maxpool2 - conv5x5(16) - ReLU - maxpool2 -
               fc 256-120 - ReLU - fc 120-84 - ReLU - fc 84-10
  resnet8.onnx a small ResNet with BatchNorm: conv3x3(16)-BN-ReLU, three
               basic blocks (16, 32 stride 2, 64 stride 2; 1x1 conv + BN on
               the shortcut when the shape changes), global average pool, fc 64-10
Each takes input "input" float32 [N,1,28,28] (N symbolic), normalized as
(x/255 - MEAN) / STD, and outputs "logits" float32 [N,10]. For lenet5 and
resnet8 the untrained initial weights (the same seed, before training) are
also exported as <name>_init.onnx: the starting point of nibble's training
runs, so that PyTorch and nibble can train from identical weights.
Also writes data/fmnist_test_100.npy (first 100 test images, float32
[100,1,28,28], normalized the same way) and data/fmnist_test_100_labels.npy
(int64 [100]), and prints the FP32 test accuracy of each model on the full
10,000-image test set, computed by PyTorch and, when onnxruntime-node is
installed, again by ONNX Runtime on the exported .onnx file.
"""
import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
ORT_RUN = os.path.join(HERE, "..", "tests", "ref", "ort_run.js")
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel mean / std (x/255)
SEED = 0


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # unsigned byte data
        raise ValueError("%s: not an IDX ubyte file (magic %#x)" % (path, magic))
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError("%s: %d bytes of data for shape %s" % (path, arr.size, dims))
    return arr.reshape(dims)


def load_split(data_dir, prefix):
    x = read_idx(os.path.join(data_dir, "%s-images-idx3-ubyte.gz" % prefix))
    y = read_idx(os.path.join(data_dir, "%s-labels-idx1-ubyte.gz" % prefix))
    x = ((x.astype(np.float32) / 255.0 - MEAN) / STD).reshape(-1, 1, 28, 28)
    return x.astype(np.float32), y.astype(np.int64)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(),
                                 nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.net(x)


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 4 * 4, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.short is None else self.short(x)))


class ResNet8(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2),
                                    BasicBlock(32, 64, 2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        y = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


MODELS = {"mlp": MLP, "lenet5": LeNet5, "resnet8": ResNet8}


def train(model, x, y, epochs, batch, lr):
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        total, n = 0.0, 0
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
            n += len(idx)
        print("  epoch %d: train loss %.4f" % (ep + 1, total / n), flush=True)
    model.eval()


def accuracy_torch(model, x, y):
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    return float(np.mean(logits.argmax(1) == y))


def accuracy_ort(path, x, y):
    """Accuracy of the exported model under ONNX Runtime, or None if unavailable."""
    with tempfile.TemporaryDirectory() as tmp:
        xin = os.path.join(tmp, "x.npy")
        np.save(xin, x)
        try:
            r = subprocess.run(["node", ORT_RUN, "run", path, "--input", "input=" + xin,
                                "--output-dir", tmp, "--threads", "2"],
                               capture_output=True, text=True)
        except FileNotFoundError:
            return None
        if r.returncode != 0:
            print("  ONNX Runtime: %s" % r.stderr.strip(), file=sys.stderr)
            return None
        logits = np.load(os.path.join(tmp, "logits.npy"))
    return float(np.mean(logits.argmax(1) == y))


def export(model, path):
    """Export in inference form. Models with BatchNorm: see export_bn."""
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return export_bn(model, path)
    model.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(model, dummy, path, opset_version=13, input_names=["input"],
                      output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      do_constant_folding=True)


def export_bn(model, path):
    """BatchNormalization stays a node (PRESERVE on an eval-mode module: EVAL
    mode would fold it into the convolution), and
    initializers that PyTorch de-duplicated behind Identity nodes (a fresh
    BatchNorm's weight 1 = running_var 1, bias 0 = running_mean 0) become
    initializers of their own again, so every parameter has its own name."""
    import onnx
    from onnx import numpy_helper
    model.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(model, dummy, path, opset_version=13, input_names=["input"],
                      output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
    m = onnx.load(path)
    inits = {t.name: t for t in m.graph.initializer}
    keep = []
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input[0] in inits:
            t = numpy_helper.from_array(numpy_helper.to_array(inits[n.input[0]]), n.output[0])
            m.graph.initializer.append(t)
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    onnx.checker.check_model(m)
    onnx.save(m, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--models", default="mlp,lenet5,resnet8")
    ap.add_argument("--init-only", action="store_true",
                    help="only export the untrained <name>_init.onnx files")
    args = ap.parse_args()
    torch.set_num_threads(2)
    xtr, ytr = load_split(args.data, "train")
    xte, yte = load_split(args.data, "t10k")
    os.makedirs(os.path.join(args.out, "data"), exist_ok=True)
    np.save(os.path.join(args.out, "data", "fmnist_test_100.npy"), xte[:100])
    np.save(os.path.join(args.out, "data", "fmnist_test_100_labels.npy"), yte[:100])
    results = []
    for name in args.models.split(","):
        torch.manual_seed(SEED)
        model = MODELS[name]()
        if name != "mlp":
            export(model, os.path.join(args.out, name + "_init.onnx"))
        if args.init_only:
            continue
        t0 = time.time()
        print("%s: training %d epochs (Adam, lr 1e-3, batch 64)" % (name, args.epochs), flush=True)
        train(model, xtr, ytr, args.epochs, 64, 1e-3)
        secs = time.time() - t0
        path = os.path.join(args.out, name + ".onnx")
        export(model, path)
        acc_t = accuracy_torch(model, xte, yte)
        acc_o = accuracy_ort(path, xte, yte)
        acc_100 = accuracy_torch(model, xte[:100], yte[:100])
        params = sum(p.numel() for p in model.parameters())
        results.append((name, params, secs, acc_t, acc_o, acc_100))
        print("%s: %d params, %.0f s, test accuracy %.4f (PyTorch), %s (ONNX Runtime), "
              "first 100: %.2f" % (name, params, secs, acc_t,
                                   "n/a" if acc_o is None else "%.4f" % acc_o, acc_100),
              flush=True)
    print("\n| model | params | train time | test acc (PyTorch) | test acc (ONNX Runtime) | first 100 |")
    print("|---|---|---|---|---|---|")
    for name, params, secs, acc_t, acc_o, acc_100 in results:
        print("| %s | %d | %.0f s | %.2f%% | %s | %d/100 |"
              % (name, params, secs, 100 * acc_t,
                 "n/a" if acc_o is None else "%.2f%%" % (100 * acc_o), round(100 * acc_100)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
