#!/usr/bin/env bash
# Builds every fuzz target of Tests/FuzzTesting with libFuzzer and AddressSanitizer, in debug:
# the parsers keep Swift's bounds and overflow checks (the main package's release settings,
# -Ounchecked, apply only to `-c release`). Binaries: .build/debug/Fuzz*. Extra arguments go
# to `swift build` (e.g. --product FuzzIDX).
set -euo pipefail
cd "$(dirname "$0")"
swift build -c debug -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library "$@" 2>&1 \
    | grep -v "warning: Cannot export local symbol '__asan" || true
# grep hides the gold linker's noise about ASan's local symbols; the build's status is swift's.
test "${PIPESTATUS[0]}" -eq 0
