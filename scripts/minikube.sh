#!/usr/bin/env bash
# shoal on minikube:
#   scripts/minikube.sh up     build the images into minikube, apply the manifests
#                              for its runtime, wait for the rollout,
#                              port-forward localhost:8080
#   scripts/minikube.sh down   stop the port-forward and delete what was applied
# Needs minikube and kubectl. A minikube it starts uses MINIKUBE_RUNTIME
# (docker, the default, or containerd). On the Docker runtime the
# DaemonSet of k8s/ watches each host's Docker engine; on containerd, the
# overlay deploy/k8s-containerd watches containerd (hostPID, its socket
# read-only).
set -euo pipefail

me=minikube
root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/target/minikube"
port=${SHOAL_HTTP_PORT:-8080}
profile=${MINIKUBE_PROFILE:-minikube}
start_runtime=${MINIKUBE_RUNTIME:-docker}

say() { echo "$me: $*" >&2; }
die() { say "$*"; exit 1; }

need() { command -v "$1" >/dev/null || die "$1 is not installed: $2"; }

up() {
  need minikube "see the minikube documentation to install it"
  need kubectl "install kubectl, or use 'minikube kubectl --'"
  [ -x "$root/target/release/shoal" ] || die "build first: make build"
  if ! minikube -p "$profile" status >/dev/null 2>&1; then
    say "starting minikube ($profile) with the $start_runtime runtime"
    minikube -p "$profile" start --container-runtime="$start_runtime"
  fi
  runtime=$(kubectl get nodes -o jsonpath='{.items[0].status.nodeInfo.containerRuntimeVersion}')
  case "$runtime" in
    docker://*)
      manifests="$root/k8s"
      say "building the images into minikube's engine"
      eval "$(minikube -p "$profile" docker-env)" ;;
    containerd://*)
      manifests="$root/deploy/k8s-containerd"
      say "building the images here, then loading them into minikube's containerd" ;;
    *) die "minikube runs $runtime; shoal watches Docker or containerd (minikube start --container-runtime=docker or containerd)" ;;
  esac
  mkdir -p "$state" && echo "$manifests" > "$state/manifests"
  base=${BASE_IMAGE:-}
  nginx_base=${NGINX_BASE_IMAGE:-}
  if [ -z "$base" ]; then
    # No registry assumed: the local bases, imported into minikube's engine.
    bash "$root/deploy/base-image.sh"
    base=shoal/debian:bookworm-slim nginx_base=shoal/nginx-base:bookworm
  fi
  docker build -q -f "$root/deploy/Dockerfile" --build-arg BASE_IMAGE="$base" -t shoal/node:latest "$root" >/dev/null
  docker build -q -f "$root/deploy/nginx.Dockerfile" --build-arg BASE_IMAGE="${nginx_base:-$base}" -t shoal/nginx:latest "$root" >/dev/null
  if [ "$manifests" != "$root/k8s" ]; then
    minikube -p "$profile" image load shoal/node:latest
    minikube -p "$profile" image load shoal/nginx:latest
  fi
  # The Secret's source, written once and kept: see README, "The cluster secret".
  bash "$root/scripts/cluster-secret.sh" "$root/k8s/cluster-secret"
  # The API token that creating a job needs, in the same Secret; kept too.
  bash "$root/scripts/api-token.sh" "$root/k8s/api-token"
  kubectl apply -k "$manifests"
  # A re-run picks up rebuilt images.
  kubectl -n shoal rollout restart daemonset/shoal-node deployment/shoal-nginx >/dev/null
  kubectl -n shoal rollout status daemonset/shoal-node --timeout=180s
  kubectl -n shoal rollout status deployment/shoal-nginx --timeout=120s
  mkdir -p "$state"
  stop_forward
  kubectl -n shoal port-forward service/shoal-nginx "$port:8080" >"$state/port-forward.log" 2>&1 &
  echo $! > "$state/port-forward.pid"
  bash "$root/scripts/wait-http.sh" "http://127.0.0.1:$port/readyz" 60 \
    || die "port-forward does not answer; see $state/port-forward.log"
  cat <<MSG
shoal runs on minikube; nginx is forwarded to http://localhost:$port
try:  curl localhost:$port/v1/nodes
      curl localhost:$port/v1/containers/<name>     (any container on minikube's engine)
jobs (Docker runtime only; IMAGE: one minikube's engine has, nothing is pulled), with the API token:
      export SHOAL_API_TOKEN=\$(cat $root/k8s/api-token)
      curl -s localhost:$port/v1/jobs -H "Authorization: Bearer \$SHOAL_API_TOKEN" \\
        -d '{"image":"IMAGE","arguments":["sleep","300"]}'
stop: make minikube-down
MSG
}

stop_forward() {
  local pidf="$state/port-forward.pid"
  if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
    kill "$(cat "$pidf")" && say "stopped the port-forward"
  fi
  rm -f "$pidf"
}

down() {
  stop_forward
  need kubectl "install kubectl, or use 'minikube kubectl --'"
  # What `up` applied: k8s/, or the overlay for containerd.
  kubectl delete -k "$(cat "$state/manifests" 2>/dev/null || echo "$root/k8s")" --ignore-not-found
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
