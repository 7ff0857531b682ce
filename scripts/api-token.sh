#!/usr/bin/env bash
# The API token a deployment's nodes share: creating a job (POST /v1/jobs,
# JSON-RPC ContainerService.Create) needs it as `Authorization: Bearer
# <token>`, and a node without one refuses job creation (403). Writes a new
# random one to FILE unless FILE already holds one, so re-running keeps it;
# the nodes read it from the file (--api-token-file, SHOAL_API_TOKEN_FILE).
#   scripts/api-token.sh FILE [GROUP]
# The same random hex (64 characters) and modes as the cluster secret:
# 0600, or 0640 with GROUP (compose passes the engine socket's group, which
# the node containers run with). To use it:
#   export SHOAL_API_TOKEN=$(cat FILE)
# To change it, remove FILE, run this again and restart the nodes.
set -euo pipefail

[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 FILE [GROUP]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)

bash "$here/cluster-secret.sh" "$@" 2>&1 | sed 's/cluster-secret:/api-token:/; s/cluster secret/API token/; s/ a secret/ a token/' >&2
