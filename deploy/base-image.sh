#!/usr/bin/env bash
# Builds the base images locally, for machines that reach no image registry:
#   shoal/debian:bookworm-slim   Debian 12 minbase (what debian:bookworm-slim is)
#   shoal/nginx-base:bookworm    the same plus Debian's nginx-light
#   shoal/postgres-base:bookworm the same plus Debian's postgresql (15)
# with debootstrap from the machine's own Debian mirror (the one apt uses)
# and `docker import`. With a registry, the Dockerfiles use the standard
# base images unchanged and this script is not needed.
#   deploy/base-image.sh [--force]
set -euo pipefail

me=base-image
base=shoal/debian:bookworm-slim
nginx_base=shoal/nginx-base:bookworm
postgres_base=shoal/postgres-base:bookworm
force=${1:-}

say() { echo "$me: $*" >&2; }
die() { say "$*"; exit 1; }

have() { [ "$force" != "--force" ] && docker image inspect "$1" >/dev/null 2>&1; }

if have "$base" && have "$nginx_base" && have "$postgres_base"; then
  say "$base, $nginx_base and $postgres_base are there (--force rebuilds)"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap (Debian package)"
  apt-get install -y -qq debootstrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
fi

# The mirror apt already uses on this machine.
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || die "no Debian mirror found in the apt sources of this machine"

work=$(mktemp -d /var/tmp/shoal-base.XXXXXX)
cleanup() {
  for m in proc sys dev/pts dev; do umount "$work/rootfs/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
rootfs="$work/rootfs"

say "debootstrap bookworm (minbase) from the machine's mirror; this takes a few minutes"
debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

slim() { # what debian:bookworm-slim leaves out
  rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb \
    "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/* "$1"/var/log/*.log
}

import() { # rootfs image
  tar --numeric-owner -C "$1" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "debootstrap bookworm minbase (deploy/base-image.sh)" - "$2" >/dev/null
  say "built $2"
}

slim "$rootfs"
import "$rootfs" "$base"

# A package inside a copy of the same tree, without starting any service.
with_package() { # image package... ; the tree is copied first
  local image=$1 tree="$work/tree-$RANDOM"
  shift
  cp -a "$rootfs" "$tree"
  printf '#!/bin/sh\nexit 101\n' > "$tree/usr/sbin/policy-rc.d"
  chmod +x "$tree/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$tree/etc/resolv.conf"
  chroot "$tree" apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive chroot "$tree" apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "installing $* in the image failed"
  rm -f "$tree/usr/sbin/policy-rc.d"
  : > "$tree/etc/resolv.conf"
  slim "$tree"
  import "$tree" "$image"
  rm -rf "$tree"
}

with_package "$nginx_base" nginx-light
# Debian's server. The cluster its package makes is not used: the image's
# entrypoint makes its own in the data volume.
with_package "$postgres_base" postgresql

