//! The hardware inventory a machine reports to bty-web (`POST /pxe/{mac}/inventory`): its
//! disks, and a hardware tree from `lshw -json` or, without lshw, from bty's own summary.

pub mod lshw;
pub mod summary;

use serde_json::Value;

use crate::disks::{self, Disk, ListOptions};
use crate::error::Result;
use crate::wire::{self, INVENTORY_MAX_DISKS, LSHW_MAX};

/// What to collect.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// List loop, ram, zram, optical and dm/md devices too.
    pub all: bool,
    /// Run lshw when it is installed (otherwise bty's own summary is used).
    pub lshw: bool,
}

/// Where the hardware tree came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `lshw -json` ran and its output parsed.
    Lshw,
    /// bty's own summary ([`summary`]): lshw not installed, not wanted, or it failed.
    Summary,
}

/// A machine's inventory.
#[derive(Clone, Debug)]
pub struct Inventory {
    /// Every disk listed (the wire form carries at most 64).
    pub disks: Vec<Disk>,
    /// The lshw-shaped hardware tree.
    pub hardware: Value,
    /// Where `hardware` came from.
    pub source: Source,
}

impl Inventory {
    /// The report as bty-web takes it (`POST /pxe/{mac}/inventory`): the `InventoryDisk`
    /// fields of at most [`INVENTORY_MAX_DISKS`] disks (bty-web refuses more) and the tree.
    pub fn wire(&self) -> wire::Inventory {
        wire::Inventory {
            disks: self
                .disks
                .iter()
                .take(INVENTORY_MAX_DISKS)
                .map(|d| d.inventory.clone())
                .collect(),
            lshw: Some(self.hardware.clone()),
        }
    }
}

/// Lists the disks and builds the hardware tree.
pub fn collect(opts: &Options) -> Result<Inventory> {
    let disks = disks::list(&ListOptions { all: opts.all })?;
    if disks.len() > INVENTORY_MAX_DISKS {
        crate::warn!(
            "{} disks found; the inventory carries the first {INVENTORY_MAX_DISKS}, as many as \
             bty-web accepts",
            disks.len()
        );
    }
    let (hardware, source) = hardware(opts.lshw);
    let size = serde_json::to_vec(&hardware).map_or(0, |b| b.len());
    if size > LSHW_MAX {
        crate::warn!(
            "the hardware tree is {size} bytes; bty-web keeps at most {LSHW_MAX} and will drop it"
        );
    }
    Ok(Inventory { disks, hardware, source })
}

/// The hardware tree: lshw's when `try_lshw` and lshw runs within its time bound, else bty's
/// own summary. Never fails: the summary reads what it can.
pub fn hardware(try_lshw: bool) -> (Value, Source) {
    if try_lshw {
        match lshw::run() {
            Ok(v) => return (v, Source::Lshw),
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => {
                crate::debug!("lshw is not installed; using bty's own hardware summary");
            }
            Err(e) => crate::warn!("{e}; using bty's own hardware summary instead"),
        }
    }
    (summary::tree(), Source::Summary)
}

/// What a person wants to see of a hardware tree, lshw's or bty's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overview {
    /// "product, vendor" of the system.
    pub system: Option<String>,
    /// "vendor version (date)" of the firmware.
    pub firmware: Option<String>,
    /// One line per processor node.
    pub cpus: Vec<String>,
    /// System memory in bytes.
    pub memory: Option<u64>,
    /// "name MAC (driver, link)" per network interface.
    pub network: Vec<String>,
}

/// Picks the overview out of a tree.
pub fn overview(tree: &Value) -> Overview {
    let mut o = Overview {
        system: join(&[text(tree, "product"), text(tree, "vendor")], ", ")
            .or_else(|| text(tree, "id")),
        ..Overview::default()
    };
    walk(tree, &mut o);
    o
}

fn walk(n: &Value, o: &mut Overview) {
    let class = text(n, "class").unwrap_or_default();
    let id = text(n, "id").unwrap_or_default();
    let conf = |k: &str| n.get("configuration").and_then(|c| text(c, k));
    // lshw lists empty sockets and unused slots as disabled nodes.
    let disabled = n.get("disabled").and_then(Value::as_bool).unwrap_or(false);
    if id == "firmware" && o.firmware.is_none() {
        let date = text(n, "date").map(|d| format!("({d})"));
        o.firmware = join(&[text(n, "vendor"), text(n, "version"), date], " ");
    } else if class == "processor" && !disabled {
        let threads = conf("threads").map(|t| format!("{t} threads"));
        let cores = conf("cores").map(|c| format!("{c} cores"));
        let extra = join(&[cores, threads], ", ").map(|e| format!("({e})"));
        if let Some(line) = join(&[text(n, "product"), extra], " ") {
            o.cpus.push(line);
        }
    } else if class == "memory" && (id == "memory" || id.starts_with("memory:")) {
        if o.memory.is_none() {
            o.memory = n.get("size").and_then(Value::as_u64);
        }
    } else if class == "network" {
        // lshw gives a string, or an array when a device has several names.
        let name = match n.get("logicalname") {
            Some(Value::Array(a)) => a.first().and_then(Value::as_str).map(str::to_string),
            _ => text(n, "logicalname"),
        };
        // Without a name the node is the PCI function, not the interface under it.
        if let Some(name) = name {
            let link = conf("link").map(|l| format!("link {l}"));
            let extra = join(&[conf("driver"), link], ", ").map(|e| format!("({e})"));
            if let Some(line) = join(&[Some(name), text(n, "serial"), extra], " ") {
                o.network.push(line);
            }
        }
    }
    if let Some(kids) = n.get("children").and_then(Value::as_array) {
        for k in kids {
            walk(k, o);
        }
    }
}

fn text(n: &Value, key: &str) -> Option<String> {
    n.get(key).and_then(Value::as_str).filter(|s| !s.trim().is_empty()).map(str::to_string)
}

fn join(parts: &[Option<String>], sep: &str) -> Option<String> {
    let parts: Vec<&str> = parts.iter().flatten().map(String::as_str).collect();
    (!parts.is_empty()).then(|| parts.join(sep))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn overview_of_an_lshw_tree() {
        // Trimmed from `lshw -json` on a QEMU guest.
        let tree = json!({
            "id": "vm", "class": "system", "description": "Computer",
            "product": "Standard PC (i440FX + PIIX, 1996)", "vendor": "QEMU",
            "children": [{
                "id": "core", "class": "bus",
                "children": [
                    {"id": "firmware", "class": "memory", "vendor": "SeaBIOS",
                     "version": "1.16.2", "date": "04/01/2014"},
                    {"id": "cpu:0", "class": "processor", "product": "AMD EPYC",
                     "configuration": {"cores": "2", "threads": "2"}},
                    {"id": "cpu:1", "class": "processor", "disabled": true},
                    {"id": "memory", "class": "memory", "units": "bytes", "size": 25769803776u64},
                    {"id": "pci", "class": "bridge", "children": [
                        {"id": "network", "class": "network", "product": "Virtio network device",
                         "configuration": {"driver": "virtio-pci"}, "children": [
                        {"id": "virtio2", "class": "network", "logicalname": "eth0",
                         "serial": "02:fc:00:00:00:01",
                         "configuration": {"driver": "virtio_net", "link": "yes"}}]}
                    ]}
                ]
            }]
        });
        let o = overview(&tree);
        assert_eq!(o.system.as_deref(), Some("Standard PC (i440FX + PIIX, 1996), QEMU"));
        assert_eq!(o.firmware.as_deref(), Some("SeaBIOS 1.16.2 (04/01/2014)"));
        assert_eq!(o.cpus, ["AMD EPYC (2 cores, 2 threads)"]);
        assert_eq!(o.memory, Some(24 << 30));
        assert_eq!(o.network, ["eth0 02:fc:00:00:00:01 (virtio_net, link yes)"]);
        let bare = overview(&json!({"id": "vm", "class": "system"}));
        assert_eq!(bare, Overview { system: Some("vm".into()), ..Overview::default() });
        assert_eq!(overview(&json!([1, 2])), Overview::default());
    }
}
