#!/usr/bin/env bash
# Builds the tiny test image shoal-test/busybox:latest from Debian's
# busybox-static package and `docker import`s it: no registry is needed.
#   scripts/test-image.sh [--force]
# Honours DOCKER_HOST, so the same script imports into an extra engine.
# The root file system tarball is kept in target/test-image/ and reused.
set -euo pipefail

me=test-image
image=shoal-test/busybox:latest
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/target/test-image"
tar="$out/busybox-rootfs.tar"
force=${1:-}

say() { echo "$me: $*" >&2; }
die() { say "$*"; exit 1; }

command -v docker >/dev/null || die "the docker CLI is missing: run scripts/ensure-docker.sh"

if [ "$force" != "--force" ] && docker image inspect "$image" >/dev/null 2>&1; then
  docker image inspect -f '{{.Id}}' "$image"
  exit 0
fi

if [ ! -s "$tar" ] || [ "$force" = "--force" ]; then
  mkdir -p "$out"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # apt-get download runs as the _apt user where it can: give it a folder
  # it may write to.
  chmod 777 "$work"
  if ! (cd "$work" && apt-get download busybox-static >/dev/null 2>&1); then
    say "apt-get download failed; updating the package lists and trying again"
    apt-get update -qq >/dev/null
    (cd "$work" && apt-get download busybox-static >/dev/null) || die "cannot download busybox-static"
  fi
  dpkg-deb -x "$work"/busybox-static_*.deb "$work/pkg"
  rootfs="$work/rootfs"
  mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev,var/run}
  chmod 1777 "$rootfs/tmp"
  cp "$work/pkg/bin/busybox" "$rootfs/bin/busybox"
  # One link per applet, where busybox itself would put it.
  for applet in $("$rootfs/bin/busybox" --list-full); do
    [ "$applet" = bin/busybox ] && continue
    mkdir -p "$rootfs/$(dirname "$applet")"
    ln -sf /bin/busybox "$rootfs/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
  tar --numeric-owner -C "$rootfs" -cf "$tar.tmp" .
  mv "$tar.tmp" "$tar"
  say "built $tar"
fi

docker import --change 'CMD ["sh"]' --message "shoal test image (Debian busybox-static)" "$tar" "$image" >/dev/null
docker image inspect -f '{{.Id}}' "$image"
