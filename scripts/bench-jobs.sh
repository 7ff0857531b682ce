#!/usr/bin/env bash
# make bench-jobs: jobs through shoal (a release build, three nodes on
# three extra dockerds) against the same create and start calls sent to
# the engines directly, at the same offered loads, in one run
# (bench/jobs.py). Writes the section "Jobs" of BENCHMARKS.md.
#   BENCH_JOBS_LOADS (default "100:30 500:30": COUNT:SECONDS each)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
shoal="$root/target/release/shoal"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -x "$shoal" ] || { echo "bench-jobs: build first: make build" >&2; exit 1; }
# shellcheck disable=SC2086
python3 "$root/bench/jobs.py" "$shoal" ${BENCH_JOBS_LOADS:-100:30 500:30} > "$work/section.md"
cat "$work/section.md"
python3 "$root/scripts/benchmarks-section.py" "$root/BENCHMARKS.md" "## Jobs" "$work/section.md"
echo "bench-jobs: wrote the section Jobs of BENCHMARKS.md" >&2
