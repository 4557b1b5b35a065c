#!/usr/bin/env bash
# Makes BTY_IMAGES, the writable exFAT partition of the USB media (live/usb.sh, live/rpi.sh),
# as a file: live/bty-images.sh FILE MIB SERIAL
# 32 KiB clusters (so the grown file system's allocation table stays small), then the serial
# mkfs.exfat draws from the clock replaced by SERIAL (8 hex digits) and the boot region's
# checksum recomputed, so two builds give the same bytes. The serial and the size are the grow
# step's sentinels (src/usb/): the first boot grows only a file system that still has both.
set -euo pipefail
file=$1 mib=$2 serial=$3
rm -f "$file"
truncate -s "${mib}M" "$file"
mkfs.exfat -L BTY_IMAGES -c 32K "$file" >/dev/null
python3 - "$file" "$serial" <<'PY'
import struct, sys
path, serial = sys.argv[1], int(sys.argv[2], 16)
with open(path, "r+b") as f:
    region = bytearray(f.read(12 * 512))
    struct.pack_into("<I", region, 100, serial)
    s = 0
    for i, b in enumerate(region[: 11 * 512]):
        if i in (106, 107, 112):
            continue
        s = ((s >> 1) | ((s & 1) << 31)) + b & 0xFFFFFFFF
    region[11 * 512 :] = struct.pack("<I", s) * 128
    f.seek(0)
    f.write(region)
    f.write(region)  # the backup boot region, sectors 12-23
PY
