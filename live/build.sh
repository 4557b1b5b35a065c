#!/usr/bin/env bash
# Builds the bty netboot live environment: Debian's kernel, and an initramfs that is the whole
# live system (busybox, the static bty, the NIC/disk modules, live/init). Same inputs, same bytes:
# the cpio is sorted, owned by 0:0, every mtime is SOURCE_DATE_EPOCH, and compression is fixed.
#
# Output in $OUT (default build/live):
#   x86_64: bty-netboot-pc-x86_64-v<version>.vmlinuz, .initrd, .sha256 (sha256sum format)
#   arm64:  bty-netboot-arm64-v<version>.vmlinuz, .initrd, .sha256
# Inputs (environment):
#   ARCH             x86_64 (default) or arm64
#   BTY              the static bty (default: the musl build of `make static` / `make static-arm64`)
#   KERNEL_PKG       Debian kernel package (default: what linux-image-amd64 / -arm64 depends on now)
#   CACHE            where the .deb files are downloaded and unpacked (default target/live-cache,
#                    target/live-cache/arm64 for arm64)
#   SOURCE_DATE_EPOCH  mtime of every file (default: the commit time of HEAD)
# The arm64 packages come through an apt state of their own (live/debs.sh), so the machine's
# dpkg is untouched.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
ARCH=${ARCH:-x86_64}
case $ARCH in
    x86_64 | amd64)
        ARCH=x86_64
        deb_arch=amd64
        BTY=${BTY:-target/x86_64-unknown-linux-musl/static/bty}
        CACHE=${CACHE:-target/live-cache}
        name_arch=pc-x86_64
        ;;
    arm64 | aarch64)
        ARCH=arm64
        deb_arch=arm64
        BTY=${BTY:-target/aarch64-unknown-linux-musl/static/bty}
        CACHE=${CACHE:-target/live-cache/arm64}
        name_arch=arm64
        ;;
    *) echo "live/build.sh: ARCH is x86_64 or arm64, not $ARCH" >&2; exit 1 ;;
esac
OUT=${OUT:-build/live}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH
name=bty-netboot-$name_arch-v$version

# NIC and storage drivers a lab machine may need, plus USB keyboards for the triage shell. Only
# modules the kernel builds as modules matter; built-in ones are skipped. Their dependencies
# come from modules.dep.
if [ "$ARCH" = x86_64 ]; then
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
else
    MODULES=(
        # buses: PCI virtio (QEMU's virt machine), and the host bridges of arm64 servers and
        # boards whose drivers are modules
        virtio_pci pcie_brcmstb
        # network: QEMU/KVM, Intel, Broadcom (and the Raspberry Pi 4's GENET), Mellanox,
        # Marvell, Realtek, Aquantia, USB dongles
        virtio_net e1000e igb igc ixgbe i40e tg3 bnxt_en genet mlx4_en mlx5_core mvpp2 r8169
        atlantic r8152 cdc_ether ax88179_178a
        # storage: virtio, SATA, NVMe, SAS/RAID HBAs, USB, SD/eMMC (the Pi's iProc SDHCI and
        # SD host)
        virtio_blk virtio_scsi ahci nvme sd_mod sr_mod mpt3sas megaraid_sas
        xhci_pci usb_storage uas mmc_block sdhci_pci sdhci_iproc bcm2835
        # the Raspberry Pi: the Pi 3's USB controller and the LAN chips behind it, the reset
        # line the Pi 4's VL805 USB controller waits for
        dwc2 smsc95xx lan78xx reset_raspberrypi
        # console input
        usbhid hid_generic
        # the USB live media: ISO 9660 (live/usb.sh), the Pi stick's FAT boot partition
        # (live/rpi.sh), BTY_IMAGES
        isofs vfat nls_cp437 nls_ascii exfat nls_utf8
    )
fi

die() { echo "live/build.sh: $*" >&2; exit 1; }
[ -x "$BTY" ] || die "no static bty at $BTY (run: make static)"
file "$BTY" 2>/dev/null | grep -q 'statically linked\|static-pie' || die "$BTY is not a static binary"
for t in dpkg-deb cpio depmod zstd; do
    command -v "$t" >/dev/null || die "needs $t (make deps)"
done

. live/debs.sh
if [ -z "${KERNEL_PKG:-}" ]; then
    KERNEL_PKG=$(find "$CACHE" -maxdepth 1 -name "linux-image-[0-9]*-${deb_arch}_*.deb" -printf '%f\n' |
        sort -V | tail -n 1 | cut -d_ -f1)
fi
if [ -z "${KERNEL_PKG:-}" ]; then
    KERNEL_PKG=$(apt-cache "${APT_OPTS[@]}" depends "linux-image-$deb_arch" 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ {print $2; exit}' | cut -d: -f1)
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
    elif ! grep -q "/${m//_/[-_]}.ko" "$kmods/modules.builtin"; then
        die "module $m is neither a module nor built into $kver"
    fi
done

R=$work/root
mkdir -p "$R"/{bin,dev,etc/bty,lib/modules,proc,root,run,sys,tmp}
install -m 0755 "$work/busybox/bin/busybox" "$R/bin/busybox"
# The applet list comes from the binary itself (run through qemu-user for arm64).
run=()
[ "$ARCH" = arm64 ] && run=(qemu-aarch64-static)
for a in $("${run[@]}" "$R/bin/busybox" --list); do
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
