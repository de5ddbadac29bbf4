#!/usr/bin/python3
"""check_resume_kill.py - kill -9 `nibble train` at random moments and resume.

A reference run trains the hand-built MLP training model (BatchNormalization
in front, Adam, a warm-up + cosine schedule, 3 epochs with a partial last
batch, a checkpoint every 7 steps) without interruption. Then trials train the
same run from scratch while SIGKILL hits it again and again: half of the kills
at a random moment, half the instant a checkpoint's temporary file appears
(in the middle of a checkpoint write). After every kill the checkpoint must
load (`nibble info` reads it, and the next run resumes from it; a run that
exits with anything but success or SIGKILL fails the test). When a run
finally completes, its exported model and its last checkpoint must be
byte-identical to the reference run's: same weights, optimizer state,
running statistics and progress, bit for bit.

Options: --kills N (default 40). Exit 0 pass, 1 fail, 77 skip (no numpy).
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import time

try:
    import numpy as np  # noqa: F401  (common.py needs it)
    import common
except ImportError as e:
    print("check_resume_kill: %s: skipped" % e)
    sys.exit(77)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    tmp = common.tmpdir("nbl_resume_kill_")
    model = os.path.join(tmp, "mlp.onnx")
    common.make_model(model, "--input", "1x8x8", "--hidden", 64, "--classes", 5, "--opt", "adam", "--bn")
    data = os.path.join(tmp, "data")
    common.make_npy_data(data, 3000, (1, 8, 8), 5, n_test=200, seed=3)
    flags = ["--data", "npy:" + data, "--epochs", 3, "--batch", 24, "--lr", 0.01,
             "--schedule", "warmup:10,cosine", "--seed", 5, "--threads", 2, "--checkpoint-every", 7]

    def cmd(ckpt, out, resume):
        c = [common.NIBBLE, "train", model] + [str(f) for f in flags] + ["--checkpoint", ckpt, "--export", out]
        return c + (["--resume", ckpt] if resume else [])

    ref_ckpt, ref_out = os.path.join(tmp, "ref.ckpt"), os.path.join(tmp, "ref.onnx")
    t0 = time.time()
    r = subprocess.run(cmd(ref_ckpt, ref_out, False), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       universal_newlines=True)
    ref_time = time.time() - t0
    if r.returncode != 0:
        print("reference run failed (%d): %s" % (r.returncode, r.stderr))
        return 1
    ref = open(ref_out, "rb").read()
    ref_ck = open(ref_ckpt, "rb").read()
    print("reference run: %.2f s" % ref_time)

    kills = in_write = trials = loads = 0
    failures = []
    ckpt, out = os.path.join(tmp, "run.ckpt"), os.path.join(tmp, "run.onnx")
    tmpfile = os.path.join(tmp, ".run.ckpt.nbl-tmp")
    while kills < a.kills or trials == 0:
        trials += 1
        for p in (ckpt, out, tmpfile):
            if os.path.exists(p):
                os.unlink(p)
        runs = 0
        while True:
            runs += 1
            if runs > 400:
                failures.append("trial %d: no completed run after 400 starts" % trials)
                break
            proc = subprocess.Popen(cmd(ckpt, out, os.path.exists(ckpt)), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, universal_newlines=True)
            at_write = kills < a.kills and rnd.random() < 0.5
            deadline = time.time() + (rnd.uniform(0.0, 1.2 * ref_time) if kills < a.kills else 1e9)
            hit_write = False
            while proc.poll() is None and time.time() < deadline:
                if at_write and os.path.exists(tmpfile):
                    hit_write = True
                    break
                time.sleep(0.0005 if at_write else 0.005)
            if proc.poll() is None and kills < a.kills:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                if hit_write or os.path.exists(tmpfile):
                    in_write += 1
                if os.path.exists(ckpt):  # the last checkpoint must load
                    i = common.run(["info", ckpt])
                    if i.returncode != 0 or "nibble.train.global_step" not in i.stdout:
                        failures.append("after kill %d: checkpoint does not load: %s" % (kills, i.stderr))
                    else:
                        loads += 1
                continue
            err = proc.stderr.read()
            proc.wait()
            if proc.returncode != 0:
                failures.append("trial %d run %d: exit %d: %s" % (trials, runs, proc.returncode, err.strip()))
                break
            if open(out, "rb").read() != ref:
                failures.append("trial %d (%d runs): the exported model differs from the reference run's"
                                % (trials, runs))
            if open(ckpt, "rb").read() != ref_ck:
                failures.append("trial %d (%d runs): the last checkpoint differs from the reference run's"
                                % (trials, runs))
            if os.path.exists(tmpfile):
                failures.append("trial %d: a temporary checkpoint file is left behind" % trials)
            print("trial %d: completed after %d runs (%d kills so far); identical to the reference"
                  % (trials, runs, kills) if not failures else "trial %d: done" % trials)
            break
        if failures:
            break
    print("%d kills (%d during a checkpoint write), %d checkpoints loaded after a kill, %d trials"
          % (kills, in_write, loads, trials))
    for f in failures:
        print("FAIL: " + f)
    if not failures and in_write == 0:
        print("FAIL: no kill landed during a checkpoint write")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(common.cleanup(main()))
