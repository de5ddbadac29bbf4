#!/usr/bin/python3
"""check_torch_mlp.py - `nibble train` against PyTorch on the same run.

The hand-built MLP training model (tests/train/mlp_train.h: Flatten, Linear,
ReLU, Linear, softmax cross-entropy) is trained by `nibble train` on an npy
dataset for 2 epochs (batch 32 with a partial last batch, a warm-up + cosine
schedule, data order from --seed), once with Momentum (0.9, weight decay
1e-3) and once with Adam. PyTorch 1.13 trains nn.Sequential with the same
initial weights (read from the model file), on the same batches in the same
order (nibble's data order transcribed in common.py), with torch.optim.SGD
(momentum, weight_decay) / the ONNX Adam formula (torch.optim.Adam places
epsilon differently) and the same rate at every step.
Every step's loss (--metrics with --log-every 1) must agree within 1e-4
relative, every trained parameter of the exported model within 1e-4 of the
largest magnitude of that parameter, and ONNX Runtime running the exported
model must give PyTorch's logits within 1e-4 (when node and onnxruntime-node
are installed).
Exit 0 pass, 1 fail, 77 skip (no torch/onnx/numpy).
"""
import csv
import math
import os
import shutil
import subprocess
import sys

try:
    import numpy as np
    import onnx
    from onnx import numpy_helper
    import torch
    import common
    from torch_onnx_adam import OnnxAdam
except ImportError as e:
    print("check_torch_mlp: %s: skipped" % e)
    sys.exit(77)

N, SHAPE, K, H, B, EPOCHS, LR, SEED, WARM = 600, (1, 8, 8), 5, 32, 32, 2, 0.05, 7, 5


def lr_at(t, total):
    if t < WARM:
        return LR * (t + 1) / WARM
    t -= WARM
    T = total - WARM
    return 0.0 if t >= T else LR * 0.5 * (1 + math.cos(math.pi * t / T))


def inits(path):
    return {t.name: numpy_helper.to_array(t).copy() for t in onnx.load(path).graph.initializer}


def case(tmp, opt, x, y):
    model = os.path.join(tmp, "mlp_%s.onnx" % opt)
    args = ["--input", "1x8x8", "--hidden", H, "--classes", K, "--opt", opt, "--seed", 3]
    if opt == "momentum":
        args += ["--momentum", 0.9, "--wd", 0.001]
    common.make_model(model, *args)
    out, metrics = os.path.join(tmp, "out_%s.onnx" % opt), os.path.join(tmp, "m_%s.csv" % opt)
    r = common.run(["train", model, "--data", "npy:" + os.path.join(tmp, "data"), "--epochs", EPOCHS,
                    "--batch", B, "--lr", LR, "--schedule", "warmup:%d,cosine" % WARM, "--seed", SEED,
                    "--threads", 1, "--metrics", metrics, "--log-every", 1, "--export", out])
    if r.returncode != 0:
        print("FAIL %s: nibble train exited %d: %s" % (opt, r.returncode, r.stderr))
        return 1
    rows = [row for row in csv.DictReader(open(metrics)) if row["kind"] == "step"]
    w0 = inits(model)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, H), torch.nn.ReLU(), torch.nn.Linear(H, K))
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(w0["W1"]))
        net[1].bias.copy_(torch.from_numpy(w0["b1"]))
        net[3].weight.copy_(torch.from_numpy(w0["W2"]))
        net[3].bias.copy_(torch.from_numpy(w0["b2"]))
    if opt == "momentum":
        o = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9, weight_decay=0.001)
    else:  # the ONNX Adam formula (epsilon outside the bias correction, unlike torch.optim.Adam)
        o = OnnxAdam(net.parameters(), lr=LR)
    spe = (N + B - 1) // B
    total, t, worst = EPOCHS * spe, 0, 0.0
    for e in range(EPOCHS):
        perm = common.data_order(SEED, e, N)
        for s in range(spe):
            idx = perm[s * B:(s + 1) * B]
            for g in o.param_groups:
                g["lr"] = lr_at(t, total)
            o.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
            loss.backward()
            o.step()
            got = float(rows[t]["loss"])
            worst = max(worst, abs(got - loss.item()) / abs(loss.item()))
            if abs(float(rows[t]["lr"]) - lr_at(t, total)) > 1e-7 * LR:
                print("FAIL %s step %d: lr %s, expected %.9g" % (opt, t + 1, rows[t]["lr"], lr_at(t, total)))
                return 1
            t += 1
    if len(rows) != total:
        print("FAIL %s: %d step rows, expected %d" % (opt, len(rows), total))
        return 1
    w1 = inits(out)
    ref = {"W1": net[1].weight, "b1": net[1].bias, "W2": net[3].weight, "b2": net[3].bias}
    pworst = 0.0
    for k, v in ref.items():
        v = v.detach().numpy()
        pworst = max(pworst, float(np.max(np.abs(w1[k] - v)) / np.max(np.abs(v))))
    ok = worst <= 1e-4 and pworst <= 1e-4
    # the exported inference model runs in ONNX Runtime and gives PyTorch's logits
    ort_js = os.path.join(common.ROOT, "tests", "ref", "ort_run.js")
    if shutil.which("node") and os.path.isdir(os.path.join(common.ROOT, "node_modules", "onnxruntime-node")):
        xb = os.path.join(tmp, "xb.npy")
        np.save(xb, x[:50])
        od = os.path.join(tmp, "ort_%s" % opt)
        r = subprocess.run(["node", ort_js, "run", out, "--input", "input=" + xb, "--output-dir", od],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        if r.returncode != 0:
            print("FAIL %s: ONNX Runtime cannot run the exported model: %s" % (opt, r.stderr))
            return 1
        want = net(torch.from_numpy(x[:50])).detach().numpy()
        got = np.load(os.path.join(od, "logits.npy"))
        oerr = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
        print("     %s: ONNX Runtime on the exported model: logits within %.2e of PyTorch's" % (opt, oerr))
        ok = ok and oerr <= 1e-4
    else:
        print("     %s: node or onnxruntime-node missing: the exported model not run in ONNX Runtime" % opt)
    print("%s %s: %d steps, loss %.4f -> %.4f; largest relative loss difference %.2e, parameter "
          "difference %.2e" % ("ok  " if ok else "FAIL", opt, total, float(rows[0]["loss"]),
                               float(rows[-1]["loss"]), worst, pworst))
    return 0 if ok else 1


def main():
    torch.set_num_threads(1)
    tmp = common.tmpdir("nbl_torch_mlp_")
    x, y = common.make_npy_data(os.path.join(tmp, "data"), N, SHAPE, K, seed=1)
    return max(case(tmp, "momentum", x, y), case(tmp, "adam", x, y))


if __name__ == "__main__":
    sys.exit(common.cleanup(main()))
