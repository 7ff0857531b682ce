#!/usr/bin/env bash
# The compose stack's history store: a random password for PostgreSQL's
# user shoal (PASSWORD_FILE, written once, kept across restarts) and the
# URL the nodes read it from (URL_FILE, rewritten from it). Both mode 0640
# with GROUP (the engine socket's group, which the node containers run
# with), else 0600, like the cluster secret.
#   scripts/history-url.sh PASSWORD_FILE URL_FILE [GROUP]
set -euo pipefail

[ $# -ge 2 ] && [ $# -le 3 ] || { echo "usage: $0 PASSWORD_FILE URL_FILE [GROUP]" >&2; exit 2; }
password_file=$1 url_file=$2 group=${3:-}
here=$(cd "$(dirname "$0")" && pwd)

# The same random hex and modes as the cluster secret.
bash "$here/cluster-secret.sh" "$password_file" "$group" 2>&1 | sed 's/cluster secret/history database password/' >&2
[ -d "$url_file" ] && rmdir "$url_file"
(
  umask 077
  printf 'postgres://shoal:%s@postgres:5432/shoal\n' "$(tr -d '\n' < "$password_file")" > "$url_file.new"
  mv "$url_file.new" "$url_file"
)
if [ -n "$group" ]; then
  chgrp "$group" "$url_file"
  chmod 0640 "$url_file"
fi
