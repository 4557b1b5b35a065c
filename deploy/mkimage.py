#!/usr/bin/env python3
"""Writes the bty-web container image as an OCI image layout and oci-archive tars, without a
container daemon: per architecture one layer with that architecture's static bty-web, Debian's CA
bundle, passwd/group entries for uid 1000 and the volume dir, its config and manifest; one image
index over all of them. Bit-for-bit reproducible: every entry has a fixed owner, mode and mtime
(SOURCE_DATE_EPOCH), entries are sorted, JSON is canonical, and the layer is an uncompressed tar
so its digest does not depend on the gzip implementation.

    deploy/mkimage.py --binary amd64=target/x86_64-unknown-linux-musl/static/bty-web \
        --binary arm64=target/aarch64-unknown-linux-musl/static/bty-web \
        --out target/image --tag localhost/bty-web:0.1.0

Writes OUT/oci (the multi-arch layout), OUT/bty-web-VERSION.oci.tar (the same as one archive:
`podman load` takes the host's architecture from its index) and OUT/bty-web-VERSION-ARCH.oci.tar
(one architecture each, for a host of that architecture or an air-gapped copy).
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from datetime import datetime, timezone

UID = 1000
STATE_DIR = "var/lib/bty"
HEALTH = ["/usr/local/bin/bty-web", "health"]
# OCI platforms (GOARCH names; arm64 with its conventional variant) and the ELF e_machine a
# binary for each must have, so a binary given for the wrong architecture is refused.
PLATFORMS = {
    "amd64": ({"architecture": "amd64", "os": "linux"}, 62),
    "arm64": ({"architecture": "arm64", "os": "linux", "variant": "v8"}, 183),
}
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


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


def layer_entries(binary, ca, ipxe_dir=None, man_dir=None):
    dirs = ["etc", "etc/ssl", "etc/ssl/certs", "usr", "usr/local", "usr/local/bin", "var",
            "var/lib"]
    e = [(d + "/", "dir", 0o755, 0, b"") for d in dirs]
    e.append(("tmp/", "dir", 0o1777, 0, b""))
    # Owned by uid 1000 so a fresh named volume mounted here is writable by the server.
    e.append((STATE_DIR + "/", "dir", 0o755, UID, b""))
    e.append((STATE_DIR + "/boot/", "dir", 0o755, UID, b""))
    e.append(("var/cache/", "dir", 0o755, 0, b""))
    e.append(("var/cache/bty/", "dir", 0o750, UID, b""))
    e.append(("etc/passwd", "file", 0o644, 0,
              b"root:x:0:0:root:/root:/sbin/nologin\n"
              b"bty:x:1000:1000:bty lab server:/var/lib/bty:/sbin/nologin\n"))
    e.append(("etc/group", "file", 0o644, 0, b"root:x:0:\nbty:x:1000:\n"))
    e.append(("etc/ssl/certs/ca-certificates.crt", "file", 0o644, 0, ca))
    with open(binary, "rb") as f:
        e.append(("usr/local/bin/bty-web", "file", 0o755, 0, f.read()))
    # The machines' iPXE binaries (`make ipxe`) where [boot] ipxe_dir looks by default; they
    # are for the clients, so every server architecture carries the same files, x86 and arm64.
    if ipxe_dir:
        e += [(d + "/", "dir", 0o755, 0, b"") for d in ["usr/share", "usr/share/bty",
                                                          "usr/share/bty/ipxe"]]
        for name in ["undionly.kpxe", "ipxe.efi", "ipxe-arm64.efi"]:
            with open(os.path.join(ipxe_dir, name), "rb") as f:
                e.append(("usr/share/bty/ipxe/" + name, "file", 0o644, 0, f.read()))
    # bty-web(8) (`make man`), so `podman run --rm IMAGE` users and tools that unpack images
    # find the manual beside the binary.
    if man_dir:
        if not ipxe_dir:
            e += [("usr/share/", "dir", 0o755, 0, b"")]
        e += [(d + "/", "dir", 0o755, 0, b"") for d in ["usr/share/man", "usr/share/man/man8"]]
        with open(os.path.join(man_dir, "bty-web.8.gz"), "rb") as f:
            e.append(("usr/share/man/man8/bty-web.8.gz", "file", 0o644, 0, f.read()))
    return e


def check_elf(binary, arch):
    """Refuses a binary that is not an ELF executable for `arch`."""
    try:
        with open(binary, "rb") as f:
            h = f.read(20)
    except OSError as e:
        sys.exit(f"mkimage: reading the {arch} bty-web {binary}: {e.strerror}")
    want = PLATFORMS[arch][1]
    if len(h) < 20 or h[:4] != b"\x7fELF":
        sys.exit(f"mkimage: {binary} (for {arch}) is not an ELF file")
    machine = int.from_bytes(h[18:20], "little" if h[5] == 1 else "big")
    if machine != want:
        sys.exit(f"mkimage: {binary} is an ELF for machine {machine}, not {arch} ({want})")


def digest(blob):
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def desc(media, blob):
    return {"mediaType": media, "size": len(blob), "digest": digest(blob)}


def arch_image(arch, binary, ca, epoch, created, labels, ipxe_dir=None, man_dir=None):
    """One architecture's layer, config and manifest: (blobs, manifest descriptor)."""
    platform = PLATFORMS[arch][0]
    check_elf(binary, arch)
    layer = tar_bytes(layer_entries(binary, ca, ipxe_dir, man_dir), epoch)
    config = dict(platform)
    config.update({
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
            "Volumes": {"/var/lib/bty": {}, "/var/cache/bty": {}},
            "WorkingDir": "/var/lib/bty",
            "StopSignal": "SIGTERM",
            "Labels": labels,
            # Docker's extension; podman and docker honour it when they see it.
            "Healthcheck": {"Test": ["CMD"] + HEALTH, "Interval": 30_000_000_000,
                            "Timeout": 5_000_000_000, "Retries": 3},
        },
        "rootfs": {"type": "layers", "diff_ids": [digest(layer)]},
        "history": [{"created": created, "created_by": "deploy/mkimage.py"}],
    })
    config_blob = canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", config_blob),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar", layer)],
        "annotations": oci_annotations(labels),
    }
    manifest_blob = canonical(manifest)
    mdesc = desc(MANIFEST, manifest_blob)
    mdesc["platform"] = platform
    return [layer, config_blob, manifest_blob], mdesc


def oci_annotations(labels):
    return {k: v for k, v in labels.items() if k.startswith("org.opencontainers")}


def layout_files(top, blobs, tag):
    """An OCI image layout whose index.json names `top` (a manifest or an index) as `tag`."""
    top = dict(top)
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [top]}
    files = {
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical(index),
    }
    for blob in blobs:
        files["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob
    return files


def write_archive(path, files, epoch):
    """The layout as one tar (an oci-archive): what `podman load -i` takes."""
    entries = [(d, "dir", 0o755, 0, b"") for d in ("blobs/", "blobs/sha256/")]
    entries += [(n, "file", 0o644, 0, d) for n, d in files.items()]
    with open(path, "wb") as f:
        f.write(tar_bytes(entries, epoch))


def build(args):
    epoch = args.epoch
    created = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
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
    ca = ca_bundle(args.ca_dir)
    # Every architecture's blobs and manifest descriptor, in PLATFORMS order.
    archs = [a for a in PLATFORMS if a in args.binaries]
    images = {a: arch_image(a, args.binaries[a], ca, epoch, created, labels, args.ipxe_dir,
                            args.man_dir)
              for a in archs}
    # The multi-arch image: an index over the manifests, named by the layout's index.json
    # (one entry, as buildah and buildx write it; podman load picks the host's manifest from it).
    index = {"schemaVersion": 2, "mediaType": INDEX,
             "manifests": [mdesc for _, mdesc in images.values()],
             "annotations": oci_annotations(labels)}
    index_blob = canonical(index)
    blobs = [b for bs, _ in images.values() for b in bs] + [index_blob]
    files = layout_files(desc(INDEX, index_blob), blobs, args.tag)

    layout = os.path.join(args.out, "oci")
    # A layout from an earlier build is replaced whole, so no stale blob stays behind.
    if os.path.isfile(os.path.join(layout, "oci-layout")):
        shutil.rmtree(layout)
    for name, data in files.items():
        path = os.path.join(layout, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    archive = os.path.join(args.out, f"bty-web-{args.version}.oci.tar")
    write_archive(archive, files, epoch)
    print(f"image {args.tag}: index {digest(index_blob)}")
    print(f"  layout  {layout}")
    print(f"  archive {archive}  (podman load -i {archive}: the host's architecture)")
    for arch, (bs, mdesc) in images.items():
        one = os.path.join(args.out, f"bty-web-{args.version}-{arch}.oci.tar")
        write_archive(one, layout_files(mdesc, bs, args.tag), epoch)
        print(f"  {arch:7} manifest {mdesc['digest']}  archive {one}")


def binary_arg(spec):
    """ARCH=PATH, or a bare PATH for --arch."""
    arch, sep, path = spec.partition("=")
    if not sep:
        return None, spec
    if arch not in PLATFORMS:
        raise argparse.ArgumentTypeError(f"unknown architecture {arch!r} in {spec!r}: "
                                         f"use one of {', '.join(PLATFORMS)}")
    return arch, path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", required=True, action="append", type=binary_arg,
                   help="ARCH=PATH of a static bty-web (once per architecture), or PATH for --arch")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tag", required=True, help="image name, e.g. localhost/bty-web:0.1.0")
    p.add_argument("--version", required=True)
    p.add_argument("--revision", default="", help="the git commit")
    p.add_argument("--arch", default="amd64", choices=list(PLATFORMS),
                   help="the architecture of a --binary given without ARCH=")
    p.add_argument("--ca-dir", default="/usr/share/ca-certificates/mozilla")
    p.add_argument("--ipxe-dir",
                   help="undionly.kpxe, ipxe.efi and ipxe-arm64.efi for /usr/share/bty/ipxe")
    p.add_argument("--man-dir", help="bty-web.8.gz (make man) for /usr/share/man/man8")
    p.add_argument("--epoch", type=int,
                   default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
                   help="mtime of every file (default $SOURCE_DATE_EPOCH)")
    args = p.parse_args()
    args.binaries = {}
    for arch, path in args.binary:
        arch = arch or args.arch
        if arch in args.binaries:
            p.error(f"--binary given twice for {arch}")
        args.binaries[arch] = path
    build(args)


if __name__ == "__main__":
    main()
