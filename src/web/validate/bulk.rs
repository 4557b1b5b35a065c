//! The body of `POST /machines/bulk` (and the machines page's bulk form, which the UI turns
//! into the same JSON): which machines, what to set on them, preview or apply. The values are
//! checked with the single PUT's own checks (`machine.rs`); whether the result is a valid
//! machine is checked per machine by `web::bulk`, with `normalize_upsert`.

use serde_json::{Map, Value};

use super::{DISK_FIELD_MAX_CHARS, Invalid, check_len, parse_object, refuse_unknown, type_err};
use crate::web::bulk::{Disk, Filter, Request, Rule, Select, Set};

/// Longest text filter accepted (the machines page's search box).
const FILTER_MAX_CHARS: usize = 200;

/// Parses a bulk request strictly: unknown keys refused at every level, exactly one way of
/// selecting, at least one thing to set, labels and refs checked as a single PUT checks them.
pub fn bulk_request(body: &[u8]) -> Result<Request, Invalid> {
    let obj = parse_object(body)?;
    refuse_unknown(&obj, &["select", "set", "dry_run", "expect"])?;
    let select = match obj.get("select") {
        Some(Value::Object(s)) => select(s)?,
        Some(other) => return Err(type_err("select", "an object", other)),
        None => return Err(Invalid::new("select", "required (macs, label or filter)")),
    };
    let set = match obj.get("set") {
        Some(Value::Object(s)) => set(s)?,
        Some(other) => return Err(type_err("set", "an object", other)),
        None => return Err(Invalid::new("set", "required")),
    };
    let dry_run = match obj.get("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(type_err("dry_run", "a boolean", other)),
    };
    let expect = match obj.get("expect") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(s.to_ascii_lowercase())
        }
        Some(Value::String(_)) => {
            return Err(Invalid::new("expect", "must be the fingerprint of a preview (hex)"));
        }
        Some(other) => return Err(type_err("expect", "a string", other)),
    };
    Ok(Request { select, set, dry_run, expect })
}

fn one_key<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
    keys: &[&str],
) -> Result<(&'a str, &'a Value), Invalid> {
    refuse_unknown(obj, keys).map_err(|e| prefix(field, e))?;
    let mut it = obj.iter();
    match (it.next(), it.next()) {
        (Some((k, v)), None) => Ok((k.as_str(), v)),
        _ => Err(Invalid::new(field, format!("must have exactly one of {}", keys.join(", ")))),
    }
}

/// Puts `parent.` before the field an inner check named.
fn prefix(parent: &str, e: Invalid) -> Invalid {
    match e {
        Invalid::Field { field, message } => {
            Invalid::Field { field: format!("{parent}.{field}"), message }
        }
        other => other,
    }
}

fn select(obj: &Map<String, Value>) -> Result<Select, Invalid> {
    match one_key(obj, "select", &["macs", "label", "filter"])? {
        ("macs", Value::Array(items)) => {
            if items.is_empty() {
                return Err(Invalid::new("select.macs", "must name at least one machine"));
            }
            let mut macs = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let field = format!("select.macs[{i}]");
                let Value::String(s) = item else { return Err(type_err(&field, "a string", item)) };
                let mac = super::normalize_mac(s).map_err(|e| match e {
                    Invalid::Field { message, .. } => Invalid::new(field.clone(), message),
                    other => other,
                })?;
                if !macs.contains(&mac) {
                    macs.push(mac);
                }
            }
            Ok(Select::Macs(macs))
        }
        ("macs", other) => Err(type_err("select.macs", "an array of MAC addresses", other)),
        ("label", Value::String(l)) => Ok(Select::Label(one_label("select.label", l)?)),
        ("label", other) => Err(type_err("select.label", "a string", other)),
        ("filter", Value::Object(f)) => filter(f).map(Select::Filter),
        (_, other) => Err(type_err("select.filter", "an object", other)),
    }
}

fn one_label(field: &str, l: &str) -> Result<String, Invalid> {
    let mut v = super::labels(&[l.to_string()]).map_err(|e| match e {
        Invalid::Field { message, .. } => Invalid::new(field, message),
        other => other,
    })?;
    Ok(v.pop().unwrap_or_default())
}

/// The machines page's filter: `q` (text), `label`, `status` (discovered/assigned), all optional.
fn filter(obj: &Map<String, Value>) -> Result<Filter, Invalid> {
    refuse_unknown(obj, &["q", "label", "status"]).map_err(|e| prefix("select.filter", e))?;
    let text = |k: &str| match obj.get(k) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(other) => Err(type_err(&format!("select.filter.{k}"), "a string", other)),
    };
    let q = text("q")?;
    check_len("select.filter.q", &q, FILTER_MAX_CHARS)?;
    let mut label = text("label")?;
    if !label.is_empty() {
        label = one_label("select.filter.label", &label)?;
    }
    let status = text("status")?;
    if !matches!(status.as_str(), "" | "discovered" | "assigned") {
        return Err(Invalid::new(
            "select.filter.status",
            format!(
                "must be discovered or assigned (or empty for all), got {}",
                crate::wire::show(&status)
            ),
        ));
    }
    Ok(Filter { q, label, status })
}

fn set(obj: &Map<String, Value>) -> Result<Set, Invalid> {
    refuse_unknown(obj, &["bty_image_ref", "boot_mode", "labels", "target_disk"])
        .map_err(|e| prefix("set", e))?;
    if obj.is_empty() {
        return Err(Invalid::new("set", "names nothing to change"));
    }
    let mut set = Set::default();
    match obj.get("bty_image_ref") {
        None => {}
        Some(Value::Null) => set.image = Some(None),
        Some(Value::String(s)) => {
            set.image = Some(Some(super::bty_image_ref(s).map_err(|e| prefix("set", e))?))
        }
        Some(other) => return Err(type_err("set.bty_image_ref", "a string or null", other)),
    }
    match obj.get("boot_mode") {
        None => {}
        Some(Value::String(s)) => {
            set.boot_mode = Some(super::boot_mode(s).map_err(|e| prefix("set", e))?)
        }
        Some(other) => return Err(type_err("set.boot_mode", "a string", other)),
    }
    match obj.get("labels") {
        None => {}
        Some(Value::Object(l)) => {
            refuse_unknown(l, &["add", "remove"]).map_err(|e| prefix("set.labels", e))?;
            set.add = label_list(l, "add")?;
            set.remove = label_list(l, "remove")?;
            if let Some(both) = set.add.iter().find(|a| set.remove.contains(a)) {
                return Err(Invalid::new(
                    "set.labels",
                    format!("{both:?} is both added and removed"),
                ));
            }
        }
        Some(other) => return Err(type_err("set.labels", "an object with add and remove", other)),
    }
    match obj.get("target_disk") {
        None => {}
        Some(Value::Null) => set.disk = Some(Disk::Clear),
        Some(Value::Object(d)) => set.disk = Some(disk(d)?),
        Some(other) => return Err(type_err("set.target_disk", "an object or null", other)),
    }
    Ok(set)
}

fn label_list(obj: &Map<String, Value>, key: &str) -> Result<Vec<String>, Invalid> {
    let field = format!("set.labels.{key}");
    let items = match obj.get(key) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(type_err(&field, "an array of strings", other)),
    };
    let mut v = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) => v.push(s.clone()),
            other => return Err(type_err(&format!("{field}[{i}]"), "a string", other)),
        }
    }
    // The single PUT's label rules, with the field renamed: labels[2] -> set.labels.add[2].
    super::labels(&v).map_err(|e| match e {
        Invalid::Field { field: f, message } => {
            Invalid::Field { field: f.replacen("labels", &field, 1), message }
        }
        other => other,
    })
}

fn disk(obj: &Map<String, Value>) -> Result<Disk, Invalid> {
    match one_key(obj, "set.target_disk", &["serial", "rule"])? {
        ("serial", Value::String(s)) => {
            super::target_disk_serial(s).map(Disk::Serial).map_err(|e| match e {
                Invalid::Field { message, .. } => Invalid::new("set.target_disk.serial", message),
                other => other,
            })
        }
        ("serial", other) => Err(type_err("set.target_disk.serial", "a string", other)),
        ("rule", Value::String(r)) => match r.as_str() {
            "only-fixed" => Ok(Disk::Rule(Rule::OnlyFixed)),
            "smallest" => Ok(Disk::Rule(Rule::Smallest)),
            "largest" => Ok(Disk::Rule(Rule::Largest)),
            _ => Err(Invalid::new(
                "set.target_disk.rule",
                format!(
                    "must be only-fixed, smallest, largest or {{\"model\": ...}}, got {}",
                    crate::wire::show(r)
                ),
            )),
        },
        ("rule", Value::Object(m)) => {
            refuse_unknown(m, &["model"]).map_err(|e| prefix("set.target_disk.rule", e))?;
            let field = "set.target_disk.rule.model";
            match m.get("model") {
                Some(Value::String(s)) => {
                    let s = s.trim();
                    if s.is_empty() {
                        return Err(Invalid::new(field, "must not be empty"));
                    }
                    check_len(field, s, DISK_FIELD_MAX_CHARS)?;
                    if let Some(c) = s.chars().find(|c| c.is_control()) {
                        return Err(Invalid::new(field, format!("control character {c:?}")));
                    }
                    Ok(Disk::Rule(Rule::Model(s.to_string())))
                }
                Some(other) => Err(type_err(field, "a string", other)),
                None => Err(Invalid::new(field, "required")),
            }
        }
        (_, other) => Err(type_err("set.target_disk.rule", "a string or an object", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: &str) -> String {
        match bulk_request(body.as_bytes()) {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_each_selection_and_setting() {
        let r = bulk_request(
            br#"{"select":{"macs":["AA-BB-CC-DD-EE-01","aa:bb:cc:dd:ee:01"]},
                 "set":{"boot_mode":"bty-flash-once","labels":{"add":["r3","r3"]},
                        "target_disk":{"rule":{"model":" Disk X "}}},"dry_run":true}"#,
        )
        .unwrap();
        assert!(matches!(&r.select, Select::Macs(m) if m == &["aa:bb:cc:dd:ee:01"]));
        assert_eq!(r.set.add, ["r3"]);
        assert!(matches!(&r.set.disk, Some(Disk::Rule(Rule::Model(m))) if m == "Disk X"));
        assert!(r.dry_run);
        let r =
            bulk_request(br#"{"select":{"label":"rack 3"},"set":{"bty_image_ref":null}}"#).unwrap();
        assert!(matches!(r.select, Select::Label(l) if l == "rack 3"));
        assert_eq!(r.set.image, Some(None));
        let r = bulk_request(
            br#"{"select":{"filter":{"q":"web","status":"assigned"}},"set":{"target_disk":null}}"#,
        )
        .unwrap();
        assert!(matches!(r.select, Select::Filter(f) if f.q == "web" && f.status == "assigned"));
    }

    #[test]
    fn refuses_with_the_field_named() {
        let cases = [
            (r#"{"set":{"boot_mode":"ipxe-exit"}}"#, "select: required"),
            (r#"{"select":{},"set":{"boot_mode":"ipxe-exit"}}"#, "select: must have exactly one"),
            (r#"{"select":{"label":"a","macs":[]},"set":{}}"#, "select: must have exactly one"),
            (r#"{"select":{"macs":[]},"set":{"boot_mode":"ipxe-exit"}}"#, "select.macs: must name"),
            (r#"{"select":{"macs":["nope"]},"set":{"boot_mode":"ipxe-exit"}}"#, "select.macs[0]: "),
            (
                r#"{"select":{"label":"<script>"},"set":{"boot_mode":"ipxe-exit"}}"#,
                "select.label: must start",
            ),
            (r#"{"select":{"label":"a"},"set":{}}"#, "set: names nothing"),
            (r#"{"select":{"label":"a"},"set":{"mac":1}}"#, "set.mac: unknown field"),
            (
                r#"{"select":{"label":"a"},"set":{"boot_mode":"flash"}}"#,
                "set.boot_mode: must be one of",
            ),
            (
                r#"{"select":{"label":"a"},"set":{"bty_image_ref":"x"}}"#,
                "set.bty_image_ref: must be 64 hex",
            ),
            (
                r#"{"select":{"label":"a"},"set":{"labels":{"add":["ok","a<b>"]}}}"#,
                "set.labels.add[1]: character '<'",
            ),
            (
                r#"{"select":{"label":"a"},"set":{"labels":{"add":["x"],"remove":["x"]}}}"#,
                "set.labels: \"x\" is both",
            ),
            (
                r#"{"select":{"label":"a"},"set":{"target_disk":{"rule":"biggest"}}}"#,
                "set.target_disk.rule: must be",
            ),
            (
                r#"{"select":{"label":"a"},"set":{"target_disk":{"serial":""}}}"#,
                "set.target_disk.serial: must not be empty",
            ),
            (
                r#"{"select":{"filter":{"status":"x"}},"set":{"boot_mode":"ipxe-exit"}}"#,
                "select.filter.status",
            ),
            (
                r#"{"select":{"label":"a"},"set":{"boot_mode":"ipxe-exit"},"extra":1}"#,
                "extra: unknown field",
            ),
        ];
        for (body, want) in cases {
            let m = msg(body);
            assert!(m.starts_with(want), "{body}: {m}");
        }
    }
}
