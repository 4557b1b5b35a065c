//! The contract between the live environment's agent (`bty --server`) and bty-web: the boot
//! modes, the plan, the progress and status reports, the inventory, the field limits both sides
//! hold them to, and the MAC address form. Here, below both, so that `cli`, `disks` and
//! `inventory` need nothing of the server's code and the two sides write and read one type
//! (see ARCHITECTURE.md).
//!
//! The types derive `Serialize` and `Deserialize` with the JSON shapes of the spec (the tests in
//! `tests.rs` pin them). bty-web does not read its bodies through these `Deserialize`s: it checks
//! them by hand (`web::validate`), so that every refusal names its field, and then builds them.

mod boot;
mod inventory;
mod plan;
mod report;
#[cfg(test)]
mod tests;

pub use boot::BootMode;
pub use inventory::{Inventory, InventoryDisk};
pub use plan::{Plan, PlanMode};
pub use report::{Progress, Status};

/// Longest label, in characters.
pub const LABEL_MAX_CHARS: usize = 64;
/// Most labels on one machine (after duplicates collapse).
pub const LABELS_MAX: usize = 16;
/// Longest `target_disk_serial`, in characters.
pub const SERIAL_MAX_CHARS: usize = 128;
/// Most disks in one inventory.
pub const INVENTORY_MAX_DISKS: usize = 64;
/// Longest string field of an inventory disk, in characters.
pub const DISK_FIELD_MAX_CHARS: usize = 256;
/// Largest `lshw` tree kept, as re-serialised JSON bytes; a bigger one is dropped.
pub const LSHW_MAX: usize = 2 * 1024 * 1024;
/// Longest failure reason in `POST /pxe/{mac}/status`, in characters.
pub const REASON_MAX_CHARS: usize = 500;
/// Longest phase name in `POST /pxe/{mac}/progress`, in characters.
pub const PHASE_MAX_CHARS: usize = 32;
/// Longest boot artifact name, in characters.
pub const BOOT_NAME_MAX_CHARS: usize = 128;

/// Normalises a MAC address to `aa:bb:cc:dd:ee:ff`.
///
/// Accepts six pairs of hex digits in any case, separated all by `:` or all by `-`, or twelve
/// bare hex digits. Anything else (mixed separators, single-digit groups, whitespace) is refused.
pub fn normalize_mac(s: &str) -> Result<String, String> {
    let bad = || format!("{} is not a MAC address (expected e.g. aa:bb:cc:dd:ee:ff)", show(s));
    let b = s.as_bytes();
    let digits: Vec<u8> = match b.len() {
        12 => b.to_vec(),
        17 => {
            let sep = b[2];
            if sep != b':' && sep != b'-' {
                return Err(bad());
            }
            let mut d = Vec::with_capacity(12);
            for (i, &c) in b.iter().enumerate() {
                if i % 3 == 2 {
                    if c != sep {
                        return Err(bad());
                    }
                } else {
                    d.push(c);
                }
            }
            d
        }
        _ => return Err(bad()),
    };
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let mut out = String::with_capacity(17);
    for (i, pair) in digits.chunks(2).enumerate() {
        if i > 0 {
            out.push(':');
        }
        for &c in pair {
            out.push(char::from(c.to_ascii_lowercase()));
        }
    }
    Ok(out)
}

/// `s` quoted for a message, cut at 40 characters: input from a socket can be any length.
pub fn show(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{:?}...", &s[..i]),
        None => format!("{s:?}"),
    }
}
