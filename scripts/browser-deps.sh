#!/usr/bin/env bash
# Makes sure the web view's browser test can run: Debian's chromium and
# chromium-driver, and selenium from PyPI in target/web-venv. Prints the
# venv's python.
set -euo pipefail

me=browser-deps
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/target/web-venv"
selenium_version=4.51.0
say() { echo "$me: $*" >&2; }

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  say "installing chromium and chromium-driver (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
    || { say "apt-get install chromium chromium-driver failed"; exit 1; }
fi
if ! "$venv/bin/python" -c "import selenium, sys; sys.exit(selenium.__version__ != '$selenium_version')" 2>/dev/null; then
  say "installing selenium $selenium_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "selenium==$selenium_version"
fi
echo "$venv/bin/python"
