#!/usr/bin/env bash
# Builds the tiny test image as an OCI image layout tarball, for containerd
# (`ctr images import`): the same busybox-static root file system as
# scripts/test-image.sh, one uncompressed layer, named shoal-test/busybox:latest.
# No registry is needed. Prints the tarball's path.
#   scripts/oci-image.sh
set -euo pipefail

me=oci-image
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/target/test-image"
rootfs="$out/busybox-rootfs.tar"
oci="$out/busybox-oci.tar"

say() { echo "$me: $*" >&2; }

if [ ! -s "$rootfs" ]; then
  say "building the root file system first (scripts/test-image.sh --force)"
  bash "$root/scripts/test-image.sh" --force >/dev/null
fi
if [ ! -s "$oci" ] || [ "$rootfs" -nt "$oci" ]; then
  arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
  python3 - "$rootfs" "$oci" "$arch" <<'PY'
import hashlib, io, json, os, sys, tarfile
rootfs, out, arch = sys.argv[1], sys.argv[2], sys.argv[3]
layer = open(rootfs, "rb").read()
blobs = {}
def blob(data, media):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media, "digest": digest, "size": len(data)}
layer_desc = blob(layer, "application/vnd.oci.image.layer.v1.tar")
config = {"architecture": arch, "os": "linux",
          "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
          "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
          "history": [{"comment": "shoal test image (Debian busybox-static)"}]}
config_desc = blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc, "layers": [layer_desc]}
manifest_desc = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
manifest_desc["annotations"] = {"io.containerd.image.name": "shoal-test/busybox:latest",
                                "org.opencontainers.image.ref.name": "latest"}
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [manifest_desc]}
tmp = f"{out}.{os.getpid()}.tmp"
with tarfile.open(tmp, "w") as t:
    def add(name, data):
        info = tarfile.TarInfo(name); info.size = len(data); info.mode = 0o644
        t.addfile(info, io.BytesIO(data))
    add("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    add("index.json", json.dumps(index).encode())
    for digest, data in blobs.items():
        add("blobs/sha256/" + digest.split(":", 1)[1], data)
os.replace(tmp, out)
PY
  say "built $oci"
fi
echo "$oci"
