//! The image catalog as bty-web serves it: which URLs can be added, and the `catalog.toml` and
//! `/images` views. Canonical srcs, references and formats are `crate::catalog`'s.

use crate::web::app::App;
use crate::web::app::internal;
use crate::web::cache::Cache;
use crate::web::db::CatalogEntry;
use crate::web::http::{Req, Resp};

/// Why an image URL cannot be added.
pub fn check_image_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("image_url {url:?}: expected an http(s):// or oras:// URL"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" | "oras" if host.is_empty() => Err(format!("image_url {url:?}: no host")),
        "http" | "https" | "oras" => Ok(()),
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

/// Where a flash fetches the entry through this server's image cache (`host` from
/// `guard::script_host`), when the cache is on and can serve it; `None` means from its origin.
pub fn cache_url(app: &App, host: &str, e: &CatalogEntry) -> Option<String> {
    let cache = app.cache.as_ref()?;
    let sha = e.disk_image_sha.as_deref()?;
    let host = crate::web::guard::host_for_scripts(host)?;
    cache.can_serve(e).then(|| Cache::url(host, sha, &e.name))
}

/// Whether the entry's bytes are in the image cache.
pub fn is_cached(app: &App, e: &CatalogEntry) -> bool {
    match (&app.cache, &e.disk_image_sha) {
        (Some(cache), Some(sha)) => cache.is_cached(sha),
        _ => false,
    }
}

/// The spec's `ImageEntry` for `GET /images`: `url` is where a flash fetches it (the cache
/// when it can serve the entry), `cached` whether its bytes are on this server's disk.
pub fn image_entry(app: &App, host: &str, e: &CatalogEntry) -> serde_json::Value {
    serde_json::json!({
        "name": e.name,
        "format": e.format,
        "size_bytes": e.size_bytes,
        "url": cache_url(app, host, e).unwrap_or_else(|| e.src.clone()),
        "ref": e.bty_image_ref,
        "sha_short": e.disk_image_sha.as_ref().map(|s| s[..s.len().min(12)].to_string()),
        "cached": is_cached(app, e),
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
    match add_entry(app, NewEntry { image_url: url, sha_url, name, description }) {
        Ok((e, true)) => Resp::json(201, &e),
        Ok((e, false)) => Resp::json(200, &e),
        Err(resp) => resp,
    }
}

/// What an operator asks to add to the catalog (JSON API or the UI form).
#[derive(Debug, Clone, Default)]
pub struct NewEntry {
    pub image_url: String,
    pub sha_url: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
}

/// Largest sha256 manifest fetched for `sha_url`.
const MANIFEST_MAX: u64 = 1 << 20;

/// Adds an entry: an http(s) URL is stored as given (its digest taken from the `sha_url`
/// manifest when there is one, which must list the file); an oras:// reference is resolved now
/// and its image layer's digest, title and size become the entry's pin, name and size (the
/// manifest is authoritative, so `sha_url` is not used). The entry and whether it is new, or
/// the response to send.
pub fn add_entry(app: &App, n: NewEntry) -> Result<(CatalogEntry, bool), Resp> {
    let url = n.image_url.trim().to_string();
    check_image_url(&url).map_err(|msg| Resp::error(422, &msg))?;
    let image_ref = crate::catalog::image_ref(&url)
        .map_err(|e| Resp::error(422, &format!("image_url {url:?}: {e}")))?;
    let given_name = n.name.filter(|s| !s.trim().is_empty());
    let (name, sha, size, sha_url) = if url.to_ascii_lowercase().starts_with("oras://") {
        let r = crate::source::oras::resolve(&url)
            .map_err(|e| Resp::error(422, &format!("image_url: resolving {url}: {e}")))?;
        let sha = r.layer_digest.strip_prefix("sha256:").unwrap_or(&r.layer_digest).to_string();
        (given_name.unwrap_or(r.name), Some(sha), i64::try_from(r.layer_size).ok(), None)
    } else {
        let file = name_of(&url);
        let sha = match &n.sha_url {
            None => None,
            Some(m) => Some(digest_from_manifest(m, &file)?),
        };
        (given_name.unwrap_or(file), sha, None, n.sha_url)
    };
    let entry = CatalogEntry {
        bty_image_ref: image_ref,
        format: crate::catalog::format_of(&name),
        name,
        src: url,
        disk_image_sha: sha,
        size_bytes: size,
        sha_url,
        description: n.description,
        added_at: crate::units::now_iso8601(),
    };
    let (e, new) = app.db.add_catalog_entry(&entry).map_err(internal)?;
    if new {
        app.db.event("catalog.added", Some(&e.bty_image_ref), &format!("{} added", e.src), None);
    }
    Ok((e, new))
}

/// Fetches a sha256 manifest and returns the digest it gives for `file`.
fn digest_from_manifest(manifest_url: &str, file: &str) -> Result<String, Resp> {
    let lower = manifest_url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(Resp::error(
            422,
            &format!("sha_url {manifest_url:?}: expected an http(s):// URL"),
        ));
    }
    let bytes = crate::source::http::get_bytes(manifest_url, MANIFEST_MAX).map_err(|e| {
        let label = crate::catalog::source_label(manifest_url);
        Resp::error(422, &format!("sha_url {label}: {}", fetch_failure(&label, &e)))
    })?;
    let text = String::from_utf8_lossy(&bytes);
    find_digest(&text, file).ok_or_else(|| {
        Resp::error(
            422,
            &format!("sha_url {manifest_url}: no sha256 listed for {file} (expected a line \"<64 hex>  {file}\")"),
        )
    })
}

/// The sha256 a manifest lists for `file`: GNU lines (`<hex>  name`, `<hex> *name`), BSD lines
/// (`SHA256 (name) = <hex>`), a listed path whose last segment is `file`, or a manifest that is
/// one bare digest. Lower-case hex.
pub fn find_digest(text: &str, file: &str) -> Option<String> {
    let is_hex = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    let names = |listed: &str| {
        let listed = listed.trim();
        listed == file || listed.rsplit('/').next() == Some(file)
    };
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    for l in &lines {
        if let Some(rest) = l.strip_prefix("SHA256 (") {
            if let Some((name, hex)) = rest.split_once(") = ") {
                if names(name) && is_hex(hex.trim()) {
                    return Some(hex.trim().to_ascii_lowercase());
                }
            }
            continue;
        }
        if let Some((hex, name)) = l.split_once(char::is_whitespace) {
            let name = name.trim_start().trim_start_matches('*');
            if is_hex(hex) && names(name) {
                return Some(hex.to_ascii_lowercase());
            }
        }
    }
    match lines.as_slice() {
        [one] if is_hex(one) => Some(one.to_ascii_lowercase()),
        _ => None,
    }
}

/// Why a catalog source cannot be imported by the server: only http(s):// and oras:// with a
/// host. Never a path or file:// (the server would read its own files for the client).
pub fn check_source(source: &str) -> Result<(), String> {
    let label = crate::catalog::source_label(source);
    let remote = check_image_url(source).is_ok();
    if remote {
        return Ok(());
    }
    Err(format!(
        "source {label:?}: expected an http(s):// or oras:// URL with a host; the server never \
         reads a path or file:// for a client (upload the catalog file instead)"
    ))
}

/// Fetches and parses a catalog from an http(s):// or oras:// source. The error says what
/// went wrong without quoting the response (which could be any document the server can reach):
/// the HTTP status, the kind of network error, or where the TOML is wrong.
pub fn load_remote(source: &str) -> Result<crate::catalog::Catalog, String> {
    check_source(source)?;
    let label = crate::catalog::source_label(source);
    let bytes = crate::catalog::fetch_remote(source, crate::catalog::MAX_BYTES)
        .map_err(|e| format!("fetching catalog {label}: {}", fetch_failure(&label, &e)))?;
    crate::catalog::load_untrusted(&bytes, &label).map_err(|e| e.to_string())
}

/// What kind of failure a fetch of `label` was, in words of our own: an error can carry
/// text of the response (a registry's error message), which only the server's log gets.
fn fetch_failure(label: &str, e: &crate::error::Error) -> String {
    let text = e.to_string();
    crate::warn!("fetching {label}: {text}");
    let status = text.match_indices("HTTP ").find_map(|(i, _)| {
        let code = text.get(i + 5..i + 8)?;
        code.bytes().all(|b| b.is_ascii_digit()).then_some(code)
    });
    if let Some(code) = status {
        format!("the server answered HTTP {code}")
    } else if text.contains("larger than") {
        "the response is larger than allowed".to_string()
    } else if let Some(kind) = e.io_kind() {
        format!("{kind}")
    } else {
        "it failed (the cause is in the server's log)".to_string()
    }
}

/// `POST /catalog/import?source=URL` (http(s):// or oras://, a bty-web `/catalog.toml`
/// included), or with the catalog itself as the body (`Content-Type: application/toml`):
/// adds every entry as metadata; no image bytes are fetched. Idempotent: entries whose src is
/// already in the catalog are skipped.
pub fn import(app: &App, req: &Req) -> Resp {
    let source = req.param("source").map(str::trim).filter(|s| !s.is_empty());
    let loaded = match (source, req.body.is_empty()) {
        (Some(_), false) => {
            Err("give either ?source= (an http(s):// or oras:// URL) or the catalog as the body, \
             not both"
                .to_string())
        }
        (None, true) => Err("source: required query parameter (an http(s):// or oras:// URL), \
                             or send the catalog as the request body"
            .to_string()),
        (Some(src), true) => load_remote(src),
        (None, false) => {
            let ctype = req.header("content-type").unwrap_or("");
            let mime = ctype.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case("application/toml") {
                return Resp::error(
                    415,
                    "a catalog sent as the body needs Content-Type: application/toml",
                );
            }
            crate::catalog::load_untrusted(&req.body, "(request body)").map_err(|e| e.to_string())
        }
    };
    match loaded {
        Ok(cat) => add_all(app, &cat),
        Err(msg) => Resp::error(422, &msg),
    }
}

/// Imports a catalog uploaded from the Images page.
pub fn import_upload(app: &App, bytes: &[u8], file_name: &str) -> Resp {
    let label = format!("(uploaded file {file_name:?})");
    match crate::catalog::load_untrusted(bytes, &label) {
        Ok(cat) => add_all(app, &cat),
        Err(e) => Resp::error(422, &e.to_string()),
    }
}

/// Adds every entry of a loaded catalog; the 200 answer of an import.
fn add_all(app: &App, cat: &crate::catalog::Catalog) -> Resp {
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
    app.db.event(
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
        assert!(check_image_url("oras://ghcr.io/o/r:latest").is_ok());
        assert!(check_image_url("oras:///r:latest").is_err());
    }

    #[test]
    fn digests_from_manifests() {
        let (a, b) = ("a".repeat(64), "B".repeat(64));
        let gnu = format!("{a}  other.img\n{b} *debian.img.zst\n");
        assert_eq!(find_digest(&gnu, "debian.img.zst"), Some("b".repeat(64)));
        assert_eq!(find_digest(&gnu, "missing.img"), None);
        let bsd = format!("SHA256 (images/debian.img.zst) = {a}\n");
        assert_eq!(find_digest(&bsd, "debian.img.zst"), Some(a.clone()));
        assert_eq!(find_digest(&format!("{a}\n"), "anything.img"), Some(a.clone()));
        assert_eq!(find_digest(&format!("{a}\n{a}\n"), "anything.img"), None);
        assert_eq!(find_digest("nothex  debian.img.zst\n", "debian.img.zst"), None);
        assert_eq!(find_digest(&format!("{a}  ./debian.img.zst"), "debian.img.zst"), Some(a));
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
