//! `bty disks` and `bty inventory`: what this machine has, as a table or as JSON.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::{DisksArgs, InventoryArgs};
use crate::disks::{self, Disk, ListOptions};
use crate::error::{Context, Result};
use crate::inventory::{self, Options, Source};
use crate::units;

/// `bty disks`: the table, or the JSON array.
pub fn disks(args: DisksArgs) -> Result<ExitCode> {
    let disks = disks::list(&ListOptions { all: args.all })?;
    if args.json {
        let text = serde_json::to_string_pretty(&disks).context("encoding the disks as JSON")?;
        print_out(&format!("{text}\n"))?;
    } else {
        print_out(&table(&disks, args.all))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `bty inventory`: a short summary and the table, or the JSON body bty-web takes.
pub fn inventory(args: InventoryArgs) -> Result<ExitCode> {
    let inv = inventory::collect(&Options { all: args.all, lshw: args.lshw })?;
    if args.json {
        let text =
            serde_json::to_string_pretty(&inv.wire()).context("encoding the inventory as JSON")?;
        print_out(&format!("{text}\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let o = inventory::overview(&inv.hardware);
    let mut rows: Vec<(&str, String)> = Vec::new();
    rows.extend(o.system.map(|s| ("system", s)));
    rows.extend(o.firmware.map(|s| ("firmware", s)));
    rows.extend(o.cpus.into_iter().map(|s| ("cpu", s)));
    rows.extend(o.memory.map(|m| ("memory", units::bytes(m))));
    rows.extend(o.network.into_iter().map(|s| ("network", s)));
    let source = match inv.source {
        Source::Lshw => "lshw".to_string(),
        Source::Summary => {
            "bty's own summary (lshw not installed, not wanted, or it failed)".into()
        }
    };
    rows.push(("hardware", source));
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<10}{v}\n"));
    }
    out.push('\n');
    out.push_str(&table(&inv.disks, args.all));
    print_out(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// The disks as an aligned table; a note instead when there are none.
fn table(disks: &[Disk], all: bool) -> String {
    if disks.is_empty() {
        return if all {
            "no disks found\n".into()
        } else {
            "no disks found (loop, ram, zram, optical and dm/md devices are listed with --all)\n"
                .into()
        };
    }
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let mut rows = vec![["PATH", "SIZE", "MODEL", "TRAN", "SERIAL", "WRITE"].map(String::from)];
    for d in disks {
        let i = &d.inventory;
        let verdict = match &d.refusal {
            None => "yes".to_string(),
            Some(r) => format!("no: {r}"),
        };
        rows.push([
            i.path.clone(),
            dash(&i.size),
            dash(&i.model),
            dash(&i.tran),
            dash(&i.serial),
            verdict,
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (col, (w, cell)) in widths.iter().zip(r).enumerate() {
            if col == r.len() - 1 {
                line.push_str(cell);
            } else {
                // Sizes read best right-aligned, like lsblk's.
                let pad = w - cell.chars().count();
                if col == 1 {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Writes to stdout; a closed pipe (`bty disks | head -1`) is not an error.
fn print_out(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disks::Refusal;
    use crate::wire::InventoryDisk;

    fn disk(path: &str, size: &str, model: Option<&str>, refusal: Option<Refusal>) -> Disk {
        Disk {
            inventory: InventoryDisk {
                path: path.into(),
                size: Some(size.into()),
                vendor: None,
                model: model.map(str::to_string),
                serial: Some("S123".into()),
                tran: Some("nvme".into()),
                removable: false,
                readonly: false,
            },
            name: path.trim_start_matches("/dev/").into(),
            size_bytes: 0,
            rotational: false,
            logical_block_size: 512,
            physical_block_size: 512,
            mountpoints: vec![],
            holders: vec![],
            root: false,
            boot_medium: false,
            writable: refusal.is_none(),
            refusal,
        }
    }

    #[test]
    fn table_aligns_columns_and_gives_the_verdict() {
        let t = table(
            &[
                disk("/dev/nvme0n1", "1.8T", Some("Samsung SSD 980 PRO 2TB"), Some(Refusal::Root)),
                disk("/dev/sdb", "512M", None, None),
            ],
            false,
        );
        assert_eq!(
            t,
            "\
PATH          SIZE  MODEL                    TRAN  SERIAL  WRITE
/dev/nvme0n1  1.8T  Samsung SSD 980 PRO 2TB  nvme  S123    no: it holds the running system's root file system
/dev/sdb      512M  -                        nvme  S123    yes
"
        );
        assert!(table(&[], false).contains("--all"));
    }
}
