#!/usr/bin/env bash
# Scaling benchmark (not a test): the same DARTS search step at the reference's `fmnist` shape
# (batch 64 × 1×28×28, C=16, 8 cells; ../shared/bench/README.md) on one rank with 2 threads and on
# 2 ranks with 1 thread each (mpirun, this machine's 2 cores either way), side by side in one run:
# the median step time (log.jsonl), each rank's accountant peak (ranks.json; the one-process run's
# from its log) and the bytes the ranks sum per step (measured by the run: every gradient exchange
# of a step, running statistics and loss included). Then the ratios 2 ranks / 1 rank.
#   bench/scale.sh [STEPS] [REPEATS]      e.g. bench/scale.sh 6 2
# ESP=path/to/espalier uses that host (and the plugins beside it) instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-6}
REPEATS=${2:-2}
OUT=${OUT:-/tmp/espalier-scale}
rm -rf "$OUT" && mkdir -p "$OUT"
if [ -z "${ESP:-}" ]; then
  swift build -c release >/dev/null
  ESP=$PWD/.build/release/espalier
fi
command -v mpirun >/dev/null || { echo "mpirun not found: apt-get install openmpi-bin libopenmpi-dev (bash .ci/install)" >&2; exit 1; }
MPI=(mpirun --oversubscribe --bind-to none)
[ "$(id -u)" = 0 ] && MPI+=(--allow-run-as-root)
export OMPI_MCA_btl_vader_single_copy_mechanism=none
# STEPS steps in one epoch: 2·64·STEPS synthetic images, half for the weights, half for α.
SHAPE=(search --dataset synthetic --train-images $((128 * STEPS)) --eval-images 64 --batch-size 64 --channels 16 --cells 8 --epochs 1)

median_step() { python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['median_step_seconds'])" "$1/log.jsonl"; }
peak_one() { python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['peak_bytes'])" "$1/log.jsonl"; }
peak_ranks() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(max(r['peak_bytes'] for r in d['per_rank']))" "$1/ranks.json"; }
bytes_step() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['exchanged_bytes_per_step'])" "$1/ranks.json"; }

printf "%-6s %-22s %12s %14s %16s\n" repeat run "s/step" "peak MiB/rank" "summed MB/step"
for r in $(seq 1 "$REPEATS"); do
  "$ESP" "${SHAPE[@]}" --threads 2 --out "$OUT/one-$r" >"$OUT/one-$r.log" 2>&1
  "${MPI[@]}" -np 2 "$ESP" "${SHAPE[@]}" --threads 1 --out "$OUT/two-$r" >"$OUT/two-$r.log" 2>&1
  t1=$(median_step "$OUT/one-$r"); m1=$(peak_one "$OUT/one-$r")
  t2=$(median_step "$OUT/two-$r"); m2=$(peak_ranks "$OUT/two-$r"); b2=$(bytes_step "$OUT/two-$r")
  printf "%-6s %-22s %12.3f %14.1f %16s\n" "$r" "1 rank × 2 threads" "$t1" "$(python3 -c "print($m1/2**20)")" -
  printf "%-6s %-22s %12.3f %14.1f %16.2f\n" "$r" "2 ranks × 1 thread" "$t2" "$(python3 -c "print($m2/2**20)")" "$(python3 -c "print($b2/1e6)")"
  printf "%-6s %-22s %12.2f %14.2f\n" "$r" "ratio 2 ranks / 1" "$(python3 -c "print($t2/$t1)")" "$(python3 -c "print($m2/$m1)")"
done
