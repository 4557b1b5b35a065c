#!/usr/bin/env bash
# Builds the bty USB live medium: one hybrid image that boots from a USB stick (BIOS and UEFI)
# and as a CD or a BMC's virtual media, straight into the wizard. It carries the live
# environment of `make live` (the same kernel, initrd and bty) and a small writable exFAT
# partition, BTY_IMAGES, which the first boot grows to fill the stick (`bty usb-grow`).
#
# Layout (an MBR; xorriso writes it around the ISO 9660 file system):
#   p1  the ISO 9660 file system: GRUB's config, the kernel, the initrd
#   p2  0xEF, the EFI system partition: GRUB for x86_64 UEFI (also the El Torito UEFI image)
#   p3  0x07, BTY_IMAGES: exFAT, 32 MiB at build time, a fixed volume serial
# GRUB reads the kernel and initrd from the ISO 9660 file system on both paths, so they are
# stored once. BIOS from a CD: El Torito; BIOS from a stick: GRUB's boot_hybrid MBR.
#
# Same inputs, same bytes: every file's time is SOURCE_DATE_EPOCH, the FAT and exFAT volume ids
# are fixed, and xorriso takes its volume dates and UUID from SOURCE_DATE_EPOCH.
#
# Output in $OUT (default build/usb): bty-usbboot-pc-x86_64-v<version>.iso and its .sha256.
# Inputs (environment): LIVE (default build/live, from `make live`), SOURCE_DATE_EPOCH
# (default: the commit time of HEAD).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
LIVE=${LIVE:-build/live}
OUT=${OUT:-build/usb}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH
name=bty-usbboot-pc-x86_64-v$version
netboot=bty-netboot-pc-x86_64-v$version

# BTY_IMAGES at build time. Its serial and size are the grow step's sentinels: the first boot
# grows only a file system that still has both (see src/usb/), and gives it a new serial.
IMAGES_MIB=32
IMAGES_SERIAL=b7e10001
# The ISO 9660 volume id, which the live system looks for to find the medium it booted from.
LABEL=BTY_LIVE

die() { echo "live/usb.sh: $*" >&2; exit 1; }
for t in xorriso grub-mkimage mkfs.fat mcopy mkfs.exfat python3; do
    command -v "$t" >/dev/null || die "needs $t (make deps)"
done
for f in "$LIVE/$netboot.vmlinuz" "$LIVE/$netboot.initrd"; do
    [ -s "$f" ] || die "no $f (run: make live)"
done
[ -f /usr/lib/grub/i386-pc/boot_hybrid.img ] || die "needs grub-pc-bin (make deps)"
[ -d /usr/lib/grub/x86_64-efi ] || die "needs grub-efi-amd64-bin (make deps)"

work=target/usb-work
rm -rf "$work"
mkdir -p "$work/iso/boot/grub" "$work/iso/bty" "$OUT"

# The kernel command line carries the sentinels, so the live system needs no file of its own
# to know what the build made.
cmdline="bty.usb=$IMAGES_SERIAL:$((IMAGES_MIB << 11)) console=tty1 console=ttyS0,115200 quiet"
cat >"$work/iso/boot/grub/grub.cfg" <<EOF
# bty USB live medium $version
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set timeout=3
set default=0
menuentry "bty $version: flash a disk (wizard)" {
    linux /boot/vmlinuz $cmdline
    initrd /boot/initrd
}
menuentry "bty $version: flash a disk (wizard), leave BTY_IMAGES as it is" {
    linux /boot/vmlinuz $cmdline bty.nogrow
    initrd /boot/initrd
}
EOF
# The first config both GRUB images run: find the medium by a file only it has (on a stick the
# firmware starts GRUB from the EFI partition, not from the ISO 9660 one).
marker=/bty/$name
printf 'bty %s\n' "$version" >"$work/iso$marker"
cat >"$work/early.cfg" <<EOF
search --no-floppy --set=root --file $marker
set prefix=(\$root)/boot/grub
configfile \$prefix/grub.cfg
EOF
install -m 0644 "$LIVE/$netboot.vmlinuz" "$work/iso/boot/vmlinuz"
install -m 0644 "$LIVE/$netboot.initrd" "$work/iso/boot/initrd"

MODULES="normal configfile linux search search_fs_file echo test serial terminal iso9660 part_msdos part_gpt fat"
grub-mkimage -O i386-pc-eltorito -p /boot/grub -c "$work/early.cfg" -o "$work/iso/boot/grub/bios.img" \
    $MODULES biosdisk
grub-mkimage -O x86_64-efi -p /boot/grub -c "$work/early.cfg" -o "$work/BOOTX64.EFI" \
    $MODULES all_video efi_gop

# The EFI system partition: GRUB alone, in a FAT image just large enough.
efi_kib=$(( ($(stat -c %s "$work/BOOTX64.EFI") / 1024 + 256) / 32 * 32 ))
# mcopy -s -m keeps the tree's times (directories made with mmd would get the clock's).
mkdir -p "$work/esp/EFI/BOOT"
mv "$work/BOOTX64.EFI" "$work/esp/EFI/BOOT/BOOTX64.EFI"
find "$work/esp" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkfs.fat -C -i 0b7e0001 --invariant -n BTY_EFI "$work/efi.img" "$efi_kib" >/dev/null
mcopy -s -m -i "$work/efi.img" "$work/esp/EFI" ::/

live/bty-images.sh "$work/images.img" "$IMAGES_MIB" "$IMAGES_SERIAL"

find "$work/iso" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
rm -f "$OUT/$name.iso.tmp"
xorriso -as mkisofs -quiet -o "$OUT/$name.iso.tmp" -V "$LABEL" -R -r \
    --modification-date="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S00)" \
    -b boot/grub/bios.img -no-emul-boot -boot-load-size 4 -boot-info-table --grub2-boot-info \
    --grub2-mbr /usr/lib/grub/i386-pc/boot_hybrid.img \
    -append_partition 2 0xef "$work/efi.img" \
    -append_partition 3 0x07 "$work/images.img" \
    -eltorito-alt-boot -e --interval:appended_partition_2:all:: -no-emul-boot \
    "$work/iso" 2>"$work/xorriso.log" || { cat "$work/xorriso.log" >&2; die "xorriso failed"; }
mv "$OUT/$name.iso.tmp" "$OUT/$name.iso"
touch -d "@$SOURCE_DATE_EPOCH" "$OUT/$name.iso"
(cd "$OUT" && sha256sum "$name.iso" >"$name.iso.sha256")

size=$(stat -c %s "$OUT/$name.iso")
[ "$size" -le $((64 << 20)) ] || die "$OUT/$name.iso is $size bytes, over the 64 MiB budget"
echo "usb: $OUT/$name.iso, $((size >> 10)) KiB (BTY_IMAGES ${IMAGES_MIB} MiB, grows on first boot)"
cat "$OUT/$name.iso.sha256"
