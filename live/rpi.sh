#!/usr/bin/env bash
# Builds the bty Raspberry Pi stick: a raw disk image that boots a Raspberry Pi 3 or 4 (and a
# Pi 400 or CM4) from USB or SD through the Pi's own firmware, and any arm64 UEFI machine
# through EFI/BOOT/BOOTAA64.EFI, straight into the wizard. It carries the arm64 live
# environment of `make live ARCH=arm64` (the same kernel, initrd and bty) and BTY_IMAGES, which
# the first boot grows to fill the stick (`bty usb-grow`), as on the x86_64 stick.
#
# Layout (an MBR, identifier b7e10002):
#   p1  0x0c, FAT32 labelled BTY_LIVE, from 4 MiB: the Pi firmware (Debian's raspi-firmware),
#       config.txt, cmdline.txt, the kernel, the initrd, the device trees of Debian's kernel;
#       GRUB for arm64 UEFI in EFI/BOOT with its config in boot/grub
#   p2  0x07, BTY_IMAGES: exFAT, 32 MiB at build time, a fixed volume serial
# The Pi firmware and GRUB read the same kernel and initrd.
#
# Same inputs, same bytes: every time is SOURCE_DATE_EPOCH (mtools honours it), the FAT
# volume id and the exFAT serial are fixed, files are copied one by one in sorted order, and
# gzip stores no name or time.
#
# Output in $OUT (default build/usb): bty-usbboot-rpi-arm64-v<version>.img.gz and its .sha256.
# Inputs (environment): LIVE (default build/live, from `make live ARCH=arm64`), CACHE (default
# target/live-cache/arm64, where live/build.sh keeps the arm64 packages), SOURCE_DATE_EPOCH
# (default: the commit time of HEAD).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
LIVE=${LIVE:-build/live}
OUT=${OUT:-build/usb}
CACHE=${CACHE:-target/live-cache/arm64}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH
name=bty-usbboot-rpi-arm64-v$version
netboot=bty-netboot-arm64-v$version

# BTY_IMAGES as on the x86_64 stick: the same sentinels on the kernel command line.
IMAGES_MIB=32
IMAGES_SERIAL=b7e10001
# Where the boot partition starts: 4 MiB, the erase-block alignment SD cards want.
BOOT_START_MIB=4

die() { echo "live/rpi.sh: $*" >&2; exit 1; }
for t in grub-mkimage mkfs.fat mcopy mmd mkfs.exfat sfdisk python3 dpkg-deb gzip; do
    command -v "$t" >/dev/null || die "needs $t (make deps)"
done
for f in "$LIVE/$netboot.vmlinuz" "$LIVE/$netboot.initrd"; do
    [ -s "$f" ] || die "no $f (run: make live ARCH=arm64)"
done

deb_arch=arm64
. live/debs.sh
# The kernel package the live build took (the newest in its cache), for its device trees;
# its kernel must be the one in $LIVE, or the device trees would not match it.
kdeb=$(find "$CACHE" -maxdepth 1 -name "linux-image-[0-9]*-arm64_*.deb" | sort -V | tail -n 1)
[ -n "$kdeb" ] || die "no arm64 kernel package in $CACHE (run: make live ARCH=arm64)"
fdeb=$(fetch_deb raspi-firmware)
gdeb=$(fetch_deb grub-efi-arm64-bin)

work=target/rpi-work
rm -rf "$work"
mkdir -p "$work/kernel" "$work/firmware" "$work/grub" "$work/boot" "$OUT"
dpkg-deb -x "$kdeb" "$work/kernel"
dpkg-deb -x "$fdeb" "$work/firmware"
dpkg-deb -x "$gdeb" "$work/grub"
kver=$(ls "$work/kernel/lib/modules")
cmp -s "$work/kernel/boot/vmlinuz-$kver" "$LIVE/$netboot.vmlinuz" ||
    die "$LIVE/$netboot.vmlinuz is not the kernel of $(basename "$kdeb") (run: make live ARCH=arm64)"

B=$work/boot
# The firmware the Pi 3 (bootcode.bin, start.elf) and the Pi 4 (start4.elf; its boot loader
# is in its EEPROM) start, and its licence.
fw=$work/firmware/usr/lib/raspi-firmware
for f in bootcode.bin start.elf fixup.dat start4.elf fixup4.dat; do
    install -m 0644 "$fw/$f" "$B/$f"
done
install -m 0644 "$work/firmware/usr/share/doc/raspi-firmware/copyright" "$B/COPYING.raspi-firmware"
# The device trees of Debian's kernel for the boards it supports, under the names the
# firmware looks for when upstream_kernel=1.
n=0
for f in "$work/kernel/usr/lib/linux-image-$kver/broadcom"/bcm27*.dtb \
    "$work/kernel/usr/lib/linux-image-$kver/broadcom"/bcm28*.dtb; do
    [ -e "$f" ] || continue
    install -m 0644 "$f" "$B/${f##*/}"
    n=$((n + 1))
done
[ "$n" -gt 0 ] || die "no Raspberry Pi device trees in $(basename "$kdeb")"
install -m 0644 "$LIVE/$netboot.vmlinuz" "$B/vmlinuz"
install -m 0644 "$LIVE/$netboot.initrd" "$B/initrd"

# The Pi's serial console is its mini UART on the GPIO header (ttyS1 under Debian's kernel;
# the PL011 serves Bluetooth), enabled by enable_uart=1.
sentinels="bty.usb=$IMAGES_SERIAL:$((IMAGES_MIB << 11))"
cat >"$B/config.txt" <<EOF
# bty USB live medium $version for the Raspberry Pi (arm64): Pi 3, Pi 4, Pi 400, CM4
arm_64bit=1
enable_uart=1
upstream_kernel=1
kernel=vmlinuz
initramfs initrd followkernel
disable_splash=1
EOF
echo "$sentinels console=tty1 console=ttyS1,115200 quiet" >"$B/cmdline.txt"

# UEFI: GRUB finds this partition by a file only it has and boots the same kernel and initrd.
# No console= there: the kernel takes its serial console from the firmware's tables (SPCR or
# the device tree's stdout-path), which name the right UART on each machine.
marker=/bty/$name
mkdir -p "$B/bty" "$B/boot/grub" "$B/EFI/BOOT"
printf 'bty %s\n' "$version" >"$B$marker"
cat >"$B/boot/grub/grub.cfg" <<EOF
# bty USB live medium $version (arm64 UEFI)
set timeout=3
set default=0
menuentry "bty $version: flash a disk (wizard)" {
    linux /vmlinuz $sentinels quiet
    initrd /initrd
}
menuentry "bty $version: flash a disk (wizard), leave BTY_IMAGES as it is" {
    linux /vmlinuz $sentinels quiet bty.nogrow
    initrd /initrd
}
EOF
cat >"$work/early.cfg" <<EOF
search --no-floppy --set=root --file $marker
set prefix=(\$root)/boot/grub
configfile \$prefix/grub.cfg
EOF
grub-mkimage -O arm64-efi -d "$work/grub/usr/lib/grub/arm64-efi" -p /boot/grub -c "$work/early.cfg" \
    -o "$B/EFI/BOOT/BOOTAA64.EFI" \
    normal configfile linux search search_fs_file echo test part_msdos fat all_video efi_gop

# The boot partition: FAT32 (the Pi firmware reads FAT16 and FAT32; UEFI wants FAT32 on a
# disk this size) with 512-byte clusters, the content and 8 MiB to spare, in whole MiB.
find "$B" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
used_kib=$(du -s --apparent-size -B 1K "$B" | cut -f1)
boot_mib=$(( (used_kib + 1023) / 1024 + 8 ))
[ "$boot_mib" -ge 40 ] || boot_mib=40 # FAT32's fewest clusters
mkfs.fat -C -F 32 -S 512 -s 1 -i b7e10002 --invariant -n BTY_LIVE "$work/boot.img" $((boot_mib << 10)) >/dev/null
(cd "$B" && find . -mindepth 1 -type d | LC_ALL=C sort | sed 's|^\./|::/|') | while read -r d; do
    mmd -i "$work/boot.img" "$d"
done
(cd "$B" && find . -type f | LC_ALL=C sort | sed 's|^\./||') | while read -r f; do
    mcopy -m -i "$work/boot.img" "$B/$f" "::/$f"
done

live/bty-images.sh "$work/images.img" "$IMAGES_MIB" "$IMAGES_SERIAL"

# The disk: the table, then the two file systems where it says.
start=$((BOOT_START_MIB << 11))
boot_sectors=$((boot_mib << 11))
images_start=$((start + boot_sectors))
images_sectors=$((IMAGES_MIB << 11))
total=$(( (images_start + images_sectors) * 512 ))
rm -f "$work/disk.img"
truncate -s "$total" "$work/disk.img"
sfdisk -q --no-reread --no-tell-kernel "$work/disk.img" <<EOF
label: dos
label-id: 0xb7e10002
unit: sectors

start=$start, size=$boot_sectors, type=c
start=$images_start, size=$images_sectors, type=7
EOF
dd if="$work/boot.img" of="$work/disk.img" bs=1M seek=$((start * 512)) oflag=seek_bytes conv=notrunc status=none
dd if="$work/images.img" of="$work/disk.img" bs=1M seek=$((images_start * 512)) oflag=seek_bytes conv=notrunc status=none

gzip -n -9 -c "$work/disk.img" >"$OUT/$name.img.gz.tmp"
mv "$OUT/$name.img.gz.tmp" "$OUT/$name.img.gz"
touch -d "@$SOURCE_DATE_EPOCH" "$OUT/$name.img.gz"
(cd "$OUT" && sha256sum "$name.img.gz" >"$name.img.gz.sha256")

size=$(stat -c %s "$OUT/$name.img.gz")
echo "rpi: $OUT/$name.img.gz, $((size >> 10)) KiB ($((total >> 20)) MiB raw: boot ${boot_mib} MiB with $n device trees, BTY_IMAGES ${IMAGES_MIB} MiB, grows on first boot)"
cat "$OUT/$name.img.gz.sha256"
