#!/usr/bin/env bash
# Makes sure the history store's tests can start a PostgreSQL of their own:
# Debian's postgresql (initdb, pg_ctl and postgres under
# /usr/lib/postgresql/<version>/bin) and its `postgres` user, which initdb
# runs as when the tests run as root. Starts nothing.
set -euo pipefail

me=ensure-postgres
say() { echo "$me: $*" >&2; }

if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && id postgres >/dev/null 2>&1; then
  exit 0
fi
say "installing postgresql (Debian package)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq postgresql >/dev/null 2>&1 || { say "apt-get install postgresql failed"; exit 1; }
