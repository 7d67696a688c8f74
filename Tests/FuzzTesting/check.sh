#!/usr/bin/env bash
# The CI run of the fuzz targets: builds them (build.sh), then for each target
#   1. regressions: every file of Corpus/<T>/ and FailCases/<T>/ once (-runs=0 over the files);
#   2. a short fresh run of FUZZ_SECONDS seconds (default 20) from that corpus, in a scratch copy
#      (the committed corpus is not changed; campaign.sh merges new inputs into it).
# Prints one line per target (executions, coverage cov/ft from libFuzzer's last stats line,
# crashes) and exits 1 if any target crashed, trapped, leaked, hung (-timeout=10 s per input) or
# ran out of memory (-rss_limit_mb=2048); crashing inputs are kept in $FUZZ_OUT (default a
# fresh folder under /tmp) and the log of each run beside them.
set -uo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
source ./targets.sh
SECONDS_EACH=${FUZZ_SECONDS:-20}
OUT=${FUZZ_OUT:-$(mktemp -d /tmp/espalier-fuzz-check.XXXXXX)}
mkdir -p "$OUT"
export LSAN_OPTIONS="suppressions=$HERE/lsan.supp:print_suppressions=0"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
# Traps go to libFuzzer's handler, not to the Swift runtime's backtracer (which ASan trips over, and which can hang the run).
export SWIFT_BACKTRACE=enable=no

start=$(date +%s)
./build.sh >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; echo "check.sh: the fuzz targets do not build (log: $OUT/build.log)"; exit 1; }
echo "built in $(( $(date +%s) - start )) s; fresh runs of $SECONDS_EACH s per target; logs and crashes in $OUT"

failed=0
npassed=0; nfailed=0
for t in "${FUZZ_TARGETS[@]}"; do
    bin=.build/debug/$t
    mkdir -p "$OUT/$t/work" "$OUT/$t/artifacts"
    # 1. Regressions: each committed input once.
    inputs=( $(find "Corpus/$t" "FailCases/$t" -type f ! -name '.*' 2>/dev/null | sort) )
    reg="ok"
    if (( ${#inputs[@]} > 0 )); then
        if ! "$bin" -runs=0 -rss_limit_mb=2048 -timeout=10 -artifact_prefix="$OUT/$t/artifacts/" "${inputs[@]}" >"$OUT/$t/regressions.log" 2>&1; then
            reg="FAILED (log: $OUT/$t/regressions.log)"
            failed=1
        fi
    fi
    # 2. A short fresh run; new inputs go to the scratch copy (the first corpus folder).
    cp -r "Corpus/$t/." "$OUT/$t/work/" 2>/dev/null
    "$bin" "$OUT/$t/work" -max_total_time="$SECONDS_EACH" -max_len="${FUZZ_MAX_LEN[$t]}" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$OUT/$t/artifacts/" >"$OUT/$t/fresh.log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$OUT/$t/fresh.log" | grep -o '[0-9]*$')
    last=$(grep -E '^#[0-9]+' "$OUT/$t/fresh.log" | tail -1)
    [[ -z "$execs" ]] && execs=$(sed -E 's/^#([0-9]+).*/\1/' <<<"$last")
    cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*'); ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*')
    crashes=$(find "$OUT/$t/artifacts" -type f | wc -l)
    if (( rc != 0 || crashes > 0 )) || [[ "$reg" != ok ]]; then failed=1; nfailed=$((nfailed + 1)); else npassed=$((npassed + 1)); fi
    printf '%-17s regressions %-3s (%d inputs); fresh %s s: %s executions, cov %s ft %s, %d crashes%s\n' \
        "$t" "$reg" "${#inputs[@]}" "$SECONDS_EACH" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$crashes" \
        "$( (( rc != 0 || crashes > 0 )) && echo " -> FAILED (exit $rc; log $OUT/$t/fresh.log; inputs in $OUT/$t/artifacts: copy each to FailCases/$t/ and fix)")"
done
echo "check.sh: $(( $(date +%s) - start )) s in all"
echo "fuzz: $npassed passed, $nfailed failed"
if (( failed )); then echo "check.sh: FAILED"; exit 1; fi
echo "check.sh: every fuzz target passed"
