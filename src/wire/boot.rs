//! The boot modes: what `GET /pxe/{mac}` does for a machine.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::show;

/// A machine's boot mode, as `Machine.boot_mode` and `MachineUpsert.boot_mode` carry it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BootMode {
    /// Boot the local disk (the default of a `PUT /machines/{mac}` that names none).
    #[default]
    #[serde(rename = "ipxe-exit")]
    IpxeExit,
    /// Flash on every boot that follows a disk boot: the per-job CI cadence.
    #[serde(rename = "bty-flash-always")]
    FlashAlways,
    /// Flash once, then boot the disk until the machine is saved again.
    #[serde(rename = "bty-flash-once")]
    FlashOnce,
    /// The live environment's wizard.
    #[serde(rename = "bty-tui")]
    Tui,
    /// Report the inventory, then boot the disk (what auto-discovery sets).
    #[serde(rename = "bty-inventory")]
    Inventory,
}

impl BootMode {
    /// Every boot mode, in the order forms and messages list them.
    pub const ALL: [BootMode; 5] = [
        BootMode::IpxeExit,
        BootMode::FlashAlways,
        BootMode::FlashOnce,
        BootMode::Tui,
        BootMode::Inventory,
    ];

    /// The name on the wire and in the database (`"bty-flash-once"`).
    pub fn as_str(self) -> &'static str {
        match self {
            BootMode::IpxeExit => "ipxe-exit",
            BootMode::FlashAlways => "bty-flash-always",
            BootMode::FlashOnce => "bty-flash-once",
            BootMode::Tui => "bty-tui",
            BootMode::Inventory => "bty-inventory",
        }
    }

    /// The modes that flash, and so need an image and a target disk.
    pub fn is_flash(self) -> bool {
        matches!(self, BootMode::FlashAlways | BootMode::FlashOnce)
    }
}

impl fmt::Display for BootMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BootMode {
    /// `must be one of ipxe-exit, ... (got "x")`: the message bty-web answers for the field.
    type Err = String;

    fn from_str(s: &str) -> Result<BootMode, String> {
        BootMode::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = BootMode::ALL.iter().map(|m| m.as_str()).collect();
            format!("must be one of {} (got {})", all.join(", "), show(s))
        })
    }
}
