#!/usr/bin/env bash
# An extra, independent Docker engine that plays another host in tests.
#   scripts/extra-dockerd.sh start NAME [SUBNET]   start (no-op when running)
#   scripts/extra-dockerd.sh stop NAME [--purge]   stop; --purge also deletes its data
#   scripts/extra-dockerd.sh status NAME
# Each engine has its own socket (unix:///run/shoal-NAME.sock), bridge
# (shoal-NAME, given the first address of SUBNET, default 10.213.X.0/24
# from a hash of NAME), data root, exec root, pid file, containerd and
# engine identity, with iptables and masquerading off. `start` imports the
# test image into it. Engines are stopped with SIGTERM and waited for,
# never killed by name.
set -euo pipefail

me=extra-dockerd
root=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "$me: $*" >&2; }
die() { say "$*"; exit 1; }

cmd=${1:-}; name=${2:-}
[ -n "$cmd" ] && [ -n "$name" ] || die "usage: $0 start|stop|status NAME [SUBNET|--purge]"
[[ "$name" =~ ^[a-z0-9][a-z0-9-]{0,9}$ ]] || die "NAME must be 1-10 of a-z 0-9 - (it names a bridge)"

sock=/run/shoal-$name.sock
host=unix://$sock
bridge=shoal-$name
data=/var/lib/shoal-test/$name
exec_root=/run/shoal-test/$name
pidfile=/run/shoal-test/$name.pid
conf=/run/shoal-test/$name.json
log=/var/log/shoal-test-$name.log

command -v ip >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; }; }

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

default_subnet() {
  # From a hash of NAME, stepping past /24s another interface already has,
  # so that engines started side by side never share a subnet.
  local h x tries=0
  h=$(printf '%s' "$name" | cksum | cut -d' ' -f1)
  x=$((h % 250 + 1))
  while ip -4 -o addr show | grep -q " 10\.213\.$x\." && [ $tries -lt 250 ]; do
    x=$((x % 250 + 1)); tries=$((tries + 1))
  done
  echo "10.213.$x.0/24"
}

start() {
  local subnet=${3:-$(default_subnet)}
  [[ "$subnet" =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)\.0/24$ ]] || die "SUBNET must be a /24 like 10.213.7.0/24"
  local gw="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.${BASH_REMATCH[3]}.1/24"
  if running; then
    say "$name already runs (pid $(cat "$pidfile"))"
    return
  fi
  mkdir -p "$data" "$exec_root"
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add name "$bridge" type bridge
    ip addr add "$gw" dev "$bridge"
  fi
  ip link set "$bridge" up
  # Docker 23+ reads its ID from <data-root>/engine-id; 20.10 derives it from
  # the key file named by deprecated-key-path. Give each engine both, so no
  # two engines report the host engine's ID.
  [ -s "$data/engine-id" ] || cat /proc/sys/kernel/random/uuid > "$data/engine-id"
  printf '{"deprecated-key-path": "%s/key.json"}\n' "$data" > "$conf"
  # A fresh managed containerd per engine, in its own exec root.
  nohup dockerd \
    --config-file "$conf" \
    -H "$host" \
    --data-root "$data" \
    --exec-root "$exec_root" \
    --pidfile "$pidfile" \
    -b "$bridge" \
    --storage-driver vfs \
    --iptables=false --ip-masq=false --ip-forward=false \
    --shutdown-timeout 2 \
    >>"$log" 2>&1 &
  for _ in $(seq 1 120); do
    DOCKER_HOST=$host docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  DOCKER_HOST=$host docker info >/dev/null 2>&1 || { tail -n 20 "$log" >&2; die "$name did not answer in 60 s"; }
  DOCKER_HOST=$host bash "$root/scripts/test-image.sh" >/dev/null
  say "$name up: DOCKER_HOST=$host, engine $(DOCKER_HOST=$host docker info --format '{{.ID}}')"
}

stop() {
  local purge=${3:-}
  if [ "$purge" = "--purge" ] && running; then
    # Networks the engine made are bridges in the host's namespace: remove
    # them through the engine while it still runs.
    local ids; ids=$(DOCKER_HOST=$host docker ps -aq 2>/dev/null || true)
    [ -z "$ids" ] || DOCKER_HOST=$host docker rm -f $ids >/dev/null 2>&1 || true
    DOCKER_HOST=$host docker network prune -f >/dev/null 2>&1 || true
  fi
  if running; then
    local pid; pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name did not stop in 30 s after SIGTERM; sending SIGKILL"
      kill -KILL "$pid"
      sleep 1
    fi
    say "$name stopped"
  fi
  rm -f "$pidfile"
  if ip link show "$bridge" >/dev/null 2>&1; then ip link delete "$bridge"; fi
  if [ "$purge" = "--purge" ]; then
    for dir in "$data" "$exec_root"; do
      case "$dir" in /var/lib/shoal-test/?*|/run/shoal-test/?*) ;; *) die "refusing to purge $dir" ;; esac
      if [ -d "$dir" ]; then
        { findmnt -rn -o TARGET | grep -F "$dir" || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
        rm -rf "$dir"
      fi
    done
    rm -f "$conf" "$sock"
    say "$name purged"
  fi
}

case "$cmd" in
  start) start "$@" ;;
  stop) stop "$@" ;;
  status) if running; then echo "$name: running (pid $(cat "$pidfile")), DOCKER_HOST=$host"; else echo "$name: stopped"; exit 1; fi ;;
  *) die "usage: $0 start|stop|status NAME [SUBNET|--purge]" ;;
esac
