//! State export and import in the reference's `bty_export_version = 3` format: a directory with
//! one `inventory.json` holding every machine's disks and lshw tree as native JSON. Import also
//! reads the reference server's `state.db` itself (read-only), for moving from it. Either way
//! every machine is checked as the API checks its fields, and the import inserts them as
//! `bty-inventory` with image, boot mode and target disk cleared (the operator binds them
//! again), all in one transaction or not at all. Labels come along from a state.db (checked as
//! `PUT /machines` would); an export carries none, so they are cleared.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::error::{Context, Error, Result};
use crate::web::db::{self, Db, ImportedMachine};
use crate::web::validate;

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

/// What an import brings: the checked machines and where they came from.
#[derive(Debug)]
pub struct Import {
    pub machines: Vec<ImportedMachine>,
    /// For the messages: the bundle's `inventory.json`, or the state.db and its version.
    pub source: String,
}

/// Reads and checks what `bty-web import` was given: an export bundle (its directory or its
/// `inventory.json`), or a `state.db` of the reference server (or one of our archived ones).
/// Every machine passes the same checks whichever it came from; the first bad one refuses the
/// whole import, naming the file, the machine and the field.
pub fn parse(path: &Path) -> Result<Import> {
    if path.is_file() && is_sqlite(path)? { from_state_db(path) } else { from_bundle(path) }
}

/// Whether the file starts with SQLite's header.
fn is_sqlite(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = Vec::with_capacity(16);
    fs::File::open(path)
        .and_then(|f| f.take(16).read_to_end(&mut head))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(head == b"SQLite format 3\0")
}

/// A machine as a source holds it, before the checks.
struct Raw<'a> {
    mac: &'a str,
    known_disks: Option<Value>,
    known_disks_at: Option<&'a str>,
    lshw: Option<Value>,
    labels: &'a [String],
}

/// Checks one machine as the API would check what it came from: the MAC (`PUT
/// /machines/{mac}`), the disks (`POST /pxe/{mac}/inventory`, normalised the same way), the
/// labels (`MachineUpsert`), the inventory time; an lshw tree over the inventory's cap is left
/// out, as a posted one would be. `who` names the machine in refusals; `seen` catches a MAC
/// twice (two spellings of one address).
fn check(who: &str, raw: Raw<'_>, seen: &mut HashMap<String, String>) -> Result<ImportedMachine> {
    let no = |e: validate::Invalid| Error::msg(format!("{who}: {e}"));
    let mac = validate::normalize_mac(raw.mac).map_err(no)?;
    if let Some(first) = seen.insert(mac.clone(), who.to_string()) {
        crate::bail!("{who}: {mac} appears twice (first as {first})");
    }
    let who = format!("{who} ({mac})");
    let no = |e: validate::Invalid| Error::msg(format!("{who}: {e}"));
    let known_disks = match raw.known_disks {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            serde_json::to_value(validate::known_disks(&v).map_err(no)?)
                .with_context(|| format!("{who}: encoding known_disks"))?,
        ),
    };
    let known_disks_at =
        raw.known_disks_at.map(|t| timestamp(&who, "known_disks_at", t)).transpose()?;
    let lshw = match raw.lshw {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) if v.to_string().len() > validate::LSHW_MAX => {
            crate::warn!(
                "{who}: hw_lshw is over {} MiB, the inventory's cap: left out",
                validate::LSHW_MAX >> 20
            );
            None
        }
        Some(v @ Value::Object(_)) => Some(v),
        Some(_) => crate::bail!("{who}: hw_lshw: expected an object"),
    };
    let labels = validate::labels(raw.labels).map_err(no)?;
    Ok(ImportedMachine { mac, known_disks, known_disks_at, lshw, labels })
}

/// An ISO 8601 time as the reference writes them (`2026-05-25T10:00:00+00:00`).
fn timestamp(who: &str, field: &str, s: &str) -> Result<String> {
    let b = s.as_bytes();
    let ok = (10..=40).contains(&b.len())
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b.iter().all(|c| c.is_ascii_digit() || b"-:T.+Z ".contains(c));
    crate::ensure!(ok, "{who}: {field}: expected an ISO 8601 time, got {}", crate::wire::show(s));
    Ok(s.to_string())
}

/// An export bundle: a directory with `inventory.json`, or that file.
fn from_bundle(dir: &Path) -> Result<Import> {
    let path = if dir.is_dir() { dir.join("inventory.json") } else { dir.to_path_buf() };
    let text = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc: Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let at = path.display();
    let version = doc.get("bty_export_version").and_then(Value::as_i64);
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
        .and_then(Value::as_array)
        .with_context(|| format!("{at}: machines: expected an array"))?;
    let mut seen = HashMap::new();
    let mut machines = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let who = format!("{at}: machines[{i}]");
        let mac = match m.get("mac") {
            Some(Value::String(s)) => s.as_str(),
            _ => crate::bail!("{who}: mac: required, a string"),
        };
        let known_disks_at = match m.get("known_disks_at") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => crate::bail!("{who}: known_disks_at: expected a string or null"),
        };
        let raw = Raw {
            mac,
            known_disks: m.get("known_disks").cloned(),
            known_disks_at,
            lshw: m.get("hw_lshw").cloned(),
            // The export format carries none: the import clears them.
            labels: &[],
        };
        machines.push(check(&who, raw, &mut seen)?);
    }
    Ok(Import { machines, source: format!("export {at}") })
}

/// A `state.db`: read-only, its machines with their labels.
fn from_state_db(path: &Path) -> Result<Import> {
    let state = db::read_state(path)?;
    let at = path.display();
    let mut seen = HashMap::new();
    let mut machines = Vec::with_capacity(state.machines.len());
    for m in &state.machines {
        let who = format!("{at}: machine {}", crate::wire::show(&m.mac));
        let json = |col: &str, t: &Option<String>| -> Result<Option<Value>> {
            t.as_deref()
                .map(|t| {
                    serde_json::from_str(t)
                        .map_err(|e| Error::msg(format!("{who}: {col}: not valid JSON ({e})")))
                })
                .transpose()
        };
        let raw = Raw {
            mac: &m.mac,
            known_disks: json("known_disks", &m.known_disks)?,
            known_disks_at: m.known_disks_at.as_deref(),
            lshw: json("hw_lshw", &m.lshw)?,
            labels: &m.labels,
        };
        machines.push(check(&who, raw, &mut seen)?);
    }
    let version = state.version.as_deref().map(crate::wire::show).unwrap_or_else(|| "none".into());
    Ok(Import { machines, source: format!("state.db {at} (version {version})") })
}
