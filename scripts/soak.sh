#!/usr/bin/env bash
# make soak: a five-node fleet of real `shoal node` processes on this host's
# Docker engine, under container churn (started, renamed, removed) and
# lookups at every node, for SOAK_SECONDS (default 1800). Every 10 s it
# samples each node's anonymous resident memory (RssAnon: the heap,
# stacks, the allocator's arenas), its whole resident memory (VmRSS, which
# also counts the pages of the binary's code read in so far) and its open
# file descriptors, and prints them. It passes when, after the warm-up
# (SOAK_WARMUP, default a fifth of the run), anonymous memory and file
# descriptors stay flat: the mean of the last quarter of the samples is
# within 10 % of the mean of the first quarter (file descriptors: 10 % or
# 5, whichever is more), for every node, and no lookup of a live container
# was denied.
#   SOAK_SECONDS=180 bash scripts/soak.sh     a short pass
#   SOAK_SHOAL=/path/to/shoal bash scripts/soak.sh   soaks another build
# Traffic goes to loopback only; the churn keeps at most SOAK_LIVE (default
# 40) containers of its own, all named soak-*, and removes them at the end.
set -euo pipefail

me=soak
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${SOAK_SHOAL:-$root/target/release/shoal}
secs=${SOAK_SECONDS:-1800}
warmup=${SOAK_WARMUP:-$((secs / 5))}
live_max=${SOAK_LIVE:-40}
every=10
image=shoal-test/busybox:latest
work="$root/target/soak"
ports=(17271 17272 17273 17274 17275)

say() { echo "$me: $*" >&2; }
die() { say "$*"; exit 1; }

[ -x "$bin" ] || die "build first: make build"
docker image inspect "$image" >/dev/null 2>&1 || die "the test image is missing: make test-deps"
rm -rf "$work" && mkdir -p "$work"
# The commit the binary was built from (make soak builds it first).
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD 2>/dev/null || commit+=" with uncommitted changes"
[ -z "${SOAK_SHOAL:-}" ] || commit="the build at $bin"
bash "$root/scripts/cluster-secret.sh" "$work/cluster-secret"

pids=()
churn_pid=""
cleanup() {
  [ -n "$churn_pid" ] && kill "$churn_pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  local left
  left=$(docker ps -aq --filter name='^soak-' || true)
  [ -z "$left" ] || docker rm -f $left >/dev/null 2>&1 || true
}
trap cleanup EXIT

peers=""
for p in "${ports[@]}"; do peers+="${peers:+,}127.0.0.1:$p"; done
for i in "${!ports[@]}"; do
  "$bin" node --data-dir "$work/data$i" --node-id "soak$i" --listen "127.0.0.1:${ports[$i]}" --peers "$peers" \
    --cluster-secret-file "$work/cluster-secret" --log-level warn >"$work/node$i.log" 2>&1 &
  pids+=($!)
done
for p in "${ports[@]}"; do
  deadline=$((SECONDS + 30))
  until curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$p/readyz"; do
    [ $SECONDS -lt $deadline ] || die "node on :$p is not ready; see $work"
    sleep 0.2
  done
done
say "5 nodes up (pids ${pids[*]}); soaking for ${secs}s, warm-up ${warmup}s"

# The churn: start, rename and remove containers, at most $live_max at once.
churn() {
  local n=0 live=()
  while true; do
    n=$((n + 1))
    docker run -d --name "soak-$n" "$image" sleep 3600 >/dev/null 2>&1 && live+=("soak-$n")
    if [ $((n % 3)) -eq 0 ] && [ ${#live[@]} -gt 1 ]; then
      local old=${live[0]}
      docker rename "$old" "$old-r" >/dev/null 2>&1 && live[0]="$old-r"
    fi
    if [ ${#live[@]} -gt "$live_max" ]; then
      docker rm -f "${live[0]}" >/dev/null 2>&1 || true
      live=("${live[@]:1}")
    fi
    printf '%s\n' "${live[@]}" > "$work/live.tmp" && mv "$work/live.tmp" "$work/live"
    sleep 0.5
  done
}
churn &
churn_pid=$!

# Samples: time node rss_kib fds. Lookups: each round asks every node for
# a live container that has been up for a while (its name was listed in
# the previous round too, so its start has long been published).
lookups=0 denied=0
started=$SECONDS
prev_live=""
while [ $((SECONDS - started)) -lt "$secs" ]; do
  t=$((SECONDS - started))
  line="t=${t}s"
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    kill -0 "$pid" 2>/dev/null || die "node soak$i (pid $pid) died; see $work/node$i.log"
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    anon=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status")
    fds=$(ls "/proc/$pid/fd" | wc -l)
    echo "$t $i $anon $fds $rss" >> "$work/samples"
    line+=" soak$i=${anon}/${rss}KiB/${fds}fd"
  done
  say "$line lookups=$lookups denied=$denied"
  round_end=$((SECONDS + every))
  while [ $SECONDS -lt $round_end ]; do
    live=$(cat "$work/live" 2>/dev/null || true)
    # Names present in both rounds: settled for at least a round.
    for name in $(comm -12 <(echo "$prev_live" | sort) <(echo "$live" | sort) | shuf -n 4 2>/dev/null); do
      for p in "${ports[@]}"; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$p/v1/containers/$name" || echo 000)
        lookups=$((lookups + 1))
        if [ "$code" != 200 ]; then
          # A rename or removal of this very container may have raced the
          # ask: only a container that is still there, as named, counts.
          if docker inspect -f '{{.Name}}' "$name" 2>/dev/null | grep -qx "/$name"; then
            denied=$((denied + 1))
            say "denied: $name at :$p answered $code"
          fi
        fi
      done
    done
    curl -s -o /dev/null --max-time 5 "http://127.0.0.1:${ports[0]}/v1/containers?limit=100" || true
    sleep 1
  done
  prev_live=$live
done
kill "$churn_pid" 2>/dev/null || true
wait "$churn_pid" 2>/dev/null || true
churn_pid=""

say "lookups: $lookups, denied: $denied"
verdict=0
# Per node, after the warm-up: the means of the first and last quarter of
# its samples, and whether they are flat (one computation; the verdict and
# the table below both read it).
awk -v warmup="$warmup" '
  $1 >= warmup { n[$2]++; rss[$2, n[$2]] = $3; fd[$2, n[$2]] = $4; all[$2, n[$2]] = $5 }
  END {
    for (node in n) {
      q = int(n[node] / 4); if (q < 1) { print "too few samples after the warm-up" > "/dev/stderr"; exit 2 }
      r1 = r2 = f1 = f2 = v1 = v2 = 0
      for (k = 1; k <= q; k++) { r1 += rss[node, k]; f1 += fd[node, k]; v1 += all[node, k] }
      for (k = n[node] - q + 1; k <= n[node]; k++) { r2 += rss[node, k]; f2 += fd[node, k]; v2 += all[node, k] }
      r1 /= q; r2 /= q; f1 /= q; f2 /= q; v1 /= q; v2 /= q
      fslack = f1 * 0.10; if (fslack < 5) fslack = 5
      ok = (r2 <= r1 * 1.10 && r2 >= r1 * 0.90 && f2 <= f1 + fslack && f2 >= f1 - fslack)
      printf "%s %.1f %.1f %.2f %.2f %d %s %.1f %.1f\n", node, r1, r2, f1, f2, n[node], ok ? "flat" : "not-flat", v1, v2
    }
  }' "$work/samples" | sort -n > "$work/flatness" || die "the samples cannot be judged"
[ -s "$work/flatness" ] || die "no samples after the warm-up"
while read -r node r1 r2 f1 f2 n ok v1 v2; do
  say "$(awk -v node="$node" -v r1="$r1" -v r2="$r2" -v f1="$f1" -v f2="$f2" -v n="$n" -v ok="$ok" -v v1="$v1" -v v2="$v2" 'BEGIN {
    printf "soak%s: anonymous %.0f -> %.0f KiB (%+.1f%%), all resident %.0f -> %.0f KiB, fds %.1f -> %.1f, %d samples after warm-up: %s",
      node, r1, r2, (r2 - r1) * 100 / r1, v1, v2, f1, f2, n, ok == "flat" ? "flat" : "NOT FLAT" }')"
  [ "$ok" = flat ] || verdict=1
done < "$work/flatness"
[ "$denied" -eq 0 ] || { say "$denied lookups of live containers were denied"; verdict=1; }

# The figures as a section of BENCHMARKS.md; a full-length run (30 minutes
# or more) of this checkout's build writes it there, a shorter one or
# another build's only to target/soak/.
{
  echo "## Soak: five nodes under churn, $((secs / 60)) minutes"
  echo
  echo "Written by \`make soak\` ($(date -u '+%Y-%m-%d %H:%M UTC'), shoal $commit):"
  echo "five \`shoal node\` processes (release build, cluster secret on) watching"
  echo "this host's Docker engine, while containers were started, renamed and"
  echo "removed (at most $live_max at once) and every node was asked for live"
  echo "ones: $lookups lookups, $denied denied. Anonymous resident memory"
  echo "(RssAnon, judged), all resident memory (VmRSS, which also counts the"
  echo "binary's code pages read in so far) and open file descriptors, sampled"
  echo "every ${every} s; after a ${warmup} s warm-up, the mean of the first quarter of"
  echo "the samples against the mean of the last quarter."
  echo
  echo "| node | anonymous first quarter | anonymous last quarter | change | all resident, first → last | fds first | fds last | verdict |"
  echo "|---|---|---|---|---|---|---|---|"
  awk '{ printf "| soak%d | %.1f MiB | %.1f MiB | %+.1f%% | %.1f → %.1f MiB | %.1f | %.1f | %s |\n",
      $1, $2 / 1024, $3 / 1024, ($3 - $2) * 100 / $2, $8 / 1024, $9 / 1024, $4, $5, $7 == "flat" ? "flat" : "**not flat**" }' "$work/flatness"
  echo
  echo "- machine: $(lscpu 2>/dev/null | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'), $(nproc) cores"
} > "$work/summary.md"
cat "$work/summary.md" >&2
if [ "$secs" -ge 1800 ] && [ -z "${SOAK_SHOAL:-}" ]; then
  python3 "$root/scripts/benchmarks-section.py" "$root/BENCHMARKS.md" "## Soak" "$work/summary.md"
  say "wrote the soak's section of BENCHMARKS.md"
fi
[ "$verdict" -eq 0 ] && say "passed" || say "FAILED"
exit "$verdict"
