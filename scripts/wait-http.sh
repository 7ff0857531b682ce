#!/usr/bin/env bash
# Waits until a URL answers 2xx: scripts/wait-http.sh URL SECONDS
set -euo pipefail
url=$1 deadline=$((SECONDS + ${2:-30}))
until curl -fs -o /dev/null --max-time 2 "$url"; do
  if [ $SECONDS -ge $deadline ]; then
    echo "wait-http: $url did not answer in ${2:-30} s" >&2
    exit 1
  fi
  sleep 0.3
done
