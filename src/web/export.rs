//! State export and import in the reference's `bty_export_version = 3` format: a directory with
//! one `inventory.json` holding every machine's disks and lshw tree as native JSON. Import
//! inserts the machines as `bty-inventory` with their image, target disk and labels cleared
//! (the operator binds them again), all in one transaction or not at all.

use std::fs;
use std::path::Path;

use crate::error::{Context, Result};
use crate::web::db::{Db, ImportedMachine};

/// The export format this build writes and reads.
pub const EXPORT_VERSION: i64 = 3;

/// `inventory.json` of the current state.
pub fn inventory_json(db: &Db) -> Result<String> {
    let mut machines = Vec::new();
    for m in db.machines()? {
        let lshw: Option<serde_json::Value> =
            db.lshw(&m.mac)?.flatten().and_then(|t| serde_json::from_str(&t).ok());
        machines.push(serde_json::json!({
            "mac": m.mac,
            "known_disks": m.known_disks,
            "known_disks_at": m.known_disks_at,
            "hw_lshw": lshw,
            // One inventory post brings both, so they share the time.
            "hw_lshw_at": if lshw.is_some() { m.known_disks_at.clone() } else { None },
        }));
    }
    let doc = serde_json::json!({
        "bty_export_version": EXPORT_VERSION,
        "exported_at": crate::units::now_iso8601(),
        "exported_by_bty_version": crate::VERSION,
        "machines": machines,
    });
    serde_json::to_string_pretty(&doc).context("encoding the export")
}

/// `bty-web export DIR`: writes `DIR/inventory.json`; the number of machines.
pub fn export(db: &Db, dir: &Path) -> Result<usize> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = inventory_json(db)?;
    let n = db.machines()?.len();
    let path = dir.join("inventory.json");
    let tmp = dir.join(".inventory.json.tmp");
    fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(n)
}

/// Reads and checks an export; every problem names the file and the machine.
pub fn parse(dir: &Path) -> Result<Vec<ImportedMachine>> {
    let path = if dir.is_dir() { dir.join("inventory.json") } else { dir.to_path_buf() };
    let text = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let at = path.display();
    let version = doc.get("bty_export_version").and_then(serde_json::Value::as_i64);
    match version {
        Some(EXPORT_VERSION) => {}
        Some(v @ (1 | 2)) => crate::bail!(
            "{at}: export version {v} is not supported (it came from bty-lab before 0.33.2 and \
             may carry image bytes); export again with a newer bty-web"
        ),
        Some(v) => crate::bail!("{at}: export version {v} is not supported (this bty reads 3)"),
        None => crate::bail!("{at}: no bty_export_version: not a bty export"),
    }
    let list = doc
        .get("machines")
        .and_then(serde_json::Value::as_array)
        .with_context(|| format!("{at}: machines: expected an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let raw = m.get("mac").and_then(serde_json::Value::as_str).unwrap_or_default();
        let mac = crate::web::validate::normalize_mac(raw)
            .map_err(|e| crate::error::Error::msg(format!("{at}: machines[{i}]: {e}")))?;
        let disks = match m.get("known_disks") {
            None | Some(serde_json::Value::Null) => None,
            Some(v @ serde_json::Value::Array(_)) => Some(v.clone()),
            Some(_) => crate::bail!("{at}: machines[{i}] ({mac}): known_disks: expected an array"),
        };
        let lshw = match m.get("hw_lshw") {
            None | Some(serde_json::Value::Null) => None,
            Some(v @ serde_json::Value::Object(_)) => Some(v.clone()),
            Some(_) => crate::bail!("{at}: machines[{i}] ({mac}): hw_lshw: expected an object"),
        };
        let disks_at =
            m.get("known_disks_at").and_then(serde_json::Value::as_str).map(String::from);
        out.push(ImportedMachine { mac, known_disks: disks, known_disks_at: disks_at, lshw });
    }
    Ok(out)
}
