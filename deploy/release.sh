#!/usr/bin/env bash
# Gathers the release's asset set into one directory: the USB live medium, the netboot kernel
# and initrd of each architecture (x86_64, arm64), the iPXE first stages bty-web serves, the static binaries, the OCI image archive,
# the Debian packages (bty, bty-web; amd64 and arm64),
# then release.toml (what bty-web's netboot fetch reads: version, each asset's name, kind,
# architecture, size and sha256) and SHA256SUMS over everything. Every file carries
# SOURCE_DATE_EPOCH as its time, so two runs over the same build give identical directories.
#
# An air-gapped lab mirrors a release by copying this directory; bty-web's [boot] release_url
# may name the copy (a directory) or a web server serving it.
#
# Inputs (environment; the defaults are where `make` puts them):
#   OUT (build/release), LIVE (build/live), USB (build/usb), IPXE (build/ipxe),
#   IMAGE (target/image), DEB (build/deb) and DEB_REVISION (1, as deploy/deb.sh),
#   BTY_X86_64, BTY_ARM64, BTY_WEB_X86_64, BTY_WEB_ARM64 (the static builds)
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
OUT=${OUT:-build/release}
LIVE=${LIVE:-build/live}
USB=${USB:-build/usb}
IPXE=${IPXE:-build/ipxe}
IMAGE=${IMAGE:-target/image}
DEB=${DEB:-build/deb}
deb_version=$version-${DEB_REVISION:-1}
BTY_X86_64=${BTY_X86_64:-target/x86_64-unknown-linux-musl/static/bty}
BTY_ARM64=${BTY_ARM64:-target/aarch64-unknown-linux-musl/static/bty}
BTY_WEB_X86_64=${BTY_WEB_X86_64:-target/x86_64-unknown-linux-musl/static/bty-web}
BTY_WEB_ARM64=${BTY_WEB_ARM64:-target/aarch64-unknown-linux-musl/static/bty-web}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
fi
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)

die() { echo "deploy/release.sh: $*" >&2; exit 1; }

# name <- source, kind, arch, mode. The kinds are the ones release.toml documents (docs/workers.md,
# "Netboot artifacts from a release"); bty-web installs netboot-kernel, netboot-initrd,
# ipxe-bios and ipxe-efi.
netboot=bty-netboot-pc-x86_64-v$version
netboot_arm64=bty-netboot-arm64-v$version
usb=bty-usbboot-pc-x86_64-v$version.iso
rpi=bty-usbboot-rpi-arm64-v$version.img.gz
assets=(
    "$usb|$USB/$usb|usb-iso|x86_64|0644"
    "$usb.sha256|$USB/$usb.sha256|checksums|x86_64|0644"
    "$rpi|$USB/$rpi|usb-image|arm64|0644"
    "$rpi.sha256|$USB/$rpi.sha256|checksums|arm64|0644"
    "$netboot.vmlinuz|$LIVE/$netboot.vmlinuz|netboot-kernel|x86_64|0644"
    "$netboot.initrd|$LIVE/$netboot.initrd|netboot-initrd|x86_64|0644"
    "$netboot.sha256|$LIVE/$netboot.sha256|checksums|x86_64|0644"
    "$netboot_arm64.vmlinuz|$LIVE/$netboot_arm64.vmlinuz|netboot-kernel|arm64|0644"
    "$netboot_arm64.initrd|$LIVE/$netboot_arm64.initrd|netboot-initrd|arm64|0644"
    "$netboot_arm64.sha256|$LIVE/$netboot_arm64.sha256|checksums|arm64|0644"
    "undionly.kpxe|$IPXE/undionly.kpxe|ipxe-bios|x86_64|0644"
    "ipxe.efi|$IPXE/ipxe.efi|ipxe-efi|x86_64|0644"
    "ipxe-arm64.efi|$IPXE/ipxe-arm64.efi|ipxe-efi|arm64|0644"
    "bty-x86_64-linux-musl-v$version|$BTY_X86_64|bty|x86_64|0755"
    "bty-aarch64-linux-musl-v$version|$BTY_ARM64|bty|arm64|0755"
    "bty-web-x86_64-linux-musl-v$version|$BTY_WEB_X86_64|bty-web|x86_64|0755"
    "bty-web-aarch64-linux-musl-v$version|$BTY_WEB_ARM64|bty-web|arm64|0755"
    "bty-web-$version.oci.tar|$IMAGE/bty-web-$version.oci.tar|oci-image|any|0644"
    "bty_${deb_version}_amd64.deb|$DEB/bty_${deb_version}_amd64.deb|deb|x86_64|0644"
    "bty_${deb_version}_arm64.deb|$DEB/bty_${deb_version}_arm64.deb|deb|arm64|0644"
    "bty-web_${deb_version}_amd64.deb|$DEB/bty-web_${deb_version}_amd64.deb|deb|x86_64|0644"
    "bty-web_${deb_version}_arm64.deb|$DEB/bty-web_${deb_version}_arm64.deb|deb|arm64|0644"
)

rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
{
    echo "# bty release manifest: what bty-web's netboot fetch reads ([boot] release_url)"
    echo "version = \"$version\""
    echo "revision = \"$revision\""
} >"$OUT.tmp/release.toml"
for a in "${assets[@]}"; do
    IFS='|' read -r name src kind arch mode <<<"$a"
    [ -s "$src" ] || die "missing $src (run: make release, which builds it)"
    install -m "$mode" "$src" "$OUT.tmp/$name"
    size=$(stat -c %s "$OUT.tmp/$name")
    sum=$(sha256sum "$OUT.tmp/$name" | cut -d' ' -f1)
    printf '\n[[assets]]\nname = "%s"\nkind = "%s"\narch = "%s"\nsize = %s\nsha256 = "%s"\n' \
        "$name" "$kind" "$arch" "$size" "$sum" >>"$OUT.tmp/release.toml"
done
(cd "$OUT.tmp" && find . -maxdepth 1 -type f ! -name SHA256SUMS -printf '%f\n' | LC_ALL=C sort |
    xargs sha256sum >SHA256SUMS)
touch -d "@$SOURCE_DATE_EPOCH" "$OUT.tmp"/*
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "release: $OUT ($(du -sh "$OUT" | cut -f1), $(ls "$OUT" | wc -l) files)"
(cd "$OUT" && sha256sum -c --quiet SHA256SUMS) || die "SHA256SUMS does not verify"
