#!/usr/bin/python3
"""check_mpi.py - data-parallel training on 2 MPI ranks (the 'mpi' suite).

Through the C API (tests/train/dist_check.c) on LeNet-5 (models/lenet5_init.onnx,
plain SGD, Fashion-MNIST in the single-process data order):
  - equivalence: 2 ranks with global batch 64 against 1 process with batch 64,
    50 steps, the weights compared after every step (dist_check --trace):
    relative L2 difference of all weights <= 1e-5 after each step, and of
    each tensor (the figures are printed), and the weights bit-identical on
    both ranks after every step (hashes compared every step);
  - uneven shards (global batch 63: 32 + 31 samples, weighted 32/63, 31/63):
    the same bound against one process;
  - the buckets sent during the backward pass give the same bits as the ones
    sent after it (16 KiB buckets: 5 buckets);
  - 4-bit exchange with and without error feedback: bit-identical ranks after
    every step, 8x fewer payload bytes, weights near the FP32 run's;
  - a model with BatchNormalization in training mode and Adam: bit-identical
    ranks (running statistics averaged).
Through `mpirun -np 2 nibble train` on the hand-built MLP:
  - one progress line, one metrics file and checkpoint (rank 0 writes);
  - rank 1 killed with SIGKILL after a checkpoint: mpirun stops the job at
    once and says which rank died; resuming from the checkpoint on 2 ranks
    ends byte-identical to the uninterrupted run, on 1 process and on 4
    ranks within 1e-5 of it;
  - rank 1 stopped with SIGSTOP: rank 0 gives up after --dist-timeout with a
    message naming the exchange, and the job ends (no hang).

Exit 0 pass, 1 fail, 77 skip (no mpirun, no numpy/onnx, no Fashion-MNIST).
"""
import os
import shutil
import signal
import subprocess
import sys
import time

try:
    import numpy as np
    import onnx
    from onnx import numpy_helper
    import common
except ImportError as e:
    print("check_mpi: %s: skipped" % e)
    sys.exit(77)

MPIRUN = shutil.which("mpirun")
DIST_CHECK = os.path.join(common.BUILD, "tests", "dist_check")
LENET = os.path.join(common.ROOT, "models", "lenet5_init.onnx")
FMNIST = "/usr/share/datasets/fashion-mnist"

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def env():
    e = dict(os.environ)
    if os.geteuid() == 0:  # Open MPI refuses root unless told
        e["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        e["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return e


def mpirun(n, args):
    return [MPIRUN, "--oversubscribe", "-np", str(n)] + [str(a) for a in args]


def dist_check(n, out, *extra, steps=50, batch=64, lr=0.05):
    args = [DIST_CHECK, LENET, "--data", "fashion-mnist", "--steps", steps, "--batch", batch,
            "--lr", lr, "--out", out] + list(extra)
    cmd = mpirun(n, args) if n > 1 else [str(a) for a in args]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                       env=env(), timeout=300)
    line = [l for l in r.stdout.splitlines() if l.startswith("dist_check:")]
    if r.returncode != 0 or not line:
        print(r.stdout + r.stderr)
        return None
    f = line[0].split()
    vals = dict(zip(f[1::2], f[2::2]))
    vals["w"] = np.fromfile(out, np.float32).astype(np.float64)
    return vals


def read_trace(path):
    """dist_check --trace: (element count per tensor, [steps + 1, values] float64)."""
    b = open(path, "rb").read()
    nt = int(np.frombuffer(b[:4], np.int32)[0])
    sizes = np.frombuffer(b[4:4 + 8 * nt], np.int64)
    w = np.frombuffer(b[4 + 8 * nt:], np.float32).astype(np.float64)
    return sizes, w.reshape(-1, int(sizes.sum()))


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def alive(pid):
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def rank_pids(mpirun_pid):
    """{rank: pid} of mpirun's children (read from /proc)."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != mpirun_pid:
                continue
            with open("/proc/%s/environ" % p, "rb") as f:
                for kv in f.read().split(b"\0"):
                    if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                        out[int(kv.split(b"=")[1])] = int(p)
        except (OSError, ValueError, IndexError):
            pass
    return out


def api_checks(tmp):
    w = lambda name: os.path.join(tmp, name)
    one = dist_check(1, w("one.bin"), "--trace", w("one.trace"), lr=0.01)
    two = dist_check(2, w("two.bin"), "--trace", w("two.trace"), lr=0.01)
    micro = dist_check(1, w("micro.bin"), "--micro", 2, lr=0.01)
    if not one or not two or not micro:
        check(False, "dist_check runs")
        return
    sizes, ta = read_trace(w("one.trace"))
    _, tb = read_trace(w("two.trace"))
    check(ta.shape == (51, sizes.sum()) and tb.shape == ta.shape and np.array_equal(ta[-1], one["w"])
          and np.array_equal(tb[-1], two["w"]), "the traces hold the weights before and after each of the 50 steps")
    per_step = np.linalg.norm(ta - tb, axis=1) / np.linalg.norm(ta, axis=1)
    edges = np.concatenate([[0], np.cumsum(sizes)])
    per_tensor = max(float(np.linalg.norm(ta[k, i:j] - tb[k, i:j]) / np.linalg.norm(ta[k, i:j]))
                     for k in range(len(ta)) for i, j in zip(edges[:-1], edges[1:]))
    upd = float(np.linalg.norm(ta[-1] - tb[-1]) / np.linalg.norm(ta[-1] - ta[0]))
    print("equivalence (LeNet-5, 50 SGD steps, lr 0.01, batch 64): 2 ranks vs 1 process: relative L2 "
          "difference of the weights after step 50 %.2e (max over the 50 steps %.2e, max over steps and "
          "tensors %.2e), max |diff| %.2e; of the change since the start %.2e"
          % (per_step[-1], per_step.max(), per_tensor, np.abs(one["w"] - two["w"]).max(), upd))
    check(per_step.max() <= 1e-5 and per_tensor <= 1e-5,
          "2 ranks = 1 process within 1e-5 after every step, all weights and each tensor (%.2e, %.2e)"
          % (per_step.max(), per_tensor))
    check(two["identical_steps"] == "50", "weights bit-identical on both ranks after each of the 50 steps")
    check(np.array_equal(two["w"], micro["w"]),
          "2 ranks = 1 process summing the same two half-batches, bit for bit (the difference above is "
          "the order of the gradient's sum)")

    one63 = dist_check(1, w("one63.bin"), steps=20, batch=63)
    two63 = dist_check(2, w("two63.bin"), steps=20, batch=63)
    if one63 and two63:
        d = rel(one63["w"], two63["w"])
        check(d <= 1e-5, "uneven shards (batch 63 = 32 + 31): 2 ranks = 1 process within 1e-5 (%.2e)" % d)
    else:
        check(False, "uneven shards run")

    ov = dist_check(2, w("ov.bin"), "--bucket-kb", 16, steps=20)
    no = dist_check(2, w("no.bin"), "--bucket-kb", 16, "--no-overlap", steps=20)
    if ov and no:
        check(ov["buckets"] == "5" and ov["early"] == "100" and no["early"] == "0",
              "16 KiB buckets: 5 buckets, all sent during the backward pass (%s) or none (%s)"
              % (ov["early"], no["early"]))
        check(np.array_equal(ov["w"], no["w"]), "buckets sent during the backward pass: same bits as after it")
    else:
        check(False, "overlap runs")

    fp = dist_check(2, w("fp.bin"), steps=30)
    for flags, name in ((["--exchange", "log4"], "with error feedback"),
                        (["--exchange", "log4", "--no-ef"], "without error feedback")):
        q = dist_check(2, w("q.bin"), *flags, steps=30)
        if not q or not fp:
            check(False, "log4 run " + name)
            continue
        check(q["identical_steps"] == "30", "log4 %s: ranks bit-identical after every step" % name)
        n = 44426
        check(int(q["payload_bytes"]) == 10 * 4 + (n + 1) // 2,
              "log4 payload %s bytes = 10 scales + %d values in 4 bits (FP32: %s)"
              % (q["payload_bytes"], n, fp["payload_bytes"]))
        d = rel(fp["w"], q["w"])
        check(d < 0.02, "log4 %s: weights within 2%% of the FP32 exchange's after 30 steps (%.2e)" % (name, d))

    # BatchNormalization (training mode) + Adam on the hand-built MLP
    model = w("mlp_bn.onnx")
    common.make_model(model, "--input", "1x8x8", "--hidden", 32, "--classes", 5, "--opt", "adam", "--bn")
    data = w("data_bn")
    common.make_npy_data(data, 640, (1, 8, 8), 5, seed=4)
    r = subprocess.run(mpirun(2, [DIST_CHECK, model, "--data", "npy:" + data, "--steps", 30, "--batch", 32,
                                  "--lr", 0.01, "--out", w("bn.bin")]),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, env=env(),
                       timeout=300)
    check(r.returncode == 0 and "identical_steps 30" in r.stdout,
          "BatchNorm + Adam: ranks bit-identical after every step (running statistics averaged)")


def cli_checks(tmp):
    model = os.path.join(tmp, "mlp.onnx")
    common.make_model(model, "--input", "1x8x8", "--hidden", 48, "--classes", 5, "--opt", "momentum")
    data = os.path.join(tmp, "data")
    common.make_npy_data(data, 2400, (1, 8, 8), 5, n_test=200, seed=3)
    flags = ["--data", "npy:" + data, "--epochs", 3, "--batch", 24, "--lr", 0.02, "--seed", 5,
             "--threads", 1, "--checkpoint-every", 10]

    def cmd(n, ckpt, out, resume=False, extra=()):
        c = [common.NIBBLE, "train", model] + flags + ["--checkpoint", ckpt, "--export", out] + list(extra)
        c += ["--resume", ckpt] if resume else []
        return mpirun(n, c) if n > 1 else [str(a) for a in c]

    ref_ck, ref_out, ref_csv = (os.path.join(tmp, f) for f in ("ref.ckpt", "ref.onnx", "ref.csv"))
    t0 = time.time()
    r = subprocess.run(cmd(2, ref_ck, ref_out, extra=["--metrics", ref_csv, "--log-every", 25]),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env(),
                       timeout=300)
    ref_time = time.time() - t0
    if r.returncode != 0:
        check(False, "uninterrupted 2-rank nibble train: exit %d: %s" % (r.returncode, r.stderr))
        return
    # rank 0's output is a pseudo-terminal under mpirun: the progress bar's
    # lines end in carriage returns; the epoch summaries are what counts
    epochs = [l for l in r.stdout.replace("\r", "\n").splitlines() if "test accuracy" in l]
    rows = open(ref_csv).read().splitlines()
    check(len(epochs) == 3 and "2 ranks" in r.stdout and "data-parallel: 2 ranks (mpi)" in r.stdout,
          "nibble train on 2 ranks: one line per epoch (rank 0 prints), %.1f s" % ref_time)
    check(len(rows) == 1 + 300 // 25 + 3, "one metrics file with %d rows (rank 0 writes)" % (len(rows) - 1))

    ck, out = os.path.join(tmp, "run.ckpt"), os.path.join(tmp, "run.onnx")
    p = subprocess.Popen(cmd(2, ck, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         universal_newlines=True, env=env())
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline and not os.path.exists(ck):
        time.sleep(0.01)
    time.sleep(0.3 * ref_time / 3)  # into the run, past a few checkpoints
    pids = rank_pids(p.pid)
    if p.poll() is not None or 1 not in pids:
        check(False, "the run to kill is running (ranks %s)" % pids)
        p.kill()
        p.wait()
        return
    os.kill(pids[1], signal.SIGKILL)
    t_kill = time.time()
    try:
        err = p.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        p.kill()
        err = p.communicate()[1]
        check(False, "mpirun did not end within 60 s of the kill")
    stop = time.time() - t_kill
    check(p.returncode != 0 and "rank 1" in err and "signal 9" in err,
          "rank 1 killed: the job stopped in %.1f s with mpirun's message (exit %d)" % (stop, p.returncode))
    time.sleep(0.5)
    check(not any(alive(q) for q in pids.values()), "no rank left running")
    if not os.path.exists(ck):
        check(False, "a checkpoint was written before the kill")
        return
    info = common.run(["info", ck]).stdout
    step = [l for l in info.splitlines() if "nibble.train.global_step" in l]
    print("resuming from the checkpoint at %s" % (step[0].split("=")[1].strip() if step else "?"))
    shutil.copy(ck, ck + ".one")
    shutil.copy(ck, ck + ".four")
    r2 = subprocess.run(cmd(2, ck, out, resume=True), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        universal_newlines=True, env=env(), timeout=300)
    check(r2.returncode == 0 and open(out, "rb").read() == open(ref_out, "rb").read(),
          "resumed on 2 ranks: the export is byte-identical to the uninterrupted run's")
    weights = lambda path: np.concatenate([numpy_helper.to_array(t).ravel().astype(np.float64)
                                           for t in onnx.load(path).graph.initializer])
    # on another number of ranks: fewer (1 process) and more (4 ranks, 6 samples each)
    for n, suffix in ((1, ".one"), (4, ".four")):
        outn = os.path.join(tmp, "run%d.onnx" % n)
        rn = subprocess.run(cmd(n, ck + suffix, outn, resume=True), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, env=env(), timeout=300)
        what = "1 process" if n == 1 else "%d ranks" % n
        if rn.returncode != 0:
            check(False, "resumed on %s: exit %d: %s" % (what, rn.returncode, rn.stderr))
            continue
        d = rel(weights(ref_out), weights(outn))
        check(d <= 1e-5 and (n == 1 or "data-parallel: %d ranks" % n in rn.stdout),
              "resumed on %s: weights within 1e-5 of the 2-rank run (%.2e)" % (what, d))

    # a stopped rank: the others give up after the deadline, the job ends
    ck3, out3 = os.path.join(tmp, "stop.ckpt"), os.path.join(tmp, "stop.onnx")
    p = subprocess.Popen(cmd(2, ck3, out3, extra=["--dist-timeout", 5]), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, universal_newlines=True, env=env())
    while p.poll() is None and not os.path.exists(ck3):
        time.sleep(0.01)
    pids = rank_pids(p.pid)
    if p.poll() is not None or 1 not in pids:
        check(False, "the run to stop is running")
        p.kill()
        p.wait()
        return
    os.kill(pids[1], signal.SIGSTOP)
    t_stop = time.time()
    try:
        err = p.communicate(timeout=90)[1]
    except subprocess.TimeoutExpired:
        os.kill(pids[1], signal.SIGKILL)
        p.kill()
        err = p.communicate()[1]
        check(False, "the job with a stopped rank did not end within 90 s")
    took = time.time() - t_stop
    for q in pids.values():  # never leave a stopped process behind
        if alive(q):
            os.kill(q, signal.SIGKILL)
    check(p.returncode != 0 and "did not complete in 5 s" in err and "stopping the job" in err,
          "rank 1 stopped: rank 0 gave up after the 5 s deadline and stopped the job (%.1f s, exit %d)"
          % (took, p.returncode))


def main():
    if not MPIRUN:
        print("check_mpi: no mpirun (apt-get install openmpi-bin): skipped")
        return 77
    if not os.path.isdir(FMNIST):
        print("check_mpi: no Fashion-MNIST (apt-get install dataset-fashion-mnist): skipped")
        return 77
    tmp = common.tmpdir("nbl_mpi_")
    t0 = time.time()
    api_checks(tmp)
    cli_checks(tmp)
    print("%d failure(s), %.0f s" % (len(failures), time.time() - t0))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(common.cleanup(main()))
