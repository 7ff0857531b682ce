#!/usr/bin/env bash
# Validates k8s/ offline against a pinned Kubernetes schema with
# kubernetes-validate (from PyPI, installed into target/k8s-venv): every
# manifest on its own, and the kustomize rendering when kubectl is there.
# Also checks that the kustomization lists exactly the manifests in k8s/,
# and (scripts/nginx-conf.sh check) that every shipped nginx configuration
# is the template's rendering, k8s/nginx.conf among them.
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
  kubectl kustomize . > "$rendered"
  if "$venv/bin/kubernetes-validate" -k "$k8s_version" --strict --quiet "$rendered"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
else
  say "kubectl not found: the kustomize rendering is not validated, each manifest is"
fi
echo "k8s-validate: $passed passed, $failed failed"
[ "$failed" = 0 ]
