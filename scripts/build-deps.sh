#!/usr/bin/env bash
# Installs what building shoal needs beyond Rust: protoc (Debian's
# protobuf-compiler), which the containerd client's gRPC bindings are
# generated with at build time. Runs apt-get only when protoc is missing.
set -euo pipefail

me=build-deps
say() { echo "$me: $*" >&2; }

[ -n "${PROTOC:-}" ] && [ -x "$PROTOC" ] && exit 0
command -v protoc >/dev/null && exit 0
command -v apt-get >/dev/null || {
  say "protoc is missing and this is not a Debian-like host: install protobuf-compiler (protoc 3.12 or newer), or set PROTOC to its path"
  exit 1
}
say "installing protobuf-compiler (Debian package) for protoc"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq protobuf-compiler >/dev/null 2>&1 || { say "apt-get install protobuf-compiler failed"; exit 1; }
protoc --version >&2
