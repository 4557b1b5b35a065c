#!/usr/bin/env bash
# Builds the bty netboot live environment: Debian's kernel, and an initramfs that is the whole
# live system (busybox, the static bty, the NIC/disk modules, live/init). Same inputs, same bytes:
# the cpio is sorted, owned by 0:0, every mtime is SOURCE_DATE_EPOCH, and compression is fixed.
#
# Output in $OUT (default build/live):
#   bty-netboot-pc-x86_64-v<version>.vmlinuz, .initrd, .sha256 (sha256sum format, both files)
# Inputs (environment):
#   BTY              the static bty (default: the musl build of `make static`)
#   KERNEL_PKG       Debian kernel package (default: what linux-image-amd64 depends on now)
#   CACHE            where the .deb files are downloaded and unpacked (default target/live-cache)
#   SOURCE_DATE_EPOCH  mtime of every file (default: the commit time of HEAD)
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
BTY=${BTY:-target/x86_64-unknown-linux-musl/static/bty}
OUT=${OUT:-build/live}
CACHE=${CACHE:-target/live-cache}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH
name=bty-netboot-pc-x86_64-v$version

# NIC and storage drivers a lab machine may need, plus USB keyboards for the triage shell. Only
# modules the kernel builds as modules matter; built-in ones are skipped. Their dependencies
# come from modules.dep.
MODULES=(
    # buses whose devices no driver below pulls in by dependency
    virtio_pci
    # network: QEMU/KVM, Intel, Realtek, Broadcom, Mellanox, Aquantia, USB dongles
    virtio_net e1000 e1000e igb igc ixgb ixgbe i40e r8169 tg3 bnxt_en mlx4_en mlx5_core atlantic
    r8152 cdc_ether ax88179_178a
    # storage: virtio, SATA/IDE, NVMe, SAS/RAID HBAs, USB, SD/eMMC
    virtio_blk virtio_scsi ahci ata_piix nvme sd_mod sr_mod mpt3sas megaraid_sas
    xhci_pci ehci_pci ohci_pci uhci_hcd usb_storage uas mmc_block sdhci_pci sdhci_acpi
    # console input
    usbhid hid_generic atkbd
    # the USB live medium (live/usb.sh): its ISO 9660 file system, BTY_IMAGES
    isofs exfat nls_utf8
)

die() { echo "live/build.sh: $*" >&2; exit 1; }
[ -x "$BTY" ] || die "no static bty at $BTY (run: make static)"
file "$BTY" 2>/dev/null | grep -q 'statically linked\|static-pie' || die "$BTY is not a static binary"
for t in dpkg-deb cpio depmod zstd; do
    command -v "$t" >/dev/null || die "needs $t (make deps)"
done

mkdir -p "$CACHE"
# A .deb already in the cache is used as it is: rebuilding from the same files gives the same
# bytes even after the mirror moves on.
fetch_deb() { # package -> path of its .deb in the cache
    local deb
    deb=$(find "$CACHE" -maxdepth 1 -name "${1}_*.deb" | sort | tail -n 1)
    if [ -z "$deb" ]; then
        (cd "$CACHE" && apt-get download -q "$1" >&2) || die "apt-get download $1 failed"
        deb=$(find "$CACHE" -maxdepth 1 -name "${1}_*.deb" | sort | tail -n 1)
    fi
    [ -n "$deb" ] || die "no .deb for $1 in $CACHE"
    echo "$deb"
}
if [ -z "${KERNEL_PKG:-}" ]; then
    KERNEL_PKG=$(find "$CACHE" -maxdepth 1 -name 'linux-image-[0-9]*-amd64_*.deb' -printf '%f\n' |
        sort -V | tail -n 1 | cut -d_ -f1)
fi
if [ -z "${KERNEL_PKG:-}" ]; then
    KERNEL_PKG=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$KERNEL_PKG" ] || die "cannot tell the kernel package (set KERNEL_PKG)"
kdeb=$(fetch_deb "$KERNEL_PKG")
bdeb=$(fetch_deb busybox-static)

work=$CACHE/work
rm -rf "$work"
mkdir -p "$work/kernel" "$work/busybox" "$work/root"
dpkg-deb -x "$kdeb" "$work/kernel"
dpkg-deb -x "$bdeb" "$work/busybox"
kver=$(ls "$work/kernel/lib/modules")
[ "$(echo "$kver" | wc -w)" = 1 ] || die "expected one kernel in $kdeb, found: $kver"
kmods=$work/kernel/lib/modules/$kver
# The package ships no modules.dep (its postinst runs depmod on the installed system).
depmod -b "$work/kernel" "$kver"

# Load order: every module after its dependencies (depth-first over modules.dep).
declare -A deps=() seen=()
while IFS=: read -r path rest; do
    deps[$path]=$rest
done <"$kmods/modules.dep"
declare -A by_name=()
for path in "${!deps[@]}"; do
    base=${path##*/}
    base=${base%.ko*}
    by_name[${base//-/_}]=$path
done
order=()
visit() {
    local p=$1 d
    [ -n "${seen[$p]:-}" ] && return
    seen[$p]=1
    for d in ${deps[$p]}; do visit "$d"; done
    order+=("$p")
}
for m in "${MODULES[@]}"; do
    if [ -n "${by_name[$m]:-}" ]; then
        visit "${by_name[$m]}"
    elif ! grep -q "/${m}.ko" "$kmods/modules.builtin"; then
        die "module $m is neither a module nor built into $kver"
    fi
done

R=$work/root
mkdir -p "$R"/{bin,dev,etc/bty,lib/modules,proc,root,run,sys,tmp}
install -m 0755 "$work/busybox/bin/busybox" "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -s busybox "$R/bin/$a"
done
install -m 0755 "$BTY" "$R/bin/bty"
install -m 0755 live/init "$R/init"
install -m 0755 live/udhcpc.script "$R/etc/bty/udhcpc.script"
for p in "${order[@]}"; do
    install -D -m 0644 "$kmods/$p" "$R/lib/modules/$p"
    echo "$p" >>"$R/etc/bty/modules"
done
printf '%s\n' "bty $version" "kernel $KERNEL_PKG $(basename "$kdeb")" \
    "busybox $(basename "$bdeb")" >"$R/etc/bty/release"
chmod 0700 "$R/root"
chmod 1777 "$R/tmp"

mkdir -p "$OUT"
find "$R" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
# --reproducible: inode numbers and device ids come from the archive, not from this file system.
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc -R 0:0 --reproducible --quiet) |
    zstd -q -19 -T1 --no-check -c >"$OUT/$name.initrd.tmp"
mv "$OUT/$name.initrd.tmp" "$OUT/$name.initrd"
install -m 0644 "$work/kernel/boot/vmlinuz-$kver" "$OUT/$name.vmlinuz"
touch -d "@$SOURCE_DATE_EPOCH" "$OUT/$name.vmlinuz" "$OUT/$name.initrd"
(cd "$OUT" && sha256sum "$name.vmlinuz" "$name.initrd" >"$name.sha256")

size=$(stat -c %s "$OUT/$name.initrd")
[ "$size" -le $((40 << 20)) ] || die "$OUT/$name.initrd is $size bytes, over the 40 MiB budget"
echo "live: $KERNEL_PKG ($kver), ${#order[@]} modules, initrd $((size >> 10)) KiB"
cat "$OUT/$name.sha256"
