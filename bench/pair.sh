#!/usr/bin/env bash
# Paired benchmark (not a test): two espalier hosts on the same search step at the same time, one
# thread each, each on a core of its own (swapped every round), so that both see the same host
# load at the same moment; the median over rounds of each run's median step, and the ratio B/A.
# For comparing a single-thread kernel change on a noisy shared machine with two cores; the
# threading itself is left out (bench/ab.sh alternates whole two-thread runs instead).
#   bench/pair.sh HOST_A HOST_B [VARIANT] [SHAPE] [ROUNDS] [STEPS]
set -euo pipefail
A=${1:?host A}; B=${2:?host B}
VARIANT=${3:-darts}; SHAPE=${4:-fmnist}; ROUNDS=${5:-3}; STEPS=${6:-2}
out=$(mktemp -d)
step() { python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().split('RESULT ',1)[1])['medianSeconds'])" "$1"; }
a=(); b=()
for ((r = 0; r < ROUNDS; r++)); do
  ca=$((r % 2)); cb=$((1 - r % 2))
  ESPALIER_THREADS=1 taskset -c $ca "$A" bench --variant "$VARIANT" --shape "$SHAPE" --steps "$STEPS" --json >"$out/a" 2>&1 &
  pa=$!
  ESPALIER_THREADS=1 taskset -c $cb "$B" bench --variant "$VARIANT" --shape "$SHAPE" --steps "$STEPS" --json >"$out/b" 2>&1 &
  pb=$!
  wait $pa; wait $pb
  a+=("$(step "$out/a")"); b+=("$(step "$out/b")")
done
python3 - "$VARIANT" "$SHAPE" "${a[*]}" "${b[*]}" <<'PY'
import statistics, sys
v, shape, a, b = sys.argv[1], sys.argv[2], [float(x) for x in sys.argv[3].split()], [float(x) for x in sys.argv[4].split()]
ma, mb = statistics.median(a), statistics.median(b)
fmt = lambda xs, m: ("%.3f (" % m + " ".join("%.2f" % x for x in xs) + ")")
pairs = " ".join("%.3f" % (y / x) for x, y in zip(a, b))
print("%-9s %-7s A %-34s B %-34s B/A %.3f (each round: %s)" % (v, shape, fmt(a, ma), fmt(b, mb), mb / ma, pairs))
PY
rm -rf "$out"
