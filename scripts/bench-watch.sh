#!/usr/bin/env bash
# make bench-watch: what 1,000 /v1/watch streams cost one node
# (scripts/watch_bench.py), against the same churn with no watcher in the
# same run, and writes the section "Watchers" of BENCHMARKS.md (kept by
# make bench). One release-build node on loopback watching this host's
# Docker; the churn is real containers of the test image, one at a time.
#   BENCH_WATCHERS (default 1000), BENCH_WATCH_STARTS (default 20),
#   BENCH_WATCH_PORT (default 17190)
set -euo pipefail

me=bench-watch
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/shoal"
watchers=${BENCH_WATCHERS:-1000}
starts=${BENCH_WATCH_STARTS:-20}
port=${BENCH_WATCH_PORT:-17190}
image=shoal-test/busybox:latest
work=$(mktemp -d)
say() { echo "$me: $*" >&2; }

[ -x "$bin" ] || { say "build first: make build"; exit 1; }
docker image inspect "$image" >/dev/null 2>&1 || bash "$root/scripts/test-image.sh" >/dev/null
ulimit -n 8192

"$bin" node --data-dir "$work/data" --node-id bench-watch --listen "127.0.0.1:$port" >"$work/node.log" 2>&1 &
node=$!
trap 'kill "$node" 2>/dev/null; wait "$node" 2>/dev/null; rm -rf "$work"' EXIT
bash "$root/scripts/wait-http.sh" "http://127.0.0.1:$port/readyz" 30
say "node $node on :$port; $starts starts and removals, first with no watcher, then with $watchers"
python3 "$root/scripts/watch_bench.py" 127.0.0.1 "$port" "$node" "$watchers" "$starts" "$image" "$work/result.json" >/dev/null

commit=$(git -C "$root" describe --always --dirty --exclude "*")
python3 - "$work/result.json" "$work/section.md" "$commit" <<'PY'
import json, os, platform, subprocess, sys, time
r, path, commit = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
cpu = subprocess.run(["sh", "-c", "lscpu | awk -F: '/Model name/ {gsub(/^ +/, \"\", $2); print $2; exit}'"],
                     capture_output=True, text=True).stdout.strip()
b, w = r["baseline"], r["watched"]
n = r["watchers"]
per_change = lambda x: x["cpu_s"] / x["changes"] * 1000
section = f"""## Watchers: {n:,} streams of `/v1/watch` at one node

Written by `make bench-watch` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, shoal {commit}, release
build): one node on loopback watching this host's Docker. The same churn,
{r['starts']} `docker run` each followed by its `docker rm -f`, one at a time, ran first with
no watcher and then with {n:,} streams open, each filtered to the churn's
names (`scripts/watch_bench.py`, one asyncio client process for all of
them, on the same two cores).

| | no watcher | {n:,} watchers |
|---|---|---|
| resident memory (VmRSS) | {r['idle_rss_kib'] / 1024:.1f} MiB | {r['watching_rss_kib'] / 1024:.1f} MiB |
| anonymous memory (RssAnon) | {r['idle_anon_kib'] / 1024:.1f} MiB | {r['watching_anon_kib'] / 1024:.1f} MiB |
| node CPU over the churn | {b['cpu_s']:.2f} s | {w['cpu_s']:.2f} s |
| node CPU per change | {per_change(b):.1f} ms | {per_change(w):.1f} ms |

- Memory per watcher: {(r['watching_anon_kib'] - r['idle_anon_kib']) / n:.1f} KiB anonymous.
- Opening {n:,} streams (each: the opening, here empty, and `synced`): {r['open_s']:.2f} s.
- Each of the {w['changes']} changes reached every watcher: {r['changes_to_every_watcher']} of {w['changes']}; none twice ({r['doubled']} doubled), {r['resets']} resets.
- From the first watcher that read a change to the last of the {n:,}: p50 {r['spread_ms']['p50']:.1f} ms, p99 {r['spread_ms']['p99']:.1f} ms, max {r['spread_ms']['max']:.1f} ms. The client reads every stream in one Python process, so part of that spread is its own.
- From the `docker` call's start (which includes starting or removing the container) to the first watcher: p50 {r['first_ms']['p50']:.1f} ms, p99 {r['first_ms']['p99']:.1f} ms; to the last: p50 {r['last_ms']['p50']:.1f} ms, p99 {r['last_ms']['p99']:.1f} ms, max {r['last_ms']['max']:.1f} ms.
- machine: {cpu}, {os.cpu_count()} cores; {platform.platform()}
"""
open(path, "w").write(section)
print(section)
PY
python3 "$root/scripts/benchmarks-section.py" "$root/BENCHMARKS.md" "## Watchers" "$work/section.md"
say "wrote the section Watchers of BENCHMARKS.md"
