//! The whole disks of this machine, from /sys/block (no lsblk), with a write verdict each.

use std::cmp::Ordering;
use std::fs;
use std::path::Path;

use serde::{Serialize, Serializer};

use super::BlockDevice;
use super::safety::{InUse, Refusal, with_partitions};
use super::sysfs::{self, clean, read_flag, read_trim, read_u64};
use crate::error::{Context, Result};
use crate::wire::{DISK_FIELD_MAX_CHARS, InventoryDisk};

/// A whole disk of this machine: the `InventoryDisk` fields, then what bty adds for the
/// operator and the wizard (bty-web ignores the extra keys).
#[derive(Clone, Debug, Serialize)]
pub struct Disk {
    /// The fields bty-web stores.
    #[serde(flatten)]
    pub inventory: InventoryDisk,
    /// Kernel name ("sda", "nvme0n1").
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// The queue reports a rotating disk (virtual disks often claim to be one).
    pub rotational: bool,
    /// Logical block size in bytes (the unit of addressing).
    pub logical_block_size: u32,
    /// Physical block size in bytes (the unit the disk writes in).
    pub physical_block_size: u32,
    /// Mount points of the disk and its partitions, "[SWAP]" for swap, as lsblk shows them.
    pub mountpoints: Vec<String>,
    /// Devices (dm, md) that hold the disk or one of its partitions.
    pub holders: Vec<String>,
    /// The disk is under the running system's `/`.
    pub root: bool,
    /// The disk is under the medium the system booted from (bty's own executable, a live
    /// system's medium).
    pub boot_medium: bool,
    /// Whether `bty flash` would write it.
    pub writable: bool,
    /// Why not, when it would not; the same reason `bty flash` gives.
    #[serde(serialize_with = "as_text")]
    pub refusal: Option<Refusal>,
}

fn as_text<S: Serializer>(r: &Option<Refusal>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match r {
        Some(r) => s.collect_str(r),
        None => s.serialize_none(),
    }
}

/// What to list.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListOptions {
    /// Also list loop, ram, zram, optical and stacked (dm, md) devices.
    pub all: bool,
}

/// What a /sys/block entry is, as far as hiding it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Disk,
    Loop,
    Ram,
    Zram,
    Optical,
    /// Built on other block devices: device-mapper, md RAID.
    Stacked,
}

fn kind_of(name: &str, sys: &Path) -> Kind {
    if name.starts_with("loop") {
        Kind::Loop
    } else if name.starts_with("zram") {
        Kind::Zram
    } else if name.starts_with("ram") {
        Kind::Ram
    // SCSI peripheral type 5 is a CD/DVD drive (SPC-4 table 49).
    } else if name.starts_with("sr") || read_trim(&sys.join("device/type")) == "5" {
        Kind::Optical
    } else if !sysfs::entries(&sys.join("slaves")).is_empty() {
        Kind::Stacked
    } else {
        Kind::Disk
    }
}

/// The whole disks of this machine, in natural name order (sda, sdb, ..., nvme0n1, nvme1n1).
///
/// Without `all`, loop, ram, zram, optical and dm/md devices are left out: they are not disks an
/// image is flashed to. Loop devices with nothing attached are always left out, as lsblk does.
pub fn list(opts: &ListOptions) -> Result<Vec<Disk>> {
    let in_use = InUse::read()?;
    let mut names: Vec<String> = fs::read_dir("/sys/block")
        .context("listing /sys/block")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by(|a, b| natural_cmp(a, b));
    let fake = test_serials();
    let mut out = Vec::new();
    for name in names {
        let sys = Path::new("/sys/block").join(&name);
        let path = format!("/dev/{name}");
        let faked = fake.iter().find(|(p, _)| *p == path).map(|(_, s)| s.clone());
        let kind = if faked.is_some() { Kind::Disk } else { kind_of(&name, &sys) };
        if kind != Kind::Disk && !opts.all {
            continue;
        }
        if kind == Kind::Loop && !sys.join("loop").is_dir() {
            continue;
        }
        // A device that vanished since the directory was listed is skipped, not an error.
        let Some(dev) = sysfs::parse_dev(&read_trim(&sys.join("dev"))) else { continue };
        let bd = match BlockDevice::from_sysfs(dev, &path) {
            Ok(bd) => BlockDevice { serial: faked.unwrap_or(bd.serial), ..bd },
            Err(e) => {
                crate::debug!("{e}");
                continue;
            }
        };
        out.push(describe(bd, path, kind, &sys, &in_use));
    }
    Ok(out)
}

/// Test hook (cargo feature `test-hooks`, which no shipped build enables):
/// `BTY_TEST_SERIALS="/dev/loop3=SERIAL-A,..."` lists those loop devices as disks carrying those
/// serials, so that the server-driven flash (which finds its target by serial) can be tested on
/// loop devices, which have none. Without the feature, or unset, every disk reports exactly what
/// udev, sysfs or the device itself say.
fn test_serials() -> Vec<(String, String)> {
    #[cfg(feature = "test-hooks")]
    if let Ok(v) = std::env::var("BTY_TEST_SERIALS") {
        return v
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(p, s)| (p.trim().to_string(), s.trim().to_string()))
            .collect();
    }
    Vec::new()
}

fn describe(bd: BlockDevice, path: String, kind: Kind, sys: &Path, in_use: &InUse) -> Disk {
    let parts = with_partitions(&bd);
    let mut holders: Vec<String> =
        parts.iter().flat_map(|d| sysfs::entries(&sysfs::dir(*d).join("holders"))).collect();
    holders.sort();
    holders.dedup();
    let refusal = in_use.refusal(&bd);
    // lsblk shows no vendor, model or serial for stacked devices: they have none of their own.
    let own = |s: String| if kind == Kind::Stacked { None } else { clean(&s) };
    Disk {
        inventory: InventoryDisk {
            path: cap(path),
            size: Some(crate::units::lsblk_size(bd.size)),
            vendor: own(read_trim(&sys.join("device/vendor"))).map(cap),
            model: own(bd.model.clone()).map(cap),
            serial: own(bd.serial.clone()).map(cap),
            tran: clean(&bd.transport).map(cap),
            removable: read_flag(&sys.join("removable")),
            readonly: bd.read_only,
        },
        root: in_use.holds_root(&bd.name),
        boot_medium: in_use.holds_boot_medium(&bd.name),
        mountpoints: in_use.mount_points(&parts),
        holders,
        size_bytes: bd.size,
        rotational: read_flag(&sys.join("queue/rotational")),
        logical_block_size: bd.logical_block_size,
        physical_block_size: read_u64(&sys.join("queue/physical_block_size"))
            .map_or(bd.logical_block_size, |n| n as u32),
        writable: refusal.is_none(),
        refusal,
        name: bd.name,
    }
}

/// Cuts a string to what bty-web accepts in an inventory field.
fn cap(s: String) -> String {
    if s.chars().count() <= DISK_FIELD_MAX_CHARS {
        s
    } else {
        s.chars().take(DISK_FIELD_MAX_CHARS).collect()
    }
}

/// Orders names with their digit runs compared as numbers: nvme2n1 before nvme10n1.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (trim_zeros(&a[..da]), trim_zeros(&b[..db]));
                let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if ord != Ordering::Equal {
                    return ord;
                }
                (a, b) = (&a[da..], &b[db..]);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|&&c| c == b'0').count();
    &d[z..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_names_naturally() {
        let mut v = ["nvme10n1", "sdb", "loop10", "nvme2n1", "loop9", "sda", "vda"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["loop9", "loop10", "nvme2n1", "nvme10n1", "sda", "sdb", "vda"]);
        assert_eq!(natural_cmp("sda01", "sda1"), Ordering::Equal);
    }

    #[test]
    fn caps_fields_at_what_bty_web_accepts() {
        assert_eq!(cap("é".repeat(300)).chars().count(), DISK_FIELD_MAX_CHARS);
        assert_eq!(cap("short".into()), "short");
    }

    #[test]
    fn serialises_the_inventory_fields_first_then_the_verdict() {
        let d = Disk {
            inventory: InventoryDisk {
                path: "/dev/sdb".into(),
                size: Some("1.8T".into()),
                vendor: Some("ATA".into()),
                model: Some("WDC WD20EFRX".into()),
                serial: Some("WD-WCC4M1234567".into()),
                tran: Some("sata".into()),
                removable: false,
                readonly: false,
            },
            name: "sdb".into(),
            size_bytes: 2_000_398_934_016,
            rotational: true,
            logical_block_size: 512,
            physical_block_size: 4096,
            mountpoints: vec!["/srv".into()],
            holders: vec![],
            root: false,
            boot_medium: false,
            writable: false,
            refusal: Some(Refusal::Mounted {
                source: "/dev/sdb1".into(),
                mount_point: "/srv".into(),
            }),
        };
        let text = serde_json::to_string(&d).unwrap();
        let head = r#"{"path":"/dev/sdb","size":"1.8T","vendor":"ATA","model":"WDC WD20EFRX","serial":"WD-WCC4M1234567","tran":"sata","removable":false,"readonly":false,"name":"sdb","#;
        assert!(text.starts_with(head), "{text}");
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["refusal"], "/dev/sdb1 is mounted on /srv");
        assert_eq!(v["writable"], false);
        let inv = serde_json::to_value(&d.inventory).unwrap();
        assert_eq!(inv.as_object().unwrap().len(), 8);
    }
}
