//! Inline edits of settings that come from a TOML file: the one line of the file that sets the
//! key is rewritten (the rest of the file, comments included, stays as the operator wrote it;
//! a comment at the end of that one line goes, since telling it from the value needs a parser),
//! the result is checked by loading it as bty-web would, and the file is replaced atomically
//! with its permissions kept. bty-web reads its settings once, so the change applies on restart.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::web::config::{Settings, Source};

/// Longest value accepted from the form.
const MAX_VALUE: usize = 1024;

/// Rewrites `[section] key` in the file it came from; Ok(path of the file) or the reason not.
pub fn edit(settings: &Settings, name: &str, value: &str) -> Result<String, String> {
    let (section, key) = parse_name(name).ok_or_else(|| format!("{name}: not a setting name"))?;
    let Source::File(path) = settings.source(section, key) else {
        return Err(format!("{name} does not come from a TOML file, so it cannot be edited here"));
    };
    if section == "admin" {
        return Err("the password is not edited in the browser; change it in the file".into());
    }
    let value = value.trim();
    if value.len() > MAX_VALUE || value.chars().any(char::is_control) {
        return Err(format!("{name}: at most {MAX_VALUE} characters, no control characters"));
    }
    let text = fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let new = rewrite(&text, section, key, value).ok_or_else(|| {
        format!(
            "{name}: no `{key} = ...` line under [{section}] in {}; edit it by hand",
            path.display()
        )
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".bty-edit-{}.toml", std::process::id()));
    let result = (|| {
        fs::write(&tmp, &new).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        check(&tmp, section, key, value)?;
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode();
            fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
                .map_err(|e| format!("setting the mode of {}: {e}", tmp.display()))?;
        }
        fs::rename(&tmp, path).map_err(|e| format!("replacing {}: {e}", path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| path.display().to_string())
}

/// `[section] key` as the settings rows name it.
fn parse_name(name: &str) -> Option<(&str, &str)> {
    let (section, key) = name.strip_prefix('[')?.split_once("] ")?;
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    (ok(section) && ok(key)).then_some((section, key))
}

/// The file with the line `key = ...` of `[section]` replaced; None when there is no such line.
fn rewrite(text: &str, section: &str, key: &str, value: &str) -> Option<String> {
    let literal =
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) && value.len() < 19 {
            value.to_string()
        } else {
            format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
        };
    let mut out = String::with_capacity(text.len() + literal.len());
    let mut current = "";
    let mut done = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.trim_start_matches('[').split(']').next().unwrap_or("").trim();
        } else if !done && current == section {
            let name = t.split('=').next().unwrap_or("").trim().trim_matches('"');
            if t.contains('=') && name == key {
                let indent = &line[..line.len() - line.trim_start().len()];
                let eol = if line.ends_with("\r\n") {
                    "\r\n"
                } else if line.ends_with('\n') {
                    "\n"
                } else {
                    ""
                };
                out.push_str(&format!("{indent}{key} = {literal}{eol}"));
                done = true;
                continue;
            }
        }
        out.push_str(line);
    }
    done.then_some(out)
}

/// Loads the candidate file alone as bty-web would, so a value it would refuse at start
/// (a port that is not a number) is refused now.
fn check(file: &Path, section: &str, key: &str, value: &str) -> Result<(), String> {
    let env = [("BTY_CONFIG_FILE".to_string(), file.display().to_string())].into_iter().collect();
    let s = Settings::load(&env, &[]).map_err(|e| e.to_string())?;
    if s.get(section, key) != value {
        return Err(format!("[{section}] {key} did not read back as {value:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_changes_and_the_rest_stays() {
        let text = "# lab settings\n[server]\nport = 8080 # the usual\n\n[boot]\n  release_tag = \"v1\"\nkernel = \"k\"\n";
        assert_eq!(
            rewrite(text, "boot", "release_tag", "v2 \"q\"").unwrap(),
            "# lab settings\n[server]\nport = 8080 # the usual\n\n[boot]\n  release_tag = \"v2 \\\"q\\\"\"\nkernel = \"k\"\n"
        );
        assert_eq!(
            rewrite(text, "server", "port", "9000").unwrap(),
            "# lab settings\n[server]\nport = 9000\n\n[boot]\n  release_tag = \"v1\"\nkernel = \"k\"\n"
        );
        assert_eq!(rewrite(text, "server", "host", "x"), None);
        assert_eq!(rewrite(text, "paths", "port", "1"), None, "only in its own section");
        assert_eq!(parse_name("[server] port"), Some(("server", "port")));
        assert_eq!(parse_name("[a b] c"), None);
    }
}
