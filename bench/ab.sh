#!/usr/bin/env bash
# A/B benchmark (not a test): two espalier hosts on the same search step, alternating run by run
# so that both see the same host load, then the median over rounds of each run's median step and
# the ratio B/A. For measuring one change against the build before it on a noisy shared machine.
#   bench/ab.sh HOST_A HOST_B [VARIANTS] [SHAPE] [ROUNDS] [STEPS]
#   e.g. bench/ab.sh /tmp/before/espalier .build/release/espalier "darts gdas" fmnist 3 3
# Each host uses the plugins beside it.
set -euo pipefail
A=${1:?host A}; B=${2:?host B}
VARIANTS=${3:-"darts gdas"}; SHAPE=${4:-fmnist}; ROUNDS=${5:-3}; STEPS=${6:-3}
step() { "$1" bench --variant "$2" --shape "$SHAPE" --steps "$STEPS" --json | sed -n 's/^RESULT //p' |
         python3 -c "import json,sys; print(json.loads(sys.stdin.read())['medianSeconds'])"; }
printf "%-9s %-7s %-40s %-40s %8s\n" variant shape "A s/step (each round)" "B s/step (each round)" "B/A"
for v in $VARIANTS; do
  a=(); b=()
  for ((r = 0; r < ROUNDS; r++)); do
    if ((r % 2 == 0)); then a+=("$(step "$A" "$v")"); b+=("$(step "$B" "$v")")
    else b+=("$(step "$B" "$v")"); a+=("$(step "$A" "$v")"); fi
  done
  python3 - "$v" "$SHAPE" "${a[*]}" "${b[*]}" <<'EOF'
import statistics, sys
v, shape, a, b = sys.argv[1], sys.argv[2], [float(x) for x in sys.argv[3].split()], [float(x) for x in sys.argv[4].split()]
ma, mb = statistics.median(a), statistics.median(b)
fmt = lambda xs, m: ("%.3f (" % m + " ".join("%.2f" % x for x in xs) + ")")
print("%-9s %-7s %-40s %-40s %8.3f" % (v, shape, fmt(a, ma), fmt(b, mb), mb / ma))
EOF
done
