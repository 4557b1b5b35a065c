//! Block devices: a flash target's description ([`Target`]), the disks of this machine
//! ([`list()`]), and the safety rules that decide whether bty may write one ([`check_writable`]).

pub mod list;
pub mod safety;
pub mod serial;
pub mod sysfs;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};

pub use list::{Disk, ListOptions, list};
pub use safety::{InUse, Refusal, check_writable};
pub use sysfs::split_dev;
use sysfs::{read_trim, read_u64};

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
    /// Model string of the (whole) disk, if any.
    pub model: String,
    /// Serial number of the (whole) disk, if any (see [`serial::serial`]).
    pub serial: String,
    /// Transport as lsblk names it ("usb", "sata", "nvme", "virtio"), empty when it has none.
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

impl BlockDevice {
    /// Reads a block device's attributes from sysfs; `what` names it in the error.
    pub fn from_sysfs(dev: (u32, u32), what: &str) -> Result<BlockDevice> {
        let sys = sysfs::dir(dev);
        let name = sysfs::kernel_name(dev)
            .with_context(|| format!("reading sysfs for {what} ({}:{})", dev.0, dev.1))?;
        let is_partition = sys.join("partition").exists();
        // Queue and device attributes live on the whole disk.
        let disk_sys = if is_partition { sys.join("..") } else { sys.clone() };
        let disk_name = if is_partition {
            fs::canonicalize(&disk_sys)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default()
        } else {
            name.clone()
        };
        let disk_dev = sysfs::parse_dev(&read_trim(&disk_sys.join("dev"))).unwrap_or(dev);
        let udev = serial::udev_properties(disk_dev);
        Ok(BlockDevice {
            dev,
            size: read_u64(&sys.join("size")).unwrap_or(0) * 512,
            logical_block_size: read_u64(&disk_sys.join("queue/logical_block_size")).unwrap_or(512)
                as u32,
            write_zeroes: read_u64(&disk_sys.join("queue/write_zeroes_max_bytes")).unwrap_or(0) > 0,
            read_only: sysfs::read_flag(&sys.join("ro")),
            is_partition,
            model: serial::model(&disk_sys, &udev).unwrap_or_default(),
            serial: serial::serial(&disk_name, &disk_sys, &udev).unwrap_or_default(),
            transport: sysfs::transport(&disk_name, &disk_sys).unwrap_or_default(),
            name,
        })
    }
}

fn describe_block(rdev: u64, path: &Path) -> Result<BlockDevice> {
    BlockDevice::from_sysfs(split_dev(rdev), &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_file_targets_need_an_existing_directory() {
        assert!(Target::probe(Path::new("/nonexistent-dir-bty/x.img")).is_err());
        let t = Target::probe(Path::new("/tmp/bty-probe-does-not-exist.img")).unwrap();
        assert!(matches!(t.kind, TargetKind::File));
        assert!(Target::probe(Path::new("/dev/null")).is_err());
    }
}
