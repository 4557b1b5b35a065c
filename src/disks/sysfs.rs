//! Reading block devices' attributes from sysfs: device numbers, names, strings, transports.

use std::fs;
use std::path::{Path, PathBuf};

/// Splits a Linux `dev_t` into (major, minor), as glibc's gnu_dev_major/minor do.
pub fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// Parses "8:1" as sysfs `dev` files and mountinfo write device numbers.
pub fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The sysfs directory of a device number (a symlink into /sys/devices).
pub fn dir(dev: (u32, u32)) -> PathBuf {
    PathBuf::from(format!("/sys/dev/block/{}:{}", dev.0, dev.1))
}

/// An attribute's text without surrounding whitespace; empty when it cannot be read.
pub fn read_trim(p: &Path) -> String {
    fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// An attribute as a number.
pub fn read_u64(p: &Path) -> Option<u64> {
    read_trim(p).parse().ok()
}

/// An attribute that is "1" or "0".
pub fn read_flag(p: &Path) -> bool {
    read_trim(p) == "1"
}

/// Kernel name of a device number ("sda2"), from the sysfs symlink.
pub fn kernel_name(dev: (u32, u32)) -> Option<String> {
    let link = fs::read_link(dir(dev)).ok()?;
    link.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Names of the entries of a sysfs directory such as `holders` or `slaves`, sorted.
pub fn entries(p: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(p) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// A device string cleaned as lsblk and udev clean them: trimmed, runs of whitespace made one
/// space, and bytes outside printable ASCII replaced by `_` (a serial is compared and typed by
/// people, and bty-web only accepts printable ASCII as a target serial). None when empty.
pub fn clean(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    for word in s.split(|c: char| c.is_ascii_whitespace() || c == '\0') {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }));
    }
    (!out.is_empty()).then_some(out)
}

/// The SCSI host number of a SCSI disk: the `device` link ends in "H:C:T:L".
fn scsi_host(sys: &Path) -> Option<u32> {
    let link = fs::read_link(sys.join("device")).ok()?;
    let hctl = link.file_name()?.to_str()?;
    let parts: Vec<&str> = hctl.split(':').collect();
    if parts.len() != 4 || parts.iter().any(|p| p.parse::<u32>().is_err()) {
        return None;
    }
    parts[0].parse().ok()
}

/// The transport of a whole disk, by lsblk's rules (util-linux `get_transport`, itself from
/// lsscsi): "sata", "ata", "usb", "sas", "spi", "fc", "fcoe", "sbp", "iscsi", "nvme",
/// "virtio" or "mmc"; None for everything else (loop, dm, md, zram, ram).
pub fn transport(name: &str, sys: &Path) -> Option<String> {
    let t = match scsi_host(sys) {
        Some(host) => scsi_transport(host, sys)?,
        None if name.starts_with("nvme") => "nvme",
        // lsblk reports these since util-linux 2.39.
        None if name.starts_with("vd") => "virtio",
        None if name.starts_with("mmcblk") => "mmc",
        None => return None,
    };
    Some(t.to_string())
}

fn scsi_transport(host: u32, sys: &Path) -> Option<&'static str> {
    let host_dir = |kind: &str| PathBuf::from(format!("/sys/class/{kind}_host/host{host}"));
    let device = sys.join("device");
    if host_dir("spi").is_dir() {
        Some("spi")
    } else if host_dir("fc").is_dir() {
        let name = read_trim(&host_dir("fc").join("symbolic_name"));
        Some(if name.contains(" over ") { "fcoe" } else { "fc" })
    } else if host_dir("sas").is_dir() || device.join("sas_device").exists() {
        Some("sas")
    } else if device.join("ieee1394_id").exists() {
        Some("sbp")
    } else if host_dir("iscsi").is_dir() {
        Some("iscsi")
    } else if fs::canonicalize(&device).is_ok_and(|p| p.to_string_lossy().contains("usb")) {
        Some("usb")
    } else if host_dir("scsi").is_dir() {
        let proc_name = read_trim(&host_dir("scsi").join("proc_name"));
        if proc_name.starts_with("ahci") || proc_name.starts_with("sata") {
            Some("sata")
        } else if proc_name.contains("ata") {
            Some("ata")
        } else {
            None
        }
    } else {
        None
    }
}

/// Replaces each `marker` followed by a byte written in `radix` (three octal or two hex
/// digits) with that byte; anything else, an incomplete escape included, stays as it is. The
/// kernel (octal, in /proc tables) and udev (`\x` hex) escape names this way.
pub fn unescape(s: &str, marker: &str, radix: u32) -> String {
    let digits = if radix == 8 { 3 } else { 2 };
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if s.get(i..).is_some_and(|r| r.starts_with(marker)) {
            let at = i + marker.len();
            if let Some(v) = s
                .get(at..at + digits)
                .filter(|d| d.bytes().all(|c| c.is_ascii_hexdigit()))
                .and_then(|d| u8::from_str_radix(d, radix).ok())
            {
                out.push(v);
                i = at + digits;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_device_numbers_like_glibc() {
        assert_eq!(split_dev(0x0801), (8, 1));
        assert_eq!(split_dev((259u64 << 8) | 3), (259, 3));
        // minor above 255 uses the high bits
        let dev = (7u64 << 8) | (0x1234u64 & 0xff) | ((0x1234u64 & !0xff) << 12);
        assert_eq!(split_dev(dev), (7, 0x1234));
    }

    #[test]
    fn parses_device_numbers() {
        assert_eq!(parse_dev("254:0"), Some((254, 0)));
        assert_eq!(parse_dev("8"), None);
        assert_eq!(parse_dev("a:1"), None);
    }

    #[test]
    fn cleans_strings_like_lsblk() {
        assert_eq!(clean("  Samsung SSD   860 EVO\n").as_deref(), Some("Samsung SSD 860 EVO"));
        assert_eq!(clean("ABC\0\0\0").as_deref(), Some("ABC"));
        assert_eq!(clean("S\u{7f}N\u{e9}").as_deref(), Some("S_N_"));
        assert_eq!(clean(" \t\n"), None);
    }
}
