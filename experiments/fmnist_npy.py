#!/usr/bin/python3
"""fmnist_npy.py DIR N - Fashion-MNIST as an npy folder for `nibble train --data npy:DIR`:
x.npy / y.npy the first N training images, x_test.npy / y_test.npy all 10,000 test
images, normalized as models/README.md says ((x / 255 - 0.2860) / 0.3530)."""
import gzip
import os
import sys

import numpy as np

SRC = os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist")


def idx(name):
    with gzip.open(os.path.join(SRC, name)) as f:
        d = f.read()
    if d[2:4] == b"\x08\x03":
        n = int.from_bytes(d[4:8], "big")
        return np.frombuffer(d, np.uint8, offset=16).reshape(n, 1, 28, 28)
    return np.frombuffer(d, np.uint8, offset=8)


def main():
    out, n = sys.argv[1], int(sys.argv[2])
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, "y_test.npy")) and \
            len(np.load(os.path.join(out, "y.npy"))) == n:
        return
    norm = lambda x: ((x / 255.0 - 0.2860) / 0.3530).astype(np.float32)
    np.save(os.path.join(out, "x.npy"), norm(idx("train-images-idx3-ubyte.gz")[:n]))
    np.save(os.path.join(out, "y.npy"), idx("train-labels-idx1-ubyte.gz")[:n].astype(np.int64))
    np.save(os.path.join(out, "x_test.npy"), norm(idx("t10k-images-idx3-ubyte.gz")))
    np.save(os.path.join(out, "y_test.npy"), idx("t10k-labels-idx1-ubyte.gz").astype(np.int64))


if __name__ == "__main__":
    main()
