#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ (cargo-fuzz, libFuzzer) for a bounded
# time each and prints its figures.
#
#   scripts/fuzz.sh SECONDS          new inputs go to a scratch directory
#   scripts/fuzz.sh --keep SECONDS   new inputs join fuzz/corpus/<target>/
#
# On the stable toolchain: `--sanitizer none` leaves out the one nightly
# flag (-Zsanitizer); libFuzzer's coverage instrumentation (sancov) works
# on stable. Installs cargo-fuzz, and a C++ compiler for libFuzzer, once.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=false
if [ "${1:-}" = "--keep" ]; then
    keep=true
    shift
fi
seconds=${1:-20}
CARGO_FUZZ_VERSION=0.13.2

if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
if ! command -v c++ >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq g++
fi

# The instrumented build has flags of its own: keep it in fuzz/target,
# away from the main build's cache.
unset CARGO_TARGET_DIR
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

for target in $(cargo fuzz list); do
    corpus=fuzz/corpus/$target
    log=$scratch/$target.log
    if $keep; then
        dirs=("$corpus")
    else
        mkdir -p "$scratch/$target"
        dirs=("$scratch/$target" "$corpus")
    fi
    echo "fuzz: $target for ${seconds}s"
    if ! cargo fuzz run --sanitizer none -O "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        grep -av '^#[0-9]' "$log" | tail -60
        echo "fuzz: $target FAILED; the input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs=$(grep -a 'stat::number_of_executed_units' "$log" | awk '{print $2}')
    cov=$(grep -a '^#' "$log" | grep -ao 'cov: [0-9]*' | tail -1)
    echo "fuzz: $target ok: ${runs:-?} runs in ${seconds}s, ${cov:-cov: ?} edges, $(ls "$corpus" | wc -l) inputs in $corpus"
done
