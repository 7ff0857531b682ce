#!/usr/bin/env bash
# --peers-dns against a real DNS server: dnsmasq (Debian's dnsmasq-base)
# serves several A records for one name inside a network namespace of the
# test's own, whose resolv.conf points at it. Nodes on 127.0.0.2-4 find
# each other through the name; a member added to DNS joins; a member
# removed from DNS and stopped is declared dead. Everything the test makes
# is removed at the end.
set -euo pipefail

me=peers-dns
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/shoal"
ns=shoal-dns-$$
work=$(mktemp -d)
name=peers.shoal.test
passed=0

say() { echo "$me: $*" >&2; }
fail() { say "FAILED: $*"; in_ns curl -s -m 2 http://127.0.0.2:7070/v1/nodes >&2 || true; echo >&2; for f in "$work"/*.log; do say "--- $f"; tail -n 5 "$f" >&2; done; exit 1; }
ok() { say "ok: $*"; passed=$((passed + 1)); }

[ -x "$bin" ] || { say "build first: make build"; exit 1; }
if ! command -v dnsmasq >/dev/null; then
  say "installing dnsmasq-base (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq dnsmasq-base >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq dnsmasq-base >/dev/null; }
fi

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  ip netns delete "$ns" 2>/dev/null || true
  rm -rf "/etc/netns/$ns"; [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link set lo up
mkdir -p "/etc/netns/$ns"
echo "nameserver 127.0.0.1" > "/etc/netns/$ns/resolv.conf"
in_ns() { ip netns exec "$ns" "$@"; }

printf '127.0.0.2 %s\n127.0.0.3 %s\n' "$name" "$name" > "$work/peers.hosts"
in_ns dnsmasq --keep-in-foreground --no-resolv --no-hosts --addn-hosts="$work/peers.hosts" \
  --listen-address=127.0.0.1 --bind-interfaces --port=53 --user=root --log-facility="$work/dnsmasq.log" \
  --pid-file="$work/dnsmasq.pid" &
for _ in $(seq 1 50); do [ -s "$work/dnsmasq.pid" ] && break; sleep 0.1; done
# dnsmasq's own PID (not its launcher's): SIGHUP makes it re-read the hosts.
dns_pid=$(cat "$work/dnsmasq.pid")
pids+=("$dns_pid")

resolves() { # the addresses the name resolves to, sorted
  in_ns python3 -c "import socket; print(' '.join(sorted({a[4][0] for a in socket.getaddrinfo('$name', 7070, socket.AF_INET)})))" 2>/dev/null
}
for _ in $(seq 1 50); do [ "$(resolves)" = "127.0.0.2 127.0.0.3" ] && break; sleep 0.1; done
[ "$(resolves)" = "127.0.0.2 127.0.0.3" ] || fail "dnsmasq does not answer two A records: '$(resolves)'"
ok "$name has two A records"

start_node() { # id ip
  # `ip netns exec` may fork: the node writes its own PID before it execs,
  # so that the test stops the node itself.
  in_ns bash -c 'echo $$ > "$0"; exec "$@"' "$work/$1.pid" \
    "$bin" node --data-dir "$work/$1-data" --engine synthetic --synthetic-count 20 --synthetic-prefix "$1-" \
    --node-id "$1" --listen "$2:7070" --peers-dns "$name:7070" >"$work/$1.log" 2>&1 &
  for _ in $(seq 1 50); do [ -s "$work/$1.pid" ] && break; sleep 0.1; done
  pids+=("$(cat "$work/$1.pid")")
  eval "pid_$1=$(cat "$work/$1.pid")"
}

alive_seen_by() { # ip -> number of alive members
  in_ns curl -s -m 2 "http://$1:7070/v1/nodes" | python3 -c \
    "import json,sys; print(sum(1 for n in json.load(sys.stdin)['nodes'] if n['state']=='alive'))" 2>/dev/null || echo 0
}
state_of() { # ip node
  in_ns curl -s -m 2 "http://$1:7070/v1/nodes" | python3 -c \
    "import json,sys; print([n['state'] for n in json.load(sys.stdin)['nodes'] if n['id']=='$2'][0])" 2>/dev/null || echo none
}
sees() { [ "$(alive_seen_by "$1")" = "$2" ]; }         # ip count
resolves_to() { [ "$(resolves)" = "$1" ]; }              # "addresses"
calls() { [ "$(state_of "$1" "$2")" = "$3" ]; }          # ip node state

wait_for() { # description seconds command...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "$what"
    sleep 0.2
  done
}

start_node a 127.0.0.2
start_node b 127.0.0.3
wait_for "a does not see b through DNS" 20 sees 127.0.0.2 2
wait_for "b does not see a through DNS" 20 sees 127.0.0.3 2
ok "two nodes found each other through $name"

# A member added: the record first, then the node.
printf '127.0.0.4 %s\n' "$name" >> "$work/peers.hosts"
kill -HUP "$dns_pid"
wait_for "dnsmasq did not serve the added record" 10 resolves_to "127.0.0.2 127.0.0.3 127.0.0.4"
start_node c 127.0.0.4
for ip in 127.0.0.2 127.0.0.3 127.0.0.4; do
  wait_for "$ip does not see three members" 20 sees "$ip" 3
done
ok "an added member joined; every node sees three"
code=$(in_ns curl -s -o /dev/null -w '%{http_code}' -H 'cache-control: no-cache' "http://127.0.0.2:7070/v1/containers/c-7")
[ "$code" = 200 ] || fail "a cannot look up c's container (HTTP $code)"
ok "the new member's containers are answered by the others"

# A member removed: out of DNS, then stopped.
grep -v '^127.0.0.3 ' "$work/peers.hosts" > "$work/peers.new" && mv "$work/peers.new" "$work/peers.hosts"
kill -HUP "$dns_pid"
wait_for "dnsmasq still serves the removed record" 10 resolves_to "127.0.0.2 127.0.0.4"
kill -TERM "$pid_b"
for ip in 127.0.0.2 127.0.0.4; do
  wait_for "$ip does not call b dead" 20 calls "$ip" b dead
done
ok "a removed member is declared dead by the others"

echo "peers-dns: $passed passed, 0 failed"
