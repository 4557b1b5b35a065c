//! Block devices from sysfs and the safety rules that decide whether bty may write one.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};

/// What a flash target is.
#[derive(Clone, Debug)]
pub enum TargetKind {
    /// A block device (disk, partition, loop device).
    Block(BlockDevice),
    /// A regular file (an image being produced, or a test target); created when missing.
    File,
}

/// A block device as sysfs describes it.
#[derive(Clone, Debug, Default)]
pub struct BlockDevice {
    /// Kernel name, e.g. "sdb" or "loop3".
    pub name: String,
    /// Device number (major, minor).
    pub dev: (u32, u32),
    /// Size in bytes.
    pub size: u64,
    /// Logical block size in bytes.
    pub logical_block_size: u32,
    /// Whether the queue advertises write-zeroes (so BLKZEROOUT is cheap and exact).
    pub write_zeroes: bool,
    /// Read-only as sysfs reports it.
    pub read_only: bool,
    /// Whether this is a partition rather than a whole disk.
    pub is_partition: bool,
    /// Model string from the device, if any.
    pub model: String,
    /// Serial number, if any.
    pub serial: String,
    /// Transport or driver hint ("usb", "nvme", "virtio", "loop").
    pub transport: String,
}

/// A flash target: the path as given, where it leads, and what it is.
#[derive(Clone, Debug)]
pub struct Target {
    /// The path the user gave.
    pub path: PathBuf,
    /// The path after following symlinks (e.g. /dev/disk/by-id/... -> /dev/sdb).
    pub resolved: PathBuf,
    /// Block device or regular file.
    pub kind: TargetKind,
}

impl Target {
    /// Looks at `path` without opening it for writing.
    pub fn probe(path: &Path) -> Result<Target> {
        let resolved = match fs::canonicalize(path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A regular file target that does not exist yet: its directory must.
                let parent =
                    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                crate::ensure!(
                    parent.is_dir(),
                    "opening target {}: neither it nor its directory exists",
                    path.display()
                );
                crate::ensure!(
                    !path.starts_with("/dev"),
                    "opening target {}: no such device",
                    path.display()
                );
                return Ok(Target {
                    path: path.into(),
                    resolved: path.into(),
                    kind: TargetKind::File,
                });
            }
            Err(e) => {
                return Err(e).with_context(|| format!("resolving target {}", path.display()));
            }
        };
        let meta =
            fs::metadata(&resolved).with_context(|| format!("reading {}", resolved.display()))?;
        let ft = meta.file_type();
        let kind = if ft.is_block_device() {
            TargetKind::Block(describe_block(meta.rdev(), &resolved)?)
        } else if ft.is_file() {
            TargetKind::File
        } else {
            crate::bail!(
                "refusing target {}: not a block device or a regular file",
                resolved.display()
            );
        };
        Ok(Target { path: path.into(), resolved, kind })
    }

    /// Capacity in bytes for a block device; None for a regular file (it grows).
    pub fn capacity(&self) -> Option<u64> {
        match &self.kind {
            TargetKind::Block(b) => Some(b.size),
            TargetKind::File => None,
        }
    }

    /// A one-line description for confirmations and logs.
    pub fn describe(&self) -> String {
        match &self.kind {
            TargetKind::Block(b) => {
                let mut s = format!("{} ({}", self.resolved.display(), crate::units::bytes(b.size));
                for extra in [&b.model, &b.serial, &b.transport] {
                    if !extra.is_empty() {
                        s.push_str(", ");
                        s.push_str(extra);
                    }
                }
                s.push(')');
                s
            }
            TargetKind::File => format!("{} (regular file)", self.resolved.display()),
        }
    }
}

/// Splits a Linux `dev_t` into (major, minor), as glibc's gnu_dev_major/minor do.
pub fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

fn sysfs_dir(dev: (u32, u32)) -> PathBuf {
    PathBuf::from(format!("/sys/dev/block/{}:{}", dev.0, dev.1))
}

fn read_trim(p: &Path) -> String {
    fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn read_u64(p: &Path) -> Option<u64> {
    read_trim(p).parse().ok()
}

/// Kernel name of a device number ("sda2"), from the sysfs symlink.
fn kernel_name(dev: (u32, u32)) -> Option<String> {
    let link = fs::read_link(sysfs_dir(dev)).ok()?;
    link.file_name().map(|n| n.to_string_lossy().into_owned())
}

fn describe_block(rdev: u64, path: &Path) -> Result<BlockDevice> {
    let dev = split_dev(rdev);
    let sys = sysfs_dir(dev);
    let name = kernel_name(dev)
        .with_context(|| format!("reading sysfs for {} ({}:{})", path.display(), dev.0, dev.1))?;
    let is_partition = sys.join("partition").exists();
    // Queue and device attributes live on the whole disk.
    let disk_sys = if is_partition { sys.join("..") } else { sys.clone() };
    let sectors = read_u64(&sys.join("size")).unwrap_or(0);
    let transport = transport_of(&name, &disk_sys);
    Ok(BlockDevice {
        name,
        dev,
        size: sectors * 512,
        logical_block_size: read_u64(&disk_sys.join("queue/logical_block_size")).unwrap_or(512)
            as u32,
        write_zeroes: read_u64(&disk_sys.join("queue/write_zeroes_max_bytes")).unwrap_or(0) > 0,
        read_only: read_trim(&sys.join("ro")) == "1",
        is_partition,
        model: read_trim(&disk_sys.join("device/model")),
        serial: {
            let s = read_trim(&disk_sys.join("device/serial"));
            if s.is_empty() { read_trim(&disk_sys.join("serial")) } else { s }
        },
        transport,
    })
}

fn transport_of(name: &str, disk_sys: &Path) -> String {
    for prefix in ["loop", "nvme", "mmcblk", "vd", "md", "dm-", "zram", "nbd"] {
        if name.starts_with(prefix) {
            return prefix.trim_end_matches('-').to_string();
        }
    }
    let dev = fs::canonicalize(disk_sys.join("device")).unwrap_or_default();
    let s = dev.to_string_lossy();
    if s.contains("/usb") {
        "usb".into()
    } else if s.contains("/ata") {
        "sata".into()
    } else if s.contains("virtio") {
        "virtio".into()
    } else {
        String::new()
    }
}

/// Device numbers of `dev` itself and of all its partitions.
fn with_partitions(dev: &BlockDevice) -> BTreeSet<(u32, u32)> {
    let mut set = BTreeSet::from([dev.dev]);
    if dev.is_partition {
        return set;
    }
    if let Ok(entries) = fs::read_dir(sysfs_dir(dev.dev)) {
        for e in entries.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Some(d) = parse_dev(&read_trim(&p.join("dev"))) {
                    set.insert(d);
                }
            }
        }
    }
    set
}

fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Whole disks (and partitions) that a device number is built on: itself, its parent disk when
/// it is a partition, and recursively the slaves of dm/md devices.
fn backing_devices(dev: (u32, u32), out: &mut BTreeSet<String>, depth: u32) {
    if depth > 8 {
        return;
    }
    let Some(name) = kernel_name(dev) else { return };
    let sys = sysfs_dir(dev);
    if sys.join("partition").exists() {
        if let Ok(parent) = fs::canonicalize(sys.join("..")) {
            if let Some(p) = parent.file_name() {
                out.insert(p.to_string_lossy().into_owned());
            }
        }
    }
    out.insert(name);
    if let Ok(slaves) = fs::read_dir(sys.join("slaves")) {
        for s in slaves.flatten() {
            if let Some(d) = parse_dev(&read_trim(&s.path().join("dev"))) {
                backing_devices(d, out, depth + 1);
            }
        }
    }
}

/// A mounted file system from /proc/self/mountinfo.
struct Mount {
    dev: (u32, u32),
    mount_point: String,
    source: String,
}

fn mounts() -> Result<Vec<Mount>> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        let (Some(dev), Some(mp), Some(src)) = (fields.get(2), fields.get(4), fields.get(sep + 2))
        else {
            continue;
        };
        let Some(dev) = parse_dev(dev) else { continue };
        out.push(Mount { dev, mount_point: unescape(mp), source: unescape(src) });
    }
    Ok(out)
}

/// Undoes the octal escapes (`\040` for space) of /proc mount and swap tables.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn rdev_of(path: &str) -> Option<(u32, u32)> {
    let meta = fs::metadata(path).ok()?;
    meta.file_type().is_block_device().then(|| split_dev(meta.rdev()))
}

/// Refuses a block device that is mounted, holds a mounted partition, is swap, is held by
/// md/dm, backs `/` or the medium bty runs from, or is read-only. Each refusal names the device
/// and the reason. Regular files pass (they are checked when opened).
pub fn check_writable(target: &Target) -> Result<()> {
    let TargetKind::Block(dev) = &target.kind else { return Ok(()) };
    let path = target.resolved.display();
    let ours = with_partitions(dev);

    if dev.read_only {
        crate::bail!("refusing {path}: the device is read-only");
    }
    let mounts = mounts()?;
    for m in &mounts {
        let src_dev = rdev_of(&m.source);
        if ours.contains(&m.dev) || src_dev.is_some_and(|d| ours.contains(&d)) {
            crate::bail!("refusing {path}: {} is mounted on {}", m.source, m.mount_point);
        }
    }
    if let Ok(swaps) = fs::read_to_string("/proc/swaps") {
        for line in swaps.lines().skip(1) {
            let Some(p) = line.split_whitespace().next() else { continue };
            let p = unescape(p);
            if rdev_of(&p).is_some_and(|d| ours.contains(&d)) {
                crate::bail!("refusing {path}: {p} is in use as swap");
            }
        }
    }
    for d in &ours {
        let Some(name) = kernel_name(*d) else { continue };
        if let Ok(holders) = fs::read_dir(sysfs_dir(*d).join("holders")) {
            let names: Vec<String> =
                holders.flatten().map(|h| h.file_name().to_string_lossy().into_owned()).collect();
            if !names.is_empty() {
                crate::bail!(
                    "refusing {path}: {name} is held by {} (RAID, LVM or device-mapper)",
                    names.join(", ")
                );
            }
        }
    }
    // The disk under / and the disk bty runs from, through partitions and dm/md stacking.
    let mut system = BTreeSet::new();
    for m in &mounts {
        if m.mount_point == "/" {
            backing_devices(m.dev, &mut system, 0);
            if let Some(d) = rdev_of(&m.source) {
                backing_devices(d, &mut system, 0);
            }
        }
    }
    let mut running_from = BTreeSet::new();
    if let Ok(meta) = fs::metadata("/proc/self/exe") {
        backing_devices(split_dev(meta.dev()), &mut running_from, 0);
    }
    if system.contains(&dev.name) {
        crate::bail!("refusing {path}: it holds the running system's root file system");
    }
    if running_from.contains(&dev.name) {
        crate::bail!("refusing {path}: bty itself runs from this device");
    }
    Ok(())
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
    fn unescapes_proc_tables() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("tail\\04"), "tail\\04");
    }

    #[test]
    fn regular_file_targets_need_an_existing_directory() {
        assert!(Target::probe(Path::new("/nonexistent-dir-bty/x.img")).is_err());
        let t = Target::probe(Path::new("/tmp/bty-probe-does-not-exist.img")).unwrap();
        assert!(matches!(t.kind, TargetKind::File));
        assert!(Target::probe(Path::new("/dev/null")).is_err());
    }
}
