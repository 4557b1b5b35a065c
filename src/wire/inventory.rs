//! The inventory a live environment reports (`POST /pxe/{mac}/inventory`).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The body of `POST /pxe/{mac}/inventory`: `{"disks": [InventoryDisk, ...], "lshw": tree}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// At most [`super::INVENTORY_MAX_DISKS`] disks.
    pub disks: Vec<InventoryDisk>,
    /// The `lshw -json` tree (or bty's own summary in its shape); optional, null counts as
    /// absent. bty-web keeps at most [`super::LSHW_MAX`] bytes of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lshw: Option<Value>,
}

/// One disk of an inventory: the spec's `InventoryDisk`, field for field. Strings are at most
/// [`super::DISK_FIELD_MAX_CHARS`] characters. Unknown keys are ignored (bty-web drops them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryDisk {
    /// /dev path at inventory time ("/dev/sda"); not a durable id.
    pub path: String,
    /// Size as lsblk prints it ("500G", "1.8T", "0B").
    pub size: Option<String>,
    /// Vendor from sysfs (`device/vendor`: "ATA", a PCI id for virtio), as lsblk shows it.
    pub vendor: Option<String>,
    /// Model, from udev or sysfs.
    pub model: Option<String>,
    /// Serial: the durable id a flash is pinned to.
    pub serial: Option<String>,
    /// Transport as lsblk names it: "sata", "nvme", "usb", "virtio", ...
    pub tran: Option<String>,
    /// The kernel marks the medium removable (absent or null: false).
    #[serde(default, deserialize_with = "null_is_false")]
    pub removable: bool,
    /// The kernel reports the device read-only (absent or null: false).
    #[serde(default, deserialize_with = "null_is_false")]
    pub readonly: bool,
}

fn null_is_false<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}
