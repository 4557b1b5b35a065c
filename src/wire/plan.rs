//! The plan: what `GET /pxe/{mac}/plan` tells the live environment to do.

use serde::{Deserialize, Serialize};

/// The answer of `GET /pxe/{mac}/plan`, tagged by `mode`.
///
/// bty-web always sends every field of its mode (null where it has no value); bty reads a plan
/// without the optional ones too, and ignores fields it does not know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Plan {
    /// Flash without prompts, then `POST /pxe/{mac}/done` and reboot.
    Flash {
        /// Where to fetch the image: http(s):// or oras:// (bty-web's cache when it serves it).
        image: String,
        /// The serial of the disk to write.
        target_disk_serial: Option<String>,
        /// The image's file name (bty names it after the URL when absent).
        name: Option<String>,
        /// The image's format as the catalog records it (`img.zst`, `qcow2`, ...).
        format: Option<String>,
        /// The content sha256 the publisher pinned, if any.
        disk_image_sha: Option<String>,
    },
    /// Open the wizard with this catalog (bty falls back to the server's `/catalog.toml`).
    Interactive { catalog: Option<String> },
    /// Post the inventory, then reboot.
    Inventory,
    /// Nothing to do: say so and exit.
    Exit,
}

/// The `mode` of a plan, without its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlanMode {
    Flash,
    Interactive,
    Inventory,
    Exit,
}

impl PlanMode {
    /// The `mode` string on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanMode::Flash => "flash",
            PlanMode::Interactive => "interactive",
            PlanMode::Inventory => "inventory",
            PlanMode::Exit => "exit",
        }
    }
}

impl Plan {
    /// The plan's mode.
    pub fn mode(&self) -> PlanMode {
        match self {
            Plan::Flash { .. } => PlanMode::Flash,
            Plan::Interactive { .. } => PlanMode::Interactive,
            Plan::Inventory => PlanMode::Inventory,
            Plan::Exit => PlanMode::Exit,
        }
    }
}
