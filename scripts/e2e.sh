#!/usr/bin/env bash
# The compose stack end to end, through nginx on localhost:8080 (or
# $SHOAL_HTTP_PORT): the cache-inventory scenario (name -> IP -> the same
# container, on the default bridge and on a 192.168.0.0/16 network), every
# node serving, lookups surviving a stopped node, and a teardown that
# leaves no container, network or volume behind; the fleet watch through
# nginx (curl and `shoal watch`) and the web view in chromium (selenium,
# scripts/web_test.py; its screenshot in target/web-test/). Needs the images
# (make images) and the test image (scripts/test-image.sh). Also: the
# nodes run with the cluster secret of .shoal/cluster-secret (written as
# `make up` does) and nginx never lets a request through to the peer API;
# and deploy/compose-containerd.yml's node4 watching a plain containerd this
# script starts (its own root, state and socket; stopped by PID). Jobs, as
# a new user runs one: with the API token of .shoal/api-token, the
# JSON-RPC ContainerService.Create through :8080, its Status asked of two
# nodes directly until it runs, its container found through :8080; the
# same Create without the token is a 401 and creates nothing.
set -euo pipefail

me=e2e
root=$(cd "$(dirname "$0")/.." && pwd)
port=${SHOAL_HTTP_PORT:-8080}
project=shoal-e2e
net=shoal-e2e-testnet
image=shoal-test/busybox:latest
compose=$(command -v docker-compose >/dev/null && echo docker-compose || echo "docker compose")
base="http://127.0.0.1:$port"
export DOCKER_GID=${DOCKER_GID:-$(stat -c %g /var/run/docker.sock)}

say() { echo "$me: $*" >&2; }
passed=0
ok() { say "ok: $*"; passed=$((passed + 1)); }
fail() { say "FAILED: $*"; exit 1; }

# The jobs this run created (their containers are the engine's, not
# compose's: removed by their label).
job_ids=""
remove_jobs() {
  local id
  for id in $job_ids; do
    docker ps -aq --filter "label=shoal.job=$id" | xargs -r docker rm -f >/dev/null 2>&1 || true
  done
}
remove_stack() {
  remove_jobs
  $compose -p "$project" -f "$root/docker-compose.yml" down --remove-orphans -v >/dev/null 2>&1 || true
  remove_jobs
  docker rm -f bridge-cnt testnet-cnt >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
}
# The plain containerd of the containerd phase, its container and its
# network namespace.
ctrd_pid=""
ctr_netns=shoal-e2e-ctr
remove_containerd() {
  if [ -n "$ctrd_pid" ]; then
    ctr -a "$tmp/containerd/containerd.sock" -n shoale2e tasks delete --force ctr-web >/dev/null 2>&1 || true
    ctr -a "$tmp/containerd/containerd.sock" -n shoale2e containers delete ctr-web >/dev/null 2>&1 || true
    kill "$ctrd_pid" 2>/dev/null || true
    wait "$ctrd_pid" 2>/dev/null || true
    ctrd_pid=""
  fi
  ip link delete shoal-e2e-h >/dev/null 2>&1 || true
  ip netns delete "$ctr_netns" >/dev/null 2>&1 || true
}
teardown() {
  remove_stack
  remove_containerd
  rm -rf "$tmp"
}

# GET a path through nginx: prints "status node body".
get() {
  curl -s -m 5 -D "$tmp/h" -o "$tmp/b" -w '%{http_code}' -H 'cache-control: no-cache' "$base$1" || echo 000
}
json() { python3 -c "import json,sys; d=json.load(open('$tmp/b')); print($1)"; }

tmp=$(mktemp -d)
trap teardown EXIT
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  fail "port $port is taken (is \`make up\` running? \`make down\` first, or set SHOAL_HTTP_PORT)"
fi
remove_stack
# The 192.168.0.0/16 network first: the engine may hand a /20 of that range
# to the stack's own network otherwise.
docker network create --subnet 192.168.0.0/16 "$net" >/dev/null
bash "$root/scripts/cluster-secret.sh" "$root/.shoal/cluster-secret" "$DOCKER_GID"
bash "$root/scripts/history-url.sh" "$root/.shoal/postgres-password" "$root/.shoal/history-url" "$DOCKER_GID"
bash "$root/scripts/api-token.sh" "$root/.shoal/api-token" "$DOCKER_GID"
$compose -p "$project" -f "$root/docker-compose.yml" up -d >/dev/null 2>&1 \
  || { $compose -p "$project" -f "$root/docker-compose.yml" logs --tail 20 >&2; fail "compose up"; }
bash "$root/scripts/wait-http.sh" "$base/readyz" 60 || fail "nothing ready behind nginx"
say "stack up on :$port"

docker run -d --name bridge-cnt "$image" sleep 600 >/dev/null
docker run -d --name testnet-cnt --network "$net" "$image" sleep 600 >/dev/null

for pair in bridge-cnt:bridge "testnet-cnt:$net"; do
  name=${pair%%:*} network=${pair#*:}
  for _ in $(seq 1 100); do [ "$(get "/v1/containers/$name")" = 200 ] && break; sleep 0.1; done
  [ "$(get "/v1/containers/$name")" = 200 ] || {
    cat "$tmp/h" "$tmp/b" >&2 || true
    $compose -p "$project" -f "$root/docker-compose.yml" logs --tail 30 >&2
    fail "$name not found through :$port"
  }
  id=$(json "d['containers'][0]['id']")
  ip=$(json "d['containers'][0]['networks']['$network']['ip']")
  [ "$id" = "$(docker inspect -f '{{.Id}}' "$name")" ] || fail "$name: wrong id $id"
  [ "$ip" = "$(docker inspect -f "{{(index .NetworkSettings.Networks \"$network\").IPAddress}}" "$name")" ] || fail "$name: wrong ip $ip"
  [ "$(get "/v1/containers/$ip")" = 200 ] || fail "$ip not found"
  [ "$(json "len(d['containers'])")" = 1 ] || fail "$ip matches more than one container"
  [ "$(json "d['containers'][0]['id']")" = "$id" ] || fail "$name -> $ip -> another container"
  ok "$name -> $ip -> the same container ($network)"
done
case "$ip" in 192.168.*) ;; *) fail "testnet-cnt has $ip, not an address of 192.168.0.0/16" ;; esac

# Every node serves (nginx spreads requests over them).
seen=""
for _ in $(seq 1 60); do
  get /v1/containers/bridge-cnt >/dev/null
  node=$(awk -F': ' 'tolower($1)=="x-shoal-node" {print $2}' "$tmp/h" | tr -d '\r')
  case " $seen " in *" $node "*) ;; *) seen="$seen $node" ;; esac
done
for n in node1 node2 node3; do
  case " $seen " in *" $n "*) ;; *) fail "$n never answered (seen:$seen)" ;; esac
done
ok "every node served (seen:$seen)"

# The fleet watch through nginx: a container started and removed arrives
# as added then removed, to a raw SSE client and to `shoal watch`.
watched=e2e-watched-$$
curl -sN -m 30 "$base/v1/watch?name=$watched" > "$tmp/sse" 2>/dev/null &
curl_pid=$!
"$root/target/release/shoal" --server "127.0.0.1:$port" watch --name "$watched" -o json > "$tmp/cli" 2>"$tmp/cli.err" &
cli_pid=$!
for _ in $(seq 1 50); do grep -q '^event: synced' "$tmp/sse" && grep -q '"synced"' "$tmp/cli" && break; sleep 0.1; done
grep -q '^event: synced' "$tmp/sse" || fail "no synced event through :$port: $(head -c 300 "$tmp/sse")"
started=$(date +%s%N)
docker run -d --name "$watched" "$image" sleep 600 >/dev/null
for _ in $(seq 1 100); do grep -q '^event: added' "$tmp/sse" && break; sleep 0.05; done
added_ms=$((($(date +%s%N) - started) / 1000000))
docker rm -f "$watched" >/dev/null
for _ in $(seq 1 100); do grep -q '^event: removed' "$tmp/sse" && grep -q '"type":"removed"' "$tmp/cli" && break; sleep 0.05; done
kill "$curl_pid" "$cli_pid" 2>/dev/null || true
wait "$curl_pid" "$cli_pid" 2>/dev/null || true
events=$(grep '^event: ' "$tmp/sse" | sort | uniq -c | tr -s ' ' | tr '\n' ';')
grep -q '^event: added' "$tmp/sse" && grep -q '^event: removed' "$tmp/sse" \
  || fail "the watch through :$port did not see $watched come and go: $events"
grep -q '"type":"added"' "$tmp/cli" && grep -q '"type":"removed"' "$tmp/cli" \
  || fail "shoal watch did not see $watched come and go: $(cat "$tmp/cli" "$tmp/cli.err" | head -c 400)"
ok "a container started and removed: added (${added_ms} ms after docker run) then removed, through :$port by curl and by shoal watch ($events)"

# The web view in a real browser, through nginx.
# A lone node of 10,000 synthetic containers beside it: the page must stay
# usable (only the visible rows drawn).
web_python=$(bash "$root/scripts/browser-deps.sh")
mkdir -p "$root/target/web-test"
big_port=17199
"$root/target/release/shoal" node --data-dir "$tmp/big-data" --engine synthetic --synthetic-count 10000 --node-id big \
  --listen "127.0.0.1:$big_port" > "$tmp/big.log" 2>&1 &
big_pid=$!
bash "$root/scripts/wait-http.sh" "http://127.0.0.1:$big_port/readyz" 30 || fail "the 10,000-container node did not start"
"$web_python" "$root/scripts/web_test.py" "$base" bridge-cnt "$image" "$root/target/web-test/shoal-web.png" \
  "http://127.0.0.1:$big_port" 10000 \
  || { kill "$big_pid"; fail "the web view (screenshot: target/web-test/shoal-web.png)"; }
kill "$big_pid"; wait "$big_pid" 2>/dev/null || true
ok "the web view in chromium through :$port: live rows, a container's row comes and goes without a reload, search by IP (target/web-test/shoal-web.png)"

# Every node runs with the secret, which shows nowhere in `docker inspect`;
# nor does the API token.
secret=$(cat "$root/.shoal/cluster-secret")
token=$(cat "$root/.shoal/api-token")
for n in node1 node2 node3; do
  exec_out=$($compose -p "$project" -f "$root/docker-compose.yml" exec -T "$n" bash -c \
    'exec 3<>/dev/tcp/127.0.0.1/7070 && printf "GET /v1/nodes HTTP/1.0\r\n\r\n" >&3 && cat <&3')
  case "$exec_out" in *'"peer_auth":"hmac"'*) ;; *) fail "$n does not check peer requests: $exec_out" ;; esac
  cid=$($compose -p "$project" -f "$root/docker-compose.yml" ps -q "$n")
  docker inspect "$cid" | grep -qF "$secret" && fail "$n: the secret shows in docker inspect"
  docker inspect "$cid" | grep -qF "$token" && fail "$n: the API token shows in docker inspect"
done
ok "every node checks peer requests (peer_auth hmac); neither the secret nor the API token is in docker inspect"

# Jobs, as the README shows them to a new user. First without the token:
# 401, and no job, no container.
create='{"jsonrpc":"2.0","id":1,"method":"ContainerService.Create","params":[{"image":"'"$image"'","arguments":["sleep","300"],"resources":{"memory":"64m"},"env":{"A":"1"}}]}'
jrpc() { # BODY [curl args...]: POST /jrpc through nginx; prints the HTTP status, the body in $tmp/b
  local body=$1; shift
  curl -s -m 10 -D "$tmp/h" -o "$tmp/b" -w '%{http_code}' -H 'content-type: application/json' "$@" \
    --data-binary "$body" "$base/jrpc" || echo 000
}
node_jrpc() { # NODE BODY: POST /jrpc to that node itself, from inside its container; prints the body
  $compose -p "$project" -f "$root/docker-compose.yml" exec -T "$1" bash -c \
    'exec 3<>/dev/tcp/127.0.0.1/7070 && printf "POST /jrpc HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" "${#1}" "$1" >&3 && cat <&3' \
    _ "$2" | sed '1,/^\r\{0,1\}$/d'
}
job_containers() { docker ps -aq --filter label=shoal.job | wc -l; }
jobs_before=$(job_containers)
code=$(jrpc "$create")
[ "$code" = 401 ] || fail "ContainerService.Create without the token through :$port answered $code, not 401: $(head -c 300 "$tmp/b")"
grep -q '"error"' "$tmp/b" || fail "the 401 carries no JSON-RPC error: $(head -c 300 "$tmp/b")"
code=$(jrpc "$create" -H "Authorization: Bearer not-the-token-of-this-stack")
[ "$code" = 401 ] || fail "ContainerService.Create with a wrong token answered $code, not 401: $(head -c 300 "$tmp/b")"
sleep 1
[ "$(job_containers)" = "$jobs_before" ] || fail "a Create without the token made a container: $(docker ps -a --filter label=shoal.job)"
[ "$(get /v1/jobs)" = 200 ] || fail "GET /v1/jobs through :$port: $(head -c 300 "$tmp/b")"
[ "$(json "len(d['jobs'])")" = 0 ] || fail "a Create without the token made a job: $(head -c 300 "$tmp/b")"
ok "ContainerService.Create through :$port without the API token, or with another: 401, no job, no container"

# With the token: the job is created, its status is the same at two nodes
# asked directly, it runs, and its container is found through :$port.
code=$(jrpc "$create" -H "Authorization: Bearer $token")
[ "$code" = 200 ] || fail "ContainerService.Create with the token through :$port answered $code: $(head -c 300 "$tmp/b")"
job=$(json "d['result']['job_id']")
[ -n "$job" ] && [ "$job" != None ] || fail "no job_id in $(head -c 300 "$tmp/b")"
job_ids="$job_ids $job"
[ "$(json "d['result']['message']")" = "Job created successfully" ] || fail "Create said $(head -c 300 "$tmp/b")"
status_body='{"jsonrpc":"2.0","id":2,"method":"ContainerService.Status","params":[{"job_id":"'"$job"'"}]}'
# The answer's stable part, as one line: the two nodes must agree on it.
status_of() { # NODE
  node_jrpc "$1" "$status_body" | python3 -c '
import json, sys
raw = sys.stdin.read()
try:
    r = json.loads(raw)["result"]
except Exception:
    print("unreadable:", raw[:300].replace("\n", " ")); sys.exit()
print(" ".join(f"{k}={r.get(k)}" for k in ("job_id", "status", "node", "container_id", "container_name", "image", "created_at", "error")))'
}
said1="" said3=""
for _ in $(seq 1 150); do
  said1=$(status_of node1) said3=$(status_of node3)
  case "$said1" in *" status=running "*) [ "$said1" = "$said3" ] && break ;; *" status=failed "*|*" status=exited "*) break ;; esac
  sleep 0.2
done
case "$said1" in *" status=running "*) ;; *) fail "job $job never ran; node1 says: $said1" ;; esac
[ "$said1" = "$said3" ] || fail "node1 and node3 disagree on job $job: node1: $said1; node3: $said3"
job_node=$(sed -n 's/.* node=\([^ ]*\) .*/\1/p' <<<"$said1")
container_id=$(sed -n 's/.* container_id=\([^ ]*\) .*/\1/p' <<<"$said1")
case "$job_node" in node1|node2|node3) ;; *) fail "job $job placed on ${job_node:-nothing}: $said1" ;; esac
name=shoal-job-$job
[ "$(docker inspect -f '{{.Id}} {{index .Config.Labels "shoal.job"}} {{.HostConfig.Memory}}' "$name" 2>&1)" = "$container_id $job 67108864" ] \
  || fail "$name: $(docker inspect -f '{{.Id}} {{.Config.Labels}} {{.HostConfig.Memory}}' "$name" 2>&1), not $container_id with label shoal.job=$job and 64m"
docker inspect -f '{{json .Config.Env}}' "$name" | grep -q '"A=1"' || fail "$name: env $(docker inspect -f '{{json .Config.Env}}' "$name")"
[ "$(get "/v1/jobs/$job")" = 200 ] && [ "$(json "d['status']")" = running ] \
  || fail "GET /v1/jobs/$job through :$port: $(head -c 300 "$tmp/b")"
for _ in $(seq 1 100); do [ "$(get "/v1/containers/$name")" = 200 ] && break; sleep 0.1; done
[ "$(get "/v1/containers/$name")" = 200 ] && [ "$(json "d['containers'][0]['id']")" = "$container_id" ] \
  || fail "$name through :$port: $(head -c 300 "$tmp/b")"
"$root/target/release/shoal" --server "127.0.0.1:$port" get "$name" > "$tmp/job-get" 2>&1 \
  && grep -q "$name" "$tmp/job-get" || fail "shoal get $name: $(cat "$tmp/job-get")"
ok "job $job created through :$port with the API token, placed on $job_node; node1 and node3 asked directly both say running in ${container_id:0:12}; $name (label shoal.job, 64m, env) found by curl and shoal get through :$port"
remove_jobs
job_ids=""

# The peer API through nginx: refused by nginx itself, never by a node.
# Requests a node refused would count as non-2xx in its metrics.
node_errors() { # non-2xx requests the three nodes have answered, all routes
  local n total=0 c
  for n in node1 node2 node3; do
    c=$($compose -p "$project" -f "$root/docker-compose.yml" exec -T "$n" bash -c \
      'exec 3<>/dev/tcp/127.0.0.1/7070 && printf "GET /metrics HTTP/1.0\r\n\r\n" >&3 && cat <&3' \
      | awk '/^shoal_http_requests_total\{/ && !/status="2/ {s += $NF} END {print s + 0}')
    total=$((total + c))
  done
  echo "$total"
}
nginx_body='{"error":{"code":"not_found","message":"the peer API (/_shoal/) is not served through this proxy"}}'
before=$(node_errors)
probes=(
  "POST /_shoal/v1/publish"
  "POST /_shoal/v1/digest"
  "GET /_shoal/v1/lookup/name/bridge-cnt"
  "GET /_shoal/v1/ping"
  "POST /%5Fshoal/v1/publish"
  "POST //_shoal/v1/publish"
  "POST /v1/../_shoal/v1/publish"
)
for probe in "${probes[@]}"; do
  method=${probe%% *} path=${probe#* }
  body=()
  [ "$method" = POST ] && body=(-H 'content-type: application/octet-stream' --data-binary 'not a publish')
  # --path-as-is: the dot segments reach nginx as written.
  code=$(curl -s -m 5 --path-as-is -X "$method" "${body[@]}" -D "$tmp/h" -o "$tmp/b" -w '%{http_code}' "$base$path" || echo 000)
  [ "$code" = 404 ] || fail "$probe through :$port answered $code: $(cat "$tmp/b")"
  [ "$(cat "$tmp/b")" = "$nginx_body" ] || fail "$probe: not nginx's answer: $(cat "$tmp/b")"
  grep -qi '^x-shoal-node:' "$tmp/h" && fail "$probe: a node answered ($(grep -i '^x-shoal-node:' "$tmp/h"))"
done
# The access log names the upstream of each request: none for these. It
# is buffered for up to a second.
sleep 1.5
nginx_log=$($compose -p "$project" -f "$root/docker-compose.yml" logs --no-color nginx 2>/dev/null | grep -E '"(GET|POST) /+(v1/\.\./)?(_|%5F)shoal/' || true)
[ "$(grep -c . <<<"$nginx_log")" -ge "${#probes[@]}" ] || fail "nginx logged fewer peer-API probes than sent: $nginx_log"
grep -v 'upstream=- ' <<<"$nginx_log" && fail "nginx passed a peer-API request to a node"
after=$(node_errors)
[ "$after" = "$before" ] || fail "the nodes answered $((after - before)) more refusals during the probes"
ok "${#probes[@]} peer-API requests through :$port: 404 from nginx, no upstream, no node saw one ($before refusals before and after)"

# A host's containerd beside Docker (deploy/compose-containerd.yml): a
# plain containerd of this run's own, a container made with ctr in a
# network namespace made here, and node4 joining the stack to watch it.
# nginx knows node1-3 only: they answer it from node4's publishes.
mkdir -p "$tmp/containerd"
cat > "$tmp/containerd/config.toml" <<EOF
version = 2
root = "$tmp/containerd/root"
state = "$tmp/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$tmp/containerd/containerd.sock"
[ttrpc]
  address = "$tmp/containerd/containerd.sock.ttrpc"
EOF
containerd --config "$tmp/containerd/config.toml" >"$tmp/containerd/log" 2>&1 &
ctrd_pid=$!
ctr=(ctr -a "$tmp/containerd/containerd.sock" -n shoale2e)
for _ in $(seq 1 100); do "${ctr[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
"${ctr[@]}" images import --snapshotter native "$(bash "$root/scripts/oci-image.sh")" >/dev/null \
  || fail "ctr images import failed: $(tail -3 "$tmp/containerd/log")"
ip netns add "$ctr_netns"
ip link add shoal-e2e-h type veth peer name shoal-e2e-c
ip link set shoal-e2e-c netns "$ctr_netns"
ip netns exec "$ctr_netns" ip addr add 10.215.0.2/24 dev shoal-e2e-c
ip netns exec "$ctr_netns" ip link set shoal-e2e-c up
"${ctr[@]}" run -d --snapshotter native --label nerdctl/name=ctr-web \
  --with-ns "network:/var/run/netns/$ctr_netns" "$image" ctr-web sleep 600 >/dev/null
CONTAINERD_SOCKET="$tmp/containerd/containerd.sock" CONTAINERD_NAMESPACES=shoale2e \
  $compose -p "$project" -f "$root/docker-compose.yml" -f "$root/deploy/compose-containerd.yml" up -d node4 >/dev/null 2>&1 \
  || fail "node4 (deploy/compose-containerd.yml) did not start"
found=""
for _ in $(seq 1 150); do
  if [ "$(get /v1/containers/ctr-web)" = 200 ] && [ "$(json 'd["containers"][0]["node"]')" = node4 ]; then
    found=$(json 'd["containers"][0]["id"]'); break
  fi
  sleep 0.2
done
[ -n "$found" ] || fail "ctr-web never showed up through :$port; node4 says: $($compose -p "$project" -f "$root/docker-compose.yml" -f "$root/deploy/compose-containerd.yml" logs --tail 5 node4 2>&1)"
code=$(get /v1/containers/10.215.0.2)
[ "$code" = 200 ] && [ "$(json 'd["containers"][0]["id"]')" = "$found" ] \
  || fail "10.215.0.2 answered $code, not ctr-web"
ok "a container of this host's containerd (ctr run, own network namespace) found through :$port by name and address, watched by node4"
remove_containerd

# History, as a new user asks it: a container ran and stopped; who had its
# address then? Answered through :$port from the stack's PostgreSQL; the
# answer outlives the database's container (its data is in the volume).
hist=e2e-hist-$$
docker run -d --name "$hist" --network "$net" "$image" sleep 600 >/dev/null
for _ in $(seq 1 100); do [ "$(get "/v1/containers/$hist")" = 200 ] && break; sleep 0.1; done
hip=$(json "d['containers'][0]['networks']['$net']['ip']")
sleep 1
then_ms=$(date +%s%3N)
sleep 1
docker stop -t 1 "$hist" >/dev/null
docker rm "$hist" >/dev/null
history_says() { # kinds of $hist's changes, and the source, through nginx
  [ "$(get "/v1/history?name=$hist")" = 200 ] || return 1
  json "' '.join(c['kind'] + ('=' + str(c['exit_code']) if 'exit_code' in c else '') for c in d['changes']) + ' from ' + d['source']"
}
for _ in $(seq 1 100); do history_says | grep -q removed && break; sleep 0.2; done
said=$(history_says || true)
case "$said" in
  *started*stopped=137*removed*" from postgres") ;;
  *) fail "the history of $hist through :$port: ${said:-nothing} ($(head -c 300 "$tmp/b"))" ;;
esac
asked_at() { # the name of who had $hip at $then_ms, from which store
  [ "$(get "/v1/containers/$hip?at=$then_ms")" = 200 ] || { head -c 300 "$tmp/b"; return 1; }
  json "d['containers'][0]['names'][0] + ' from ' + d['source']"
}
who=$(asked_at) || fail "who had $hip at $then_ms: $who"
[ "$who" = "$hist from postgres" ] || fail "who had $hip at $then_ms: $who"
[ "$(get "/v1/containers/$hip")" = 404 ] || fail "$hip still answers now that $hist is gone"
"$root/target/release/shoal" --server "127.0.0.1:$port" history "$hist" > "$tmp/hist" \
  && grep -q 'exit 137' "$tmp/hist" || fail "shoal history $hist: $(cat "$tmp/hist")"
$compose -p "$project" -f "$root/docker-compose.yml" rm -sf postgres >/dev/null 2>&1
$compose -p "$project" -f "$root/docker-compose.yml" up -d postgres >/dev/null 2>&1
who=""
for _ in $(seq 1 100); do who=$(asked_at 2>/dev/null) && break; sleep 0.2; done
[ "$who" = "$hist from postgres" ] || fail "after the database container was made anew: ${who:-no answer}"
ok "history through :$port from PostgreSQL: $hist ($said); $hip at $then_ms was $hist; the same after the database's container was replaced (volume kept)"

# Stop one node: lookups through nginx keep succeeding.
$compose -p "$project" -f "$root/docker-compose.yml" stop -t 1 node2 >/dev/null 2>&1
for i in $(seq 1 60); do
  for name in bridge-cnt testnet-cnt; do
    code=$(get "/v1/containers/$name")
    [ "$code" = 200 ] || fail "lookup $i of $name answered $code with node2 stopped"
  done
done
ok "120 lookups through :$port with node2 stopped, all 200"

remove_stack
trap - EXIT
rm -rf "$tmp"
left=$(docker ps -aq --filter "label=com.docker.compose.project=$project"; docker network ls -q --filter "name=${project}_"; docker volume ls -q --filter "label=com.docker.compose.project=$project")
[ -z "$left" ] || fail "left behind: $left"
docker ps -aq --filter name=bridge-cnt --filter name=testnet-cnt | grep -q . && fail "test containers left behind"
docker ps -aq --filter "label=shoal.job=$job" | grep -q . && fail "job $job's container left behind"
ok "torn down, nothing left behind"
echo "e2e: $passed passed, 0 failed"
