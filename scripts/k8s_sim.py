#!/usr/bin/env python3
"""k8s-sim: the pods of a kustomization run as Docker containers, as a
kubelet would run them, with no Kubernetes (none can be started here).

Run by scripts/k8s-sim.sh (make k8s-sim), which provides PyYAML, dnsmasq
and the images. Everything below reads the manifests as they are in the
repository (k8s/, deploy/k8s-containerd/): a change there changes what
runs here, and a manifest the simulation cannot honour fails it.

What stands in for what:
- kustomize: `render()` (resources, namespace, labels, the ConfigMap and
  Secret generators with kustomize's name hashes left out, strategic-merge
  patches). Where kubectl is installed its rendering must agree.
- nodes: N names (sim-node-1..N). A DaemonSet gets one pod on each, a
  Deployment its replicas spread over them. `hostPath` is the machine's
  own path, or with --host-root DIR, DIR/<node>/<path> (one host per node).
- the pod network: one Docker network; each pod gets the next free
  address, known before its container starts, as a CNI would give it.
- kubelet: image, command, args; env with $(VAR) and the downward API;
  securityContext as --user, --read-only, --cap-drop/--cap-add,
  no-new-privileges; hostPID; resources.limits; volumes (hostPath with its
  type checked, secret, configMap, emptyDir, subPath); startup, liveness
  and readiness probes polled with their periods and thresholds; a failed
  liveness or an exited container restarts the container.
- kube-dns: dnsmasq on the network's gateway. A headless Service answers
  with its pods (all of them with publishNotReadyAddresses, else the
  ready ones); a ClusterIP Service with its virtual IP.
- kube-proxy: a virtual IP per ClusterIP Service on the network's bridge,
  and a TCP proxy on it that spreads connections over the ready endpoints
  (kube-proxy's old userspace mode).
"""

import argparse
import base64
import copy
import hashlib
import http.client
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import yaml

ME = "k8s-sim"
LABEL = "shoal.k8s-sim"
CLUSTER_DOMAIN = "cluster.local"


def say(*parts):
    print(f"{ME}:", *parts, file=sys.stderr, flush=True)


class SimError(Exception):
    pass


def run(*cmd, check=True, input=None, timeout=120):
    done = subprocess.run(
        cmd, input=input, capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise SimError(f"{' '.join(cmd)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


# --- kustomize ----------------------------------------------------------

# The merge keys of the lists the manifests patch (strategic merge).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumes": "name",
    "ports": "containerPort",
}


def strategic_merge(base, patch, field=None):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = strategic_merge(base[key], value, key) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        # As kustomize (kyaml) merges: matching items merged in place, new
        # ones first, in the patch's order (it matters for env's $(VAR)).
        key = MERGE_KEYS[field]
        out, new = list(base), []
        for item in patch:
            at = [i for i, b in enumerate(out) if b.get(key) == item.get(key)]
            if at:
                out[at[0]] = strategic_merge(out[at[0]], item)
            else:
                new.append(item)
        return new + out
    return patch


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


def render(directory, files):
    """The kustomization in `directory`; `files` overrides generator
    sources by name (the cluster secret and the API token, which are not in
    git)."""
    kust = yaml.safe_load(open(os.path.join(directory, "kustomization.yaml")))
    known = {"apiVersion", "kind", "namespace", "labels", "resources", "patches",
             "configMapGenerator", "secretGenerator"}
    unknown = set(kust) - known
    if unknown:
        raise SimError(f"{directory}/kustomization.yaml: the simulation does not know {sorted(unknown)}")
    docs = []
    for res in kust.get("resources", []):
        path = os.path.join(directory, res)
        if os.path.isdir(path):
            docs.extend(render(path, files))
        else:
            docs.extend(d for d in yaml.safe_load_all(open(path)) if d)

    def source(name):
        if name in files:
            return files[name]
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            raise SimError(f"{path} is missing (a generator reads it)")
        return open(path).read()

    renamed = {}
    for gen_kind, field in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for gen in kust.get(field, []):
            data = {os.path.basename(f): source(f) for f in gen.get("files", [])}
            doc = {"apiVersion": "v1", "kind": gen_kind, "metadata": {"name": gen["name"]}}
            if gen_kind == "Secret":
                doc["type"] = "Opaque"
                doc["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
            else:
                doc["data"] = data
            if not gen.get("options", {}).get("disableNameSuffixHash"):
                # kustomize appends a hash of the contents; the simulation
                # keeps the name and only remembers that it is generated.
                renamed[(gen_kind, gen["name"])] = True
            docs.append(doc)
    for patch in kust.get("patches", []):
        if set(patch) != {"path"}:
            raise SimError(f"{directory}: only patches with a path are simulated: {patch}")
        p = yaml.safe_load(open(os.path.join(directory, patch["path"])))
        at = [i for i, d in enumerate(docs)
              if d["kind"] == p["kind"] and d["metadata"]["name"] == p["metadata"]["name"]]
        if len(at) != 1:
            raise SimError(f"{patch['path']} patches {p['kind']} {p['metadata']['name']}, which is not rendered")
        docs[at[0]] = strategic_merge(docs[at[0]], p)
    for doc in docs:
        meta = doc.setdefault("metadata", {})
        if kust.get("namespace") and doc["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = kust["namespace"]
        for entry in kust.get("labels", []):
            if entry.get("includeSelectors") or entry.get("includeTemplates"):
                raise SimError("labels with includeSelectors/includeTemplates are not simulated")
            meta.setdefault("labels", {}).update(entry["pairs"])
    return docs


def check_against_kubectl(directory, files, docs):
    """kubectl's kustomize, where installed, must render the same (the
    generated names' hashes aside)."""
    if not shutil.which("kubectl"):
        say("kubectl is not installed: the rendering is not compared with kustomize's")
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("k8s", "deploy/k8s-containerd"):
            shutil.copytree(os.path.join(root, sub), os.path.join(tmp, sub))
        for name, text in files.items():
            open(os.path.join(tmp, "k8s", name), "w").write(text)
        rel = os.path.relpath(os.path.abspath(directory), root)
        out = run("kubectl", "kustomize", os.path.join(tmp, rel))
    theirs = [d for d in yaml.safe_load_all(out) if d]
    generated = {}
    for d in theirs:
        for ours in docs:
            if ours["kind"] == d["kind"] and ours["kind"] in ("ConfigMap", "Secret") \
                    and d["metadata"]["name"].startswith(ours["metadata"]["name"]):
                generated[d["metadata"]["name"]] = ours["metadata"]["name"]

    def unhash(value):
        if isinstance(value, dict):
            return {k: unhash(v) for k, v in value.items()}
        if isinstance(value, list):
            return [unhash(v) for v in value]
        return generated.get(value, value)

    key = lambda d: (d["kind"], d["metadata"]["name"])
    theirs = sorted((unhash(d) for d in theirs), key=key)
    ours = sorted(docs, key=key)
    if theirs != ours:
        for a, b in zip(theirs, ours):
            if a != b:
                raise SimError(f"the simulation renders {key(b)} unlike kustomize:\n"
                               f"kustomize: {json.dumps(a, sort_keys=True)}\nsim:       {json.dumps(b, sort_keys=True)}")
        raise SimError(f"kustomize renders {[key(d) for d in theirs]}, the simulation {[key(d) for d in ours]}")
    say(f"the rendering of {directory} agrees with kubectl kustomize ({len(ours)} objects)")


# --- the cluster --------------------------------------------------------

def expand(text, env):
    """$(VAR) as Kubernetes expands it: defined variables only, $$ escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def quantity_bytes(q):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)([A-Za-z]*)", str(q))
    if not m or m.group(2) not in units and m.group(2):
        raise SimError(f"memory quantity {q!r} is not simulated")
    return int(m.group(1)) * units.get(m.group(2), 1)


def quantity_cpus(q):
    q = str(q)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


class Probe:
    def __init__(self, spec, kind):
        self.spec, self.kind = spec, kind
        self.period = spec.get("periodSeconds", 10)
        self.timeout = spec.get("timeoutSeconds", 1)
        self.failures_allowed = spec.get("failureThreshold", 3)
        self.successes_needed = spec.get("successThreshold", 1)
        self.delay = spec.get("initialDelaySeconds", 0)
        unknown = {"httpGet", "tcpSocket", "exec"} & set(spec)
        if len(unknown) != 1:
            raise SimError(f"{kind} probe {spec}: one of httpGet, tcpSocket, exec is simulated")
        self.due = 0.0
        self.failures = self.successes = 0


class Pod:
    def __init__(self, cluster, owner, template, node, ip):
        self.cluster, self.owner = cluster, owner
        suffix = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        self.name = f"{owner['metadata']['name']}-{suffix}"
        self.namespace = owner["metadata"].get("namespace", "default")
        self.spec = copy.deepcopy(template["spec"])
        self.labels = dict(template["metadata"].get("labels", {}))
        self.node, self.ip = node, ip
        self.containers = []  # one Container each
        self.deleted = False

    @property
    def ready(self):
        return not self.deleted and all(c.ready for c in self.containers)


class Container:
    def __init__(self, pod, spec):
        self.pod, self.spec = pod, spec
        self.docker_name = f"k8s-sim_{spec['name']}_{pod.name}_{pod.namespace}"
        self.ready = False
        self.started = False  # startup probe passed
        self.restarts = 0
        self.ports = {p["name"]: p["containerPort"] for p in spec.get("ports", []) if "name" in p}
        self.probes = {k: Probe(spec[f"{k}Probe"], k) for k in ("startup", "liveness", "readiness")
                       if f"{k}Probe" in spec}


class Cluster:
    def __init__(self, work, nodes, host_root=None, subnet="10.246.0.0/16"):
        self.work, self.nodes, self.host_root = work, nodes, host_root
        self.net_name = f"shoal-k8s-sim-{os.getpid()}"
        self.subnet = ipaddress.ip_network(subnet)
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        self.pod_ips = iter(str(h) for h in hosts[256:16384])
        self.vips = iter(str(h) for h in hosts[200 * 256:200 * 256 + 250])
        self.docs = []
        self.pods = []
        self.services = {}  # name -> {doc, vip, proxy}
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.threads = []
        self.dnsmasq = None
        self.bridge = None
        self.events = []

    # ---- set-up and teardown

    def start_network(self):
        run("docker", "network", "create", "--subnet", str(self.subnet), "--gateway", self.gateway,
            "--label", f"{LABEL}=1", self.net_name)
        net_id = run("docker", "network", "inspect", "-f", "{{.Id}}", self.net_name)
        self.bridge = f"br-{net_id[:12]}"
        self.hosts_file = os.path.join(self.work, "dns.hosts")
        open(self.hosts_file, "w").close()
        pidfile = os.path.join(self.work, "dnsmasq.pid")
        subprocess.run(["dnsmasq", "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts_file}",
                        f"--listen-address={self.gateway}", "--bind-interfaces", "--port=53",
                        "--user=root", f"--pid-file={pidfile}", "--local-ttl=0",
                        f"--log-facility={os.path.join(self.work, 'dnsmasq.log')}"], check=True)
        for _ in range(50):
            if os.path.exists(pidfile) and open(pidfile).read().strip():
                break
            time.sleep(0.1)
        self.dnsmasq = int(open(pidfile).read().strip())

    def teardown(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=5)
        for svc in self.services.values():
            if svc.get("proxy"):
                svc["proxy"].close()
        names = run("docker", "ps", "-aq", "--filter", f"label={LABEL}={self.net_name}", check=False)
        if names:
            run("docker", "rm", "-f", *names.split(), check=False)
        if self.dnsmasq:
            try:
                os.kill(self.dnsmasq, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for svc in self.services.values():
            if svc.get("vip") and self.bridge:
                run("ip", "addr", "del", f"{svc['vip']}/32", "dev", self.bridge, check=False)
        run("docker", "network", "rm", self.net_name, check=False)

    # ---- apply

    def apply(self, docs):
        self.docs = docs
        kinds = {"Namespace", "ConfigMap", "Secret", "Service", "DaemonSet", "Deployment"}
        for d in docs:
            if d["kind"] not in kinds:
                raise SimError(f"{d['kind']} {d['metadata']['name']} is not simulated")
        for d in docs:
            if d["kind"] == "Service":
                self.add_service(d)
        for d in docs:
            if d["kind"] == "DaemonSet":
                for node in self.nodes:
                    self.schedule(d, node)
            elif d["kind"] == "Deployment":
                for i in range(d["spec"].get("replicas", 1)):
                    self.schedule(d, self.nodes[i % len(self.nodes)])
        self.publish_endpoints()
        t = threading.Thread(target=self.kubelet, daemon=True)
        t.start()
        self.threads.append(t)

    def find(self, kind, name, namespace):
        for d in self.docs:
            if d["kind"] == kind and d["metadata"]["name"] == name \
                    and d["metadata"].get("namespace", "default") == namespace:
                return d
        raise SimError(f"{kind} {namespace}/{name} is referenced but not rendered")

    def add_service(self, doc):
        spec = doc["spec"]
        svc = {"doc": doc, "vip": None, "proxy": None, "endpoints": []}
        if spec.get("type", "ClusterIP") != "ClusterIP":
            raise SimError(f"Service {doc['metadata']['name']}: type {spec['type']} is not simulated")
        if spec.get("clusterIP") != "None":
            svc["vip"] = next(self.vips)
            run("ip", "addr", "add", f"{svc['vip']}/32", "dev", self.bridge)
            svc["proxy"] = Proxy(self, svc)
        self.services[doc["metadata"]["name"]] = svc

    def schedule(self, owner, node):
        template = owner["spec"]["template"]
        selector = owner["spec"]["selector"]["matchLabels"]
        labels = template["metadata"].get("labels", {})
        if any(labels.get(k) != v for k, v in selector.items()):
            raise SimError(f"{owner['kind']} {owner['metadata']['name']}: its selector does not match its template")
        pod = Pod(self, owner, template, node, next(self.pod_ips))
        with self.lock:
            self.pods.append(pod)
        for spec in pod.spec["containers"]:
            c = Container(pod, spec)
            pod.containers.append(c)
            self.create(c)
            run("docker", "start", c.docker_name)
        say(f"pod {pod.name} on {node} at {pod.ip}")
        return pod

    def host_path(self, node, path):
        if not self.host_root:
            # Each simulated host has its own state directory (shoal's
            # history store), not this machine's.
            if path.startswith("/var/lib/"):
                return os.path.join(self.work, "host-state", node, path.lstrip("/"))
            return path
        return os.path.join(self.host_root, node, path.lstrip("/"))

    def volume_source(self, pod, vol):
        """The directory (or file) on this machine that backs a volume."""
        name = vol["name"]
        here = os.path.join(self.work, "pods", pod.name, "volumes", name)
        if "hostPath" in vol:
            hp = vol["hostPath"]
            path = self.host_path(pod.node, hp["path"])
            kind = hp.get("type", "")
            if kind == "DirectoryOrCreate":
                os.makedirs(path, mode=0o755, exist_ok=True)
            elif kind == "Directory" and not os.path.isdir(path):
                raise SimError(f"pod {pod.name}: hostPath {path} is not a directory (type Directory)")
            elif kind == "Socket" and not os.path.exists(path):
                raise SimError(f"pod {pod.name}: hostPath {path} is no socket")
            elif kind not in ("", "DirectoryOrCreate", "Directory", "Socket", "File"):
                raise SimError(f"hostPath type {kind} is not simulated")
            return path
        if "emptyDir" in vol:
            os.makedirs(here, exist_ok=True)
            os.chmod(here, 0o777)
            return here
        for kind, key in (("secret", "secretName"), ("configMap", "name")):
            if kind in vol:
                src = vol[kind]
                obj = self.find("Secret" if kind == "secret" else "ConfigMap", src[key], pod.namespace)
                data = dict(obj.get("data", {}))
                if kind == "secret":
                    data = {k: base64.b64decode(v).decode() for k, v in data.items()}
                mode = src.get("defaultMode", 0o644)
                # Every key as a file of its name, or only the keys `items`
                # projects, each at its path and with its mode.
                files = [(k, v, mode) for k, v in data.items()]
                if "items" in src:
                    files = []
                    for item in src["items"]:
                        if item["key"] not in data:
                            raise SimError(f"pod {pod.name}: volume {name}: {kind} {src[key]} has no key {item['key']}")
                        if "/" in item["path"] or item["path"].startswith(".."):
                            raise SimError(f"pod {pod.name}: volume {name}: item paths with / are not simulated")
                        files.append((item["path"], data[item["key"]], item.get("mode", mode)))
                os.makedirs(here, exist_ok=True)
                for k, v, m in files:
                    p = os.path.join(here, k)
                    open(p, "w").write(v)
                    os.chmod(p, m)
                return here
        raise SimError(f"pod {pod.name}: volume {name} of kind {sorted(set(vol) - {'name'})} is not simulated")

    def create(self, c):
        pod, spec = c.pod, c.spec
        args = ["docker", "create", "--name", c.docker_name, "--hostname", pod.name,
                "--label", f"{LABEL}={self.net_name}",
                "--label", f"io.kubernetes.pod.name={pod.name}",
                "--label", f"io.kubernetes.pod.namespace={pod.namespace}",
                "--label", f"io.kubernetes.container.name={spec['name']}",
                "--stop-timeout", str(pod.spec.get("terminationGracePeriodSeconds", 30))]
        if pod.spec.get("hostNetwork"):
            raise SimError("hostNetwork is not simulated")
        args += ["--network", self.net_name, "--ip", pod.ip, "--dns", self.gateway,
                 "--dns-option", "ndots:5"]
        for domain in (f"{pod.namespace}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN):
            args += ["--dns-search", domain]
        if pod.spec.get("hostPID"):
            args += ["--pid", "host"]
        # Security context: the container's over the pod's.
        sc = dict(pod.spec.get("securityContext", {}))
        sc.update(spec.get("securityContext", {}))
        unknown = set(sc) - {"runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem",
                             "allowPrivilegeEscalation", "capabilities", "privileged",
                             "supplementalGroups", "fsGroup"}
        if unknown:
            raise SimError(f"{c.docker_name}: securityContext {sorted(unknown)} is not simulated")
        if "runAsUser" in sc:
            user = str(sc["runAsUser"])
            if "runAsGroup" in sc:
                user += f":{sc['runAsGroup']}"
            args += ["--user", user]
        if sc.get("runAsNonRoot") and sc.get("runAsUser", 1) == 0:
            raise SimError(f"{c.docker_name}: runAsNonRoot with runAsUser 0")
        for g in sc.get("supplementalGroups", []):
            args += ["--group-add", str(g)]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        if sc.get("privileged"):
            args.append("--privileged")
        for cap in sc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        for cap in sc.get("capabilities", {}).get("add", []):
            args += ["--cap-add", cap]
        limits = spec.get("resources", {}).get("limits", {})
        if "memory" in limits:
            args += ["--memory", str(quantity_bytes(limits["memory"]))]
        if "cpu" in limits:
            args += ["--cpus", str(quantity_cpus(limits["cpu"]))]
        # Environment, in order, with $(VAR) of the ones before.
        env = {}
        for e in spec.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(str(e["value"]), env)
            elif "fieldRef" in e.get("valueFrom", {}):
                env[e["name"]] = self.field(pod, e["valueFrom"]["fieldRef"]["fieldPath"])
            else:
                raise SimError(f"{c.docker_name}: env {e['name']} from {e.get('valueFrom')} is not simulated")
        for k, v in env.items():
            args += ["--env", f"{k}={v}"]
        # Volumes.
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        for m in spec.get("volumeMounts", []):
            if m["name"] not in volumes:
                raise SimError(f"{c.docker_name}: volumeMount {m['name']} names no volume")
            vol = volumes[m["name"]]
            src = self.volume_source(pod, vol)
            if m.get("subPath"):
                src = os.path.join(src, m["subPath"])
            ro = m.get("readOnly") or "secret" in vol or "configMap" in vol
            args += ["--mount", f"type=bind,source={src},target={m['mountPath']}" + (",readonly" if ro else "")]
        if spec.get("imagePullPolicy") != "Never":
            raise SimError(f"{c.docker_name}: imagePullPolicy {spec.get('imagePullPolicy')}: no registry here")
        if "command" in spec:
            command = [expand(str(a), env) for a in spec["command"]]
            args += ["--entrypoint", command[0]]
            tail = command[1:]
        else:
            tail = []
        args.append(spec["image"])
        args += tail + [expand(str(a), env) for a in spec.get("args", [])]
        run(*args)

    def field(self, pod, path):
        values = {"spec.nodeName": pod.node, "status.podIP": pod.ip, "status.podIPs": pod.ip,
                  "metadata.name": pod.name, "metadata.namespace": pod.namespace,
                  "status.hostIP": self.gateway, "spec.serviceAccountName": "default"}
        if path not in values:
            raise SimError(f"fieldRef {path} is not simulated")
        return values[path]

    # ---- the kubelet's loop: probes, restarts, controllers

    def kubelet(self):
        while not self.stopping.is_set():
            now = time.monotonic()
            with self.lock:
                pods = list(self.pods)
            containers = [c for pod in pods if not pod.deleted for c in pod.containers]
            states = self.states(containers)
            changed = False
            for c in containers:
                changed |= self.tend(c, now, states.get(c.docker_name, (False, False, 0)))
            if changed:
                self.publish_endpoints()
            self.stopping.wait(0.2)

    def states(self, containers):
        """(running, paused, pid) of each container by its Docker name, in
        one `docker inspect`; a container that is gone is left out."""
        if not containers:
            return {}
        out = run("docker", "inspect", "-f",
                  "{{.Name}} {{.State.Running}} {{.State.Paused}} {{.State.Pid}}",
                  *[c.docker_name for c in containers], check=False)
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 4:
                states[parts[0].lstrip("/")] = (parts[1] == "true", parts[2] == "true", int(parts[3]))
        return states

    def state(self, c):
        return self.states([c]).get(c.docker_name, (False, False, 0))

    def restart(self, c, why):
        c.restarts += 1
        c.ready = c.started = False
        for p in c.probes.values():
            p.failures = p.successes = 0
            p.due = time.monotonic() + p.delay
        self.events.append((time.time(), c.pod.name, f"restart {c.restarts}: {why}"))
        say(f"{c.pod.name}/{c.spec['name']}: {why}; restart {c.restarts}")
        run("docker", "restart", "-t", str(c.pod.spec.get("terminationGracePeriodSeconds", 30)),
            c.docker_name, check=False)

    def tend(self, c, now, state):
        was_ready = c.ready
        running, paused, _ = state
        if not running and not paused:
            self.restart(c, "the container exited")
            return was_ready
        if not c.started:
            p = c.probes.get("startup")
            if p is None:
                c.started = True
            else:
                passed = self.step(c, p, now)
                if passed:
                    c.started = True
                elif passed is False and p.failures >= p.failures_allowed:
                    self.restart(c, "the startup probe failed")
            if c.started:
                for k in ("liveness", "readiness"):
                    if k in c.probes:
                        c.probes[k].due = now + c.probes[k].delay
        if c.started:
            p = c.probes.get("liveness")
            if p and self.step(c, p, now) is False and p.failures >= p.failures_allowed:
                self.restart(c, "the liveness probe failed")
                return was_ready
            p = c.probes.get("readiness")
            if p is None:
                c.ready = True
            else:
                passed = self.step(c, p, now)
                if passed and p.successes >= p.successes_needed:
                    c.ready = True
                elif passed is False and p.failures >= p.failures_allowed:
                    c.ready = False
        return c.ready != was_ready

    def step(self, c, p, now):
        """Runs probe `p` when it is due and counts the outcome in a row:
        True or False, or None when it was not due."""
        if now < p.due:
            return None
        p.due = now + p.period
        if self.probe(c, p):
            p.failures = 0
            p.successes += 1
            return True
        p.successes = 0
        p.failures += 1
        return False

    def probe(self, c, p):
        spec = p.spec
        try:
            if "httpGet" in spec:
                h = spec["httpGet"]
                port = c.ports.get(h["port"], h["port"])
                conn = http.client.HTTPConnection(h.get("host", c.pod.ip), int(port), timeout=p.timeout)
                conn.request("GET", h.get("path", "/"))
                status = conn.getresponse().status
                conn.close()
                return 200 <= status < 400
            if "tcpSocket" in spec:
                port = c.ports.get(spec["tcpSocket"]["port"], spec["tcpSocket"]["port"])
                socket.create_connection((c.pod.ip, int(port)), timeout=p.timeout).close()
                return True
            done = subprocess.run(["docker", "exec", c.docker_name, *spec["exec"]["command"]],
                                  capture_output=True, timeout=p.timeout)
            return done.returncode == 0
        except (OSError, http.client.HTTPException, subprocess.TimeoutExpired):
            return False

    def delete_pod(self, pod):
        """kubectl delete pod: the controller makes a new one on the same node."""
        pod.deleted = True
        self.publish_endpoints()
        for c in pod.containers:
            run("docker", "rm", "-f", c.docker_name, check=False)
        with self.lock:
            self.pods.remove(pod)
        return self.schedule(pod.owner, pod.node)

    # ---- Services

    def endpoints(self, svc):
        doc = svc["doc"]
        selector = doc["spec"].get("selector", {})
        all_pods = doc["spec"].get("publishNotReadyAddresses", False)
        with self.lock:
            pods = [p for p in self.pods if not p.deleted
                    and p.namespace == doc["metadata"].get("namespace", "default")
                    and all(p.labels.get(k) == v for k, v in selector.items())]
        return [p for p in pods if all_pods or p.ready]

    def publish_endpoints(self):
        lines = []
        for name, svc in self.services.items():
            ns = svc["doc"]["metadata"].get("namespace", "default")
            fqdn = f"{name}.{ns}.svc.{CLUSTER_DOMAIN}"
            pods = self.endpoints(svc)
            svc["endpoints"] = pods
            if svc["vip"]:
                lines.append(f"{svc['vip']} {fqdn}")
            else:
                lines += [f"{p.ip} {fqdn}" for p in pods]
        text = "".join(line + "\n" for line in lines)
        if open(self.hosts_file).read() != text:
            open(self.hosts_file, "w").write(text)
            os.kill(self.dnsmasq, signal.SIGHUP)

    def service_url(self, name, port_name="http"):
        svc = self.services[name]
        port = [p["port"] for p in svc["doc"]["spec"]["ports"] if p.get("name") == port_name][0]
        return f"http://{svc['vip']}:{port}"

    def pods_of(self, owner_name):
        with self.lock:
            return [p for p in self.pods if p.owner["metadata"]["name"] == owner_name and not p.deleted]

    def wait_ready(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.lock:
                pods = [p for p in self.pods if not p.deleted]
            if pods and all(p.ready for p in pods):
                return
            time.sleep(0.2)
        with self.lock:
            late = [p for p in self.pods if not p.ready]
        for p in late:
            for c in p.containers:
                say(f"--- {c.docker_name} (restarts {c.restarts}):")
                print(run("docker", "logs", "--tail", "15", c.docker_name, check=False), file=sys.stderr)
        raise SimError(f"not ready after {seconds} s: {[p.name for p in late]}")


class Proxy:
    """kube-proxy's userspace mode: the Service's virtual IP, each port
    proxied to a ready endpoint, the next one on a refused connection."""

    def __init__(self, cluster, svc):
        self.cluster, self.svc = cluster, svc
        self.listeners = []
        self.turn = 0
        for port in svc["doc"]["spec"]["ports"]:
            if port.get("protocol", "TCP") != "TCP":
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((svc["vip"], port["port"]))
            s.listen(256)
            self.listeners.append(s)
            threading.Thread(target=self.accept, args=(s, port), daemon=True).start()

    def close(self):
        for s in self.listeners:
            s.close()

    def accept(self, listener, port):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(client, port), daemon=True).start()

    def serve(self, client, port):
        pods = list(self.svc["endpoints"])
        self.turn += 1
        upstream = None
        for i in range(len(pods)):
            pod = pods[(self.turn + i) % len(pods)]
            target = port.get("targetPort", port["port"])
            c = pod.containers[0]
            for cont in pod.containers:
                if target in cont.ports:
                    c = cont
            target = c.ports.get(target, target)
            try:
                upstream = socket.create_connection((pod.ip, int(target)), timeout=2)
                upstream.settimeout(None)
                break
            except OSError:
                continue
        if upstream is None:
            client.close()
            return

        def pump(a, b):
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_WR if s is b else socket.SHUT_RD)
                    except OSError:
                        pass

        t = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        t.start()
        pump(client, upstream)
        t.join()
        client.close()
        upstream.close()


# --- the scenarios ------------------------------------------------------

class Checks:
    def __init__(self):
        self.passed = 0

    def ok(self, what):
        self.passed += 1
        say(f"ok: {what}")


def http_get(url, no_cache=True, timeout=5, method="GET", body=None, headers=None):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = dict(headers or {})
    if no_cache:
        headers["cache-control"] = "no-cache"
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers)
        r = conn.getresponse()
        body = r.read()
        try:
            data = json.loads(body)
        except ValueError:
            data = body.decode(errors="replace")
        return r.status, data, r.getheader("x-shoal-node")
    except (OSError, http.client.HTTPException) as e:
        return 0, str(e), None
    finally:
        conn.close()


def wait_for(what, seconds, fn):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise SimError(f"{what} (after {seconds} s; last: {last!r})")


def one(status_data):
    status, data, _ = status_data
    if status == 200 and isinstance(data, dict) and len(data.get("containers", [])) == 1:
        return data["containers"][0]
    return None


def fleet_sees(url, count):
    status, data, _ = http_get(f"{url}/v1/nodes")
    if status != 200:
        return None
    alive = sorted(n["id"] for n in data["nodes"] if n["state"] == "alive")
    return alive if len(alive) == count else None


def lookups_while(what, urls_names, until, checks):
    """Lookups through nginx (plain GETs: the hot cache on) until `until`
    is set, bounded; every one must find the right container."""
    counts = {"done": 0, "wrong": []}

    def loop():
        deadline = time.monotonic() + 240
        while not until.is_set() and time.monotonic() < deadline and counts["done"] < 50000:
            for url, want in urls_names:
                c = one(http_get(url, no_cache=False))
                counts["done"] += 1
                if not c or c["id"] != want:
                    counts["wrong"].append((url, c and c.get("id")))
            time.sleep(0.01)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t, counts


def every_node_has_the_api_token(cluster, checks, front):
    """A job's creation without the Secret's API token, or with another,
    is refused 401 by every node (a node that read no token would say
    403), directly and through nginx."""
    create = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ContainerService.Create",
                         "params": [{"image": "k8s-sim/no-such-image:never", "arguments": ["true"]}]})
    urls = [f"http://{pod.ip}:7070" for pod in cluster.pods_of("shoal-node")] + [front]
    for url in urls:
        for headers in ({}, {"authorization": "Bearer not-the-api-token-of-this-fleet"}):
            status, data, _ = http_get(f"{url}/jrpc", no_cache=False, method="POST", body=create,
                                       headers={"content-type": "application/json", **headers})
            if status != 401:
                raise SimError(f"ContainerService.Create at {url} with {sorted(headers) or 'no token'}: "
                               f"HTTP {status} {data!r}, not 401")
    checks.ok(f"every node ({len(urls) - 1}) and nginx refuse a job's creation without the Secret's "
              f"API token, or with another: 401 (each node read the token from its mounted Secret)")


def a_job_runs(cluster, checks, front, image):
    """With the Secret's API token, POST /v1/jobs through nginx: a node
    creates the container through its read-only socket mount, and it runs
    and is found through nginx. The container is removed (by its label)."""
    body = json.dumps({"image": image, "arguments": ["sleep", "600"]})
    status, data, _ = http_get(f"{front}/v1/jobs", no_cache=False, method="POST", body=body,
                               headers={"content-type": "application/json",
                                        "authorization": f"Bearer {cluster.api_token}"})
    if status != 202 or not isinstance(data, dict) or not data.get("job_id"):
        raise SimError(f"POST /v1/jobs with the API token through nginx: HTTP {status} {data!r}")
    job = data["job_id"]
    try:
        def running():
            status, d, _ = http_get(f"{front}/v1/jobs/{job}")
            if status == 200 and d.get("status") in ("failed", "exited"):
                raise SimError(f"job {job} ended: {d}")
            return d if status == 200 and d.get("status") == "running" else None
        d = wait_for(f"job {job} never ran", 30, running)
        if d["node"] not in cluster.nodes:
            raise SimError(f"job {job} placed on {d['node']}, not a node of the simulation")
        got = run("docker", "inspect", "-f", '{{.Id}} {{index .Config.Labels "shoal.job"}}', d["container_name"])
        if got != f"{d['container_id']} {job}":
            raise SimError(f"{d['container_name']}: {got}, not {d['container_id']} labelled shoal.job={job}")
        c = wait_for(f"{d['container_name']} never found through nginx", 20,
                     lambda: one(http_get(f"{front}/v1/containers/{d['container_name']}")))
        if c["id"] != d["container_id"]:
            raise SimError(f"{d['container_name']} through nginx is {c['id']}")
    finally:
        left = run("docker", "ps", "-aq", "--filter", f"label=shoal.job={job}", check=False)
        if left:
            run("docker", "rm", "-f", *left.split(), check=False)
    checks.ok(f"a job created through nginx with the Secret's API token runs on {d['node']} "
              f"({d['container_name']}, made through the read-only socket mount) and is found through nginx")


def docker_scenario(cluster, checks, image):
    node_pods = cluster.pods_of("shoal-node")
    front = cluster.service_url("shoal-nginx")
    n = len(cluster.nodes)
    alive = wait_for(f"nginx's fleet never showed {n} alive nodes", 60, lambda: fleet_sees(front, n))
    if alive != sorted(cluster.nodes):
        raise SimError(f"the nodes are {alive}, not the Kubernetes node names {cluster.nodes}")
    checks.ok(f"{n} DaemonSet pods ready, named after their nodes (downward API), found each other through "
              f"the headless service; nginx (ConfigMap) answers at {front}")
    every_node_has_the_api_token(cluster, checks, front)
    a_job_runs(cluster, checks, front, image)

    # The cache-inventory scenario: name -> IP -> the same container.
    tag = f"k8s-sim-{os.getpid()}"
    net = f"{tag}-testnet"
    run("docker", "network", "create", "--subnet", "192.168.0.0/16", "--label", f"{LABEL}={cluster.net_name}", net)
    cleanup = [("network", net)]
    try:
        names = {}
        for name, network in ((f"{tag}-bridge", "bridge"), (f"{tag}-testnet", net)):
            run("docker", "run", "-d", "--name", name, "--label", f"{LABEL}={cluster.net_name}",
                "--network", network, image, "sleep", "600")
            cleanup.append(("container", name))
            c = wait_for(f"{name} never found through nginx", 20,
                         lambda: one(http_get(f"{front}/v1/containers/{name}")))
            want_id = run("docker", "inspect", "-f", "{{.Id}}", name)
            want_ip = run("docker", "inspect", "-f",
                          f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}', name)
            if c["id"] != want_id or c["networks"][network]["ip"] != want_ip:
                raise SimError(f"{name}: nginx answered {c['id']} {c['networks']}, want {want_id} {want_ip}")
            for no_cache in (True, False):
                by_ip = one(http_get(f"{front}/v1/containers/{want_ip}", no_cache=no_cache))
                if not by_ip or by_ip["id"] != want_id:
                    raise SimError(f"{want_ip} (no-cache {no_cache}) -> {by_ip}, not {name}")
            names[name] = (want_id, want_ip)
            checks.ok(f"{name} -> {want_ip} -> the same container ({network}), with and without the hot cache")
        if not ipaddress.ip_address(names[f"{tag}-testnet"][1]) in ipaddress.ip_network("192.168.0.0/16"):
            raise SimError("the test network's container has no 192.168.0.0/16 address")
        for pod in node_pods:
            for name, (want_id, want_ip) in names.items():
                for key in (name, want_ip, want_id, want_id[:12]):
                    c = one(http_get(f"http://{pod.ip}:7070/v1/containers/{key}", no_cache=False))
                    if not c or c["id"] != want_id:
                        raise SimError(f"{pod.name} ({pod.node}) answered {key} with {c}")
        checks.ok(f"every node pod answers both by name, IP, full ID and 12-hex prefix (hot cache on)")

        # A node killed (its process) and a pod deleted while lookups run.
        stop = threading.Event()
        urls = [(f"{front}/v1/containers/{name}", i) for name, (i, _) in names.items()]
        urls += [(f"{front}/v1/containers/{ip}", i) for _, (i, ip) in names.items()]
        t, counts = lookups_while("lookups", urls, stop, checks)
        victim = node_pods[2]
        _, _, pid = cluster.state(victim.containers[0])
        os.kill(pid, signal.SIGKILL)
        wait_for(f"{victim.name} never restarted", 30, lambda: victim.containers[0].restarts >= 1)
        cluster.wait_ready(60)
        deleted = node_pods[4]
        replacement = cluster.delete_pod(deleted)
        cluster.wait_ready(60)
        wait_for(f"the fleet never saw {n} alive nodes again", 60, lambda: fleet_sees(front, n))
        for pod in cluster.pods_of("shoal-node"):
            wait_for(f"{pod.name} does not see {n} alive", 30, lambda: fleet_sees(f"http://{pod.ip}:7070", n))
        time.sleep(1)
        stop.set()
        t.join()
        if counts["wrong"] or counts["done"] < 50:
            raise SimError(f"{len(counts['wrong'])} of {counts['done']} lookups wrong: {counts['wrong'][:5]}")
        checks.ok(f"{counts['done']} lookups through nginx (hot cache on), 0 wrong, while {victim.node}'s node "
                  f"was killed and restarted and {deleted.node}'s pod was deleted and replaced "
                  f"({deleted.ip} -> {replacement.ip})")

        # Readiness: a paused node leaves shoal-api, and comes back.
        paused = cluster.pods_of("shoal-node")[1]
        run("docker", "pause", paused.containers[0].docker_name)
        try:
            wait_for(f"{paused.name} paused stayed an endpoint of shoal-api", 20,
                     lambda: paused not in cluster.services["shoal-api"]["endpoints"])
            peers = [p.ip for p in cluster.services["shoal-peers"]["endpoints"]]
            if paused.ip not in peers:
                raise SimError("publishNotReadyAddresses: the unready pod left the headless service")
        finally:
            run("docker", "unpause", paused.containers[0].docker_name)
        wait_for(f"{paused.name} never came back to shoal-api", 20,
                 lambda: paused in cluster.services["shoal-api"]["endpoints"])
        checks.ok("a paused node failed its readiness probe and left shoal-api (not shoal-peers); unpaused, it came back")

        # A removed container: 404 everywhere, the hot cache included.
        gone, (gone_id, gone_ip) = f"{tag}-bridge", names[f"{tag}-bridge"]
        run("docker", "rm", "-f", gone)
        for pod in cluster.pods_of("shoal-node"):
            for key in (gone, gone_ip, gone_id[:12]):
                wait_for(f"{pod.node} still answers {key} after its removal", 10,
                         lambda: http_get(f"http://{pod.ip}:7070/v1/containers/{key}", no_cache=False)[0] == 404)
        checks.ok("a removed container is 404 at every node, by name, IP and prefix, with the hot cache on")
    finally:
        for kind, name in reversed(cleanup):
            run("docker", kind, "rm", "-f", name, check=False) if kind == "container" \
                else run("docker", "network", "rm", name, check=False)


class Containerd:
    """A plain containerd for one simulated host, its socket where the
    host's would be: <host root>/<node>/var/run/containerd/containerd.sock."""

    def __init__(self, host_root, node):
        self.dir = os.path.join(host_root, node)
        self.sock = os.path.join(self.dir, "var/run/containerd/containerd.sock")
        os.makedirs(os.path.dirname(self.sock), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "var/lib/cni/results"), exist_ok=True)
        conf = os.path.join(self.dir, "containerd.toml")
        open(conf, "w").write(f"""version = 2
root = "{self.dir}/var/lib/containerd"
state = "{self.dir}/var/run/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
""")
        self.log = open(os.path.join(self.dir, "containerd.log"), "w")
        self.proc = subprocess.Popen(["containerd", "--config", conf], stdout=self.log, stderr=self.log)
        wait_for(f"containerd of {node} never answered", 20,
                 lambda: subprocess.run(self.ctr("default", "version"), capture_output=True).returncode == 0)
        self.made = []

    def ctr(self, namespace, *args):
        return ["ctr", "-a", self.sock, "-n", namespace, *args]

    def run_container(self, namespace, cid, image_tar, labels, netns=None):
        run(*self.ctr(namespace, "images", "import", "--snapshotter", "native", image_tar))
        image = run(*self.ctr(namespace, "images", "ls", "-q")).split()[0]
        args = ["run", "-d", "--snapshotter", "native"]
        for k, v in labels.items():
            args += ["--label", f"{k}={v}"]
        if netns:
            args += ["--with-ns", f"network:/var/run/netns/{netns}"]
        run(*self.ctr(namespace, *args, image, cid, "sleep", "600"))
        self.made.append((namespace, cid))

    def stop(self):
        for namespace, cid in self.made:
            subprocess.run(self.ctr(namespace, "tasks", "delete", "--force", cid), capture_output=True)
            subprocess.run(self.ctr(namespace, "containers", "delete", cid), capture_output=True)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def every_node_finds(cluster, ref, want_id):
    """Every node pod answers `ref` with the container `want_id`, with and
    without the hot cache."""
    for pod in cluster.pods_of("shoal-node"):
        for no_cache in (True, False):
            c = one(http_get(f"http://{pod.ip}:7070/v1/containers/{ref}", no_cache=no_cache))
            if not c or c["id"] != want_id:
                raise SimError(f"{pod.node}: {ref} (no-cache {no_cache}) -> {c}, not {want_id[:12]}")


def containerd_scenario(cluster, checks, image_tar, netns_ip):
    front = cluster.service_url("shoal-nginx")
    n = len(cluster.nodes)
    wait_for(f"nginx's fleet never showed {n} alive nodes", 60, lambda: fleet_sees(front, n))
    for pod in cluster.pods_of("shoal-node"):
        status, data, _ = http_get(f"http://{pod.ip}:7070/v1/nodes")
        me = [x for x in data["nodes"] if x["id"] == pod.node][0]
        kinds = [e["kind"] for e in me["engines"]]
        if kinds != ["containerd"] or me["engines"][0]["state"] != "synced":
            raise SimError(f"{pod.node} watches {me['engines']}, not one synced containerd")
    checks.ok(f"{n} DaemonSet pods of deploy/k8s-containerd ready, each watching its own host's containerd "
              f"through the hostPath socket")
    every_node_has_the_api_token(cluster, checks, front)
    web = cluster.containerd[cluster.nodes[1]]
    ns = f"shoal-sim-{os.getpid()}"
    veth = f"ksim{os.getpid() % 100000}"
    run("ip", "netns", "add", ns)
    try:
        run("ip", "link", "add", f"{veth}h", "type", "veth", "peer", "name", f"{veth}c")
        run("ip", "link", "set", f"{veth}c", "netns", ns)
        run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{netns_ip}/24", "dev", f"{veth}c")
        run("ip", "netns", "exec", ns, "ip", "link", "set", f"{veth}c", "up")
        web.run_container("default", "sim-web", image_tar,
                          {"nerdctl/name": "sim-web", "com.docker.compose.project": "simshop"}, netns=ns)
        pod_host = cluster.containerd[cluster.nodes[2]]
        pod_host.run_container("k8s.io", "sim-pod-app", image_tar,
                               {"io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.name": "web-0",
                                "io.kubernetes.container.name": "app"})
        c = wait_for("sim-web never found through nginx", 30,
                     lambda: one(http_get(f"{front}/v1/containers/sim-web")))
        if c["node"] != cluster.nodes[1] or c.get("project") != "simshop":
            raise SimError(f"sim-web: {c}")
        every_node_finds(cluster, netns_ip, c["id"])
        checks.ok(f"a ctr container on {cluster.nodes[1]}'s containerd (own network namespace) is found by name "
                  f"through nginx and by {netns_ip} at every node (hostPID: /proc/<pid>/net)")
        k = wait_for("the k8s.io container never found by its pod name", 30,
                     lambda: one(http_get(f"{front}/v1/containers/shop%2Fweb-0%2Fapp")))
        if k["node"] != cluster.nodes[2] or k.get("project") != "shop":
            raise SimError(f"shop/web-0/app: {k}")
        every_node_finds(cluster, "shop/web-0/app", k["id"])
        checks.ok(f"a k8s.io container on {cluster.nodes[2]} is named shop/web-0/app, project shop, "
                  f"and found by that name at every node")
        victim = [p for p in cluster.pods_of("shoal-node") if p.node == cluster.nodes[1]][0]
        _, _, pid = cluster.state(victim.containers[0])
        os.kill(pid, signal.SIGKILL)
        wait_for(f"{victim.name} never restarted", 30, lambda: victim.containers[0].restarts >= 1)
        cluster.wait_ready(60)
        again = wait_for("sim-web not found after its node restarted", 30,
                         lambda: one(http_get(f"{front}/v1/containers/{netns_ip}")))
        if again["id"] != c["id"]:
            raise SimError(f"after the restart {netns_ip} -> {again}")
        checks.ok(f"{cluster.nodes[1]}'s node killed and restarted by the kubelet; its container is found again")
    finally:
        run("ip", "link", "delete", f"{veth}h", check=False)
        run("ip", "netns", "delete", ns, check=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kustomization", default="k8s", help="the directory to render (k8s, deploy/k8s-containerd)")
    ap.add_argument("--nodes", type=int, default=8, help="simulated Kubernetes nodes (default 8)")
    ap.add_argument("--scenario", choices=["docker", "containerd", "none"], default="docker")
    ap.add_argument("--image-tar", help="the OCI image tarball for ctr (containerd scenario)")
    ap.add_argument("--test-image", default="shoal-test/busybox:latest")
    ap.add_argument("--subnet", default="10.246.0.0/16")
    ap.add_argument("--hold", action="store_true", help="keep the cluster up until interrupted (scenario none)")
    a = ap.parse_args()
    if a.nodes < 1:
        ap.error("--nodes must be at least 1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(root)
    work = tempfile.mkdtemp(prefix="shoal-k8s-sim-", dir="/run")
    files = {"cluster-secret": base64.b64encode(os.urandom(24)).decode() + "\n",
             "api-token": os.urandom(16).hex() + "\n"}
    docs = render(a.kustomization, files)
    check_against_kubectl(a.kustomization, files, docs)
    nodes = [f"sim-node-{i}" for i in range(1, a.nodes + 1)]
    host_root = os.path.join(work, "hosts") if a.scenario == "containerd" else None
    cluster = Cluster(work, nodes, host_root=host_root, subnet=a.subnet)
    cluster.containerd = {}
    cluster.api_token = files["api-token"].strip()
    checks = Checks()
    failed = None
    try:
        if host_root:
            for node in nodes:
                cluster.containerd[node] = Containerd(host_root, node)
        cluster.start_network()
        cluster.apply(docs)
        cluster.wait_ready(90)
        checks.ok(f"{len(cluster.pods)} pods ready (startup and readiness probes passed) on {len(nodes)} nodes")
        if a.scenario == "docker":
            docker_scenario(cluster, checks, a.test_image)
        elif a.scenario == "containerd":
            containerd_scenario(cluster, checks, a.image_tar, "10.215.7.2")
        elif a.hold:
            say(f"up: nginx at {cluster.service_url('shoal-nginx')}; ^C to tear down")
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except SimError as e:
        failed = str(e)
    finally:
        if failed:
            say(f"FAILED: {failed}")
            for pod in cluster.pods_of("shoal-node")[:3]:
                for c in pod.containers:
                    say(f"--- {c.docker_name}:")
                    print(run("docker", "logs", "--tail", "10", c.docker_name, check=False), file=sys.stderr)
        cluster.teardown()
        for ctrd in cluster.containerd.values():
            ctrd.stop()
        shutil.rmtree(work, ignore_errors=True)
    left = run("docker", "ps", "-aq", "--filter", f"label={LABEL}={cluster.net_name}", check=False)
    if left:
        failed = failed or f"containers left behind: {left}"
    if failed:
        print(f"{ME} {a.kustomization}: {checks.passed} passed, 1 failed", flush=True)
        sys.exit(1)
    print(f"{ME} {a.kustomization}: {checks.passed} passed, 0 failed", flush=True)


if __name__ == "__main__":
    main()
