//! Validation of what clients send bty-web: MAC addresses, machine labels, boot artifact names
//! and the JSON bodies of `PUT /machines/{mac}` and the `POST /pxe/{mac}/...` reports.
//!
//! Pure functions: bytes or strings in, a normalised value or an [`Invalid`] naming the offending
//! field out (`labels[2]: must start with a letter or digit`). Bodies are parsed to
//! `serde_json::Value` and checked by hand, so every message names its field. Nothing here panics
//! on any input; serde_json's recursion limit (128 levels) bounds nesting.
//!
//! The checks are the spec's (reference.txt wire types, api-details.md). Whether a
//! `bty_image_ref` names a catalog entry, or a MAC has a record, is for the caller to look up.

use crate::wire::{self, show};
pub use crate::wire::{
    BOOT_MODES, BOOT_NAME_MAX_CHARS, DEFAULT_BOOT_MODE, DISK_FIELD_MAX_CHARS, FLASH_MODES,
    INVENTORY_MAX_DISKS, LABEL_MAX_CHARS, LABELS_MAX, LSHW_MAX, PHASE_MAX_CHARS, REASON_MAX_CHARS,
    SERIAL_MAX_CHARS,
};
use std::collections::BTreeSet;
use std::fmt;
use std::io;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::web::db::MachineUpsert;

/// Why input was rejected. The caller answers 400 for [`Invalid::BadName`] and 422 for the rest
/// ([`Invalid::status`]); `Display` gives the message for `{"detail": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The body is not JSON; holds serde_json's message, with line and column.
    Json(String),
    /// A field broke a rule. `field` is a path such as `labels[2]` or `disks[0].path`, or `body`
    /// for the body as a whole.
    Field { field: String, message: String },
    /// A boot artifact file name is not a plain file name.
    BadName { name: String, message: String },
}

impl Invalid {
    /// A rejected field.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid::Field { field: field.into(), message: message.into() }
    }

    /// The HTTP status to answer with: 400 for a bad file name, 422 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            Invalid::BadName { .. } => 400,
            Invalid::Json(_) | Invalid::Field { .. } => 422,
        }
    }

    /// The offending field's path, if the rejection is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            Invalid::Field { field, .. } => Some(field),
            Invalid::Json(_) | Invalid::BadName { .. } => None,
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Json(e) => write!(f, "body is not valid JSON: {e}"),
            Invalid::Field { field, message } => write!(f, "{field}: {message}"),
            Invalid::BadName { name, message } => {
                write!(f, "invalid file name {}: {message}", show(name))
            }
        }
    }
}

impl std::error::Error for Invalid {}

const UPSERT_KEYS: [&str; 5] =
    ["bty_image_ref", "labels", "boot_mode", "sanboot_drive", "target_disk_serial"];
const INVENTORY_KEYS: [&str; 2] = ["disks", "lshw"];
const DISK_STRING_KEYS: [&str; 5] = ["size", "vendor", "model", "serial", "tran"];
const DISK_BOOL_KEYS: [&str; 2] = ["removable", "readonly"];
const STATUS_KEYS: [&str; 2] = ["status", "reason"];
const PROGRESS_KEYS: [&str; 4] = ["phase", "written_bytes", "total_bytes", "rate_bytes_per_s"];

/// Normalises a MAC address to `aa:bb:cc:dd:ee:ff` ([`wire::normalize_mac`]); the refusal
/// names the `mac` field.
pub fn normalize_mac(s: &str) -> Result<String, Invalid> {
    wire::normalize_mac(s).map_err(|m| Invalid::new("mac", m))
}

/// Checks machine labels: each `^[A-Za-z0-9][A-Za-z0-9 ._-]*$` and 1 to 64 characters, at most
/// 16 once exact duplicates collapse. Returns them deduplicated and sorted (byte order, as the
/// database reads them back).
pub fn labels(v: &[String]) -> Result<Vec<String>, Invalid> {
    let mut set = BTreeSet::new();
    for (i, l) in v.iter().enumerate() {
        check_label(l).map_err(|m| Invalid::new(format!("labels[{i}]"), m))?;
        set.insert(l.as_str());
    }
    if set.len() > LABELS_MAX {
        return Err(Invalid::new(
            "labels",
            format!("at most {LABELS_MAX} labels per machine (got {} distinct)", set.len()),
        ));
    }
    Ok(set.into_iter().map(str::to_string).collect())
}

fn check_label(l: &str) -> Result<(), String> {
    let n = l.chars().count();
    if n == 0 {
        return Err("must not be empty".into());
    }
    if n > LABEL_MAX_CHARS {
        return Err(format!("at most {LABEL_MAX_CHARS} characters (got {n})"));
    }
    if !l.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err("must start with a letter or digit".into());
    }
    if let Some(c) =
        l.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-')))
    {
        return Err(format!(
            "character {c:?} is not allowed (letters, digits, space, '.', '_' and '-' only)"
        ));
    }
    Ok(())
}

/// Checks a boot mode against [`BOOT_MODES`].
pub fn boot_mode(s: &str) -> Result<String, Invalid> {
    if BOOT_MODES.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(Invalid::new(
            "boot_mode",
            format!("must be one of {} (got {})", BOOT_MODES.join(", "), show(s)),
        ))
    }
}

/// Checks a `bty_image_ref`: 64 hex digits, returned lower-case.
pub fn bty_image_ref(s: &str) -> Result<String, Invalid> {
    if s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(Invalid::new(
            "bty_image_ref",
            format!("must be 64 hex digits (a catalog entry's ref), got {}", show(s)),
        ))
    }
}

/// Checks a `sanboot_drive`: `0x` and two hex digits (`0x80`), returned lower-case.
pub fn sanboot_drive(s: &str) -> Result<String, Invalid> {
    let b = s.as_bytes();
    let ok = b.len() == 4
        && b[0] == b'0'
        && (b[1] == b'x' || b[1] == b'X')
        && b[2].is_ascii_hexdigit()
        && b[3].is_ascii_hexdigit();
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(Invalid::new(
            "sanboot_drive",
            format!("must be 0x and two hex digits, e.g. \"0x80\" (got {})", show(s)),
        ))
    }
}

/// Checks a `target_disk_serial`: 1 to 128 printable ASCII characters (space included).
pub fn target_disk_serial(s: &str) -> Result<String, Invalid> {
    let field = "target_disk_serial";
    if s.is_empty() {
        return Err(Invalid::new(field, "must not be empty (use null for none)"));
    }
    let n = s.chars().count();
    if n > SERIAL_MAX_CHARS {
        return Err(Invalid::new(
            field,
            format!("at most {SERIAL_MAX_CHARS} characters (got {n})"),
        ));
    }
    if let Some(c) = s.chars().find(|c| !matches!(c, ' '..='~')) {
        return Err(Invalid::new(
            field,
            format!("must be printable ASCII (found {c:?} in {})", show(s)),
        ));
    }
    Ok(s.to_string())
}

/// Checks and normalises every field of a `MachineUpsert` however it was built (JSON body or UI
/// form): labels deduplicated and sorted, refs and drives lower-cased, and the flash modes given
/// both an image and a target disk.
pub fn normalize_upsert(m: MachineUpsert) -> Result<MachineUpsert, Invalid> {
    let labels = labels(&m.labels)?;
    let boot_mode = boot_mode(&m.boot_mode)?;
    let bty_image_ref = m.bty_image_ref.as_deref().map(bty_image_ref).transpose()?;
    let sanboot_drive = m.sanboot_drive.as_deref().map(sanboot_drive).transpose()?;
    let target_disk_serial = m.target_disk_serial.as_deref().map(target_disk_serial).transpose()?;
    if FLASH_MODES.contains(&boot_mode.as_str()) {
        let mut missing = Vec::new();
        if target_disk_serial.is_none() {
            missing.push("target_disk_serial");
        }
        if bty_image_ref.is_none() {
            missing.push("bty_image_ref");
        }
        if let Some(first) = missing.first() {
            let also = match missing.get(1) {
                Some(second) => format!(" ({second} is missing too)"),
                None => String::new(),
            };
            return Err(Invalid::new(
                *first,
                format!("required when boot_mode is {boot_mode}{also}"),
            ));
        }
    }
    Ok(MachineUpsert { bty_image_ref, labels, boot_mode, sanboot_drive, target_disk_serial })
}

/// Parses a `PUT /machines/{mac}` body strictly.
///
/// Unknown keys are refused and types are checked. Omitted keys take their defaults: `labels`
/// `[]`, `boot_mode` `"ipxe-exit"`, the rest null. An explicit null is accepted for the nullable
/// fields only (`labels: null` and `boot_mode: null` are refused, as the wire type has no null
/// there). Then [`normalize_upsert`] applies the value rules.
pub fn machine_upsert(body: &[u8]) -> Result<MachineUpsert, Invalid> {
    let obj = parse_object(body)?;
    refuse_unknown(&obj, &UPSERT_KEYS)?;
    let labels = match obj.get("labels") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            let mut v = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => v.push(s.clone()),
                    other => return Err(type_err(&format!("labels[{i}]"), "a string", other)),
                }
            }
            v
        }
        Some(other) => return Err(type_err("labels", "an array of strings", other)),
    };
    let boot_mode = match obj.get("boot_mode") {
        None => DEFAULT_BOOT_MODE.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(type_err("boot_mode", "a string", other)),
    };
    normalize_upsert(MachineUpsert {
        bty_image_ref: opt_str(&obj, "bty_image_ref")?.map(str::to_string),
        labels,
        boot_mode,
        sanboot_drive: opt_str(&obj, "sanboot_drive")?.map(str::to_string),
        target_disk_serial: opt_str(&obj, "target_disk_serial")?.map(str::to_string),
    })
}

/// A checked `POST /pxe/{mac}/inventory` body.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    /// The disks, an array of objects with exactly the `InventoryDisk` fields.
    pub disks: Value,
    /// The `lshw -json` tree, if one was sent and it is within [`LSHW_MAX`].
    pub lshw: Option<Value>,
    /// An `lshw` tree was sent but was over [`LSHW_MAX`] and dropped: keep the previous one.
    pub lshw_dropped: bool,
}

/// Parses a `POST /pxe/{mac}/inventory` body: `{"disks": [InventoryDisk, ...], "lshw": any}`.
///
/// Unknown top-level keys are refused; `disks` is required, at most 64. In each disk `path` is a
/// string starting with `/dev/`; `size`, `vendor`, `model`, `serial` and `tran` are a string or
/// null; `removable` and `readonly` a bool (missing or null: false); strings at most 256
/// characters. Unknown keys *inside* a disk are ignored and left out of the result, because the
/// live environment passes lsblk columns through and lsblk versions differ in what they emit.
/// `lshw` may be any JSON (null counts as absent); over [`LSHW_MAX`] bytes re-serialised it is
/// dropped and `lshw_dropped` set, rather than refusing the disks with it.
pub fn inventory(body: &[u8]) -> Result<Inventory, Invalid> {
    let mut obj = parse_object(body)?;
    refuse_unknown(&obj, &INVENTORY_KEYS)?;
    let disks = match obj.get("disks") {
        None => return Err(Invalid::new("disks", "required")),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(type_err("disks", "an array of disks", other)),
    };
    if disks.len() > INVENTORY_MAX_DISKS {
        return Err(Invalid::new(
            "disks",
            format!("at most {INVENTORY_MAX_DISKS} disks (got {})", disks.len()),
        ));
    }
    let disks = disks
        .iter()
        .enumerate()
        .map(|(i, d)| inventory_disk(i, d))
        .collect::<Result<Vec<Value>, Invalid>>()?;
    let (lshw, lshw_dropped) = match obj.remove("lshw") {
        None | Some(Value::Null) => (None, false),
        Some(v) if json_len_exceeds(&v, LSHW_MAX) => (None, true),
        Some(v) => (Some(v), false),
    };
    Ok(Inventory { disks: Value::Array(disks), lshw, lshw_dropped })
}

fn inventory_disk(i: usize, d: &Value) -> Result<Value, Invalid> {
    let Value::Object(o) = d else {
        return Err(type_err(&format!("disks[{i}]"), "an object", d));
    };
    let field = |k: &str| format!("disks[{i}].{k}");
    let path = match o.get("path") {
        Some(Value::String(s)) => s,
        None => return Err(Invalid::new(field("path"), "required")),
        Some(other) => return Err(type_err(&field("path"), "a string", other)),
    };
    check_len(&field("path"), path, DISK_FIELD_MAX_CHARS)?;
    if path.len() <= "/dev/".len() || !path.starts_with("/dev/") {
        return Err(Invalid::new(
            field("path"),
            format!("must be a device path under /dev/ (got {})", show(path)),
        ));
    }
    if path.chars().any(char::is_control) {
        return Err(Invalid::new(field("path"), "must not contain control characters"));
    }
    let mut out = Map::new();
    out.insert("path".into(), Value::String(path.clone()));
    for k in DISK_STRING_KEYS {
        let v = match o.get(k) {
            None | Some(Value::Null) => Value::Null,
            Some(Value::String(s)) => {
                check_len(&field(k), s, DISK_FIELD_MAX_CHARS)?;
                Value::String(s.clone())
            }
            Some(other) => return Err(type_err(&field(k), "a string or null", other)),
        };
        out.insert(k.into(), v);
    }
    for k in DISK_BOOL_KEYS {
        let v = match o.get(k) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(type_err(&field(k), "true or false", other)),
        };
        out.insert(k.into(), Value::Bool(v));
    }
    Ok(Value::Object(out))
}

/// What the live environment reports at the end of a flash (`POST /pxe/{mac}/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PxeStatus {
    Done,
    /// `reason` is empty when none was given.
    Failed {
        reason: String,
    },
}

/// Parses a `POST /pxe/{mac}/status` body: `{"status": "done"|"failed", "reason": str}`.
///
/// Unknown keys are refused; `reason` is optional (null counts as absent), at most 500
/// characters, and ignored with `done`.
pub fn pxe_status(body: &[u8]) -> Result<PxeStatus, Invalid> {
    let obj = parse_object(body)?;
    refuse_unknown(&obj, &STATUS_KEYS)?;
    let reason = opt_str(&obj, "reason")?;
    if let Some(r) = reason {
        check_len("reason", r, REASON_MAX_CHARS)?;
    }
    match obj.get("status") {
        Some(Value::String(s)) if s == "done" => Ok(PxeStatus::Done),
        Some(Value::String(s)) if s == "failed" => {
            Ok(PxeStatus::Failed { reason: reason.unwrap_or_default().to_string() })
        }
        Some(Value::String(s)) => {
            Err(Invalid::new("status", format!("must be \"done\" or \"failed\" (got {})", show(s))))
        }
        None => Err(Invalid::new("status", "required")),
        Some(other) => Err(type_err("status", "\"done\" or \"failed\"", other)),
    }
}

/// A flash progress report from the live environment (`POST /pxe/{mac}/progress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PxeProgress {
    /// What the flasher is doing (`download`, `write`, `verify`, ...): 1 to 32 printable ASCII.
    pub phase: String,
    pub written_bytes: u64,
    pub total_bytes: Option<u64>,
    pub rate_bytes_per_s: Option<u64>,
}

/// Parses a `POST /pxe/{mac}/progress` body: `{"phase": str, "written_bytes": u64,
/// "total_bytes": u64|null, "rate_bytes_per_s": u64|null}`.
///
/// Unknown keys are refused; `phase` and `written_bytes` are required, the others default to
/// null. `written_bytes` above `total_bytes` is not refused (totals can be estimates).
pub fn pxe_progress(body: &[u8]) -> Result<PxeProgress, Invalid> {
    let obj = parse_object(body)?;
    refuse_unknown(&obj, &PROGRESS_KEYS)?;
    let phase = match obj.get("phase") {
        Some(Value::String(s)) => s,
        None => return Err(Invalid::new("phase", "required")),
        Some(other) => return Err(type_err("phase", "a string", other)),
    };
    if phase.is_empty() {
        return Err(Invalid::new("phase", "must not be empty"));
    }
    check_len("phase", phase, PHASE_MAX_CHARS)?;
    if let Some(c) = phase.chars().find(|c| !matches!(c, ' '..='~')) {
        return Err(Invalid::new("phase", format!("must be printable ASCII (found {c:?})")));
    }
    let written_bytes = match opt_u64(&obj, "written_bytes")? {
        Some(n) => n,
        None => return Err(Invalid::new("written_bytes", "required")),
    };
    Ok(PxeProgress {
        phase: phase.clone(),
        written_bytes,
        total_bytes: opt_u64(&obj, "total_bytes")?,
        rate_bytes_per_s: opt_u64(&obj, "rate_bytes_per_s")?,
    })
}

/// Checks a boot artifact name (`PUT /boot/{name}`, `GET /boot/{name}`): 1 to 128 of
/// `[A-Za-z0-9._-]`, no leading dot, no `..`. Refusals are [`Invalid::BadName`] (HTTP 400).
pub fn boot_file_name(s: &str) -> Result<&str, Invalid> {
    let bad = |message: String| Invalid::BadName { name: s.to_string(), message };
    let n = s.chars().count();
    if n == 0 {
        return Err(bad("must not be empty".into()));
    }
    if n > BOOT_NAME_MAX_CHARS {
        return Err(bad(format!("at most {BOOT_NAME_MAX_CHARS} characters (got {n})")));
    }
    if s.starts_with('.') {
        return Err(bad("must not start with a dot".into()));
    }
    if s.contains("..") {
        return Err(bad("must not contain \"..\"".into()));
    }
    if let Some(c) =
        s.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(bad(format!(
            "character {c:?} is not allowed (letters, digits, '.', '_' and '-' only)"
        )));
    }
    Ok(s)
}

// ---- helpers ----

/// Parses a body that must be a JSON object.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Invalid> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(type_err("body", "a JSON object", &other)),
        Err(e) => Err(Invalid::Json(e.to_string())),
    }
}

/// Refuses the first key not in `allowed`.
fn refuse_unknown(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), Invalid> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(Invalid::new(
            clip(k).escape_debug().to_string(),
            format!("unknown field (expected one of: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// A string-or-null field; absent counts as null.
fn opt_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, Invalid> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(type_err(key, "a string or null", other)),
    }
}

/// A non-negative-integer-or-null field; absent counts as null.
fn opt_u64(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, Invalid> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) => Ok(Some(v)),
            None => Err(Invalid::new(
                key,
                format!("must be a whole number from 0 to {} (got {n})", u64::MAX),
            )),
        },
        Some(other) => Err(type_err(key, "a non-negative integer", other)),
    }
}

fn check_len(field: &str, s: &str, max: usize) -> Result<(), Invalid> {
    let n = s.chars().count();
    if n > max {
        return Err(Invalid::new(field, format!("at most {max} characters (got {n})")));
    }
    Ok(())
}

fn type_err(field: &str, expected: &str, got: &Value) -> Invalid {
    Invalid::new(field, format!("must be {expected}, not {}", kind(got)))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most 40 characters of `s`, for quoting input back in a message.
fn clip(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Whether `v` serialises to more than `limit` bytes; stops serialising once past it.
fn json_len_exceeds(v: &Value, limit: usize) -> bool {
    struct Counter {
        n: usize,
        limit: usize,
    }
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.n = self.n.saturating_add(buf.len());
            if self.n > self.limit {
                Err(io::Error::other("over the limit"))
            } else {
                Ok(buf.len())
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Counter { n: 0, limit }, v).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const REF: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn msg<T: fmt::Debug>(r: Result<T, Invalid>) -> String {
        r.expect_err("expected a rejection").to_string()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    // ---- MAC ----

    #[test]
    fn mac_variants_normalise() {
        for s in [
            "aa:bb:cc:dd:ee:ff",
            "AA:BB:CC:DD:EE:FF",
            "Aa:bB:cc:DD:ee:fF",
            "aa-bb-cc-dd-ee-ff",
            "AA-BB-CC-DD-EE-FF",
            "aabbccddeeff",
            "AABBCCDDEEFF",
        ] {
            assert_eq!(normalize_mac(s).unwrap(), "aa:bb:cc:dd:ee:ff", "{s}");
        }
        assert_eq!(normalize_mac("00:11:22:33:44:55").unwrap(), "00:11:22:33:44:55");
    }

    #[test]
    fn mac_rejects_bad_input() {
        for s in [
            "",
            "../",
            "../../etc/passwd",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aabbccddeef",
            "aabbccddeeff0",
            "gg:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:fg",
            "aa:bb-cc:dd:ee:ff",
            "aa.bb.cc.dd.ee.ff",
            "aabb.ccdd.eeff",
            "a:b:c:d:e:f",
            " aa:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:ff ",
            "aa:bb:cc:dd:eé:f",
            "ééééééaaaaa",
            "aa::bb:cc:dd:eeff",
            "zzzzzzzzzzzz",
        ] {
            let e = normalize_mac(s).expect_err(s);
            assert_eq!(e.field(), Some("mac"));
            assert_eq!(e.status(), 422);
            assert!(e.to_string().contains("is not a MAC address"), "{e}");
        }
    }

    #[test]
    fn mac_message_clips_long_input() {
        let long = "x".repeat(10_000);
        let m = msg(normalize_mac(&long));
        assert!(m.len() < 200, "{m}");
    }

    // ---- labels ----

    #[test]
    fn labels_collapse_duplicates_and_sort() {
        let got =
            labels(&strings(&["rack-3", "noisy", "rack-3", "A label", "b.c_d", "9"])).unwrap();
        assert_eq!(got, strings(&["9", "A label", "b.c_d", "noisy", "rack-3"]));
        assert_eq!(labels(&[]).unwrap(), Vec::<String>::new());
        // Exact duplicates only: case and trailing space make distinct labels.
        assert_eq!(labels(&strings(&["a", "A", "a "])).unwrap(), strings(&["A", "a", "a "]));
    }

    #[test]
    fn labels_length_limits() {
        let ok = "a".repeat(64);
        assert_eq!(labels(std::slice::from_ref(&ok)).unwrap(), vec![ok]);
        let m = msg(labels(&["ok".to_string(), "a".repeat(65)]));
        assert_eq!(m, "labels[1]: at most 64 characters (got 65)");
        assert_eq!(msg(labels(&strings(&[""]))), "labels[0]: must not be empty");
    }

    #[test]
    fn labels_count_limit_after_dedup() {
        let sixteen: Vec<String> = (0..16).map(|i| format!("l{i}")).collect();
        assert_eq!(labels(&sixteen).unwrap().len(), 16);
        let mut with_dupes = sixteen.clone();
        with_dupes.extend(sixteen.iter().cloned());
        assert_eq!(labels(&with_dupes).unwrap().len(), 16);
        let seventeen: Vec<String> = (0..17).map(|i| format!("l{i}")).collect();
        let e = labels(&seventeen).unwrap_err();
        assert_eq!(e.field(), Some("labels"));
        assert!(e.to_string().contains("at most 16"), "{e}");
    }

    #[test]
    fn labels_reject_bad_characters() {
        assert_eq!(
            msg(labels(&strings(&["ok", "fine", " leading"]))),
            "labels[2]: must start with a letter or digit"
        );
        assert_eq!(
            msg(labels(&strings(&["<script>"]))),
            "labels[0]: must start with a letter or digit"
        );
        assert_eq!(msg(labels(&strings(&["-x"]))), "labels[0]: must start with a letter or digit");
        assert_eq!(msg(labels(&strings(&[".x"]))), "labels[0]: must start with a letter or digit");
        let m = msg(labels(&strings(&["a<script>"])));
        assert!(m.starts_with("labels[0]: character '<' is not allowed"), "{m}");
        let m = msg(labels(&strings(&["café"])));
        assert!(m.starts_with("labels[0]: character 'é' is not allowed"), "{m}");
        assert_eq!(
            msg(labels(&strings(&["ünicode"]))),
            "labels[0]: must start with a letter or digit"
        );
        let m = msg(labels(&strings(&["tab\there"])));
        assert!(m.contains("'\\t'"), "{m}");
        let m = msg(labels(&strings(&["a/b"])));
        assert!(m.contains("'/'"), "{m}");
    }

    // ---- machine upsert ----

    #[test]
    fn upsert_defaults() {
        let m = machine_upsert(b"{}").unwrap();
        assert_eq!(m.boot_mode, "ipxe-exit");
        assert!(m.labels.is_empty());
        assert_eq!(m.bty_image_ref, None);
        assert_eq!(m.sanboot_drive, None);
        assert_eq!(m.target_disk_serial, None);
        let m = machine_upsert(
            br#"{"bty_image_ref":null,"sanboot_drive":null,"target_disk_serial":null}"#,
        )
        .unwrap();
        assert_eq!(m.boot_mode, "ipxe-exit");
    }

    #[test]
    fn upsert_full_and_normalised() {
        let body = json!({
            "bty_image_ref": REF.to_uppercase(),
            "labels": ["rack-3", "noisy", "rack-3"],
            "boot_mode": "bty-flash-once",
            "sanboot_drive": "0X8A",
            "target_disk_serial": "S4EWNX0R123456 B",
        });
        let m = machine_upsert(body.to_string().as_bytes()).unwrap();
        assert_eq!(m.bty_image_ref.as_deref(), Some(REF));
        assert_eq!(m.labels, strings(&["noisy", "rack-3"]));
        assert_eq!(m.boot_mode, "bty-flash-once");
        assert_eq!(m.sanboot_drive.as_deref(), Some("0x8a"));
        assert_eq!(m.target_disk_serial.as_deref(), Some("S4EWNX0R123456 B"));
        for mode in BOOT_MODES {
            let body = json!({"boot_mode": mode, "bty_image_ref": REF, "target_disk_serial": "X"});
            assert_eq!(machine_upsert(body.to_string().as_bytes()).unwrap().boot_mode, mode);
        }
        for mode in ["ipxe-exit", "bty-tui", "bty-inventory"] {
            let body = json!({ "boot_mode": mode });
            assert!(machine_upsert(body.to_string().as_bytes()).is_ok(), "{mode}");
        }
    }

    #[test]
    fn upsert_refuses_unknown_keys() {
        let e =
            machine_upsert(br#"{"boot_mode":"ipxe-exit","mac":"aa:bb:cc:dd:ee:ff"}"#).unwrap_err();
        assert_eq!(e.field(), Some("mac"));
        assert!(e.to_string().starts_with("mac: unknown field"), "{e}");
        assert!(msg(machine_upsert(br#"{"Labels":[]}"#)).starts_with("Labels: unknown field"));
    }

    #[test]
    fn upsert_checks_types() {
        let cases: [(&[u8], &str); 10] = [
            (br#"{"labels":"rack-3"}"#, "labels: must be an array of strings, not a string"),
            (br#"{"labels":null}"#, "labels: must be an array of strings, not null"),
            (br#"{"labels":["a",3]}"#, "labels[1]: must be a string, not a number"),
            (br#"{"boot_mode":1}"#, "boot_mode: must be a string, not a number"),
            (br#"{"boot_mode":null}"#, "boot_mode: must be a string, not null"),
            (br#"{"bty_image_ref":5}"#, "bty_image_ref: must be a string or null, not a number"),
            (br#"{"sanboot_drive":128}"#, "sanboot_drive: must be a string or null, not a number"),
            (
                br#"{"target_disk_serial":[]}"#,
                "target_disk_serial: must be a string or null, not an array",
            ),
            (b"[]", "body: must be a JSON object, not an array"),
            (b"null", "body: must be a JSON object, not null"),
        ];
        for (body, want) in cases {
            assert_eq!(msg(machine_upsert(body)), want);
        }
    }

    #[test]
    fn upsert_checks_values() {
        let m = msg(machine_upsert(br#"{"boot_mode":"flash"}"#));
        assert!(m.starts_with("boot_mode: must be one of ipxe-exit, bty-flash-always"), "{m}");
        for r in ["abc", &REF[1..], &format!("{REF}0"), &format!("g{}", &REF[1..])] {
            let body = json!({ "bty_image_ref": r });
            let m = msg(machine_upsert(body.to_string().as_bytes()));
            assert!(m.starts_with("bty_image_ref: must be 64 hex digits"), "{m}");
        }
        for d in ["80", "0x8", "0x800", "0xgg", "", "0x80 ", "1x80", "x080"] {
            let body = json!({ "sanboot_drive": d });
            let m = msg(machine_upsert(body.to_string().as_bytes()));
            assert!(m.starts_with("sanboot_drive: must be 0x and two hex digits"), "{d}: {m}");
        }
        for d in ["0x80", "0x81", "0xff"] {
            let body = json!({ "sanboot_drive": d });
            assert_eq!(
                machine_upsert(body.to_string().as_bytes()).unwrap().sanboot_drive.as_deref(),
                Some(d)
            );
        }
        let m = msg(machine_upsert(br#"{"target_disk_serial":""}"#));
        assert!(m.starts_with("target_disk_serial: must not be empty"), "{m}");
        let body = json!({ "target_disk_serial": "S".repeat(129) });
        assert_eq!(
            msg(machine_upsert(body.to_string().as_bytes())),
            "target_disk_serial: at most 128 characters (got 129)"
        );
        let body = json!({ "target_disk_serial": "S".repeat(128) });
        assert!(machine_upsert(body.to_string().as_bytes()).is_ok());
        for s in ["a\nb", "a\u{7f}", "sérial", "a\u{0}"] {
            let body = json!({ "target_disk_serial": s });
            let m = msg(machine_upsert(body.to_string().as_bytes()));
            assert!(m.starts_with("target_disk_serial: must be printable ASCII"), "{m}");
        }
        let m = msg(machine_upsert(br#"{"labels":["ok"," bad"]}"#));
        assert_eq!(m, "labels[1]: must start with a letter or digit");
    }

    #[test]
    fn upsert_flash_modes_need_serial_and_image() {
        let e =
            machine_upsert(br#"{"boot_mode":"bty-flash-once","bty_image_ref":null}"#).unwrap_err();
        assert_eq!(e.field(), Some("target_disk_serial"));
        assert_eq!(
            e.to_string(),
            "target_disk_serial: required when boot_mode is bty-flash-once \
             (bty_image_ref is missing too)"
        );
        let body = json!({"boot_mode": "bty-flash-always", "bty_image_ref": REF});
        assert_eq!(
            msg(machine_upsert(body.to_string().as_bytes())),
            "target_disk_serial: required when boot_mode is bty-flash-always"
        );
        let body = json!({"boot_mode": "bty-flash-always", "target_disk_serial": "S1"});
        assert_eq!(
            msg(machine_upsert(body.to_string().as_bytes())),
            "bty_image_ref: required when boot_mode is bty-flash-always"
        );
    }

    #[test]
    fn normalize_upsert_serves_forms_too() {
        let m = normalize_upsert(MachineUpsert {
            bty_image_ref: Some(REF.to_uppercase()),
            labels: strings(&["b", "a", "b"]),
            boot_mode: "bty-tui".into(),
            sanboot_drive: None,
            target_disk_serial: None,
        })
        .unwrap();
        assert_eq!(m.bty_image_ref.as_deref(), Some(REF));
        assert_eq!(m.labels, strings(&["a", "b"]));
        // Default::default() has an empty boot mode, which is not one.
        assert!(msg(normalize_upsert(MachineUpsert::default())).starts_with("boot_mode:"));
    }

    // ---- inventory ----

    fn disk(path: &str) -> Value {
        json!({"path": path, "size": "500G", "vendor": "ATA", "model": "Samsung 980",
               "serial": "S1", "tran": "sata", "removable": false, "readonly": false})
    }

    #[test]
    fn inventory_normalises_disks() {
        let body = json!({"disks": [
            disk("/dev/sda"),
            {"path": "/dev/nvme0n1", "serial": null, "rm": "0", "hotplug": true, "removable": true},
        ]});
        let inv = inventory(body.to_string().as_bytes()).unwrap();
        assert_eq!(inv.lshw, None);
        assert!(!inv.lshw_dropped);
        assert_eq!(
            inv.disks,
            json!([
                disk("/dev/sda"),
                {"path": "/dev/nvme0n1", "size": null, "vendor": null, "model": null,
                 "serial": null, "tran": null, "removable": true, "readonly": false},
            ])
        );
        let inv = inventory(br#"{"disks":[]}"#).unwrap();
        assert_eq!(inv.disks, json!([]));
    }

    #[test]
    fn inventory_keeps_lshw() {
        let body = json!({"disks": [], "lshw": {"product": "X1", "children": [{"id": "cpu"}]}});
        let inv = inventory(body.to_string().as_bytes()).unwrap();
        assert_eq!(inv.lshw, Some(json!({"product": "X1", "children": [{"id": "cpu"}]})));
        assert!(!inv.lshw_dropped);
        let inv = inventory(br#"{"disks":[],"lshw":null}"#).unwrap();
        assert_eq!((inv.lshw, inv.lshw_dropped), (None, false));
    }

    #[test]
    fn inventory_drops_huge_lshw() {
        let body = json!({"disks": [disk("/dev/sda")], "lshw": {"blob": "x".repeat(LSHW_MAX)}});
        let inv = inventory(body.to_string().as_bytes()).unwrap();
        assert_eq!(inv.lshw, None);
        assert!(inv.lshw_dropped);
        assert_eq!(inv.disks.as_array().map(Vec::len), Some(1));
        // Just under the cap: kept. {"b":"..."} is 8 bytes of wrapping.
        let body = json!({"disks": [], "lshw": {"b": "x".repeat(LSHW_MAX - 8)}});
        let inv = inventory(body.to_string().as_bytes()).unwrap();
        assert!(inv.lshw.is_some() && !inv.lshw_dropped);
        let body = json!({"disks": [], "lshw": {"b": "x".repeat(LSHW_MAX - 7)}});
        assert!(inventory(body.to_string().as_bytes()).unwrap().lshw_dropped);
    }

    #[test]
    fn inventory_disk_count_limit() {
        let disks: Vec<Value> = (0..64).map(|i| disk(&format!("/dev/sd{i}"))).collect();
        assert!(inventory(json!({ "disks": disks }).to_string().as_bytes()).is_ok());
        let disks: Vec<Value> = (0..65).map(|i| disk(&format!("/dev/sd{i}"))).collect();
        assert_eq!(
            msg(inventory(json!({ "disks": disks }).to_string().as_bytes())),
            "disks: at most 64 disks (got 65)"
        );
    }

    #[test]
    fn inventory_refusals() {
        let long = "x".repeat(257);
        let cases: Vec<(Value, &str)> = vec![
            (json!({"disks": [], "extra": 1}), "extra: unknown field"),
            (json!({}), "disks: required"),
            (json!({"disks": {}}), "disks: must be an array of disks, not an object"),
            (json!({"disks": ["/dev/sda"]}), "disks[0]: must be an object, not a string"),
            (json!({"disks": [{"size": "1G"}]}), "disks[0].path: required"),
            (json!({"disks": [{"path": 1}]}), "disks[0].path: must be a string, not a number"),
            (
                json!({"disks": [disk("/dev/sda"), {"path": "/etc/passwd"}]}),
                "disks[1].path: must be a device path under /dev/",
            ),
            (json!({"disks": [{"path": "sda"}]}), "disks[0].path: must be a device path"),
            (json!({"disks": [{"path": "/dev/"}]}), "disks[0].path: must be a device path"),
            (json!({"disks": [{"path": "/dev/sd\na"}]}), "disks[0].path: must not contain control"),
            (
                json!({"disks": [{"path": format!("/dev/{long}")}]}),
                "disks[0].path: at most 256 characters (got 262)",
            ),
            (
                json!({"disks": [{"path": "/dev/sda", "serial": long}]}),
                "disks[0].serial: at most 256 characters (got 257)",
            ),
            (
                json!({"disks": [{"path": "/dev/sda", "size": 500}]}),
                "disks[0].size: must be a string or null, not a number",
            ),
            (
                json!({"disks": [{"path": "/dev/sda", "removable": "0"}]}),
                "disks[0].removable: must be true or false, not a string",
            ),
            (
                json!({"disks": [{"path": "/dev/sda", "readonly": 1}]}),
                "disks[0].readonly: must be true or false, not a number",
            ),
        ];
        for (body, want) in cases {
            let m = msg(inventory(body.to_string().as_bytes()));
            assert!(m.starts_with(want), "{body}: {m}");
        }
    }

    // ---- status ----

    #[test]
    fn status_good() {
        assert_eq!(pxe_status(br#"{"status":"done"}"#).unwrap(), PxeStatus::Done);
        assert_eq!(
            pxe_status(br#"{"status":"done","reason":"ignored"}"#).unwrap(),
            PxeStatus::Done
        );
        assert_eq!(
            pxe_status(br#"{"status":"failed","reason":"disk S1 not found"}"#).unwrap(),
            PxeStatus::Failed { reason: "disk S1 not found".into() }
        );
        assert_eq!(
            pxe_status(br#"{"status":"failed"}"#).unwrap(),
            PxeStatus::Failed { reason: String::new() }
        );
        assert_eq!(
            pxe_status(br#"{"status":"failed","reason":null}"#).unwrap(),
            PxeStatus::Failed { reason: String::new() }
        );
        let body = json!({"status": "failed", "reason": "r".repeat(500)});
        assert!(pxe_status(body.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn status_bad() {
        assert_eq!(
            msg(pxe_status(br#"{"status":"ok"}"#)),
            "status: must be \"done\" or \"failed\" (got \"ok\")"
        );
        assert_eq!(
            msg(pxe_status(br#"{"status":"DONE"}"#)),
            "status: must be \"done\" or \"failed\" (got \"DONE\")"
        );
        assert_eq!(msg(pxe_status(br#"{"reason":"x"}"#)), "status: required");
        assert_eq!(
            msg(pxe_status(br#"{"status":true}"#)),
            "status: must be \"done\" or \"failed\", not a boolean"
        );
        assert!(
            msg(pxe_status(br#"{"status":"done","why":"x"}"#)).starts_with("why: unknown field")
        );
        let body = json!({"status": "failed", "reason": "r".repeat(501)});
        assert_eq!(
            msg(pxe_status(body.to_string().as_bytes())),
            "reason: at most 500 characters (got 501)"
        );
        assert_eq!(
            msg(pxe_status(br#"{"status":"failed","reason":5}"#)),
            "reason: must be a string or null, not a number"
        );
    }

    // ---- progress ----

    #[test]
    fn progress_good() {
        let p = pxe_progress(br#"{"phase":"write","written_bytes":1048576}"#).unwrap();
        assert_eq!(
            p,
            PxeProgress {
                phase: "write".into(),
                written_bytes: 1 << 20,
                total_bytes: None,
                rate_bytes_per_s: None
            }
        );
        let body = json!({"phase": "download", "written_bytes": 0u64, "total_bytes": u64::MAX,
                          "rate_bytes_per_s": null});
        let p = pxe_progress(body.to_string().as_bytes()).unwrap();
        assert_eq!(p.total_bytes, Some(u64::MAX));
        assert_eq!(p.rate_bytes_per_s, None);
    }

    #[test]
    fn progress_bad() {
        let cases: [(&[u8], &str); 9] = [
            (br#"{"written_bytes":1}"#, "phase: required"),
            (br#"{"phase":"","written_bytes":1}"#, "phase: must not be empty"),
            (br#"{"phase":"write"}"#, "written_bytes: required"),
            (br#"{"phase":"write","written_bytes":null}"#, "written_bytes: required"),
            (br#"{"phase":"write","written_bytes":-1}"#, "written_bytes: must be a whole number"),
            (br#"{"phase":"write","written_bytes":1.5}"#, "written_bytes: must be a whole number"),
            (br#"{"phase":"write","written_bytes":"1"}"#, "written_bytes: must be a non-negative"),
            (br#"{"phase":"write","written_bytes":1,"eta":3}"#, "eta: unknown field"),
            (
                br#"{"phase":"write","written_bytes":1,"total_bytes":1e30}"#,
                "total_bytes: must be a whole",
            ),
        ];
        for (body, want) in cases {
            let m = msg(pxe_progress(body));
            assert!(m.starts_with(want), "{want} vs {m}");
        }
        let body = json!({"phase": "p".repeat(33), "written_bytes": 1});
        assert_eq!(
            msg(pxe_progress(body.to_string().as_bytes())),
            "phase: at most 32 characters (got 33)"
        );
        let m = msg(pxe_progress(br#"{"phase":"a\u0007","written_bytes":1}"#));
        assert!(m.starts_with("phase: must be printable ASCII"), "{m}");
    }

    // ---- boot file names ----

    #[test]
    fn boot_names_good() {
        for n in ["vmlinuz", "initrd.img", "bty-live_1.2.3.squashfs", "ipxe.efi", "a", "A-Z_0.9"] {
            assert_eq!(boot_file_name(n).unwrap(), n);
        }
        let max = "n".repeat(128);
        assert_eq!(boot_file_name(&max).unwrap(), max);
    }

    #[test]
    fn boot_names_bad() {
        for n in [
            "",
            "../x",
            "..",
            ".",
            ".hidden",
            "a/b",
            "/etc/passwd",
            "a..b",
            "a\\b",
            "a b",
            "naïve",
            "x\0",
            "%2e%2e",
            &"n".repeat(129),
        ] {
            let e = boot_file_name(n).expect_err(n);
            assert_eq!(e.status(), 400, "{n}");
            assert!(matches!(e, Invalid::BadName { .. }));
            assert!(e.to_string().starts_with("invalid file name"), "{e}");
        }
        assert_eq!(
            boot_file_name(".hidden").unwrap_err().to_string(),
            "invalid file name \".hidden\": must not start with a dot"
        );
        assert_eq!(
            boot_file_name("a/b").unwrap_err().to_string(),
            "invalid file name \"a/b\": character '/' is not allowed (letters, digits, '.', '_' \
             and '-' only)"
        );
    }

    // ---- malformed and empty bodies ----

    #[test]
    fn malformed_and_empty_bodies() {
        type Parse = fn(&[u8]) -> Result<(), Invalid>;
        let parsers: [Parse; 4] = [
            |b| machine_upsert(b).map(drop),
            |b| inventory(b).map(drop),
            |b| pxe_status(b).map(drop),
            |b| pxe_progress(b).map(drop),
        ];
        for parse in parsers {
            for body in [
                &b""[..],
                b"   ",
                b"{",
                b"{\"a\":}",
                b"not json",
                b"{}}",
                b"\xff\xfe",
                b"{\"a\":\"\xff\"}",
            ] {
                let e = parse(body).expect_err("malformed");
                assert!(matches!(e, Invalid::Json(_)), "{e}");
                assert_eq!(e.status(), 422);
                let m = e.to_string();
                assert!(m.starts_with("body is not valid JSON: "), "{m}");
                assert!(m.contains("line 1 column"), "{m}");
            }
            for body in [&b"[]"[..], b"\"x\"", b"3", b"true", b"null"] {
                let m = msg(parse(body));
                assert!(m.starts_with("body: must be a JSON object"), "{m}");
            }
        }
        let m = msg(machine_upsert(b"{\n  \"labels\": [\n}"));
        assert!(m.contains("line 3 column 1"), "{m}");
    }

    #[test]
    fn deep_nesting_does_not_panic() {
        let deep =
            format!("{{\"disks\":[],\"lshw\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(inventory(deep.as_bytes()), Err(Invalid::Json(_))));
        let ok = format!("{{\"disks\":[],\"lshw\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(inventory(ok.as_bytes()).unwrap().lshw.is_some());
    }

    #[test]
    fn unknown_key_is_escaped_and_clipped() {
        let key = format!("a\n{}", "k".repeat(1000));
        let body = json!({ key: 1 });
        let e = pxe_status(body.to_string().as_bytes()).unwrap_err();
        let field = e.field().unwrap_or_default().to_string();
        assert!(field.starts_with("a\\n") && field.len() < 60, "{field}");
    }

    #[test]
    fn the_inventory_bty_sends_is_what_bty_web_accepts() {
        use crate::disks::Disk;
        use crate::inventory::{Inventory, Source, summary};
        use crate::wire::InventoryDisk;

        let disk = |i: usize| Disk {
            inventory: InventoryDisk {
                path: format!("/dev/sd{i}"),
                size: Some("1G".into()),
                vendor: None,
                model: None,
                serial: Some(format!("S{i}")),
                tran: Some("sata".into()),
                removable: false,
                readonly: false,
            },
            name: format!("sd{i}"),
            size_bytes: 1 << 30,
            rotational: false,
            logical_block_size: 512,
            physical_block_size: 512,
            mountpoints: vec![],
            holders: vec![],
            root: false,
            boot_medium: false,
            writable: true,
            refusal: None,
        };
        let inv = Inventory {
            disks: (0..70).map(disk).collect(),
            hardware: summary::build(&summary::Facts::default()),
            source: Source::Summary,
        };
        let body = serde_json::to_vec(&inv.wire()).unwrap();
        let checked = inventory(&body).unwrap();
        assert_eq!(checked.disks.as_array().unwrap().len(), INVENTORY_MAX_DISKS);
        assert_eq!(checked.lshw.unwrap()["class"], "system");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["disks"][0].as_object().unwrap().len(), 8);
    }
}
