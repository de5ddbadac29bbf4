#!/usr/bin/python3
"""check_blas_core.py - the nibble command runs OpenBLAS's kernels for this CPU.

OpenBLAS 0.3.21 (Debian 12) falls back to its Prescott kernels (SSE3, no FMA)
on CPUs newer than it knows; the nibble command then runs itself again with
OPENBLAS_CORETYPE set from the CPU (nbl_blas_coretype_hint in nibble.h).
Asserted, from `nibble --version` (its "FP32 products: OpenBLAS ... (X kernels)"):
  - with OPENBLAS_CORETYPE unset, on a CPU with AVX2 and FMA, X is not Prescott;
  - with OPENBLAS_CORETYPE=Prescott set by the user, X is Prescott (a choice
    that is made is kept).
Exit 0 pass, 1 fail, 77 skip (nibble built without OpenBLAS)."""
import os
import re
import subprocess
import sys


def kernels(env):
    out = subprocess.run([os.environ["NIBBLE"], "--version"], env=env, capture_output=True, text=True,
                         check=True).stdout
    m = re.search(r"OpenBLAS [0-9.]+ \(([A-Za-z0-9_]+) kernels\)", out)
    return m.group(1) if m else None, out.strip()


def main():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    core, out = kernels(env)
    if core is None:
        print("check_blas_core: no OpenBLAS in `nibble --version`: skipped\n" + out)
        return 77
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    ok = True
    if {"avx2", "fma"} <= flags and core == "Prescott":
        print(f"FAIL: OPENBLAS_CORETYPE unset, a CPU with AVX2 and FMA, and nibble runs Prescott kernels\n{out}")
        ok = False
    else:
        print(f"ok   OPENBLAS_CORETYPE unset: {core} kernels")
    core2, out2 = kernels(dict(env, OPENBLAS_CORETYPE="Prescott"))
    if core2 != "Prescott":
        print(f"FAIL: OPENBLAS_CORETYPE=Prescott given, nibble runs {core2} kernels\n{out2}")
        ok = False
    else:
        print("ok   OPENBLAS_CORETYPE=Prescott kept")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
