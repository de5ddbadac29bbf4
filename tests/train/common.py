"""common.py - shared pieces of the command-line training tests (tests/train/).

Paths of the nibble binary and of make_train_model (the hand-built MLP training
model of mlp_train.h written to a file), a small classification dataset as an
npy folder, and nibble's data order (nbl_data_order, runtime/data/order.c)
transcribed, for the PyTorch comparison.
"""
import os
import shutil
import subprocess
import tempfile

import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD = os.environ.get("NBL_BUILD_ROOT", os.path.join(ROOT, "build"))
NIBBLE = os.environ.get("NIBBLE") or os.path.join(BUILD, "tools", "nibble")
MAKE_MODEL = os.path.join(BUILD, "tests", "make_train_model")


def make_model(path, *args):
    """Write the hand-built training model (make_train_model options)."""
    subprocess.run([MAKE_MODEL, path] + [str(a) for a in args], check=True)


def make_npy_data(d, n, shape, classes, n_test=0, seed=0):
    """x.npy float32 [n, *shape] and y.npy int64 [n] in folder d, labels a
    fixed random linear rule of x (learnable); optional test split."""
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((int(np.prod(shape)), classes)).astype(np.float32)

    def split(m):
        x = rng.standard_normal((m,) + tuple(shape)).astype(np.float32)
        y = np.argmax(x.reshape(m, -1) @ w, axis=1).astype(np.int64)
        return x, y

    x, y = split(n)
    np.save(os.path.join(d, "x.npy"), x)
    np.save(os.path.join(d, "y.npy"), y)
    if n_test:
        xt, yt = split(n_test)
        np.save(os.path.join(d, "x_test.npy"), xt)
        np.save(os.path.join(d, "y_test.npy"), yt)
    return x, y


M64 = (1 << 64) - 1


def _mix(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def data_order(seed, epoch, n):
    """nbl_data_order(seed, epoch, n): Fisher-Yates with counter-based draws."""
    perm = list(range(n))
    key = _mix(_mix(seed) ^ (epoch & M64))
    for i in range(n - 1, 0, -1):
        r = _mix(key ^ _mix(i))
        j = (r * (i + 1)) >> 64
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def torch_sgd_epoch(net, params, x, y, lr, batch, seed):
    """One epoch of plain SGD in PyTorch (cross-entropy, full batches only) in
    nibble's data order for `seed`: the losses of its steps. The caller
    imports torch; net's parameters `params` are trained in place."""
    import torch
    o = torch.optim.SGD(params, lr=lr)
    losses = []
    perm = data_order(seed, 0, len(x))
    for s in range(len(x) // batch):
        idx = perm[s * batch:(s + 1) * batch]
        o.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
        loss.backward()
        o.step()
        losses.append(loss.item())
    return losses


def nibble_sgd_epoch(model, data, batch, lr, seed, out, metrics):
    """One epoch of plain SGD by `nibble train` (one thread, a metrics row per
    step), the model exported to `out`: (the finished process, the losses of
    its steps, out's initializers by name), or (process, None, None) when it
    failed. The twin of torch_sgd_epoch; the caller imports onnx."""
    import csv
    import onnx
    from onnx import numpy_helper
    r = run(["train", model, "--data", "npy:" + data, "--epochs", 1, "--batch", batch, "--lr", lr,
             "--optimizer", "sgd", "--seed", seed, "--threads", 1, "--metrics", metrics, "--log-every", 1,
             "--export", out])
    if r.returncode != 0:
        return r, None, None
    losses = [float(row["loss"]) for row in csv.DictReader(open(metrics)) if row["kind"] == "step"]
    return r, losses, {t.name: numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}


def against_torch(rows, w1, torch_run, control):
    """nibble's step losses `rows` and trained initializers `w1` against
    PyTorch's: torch_run(wrong) gives (losses, parameters by name), wrong
    True the control run (`control` names it), which must fail the
    comparison. Asserted: every step's loss within 1e-4 relative, every
    parameter within 1e-4 of its largest magnitude. Prints one line a run;
    returns the exit status (0 pass, 1 fail)."""
    import numpy as np
    rc = 0
    for wrong in (False, True):
        losses, params = torch_run(wrong)
        if len(rows) != len(losses):
            print("FAIL: %d step rows, expected %d" % (len(rows), len(losses)))
            return 1
        lw = max(abs(a - b) / abs(b) for a, b in zip(rows, losses))
        pw = max(float(np.max(np.abs(w1[k] - v)) / np.max(np.abs(v))) for k, v in params.items())
        ok = lw <= 1e-4 and pw <= 1e-4
        what = control if wrong else "nibble against PyTorch"
        print("%s %s: %d steps, loss %.4f -> %.4f; largest relative loss difference %.2e, parameter "
              "difference %.2e" % ("ok  " if ok != wrong else "FAIL", what, len(rows), rows[0], rows[-1], lw, pw))
        if ok == wrong:
            rc = 1
    return rc


def run(args, **kw):
    return subprocess.run([NIBBLE] + [str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, **kw)


_tmpdirs = []


def tmpdir(prefix):
    """A new temporary folder, removed by cleanup() (kept when NBL_KEEP_TMP is set)."""
    d = tempfile.mkdtemp(prefix=prefix)
    _tmpdirs.append(d)
    return d


def cleanup(rc):
    for d in _tmpdirs:
        if os.environ.get("NBL_KEEP_TMP"):
            print("kept " + d)
        else:
            shutil.rmtree(d, ignore_errors=True)
    return rc
