#!/usr/bin/python3
"""fmnist_subset.py - write a Fashion-MNIST subset as an npy:DIR dataset for
`nibble train --data npy:DIR`: x.npy float32 [N,1,28,28] and y.npy int64 [N]
(the first TRAIN images of a fixed shuffle of the 60,000 training images,
seed 0), x_test.npy / y_test.npy (the first TEST of the 10,000 test images).
Pixels are normalized as models/README.md says: (x/255 - 0.2860) / 0.3530,
the same as nibble's own fashion-mnist reader.

usage: /usr/bin/python3 fmnist_subset.py OUTDIR TRAIN TEST [--src DIR]"""
import argparse
import gzip
import os
import sys

import numpy as np


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("train", type=int)
    ap.add_argument("test", type=int)
    ap.add_argument("--src", default="/usr/share/datasets/fashion-mnist")
    a = ap.parse_args()
    xs = idx(os.path.join(a.src, "train-images-idx3-ubyte.gz"))
    ys = idx(os.path.join(a.src, "train-labels-idx1-ubyte.gz"))
    xt = idx(os.path.join(a.src, "t10k-images-idx3-ubyte.gz"))
    yt = idx(os.path.join(a.src, "t10k-labels-idx1-ubyte.gz"))
    if not (0 < a.train <= len(ys)) or not (0 < a.test <= len(yt)):
        sys.exit("fmnist_subset.py: TRAIN must be in 1..%d and TEST in 1..%d" % (len(ys), len(yt)))
    perm = np.random.default_rng(0).permutation(len(ys))[:a.train]
    norm = lambda x: ((x.astype(np.float32) / 255.0 - 0.2860) / 0.3530).astype(np.float32)[:, None]
    os.makedirs(a.out, exist_ok=True)
    np.save(os.path.join(a.out, "x.npy"), norm(xs[perm]))
    np.save(os.path.join(a.out, "y.npy"), ys[perm].astype(np.int64))
    np.save(os.path.join(a.out, "x_test.npy"), norm(xt[:a.test]))
    np.save(os.path.join(a.out, "y_test.npy"), yt[:a.test].astype(np.int64))


if __name__ == "__main__":
    main()
