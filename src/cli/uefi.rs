//! Registering a freshly flashed disk with the UEFI firmware (`BTY_REGISTER_UEFI_BOOT=1`): a
//! `Boot####` load option for the disk's EFI system partition and `BootNext` pointing at it, so
//! the next boot starts the new OS even where the firmware's boot order would go back to the
//! network or another disk. Written straight to efivarfs: an initramfs has no efibootmgr.
//!
//! Every failure here is for the caller to report as a warning: the flash itself succeeded.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};
use crate::image::partitions::{self, TableKind};

/// EFI_GLOBAL_VARIABLE, the vendor GUID of `Boot####` and `BootNext`.
const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS, as the firmware's own boot variables.
const ATTRIBUTES: u32 = 0x7;
/// The GPT type of an EFI system partition.
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// LOAD_OPTION_ACTIVE.
const ACTIVE: u32 = 0x1;

/// Whether the operator asked for a boot entry after a flash.
pub fn requested() -> bool {
    std::env::var("BTY_REGISTER_UEFI_BOOT")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// Where the firmware's variables are: efivarfs, or `BTY_EFIVARS_DIR`, a test hook that only a
/// build with the cargo feature `test-hooks` reads (no shipped build enables it).
pub fn efivars_dir() -> PathBuf {
    #[cfg(feature = "test-hooks")]
    if let Some(dir) = std::env::var_os("BTY_EFIVARS_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from("/sys/firmware/efi/efivars")
}

/// The removable-media loader path the UEFI specification fixes for this architecture: the one
/// file every bootable image's ESP carries, whatever its distribution.
fn fallback_loader() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "\\EFI\\BOOT\\BOOTAA64.EFI"
    } else if cfg!(target_arch = "riscv64") {
        "\\EFI\\BOOT\\BOOTRISCV64.EFI"
    } else {
        "\\EFI\\BOOT\\BOOTX64.EFI"
    }
}

/// Adds (or reuses) a boot entry for `disk`'s EFI system partition and sets `BootNext` to it;
/// returns the entry's number.
pub fn register(disk: &Path, description: &str, efivars: &Path) -> Result<u16> {
    crate::ensure!(
        efivars.is_dir(),
        "no {}: this machine did not boot in UEFI mode (or efivarfs is not mounted)",
        efivars.display()
    );
    let mut head = Vec::with_capacity(1 << 20);
    File::open(disk)
        .and_then(|f| f.take(1 << 20).read_to_end(&mut head))
        .with_context(|| format!("reading the partition table of {}", disk.display()))?;
    let table = partitions::parse(&head);
    crate::ensure!(
        table.kind == TableKind::Gpt,
        "{} has no GPT, so no EFI system partition to boot",
        disk.display()
    );
    let esp = table
        .partitions
        .iter()
        .find(|p| p.type_id == ESP_TYPE)
        .with_context(|| format!("{} has no EFI system partition", disk.display()))?;
    let guid = esp
        .unique_guid
        .with_context(|| format!("partition {} of {} has no GUID", esp.number, disk.display()))?;
    let sector = u64::from(table.sector_size);
    let option = load_option(
        description,
        esp.number,
        esp.start / sector,
        esp.size / sector,
        &guid,
        fallback_loader(),
    );
    let number = entry_number(efivars, &option)?;
    write_var(efivars, &format!("Boot{number:04X}"), &option)?;
    write_var(efivars, "BootNext", &number.to_le_bytes())?;
    Ok(number)
}

/// An EFI_LOAD_OPTION: attributes, the device path's length, the description (UCS-2, NUL
/// ended), then the device path: a hard-drive node (partition number, start and size in
/// logical blocks, GPT signature), a file-path node, and the end node.
pub fn load_option(
    description: &str,
    partition: u32,
    start_lba: u64,
    size_lba: u64,
    guid: &[u8; 16],
    loader: &str,
) -> Vec<u8> {
    let ucs2 = |s: &str| -> Vec<u8> {
        s.encode_utf16().chain(std::iter::once(0)).flat_map(u16::to_le_bytes).collect()
    };
    let mut path = Vec::new();
    // Media device path (4), hard drive (1), 42 bytes.
    path.extend_from_slice(&[0x04, 0x01]);
    path.extend_from_slice(&42u16.to_le_bytes());
    path.extend_from_slice(&partition.to_le_bytes());
    path.extend_from_slice(&start_lba.to_le_bytes());
    path.extend_from_slice(&size_lba.to_le_bytes());
    path.extend_from_slice(guid);
    path.push(0x02); // partition format: GPT
    path.push(0x02); // signature type: GUID
    // Media device path (4), file path (4).
    let file = ucs2(loader);
    let file_len = u16::try_from(4 + file.len()).unwrap_or(u16::MAX);
    path.extend_from_slice(&[0x04, 0x04]);
    path.extend_from_slice(&file_len.to_le_bytes());
    path.extend_from_slice(&file);
    // End of the whole device path.
    path.extend_from_slice(&[0x7f, 0xff, 0x04, 0x00]);
    let mut out = Vec::new();
    out.extend_from_slice(&ACTIVE.to_le_bytes());
    out.extend_from_slice(&u16::try_from(path.len()).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(&ucs2(description));
    out.extend_from_slice(&path);
    out
}

/// The number of an existing entry with exactly this content (so flashing the same disk twice
/// does not pile up entries), else the lowest free one.
fn entry_number(efivars: &Path, option: &[u8]) -> Result<u16> {
    let mut used = Vec::new();
    let entries =
        fs::read_dir(efivars).with_context(|| format!("listing {}", efivars.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(hex) =
            name.strip_prefix("Boot").and_then(|r| r.strip_suffix(&format!("-{GLOBAL}")))
        else {
            continue;
        };
        let Ok(n) = u16::from_str_radix(hex, 16) else { continue };
        if hex.len() != 4 {
            continue;
        }
        if fs::read(e.path()).is_ok_and(|d| d.get(4..) == Some(option)) {
            return Ok(n);
        }
        used.push(n);
    }
    (0..=u16::MAX)
        .find(|n| !used.contains(n))
        .with_context(|| format!("no free Boot#### number in {}", efivars.display()))
}

/// Writes one variable: its attributes and data in a single write, as efivarfs requires.
/// Existing variables are immutable files on efivarfs; the flag is cleared first.
fn write_var(efivars: &Path, name: &str, data: &[u8]) -> Result<()> {
    let path = efivars.join(format!("{name}-{GLOBAL}"));
    if path.exists() {
        if let Ok(f) = File::open(&path) {
            // Not every file system has the flag (a test's temp dir): only a real failure to
            // write below is an error.
            let _ = crate::sys::clear_immutable(&f);
        }
    }
    let mut buf = ATTRIBUTES.to_le_bytes().to_vec();
    buf.extend_from_slice(data);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let n = f.write(&buf).with_context(|| format!("writing {}", path.display()))?;
    crate::ensure!(
        n == buf.len(),
        "writing {}: only {n} of {} bytes taken",
        path.display(),
        buf.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_options_are_laid_out_as_the_specification_says() {
        let guid: [u8; 16] = std::array::from_fn(|i| i as u8);
        let o = load_option("bty", 1, 2048, 204_800, &guid, "\\EFI\\BOOT\\BOOTX64.EFI");
        assert_eq!(&o[..4], &[1, 0, 0, 0]);
        let path_len = u16::from_le_bytes([o[4], o[5]]) as usize;
        // "bty" + NUL in UCS-2.
        assert_eq!(&o[6..14], &[b'b', 0, b't', 0, b'y', 0, 0, 0]);
        let path = &o[14..];
        assert_eq!(path.len(), path_len);
        assert_eq!(&path[..4], &[0x04, 0x01, 42, 0]);
        assert_eq!(u32::from_le_bytes(path[4..8].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(path[8..16].try_into().unwrap()), 2048);
        assert_eq!(u64::from_le_bytes(path[16..24].try_into().unwrap()), 204_800);
        assert_eq!(&path[24..40], &guid);
        assert_eq!(&path[40..42], &[2, 2]);
        let file_len = u16::from_le_bytes([path[44], path[45]]) as usize;
        assert_eq!(&path[42..44], &[0x04, 0x04]);
        assert_eq!(file_len, 4 + 2 * ("\\EFI\\BOOT\\BOOTX64.EFI".len() + 1));
        assert_eq!(&path[42 + file_len..], &[0x7f, 0xff, 0x04, 0x00]);
    }
}
