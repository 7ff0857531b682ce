#!/usr/bin/env bash
# The cluster secret every node of a deployment shares (peer requests carry
# an HMAC of it). Writes a new random one to FILE unless FILE already holds
# one, so re-running keeps the fleet's secret.
#   scripts/cluster-secret.sh FILE [GROUP]
# Mode 0600; with GROUP (compose passes the engine socket's group, which the
# node containers run with) group-readable, 0640: whoever is in that group
# already controls the engine. To rotate, remove FILE and see README
# ("The cluster secret").
set -euo pipefail

me=cluster-secret
say() { echo "$me: $*" >&2; }
die() { say "$*"; exit 1; }

[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 FILE [GROUP]" >&2; exit 2; }
file=$1 group=${2:-}

# `docker-compose up` without the file makes an empty directory in its place.
if [ -d "$file" ]; then
  rmdir "$file" 2>/dev/null || die "$file is a directory, not a secret; remove it and run again"
fi
if [ ! -s "$file" ]; then
  mkdir -p "$(dirname "$file")"
  (
    umask 077
    # 32 random bytes, hex: 64 characters.
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$file.new"
    echo >> "$file.new"
    mv "$file.new" "$file"
  )
  say "wrote a new cluster secret to $file"
fi
if [ -n "$group" ]; then
  chgrp "$group" "$file" || die "cannot give $file to group $group (the node containers read it as that group)"
  chmod 0640 "$file"
else
  chmod 0600 "$file"
fi
