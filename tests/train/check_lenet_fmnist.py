#!/usr/bin/python3
"""check_lenet_fmnist.py - `nibble train` of the shipped LeNet-5 on Fashion-MNIST, one epoch.

The light version of the README's 5-epoch run (which reaches 89.45%): from
the initial weights models/lenet5_init.onnx, one epoch (938 updates of batch
64) of SGD with momentum 0.9, lr 0.05 with a cosine schedule, weight decay
5e-4, on Debian's dataset-fashion-mnist. The test accuracy after the epoch
must be at least 80% (the run gives about 85-86%; an untrained network
gives about 10%), the first logged loss near ln 10 and the epoch's mean loss
below 0.8. The exported inference model, run by `nibble run` on the 100
shipped test images, must get at least 75 of them right.
Exit status: 0 pass, 1 fail, 77 skipped (no Fashion-MNIST or numpy).
"""
import csv
import os
import sys

try:
    import numpy as np
    import common
except ImportError as e:
    print("check_lenet_fmnist: %s: skipped" % e)
    sys.exit(77)

FMNIST = os.environ.get("NBL_FMNIST", "/usr/share/datasets/fashion-mnist")


def main():
    if not os.path.isdir(FMNIST):
        print("check_lenet_fmnist: %s missing (Debian package dataset-fashion-mnist): skipped" % FMNIST)
        return 77
    tmp = common.tmpdir("nbl_lenet_fmnist_")
    metrics, out = os.path.join(tmp, "m.csv"), os.path.join(tmp, "trained.onnx")
    init = os.path.join(common.ROOT, "models", "lenet5_init.onnx")
    r = common.run(["train", init, "--data", "fashion-mnist:" + FMNIST, "--epochs", 1, "--optimizer", "momentum",
                    "--lr", 0.05, "--schedule", "cosine", "--weight-decay", 0.0005, "--threads", 2,
                    "--metrics", metrics, "--log-every", 20, "--export", out])
    if r.returncode != 0:
        print("FAIL: nibble train exited %d: %s" % (r.returncode, r.stderr))
        return 1
    rows = list(csv.DictReader(open(metrics)))
    steps = [row for row in rows if row["kind"] == "step"]
    epoch = [row for row in rows if row["kind"] == "epoch"]
    acc, first, mean = float(epoch[-1]["test_accuracy"]), float(steps[0]["loss"]), float(epoch[-1]["loss"])
    ok = acc >= 0.80 and 2.0 <= first <= 2.6 and mean < 0.8
    # the exported inference model on the shipped 100 test images
    batch = os.path.join(common.ROOT, "models", "data", "fmnist_test_100.npy")
    labels = np.load(os.path.join(common.ROOT, "models", "data", "fmnist_test_100_labels.npy"))
    od = os.path.join(tmp, "run")
    r = common.run(["run", out, "--input", "input=" + batch, "--output-dir", od])
    if r.returncode != 0:
        print("FAIL: nibble run on the exported model exited %d: %s" % (r.returncode, r.stderr))
        return 1
    right = int((np.load(os.path.join(od, "logits.npy")).argmax(1) == labels).sum())
    print("%s LeNet-5, 1 epoch: loss %.3f (first logged %.3f), test accuracy %.2f%% (bound 80%%); the "
          "exported model: %d/100 of the shipped test images" % ("ok  " if ok else "FAIL", mean, first,
                                                               100 * acc, right))
    return 0 if ok and right >= 75 else 1


if __name__ == "__main__":
    sys.exit(common.cleanup(main()))
