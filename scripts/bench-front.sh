#!/usr/bin/env bash
# The front-door comparison of `make bench` (and `make bench-front` alone):
# shoal's three nodes behind nginx against a groupcache deployment of the
# same shape (bench/groupcache: three Go peers, one groupcache group, the
# same 3 × COUNT names) behind nginx rendered from the same template, both
# loaded by wrk with uniformly random names. Run by scripts/bench.sh while
# its nodes and nginx are up:
#   scripts/bench-front.sh WORK SHOAL_NGINX_PORT COUNT SHOAL_NODE_PID...
# writes WORK/front.json (the figures) and WORK/front.md (BENCHMARKS.md's
# section). Settings, from the environment:
#   BENCH_FRONT_SECONDS (5) per run, BENCH_FRONT_ROUNDS (3) alternating
#   shoal/groupcache runs, BENCH_FRONT_THREADS (2) and
#   BENCH_FRONT_CONNECTIONS (32) for wrk; BENCH_GC_PORTS ("17181 17182
#   17183") and BENCH_GC_NGINX_PORT (18091) for the peers and their nginx;
#   BENCH_GC_VALUE_BYTES (the mean size of shoal's answers, measured first);
#   BENCH_GC_PEER_IDLE_CONNS (64, as nginx keeps per upstream; Go's default
#   is 2).
# Loopback only; every run bounded by wrk's duration and a timeout; the
# peers and nginx it starts are stopped by PID on exit. Needs no Docker.
# Against the compose stack instead (bench/compose-synthetic.yml gives it
# the same names), with the nodes' PIDs as Docker sees them:
#   scripts/bench-front.sh /tmp/front 8080 10000 $(docker inspect -f '{{.State.Pid}}' \
#     shoal_node1_1 shoal_node2_1 shoal_node3_1)
# (nginx's CPU and the answers' paths are then not counted).
set -euo pipefail

me=bench-front
root=$(cd "$(dirname "$0")/.." && pwd)
work=$1 shoal_port=$2 per_node=$3; shift 3
shoal_pids=("$@")
secs=${BENCH_FRONT_SECONDS:-5}
rounds=${BENCH_FRONT_ROUNDS:-3}
threads=${BENCH_FRONT_THREADS:-2}
conns=${BENCH_FRONT_CONNECTIONS:-32}
read -r -a gc_ports <<< "${BENCH_GC_PORTS:-17181 17182 17183}"
gc_nginx_port=${BENCH_GC_NGINX_PORT:-18091}
lua="$root/bench/wrk-lookups.lua"
out="$work/front"

say() { echo "$me: $*" >&2; }
die() { say "$*"; exit 1; }

# Debian packages only, for the bench alone: Go, groupcache (with the
# protobuf it imports) and wrk. Nothing is fetched at build time.
need=()
command -v go >/dev/null || need+=(golang-go)
[ -d /usr/share/gocode/src/github.com/golang/groupcache ] || need+=(golang-github-golang-groupcache-dev)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
rm -rf "$out" && mkdir -p "$out/gc-nginx"
say "building bench/groupcache (GOPATH mode, the Debian packages' sources)"
(cd "$root/bench/groupcache" && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= \
  go build -o "$out/groupcache-bench" .) || die "bench/groupcache does not build"

gc_pids=()
cleanup() {
  [ -f "$out/gc-nginx/nginx.pid" ] && kill "$(cat "$out/gc-nginx/nginx.pid")" 2>/dev/null || true
  for p in "${gc_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${gc_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

shoal_front="http://127.0.0.1:$shoal_port"
gc_front="http://127.0.0.1:$gc_nginx_port"

# Both sides answer the same bytes: groupcache's values are padded to the
# mean size of shoal's answers to 200 of the names (bodies; shoal's vary
# with a record's networks and labels), one sample kept to show.
shoal_bytes=$(python3 - "$shoal_front" "$per_node" "$out/shoal-answer.json" <<'PY'
import random, sys, urllib.request
front, n, keep = sys.argv[1], int(sys.argv[2]), sys.argv[3]
random.seed(11)
sizes = []
for _ in range(200):
    with urllib.request.urlopen(f"{front}/v1/containers/n{random.randint(1, 3)}-{random.randrange(n)}", timeout=5) as r:
        body = r.read()
    sizes.append(len(body))
open(keep, "wb").write(body)
print(round(sum(sizes) / len(sizes)))
PY
) || die "shoal's front did not answer the sample names"
value_bytes=${BENCH_GC_VALUE_BYTES:-$shoal_bytes}
gc_idle=${BENCH_GC_PEER_IDLE_CONNS:-64}
say "shoal's answers: $shoal_bytes bytes on average; groupcache's values: $value_bytes bytes"

gc_peers=$(printf '127.0.0.1:%s,' "${gc_ports[@]}"); gc_peers=${gc_peers%,}
for p in "${gc_ports[@]}"; do
  "$out/groupcache-bench" -listen "127.0.0.1:$p" -peers "$gc_peers" -count "$per_node" \
    -value-bytes "$value_bytes" -peer-idle-conns "$gc_idle" > "$out/gc-$p.log" 2>&1 &
  gc_pids+=("$!")
done
for p in "${gc_ports[@]}"; do
  bash "$root/scripts/wait-http.sh" "http://127.0.0.1:$p/readyz" 20 || die "groupcache peer $p did not start; see $out/gc-$p.log"
done
for p in "${gc_pids[@]}"; do kill -0 "$p" 2>/dev/null || die "a groupcache peer exited (its port taken?); see $out/gc-*.log"; done
servers=(); for p in "${gc_ports[@]}"; do servers+=("127.0.0.1:$p"); done
bash "$root/scripts/nginx-conf.sh" render "This rendering: the groupcache peers of the benchmarks (scripts/bench-front.sh)." \
  "127.0.0.1:$gc_nginx_port" "$out/gc-nginx" "$out/gc-nginx/error.log" "$out/gc-nginx/access.log" "${servers[@]}" \
  > "$out/gc-nginx/nginx.conf"
nginx -c "$out/gc-nginx/nginx.conf" -p "$out/gc-nginx" -g 'daemon on;' || die "the groupcache nginx failed"
bash "$root/scripts/wait-http.sh" "$gc_front/readyz" 10 || die "the groupcache nginx does not answer"
say "three groupcache peers up behind nginx on :$gc_nginx_port"

cpu_ticks() { # clock ticks the given processes have used
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}
gc_stats() { # name: every peer's groupcache counters
  local p
  for p in "${gc_ports[@]}"; do curl -fs "http://127.0.0.1:$p/v1/stats"; done > "$out/$1.gcstats"
}
children_ticks() { # clock ticks this shell's waited-for children have used, into $ticks
  # Called as is, not in $(...): a subshell's children are its own.
  times > "$out/times"
  ticks=$(tail -n 1 "$out/times" | awk '{t = 0; for (i = 1; i <= NF; i++) { split($i, a, "m"); t += a[1] * 60 + a[2] } printf "%d\n", t * 100 + 0.5}')
}
wrk_run() { # name url side arg...: one wrk run, its done hook's JSON kept
  local name=$1 url=$2 side=$3; shift 3
  local pids master nginx_pids=() servers nginx wrk_cpu
  if [ "$side" = shoal ]; then pids=("${shoal_pids[@]}"); master="$work/nginx.pid"
  else pids=("${gc_pids[@]}"); master="$out/gc-nginx/nginx.pid"; fi
  # nginx's workers, where this script can see them (not in a container).
  [ -f "$master" ] && read -r -a nginx_pids <<< "$(pgrep -P "$(cat "$master")" | tr '\n' ' ')"
  say "run: $name"
  servers=$(cpu_ticks "${pids[@]}"); nginx=$(cpu_ticks "${nginx_pids[@]}"); children_ticks; wrk_cpu=$ticks
  timeout $((secs + 30)) wrk -t"$threads" -c"$conns" -d"${secs}s" --timeout 5s -s "$lua" "$url" -- "$@" \
    > "$out/$name.txt" 2>&1 || die "wrk failed on $name; see $out/$name.txt"
  servers=$(( $(cpu_ticks "${pids[@]}") - servers ))
  if [ ${#nginx_pids[@]} -gt 0 ]; then nginx=$(( $(cpu_ticks "${nginx_pids[@]}") - nginx )); else nginx=null; fi
  children_ticks; wrk_cpu=$((ticks - wrk_cpu))
  echo "{\"servers\": $servers, \"nginx\": $nginx, \"wrk\": $wrk_cpu}" > "$out/$name.ticks"
  grep '^{' "$out/$name.txt" | tail -n 1 > "$out/$name.json"
  [ -s "$out/$name.json" ] || die "wrk printed no figures for $name; see $out/$name.txt"
}
# shoal's nginx access log, when it is bench.sh's (not a container's stdout).
access_log="$work/nginx-access.log"
access_lines() { if [ -f "$access_log" ]; then wc -l < "$access_log"; else echo 0; fi; }

# One unmeasured pass each fills the caches; then the ceilings, then the
# lookups, shoal and groupcache in turn so drift hits both alike.
wrk_run warm-shoal "$shoal_front" shoal 3 "$per_node"
wrk_run warm-groupcache "$gc_front" groupcache 3 "$per_node"
wrk_run noop-shoal "$shoal_front" shoal noop
wrk_run noop-groupcache "$gc_front" groupcache noop
gc_stats before
for i in $(seq 1 "$rounds"); do
  from=$(access_lines)
  wrk_run "shoal-$i" "$shoal_front" shoal 3 "$per_node"
  if [ -f "$access_log" ]; then
    tail -n +"$((from + 1))" "$access_log" | grep -o 'path=[a-z-]*' >> "$out/shoal.paths" || true
  fi
  wrk_run "groupcache-$i" "$gc_front" groupcache 3 "$per_node"
done
gc_stats after

python3 - "$out" "$rounds" "$secs" "$threads" "$conns" "$per_node" "$shoal_bytes" "$value_bytes" "$gc_idle" <<'PY'
import json, statistics, subprocess, sys
out, rounds, secs, threads, conns, per_node, shoal_bytes, value_bytes, gc_idle = sys.argv[1:]
rounds = int(rounds)
def load(n):
    x = json.load(open(f"{out}/{n}.json"))
    # CPU µs per request: the three servers, nginx's workers, wrk; and all.
    t = json.load(open(f"{out}/{n}.ticks"))
    per = lambda ticks: None if ticks is None else ticks * 10000 / max(x["requests"], 1)
    x["cpu_us"] = per(t["servers"])
    x["nginx_cpu_us"], x["wrk_cpu_us"] = per(t["nginx"]), per(t["wrk"])
    x["all_cpu_us"] = None if t["nginx"] is None else x["cpu_us"] + x["nginx_cpu_us"] + x["wrk_cpu_us"]
    return x
def sh(cmd): return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
runs = [(load(f"shoal-{i}"), load(f"groupcache-{i}")) for i in range(1, rounds + 1)]
noop = {"shoal": load("noop-shoal"), "groupcache": load("noop-groupcache")}
ratios = [s["throughput"] / max(g["throughput"], 1) for s, g in runs]
p99 = {"shoal": statistics.median(s["latency_us"]["p99"] for s, _ in runs),
       "groupcache": statistics.median(g["latency_us"]["p99"] for _, g in runs)}
thr = {"shoal": statistics.median(s["throughput"] for s, _ in runs),
       "groupcache": statistics.median(g["throughput"] for _, g in runs)}
# CPU per request is what other work on the machine disturbs least: the
# servers' alone, and everything the run needs (servers, nginx, wrk).
def med(side, key):
    v = [x[side][key] for x in ({"shoal": s, "groupcache": g} for s, g in runs)]
    return None if None in v else statistics.median(v)
cpu = {side: {k: med(side, k) for k in ("cpu_us", "all_cpu_us")} for side in ("shoal", "groupcache")}
paths = {}
try:
    for line in open(f"{out}/shoal.paths"):
        # "-": no answer, a connection wrk closed as its run ended (nginx's 499).
        p = line.strip().split("=", 1)[1]
        p = "none" if p in ("", "-") else p
        paths[p] = paths.get(p, 0) + 1
except FileNotFoundError:
    pass
def stats(n):
    total = {}
    for line in open(f"{out}/{n}.gcstats"):
        for k, v in json.loads(line).items(): total[k] = total.get(k, 0) + v
    return total
b, a = stats("before"), stats("after")
gc = {k: a[k] - b[k] for k in ("gets", "cache_hits", "peer_loads", "local_loads", "peer_errors")}
gc["hot_items"], gc["main_items"] = a["hot_items"], a["main_items"]
front = {"rounds": [{"shoal": s, "groupcache": g} for s, g in runs], "noop": noop,
         "ratio_each": ratios, "ratio_median": statistics.median(ratios), "throughput_median": thr,
         "p99_median_us": p99, "cpu_median_us": cpu, "answer_bytes": {"shoal": int(shoal_bytes), "groupcache": int(value_bytes)},
         "shoal_paths": paths, "groupcache_counters": gc}
json.dump(front, open(f"{out}/../front.json", "w"), indent=1)

def row(name, x, base=None):
    l, e = x["latency_us"], x["errors"]
    errs = sum(e.values())
    vs = ""
    if base:
        vs = f"{x['throughput']/max(base['throughput'],1):.2f}× / {l['p99']/max(base['latency_us']['p99'],1):.2f}×"
    return (f"| {name} | {x['throughput']:.0f} | {l['p50']} | {l['p90']} | {l['p99']} | {l['p999']} | {l['max']} "
            f"| {errs} | {x['bytes_per_answer']:.0f} | {us(x['cpu_us'])} / {us(x['nginx_cpu_us'])} / {us(x['wrk_cpu_us'])} | {vs} |")
def us(v): return "-" if v is None else f"{v:.0f}"
rows = [row("nginx → shoal `/v1/noop` (ceiling)", noop["shoal"]),
        row("nginx → groupcache peers' `/v1/noop`", noop["groupcache"])]
for i, (s, g) in enumerate(runs, 1):
    rows += [row(f"shoal, round {i}", s, g), row(f"groupcache, round {i}", g)]
path_text = ", ".join(f"{k} {v}" for k, v in sorted(paths.items(), key=lambda kv: -kv[1])) or "not logged"
cs, cg = cpu["shoal"], cpu["groupcache"]
cpu_text = f"""Server CPU per lookup (median): shoal {cs['cpu_us']:.0f} µs, groupcache {cg['cpu_us']:.0f} µs."""
if cs["all_cpu_us"] and cg["all_cpu_us"]:
    cpu_text += f""" Everything a
lookup costs (servers, nginx, wrk): shoal {cs['all_cpu_us']:.0f} µs, groupcache {cg['all_cpu_us']:.0f} µs, so
with CPU the only limit and nothing else running the throughput ratio
would be {cg['all_cpu_us']/cs['all_cpu_us']:.2f}; less noisy than req/s on a shared machine."""
cpu_text += "\n"
wrk_version = sh("wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2")
served_here = gc["cache_hits"] + gc["local_loads"]
lines = f"""## Through nginx with wrk: shoal against a groupcache deployment

The same job done by another distributed cache on the same machine in the
same run: three [groupcache](https://github.com/golang/groupcache) peers
(`bench/groupcache`, Go {sh("go env GOVERSION")}, groupcache {sh("dpkg-query -W -f='${Version}' golang-github-golang-groupcache-dev")} from Debian)
behind nginx rendered from the same template as shoal's, beside shoal's
three nodes behind theirs. Each groupcache peer answers `GET
/v1/containers/{{name}}` from one group whose getter makes a JSON value for
the names `n1-0` … `n3-{int(per_node)-1}` (the synthetic engines' names), padded to
{value_bytes} bytes: shoal's answers to 200 of the names averaged {shoal_bytes}
bytes. Peers are wired with groupcache's `HTTPPool` (one owner per
key, 64 MB of cache per peer of which the hot cache is groupcache's
default eighth, {gc_idle} idle keep-alive connections per peer, where Go's
default is 2); shoal runs two owners per key and its hot cache as shipped
(kept by the owners' invalidations, bounded by memory).

Every run ({wrk_version}): `wrk -t{threads} -c{conns} -d{secs}s --timeout 5s -s bench/wrk-lookups.lua
http://127.0.0.1:PORT -- 3 {per_node}` (names uniform over all {3*int(per_node)}; the
script's `done` hook prints wrk's percentiles as JSON). One unmeasured pass
of each first, then the no-op ceilings, then {rounds} rounds of shoal then
groupcache. Latencies in µs; bytes per answer as wrk counts them (headers
included); CPU: the CPU time the three servers, nginx's workers and wrk
used over the run, per request. wrk, nginx and the servers share the
machine's cores with whatever else runs on it.

| run | req/s | p50 | p90 | p99 | p99.9 | max | errors | bytes/answer | CPU µs/req: servers / nginx / wrk | throughput / p99 vs groupcache, same round |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Median of the rounds: shoal {thr['shoal']:.0f} req/s at p99 {p99['shoal']/1000:.2f} ms,
groupcache {thr['groupcache']:.0f} req/s at p99 {p99['groupcache']/1000:.2f} ms: a throughput ratio
of **{statistics.median(ratios):.2f}** (rounds: {", ".join(f"{r:.2f}" for r in ratios)}). shoal's lookups reached
{thr['shoal']/max(noop['shoal']['throughput'],1)*100:.0f}% of nginx's no-op throughput through its front.
{cpu_text}
How they were answered during the measured rounds: shoal, by the
`x-shoal-path` nginx logged: {path_text}. groupcache, by its counters:
{gc['gets']} gets, {served_here} answered by the peer asked ({gc['cache_hits']} from its main or
hot cache, {gc['local_loads']} made by its getter), {gc['peer_loads']} fetched from the owner ({gc['peer_errors']} failed);
{gc['hot_items']} values in the hot caches and {gc['main_items']} in the main caches at the end.
The comparison is not quite like for like: groupcache's values never
change, so its caches need no invalidation, and its getter makes a value
from the name; shoal answers live records, keeps a forwarded answer hot
only while its owner has not said it changed, and signs peer requests.
"""
open(f"{out}/../front.md", "w").write(lines)
PY
say "wrote $work/front.md and $work/front.json"
