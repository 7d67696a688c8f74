#!/usr/bin/env bash
# A/B of the kernels alone (a benchmark, not a test): `espalier kernel-bench` of two builds,
# alternating run by run so that both see the same host load, at each (channels, size) given;
# then per depthwise kernel the ratio B/A of the minima over the rounds (the least disturbed
# run of each) and of the medians, and per size the geometric mean of the minima's ratios.
# For a change to a kernel, where the step's own A/B (bench/ab.sh) is too coarse to see it.
#   bench/kernel-ab.sh HOST_A HOST_B [ROUNDS] ["C S" ...]
#   e.g. bench/kernel-ab.sh /tmp/before/espalier .build/release/espalier 4 "16 28" "32 14" "64 7"
# Run it once with the same host as A and B to see the noise of the machine (an A/A run).
set -euo pipefail
A=${1:?host A}; B=${2:?host B}; ROUNDS=${3:-4}; shift $(($# < 3 ? $# : 3))
SIZES=("$@"); ((${#SIZES[@]})) || SIZES=("16 28" "32 14" "64 7")
out=$(mktemp); trap 'rm -f "$out"' EXIT
for ((r = 0; r < ROUNDS; r++)); do
  for host in A B; do
    bin=$A; [[ $host == B ]] && bin=$B
    for cs in "${SIZES[@]}"; do
      read -r ch sz <<< "$cs"
      "$bin" kernel-bench --channels "$ch" --size "$sz" | grep -E '^depthwise' | sed "s/^/$host $sz /" >> "$out"
    done
  done
done
python3 - "$out" <<'PY'
import collections, math, re, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    host, size, rest = line.split(None, 2)
    name = rest[:30].strip()                       # e.g. "depthwise 3x3 d2 forward"
    best = float(re.findall(r'\s(\d+\.\d{3})\s', rest)[0])   # the kernel-bench's best ms of that run
    runs[(int(size), name, host)].append(best)
logs = collections.defaultdict(list)
print("%5s %-28s %22s %24s" % ("size", "kernel", "min ms A · B · B/A", "median ms A · B · B/A"))
for size, name in sorted({(s, n) for s, n, _ in runs}):
    a, b = sorted(runs[(size, name, "A")]), sorted(runs[(size, name, "B")])
    ma, mb = a[len(a) // 2], b[len(b) // 2]
    logs[size].append(math.log(b[0] / a[0]))
    print("%5d %-28s %6.3f %6.3f %5.2f %8.3f %6.3f %5.2f" % (size, name, a[0], b[0], b[0] / a[0], ma, mb, mb / ma))
for size, v in sorted(logs.items()):
    print("size %d: geometric mean of the minima's B/A %.3f" % (size, math.exp(sum(v) / len(v))))
PY
