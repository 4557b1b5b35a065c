//! The USB live medium's own stick: on the first boot, BTY_IMAGES (the exFAT partition the
//! image is built with, 32 MiB) grows to fill the stick, keeping the files already on it.
//!
//! It runs once and only on what the build made: the stick must carry the ISO 9660 medium
//! (live/usb.sh) or the Raspberry Pi boot partition (live/rpi.sh), an MBR with BTY_IMAGES
//! last, and BTY_IMAGES must still have the volume serial and size of the build (the
//! sentinels, from the kernel command line). The grown file
//! system gets a new serial, so the next boot finds nothing to do. Each refusal says why and
//! writes nothing; see `exfat` for why an interruption leaves a readable file system.

pub mod exfat;
pub mod mbr;

use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

use crate::error::{Context, Result};

/// What the build made BTY_IMAGES with: `bty.usb=<serial hex>:<sectors>` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Baked {
    pub serial: u32,
    pub sectors: u64,
}

impl std::str::FromStr for Baked {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Baked> {
        let (serial, sectors) =
            s.split_once(':').with_context(|| format!("{s:?} is not <serial hex>:<sectors>"))?;
        Ok(Baked {
            serial: u32::from_str_radix(serial, 16)
                .with_context(|| format!("serial {serial:?} is not 8 hex digits"))?,
            sectors: sectors
                .parse::<u64>()
                .with_context(|| format!("size {sectors:?} is not a number of sectors"))?,
        })
    }
}

/// What a grow did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Grown from `from` to `to` bytes; `kept` bytes of clusters were carried over.
    Grown { from: u64, to: u64, kept: u64 },
    /// Nothing to do, and why (already grown, or formatted anew by someone).
    NotNeeded(String),
}

/// The MBR partition type of BTY_IMAGES (exFAT/NTFS), of the EFI system partition, and of the
/// Raspberry Pi stick's boot partition (FAT32 with LBA).
const EXFAT: u8 = 0x07;
const ESP: u8 = 0xef;
const FAT32_LBA: u8 = 0x0c;
/// The largest old file system read into memory (the build makes 32 MiB).
const OLD_MAX: u64 = 256 << 20;

/// Grows BTY_IMAGES on `disk` (the whole stick: a block device, or an image file).
pub fn grow(disk: &Path, baked: Baked) -> Result<Outcome> {
    let shown = disk.display();
    let meta = std::fs::metadata(disk).with_context(|| format!("reading {shown}"))?;
    let block = meta.file_type().is_block_device();
    // O_EXCL on a block device: the kernel refuses while a partition of it is mounted.
    let f = crate::sys::open_buffered(disk, block, false)
        .with_context(|| format!("opening {shown} (a mounted partition keeps it busy)"))?;
    let size = if block {
        let lbs = crate::sys::logical_block_size(&f)
            .with_context(|| format!("reading {shown}'s block size"))?;
        crate::ensure!(lbs == 512, "{shown} has {lbs}-byte sectors; the stick's table counts 512");
        crate::sys::block_device_size(&f).with_context(|| format!("reading {shown}'s size"))?
    } else {
        meta.len()
    };
    let disk_sectors = size / exfat::SECTOR;

    let mut sector0 = vec![0u8; 512];
    f.read_exact_at(&mut sector0, 0).with_context(|| format!("reading {shown}'s first sector"))?;
    let entries =
        mbr::parse(&sector0).with_context(|| format!("reading {shown}'s partition table"))?;
    let index = images_partition(&f, &shown.to_string(), &entries)?;
    let images = entries[index];
    crate::ensure!(
        entries[..index].iter().all(|e| e.end() <= u64::from(images.start)),
        "{shown}'s BTY_IMAGES partition is not the last one"
    );
    crate::ensure!(
        images.end() <= disk_sectors,
        "{shown}'s BTY_IMAGES partition ends past the disk"
    );

    let start = u64::from(images.start) * exfat::SECTOR;
    let mut head = vec![0u8; 512];
    f.read_exact_at(&mut head, start).with_context(|| format!("reading BTY_IMAGES on {shown}"))?;
    let boot =
        exfat::parse_boot(&head).with_context(|| format!("reading BTY_IMAGES on {shown}"))?;
    if boot.serial != baked.serial {
        return Ok(Outcome::NotNeeded(format!(
            "BTY_IMAGES has volume serial {:08x}, not the build's {:08x}: grown already, or formatted anew",
            boot.serial, baked.serial
        )));
    }
    crate::ensure!(
        boot.volume_sectors == baked.sectors,
        "BTY_IMAGES has the build's serial but {} sectors, not the build's {}",
        boot.volume_sectors,
        baked.sectors
    );
    // The partition is the build's size, or already reaches the end of the stick (a grow that
    // was interrupted after the table was written).
    let room = (disk_sectors - u64::from(images.start)).min(u64::from(u32::MAX));
    crate::ensure!(
        u64::from(images.sectors) == baked.sectors || u64::from(images.sectors) == room,
        "{shown}'s BTY_IMAGES partition has {} sectors; the build made {}",
        images.sectors,
        baked.sectors
    );
    crate::ensure!(
        boot.volume_sectors * exfat::SECTOR <= OLD_MAX,
        "BTY_IMAGES is larger than the build makes it"
    );

    let mut old = vec![0u8; (boot.volume_sectors * exfat::SECTOR) as usize];
    f.read_exact_at(&mut old, start).with_context(|| format!("reading BTY_IMAGES on {shown}"))?;
    let mut serial = [0u8; 4];
    crate::sys::random_bytes(&mut serial).context("drawing a volume serial")?;
    let serial = u32::from_le_bytes(serial) | 1;
    let serial = if serial == baked.serial { serial ^ 2 } else { serial };
    let plan = exfat::plan(&old, room, serial)
        .with_context(|| format!("planning the grow of BTY_IMAGES on {shown}"))?;
    drop(old);

    // 1. The table: a larger partition around the old file system harms nothing.
    if u64::from(images.sectors) != room {
        mbr::set_sectors(&mut sector0, index, room as u32);
        f.write_all_at(&sector0, 0)
            .with_context(|| format!("writing {shown}'s partition table"))?;
        f.sync_all().with_context(|| format!("syncing {shown}"))?;
    }
    // 2. The new FAT, bitmap and clusters, all past the old file system.
    let write = |at: u64, data: &[u8]| {
        f.write_all_at(data, start + at).with_context(|| format!("writing BTY_IMAGES on {shown}"))
    };
    let zeros = vec![0u8; 1 << 20];
    let (mut at, end) = (plan.zero.0, plan.zero.0 + plan.zero.1);
    while at < end {
        let n = (end - at).min(zeros.len() as u64) as usize;
        write(at, &zeros[..n])?;
        at += n as u64;
    }
    for (at, data) in &plan.writes {
        write(*at, data)?;
    }
    f.sync_all().with_context(|| format!("syncing {shown}"))?;
    // 3. The boot region: the backup first, then the one that switches to the new file system.
    write(plan.backup_boot.0, &plan.backup_boot.1)?;
    f.sync_all().with_context(|| format!("syncing {shown}"))?;
    crash_before_switch();
    write(plan.main_boot.0, &plan.main_boot.1)?;
    f.sync_all().with_context(|| format!("syncing {shown}"))?;
    if block && let Err(e) = crate::sys::reread_partitions(&f) {
        crate::warn!(
            "{shown}: the kernel kept the old partition table ({e}); it sees the new size after a reboot"
        );
    }
    Ok(Outcome::Grown {
        from: baked.sectors * exfat::SECTOR,
        to: plan.layout.volume_sectors * exfat::SECTOR,
        kept: plan.copied.1,
    })
}

/// Which entry of the table is BTY_IMAGES, once the stick is known as one of the two media the
/// build makes: the ISO (live/usb.sh: ISO 9660, the EFI partition second, BTY_IMAGES third) or
/// the Raspberry Pi stick (live/rpi.sh: the FAT32 boot partition labelled BTY_LIVE, BTY_IMAGES
/// second). Anything else is refused with what was found.
fn images_partition(f: &std::fs::File, shown: &str, entries: &[mbr::Entry; 4]) -> Result<usize> {
    crate::ensure!(
        entries.iter().all(|e| e.kind != mbr::GPT_PROTECTIVE),
        "{shown} has a GPT; the bty stick has an MBR only (was it partitioned anew?)"
    );
    let kinds = entries.iter().map(|e| format!("{:02x}", e.kind)).collect::<Vec<_>>().join(" ");
    let mut cd = [0u8; 5];
    f.read_exact_at(&mut cd, 32769).with_context(|| format!("reading {shown}"))?;
    if &cd == b"CD001" {
        crate::ensure!(
            entries[1].kind == ESP && entries[2].kind == EXFAT && entries[3].kind == 0,
            "{shown}'s partition table is not the one the image was built with (types {kinds}; want an EFI partition second, exFAT third, no fourth)"
        );
        return Ok(2);
    }
    let boot = entries[0];
    let mut head = [0u8; 512];
    if boot.kind == FAT32_LBA {
        f.read_exact_at(&mut head, u64::from(boot.start) * exfat::SECTOR)
            .with_context(|| format!("reading {shown}'s first partition"))?;
    }
    crate::ensure!(
        boot.kind == FAT32_LBA && &head[82..90] == b"FAT32   " && &head[71..82] == b"BTY_LIVE   ",
        "{shown} carries neither the ISO 9660 medium nor a FAT32 boot partition labelled BTY_LIVE: not a bty stick"
    );
    crate::ensure!(
        entries[1].kind == EXFAT && entries[2].kind == 0 && entries[3].kind == 0,
        "{shown}'s partition table is not the one the image was built with (types {kinds}; want the boot partition first, exFAT second, nothing after)"
    );
    Ok(1)
}

/// Test hook (cargo feature `test-hooks`, which no shipped build enables): with
/// BTY_TEST_USB_GROW_CRASH=1 the process dies here, as at a power cut, with everything but the
/// main boot region written, so a test can show the old file system is still whole. Without
/// the feature it does nothing.
fn crash_before_switch() {
    #[cfg(feature = "test-hooks")]
    if std::env::var_os("BTY_TEST_USB_GROW_CRASH").is_some_and(|v| v == "1") {
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sentinels_parse_from_the_command_line_form() {
        assert_eq!(
            "b7e10001:65536".parse::<Baked>().unwrap(),
            Baked { serial: 0xb7e1_0001, sectors: 65536 }
        );
        assert!(
            "b7e10001".parse::<Baked>().unwrap_err().to_string().contains("<serial hex>:<sectors>")
        );
        assert!("zz:1".parse::<Baked>().unwrap_err().to_string().contains("hex"));
        assert!("1:x".parse::<Baked>().unwrap_err().to_string().contains("sectors"));
    }

    #[test]
    fn a_file_that_is_not_a_stick_is_refused_and_left_alone() {
        let dir = std::env::temp_dir().join(format!("bty-usb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("plain.img");
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        let e = grow(&p, Baked { serial: 1, sectors: 65536 }).unwrap_err().to_string();
        assert!(e.contains("partition table"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), vec![0u8; 1 << 20]);

        // A FAT32 partition first, but not the Pi stick's: another label.
        let mut disk = vec![0u8; 4 << 20];
        disk[446 + 4] = FAT32_LBA;
        disk[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        disk[446 + 12..446 + 16].copy_from_slice(&2048u32.to_le_bytes());
        disk[446 + 16 + 4] = EXFAT;
        disk[510..512].copy_from_slice(&[0x55, 0xaa]);
        let boot = 2048 * 512;
        disk[boot + 71..boot + 82].copy_from_slice(b"RASPIFIRM  ");
        disk[boot + 82..boot + 90].copy_from_slice(b"FAT32   ");
        std::fs::write(&p, &disk).unwrap();
        let e = grow(&p, Baked { serial: 1, sectors: 65536 }).unwrap_err().to_string();
        assert!(e.contains("labelled BTY_LIVE: not a bty stick"), "{e}");
        assert!(std::fs::read(&p).unwrap() == disk);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
