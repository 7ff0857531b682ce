#!/usr/bin/env bash
# The local stack of `make up`: a three-node shoal cluster as plain
# processes (gossiping with each other on 127.0.0.1:7071-7073, each watching
# this host's Docker engine) and nginx in front of them on :8080.
#   scripts/local-stack.sh up|down|status|logs
# State (pid files, logs, the cluster secret, the API token, the generated nginx config) lives in
# target/local/. Until the deployment work lands (images, compose), this is
# what `make up` runs.
set -euo pipefail

me=local-stack
root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/target/local"
bin="$root/target/release/shoal"
port=${SHOAL_HTTP_PORT:-8080}
nodes=(1 2 3)

say() { echo "$me: $*" >&2; }
die() { say "$*"; exit 1; }

node_port() { echo $((7070 + $1)); }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_http() { # url seconds
  local url=$1 deadline=$((SECONDS + $2))
  until curl -fs -o /dev/null --max-time 2 "$url"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

ensure_nginx() {
  command -v nginx >/dev/null && return
  say "installing nginx (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null \
    || apt-get install -y -qq nginx >/dev/null
  command -v nginx >/dev/null || die "nginx could not be installed"
}

write_nginx_conf() {
  local servers=()
  for i in "${nodes[@]}"; do servers+=("127.0.0.1:$(node_port "$i")"); done
  bash "$root/scripts/nginx-conf.sh" render "This rendering: the local stack (scripts/local-stack.sh)." \
    "127.0.0.1:$port" "$state" "$state/nginx-error.log" "$state/nginx-access.log" "${servers[@]}" \
    > "$state/nginx.conf"
}

up() {
  [ -x "$bin" ] || die "$bin is missing: run make build first"
  bash "$root/scripts/ensure-docker.sh"
  ensure_nginx
  mkdir -p "$state"
  # Kept across restarts: every node of the stack must share it.
  bash "$root/scripts/cluster-secret.sh" "$state/cluster-secret"
  bash "$root/scripts/api-token.sh" "$state/api-token"
  local peers=""
  for i in "${nodes[@]}"; do peers+="${peers:+,}127.0.0.1:$(node_port "$i")"; done
  for i in "${nodes[@]}"; do
    local pidf="$state/node$i.pid"
    if alive "$pidf"; then say "node$i already runs (pid $(cat "$pidf"))"; continue; fi
    "$bin" node --node-id "node$i" --data-dir "$state/data$i" --listen "127.0.0.1:$(node_port "$i")" --peers "$peers" \
      --cluster-secret-file "$state/cluster-secret" --api-token-file "$state/api-token" >"$state/node$i.log" 2>&1 &
    echo $! > "$pidf"
  done
  for i in "${nodes[@]}"; do
    wait_http "http://127.0.0.1:$(node_port "$i")/readyz" 30 \
      || die "node$i is not ready; see $state/node$i.log: $(tail -n 5 "$state/node$i.log")"
  done
  if alive "$state/nginx.pid"; then
    say "nginx already runs"
  else
    write_nginx_conf
    if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null \
       || (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "port $port is taken by another program; set SHOAL_HTTP_PORT to use another"
    fi
    nginx -c "$state/nginx.conf" -p "$state" -g 'daemon on;' \
      || die "nginx failed; see $state/nginx-error.log"
  fi
  wait_http "http://127.0.0.1:$port/nginx-health" 10 || die "nginx does not answer on :$port"
  wait_http "http://127.0.0.1:$port/readyz" 10 || die "nginx answers but no node behind it does"
  cat <<MSG
stack up: node1 node2 node3 (a cluster of plain processes) behind nginx on http://localhost:$port
each node watches this host's Docker engine; the fleet shows each container once; logs: make logs
try:  curl localhost:$port/v1/containers/<name>     or   $bin get <name>
      curl localhost:$port/v1/nodes                 or   $bin nodes
jobs (containers the fleet creates) need the API token in $state/api-token:
      export SHOAL_API_TOKEN=\$(cat $state/api-token)
      curl -s localhost:$port/jrpc -H "Authorization: Bearer \$SHOAL_API_TOKEN" -d \\
        '{"jsonrpc":"2.0","id":1,"method":"ContainerService.Create","params":[{"image":"IMAGE","arguments":["sleep","300"]}]}'
      $bin run --wait IMAGE sleep 300   (IMAGE: any image this host's Docker has; nothing is pulled)
stop: make down-local
MSG
}

stop_pid() { # pidfile name
  local pidf=$1 name=$2
  if alive "$pidf"; then
    local pid; pid=$(cat "$pidf")
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then say "$name did not stop in 10 s; killing it"; kill -KILL "$pid"; fi
    say "stopped $name"
  fi
  rm -f "$pidf"
}

down() {
  if alive "$state/nginx.pid"; then
    nginx -c "$state/nginx.conf" -p "$state" -s quit 2>/dev/null || stop_pid "$state/nginx.pid" nginx
    for _ in $(seq 1 50); do alive "$state/nginx.pid" || break; sleep 0.1; done
    say "stopped nginx"
  fi
  for i in "${nodes[@]}"; do stop_pid "$state/node$i.pid" "node$i"; done
}

status() {
  for i in "${nodes[@]}"; do
    if alive "$state/node$i.pid"; then echo "node$i: running (pid $(cat "$state/node$i.pid"))"; else echo "node$i: stopped"; fi
  done
  if alive "$state/nginx.pid"; then echo "nginx: running on :$port"; else echo "nginx: stopped"; fi
}

logs() {
  local files=()
  for i in "${nodes[@]}"; do [ -f "$state/node$i.log" ] && files+=("$state/node$i.log"); done
  [ -f "$state/nginx-access.log" ] && files+=("$state/nginx-access.log")
  [ ${#files[@]} -gt 0 ] || die "no logs: is the stack up (make up)?"
  exec tail -n 50 -F "${files[@]}"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  logs) logs ;;
  *) echo "usage: $0 up|down|status|logs" >&2; exit 2 ;;
esac
