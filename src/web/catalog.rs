//! The image catalog as bty-web serves it: which URLs can be added, and the `catalog.toml` and
//! `/images` views. Canonical srcs, references and formats are `crate::catalog`'s.

use crate::web::db::CatalogEntry;
use crate::web::http::{Req, Resp};
use crate::web::routes::{App, internal};

/// Why an image URL cannot be added.
pub fn check_image_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("image_url {url:?}: expected an http(s):// or oras:// URL"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" | "oras" if host.is_empty() => Err(format!("image_url {url:?}: no host")),
        "http" | "https" => Ok(()),
        "oras" => Err("oras:// entries are resolved to their layer digest when added, which needs the OCI client of the sources work; add the http(s) URL of the blob for now".into()),
        other => Err(format!("image_url: {other}:// is not supported (http, https or oras)")),
    }
}

/// The last path segment of a URL, as the entry's default name.
pub fn name_of(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("image").to_string()
}

/// `catalog.toml` (version 1) of the entries.
pub fn to_toml(entries: &[CatalogEntry]) -> String {
    let mut out = String::from("version = 1\n");
    for e in entries {
        out.push_str("\n[[images]]\n");
        out.push_str(&format!("name = {}\n", toml_str(&e.name)));
        out.push_str(&format!("src = {}\n", toml_str(&e.src)));
        if let Some(sha) = &e.disk_image_sha {
            out.push_str(&format!("sha256 = {}\n", toml_str(sha)));
        }
        out.push_str(&format!("format = {}\n", toml_str(&e.format)));
        if let Some(n) = e.size_bytes {
            out.push_str(&format!("size_bytes = {n}\n"));
        }
    }
    out
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The spec's `ImageEntry` for `GET /images`.
pub fn image_entry(e: &CatalogEntry) -> serde_json::Value {
    serde_json::json!({
        "name": e.name,
        "format": e.format,
        "size_bytes": e.size_bytes,
        "url": e.src,
        "ref": e.bty_image_ref,
        "sha_short": e.disk_image_sha.as_ref().map(|s| s[..s.len().min(12)].to_string()),
        "cached": false,
    })
}

/// `POST /catalog/entries`: `{"image_url", "sha_url", "name", "description"}`.
pub fn add(app: &App, req: &Req) -> Resp {
    let v: serde_json::Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => return Resp::error(422, &format!("body is not valid JSON: {e}")),
    };
    let Some(obj) = v.as_object() else { return Resp::error(422, "body: expected a JSON object") };
    const KEYS: [&str; 4] = ["image_url", "sha_url", "name", "description"];
    if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Resp::error(
            422,
            &format!("{k}: unknown field (expected one of: {})", KEYS.join(", ")),
        );
    }
    let text = |k: &str, max: usize| -> Result<Option<String>, Resp> {
        match obj.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s))
                if s.len() <= max && !s.chars().any(char::is_control) =>
            {
                Ok(Some(s.trim().to_string()))
            }
            Some(_) => Err(Resp::error(
                422,
                &format!("{k}: expected a string of at most {max} characters"),
            )),
        }
    };
    let (url, sha_url, name, description) = match (
        text("image_url", 2048),
        text("sha_url", 2048),
        text("name", 255),
        text("description", 1000),
    ) {
        (Ok(Some(u)), Ok(s), Ok(n), Ok(d)) => (u, s, n, d),
        (Ok(None), ..) => return Resp::error(422, "image_url: required"),
        (Err(r), ..) | (_, Err(r), ..) | (_, _, Err(r), _) | (_, _, _, Err(r)) => return r,
    };
    if let Err(msg) = check_image_url(&url) {
        return Resp::error(422, &msg);
    }
    if sha_url.is_some() {
        return Resp::error(
            422,
            "sha_url: fetching a digest manifest needs the HTTP client of the sources work; add the entry without it for now",
        );
    }
    let image_ref = match crate::catalog::image_ref(&url) {
        Ok(r) => r,
        Err(e) => return Resp::error(422, &format!("image_url {url:?}: {e}")),
    };
    let name = name.filter(|n| !n.is_empty()).unwrap_or_else(|| name_of(&url));
    let entry = CatalogEntry {
        bty_image_ref: image_ref,
        format: crate::catalog::format_of(&name),
        name,
        src: url,
        disk_image_sha: None,
        size_bytes: None,
        sha_url: None,
        description,
        added_at: crate::units::now_iso8601(),
    };
    match app.db.add_catalog_entry(&entry) {
        Ok((e, true)) => {
            let _ = app.db.add_event(
                "catalog.added",
                Some(&e.bty_image_ref),
                &format!("{} added", e.src),
                None,
            );
            Resp::json(201, &e)
        }
        Ok((e, false)) => Resp::json(200, &e),
        Err(e) => internal(e),
    }
}

/// `POST /catalog/import?source=SRC`: adds every entry of a catalog (a path on the server,
/// file://, http(s)://, a bty-web `/catalog.toml` or oras://) as metadata; no image bytes are
/// fetched. Idempotent: entries whose src is already in the catalog are skipped.
pub fn import(app: &App, req: &Req) -> Resp {
    let Some(source) = req.param("source").map(str::trim).filter(|s| !s.is_empty()) else {
        return Resp::error(422, "source: required query parameter");
    };
    let cat = match crate::catalog::load_source(source, &crate::catalog::fetch_remote) {
        Ok(c) => c,
        Err(e) => return Resp::error(422, &e.to_string()),
    };
    let (mut imported, mut skipped, mut errors) = (0u64, 0u64, Vec::new());
    for e in &cat.entries {
        let entry = CatalogEntry {
            bty_image_ref: e.image_ref.clone(),
            src: e.src.clone(),
            disk_image_sha: e.sha256.clone(),
            name: e.name.clone(),
            format: e.format.clone(),
            size_bytes: e.size_bytes.and_then(|n| i64::try_from(n).ok()),
            sha_url: None,
            description: e.description.clone(),
            added_at: crate::units::now_iso8601(),
        };
        match app.db.add_catalog_entry(&entry) {
            Ok((_, true)) => imported += 1,
            Ok((_, false)) => skipped += 1,
            Err(err) => {
                crate::error!("{err}");
                errors.push(format!("{}: {err}", e.name));
            }
        }
    }
    let msg = format!(
        "imported {imported}, skipped {skipped}, {} errors from {}",
        errors.len(),
        cat.source
    );
    crate::info!("{msg}");
    let _ = app.db.add_event(
        "catalog.imported",
        None,
        &msg,
        Some(serde_json::json!({ "source": cat.source, "imported": imported, "skipped": skipped, "warnings": cat.warnings })),
    );
    Resp::json(
        200,
        &serde_json::json!({ "imported": imported, "skipped": skipped, "errors": errors, "warnings": cat.warnings }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls() {
        assert_eq!(name_of("https://h/p/debian.img.xz?sig=1"), "debian.img.xz");
        assert!(check_image_url("https://h/x.img").is_ok());
        assert!(check_image_url("https:///x.img").is_err());
        assert!(check_image_url("ftp://h/x").is_err());
        assert!(check_image_url("/local/file").is_err());
        assert!(check_image_url("oras://ghcr.io/o/r:latest").unwrap_err().contains("oras://"));
    }

    #[test]
    fn toml_strings_are_escaped_and_parse_back() {
        let e = CatalogEntry {
            bty_image_ref: "r".into(),
            src: "https://h/a \"b\"\\c\n.img".into(),
            disk_image_sha: Some("ab".repeat(32)),
            name: "<script>\"x\"".into(),
            format: "img".into(),
            size_bytes: Some(5),
            sha_url: None,
            description: None,
            added_at: String::new(),
        };
        let text = to_toml(std::slice::from_ref(&e));
        let v: toml::Table = toml::from_str(&text).unwrap();
        let img = &v["images"].as_array().unwrap()[0];
        assert_eq!(img["src"].as_str(), Some(e.src.as_str()));
        assert_eq!(img["name"].as_str(), Some(e.name.as_str()));
        assert_eq!(v["version"].as_integer(), Some(1));
        // What bty-web serves is what `bty --catalog` reads.
        let c = crate::catalog::load_bytes(text.as_bytes(), "t", crate::catalog::Origin::Remote)
            .unwrap();
        assert_eq!(c.entries[0].name, e.name);
        assert_eq!(c.entries[0].src, e.src);
        assert_eq!(c.entries[0].sha256, e.disk_image_sha);
        assert_eq!(c.entries[0].size_bytes, Some(5));
    }
}
