#!/usr/bin/env bash
# make k8s-sim: the manifests' pods run as Docker containers, as a kubelet
# would run them (scripts/k8s_sim.py says how each part is stood in for),
# twice:
#   - k8s/ on 8 simulated nodes over this machine's Docker: every node
#     holds the Secret's API token (a Create without it is 401) and a job
#     created with it runs, the cache-inventory scenario through nginx's
#     Service, a node killed and a pod replaced while lookups run,
#     readiness, a removed container;
#   - deploy/k8s-containerd on 4 simulated hosts, each with a containerd of
#     its own whose socket sits where the host's would: the API token as
#     above, containers made with ctr (own network namespace; a
#     Kubernetes-style one in k8s.io) are found through nginx.
# Needs the images (make images) and the test images (make test-deps);
# installs dnsmasq-base and, into target/k8s-venv, PyYAML. K8S_SIM_NODES
# and K8S_SIM_CONTAINERD_NODES change the node counts.
set -euo pipefail

me=k8s-sim
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/target/k8s-venv"
say() { echo "$me: $*" >&2; }

for image in shoal/node:latest shoal/nginx:latest shoal-test/busybox:latest; do
  docker image inspect "$image" >/dev/null 2>&1 || { say "no image $image: make images test-deps first"; exit 1; }
done
if ! command -v dnsmasq >/dev/null; then
  say "installing dnsmasq-base (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq dnsmasq-base >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq dnsmasq-base >/dev/null; }
fi
if ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
  say "installing PyYAML into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "PyYAML==6.0.2"
fi
bash "$root/scripts/ensure-containerd.sh"
tar=$(bash "$root/scripts/oci-image.sh")

"$venv/bin/python" "$root/scripts/k8s_sim.py" --kustomization k8s \
  --nodes "${K8S_SIM_NODES:-8}" --scenario docker
"$venv/bin/python" "$root/scripts/k8s_sim.py" --kustomization deploy/k8s-containerd \
  --nodes "${K8S_SIM_CONTAINERD_NODES:-4}" --scenario containerd --image-tar "$tar"
