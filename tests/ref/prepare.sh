#!/bin/sh
# prepare.sh - make everything the whole-model reference checks need.
#
# usage: tests/ref/prepare.sh OUTDIR [--force]
#
# Installs onnxruntime-node into the repository's node_modules if it is missing
# (npm install --ignore-scripts: the package ships its CPU library), then runs
# export_models.py OUTDIR (models, inputs, PyTorch and ONNX Runtime outputs).
# The export is skipped when OUTDIR/manifest.json is newer than the scripts,
# unless --force is given. When OUTDIR is a symbolic link (a reference set
# shared by several checkouts, e.g. BUILD/ref-models -> a common folder) and
# has a manifest, a stale one is not rewritten through the link without
# --force: other checkouts may be reading it while the export replaces its
# files one by one, and a checkout's fresh file times alone (not a change of
# the scripts) make it look stale. The set is used as it is, with a warning.
# Concurrent calls for one OUTDIR are serialized with flock on OUTDIR.lock.
# Exit status: 0 ready, 1 a step failed, 2 bad usage, 77 node or torch missing.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-}
force=${2:-}
if [ -z "$out" ]; then
  echo "usage: $0 OUTDIR [--force]" >&2
  exit 2
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "prepare.sh: node/npm not installed" >&2
  exit 77
fi
if ! /usr/bin/python3 -c 'import torch, torchvision, onnx' 2>/dev/null; then
  echo "prepare.sh: /usr/bin/python3 lacks torch, torchvision or onnx" >&2
  exit 77
fi

if [ ! -d "$root/node_modules/onnxruntime-node" ]; then
  echo "prepare.sh: installing onnxruntime-node in $root" >&2
  (cd "$root" && npm install --ignore-scripts --no-audit --no-fund onnxruntime-node >&2) || {
    echo "prepare.sh: npm install failed" >&2
    exit 1
  }
fi

# One preparation at a time: tests that run in parallel may each call this; the
# second waits for the first and then finds the set up to date.
if [ -z "${NBL_PREPARE_LOCKED:-}" ] && command -v flock >/dev/null 2>&1; then
  mkdir -p "$(dirname "$out")"
  NBL_PREPARE_LOCKED=1 exec flock "$out.lock" sh "$0" "$@"
fi

manifest="$out/manifest.json"
if [ "$force" != "--force" ] && [ -f "$manifest" ] &&
   [ "$manifest" -nt "$here/export_models.py" ] && [ "$manifest" -nt "$here/ort_run.js" ]; then
  echo "prepare.sh: $manifest is up to date" >&2
  exit 0
fi
if [ "$force" != "--force" ] && [ -L "$out" ] && [ -f "$manifest" ]; then
  echo "prepare.sh: $out links to $(readlink "$out"), whose manifest is older than" \
    "export_models.py or ort_run.js; not rewriting a shared set through the link" \
    "(rerun with --force to rewrite it, or remove the link for a set of this checkout)" >&2
  exit 0
fi
mkdir -p "$out"
/usr/bin/python3 "$here/export_models.py" "$out"
