#!/usr/bin/env bash
# Copies what a comparison's report and its continuation need out of an `espalier compare`
# folder (FROM) into DEST, leaving the checkpoints, models and event files behind: protocol.json,
# the report (report.md, .csv, .json, .svg), and per finished cell its cell.json, the search's
# config.json, log.jsonl and what it found (genotype.json or pruned.json), and the training's
# result.json and train_log.jsonl (about 25 KB a cell).
# `espalier compare --out DEST` then continues the comparison: a cell with an "ok" cell.json is
# kept, every other cell runs. Cells that did not finish are not copied (they start over there).
#   bench/keep-comparison.sh /work/runs/compare bench/results/compare-fashion-mnist
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: $0 FROM DEST (FROM: an espalier compare folder)" >&2; exit 2; fi
from=$1 dest=$2
[ -f "$from/protocol.json" ] || { echo "$from holds no protocol.json: not an espalier compare folder" >&2; exit 2; }
mkdir -p "$dest"
cp "$from/protocol.json" "$dest/"
for f in report.md report.csv report.json report.svg; do [ -f "$from/$f" ] && cp "$from/$f" "$dest/"; done
kept=0
for cell in "$from"/cells/*/seed-*; do
    [ -f "$cell/cell.json" ] && grep -Eq '"status" *: *"ok"' "$cell/cell.json" || continue
    rel=${cell#"$from"/}
    mkdir -p "$dest/$rel/search" "$dest/$rel/train"
    cp "$cell/cell.json" "$dest/$rel/"
    for f in config.json log.jsonl genotype.json pruned.json; do [ -f "$cell/search/$f" ] && cp "$cell/search/$f" "$dest/$rel/search/"; done
    for f in result.json train_log.jsonl; do [ -f "$cell/train/$f" ] && cp "$cell/train/$f" "$dest/$rel/train/"; done
    kept=$((kept + 1))
done
echo "kept $kept finished cell(s) in $dest"
