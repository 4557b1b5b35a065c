#!/usr/bin/env python3
"""Writes the bty-web container image as an OCI image layout and an oci-archive tar, without a
container daemon: one layer with the static bty-web, Debian's CA bundle, passwd/group entries for
uid 1000 and the volume dir. Bit-for-bit reproducible: every entry has a fixed owner, mode and
mtime (SOURCE_DATE_EPOCH), entries are sorted, JSON is canonical, and the layer is an
uncompressed tar so its digest does not depend on the gzip implementation.

    deploy/mkimage.py --binary target/.../bty-web --out target/image --tag localhost/bty-web:0.1.0
"""

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
from datetime import datetime, timezone

UID = 1000
STATE_DIR = "var/lib/bty"
HEALTH = ["/usr/local/bin/bty-web", "health"]


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def tar_bytes(entries, epoch):
    """A ustar archive of (path, kind, mode, uid, data) entries in path order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, kind, mode, uid, data in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(path)
            info.type = tarfile.DIRTYPE if kind == "dir" else tarfile.REGTYPE
            info.mode = mode
            info.uid = info.gid = uid
            info.uname = info.gname = "bty" if uid == UID else "root"
            info.mtime = epoch
            info.size = len(data) if kind == "file" else 0
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return buf.getvalue()


def ca_bundle(ca_dir):
    """Debian's Mozilla CA certificates as one PEM bundle, in file-name order."""
    names = sorted(n for n in os.listdir(ca_dir) if n.endswith(".crt"))
    if not names:
        sys.exit(f"mkimage: no *.crt in {ca_dir} (install Debian's ca-certificates)")
    out = b""
    for n in names:
        with open(os.path.join(ca_dir, n), "rb") as f:
            pem = f.read()
        out += pem if pem.endswith(b"\n") else pem + b"\n"
    return out


def layer_entries(binary, ca, ipxe_dir=None):
    dirs = ["etc", "etc/ssl", "etc/ssl/certs", "usr", "usr/local", "usr/local/bin", "var",
            "var/lib"]
    e = [(d + "/", "dir", 0o755, 0, b"") for d in dirs]
    e.append(("tmp/", "dir", 0o1777, 0, b""))
    # Owned by uid 1000 so a fresh named volume mounted here is writable by the server.
    e.append((STATE_DIR + "/", "dir", 0o755, UID, b""))
    e.append((STATE_DIR + "/boot/", "dir", 0o755, UID, b""))
    e.append(("etc/passwd", "file", 0o644, 0,
              b"root:x:0:0:root:/root:/sbin/nologin\n"
              b"bty:x:1000:1000:bty lab server:/var/lib/bty:/sbin/nologin\n"))
    e.append(("etc/group", "file", 0o644, 0, b"root:x:0:\nbty:x:1000:\n"))
    e.append(("etc/ssl/certs/ca-certificates.crt", "file", 0o644, 0, ca))
    with open(binary, "rb") as f:
        e.append(("usr/local/bin/bty-web", "file", 0o755, 0, f.read()))
    # The machines' iPXE binaries (`make ipxe`) where [boot] ipxe_dir looks by default; they
    # are for the clients, so every server architecture carries the same x86 files.
    if ipxe_dir:
        e += [(d + "/", "dir", 0o755, 0, b"") for d in ["usr/share", "usr/share/bty",
                                                          "usr/share/bty/ipxe"]]
        for name in ["undionly.kpxe", "ipxe.efi"]:
            with open(os.path.join(ipxe_dir, name), "rb") as f:
                e.append(("usr/share/bty/ipxe/" + name, "file", 0o644, 0, f.read()))
    return e


def build(args):
    epoch = args.epoch
    created = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    layer = tar_bytes(layer_entries(args.binary, ca_bundle(args.ca_dir), args.ipxe_dir), epoch)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    labels = {
        "org.opencontainers.image.title": "bty-web",
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.revision": args.revision,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.source": "https://github.com/safl/bty",
        # OCI configs have no healthcheck; these say what the compose/Quadlet files run.
        "org.bty.healthcheck.cmd": " ".join(HEALTH),
        "org.bty.healthcheck.interval": "30s",
    }
    config = {
        "architecture": args.arch,
        "os": "linux",
        "created": created,
        "config": {
            "User": f"{UID}:{UID}",
            "ExposedPorts": {"8080/tcp": {}},
            "Env": [
                "PATH=/usr/local/bin",
                "BTY_PATHS_STATE_DIR=/var/lib/bty",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            ],
            "Entrypoint": ["/usr/local/bin/bty-web"],
            "Volumes": {"/var/lib/bty": {}},
            "WorkingDir": "/var/lib/bty",
            "StopSignal": "SIGTERM",
            "Labels": labels,
            # Docker's extension; podman and docker honour it when they see it.
            "Healthcheck": {"Test": ["CMD"] + HEALTH, "Interval": 30_000_000_000,
                            "Timeout": 5_000_000_000, "Retries": 3},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": created, "created_by": "deploy/mkimage.py"}],
    }
    config_blob = canonical(config)
    desc = lambda media, blob: {"mediaType": media, "size": len(blob),
                                "digest": "sha256:" + hashlib.sha256(blob).hexdigest()}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", config_blob),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar", layer)],
        "annotations": {k: v for k, v in labels.items() if k.startswith("org.opencontainers")},
    }
    manifest_blob = canonical(manifest)
    mdesc = desc("application/vnd.oci.image.manifest.v1+json", manifest_blob)
    mdesc["platform"] = {"architecture": args.arch, "os": "linux"}
    mdesc["annotations"] = {"org.opencontainers.image.ref.name": args.tag}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [mdesc]}
    files = {
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical(index),
    }
    for blob in (layer, config_blob, manifest_blob):
        files["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob

    layout = os.path.join(args.out, "oci")
    for name, data in files.items():
        path = os.path.join(layout, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    # The same layout as one tar (an oci-archive): what `podman load -i` takes.
    entries = [(d, "dir", 0o755, 0, b"") for d in ("blobs/", "blobs/sha256/")]
    entries += [(n, "file", 0o644, 0, d) for n, d in files.items()]
    archive = os.path.join(args.out, f"bty-web-{args.version}-{args.arch}.oci.tar")
    with open(archive, "wb") as f:
        f.write(tar_bytes(entries, epoch))
    print(f"image {args.tag} ({args.arch}): manifest {mdesc['digest']}")
    print(f"  layout  {layout}")
    print(f"  archive {archive}  (podman load -i {archive})")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", required=True, help="the static bty-web")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tag", required=True, help="image name, e.g. localhost/bty-web:0.1.0")
    p.add_argument("--version", required=True)
    p.add_argument("--revision", default="", help="the git commit")
    p.add_argument("--arch", default="amd64")
    p.add_argument("--ca-dir", default="/usr/share/ca-certificates/mozilla")
    p.add_argument("--ipxe-dir", help="undionly.kpxe and ipxe.efi for /usr/share/bty/ipxe")
    p.add_argument("--epoch", type=int,
                   default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
                   help="mtime of every file (default $SOURCE_DATE_EPOCH)")
    build(p.parse_args())


if __name__ == "__main__":
    main()
