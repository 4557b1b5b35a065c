//! Validation of what clients send bty-web: MAC addresses, machine labels, boot artifact names
//! and the JSON bodies of `PUT /machines/{mac}` (`machine.rs`) and the `POST /pxe/{mac}/...`
//! reports (`pxe.rs`, which builds the `wire` types the agent sends).
//!
//! Pure functions: bytes or strings in, a normalised value or an [`Invalid`] naming the offending
//! field out (`labels[2]: must start with a letter or digit`). Bodies are parsed to
//! `serde_json::Value` and checked by hand, so every message names its field. Nothing here panics
//! on any input; serde_json's recursion limit (128 levels) bounds nesting.
//!
//! The checks are the spec's (reference.txt wire types, api-details.md). Whether a
//! `bty_image_ref` names a catalog entry, or a MAC has a record, is for the caller to look up.

mod bulk;
mod machine;
mod pxe;

use std::fmt;
use std::io;

use serde_json::{Map, Value};

use crate::wire::{self, show};
pub use crate::wire::{
    BOOT_NAME_MAX_CHARS, DISK_FIELD_MAX_CHARS, INVENTORY_MAX_DISKS, LABEL_MAX_CHARS, LABELS_MAX,
    LSHW_MAX, PHASE_MAX_CHARS, REASON_MAX_CHARS, SERIAL_MAX_CHARS,
};
pub use bulk::bulk_request;
pub use machine::{
    boot_mode, bty_image_ref, labels, machine_upsert, normalize_upsert, sanboot_drive,
    target_disk_serial,
};
pub use pxe::{
    Inventory, STREAMED_DISKS_MAX, inventory, inventory_stream, known_disks, pxe_progress,
    pxe_status,
};

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

/// Normalises a MAC address to `aa:bb:cc:dd:ee:ff` ([`wire::normalize_mac`]); the refusal
/// names the `mac` field.
pub fn normalize_mac(s: &str) -> Result<String, Invalid> {
    wire::normalize_mac(s).map_err(|m| Invalid::new("mac", m))
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

    fn msg<T: fmt::Debug>(r: Result<T, Invalid>) -> String {
        r.expect_err("expected a rejection").to_string()
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
        assert!(inventory(ok.as_bytes()).unwrap().report.lshw.is_some());
    }

    #[test]
    fn unknown_key_is_escaped_and_clipped() {
        let key = format!("a\n{}", "k".repeat(1000));
        let body = json!({ key: 1 });
        let e = pxe_status(body.to_string().as_bytes()).unwrap_err();
        let field = e.field().unwrap_or_default().to_string();
        assert!(field.starts_with("a\\n") && field.len() < 60, "{field}");
    }
}
