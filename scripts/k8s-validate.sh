#!/usr/bin/env bash
# Validates k8s/ offline against a pinned Kubernetes schema with
# kubernetes-validate (from PyPI, installed into target/k8s-venv): every
# manifest on its own, and the kustomize rendering when kubectl is there.
# Also checks that the kustomization lists exactly the manifests in k8s/,
# that the rendering wires the cluster secret, the API token and the nginx
# ConfigMap, and (scripts/nginx-conf.sh check) that every shipped nginx
# configuration is the template's rendering.
set -euo pipefail

me=k8s-validate
root=$(cd "$(dirname "$0")/.." && pwd)
k8s_version=1.30.0
validator_version=1.37.0
venv="$root/target/k8s-venv"

say() { echo "$me: $*" >&2; }

if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  say "installing kubernetes-validate $validator_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$validator_version"
fi

cd "$root/k8s"
listed=$(python3 - <<'PY'
import re
text = open("kustomization.yaml").read()
block = text.split("resources:", 1)[1]
print("\n".join(sorted(re.findall(r"^\s*-\s*(\S+\.yaml)\s*$", block, re.M))))
PY
)
present=$(ls *.yaml | grep -v '^kustomization.yaml$' | sort)
if [ "$listed" != "$present" ]; then
  say "kustomization.yaml lists:"; echo "$listed" >&2
  say "but k8s/ holds:"; echo "$present" >&2
  exit 1
fi

failed=0 passed=0
for f in $present; do
  if "$venv/bin/kubernetes-validate" -k "$k8s_version" --strict --quiet "$f"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
done
if bash "$root/scripts/nginx-conf.sh" check; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
fi
if command -v kubectl >/dev/null; then
  rendered="$root/target/k8s-rendered.yaml"
  # k8s/cluster-secret and k8s/api-token are the operator's and stay out
  # of target/: the rendering is made from a copy with throwaway ones.
  copy=$(mktemp -d); trap 'rm -rf "$copy"' EXIT
  mkdir "$copy/k8s" && cp ./*.yaml nginx.conf "$copy/k8s/"
  echo "throwaway-validation-token" > "$copy/k8s/api-token"
  if kubectl kustomize "$copy/k8s" >/dev/null 2>&1; then
    say "kustomize renders k8s/ without k8s/cluster-secret: the secret is not required"
    failed=$((failed + 1))
  fi
  rm "$copy/k8s/api-token"
  echo "throwaway-validation-secret" > "$copy/k8s/cluster-secret"
  if kubectl kustomize "$copy/k8s" >/dev/null 2>&1; then
    say "kustomize renders k8s/ without k8s/api-token: the API token is not required"
    failed=$((failed + 1))
  fi
  echo "throwaway-validation-token" > "$copy/k8s/api-token"
  kubectl kustomize "$copy/k8s" > "$rendered"
  if "$venv/bin/kubernetes-validate" -k "$k8s_version" --strict --quiet "$rendered"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
  if "$venv/bin/python" - "$rendered" nginx.conf <<'PY'
import base64, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
def one(kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"expected one {kind} {name}*, found {len(found)}"
    return found[0]
secret = one("Secret", "shoal-cluster-secret")
assert base64.b64decode(secret["data"]["cluster-secret"]).strip() == b"throwaway-validation-secret"
assert base64.b64decode(secret["data"]["api-token"]).strip() == b"throwaway-validation-token"
pod = one("DaemonSet", "shoal-node")["spec"]["template"]["spec"]
node = pod["containers"][0]
env = {e["name"]: e.get("value") for e in node["env"]}
def file_of(key):
    """Where the node finds the Secret's key: its mounted volume's path."""
    paths = []
    for v in pod["volumes"]:
        src = v.get("secret", {})
        if src.get("secretName") != secret["metadata"]["name"]:
            continue
        items = src.get("items")
        path = key if items is None else next((i["path"] for i in items if i["key"] == key), None)
        if path is None:
            continue
        for m in node["volumeMounts"]:
            if m["name"] == v["name"]:
                assert m.get("readOnly"), f"{m['mountPath']} is not read-only"
                paths.append(m["mountPath"] + "/" + path)
    assert paths, f"no mounted volume of the DaemonSet holds the Secret's key {key}"
    return paths
assert env.get("SHOAL_CLUSTER_SECRET_FILE") in file_of("cluster-secret"), env.get("SHOAL_CLUSTER_SECRET_FILE")
assert "SHOAL_CLUSTER_SECRET" not in env, "the secret itself is in the environment"
assert env.get("SHOAL_API_TOKEN_FILE") in file_of("api-token"), env.get("SHOAL_API_TOKEN_FILE")
assert "SHOAL_API_TOKEN" not in env, "the API token itself is in the environment"
config = one("ConfigMap", "shoal-nginx")
assert config["data"]["nginx.conf"] == open(sys.argv[2]).read(), "the ConfigMap is not k8s/nginx.conf"
nginx = one("Deployment", "shoal-nginx")["spec"]["template"]["spec"]
names = [v["configMap"]["name"] for v in nginx["volumes"] if "configMap" in v]
assert names == [config["metadata"]["name"]], f"nginx mounts {names}, not {config['metadata']['name']}"
PY
  then
    say "the rendering mounts the cluster secret and the API token into every node and nginx.conf into nginx"
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
  # The overlay for containerd nodes (deploy/k8s-containerd), rendered
  # over the same copy of k8s/.
  mkdir -p "$copy/deploy" && cp -r "$root/deploy/k8s-containerd" "$copy/deploy/"
  rendered_ctrd="$root/target/k8s-rendered-containerd.yaml"
  if kubectl kustomize "$copy/deploy/k8s-containerd" > "$rendered_ctrd" \
    && "$venv/bin/kubernetes-validate" -k "$k8s_version" --strict --quiet "$rendered_ctrd" \
    && "$venv/bin/python" - "$rendered_ctrd" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ds = [d for d in docs if d["kind"] == "DaemonSet"]
assert len(ds) == 1, f"{len(ds)} DaemonSets"
pod = ds[0]["spec"]["template"]["spec"]
assert pod.get("hostPID") is True, "containerd's tasks' addresses need the host's PID namespace"
node = pod["containers"][0]
env = {e["name"]: e.get("value") for e in node["env"]}
assert env.get("SHOAL_ENGINE") == "containerd", env.get("SHOAL_ENGINE")
socket = env.get("SHOAL_CONTAINERD_ADDRESS", "")
mounts = {m["mountPath"]: m for m in node["volumeMounts"]}
holder = [m for path, m in mounts.items() if socket.startswith(path + "/")]
assert holder and holder[0].get("readOnly"), f"{socket} is not under a read-only mount"
assert mounts["/var/lib/cni/results"].get("readOnly"), "CNI results are not read-only"
assert env.get("SHOAL_CLUSTER_SECRET_FILE"), "the overlay lost the cluster secret"
assert env.get("SHOAL_API_TOKEN_FILE"), "the overlay lost the API token"
PY
  then
    say "deploy/k8s-containerd renders: hostPID, --engine containerd, its socket and CNI results read-only"
    passed=$((passed + 1))
  else
    say "deploy/k8s-containerd does not render as expected (see above)"
    failed=$((failed + 1))
  fi
else
  say "kubectl not found: the kustomize rendering is not validated, each manifest is"
fi
echo "k8s-validate: $passed passed, $failed failed"
[ "$failed" = 0 ]
