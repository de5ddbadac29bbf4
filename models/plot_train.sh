#!/usr/bin/env bash
# plot_train.sh - draw a `nibble train --metrics` CSV as a PNG with gnuplot:
# the training loss of every logged step (mean since the previous step row)
# against the update count and, when the run has a test split, the test
# accuracy after every epoch on the right axis.
#
# usage: models/plot_train.sh METRICS.csv OUT.png [TITLE]
# Exit status: 0 written, 1 gnuplot failed, 2 bad usage or gnuplot missing.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: plot_train.sh METRICS.csv OUT.png [TITLE]" >&2
  exit 2
fi
csv=$1 out=$2 title=${3:-nibble train}
command -v gnuplot >/dev/null || { echo "plot_train.sh: gnuplot is not installed (Debian: gnuplot-nox)" >&2; exit 2; }
[ -r "$csv" ] || { echo "plot_train.sh: cannot read $csv" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
grep '^step,' "$csv" > "$tmp/steps.csv" || true
awk -F, '$1 == "epoch" && $8 != ""' "$csv" > "$tmp/epochs.csv" || true
[ -s "$tmp/steps.csv" ] || { echo "plot_train.sh: $csv has no step rows" >&2; exit 2; }
acc=""
if [ -s "$tmp/epochs.csv" ]; then
  acc=", \"$tmp/epochs.csv\" using 4:(100*\$8) axes x1y2 with linespoints pt 7 lw 2 title \"test accuracy (%, right axis)\""
fi
gnuplot <<GP || exit 1
set terminal pngcairo noenhanced size 900,500 font ",11"
set output "$out"
set datafile separator ","
set title "$title"
set xlabel "update"
set ylabel "training loss"
set y2label "test accuracy (%)"
set ytics nomirror
set y2tics
set grid
set key center right
plot "$tmp/steps.csv" using 4:6 with lines lw 1.5 title "loss (mean over the logged steps)"$acc
GP
