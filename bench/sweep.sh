#!/usr/bin/env bash
# Cost-growth sweep (not a test): how the DARTS search step's time and memory grow with the
# supernet's initial channels C, the batch and the cells, one factor at a time around the
# reference's fmnist shape (batch 64 × 1×28×28, C=16, 8 cells; ../shared/bench/README.md):
#   C 16, 32, 64 (batch 64, 8 cells) · batch 32, 64, 128 (C 16, 8 cells) · cells 5, 8, 14 (C 16, batch 64)
# seven points named c{C}-b{batch}-l{cells}, the base c16-b64-l8 once. At each: ours
# (`espalier bench --variant darts --shape fmnist --init-channels C --batch B --cells L --json`)
# and beside it the PyTorch reference at the same size (bench/reference_at.py adds the size to
# the reference's table), one process each. Then a table (also $OUT/sweep.csv) and, per factor,
# how time and memory grow from the base point (×, and the exponent k of cost ∝ size^k).
#   bench/sweep.sh                                   the seven points (the big ones take long: run it on a quiet machine)
#   POINTS="c16-b32-l8 c16-b64-l5" STEPS=1 bench/sweep.sh    a subset (any c{C}-b{B}-l{L} works)
# Environment: ESP (an espalier host; default: build), PY and REF (the reference's Python and
# folder, as bench/compare.sh), OUT (default /tmp/espalier-sweep), STEPS (timed steps, default 2,
# after 2 warm-ups each), POINTS.
# The reference runs where its cost is reasonable: not at the points in REF_SKIP (default
# c64-b64-l8: about 16× fmnist's 24 s/step and 4× its 8 GiB there), not where ours took more than
# REF_MAX_S s/step (default 30), and each run is stopped after REF_TIMEOUT s (default 1200; "-" in
# the table). Its timed steps are cut to fit REF_BUDGET s (default 300), never below one.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
POINTS=${POINTS:-"c16-b64-l8 c32-b64-l8 c64-b64-l8 c16-b32-l8 c16-b128-l8 c16-b64-l5 c16-b64-l14"}
STEPS=${STEPS:-2}
PY=${PY:-/tmp/torchref/bin/python}
REF=${REF:-$ROOT/../shared/bench/reference}
OUT=${OUT:-/tmp/espalier-sweep}
REF_SKIP=${REF_SKIP:-c64-b64-l8}
REF_MAX_S=${REF_MAX_S:-30}
REF_TIMEOUT=${REF_TIMEOUT:-1200}
REF_BUDGET=${REF_BUDGET:-300}
for p in $POINTS; do
  [[ $p =~ ^c([0-9]+)-b([0-9]+)-l([0-9]+)$ ]] || { echo "point '$p' is not c{C}-b{batch}-l{cells}, e.g. c32-b64-l8" >&2; exit 2; }
done
mkdir -p "$OUT"
if [ -z "${ESP:-}" ]; then
  swift build -c release >/dev/null
  ESP=$ROOT/.build/release/espalier
fi
have_ref=1
if [ ! -x "$PY" ] || [ ! -f "$REF/bench_search.py" ] || ! "$PY" -c "import torch" 2>/dev/null; then
  echo "reference environment not found (PY=$PY, REF=$REF); measuring Espalier only" >&2
  have_ref=0
fi

for p in $POINTS; do
  [[ $p =~ ^c([0-9]+)-b([0-9]+)-l([0-9]+)$ ]]
  c=${BASH_REMATCH[1]}; b=${BASH_REMATCH[2]}; l=${BASH_REMATCH[3]}
  rm -f "$OUT/$p".*
  echo "$p: ours (C=$c, batch $b, $l cells, $STEPS steps)…" >&2
  if "$ESP" bench --variant darts --shape fmnist --init-channels "$c" --batch "$b" --cells "$l" --steps "$STEPS" --json \
       >"$OUT/$p.ours.log" 2>&1; then
    sed -n 's/^RESULT //p' "$OUT/$p.ours.log" >"$OUT/$p.ours.json"
  else
    echo "  ours failed (see $OUT/$p.ours.log)" >&2
  fi
  [ $have_ref = 1 ] || continue
  if [[ " $REF_SKIP " == *" $p "* ]]; then
    echo "in REF_SKIP" >"$OUT/$p.ref.skip"; continue
  fi
  if [ -s "$OUT/$p.ours.json" ] && python3 -c "import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))['medianSeconds'] > float(sys.argv[2]) else 1)" \
       "$OUT/$p.ours.json" "$REF_MAX_S"; then
    echo "ours > REF_MAX_S=$REF_MAX_S s/step" >"$OUT/$p.ref.skip"; continue
  fi
  echo "$p: reference…" >&2
  if (cd "$OUT" && OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 timeout "$REF_TIMEOUT" "$PY" "$ROOT/bench/reference_at.py" --ref "$REF" \
        --batch "$b" --c "$c" --layers "$l" --variant darts --warmup 2 --steps "$STEPS" --min-steps 1 --budget "$REF_BUDGET" --threads 2) \
       >"$OUT/$p.ref.log" 2>&1; then
    sed -n 's/^RESULT //p' "$OUT/$p.ref.log" >"$OUT/$p.ref.json"
  else
    echo "  reference failed or passed REF_TIMEOUT=$REF_TIMEOUT s (see $OUT/$p.ref.log)" >&2
    echo "failed or timed out" >"$OUT/$p.ref.skip"
  fi
done

python3 - "$OUT" $POINTS <<'EOF'
import csv, json, math, os, re, sys
out, points = sys.argv[1], sys.argv[2:]
def load(path):
    try:
        with open(path) as f: return json.loads(f.read().strip() or 'null')
    except (OSError, ValueError): return None
rows = []
for p in points:
    c, b, l = map(int, re.match(r'c(\d+)-b(\d+)-l(\d+)$', p).groups())
    o, r = load(f'{out}/{p}.ours.json'), load(f'{out}/{p}.ref.json')
    skip = open(f'{out}/{p}.ref.skip').read().strip() if os.path.exists(f'{out}/{p}.ref.skip') else ''
    row = dict(point=p, C=c, batch=b, cells=l,
               ours_s=o and o['medianSeconds'], ref_s=r and r['step_median_s'],
               ours_MiB=o and o['peakRSSMiB'] - o['rssAfterBuildMiB'], ref_MiB=r and r['peak_minus_build_MiB'],
               ours_GFLOP=o and o['flopsPerStep'] / 1e9,
               fma_pct=o and 100 * o['gflops'] / max(o['fmaPeakGflops'], 1),
               ref_note=skip or ('' if r else ('not run' if o else 'ours failed')))
    row['time_ratio'] = row['ours_s'] / row['ref_s'] if o and r else None
    row['mem_ratio'] = row['ours_MiB'] / row['ref_MiB'] if o and r and r['peak_minus_build_MiB'] > 0 else None
    rows.append(row)
cols = ['point', 'C', 'batch', 'cells', 'ours_s', 'ref_s', 'time_ratio', 'ours_MiB', 'ref_MiB', 'mem_ratio', 'ours_GFLOP', 'fma_pct', 'ref_note']
with open(f'{out}/sweep.csv', 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=cols); w.writeheader()
    for row in rows: w.writerow({k: ('' if row[k] is None else row[k]) for k in cols})
def fmt(v, spec):
    return '-' if v is None else format(v, spec)
line = '%-12s %12s %12s %7s %10s %10s %7s %11s %9s  %s'
print(line % ('point', 'ours s/step', 'ref s/step', 'ratio', 'ours MiB', 'ref MiB', 'ratio', 'GFLOP/step', '% FMA pk', 'reference not run'))
for r in rows:
    print(line % (r['point'], fmt(r['ours_s'], '.3f'), fmt(r['ref_s'], '.3f'), fmt(r['time_ratio'], '.2f'), fmt(r['ours_MiB'], '.0f'),
                  fmt(r['ref_MiB'], '.0f'), fmt(r['mem_ratio'], '.2f'), fmt(r['ours_GFLOP'], '.2f'), fmt(r['fma_pct'], '.1f'), r['ref_note']))
print(f'(ratios ours/reference; MiB = peak RSS − RSS after build; written to {out}/sweep.csv)')
# Growth, one factor at a time: along each axis through the base (C 16, batch 64, 8 cells),
# every point that ran against the base (or, where the base did not run, the axis's smallest point).
base = dict(C=16, batch=64, cells=8)
def growth(a, b, key):
    return None if a[key] is None or b[key] is None or a[key] <= 0 else b[key] / a[key]
def g(x, size):
    return '-' if x is None else f'×{x:.2f} (k {math.log(x) / math.log(size):.2f})'
print('growth from the base c16-b64-l8 along each axis (its smallest point where the base did not run; k: cost ∝ size^k)')
for factor in ['C', 'batch', 'cells']:
    axis = sorted((r for r in rows if r['ours_s'] is not None and all(r[k] == v for k, v in base.items() if k != factor)), key=lambda r: r[factor])
    if len(axis) < 2:
        print(f'  {factor:<6} fewer than two points on this axis ran'); continue
    lo = next((r for r in axis if r[factor] == base[factor]), axis[0])
    for r in (r for r in axis if r is not lo):
        size = r[factor] / lo[factor]
        print(f'  {factor:<6} {lo[factor]:>3}→{r[factor]:<4} (×{size:.2f} {factor}): ours time {g(growth(lo, r, "ours_s"), size)}, memory {g(growth(lo, r, "ours_MiB"), size)}'
              f' · reference time {g(growth(lo, r, "ref_s"), size)}, memory {g(growth(lo, r, "ref_MiB"), size)}')
EOF
