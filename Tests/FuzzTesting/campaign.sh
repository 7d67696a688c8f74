#!/usr/bin/env bash
# A long fuzzing campaign: builds the targets, then runs each (all of them, or those named as
# arguments) for CAMPAIGN_SECONDS seconds (default 3600) with -jobs=CAMPAIGN_JOBS parallel
# workers (default 1), from Corpus/<T> and FailCases/<T>; then merges the new inputs that add
# coverage back into Corpus/<T> (-merge=1, so the corpus stays minimal). Crashes are left in
# $CAMPAIGN_OUT/<T>/ (default /tmp/espalier-fuzz-campaign.*): copy each to FailCases/<T>/, fix the
# parser, add an XCTest (Tests/*/FuzzRegressionTests.swift) and commit the new corpus files.
#   CAMPAIGN_SECONDS=14400 bash Tests/FuzzTesting/campaign.sh FuzzSafeTensors FuzzGenotype
set -uo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
source ./targets.sh
SECS=${CAMPAIGN_SECONDS:-3600}
JOBS=${CAMPAIGN_JOBS:-1}
OUT=${CAMPAIGN_OUT:-$(mktemp -d /tmp/espalier-fuzz-campaign.XXXXXX)}
export LSAN_OPTIONS="suppressions=$HERE/lsan.supp:print_suppressions=0"
export SWIFT_BACKTRACE=enable=no
targets=("$@"); (( ${#targets[@]} )) || targets=("${FUZZ_TARGETS[@]}")

./build.sh || exit 1
status=0
for t in "${targets[@]}"; do
    bin=$HERE/.build/debug/$t
    mkdir -p "$OUT/$t/new" "FailCases/$t"
    echo "== $t: $SECS s, $JOBS job(s); output in $OUT/$t"
    (cd "$OUT/$t" && "$bin" new "$HERE/Corpus/$t" "$HERE/FailCases/$t" -max_total_time="$SECS" -max_len="${FUZZ_MAX_LEN[$t]}" \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -jobs="$JOBS" -workers="$JOBS" -artifact_prefix="$OUT/$t/" \
        >"$OUT/$t/fuzz.log" 2>&1) || status=1
    grep -hE '^#[0-9]+' "$OUT/$t"/fuzz*.log "$OUT/$t"/fuzz-*.log 2>/dev/null | tail -1
    # Keep only the new inputs that add coverage to the committed corpus.
    "$bin" -merge=1 "Corpus/$t" "$OUT/$t/new" -max_len="${FUZZ_MAX_LEN[$t]}" -rss_limit_mb=2048 -timeout=10 >"$OUT/$t/merge.log" 2>&1 || status=1
    grep -E 'MERGE-OUTER: [0-9]+ new files' "$OUT/$t/merge.log" || true
    ls "$OUT/$t" | grep -E '^(crash|leak|timeout|oom|slow-unit)-' | sed "s|^|   finding: $OUT/$t/|"
done
echo "campaign: done (output $OUT); review and commit the new files in Corpus/"
exit $status
