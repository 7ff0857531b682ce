#!/usr/bin/env bash
# Makes sure the containerd engine tests can run: containerd, ctr, its runc
# shim and runc, and ip (iproute2) for the network namespaces they make.
# Installs Debian's packages where something is missing; starts nothing
# (each test starts its own containerd with its own root, state and socket).
set -euo pipefail

me=ensure-containerd
say() { echo "$me: $*" >&2; }

missing=()
for tool in containerd ctr containerd-shim-runc-v2; do
  command -v "$tool" >/dev/null || { missing+=(containerd); break; }
done
command -v runc >/dev/null || missing+=(runc)
command -v ip >/dev/null || missing+=(iproute2)
[ ${#missing[@]} -eq 0 ] && exit 0

say "installing ${missing[*]} (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { say "apt-get install ${missing[*]} failed"; exit 1; }
