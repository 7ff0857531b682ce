#!/usr/bin/env bash
# Makes sure a Docker engine answers on the default socket: installs
# Debian's docker.io when dockerd is missing and starts dockerd when none
# answers. With --with-compose, also makes sure docker-compose exists.
#   scripts/ensure-docker.sh [--with-compose]
set -euo pipefail

me=ensure-docker
log=/var/log/shoal-dockerd.log

say() { echo "$me: $*" >&2; }
die() { say "$*"; exit 1; }

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq "$@" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
  fi
}

ensure_compose() {
  command -v docker-compose >/dev/null && return
  say "installing docker-compose (Debian package)"
  apt_install docker-compose
}

if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
  say "installing docker.io (Debian package)"
  apt_install docker.io
fi

if ! docker info >/dev/null 2>&1; then
  if [ -n "${DOCKER_HOST:-}" ]; then
    die "DOCKER_HOST=$DOCKER_HOST does not answer; unset it to use the local engine"
  fi
  say "no engine answers; starting dockerd (log: $log)"
  nohup dockerd >"$log" 2>&1 &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { tail -n 20 "$log" >&2; die "dockerd did not come up in 60 s"; }
  say "dockerd is up"
fi

[ "${1:-}" = "--with-compose" ] && ensure_compose
exit 0
