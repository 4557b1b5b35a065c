//! The rules that decide whether bty may write a block device, and why not.
//!
//! What the running system uses (mounts, swap, the disks under `/` and under the medium the
//! system booted from) is read once into [`InUse`]; each device is then judged against it, so
//! listing many disks reads /proc only once.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::sysfs::{self, parse_dev, read_trim, split_dev};
use super::{BlockDevice, Target, TargetKind};
use crate::error::{Context, Result};

/// Where live systems mount the medium they booted from: Debian live-boot (and its older
/// path), dracut's dmsquash-live, casper (Ubuntu), archiso.
const LIVE_MEDIA: [&str; 5] = [
    "/run/live/medium",
    "/lib/live/mount/medium",
    "/run/initramfs/live",
    "/cdrom",
    "/run/archiso/bootmnt",
];

/// Why a device must not be written. `Display` gives the reason as a sentence fragment
/// ("sda1 is mounted on /boot"); [`check_writable`] prefixes the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The device holds the running system's root file system.
    Root,
    /// bty's own executable lives on the device.
    RunsBty,
    /// The device holds a live system's boot medium, mounted at `mount_point`.
    LiveMedium { mount_point: String },
    /// The kernel reports the device read-only.
    ReadOnly,
    /// The device or one of its partitions is mounted.
    Mounted { source: String, mount_point: String },
    /// The device or one of its partitions is active swap.
    Swap { path: String },
    /// The device or partition `name` is claimed by RAID, LVM or device-mapper devices.
    Held { name: String, by: Vec<String> },
    /// The device has no capacity: a card reader without a card, an unconfigured zram.
    Empty,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Root => f.write_str("it holds the running system's root file system"),
            Refusal::RunsBty => f.write_str("bty itself runs from this device"),
            Refusal::LiveMedium { mount_point } => {
                write!(f, "it holds the live system's boot medium (mounted on {mount_point})")
            }
            Refusal::ReadOnly => f.write_str("the device is read-only"),
            Refusal::Mounted { source, mount_point } => {
                write!(f, "{source} is mounted on {mount_point}")
            }
            Refusal::Swap { path } => write!(f, "{path} is in use as swap"),
            Refusal::Held { name, by } => {
                write!(f, "{name} is held by {} (RAID, LVM or device-mapper)", by.join(", "))
            }
            Refusal::Empty => f.write_str("the device is empty (0 bytes; no medium in the drive?)"),
        }
    }
}

/// A mounted file system from /proc/self/mountinfo.
struct Mount {
    /// The device number mountinfo gives (anonymous for btrfs, overlay and the like).
    dev: (u32, u32),
    /// The device number of the source path, when the source is a block device node.
    source_dev: Option<(u32, u32)>,
    mount_point: String,
    source: String,
}

/// An active swap area from /proc/swaps.
struct Swap {
    path: String,
    dev: Option<(u32, u32)>,
}

/// What the running system uses, read once.
pub struct InUse {
    mounts: Vec<Mount>,
    swaps: Vec<Swap>,
    /// Kernel names of the devices under `/`, through partitions, dm/md and loop files.
    root: BTreeSet<String>,
    /// Kernel names of the devices under bty's own executable.
    runs_bty: BTreeSet<String>,
    /// Live media mount points with the kernel names of the devices under them.
    live_media: Vec<(String, BTreeSet<String>)>,
}

impl InUse {
    /// Reads /proc/self/mountinfo, /proc/swaps and sysfs.
    pub fn read() -> Result<InUse> {
        let text =
            fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        let mounts = parse_mountinfo(&text);
        // A missing /proc/swaps means a kernel without swap: nothing to protect.
        let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
        let swaps = parse_swaps(&swaps)
            .into_iter()
            .map(|path| Swap { dev: rdev_of(&path), path })
            .collect();
        let under = |m: &Mount| {
            let mut set = BTreeSet::new();
            backing_devices(m.dev, &mut set, 0);
            if let Some(d) = m.source_dev {
                backing_devices(d, &mut set, 0);
            }
            set
        };
        let mut root = BTreeSet::new();
        let mut live_media = Vec::new();
        for m in &mounts {
            if m.mount_point == "/" {
                root.extend(under(m));
            } else if LIVE_MEDIA.contains(&m.mount_point.as_str()) {
                live_media.push((m.mount_point.clone(), under(m)));
            }
        }
        let mut runs_bty = BTreeSet::new();
        if let Ok(meta) = fs::metadata("/proc/self/exe") {
            backing_devices(split_dev(meta.dev()), &mut runs_bty, 0);
        }
        Ok(InUse { mounts, swaps, root, runs_bty, live_media })
    }

    /// Whether `name` (a disk or partition) is under `/`.
    pub fn holds_root(&self, name: &str) -> bool {
        self.root.contains(name)
    }

    /// Whether `name` is under the medium the system booted from: bty's own executable or a
    /// live system's medium.
    pub fn holds_boot_medium(&self, name: &str) -> bool {
        self.runs_bty.contains(name) || self.live_media.iter().any(|(_, s)| s.contains(name))
    }

    /// Mount points of the devices `devs` (a disk and its partitions), in mountinfo order,
    /// each once, with "[SWAP]" for active swap as lsblk shows it.
    pub fn mount_points(&self, devs: &BTreeSet<(u32, u32)>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in self.mounts.iter().filter(|m| mount_is_on(m, devs)) {
            if !out.contains(&m.mount_point) {
                out.push(m.mount_point.clone());
            }
        }
        if self.swaps.iter().any(|s| s.dev.is_some_and(|d| devs.contains(&d))) {
            out.push("[SWAP]".into());
        }
        out
    }

    /// The first reason, if any, why `dev` must not be written: it backs the running system
    /// or its boot medium, is read-only, mounted (or a partition is), swap, held by md/dm, or
    /// empty. The reasons that say most come first.
    pub fn refusal(&self, dev: &BlockDevice) -> Option<Refusal> {
        if self.holds_root(&dev.name) {
            return Some(Refusal::Root);
        }
        if self.runs_bty.contains(&dev.name) {
            return Some(Refusal::RunsBty);
        }
        if let Some((mp, _)) = self.live_media.iter().find(|(_, s)| s.contains(&dev.name)) {
            return Some(Refusal::LiveMedium { mount_point: mp.clone() });
        }
        if dev.read_only {
            return Some(Refusal::ReadOnly);
        }
        let ours = with_partitions(dev);
        if let Some(m) = self.mounts.iter().find(|m| mount_is_on(m, &ours)) {
            return Some(Refusal::Mounted {
                source: m.source.clone(),
                mount_point: m.mount_point.clone(),
            });
        }
        if let Some(s) = self.swaps.iter().find(|s| s.dev.is_some_and(|d| ours.contains(&d))) {
            return Some(Refusal::Swap { path: s.path.clone() });
        }
        for d in &ours {
            let Some(name) = sysfs::kernel_name(*d) else { continue };
            let by = sysfs::entries(&sysfs::dir(*d).join("holders"));
            if !by.is_empty() {
                return Some(Refusal::Held { name, by });
            }
        }
        if dev.size == 0 {
            return Some(Refusal::Empty);
        }
        None
    }
}

/// A mount is on a device when mountinfo names its number, or (btrfs, whose mounts carry an
/// anonymous number) when its source is the device's node.
fn mount_is_on(m: &Mount, devs: &BTreeSet<(u32, u32)>) -> bool {
    devs.contains(&m.dev) || m.source_dev.is_some_and(|d| devs.contains(&d))
}

/// Refuses a block device that is mounted, holds a mounted partition, is swap, is held by
/// md/dm, backs `/` or the medium the system booted from, is read-only or empty. Each refusal
/// names the device and the reason. Regular files pass (they are checked when opened).
pub fn check_writable(target: &Target) -> Result<()> {
    let TargetKind::Block(dev) = &target.kind else { return Ok(()) };
    match InUse::read()?.refusal(dev) {
        Some(r) => crate::bail!("refusing {}: {r}", target.resolved.display()),
        None => Ok(()),
    }
}

/// Refuses a target that is the source itself, before anything is written: writing would
/// destroy the image while it is being read (and a failed flash then blanks its first and
/// last MiB). The target is the source when it is the same file (same device and inode), the
/// block device or file system the source file is read from (the file's device resolved
/// through partitions, dm/md and loop files to its disks), or a loop device backed by it.
pub fn check_not_source(source: &fs::Metadata, display: &str, target: &Target) -> Result<()> {
    let shown = target.resolved.display();
    let dev = match &target.kind {
        TargetKind::File => {
            let Ok(meta) = fs::metadata(&target.resolved) else { return Ok(()) };
            let id = (meta.dev(), meta.ino());
            crate::ensure!(
                id != (source.dev(), source.ino()),
                "refusing {shown}: it is the source image {display} itself (same file); \
                 nothing was written"
            );
            if source.file_type().is_block_device() {
                let rdev = split_dev(source.rdev());
                crate::ensure!(
                    !loop_backed_by(rdev, id),
                    "refusing {shown}: the source {display} is a loop device backed by this \
                     file; nothing was written"
                );
            }
            return Ok(());
        }
        TargetKind::Block(dev) => dev,
    };
    let mut under = BTreeSet::new();
    if source.file_type().is_block_device() {
        let rdev = split_dev(source.rdev());
        backing_devices(rdev, &mut under, 0);
        // Reading a whole disk while writing one of its partitions overwrites the source too.
        let parent = parent_name(dev.dev);
        let source_name = sysfs::kernel_name(rdev);
        crate::ensure!(
            !under.contains(&dev.name) && (parent.is_none() || parent != source_name),
            "refusing {shown}: the source {display} is this device, lies on it or holds it; \
             nothing was written"
        );
        return Ok(());
    }
    let file_dev = split_dev(source.dev());
    backing_devices(file_dev, &mut under, 0);
    // btrfs and the like report an anonymous device number; mountinfo names the real one.
    if let Ok(text) = fs::read_to_string("/proc/self/mountinfo") {
        for m in parse_mountinfo(&text).iter().filter(|m| m.dev == file_dev) {
            if let Some(d) = m.source_dev {
                backing_devices(d, &mut under, 0);
            }
        }
    }
    crate::ensure!(
        !under.contains(&dev.name),
        "refusing {shown}: the source image {display} lives on a file system on this device; \
         nothing was written"
    );
    crate::ensure!(
        !loop_backed_by(dev.dev, (source.dev(), source.ino())),
        "refusing {shown}: it is a loop device backed by the source image {display}; nothing \
         was written"
    );
    Ok(())
}

/// Whether `dev` (or, for a partition, its disk) is a loop device whose backing file is the
/// file with this (st_dev, st_ino).
fn loop_backed_by(dev: (u32, u32), file: (u64, u64)) -> bool {
    let mut loops = vec![dev];
    loops.extend(parent_dev(dev));
    loops.iter().any(|d| {
        let backing = read_trim(&sysfs::dir(*d).join("loop/backing_file"));
        !backing.is_empty()
            && fs::metadata(backing.trim_end_matches(" (deleted)"))
                .is_ok_and(|m| (m.dev(), m.ino()) == file)
    })
}

/// The device number of a partition's whole disk; None for a whole disk (whose sysfs parent
/// may be a controller with a character device number of its own, as NVMe's is).
fn parent_dev(part: (u32, u32)) -> Option<(u32, u32)> {
    let sys = sysfs::dir(part);
    if !sys.join("partition").exists() {
        return None;
    }
    parse_dev(&read_trim(&sys.join("../dev")))
}

/// The kernel name of a partition's whole disk.
fn parent_name(part: (u32, u32)) -> Option<String> {
    parent_dev(part).and_then(sysfs::kernel_name)
}

/// Device numbers of `dev` itself and of all its partitions.
pub fn with_partitions(dev: &BlockDevice) -> BTreeSet<(u32, u32)> {
    let mut set = BTreeSet::from([dev.dev]);
    if dev.is_partition {
        return set;
    }
    if let Ok(entries) = fs::read_dir(sysfs::dir(dev.dev)) {
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

/// Kernel names of the devices a device number is built on: itself, its parent disk when it
/// is a partition, recursively the slaves of dm/md devices and the disk under a loop device's
/// backing file (a live system's squashfs).
fn backing_devices(dev: (u32, u32), out: &mut BTreeSet<String>, depth: u32) {
    if depth > 8 {
        return;
    }
    let Some(name) = sysfs::kernel_name(dev) else { return };
    let sys = sysfs::dir(dev);
    if sys.join("partition").exists() {
        if let Ok(parent) = fs::canonicalize(sys.join("..")) {
            if let Some(p) = parent.file_name() {
                out.insert(p.to_string_lossy().into_owned());
            }
        }
    }
    if !out.insert(name) {
        return;
    }
    if let Ok(slaves) = fs::read_dir(sys.join("slaves")) {
        for s in slaves.flatten() {
            if let Some(d) = parse_dev(&read_trim(&s.path().join("dev"))) {
                backing_devices(d, out, depth + 1);
            }
        }
    }
    let backing = read_trim(&sys.join("loop/backing_file"));
    if !backing.is_empty() {
        if let Ok(meta) = fs::metadata(backing.trim_end_matches(" (deleted)")) {
            backing_devices(split_dev(meta.dev()), out, depth + 1);
        }
    }
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        let (Some(dev), Some(mp), Some(src)) = (fields.get(2), fields.get(4), fields.get(sep + 2))
        else {
            continue;
        };
        let Some(dev) = parse_dev(dev) else { continue };
        let source = unescape(src);
        out.push(Mount { dev, source_dev: rdev_of(&source), mount_point: unescape(mp), source });
    }
    out
}

/// Paths of the active swap areas in /proc/swaps (after its header line).
fn parse_swaps(text: &str) -> Vec<String> {
    text.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(unescape).collect()
}

/// Undoes the octal escapes (`\040` for space) of /proc mount and swap tables.
fn unescape(s: &str) -> String {
    super::sysfs::unescape(s, "\\", 8)
}

/// The device number of a block device node.
fn rdev_of(path: &str) -> Option<(u32, u32)> {
    if !path.starts_with('/') {
        return None;
    }
    let meta = fs::metadata(path).ok()?;
    meta.file_type().is_block_device().then(|| split_dev(meta.rdev()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_proc_tables() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("tail\\04"), "tail\\04");
        assert_eq!(unescape("a\\+12"), "a\\+12");
        assert_eq!(unescape("\\é12"), "\\é12");
    }

    #[test]
    fn parses_mountinfo_and_swaps() {
        let text = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    90 27 0:45 / /mnt/my\\040disk rw - btrfs /nonexistent/dev/sdz1 rw\n\
                    91 27 0:46 / /x rw shared:1 - tmpfs tmpfs rw\n\
                    short line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].dev, m[0].mount_point.as_str(), m[0].source.as_str()),
            ((254, 0), "/", "/dev/vda")
        );
        assert_eq!(m[1].mount_point, "/mnt/my disk");
        assert_eq!(m[2].source, "tmpfs");
        assert_eq!(m[2].source_dev, None);
        let swaps = "Filename\tType\tSize\tUsed\tPriority\n/dev/sdb2 partition 1 0 -2\n/swap\\040file file 1 0 -3\n";
        assert_eq!(parse_swaps(swaps), ["/dev/sdb2", "/swap file"]);
    }

    #[test]
    fn refusals_read_as_reasons() {
        let m = Refusal::Mounted { source: "/dev/sdb1".into(), mount_point: "/boot".into() };
        assert_eq!(m.to_string(), "/dev/sdb1 is mounted on /boot");
        let h = Refusal::Held { name: "sdb2".into(), by: vec!["dm-0".into(), "md127".into()] };
        assert_eq!(h.to_string(), "sdb2 is held by dm-0, md127 (RAID, LVM or device-mapper)");
    }
}
