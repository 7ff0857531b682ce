#!/usr/bin/env bash
# make bench-history: what keeping history costs (`shoal-sim history`, a
# release build): writes sustained into the embedded SQLite store and into
# a PostgreSQL the run starts (Debian's), `?at=` and a name's history on
# those million changes, and the watcher's freshness with history on
# against off, in the same run. Writes the section "History" of
# BENCHMARKS.md.
#   BENCH_HISTORY_CHANGES (default 1000000), BENCH_HISTORY_STARTS (2000)
set -euo pipefail

me=bench-history
root=$(cd "$(dirname "$0")/.." && pwd)
sim="$root/target/release/shoal-sim"
changes=${BENCH_HISTORY_CHANGES:-1000000}
starts=${BENCH_HISTORY_STARTS:-2000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { echo "$me: $*" >&2; }

[ -x "$sim" ] || { say "build first: make build"; exit 1; }
bash "$root/scripts/ensure-postgres.sh" >/dev/null
say "$changes changes into SQLite and PostgreSQL, then $starts starts with and without history (a few minutes)"
"$sim" history --changes "$changes" --starts "$starts" > "$work/result.json"

commit=$(git -C "$root" describe --always --dirty --exclude "*")
python3 - "$work/result.json" "$work/section.md" "$commit" <<'PY'
import json, os, platform, subprocess, sys, time
r, path, commit = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
cpu = subprocess.run(["sh", "-c", "lscpu | awk -F: '/Model name/ {gsub(/^ +/, \"\", $2); print $2; exit}'"],
                     capture_output=True, text=True).stdout.strip()
rows = []
for s in r["stores"]:
    size = f"{s['bytes'] / 2**20:.0f} MiB" if s.get("bytes") else "-"
    rows.append(f"| {s['backend']} | {s['changes']:,} | {s['writes_per_s']:,.0f} | {size} "
                f"| {s['as_of_ip']['p50_ms']:.2f} / {s['as_of_ip']['p99_ms']:.2f} ms "
                f"| {s['name_history']['p50_ms']:.2f} / {s['name_history']['p99_ms']:.2f} ms |")
f = r["freshness"]
section = f"""## History: writes, `?at=` on a million changes, freshness with history on

Written by `make bench-history` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, shoal {commit}, release
build; `shoal-sim history`). The changes are written as a node's writer
writes them: batches of 512, one transaction each, every change with its
whole record as JSON and its addresses. 50,000 containers,
each living two days somewhere in 30 days with its changes spread over its
life, on addresses reused from a pool of 60,000. PostgreSQL is Debian's,
started by the run on loopback (fsync on, as shipped); SQLite is a WAL
file on the same disk.

| store | changes | writes/s sustained | size | `?at=` by address, p50 / p99 | a name's history (100), p50 / p99 |
|---|---|---|---|---|---|
{chr(10).join(rows)}

`?at=` asks who had a random address at a random time in the 30 days
(`Store::as_of`, {r['stores'][0]['as_of_ip']['n']:,} queries one after another); the name's history is
`/v1/history?name=` (`Store::query`, limit 100).

The watcher's freshness with history on against off, in the same run: a
synthetic engine started {f['off']['n']:,} containers at 500 a second; the time from each
start to its change leaving the watcher (what the owners and `/v1/watch`
get next), with no history, then with a writer recording to an embedded
store:

| | p50 | p99 | max |
|---|---|---|---|
| history off | {f['off']['p50_ms']:.2f} ms | {f['off']['p99_ms']:.2f} ms | {f['off']['max_ms']:.2f} ms |
| history on | {f['on']['p50_ms']:.2f} ms | {f['on']['p99_ms']:.2f} ms | {f['on']['max_ms']:.2f} ms |

With history on the writer recorded {f['written']:,} changes during that run and dropped {f['dropped']}.

- machine: {cpu}, {os.cpu_count()} cores; {platform.platform()}
"""
open(path, "w").write(section)
print(section)
PY
python3 "$root/scripts/benchmarks-section.py" "$root/BENCHMARKS.md" "## History" "$work/section.md"
say "wrote the section History of BENCHMARKS.md"
