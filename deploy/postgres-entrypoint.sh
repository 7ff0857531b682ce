#!/usr/bin/env bash
# Starts PostgreSQL for shoal's history. On the first start, makes the
# cluster in $PGDATA (the volume) with the user `shoal` and database
# `shoal`, whose password is the file /run/shoal/postgres-password (make
# up writes it; it is in neither the image nor `docker inspect`). It then
# runs the server as the postgres user, as PID 1, so `docker stop` stops
# it cleanly. Connections from other hosts need the password
# (scram-sha-256); the socket, inside the container only, trusts.
set -euo pipefail

me=shoal-postgres
die() { echo "$me: $*" >&2; exit 1; }

password_file=${SHOAL_POSTGRES_PASSWORD_FILE:-/run/shoal/postgres-password}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
[ -x "$bin/postgres" ] || die "no PostgreSQL server in /usr/lib/postgresql"
[ "$(id -u)" = 0 ] || die "run as root: it makes the data directory the postgres user's, then runs as that user"

mkdir -p "$PGDATA"
chown postgres:postgres "$(dirname "$PGDATA")" "$PGDATA"
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -s "$password_file" ] || die "$password_file is missing or empty: it holds the password of the user shoal"
  pw=$(mktemp)
  tr -d '\n' < "$password_file" > "$pw"
  chown postgres "$pw"
  setpriv --reuid=postgres --regid=postgres --init-groups \
    "$bin/initdb" -D "$PGDATA" -U shoal --pwfile="$pw" -E UTF8 \
      --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pw"
  {
    echo "listen_addresses = '*'"
    echo "password_encryption = 'scram-sha-256'"
  } >> "$PGDATA/postgresql.conf"
  {
    echo "host  all all 0.0.0.0/0 scram-sha-256"
    echo "host  all all ::/0      scram-sha-256"
  } >> "$PGDATA/pg_hba.conf"
  # The database the nodes use, made once with the server on a private
  # socket only.
  sock=$(mktemp -d)
  chown postgres "$sock"
  setpriv --reuid=postgres --regid=postgres --init-groups \
    "$bin/pg_ctl" -D "$PGDATA" -w -o "-c listen_addresses='' -k $sock" start >/dev/null
  setpriv --reuid=postgres --regid=postgres --init-groups \
    "$bin/psql" -h "$sock" -U shoal -d postgres -v ON_ERROR_STOP=1 -q \
      -c "CREATE DATABASE shoal OWNER shoal" >/dev/null
  setpriv --reuid=postgres --regid=postgres --init-groups \
    "$bin/pg_ctl" -D "$PGDATA" -w -m fast stop >/dev/null
  rm -rf "$sock"
  echo "$me: made the cluster in $PGDATA (user and database shoal)" >&2
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
  "$bin/postgres" -D "$PGDATA" -k /tmp
