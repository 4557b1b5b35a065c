//! Disk serials and models: the udev database, sysfs, and SCSI INQUIRY (VPD page 0x80).
//!
//! The serial is the durable id bty-web pins a flash to, so it must come out the same on the
//! operator's workstation (lsblk, with udev) and in the live environment (no udev): the udev
//! keys are tried in lsblk's order, then the sysfs attributes udev's rules read themselves.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::sysfs::{clean, read_trim};

/// The `E:` properties of a block device in the udev database; empty without udev.
pub fn udev_properties(dev: (u32, u32)) -> BTreeMap<String, String> {
    let path = format!("/run/udev/data/b{}:{}", dev.0, dev.1);
    fs::read_to_string(path).map(|t| parse_udev_db(&t)).unwrap_or_default()
}

/// Parses a udev database file: `E:KEY=VALUE` lines are properties; `S:` (symlinks), `I:`,
/// `G:` and the rest are not.
pub fn parse_udev_db(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("E:"))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Undoes udev's `\xHH` escapes (`ID_MODEL_ENC=Samsung\x20SSD`); a malformed escape is kept.
pub fn unhexmangle(s: &str) -> String {
    super::sysfs::unescape(s, "\\x", 16)
}

/// The model of a whole disk: udev's `ID_MODEL_ENC`, `ID_MODEL`, then sysfs `device/model`.
pub fn model(sys: &Path, udev: &BTreeMap<String, String>) -> Option<String> {
    if let Some(m) = udev.get("ID_MODEL_ENC").and_then(|v| clean(&unhexmangle(v))) {
        return Some(m);
    }
    if let Some(m) = udev.get("ID_MODEL").and_then(|v| clean(v)) {
        return Some(m);
    }
    clean(&read_trim(&sys.join("device/model")))
}

/// The serial of a whole disk named `name` with sysfs directory `sys`, from the first source
/// that has one:
///
/// 1. udev: `SCSI_IDENT_SERIAL`, `ID_SCSI_SERIAL`, `ID_SERIAL_SHORT`, `ID_SERIAL` (lsblk's order);
/// 2. sysfs `device/serial` (NVMe, MMC) and `serial` (virtio), what udev's rules read;
/// 3. the USB device's `serial` for a USB disk, what udev's usb_id reports;
/// 4. VPD page 0x80 of a SCSI disk: sysfs `device/vpd_pg80`, else SCSI INQUIRY through SG_IO.
pub fn serial(name: &str, sys: &Path, udev: &BTreeMap<String, String>) -> Option<String> {
    for key in ["SCSI_IDENT_SERIAL", "ID_SCSI_SERIAL", "ID_SERIAL_SHORT", "ID_SERIAL"] {
        if let Some(s) = udev.get(key).and_then(|v| clean(v)) {
            return Some(s);
        }
    }
    for attr in ["device/serial", "serial"] {
        if let Some(s) = clean(&read_trim(&sys.join(attr))) {
            return Some(s);
        }
    }
    if !sys.join("device/scsi_device").is_dir() {
        return None;
    }
    if let Some(s) = usb_serial(sys) {
        return Some(s);
    }
    if let Some(s) = fs::read(sys.join("device/vpd_pg80")).ok().and_then(|p| vpd_unit_serial(&p)) {
        return Some(s);
    }
    let dev = Path::new("/dev").join(name);
    let page = crate::sys::open_for_query(&dev)
        .and_then(|f| crate::sys::scsi_inquiry_vpd(&f, VPD_UNIT_SERIAL));
    match page {
        Ok(p) => vpd_unit_serial(&p),
        Err(e) => {
            crate::debug!("reading the serial of {} (SCSI INQUIRY): {e}", dev.display());
            None
        }
    }
}

/// The `serial` of the USB device a USB disk hangs off: the first ancestor of its SCSI device
/// in /sys/devices that has `idVendor`.
fn usb_serial(sys: &Path) -> Option<String> {
    let dev = fs::canonicalize(sys.join("device")).ok()?;
    let usb = dev.ancestors().find(|a| a.join("idVendor").is_file())?;
    clean(&read_trim(&usb.join("serial")))
}

/// VPD page 0x80, Unit Serial Number (SPC-4 7.8.15).
pub const VPD_UNIT_SERIAL: u8 = 0x80;

/// The serial in a VPD page 0x80: byte 1 is the page code, bytes 2..4 the big-endian length of
/// the ASCII serial that follows from byte 4 (right-aligned, padded with spaces). A length past
/// the bytes returned is cut to them. None for another page, a short buffer or a blank serial.
pub fn vpd_unit_serial(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != VPD_UNIT_SERIAL {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let end = (4 + len).min(page.len());
    clean(&String::from_utf8_lossy(&page[4..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: &str = "S:disk/by-id/ata-Samsung_SSD_860_EVO_1TB_S3Z9NB0K123456A
W:12
I:1234567
E:ID_ATA=1
E:ID_TYPE=disk
E:ID_BUS=ata
E:ID_MODEL=Samsung_SSD_860_EVO_1TB
E:ID_MODEL_ENC=Samsung\\x20SSD\\x20860\\x20EVO\\x201TB\\x20\\x20\\x20
E:ID_SERIAL=Samsung_SSD_860_EVO_1TB_S3Z9NB0K123456A
E:ID_SERIAL_SHORT=S3Z9NB0K123456A
E:ID_PATH=pci-0000:00:17.0-ata-1
E:EMPTY=
G:systemd
";

    #[test]
    fn parses_udev_database_properties_only() {
        let p = parse_udev_db(DB);
        assert_eq!(p.get("ID_SERIAL_SHORT").map(String::as_str), Some("S3Z9NB0K123456A"));
        assert_eq!(p.get("ID_PATH").map(String::as_str), Some("pci-0000:00:17.0-ata-1"));
        assert_eq!(p.get("EMPTY").map(String::as_str), Some(""));
        assert!(!p.contains_key("disk/by-id/ata-Samsung_SSD_860_EVO_1TB_S3Z9NB0K123456A"));
        assert_eq!(p.len(), 9);
        assert!(parse_udev_db("garbage\nE:NOEQUALS\n\n").is_empty());
    }

    #[test]
    fn udev_serial_and_model_win_in_lsblk_order() {
        let p = parse_udev_db(DB);
        let none = Path::new("/nonexistent-sysfs");
        assert_eq!(serial("sda", none, &p).as_deref(), Some("S3Z9NB0K123456A"));
        assert_eq!(model(none, &p).as_deref(), Some("Samsung SSD 860 EVO 1TB"));
        let mut p = p;
        p.insert("ID_SCSI_SERIAL".into(), "  S3Z9 NB0K ".into());
        assert_eq!(serial("sda", none, &p).as_deref(), Some("S3Z9 NB0K"));
        p.remove("ID_MODEL_ENC");
        assert_eq!(model(none, &p).as_deref(), Some("Samsung_SSD_860_EVO_1TB"));
        assert_eq!(serial("sda", none, &BTreeMap::new()), None);
    }

    #[test]
    fn unhexmangles_udev_escapes() {
        assert_eq!(unhexmangle("WDC\\x20WD10"), "WDC WD10");
        assert_eq!(unhexmangle("a\\x2"), "a\\x2");
        assert_eq!(unhexmangle("a\\xzz"), "a\\xzz");
        assert_eq!(unhexmangle("\\x5cx41"), "\\x41");
    }

    #[test]
    fn parses_vpd_unit_serial_pages() {
        // As a SATA disk behind libata answers: 20 bytes, right-aligned with spaces.
        let mut page = vec![0x00, 0x80, 0x00, 0x14];
        page.extend_from_slice(b"     WD-WCC4N1234567");
        assert_eq!(vpd_unit_serial(&page).as_deref(), Some("WD-WCC4N1234567"));
        // QEMU's scsi-hd with serial=, NUL padded.
        let mut page = vec![0x00, 0x80, 0x00, 0x08];
        page.extend_from_slice(b"QM0001\0\0");
        assert_eq!(vpd_unit_serial(&page).as_deref(), Some("QM0001"));
        // A length past the returned bytes is cut to them.
        let page = [0x00, 0x80, 0x00, 0xff, b'A', b'B'];
        assert_eq!(vpd_unit_serial(&page).as_deref(), Some("AB"));
        // Wrong page, too short, blank.
        assert_eq!(vpd_unit_serial(&[0x00, 0x83, 0x00, 0x02, b'A', b'B']), None);
        assert_eq!(vpd_unit_serial(&[0x00, 0x80, 0x00]), None);
        assert_eq!(vpd_unit_serial(&[0x00, 0x80, 0x00, 0x04, b' ', b' ', b' ', b' ']), None);
    }
}
