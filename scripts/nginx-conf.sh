#!/usr/bin/env bash
# Renders nginx/nginx.conf.template, the one source of every nginx
# configuration the repo ships or starts.
#   scripts/nginx-conf.sh render ABOUT LISTEN RUN_DIR ERROR_LOG ACCESS_LOG SERVER...
#       prints a rendering (the local stack and the benchmarks use this)
#   scripts/nginx-conf.sh shipped
#       rewrites the checked-in renderings: nginx/nginx.conf (compose, the
#       shoal/nginx image) and k8s/nginx.conf (the ConfigMap kustomize makes)
#   scripts/nginx-conf.sh check
#       fails when a checked-in rendering is not the template's, and lets
#       nginx -t read a rendering when nginx is installed
set -euo pipefail

me=nginx-conf
root=$(cd "$(dirname "$0")/.." && pwd)
template="$root/nginx/nginx.conf.template"

say() { echo "$me: $*" >&2; }

# ACCESS_LOG is a path, logged in the shoal format, or a whole access_log
# spec ("PATH shoal buffer=64k flush=1s").
render() { # about listen run_dir error_log access_log server...
  [ $# -ge 6 ] || { say "render needs ABOUT LISTEN RUN_DIR ERROR_LOG ACCESS_LOG SERVER..."; exit 2; }
  python3 - "$template" "$@" <<'PY'
import re, sys
template, about, listen, run_dir, error_log, access_log, *servers = sys.argv[1:]
text = open(template).read()
values = {
    "ABOUT": "\n".join("# " + line if line else "#" for line in about.split("\n")),
    "LISTEN": listen,
    "RUN_DIR": run_dir,
    "ERROR_LOG": error_log,
    "ACCESS_LOG": access_log if " " in access_log else f"{access_log} shoal",
    "SERVERS": "\n".join(f"        server {s} max_fails=2 fail_timeout=5s;" for s in servers),
}
for k, v in values.items():
    marker = f"@{k}@"
    if marker not in text:
        sys.exit(f"nginx-conf: the template has no {marker}")
    text = text.replace(marker, v)
left = re.findall(r"@[A-Z_]+@", text)
if left:
    sys.exit(f"nginx-conf: the template has placeholders nobody fills: {left}")
sys.stdout.write(text)
PY
}

# In a container the access log goes to stdout, so to the engine's log
# driver, which reads and wraps it line by line: written a line per
# request, it cost the engine (dockerd) about 8% of two cores under load
# with wrk. Buffered, lines go out 64 KiB or one second at a time.
container_log="/dev/stdout shoal buffer=64k flush=1s"

# The checked-in renderings: path, then render's arguments.
compose() {
  render "This rendering: docker-compose.yml's nodes (node1..node3 on 7070), baked
into the shoal/nginx image by deploy/nginx.Dockerfile." \
    8080 /tmp /dev/stderr "$container_log" node1:7070 node2:7070 node3:7070
}
k8s() {
  render "This rendering: Kubernetes, in front of the shoal-api service (every
ready node; the service spreads connections, nginx adds retries, short
timeouts and the access log). k8s/kustomization.yaml makes the ConfigMap
shoal-nginx of it." \
    8080 /tmp /dev/stderr "$container_log" shoal-api.shoal.svc.cluster.local:7070
}
shipped=("nginx/nginx.conf:compose" "k8s/nginx.conf:k8s")

case "${1:-}" in
  render) shift; render "$@" ;;
  shipped)
    for s in "${shipped[@]}"; do "${s#*:}" > "$root/${s%%:*}"; say "wrote ${s%%:*}"; done ;;
  check)
    bad=0
    for s in "${shipped[@]}"; do
      if ! diff -u "$root/${s%%:*}" <("${s#*:}") >&2; then
        say "${s%%:*} is not the rendering of nginx/nginx.conf.template: run scripts/nginx-conf.sh shipped"
        bad=1
      fi
    done
    if command -v nginx >/dev/null; then
      # The shipped renderings name hosts only their networks resolve; a
      # loopback rendering of the same template checks the syntax.
      tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
      render "syntax check" 127.0.0.1:1 "$tmp" "$tmp/error.log" "$tmp/access.log" 127.0.0.1:2 127.0.0.1:3 > "$tmp/nginx.conf"
      nginx -t -q -p "$tmp" -c "$tmp/nginx.conf" || { say "nginx -t refuses the template's rendering"; bad=1; }
    else
      say "nginx not installed: the template's syntax is not checked"
    fi
    [ "$bad" = 0 ] && say "every shipped nginx configuration is the template's rendering"
    exit "$bad" ;;
  *) echo "usage: $0 render ...|shipped|check" >&2; exit 2 ;;
esac
