//! The Settings page's changes: each saved into `settings.toml` in the state dir, a file
//! bty-web owns, layered over `bty.toml` (which stays the operator's: it may be read-only, as
//! the compose and Quadlet stacks mount it) and under the environment and the flags. A change
//! is checked as bty-web would load it, the file is replaced atomically, and a setting bty-web
//! reads where it uses it is put in force at once; the others at the next start.

use std::fs;
use std::path::Path;

use crate::web::config::Settings;

/// Longest value accepted from the form.
const MAX_VALUE: usize = 1024;

/// What a save did.
pub struct Saved {
    /// The file it went to.
    pub file: String,
    /// The settings with the change, when it applies at once (else None: at the next start).
    pub now: Option<Settings>,
}

/// Saves `[section] key` (the settings rows' name) = `value`; or the reason not.
pub fn save(settings: &Settings, name: &str, value: &str) -> Result<Saved, String> {
    let (section, key) = parse_name(name).ok_or_else(|| format!("{name}: not a setting name"))?;
    settings.editable(section, key)?;
    let value = value.trim();
    if value.len() > MAX_VALUE || value.chars().any(char::is_control) {
        return Err(format!("{name}: at most {MAX_VALUE} characters, no control characters"));
    }
    // Checked against what is in force, then against a fresh load of everything on disk (the
    // page's earlier saves that wait for a restart included).
    let changed = settings.with_saved(section, key, value).map_err(|e| e.to_string())?;
    let path = settings.saved_path();
    let old = match fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let mut table: toml::Table = match &old {
        Some(t) => toml::from_str(t).map_err(|e| {
            format!("{} is not valid TOML ({e}); fix or remove it first", path.display())
        })?,
        None => toml::Table::new(),
    };
    let inner =
        table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(inner) = inner.as_table_mut() else {
        return Err(format!("{}: [{section}] is not a table; fix or remove it", path.display()));
    };
    inner.insert(key.to_string(), toml::Value::String(value.to_string()));
    let text = encode(&table).map_err(|e| format!("{}: {e}; fix or remove it", path.display()))?;
    write_atomic(&path, &text)?;
    if let Err(e) = settings.reload() {
        // The change is fine alone, yet makes the whole refuse to load: put the file back.
        let undo = match &old {
            Some(t) => write_atomic(&path, t),
            None => fs::remove_file(&path).map_err(|e| e.to_string()),
        };
        return Err(format!(
            "{name}: bty-web would not start with it: {e}{}",
            undo.err().map_or(String::new(), |u| format!(" (and restoring the file failed: {u})"))
        ));
    }
    let now = Settings::applies_now(section, key).unwrap_or(false).then_some(changed);
    Ok(Saved { file: path.display().to_string(), now })
}

/// The file's text: `[section]` tables of `key = "value"` strings, as `read_saved` takes them.
fn encode(table: &toml::Table) -> Result<String, String> {
    let mut out = String::from(
        "# Saved by bty-web's Settings page; layered over bty.toml, under the environment.\n",
    );
    let bare = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    for (section, inner) in table {
        let inner =
            inner.as_table().ok_or_else(|| format!("{section} is not a [section] table"))?;
        if let Some(odd) = std::iter::once(section).chain(inner.keys()).find(|n| !bare(n)) {
            return Err(format!("{odd:?} is not a setting name"));
        }
        out.push_str(&format!("\n[{section}]\n"));
        for (key, value) in inner {
            let v = value.as_str().ok_or_else(|| format!("[{section}] {key} is not a string"))?;
            let mut quoted = String::with_capacity(v.len() + 2);
            for c in v.chars() {
                match c {
                    '"' => quoted.push_str("\\\""),
                    '\\' => quoted.push_str("\\\\"),
                    c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", c as u32)),
                    c => quoted.push(c),
                }
            }
            out.push_str(&format!("{key} = \"{quoted}\"\n"));
        }
    }
    Ok(out)
}

fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".bty-settings-{}.toml", std::process::id()));
    let result =
        fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display())).and_then(
            |()| fs::rename(&tmp, path).map_err(|e| format!("replacing {}: {e}", path.display())),
        );
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `[section] key` as the settings rows name it.
pub(super) fn parse_name(name: &str) -> Option<(&str, &str)> {
    let (section, key) = name.strip_prefix('[')?.split_once("] ")?;
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    (ok(section) && ok(key)).then_some((section, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn settings(dir: &Path, extra: &[(&str, &str)]) -> Settings {
        let mut env: BTreeMap<String, String> =
            [("BTY_PATHS_STATE_DIR".to_string(), dir.display().to_string())].into();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Settings::load(&env, &[]).unwrap()
    }

    #[test]
    fn saves_layer_over_the_files_apply_when_they_can_and_refuse_what_they_must() {
        let dir = std::env::temp_dir().join(format!("bty-config-edit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let s = settings(&dir, &[("BTY_SERVER_PORT", "9000")]);

        // Applies at once: the settings in force come back with it.
        let saved = save(&s, "[boot] release_tag", " v9 ").unwrap();
        assert!(saved.file.ends_with("settings.toml"));
        let now = saved.now.expect("release_tag applies at once");
        assert_eq!(now.get("boot", "release_tag"), "v9");
        // At the next start: saved, not in force; a new load sees both.
        let saved = save(&now, "[cache] max_gib", "2").unwrap();
        assert!(saved.now.is_none());
        let next = settings(&dir, &[("BTY_SERVER_PORT", "9000")]);
        assert_eq!(next.get("cache", "max_gib"), "2");
        assert_eq!(next.get("boot", "release_tag"), "v9");
        assert!(next.source("boot", "release_tag").to_string().starts_with("saved "));

        // Refused, the file unchanged.
        let before = fs::read_to_string(dir.join("settings.toml")).unwrap();
        for (name, value, why) in [
            ("[server] port", "9100", "set by the environment (BTY_SERVER_PORT)"),
            ("[admin] password", "x", "the password is not changed in the browser"),
            ("[paths] state_dir", "/tmp", "holds the page's own saved settings"),
            ("[paths] boot_dir", "/etc", "a directory bty-web serves files from"),
            ("[boot] ipxe_dir", "/etc", "a directory bty-web serves files from"),
            ("[cache] dir", "/", "a directory bty-web serves files from"),
            ("[cache] max_gib", "lots", "invalid [cache] max_gib"),
            ("[boot] kernel", "../vmlinuz", "invalid [boot] kernel"),
            ("[nope] x", "1", "not a setting bty-web knows"),
            ("[boot] release_tag", "a\nb", "no control characters"),
            ("boot.release_tag", "v1", "not a setting name"),
        ] {
            let e = save(&next, name, value).err().unwrap_or_default();
            assert!(e.contains(why), "{name}: {e}");
        }
        assert_eq!(fs::read_to_string(dir.join("settings.toml")).unwrap(), before);

        // Quotes and backslashes survive the file.
        let saved = save(&next, "[boot] release_url", r#"/srv/a "b" \c"#).unwrap();
        assert_eq!(saved.now.unwrap().get("boot", "release_url"), r#"/srv/a "b" \c"#);
        assert_eq!(settings(&dir, &[]).get("boot", "release_url"), r#"/srv/a "b" \c"#);

        // A hand edit that the page could not have made is ignored at load, with the reason.
        fs::write(dir.join("settings.toml"), "[admin]\npassword = \"x\"\n").unwrap();
        let s = settings(&dir, &[]);
        assert!(s.ignored.iter().any(|i| i.contains("password")), "{:?}", s.ignored);
        assert_ne!(s.get("admin", "password"), "x");
        fs::remove_dir_all(&dir).unwrap();
    }
}
