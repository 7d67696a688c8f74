#!/usr/bin/env bash
# Side-by-side benchmark: Espalier's `bench` and the PyTorch reference (../shared/bench/reference)
# on the same supernets and shapes, alternating per configuration on this machine, then the
# ratios ours/reference for time and memory, and ours' GFLOP/s as a share of the FMA peak `bench` measures
# in the same process (8 lanes; 16 where the CPU has AVX-512). Needs the reference's Python environment
# (see ../shared/bench/README.md: torch==2.15.0 in a venv); installing it is a benchmark step,
# never part of the tests or CI.
#   bench/compare.sh [VARIANTS] [SHAPES] [STEPS]      e.g. bench/compare.sh "darts masked zeroshot pcdarts gdas" "small fmnist" 5
# RECOMPUTE="none cells edges ops" measures ours at each `--recompute` level (one reference run per
# configuration, each of ours beside it), with the accountant's predicted peak of each.
# ESP=path/to/espalier uses that host (and the plugins beside it) instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANTS=${1:-"darts masked zeroshot pcdarts gdas"}
SHAPES=${2:-"small fmnist"}
STEPS=${3:-5}
RECOMPUTE=${RECOMPUTE:-none}
PY=${PY:-/tmp/torchref/bin/python}
REF=${REF:-$PWD/../shared/bench/reference}
OUT=${OUT:-/tmp/espalier-compare}
mkdir -p "$OUT"
if [ -z "${ESP:-}" ]; then
  swift build -c release >/dev/null
  ESP=.build/release/espalier
fi
have_ref=1
if [ ! -x "$PY" ] || ! "$PY" -c "import torch" 2>/dev/null; then
    echo "reference environment not found at $PY (set PY=...); printing Espalier's figures only" >&2
    have_ref=0
fi
printf "%-9s %-7s %-9s %12s %12s %8s %14s %14s %8s %14s %9s %18s\n" variant shape recompute "ours s/step" "ref s/step" ratio "ours MiB" "ref MiB" ratio "predicted MiB" "GFLOP/s" "% of peak 8/16"
for shape in $SHAPES; do
  for v in $VARIANTS; do
    rt=""; rm_=""
    if [ $have_ref = 1 ]; then
      ref=$(cd "$OUT" && OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 "$PY" "$REF/bench_search.py" --variant "$v" --shape "$shape" \
            --warmup 2 --steps "$STEPS" --min-steps 3 --budget 300 --threads 2 | sed -n 's/^RESULT //p')
      rt=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d['step_median_s'])" "$ref")
      rm_=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d['peak_minus_build_MiB'])" "$ref")
    fi
    for r in $RECOMPUTE; do
      ours=$("$ESP" bench --variant "$v" --shape "$shape" --steps "$STEPS" --recompute "$r" --json | sed -n 's/^RESULT //p')
      ot=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['medianSeconds'])" "$ours")
      om=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d['peakRSSMiB']-d['rssAfterBuildMiB'])" "$ours")
      op=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); p=d.get('predictedPeakBytes'); print('-' if p is None else '%.0f' % (p/1048576))" "$ours")
      # ours GFLOP/s, and its share of the FMA peak measured in the same process: 8 lanes (what the build issues) / 16 (AVX-512, where the CPU has it)
      gf=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%.1f' % d['gflops'])" "$ours")
      pk=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); w=d.get('fmaPeak512Gflops'); print('%.1f%% (%.0f)' % (100*d['gflops']/d['fmaPeakGflops'], d['fmaPeakGflops']) + ('' if w is None else ' / %.1f%% (%.0f)' % (100*d['gflops']/w, w)))" "$ours")
      if [ $have_ref = 1 ]; then
        printf "%-9s %-7s %-9s %12.3f %12.3f %8.2f %14.0f %14.0f %8.2f %14s %9s %18s\n" "$v" "$shape" "$r" "$ot" "$rt" "$(python3 -c "print($ot/$rt)")" "$om" "$rm_" "$(python3 -c "print($om/$rm_)")" "$op" "$gf" "$pk"
      else
        printf "%-9s %-7s %-9s %12.3f %12s %8s %14.0f %14s %8s %14s %9s %18s\n" "$v" "$shape" "$r" "$ot" - - "$om" - - "$op" "$gf" "$pk"
      fi
    done
  done
done
