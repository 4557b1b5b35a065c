//! Machine records: labels, boot mode, image ref, sanboot drive and target serial, however they
//! arrive (a `PUT /machines/{mac}` body or the machine page's form).

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Invalid, opt_str, parse_object, refuse_unknown, type_err};
use crate::web::db::MachineUpsert;
use crate::wire::{BootMode, LABEL_MAX_CHARS, LABELS_MAX, SERIAL_MAX_CHARS, show};

const UPSERT_KEYS: [&str; 5] =
    ["bty_image_ref", "labels", "boot_mode", "sanboot_drive", "target_disk_serial"];

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

/// Checks a boot mode: one of [`BootMode::ALL`].
pub fn boot_mode(s: &str) -> Result<BootMode, Invalid> {
    s.parse().map_err(|m| Invalid::new("boot_mode", m))
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
    let boot_mode = m.boot_mode;
    let bty_image_ref = m.bty_image_ref.as_deref().map(bty_image_ref).transpose()?;
    let sanboot_drive = m.sanboot_drive.as_deref().map(sanboot_drive).transpose()?;
    let target_disk_serial = m.target_disk_serial.as_deref().map(target_disk_serial).transpose()?;
    if boot_mode.is_flash() {
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
        None => BootMode::default(),
        Some(Value::String(s)) => boot_mode(s)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const REF: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    use std::fmt;

    fn msg<T: fmt::Debug>(r: Result<T, Invalid>) -> String {
        r.expect_err("expected a rejection").to_string()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
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
        assert_eq!(m.boot_mode.as_str(), "ipxe-exit");
        assert!(m.labels.is_empty());
        assert_eq!(m.bty_image_ref, None);
        assert_eq!(m.sanboot_drive, None);
        assert_eq!(m.target_disk_serial, None);
        let m = machine_upsert(
            br#"{"bty_image_ref":null,"sanboot_drive":null,"target_disk_serial":null}"#,
        )
        .unwrap();
        assert_eq!(m.boot_mode.as_str(), "ipxe-exit");
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
        assert_eq!(m.boot_mode.as_str(), "bty-flash-once");
        assert_eq!(m.sanboot_drive.as_deref(), Some("0x8a"));
        assert_eq!(m.target_disk_serial.as_deref(), Some("S4EWNX0R123456 B"));
        for mode in BootMode::ALL.map(BootMode::as_str) {
            let body = json!({"boot_mode": mode, "bty_image_ref": REF, "target_disk_serial": "X"});
            assert_eq!(
                machine_upsert(body.to_string().as_bytes()).unwrap().boot_mode.as_str(),
                mode
            );
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
            boot_mode: BootMode::Tui,
            sanboot_drive: None,
            target_disk_serial: None,
        })
        .unwrap();
        assert_eq!(m.bty_image_ref.as_deref(), Some(REF));
        assert_eq!(m.labels, strings(&["a", "b"]));
        // A form without a boot mode gets the default, as a JSON body without one does.
        assert_eq!(
            normalize_upsert(MachineUpsert::default()).unwrap().boot_mode,
            BootMode::default()
        );
    }
}
