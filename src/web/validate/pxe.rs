//! The live environment's reports: `POST /pxe/{mac}/inventory`, `/status` and `/progress`,
//! checked field by field and built into the `wire` types the agent sends.

use std::cell::Cell;
use std::io::{BufReader, Read};

use serde_json::Value;

use super::{
    Invalid, check_len, json_len_exceeds, opt_str, opt_u64, parse_object, refuse_unknown, type_err,
};
use crate::wire::{
    self, DISK_FIELD_MAX_CHARS, INVENTORY_MAX_DISKS, InventoryDisk, LSHW_MAX, PHASE_MAX_CHARS,
    Progress, REASON_MAX_CHARS, Status, show,
};

const INVENTORY_KEYS: [&str; 2] = ["disks", "lshw"];
const STATUS_KEYS: [&str; 2] = ["status", "reason"];
const PROGRESS_KEYS: [&str; 4] = ["phase", "written_bytes", "total_bytes", "rate_bytes_per_s"];

/// A checked `POST /pxe/{mac}/inventory` body.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    /// The report: the disks with exactly the `InventoryDisk` fields, and the `lshw -json`
    /// tree if one was sent and it is within [`LSHW_MAX`].
    pub report: wire::Inventory,
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
        .collect::<Result<Vec<InventoryDisk>, Invalid>>()?;
    let (lshw, lshw_dropped) = match obj.remove("lshw") {
        None | Some(Value::Null) => (None, false),
        Some(v) if json_len_exceeds(&v, LSHW_MAX) => (None, true),
        Some(v) => (Some(v), false),
    };
    Ok(Inventory { report: wire::Inventory { disks, lshw }, lshw_dropped })
}

/// The most bytes the `disks` of an inventory read by [`inventory_stream`] may take: 64 disks
/// of lsblk columns are a few tens of KiB.
pub const STREAMED_DISKS_MAX: u64 = 1 << 20;

/// Parses an inventory body too long to hold whole: `head` is its first bytes, `rest` the
/// remainder as it arrives. Read as a stream: `disks` is kept (at most
/// [`STREAMED_DISKS_MAX`] bytes) and checked as [`inventory`] checks it, `lshw` is read through
/// for its syntax and not kept (only a tree far over [`LSHW_MAX`] makes a body this long), so
/// `lshw_dropped` is set and the previous tree stays. Unknown top-level keys are refused.
pub fn inventory_stream(head: &[u8], rest: &mut dyn Read) -> Result<Inventory, Invalid> {
    use serde::Deserializer as _;
    let consumed = Cell::new(0u64);
    let cap = Cell::new(u64::MAX);
    let reader = Metered {
        inner: BufReader::with_capacity(64 << 10, head.chain(rest)),
        consumed: &consumed,
        cap: &cap,
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let top = de
        .deserialize_map(Top { consumed: &consumed, cap: &cap })
        .and_then(|t| de.end().map(|()| t));
    let top = match top {
        Ok(t) => t,
        Err(_) if cap.get() != u64::MAX && consumed.get() > cap.get() => {
            return Err(Invalid::new(
                "disks",
                format!(
                    "over {} KiB in an inventory too long to hold (an lshw tree far over its cap)",
                    STREAMED_DISKS_MAX >> 10
                ),
            ));
        }
        Err(e) if e.is_data() => {
            return Err(Invalid::new("body", "must be a JSON object"));
        }
        Err(e) => return Err(Invalid::Json(e.to_string())),
    };
    if let Some(k) = top.unknown {
        let obj: serde_json::Map<String, Value> = [(k, Value::Null)].into_iter().collect();
        refuse_unknown(&obj, &INVENTORY_KEYS)?;
    }
    let Some(disks) = top.disks else { return Err(Invalid::new("disks", "required")) };
    let body = serde_json::json!({ "disks": disks }).to_string();
    let mut inv = inventory(body.as_bytes())?;
    inv.lshw_dropped = top.lshw;
    Ok(inv)
}

/// A reader that counts what serde_json takes from it and fails past `cap`.
struct Metered<'a, R> {
    inner: R,
    consumed: &'a Cell<u64>,
    cap: &'a Cell<u64>,
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.consumed.get() > self.cap.get() {
            return Err(std::io::Error::other("over the size cap"));
        }
        let n = self.inner.read(buf)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}

/// The top level of a streamed inventory.
#[derive(Default)]
struct Parsed {
    disks: Option<Value>,
    lshw: bool,
    /// The first unknown key (its value read through like lshw's).
    unknown: Option<String>,
}

struct Top<'a> {
    consumed: &'a Cell<u64>,
    cap: &'a Cell<u64>,
}

impl<'de> serde::de::Visitor<'de> for Top<'_> {
    type Value = Parsed;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        let mut out = Parsed::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "disks" => {
                    self.cap.set(self.consumed.get().saturating_add(STREAMED_DISKS_MAX));
                    out.disks = Some(map.next_value::<Value>()?);
                    self.cap.set(u64::MAX);
                }
                "lshw" => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    out.lshw = true;
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    out.unknown.get_or_insert(key);
                }
            }
        }
        Ok(out)
    }
}

/// Checks a stored disk list (an import's `known_disks`) by the inventory's rules: an array of
/// at most 64 disks, each as in [`inventory`]; refusals name `known_disks[i].field`.
pub fn known_disks(v: &Value) -> Result<Vec<InventoryDisk>, Invalid> {
    let Value::Array(a) = v else {
        return Err(type_err("known_disks", "an array of disks", v));
    };
    if a.len() > INVENTORY_MAX_DISKS {
        return Err(Invalid::new(
            "known_disks",
            format!("at most {INVENTORY_MAX_DISKS} disks (got {})", a.len()),
        ));
    }
    a.iter().enumerate().map(|(i, d)| inventory_disk(i, d)).collect::<Result<_, _>>().map_err(|e| {
        match e {
            Invalid::Field { field, message } => {
                Invalid::Field { field: format!("known_{field}"), message }
            }
            other => other,
        }
    })
}

fn inventory_disk(i: usize, d: &Value) -> Result<InventoryDisk, Invalid> {
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
    let text = |k: &str| match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            check_len(&field(k), s, DISK_FIELD_MAX_CHARS)?;
            Ok(Some(s.clone()))
        }
        Some(other) => Err(type_err(&field(k), "a string or null", other)),
    };
    let flag = |k: &str| match o.get(k) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(type_err(&field(k), "true or false", other)),
    };
    // Checked in this order, so the first bad field is the one named.
    Ok(InventoryDisk {
        path: path.clone(),
        size: text("size")?,
        vendor: text("vendor")?,
        model: text("model")?,
        serial: text("serial")?,
        tran: text("tran")?,
        removable: flag("removable")?,
        readonly: flag("readonly")?,
    })
}

/// Parses a `POST /pxe/{mac}/status` body: `{"status": "done"|"failed", "reason": str}`.
///
/// Unknown keys are refused; `reason` is optional (null counts as absent), at most 500
/// characters, and ignored with `done`.
pub fn pxe_status(body: &[u8]) -> Result<Status, Invalid> {
    let obj = parse_object(body)?;
    refuse_unknown(&obj, &STATUS_KEYS)?;
    let reason = opt_str(&obj, "reason")?;
    if let Some(r) = reason {
        check_len("reason", r, REASON_MAX_CHARS)?;
    }
    match obj.get("status") {
        Some(Value::String(s)) if s == "done" => Ok(Status::Done),
        Some(Value::String(s)) if s == "failed" => {
            Ok(Status::Failed { reason: reason.unwrap_or_default().to_string() })
        }
        Some(Value::String(s)) => {
            Err(Invalid::new("status", format!("must be \"done\" or \"failed\" (got {})", show(s))))
        }
        None => Err(Invalid::new("status", "required")),
        Some(other) => Err(type_err("status", "\"done\" or \"failed\"", other)),
    }
}

/// Parses a `POST /pxe/{mac}/progress` body: `{"phase": str, "written_bytes": u64,
/// "total_bytes": u64|null, "rate_bytes_per_s": u64|null}`.
///
/// Unknown keys are refused; `phase` and `written_bytes` are required, the others default to
/// null. `written_bytes` above `total_bytes` is not refused (totals can be estimates).
pub fn pxe_progress(body: &[u8]) -> Result<Progress, Invalid> {
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
    Ok(Progress {
        phase: phase.clone(),
        written_bytes,
        total_bytes: opt_u64(&obj, "total_bytes")?,
        rate_bytes_per_s: opt_u64(&obj, "rate_bytes_per_s")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fmt;

    fn msg<T: fmt::Debug>(r: Result<T, Invalid>) -> String {
        r.expect_err("expected a rejection").to_string()
    }

    // ---- inventory ----

    fn disk(path: &str) -> Value {
        json!({"path": path, "size": "500G", "vendor": "ATA", "model": "Samsung 980",
               "serial": "S1", "tran": "sata", "removable": false, "readonly": false})
    }

    #[test]
    fn a_streamed_inventory_keeps_its_disks_and_drops_lshw_whatever_the_order() {
        let pad = "x".repeat(3 << 20);
        for body in [
            json!({"disks": [disk("/dev/sda")], "lshw": {"pad": pad}}),
            json!({"lshw": {"pad": pad}, "disks": [disk("/dev/sda")]}),
        ] {
            let text = body.to_string();
            // Split anywhere: the head the request layer held, the rest still on the wire.
            for cut in [0, 1, 100, text.len() / 2, text.len()] {
                let (head, rest) = text.as_bytes().split_at(cut);
                let inv = inventory_stream(head, &mut &rest[..]).unwrap();
                assert!(inv.lshw_dropped && inv.report.lshw.is_none());
                assert_eq!(
                    serde_json::to_value(&inv.report.disks).unwrap(),
                    json!([disk("/dev/sda")])
                );
            }
        }
        let run = |b: &str| inventory_stream(b.as_bytes(), &mut std::io::empty());
        assert_eq!(
            msg(run(r#"{"disks":[],"x":1}"#)),
            "x: unknown field (expected one of: disks, lshw)"
        );
        assert_eq!(msg(run(r#"{"lshw":1}"#)), "disks: required");
        assert_eq!(msg(run("[1]")), "body: must be a JSON object");
        assert!(msg(run(r#"{"disks":[],"lshw":[1,}"#)).starts_with("body is not valid JSON"));
        assert!(msg(run(r#"{"disks":[{"path":"/etc/x"}]}"#)).starts_with("disks[0].path"));
        let huge =
            format!(r#"{{"disks":[{{"path":"/dev/sda","junk":"{}"}}]}}"#, "y".repeat(2 << 20));
        assert!(msg(run(&huge)).starts_with("disks: over 1024 KiB"), "{}", msg(run(&huge)));
        // The import's check: the same rules, named as known_disks.
        assert_eq!(
            msg(known_disks(&json!([{"path": "/etc/x"}]))),
            "known_disks[0].path: must be a device path under /dev/ (got \"/etc/x\")"
        );
        assert!(msg(known_disks(&json!({}))).starts_with("known_disks: must be an array"));
    }

    #[test]
    fn inventory_normalises_disks() {
        let body = json!({"disks": [
            disk("/dev/sda"),
            {"path": "/dev/nvme0n1", "serial": null, "rm": "0", "hotplug": true, "removable": true},
        ]});
        let inv = inventory(body.to_string().as_bytes()).unwrap();
        assert_eq!(inv.report.lshw, None);
        assert!(!inv.lshw_dropped);
        assert_eq!(
            serde_json::to_value(&inv.report.disks).unwrap(),
            json!([
                disk("/dev/sda"),
                {"path": "/dev/nvme0n1", "size": null, "vendor": null, "model": null,
                 "serial": null, "tran": null, "removable": true, "readonly": false},
            ])
        );
        let inv = inventory(br#"{"disks":[]}"#).unwrap();
        assert_eq!(inv.report.disks, []);
    }

    #[test]
    fn inventory_keeps_lshw() {
        let body = json!({"disks": [], "lshw": {"product": "X1", "children": [{"id": "cpu"}]}});
        let inv = inventory(body.to_string().as_bytes()).unwrap();
        assert_eq!(inv.report.lshw, Some(json!({"product": "X1", "children": [{"id": "cpu"}]})));
        assert!(!inv.lshw_dropped);
        let inv = inventory(br#"{"disks":[],"lshw":null}"#).unwrap();
        assert_eq!((inv.report.lshw, inv.lshw_dropped), (None, false));
    }

    #[test]
    fn inventory_drops_huge_lshw() {
        let body = json!({"disks": [disk("/dev/sda")], "lshw": {"blob": "x".repeat(LSHW_MAX)}});
        let inv = inventory(body.to_string().as_bytes()).unwrap();
        assert_eq!(inv.report.lshw, None);
        assert!(inv.lshw_dropped);
        assert_eq!(inv.report.disks.len(), 1);
        // Just under the cap: kept. {"b":"..."} is 8 bytes of wrapping.
        let body = json!({"disks": [], "lshw": {"b": "x".repeat(LSHW_MAX - 8)}});
        let inv = inventory(body.to_string().as_bytes()).unwrap();
        assert!(inv.report.lshw.is_some() && !inv.lshw_dropped);
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
        assert_eq!(pxe_status(br#"{"status":"done"}"#).unwrap(), Status::Done);
        assert_eq!(pxe_status(br#"{"status":"done","reason":"ignored"}"#).unwrap(), Status::Done);
        assert_eq!(
            pxe_status(br#"{"status":"failed","reason":"disk S1 not found"}"#).unwrap(),
            Status::Failed { reason: "disk S1 not found".into() }
        );
        assert_eq!(
            pxe_status(br#"{"status":"failed"}"#).unwrap(),
            Status::Failed { reason: String::new() }
        );
        assert_eq!(
            pxe_status(br#"{"status":"failed","reason":null}"#).unwrap(),
            Status::Failed { reason: String::new() }
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
            Progress {
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

    /// What bty-web accepts reads the same through the wire types' own `Deserialize`.
    #[test]
    fn checked_bodies_are_what_the_wire_types_read() {
        let inventories = [
            json!({"disks": [disk("/dev/sda")], "lshw": {"class": "system"}}),
            json!({"disks": [{"path": "/dev/nvme0n1", "serial": null, "rm": "0",
                              "removable": null}], "lshw": null}),
            json!({"disks": []}),
        ];
        for body in inventories.map(|b| b.to_string()) {
            let read: wire::Inventory = serde_json::from_str(&body).unwrap();
            assert_eq!(inventory(body.as_bytes()).unwrap().report, read, "{body}");
        }
        for body in [
            r#"{"status":"done"}"#,
            r#"{"status":"done","reason":"x"}"#,
            r#"{"status":"failed","reason":null}"#,
            r#"{"status":"failed","reason":"disk S1 not found"}"#,
        ] {
            let read: Status = serde_json::from_str(body).unwrap();
            assert_eq!(pxe_status(body.as_bytes()).unwrap(), read, "{body}");
        }
        for body in [
            r#"{"phase":"write","written_bytes":5,"total_bytes":10,"rate_bytes_per_s":1}"#,
            r#"{"phase":"verifying","written_bytes":0,"total_bytes":null}"#,
        ] {
            let read: Progress = serde_json::from_str(body).unwrap();
            assert_eq!(pxe_progress(body.as_bytes()).unwrap(), read, "{body}");
        }
    }

    #[test]
    fn the_inventory_bty_sends_is_what_bty_web_accepts() {
        use crate::disks::Disk;
        use crate::inventory::{Inventory, Source, summary};

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
        assert_eq!(checked.report.disks.len(), INVENTORY_MAX_DISKS);
        assert_eq!(checked.report.lshw.unwrap()["class"], "system");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["disks"][0].as_object().unwrap().len(), 8);
    }
}
