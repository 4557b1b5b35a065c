//! Image catalogs (TOML, version 1): parsing and validation with errors that name the source, the
//! entry and the field; the canonical form of a `src` and its `bty_image_ref`; reading a catalog
//! from a local path or file:// URL, and from remote sources through a fetch function.

pub mod root;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Context, Error, Result};

/// The catalog schema version this bty reads.
pub const VERSION: i64 = 1;

/// Largest catalog read from any source. Hundreds of entries fit in a few KiB, so 4 MiB is roomy,
/// while a wrong URL (an image instead of its catalog) or a hostile server cannot fill memory.
pub const MAX_BYTES: u64 = 4 << 20;

/// Fetches a remote catalog's bytes: called with an http(s):// or oras:// source and the most
/// bytes to return (a longer answer may be cut at one byte more, or refused).
pub type Fetch<'a> = &'a dyn Fn(&str, u64) -> Result<Vec<u8>>;

/// Where a catalog came from, which decides whether its entries may point at local files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A file on this machine (a path or a file:// URL).
    Local,
    /// http(s)://, oras:// or a bty-web `/catalog.toml`.
    Remote,
}

/// One image of a catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Display name, unique within the catalog (usually the file name).
    pub name: String,
    /// Where the bytes are: http(s)://, oras:// or (local catalogs only) file://.
    pub src: String,
    /// Pinned sha256 of the bytes at `src`, lower-case hex.
    pub sha256: Option<String>,
    /// Catalog format ("img.gz", "qcow2", ...): as given, else from the name.
    pub format: String,
    /// Size of the bytes at `src`, when the publisher gave it.
    pub size_bytes: Option<u64>,
    /// Free text for people.
    pub description: Option<String>,
    /// CPU architecture, when the publisher gave it.
    pub arch: Option<String>,
    /// `bty_image_ref`: sha256 of the canonical src.
    #[serde(rename = "ref")]
    pub image_ref: String,
}

/// A parsed and validated catalog.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// The source as given (credentials in a URL removed), for messages.
    pub source: String,
    /// Local file or remote.
    pub origin: Origin,
    /// The images, in catalog order.
    pub entries: Vec<Entry>,
    /// Keys this bty does not know: ignored, so that newer catalogs still load, but reported
    /// because a misspelt `sha256` would otherwise silently unpin an image.
    pub warnings: Vec<String>,
}

/// Reads and validates a catalog from a path, a file:// URL, or through `fetch` an http(s)://
/// or oras:// source (a bty-web `/catalog.toml` is an http(s) URL).
pub fn load_source(src: &str, fetch: Fetch<'_>) -> Result<Catalog> {
    let (bytes, origin) = fetch_bytes(src, fetch)?;
    load_bytes(&bytes, &source_label(src), origin)
}

/// The raw bytes of a catalog, at most `MAX_BYTES`, and where they came from.
pub fn fetch_bytes(src: &str, fetch: Fetch<'_>) -> Result<(Vec<u8>, Origin)> {
    let label = source_label(src);
    let (bytes, origin) = match locate(src)? {
        Location::Local(path) => (read_local(&path)?, Origin::Local),
        Location::Remote => {
            let bytes =
                fetch(src, MAX_BYTES).with_context(|| format!("fetching catalog {label}"))?;
            (bytes, Origin::Remote)
        }
    };
    check_size(&bytes, &label)?;
    Ok((bytes, origin))
}

/// The fetcher the binaries hand to `load_source`: the one place where remote catalogs meet the
/// http(s) and oras:// clients. For http(s) (a bty-web `/catalog.toml` included) it returns the
/// response body, for oras:// the bytes of the artifact's TOML layer (digest checked); more than
/// `limit` bytes is refused.
pub fn fetch_remote(src: &str, limit: u64) -> Result<Vec<u8>> {
    crate::source::fetch_document(src, limit)
}

/// Parses and validates catalog text. `source` names it in messages, which quote the values
/// that are wrong.
pub fn load_bytes(bytes: &[u8], source: &str, origin: Origin) -> Result<Catalog> {
    parse(bytes, source, origin, true)
}

/// Parses and validates a catalog that a server fetched or was sent for a client: checked as
/// remote, and no message or warning quotes any of its text (a line, a key, a value), so that
/// a client cannot read a document through the errors; positions, entry numbers and field
/// names say where it is wrong.
pub fn load_untrusted(bytes: &[u8], source: &str) -> Result<Catalog> {
    parse(bytes, source, Origin::Remote, false)
}

/// `quote`: whether messages may show the catalog's own text.
fn parse(bytes: &[u8], source: &str, origin: Origin, quote: bool) -> Result<Catalog> {
    let fail = |msg: String| Error::msg(format!("catalog {source}: {msg}"));
    check_size(bytes, source)?;
    let text = std::str::from_utf8(bytes).map_err(|e| {
        fail(format!("not UTF-8 text (invalid byte at offset {})", e.valid_up_to()))
    })?;
    let top: toml::Table = toml::from_str(text).map_err(|e| fail(toml_error(text, &e, quote)))?;

    match top.get("version") {
        None => return Err(fail("version: missing (a catalog starts with `version = 1`)".into())),
        Some(toml::Value::Integer(VERSION)) => {}
        Some(toml::Value::Integer(v)) => {
            let v = if quote { format!("{v} ") } else { String::new() };
            return Err(fail(format!(
                "version: {v}is not supported (this bty reads version {VERSION})"
            )));
        }
        Some(v) => {
            return Err(fail(format!(
                "version: expected the integer {VERSION}, got {}",
                a_type(v)
            )));
        }
    }
    let images: &[toml::Value] = match top.get("images") {
        None => &[],
        Some(toml::Value::Array(a)) => a,
        Some(v) => {
            return Err(fail(format!(
                "images: expected an array of tables ([[images]]), got {}",
                a_type(v)
            )));
        }
    };
    let mut warnings: Vec<String> = top
        .keys()
        .filter(|k| !matches!(k.as_str(), "version" | "images"))
        .map(|k| match quote {
            true => format!("catalog {source}: unknown key {k:?} ignored"),
            false => format!("catalog {source}: an unknown key ignored"),
        })
        .collect();

    let mut entries = Vec::with_capacity(images.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, v) in images.iter().enumerate() {
        let n = i + 1;
        let toml::Value::Table(t) = v else {
            return Err(fail(format!(
                "images: entry #{n} is {}, expected a table ([[images]])",
                a_type(v)
            )));
        };
        let name = t.get("name").and_then(|v| v.as_str()).filter(|s| !s.trim().is_empty());
        let at = match name {
            Some(name) if quote => format!("entry #{n} ({name:?})"),
            _ => format!("entry #{n}"),
        };
        let entry = parse_entry(t, origin, quote)
            .map_err(|(field, msg)| fail(format!("{at}: {field}: {msg}")))?;
        if let Some(first) = names.insert(entry.name.clone(), n) {
            let name = if quote { format!("{:?} ", entry.name) } else { String::new() };
            return Err(fail(format!("{at}: name: {name}is already the name of entry #{first}")));
        }
        for k in t.keys().filter(|k| !ENTRY_KEYS.contains(&k.as_str())) {
            warnings.push(match quote {
                true => format!("catalog {source}: {at}: unknown field {k:?} ignored"),
                false => format!("catalog {source}: {at}: an unknown field ignored"),
            });
        }
        entries.push(entry);
    }
    if warnings.len() > MAX_WARNINGS {
        let more = warnings.len() - MAX_WARNINGS;
        warnings.truncate(MAX_WARNINGS);
        warnings.push(format!("catalog {source}: {more} more unknown keys ignored"));
    }
    Ok(Catalog { source: source.to_string(), origin, entries, warnings })
}

/// Unknown keys reported one by one; a catalog full of them gets a count for the rest.
const MAX_WARNINGS: usize = 20;

/// The fields of an entry this bty reads.
const ENTRY_KEYS: [&str; 8] =
    ["name", "src", "sha256", "format", "size_bytes", "description", "arch", "ref"];

/// Validates one `[[images]]` table; an error is (field, problem). `quote`: whether a problem
/// may show the value.
fn parse_entry(
    t: &toml::Table,
    origin: Origin,
    quote: bool,
) -> Result<Entry, (&'static str, String)> {
    let name = required_str(t, "name")?;
    let src = required_str(t, "src")?;
    let shown = if quote { format!("{src:?}: ") } else { String::new() };
    if origin == Origin::Remote && scheme_is(&src, "file") {
        return Err((
            "src",
            format!(
                "{shown}file:// sources are not allowed in a remote catalog (they name a file \
                 on the publisher's machine; local images belong in the image root)"
            ),
        ));
    }
    let image_ref = image_ref(&src).map_err(|e| ("src", format!("{shown}{e}")))?;

    let sha256 = match optional_str(t, "sha256")? {
        None => None,
        Some(s) => Some(parse_sha256(s).ok_or_else(|| {
            let got = if quote { format!(", got {s:?}") } else { String::new() };
            ("sha256", format!("expected 64 hex digits (the digest of the bytes at src){got}"))
        })?),
    };
    if let Some(given) = optional_str(t, "ref")? {
        let given = given.trim().to_ascii_lowercase();
        if given != image_ref {
            let shown =
                if quote { format!("{given:?} (src's is {image_ref}) ") } else { String::new() };
            return Err((
                "ref",
                format!(
                    "{shown}does not match src: the publisher canonicalised src differently, \
                     or the entry was edited"
                ),
            ));
        }
    }
    let format = match optional_str(t, "format")? {
        Some(f) if f.trim().is_empty() => return Err(("format", "is empty".into())),
        Some(f) => f.trim().to_string(),
        None => known_format(&name)
            .or_else(|| known_format(last_segment(&src)))
            .unwrap_or_else(|| "raw".into()),
    };
    let size_bytes = match t.get("size_bytes") {
        None => None,
        Some(toml::Value::Integer(n)) => Some(u64::try_from(*n).map_err(|_| {
            let got = if quote { format!(", got {n}") } else { String::new() };
            ("size_bytes", format!("expected a byte count of 0 or more{got}"))
        })?),
        Some(v) => {
            return Err(("size_bytes", format!("expected an integer, got {}", a_type(v))));
        }
    };
    Ok(Entry {
        name,
        src,
        sha256,
        format,
        size_bytes,
        description: optional_str(t, "description")?.map(str::to_string),
        arch: optional_str(t, "arch")?.map(|a| a.trim().to_string()).filter(|a| !a.is_empty()),
        image_ref,
    })
}

fn required_str(t: &toml::Table, key: &'static str) -> Result<String, (&'static str, String)> {
    match optional_str(t, key)? {
        None => Err((key, "missing (every [[images]] entry needs name and src)".into())),
        Some(s) if s.trim().is_empty() => Err((key, "is empty".into())),
        Some(s) => Ok(s.trim().to_string()),
    }
}

fn optional_str<'t>(
    t: &'t toml::Table,
    key: &'static str,
) -> Result<Option<&'t str>, (&'static str, String)> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(v) => Err((key, format!("expected a string, got {}", a_type(v)))),
    }
}

/// "an integer", "a table", ... for messages.
fn a_type(v: &toml::Value) -> String {
    let t = v.type_str();
    let article = if t.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {t}")
}

/// A 64-digit hex digest in either case, as lower case.
fn parse_sha256(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// A TOML syntax error in one line: where, then (`quote`) the line and what. Also for bty-web's
/// release manifest, whose errors end up in one-line job messages.
pub fn toml_error(text: &str, e: &toml::de::Error, quote: bool) -> String {
    let msg = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let mut start = span.start.min(text.len());
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            if !quote {
                // The parser's message can quote the text too ("duplicate key `x`").
                return format!("invalid TOML at line {line}, column {col}");
            }
            // The line itself, since some messages ("duplicate key") do not say which.
            let text_line = text.lines().nth(line - 1).unwrap_or("").trim();
            let mut shown: String = text_line.chars().take(60).collect();
            if shown.len() < text_line.len() {
                shown.push_str("...");
            }
            let shown: String =
                shown.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
            format!("invalid TOML at line {line}, column {col} (`{shown}`): {msg}")
        }
        None if quote => format!("invalid TOML: {msg}"),
        None => "invalid TOML".to_string(),
    }
}

fn check_size(bytes: &[u8], label: &str) -> Result<()> {
    crate::ensure!(
        bytes.len() as u64 <= MAX_BYTES,
        "catalog {label}: larger than {} ({MAX_BYTES} bytes); refusing to parse (is it an image \
         rather than a catalog?)",
        crate::units::bytes(MAX_BYTES)
    );
    Ok(())
}

/// Where a catalog source points.
enum Location {
    Local(PathBuf),
    Remote,
}

fn locate(src: &str) -> Result<Location> {
    crate::ensure!(!src.is_empty(), "catalog source is empty: give a path or a URL");
    let Some(scheme) = url_scheme(src) else { return Ok(Location::Local(PathBuf::from(src))) };
    let rest = &src[scheme.len() + 3..];
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            crate::ensure!(
                rest.starts_with('/'),
                "catalog {src}: file:// URLs need an absolute path (file:///path/to/catalog.toml)"
            );
            Ok(Location::Local(PathBuf::from(crate::source::percent_decode(rest, false))))
        }
        "http" | "https" => {
            crate::ensure!(
                !authority(rest).is_empty(),
                "catalog {}: the URL has no host",
                source_label(src)
            );
            Ok(Location::Remote)
        }
        "oras" => Ok(Location::Remote),
        other => crate::bail!(
            "catalog {}: {other:?} sources are not supported (a path, file://, http(s):// or \
             oras://)",
            source_label(src)
        ),
    }
}

fn read_local(path: &Path) -> Result<Vec<u8>> {
    let shown = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("reading catalog {shown}"))?;
    let meta = file.metadata().with_context(|| format!("reading catalog {shown}"))?;
    crate::ensure!(!meta.is_dir(), "reading catalog {shown}: is a directory, not a TOML file");
    let mut bytes = Vec::new();
    // One byte over the limit is enough to know it is too large, whatever the file is (a FIFO,
    // /dev/zero).
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading catalog {shown}"))?;
    Ok(bytes)
}

/// The scheme of `s` when it is a URL (`scheme://...`), as written.
fn url_scheme(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    (first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .then_some(scheme)
}

fn scheme_is(s: &str, want: &str) -> bool {
    url_scheme(s.trim()).is_some_and(|sc| sc.eq_ignore_ascii_case(want))
}

/// The part of a URL after `scheme://` up to the path, query or fragment.
fn authority(rest: &str) -> &str {
    rest.split(['/', '?', '#']).next().unwrap_or("")
}

/// A source as shown in messages: any `user:password@` of a URL is left out, so that a token in
/// a catalog URL does not end up in logs.
pub fn source_label(src: &str) -> String {
    let Some(scheme) = url_scheme(src) else { return src.to_string() };
    let rest = &src[scheme.len() + 3..];
    let auth = authority(rest);
    match auth.rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => src.to_string(),
    }
}

/// The canonical form of a src, whose sha256 is its `bty_image_ref`. Surrounding white space is
/// ignored. http(s): scheme and host lower-cased, `user:password@` and the default port dropped,
/// path, query and fragment kept byte for byte. oras://: everything before the `:tag` or
/// `@digest` lower-cased (registries treat host and repository case-insensitively; tags and
/// digests are exact). file://: empty and `.` segments dropped, `..` refused.
pub fn canonical_src(src: &str) -> Result<String> {
    let src = src.trim();
    let Some(scheme) = url_scheme(src) else {
        crate::bail!("not a URL (expected http(s)://, oras:// or file://)")
    };
    let rest = &src[scheme.len() + 3..];
    match scheme.to_ascii_lowercase().as_str() {
        s @ ("http" | "https") => canonical_http(s, rest),
        "oras" => canonical_oras(rest),
        "file" => canonical_file(rest),
        _ => crate::bail!("unsupported scheme (expected http(s)://, oras:// or file://)"),
    }
}

/// The `bty_image_ref` of a src: lower-case hex sha256 of its canonical form.
pub fn image_ref(src: &str) -> Result<String> {
    Ok(crate::hex::encode(&Sha256::digest(canonical_src(src)?.as_bytes())))
}

fn canonical_http(scheme: &str, rest: &str) -> Result<String> {
    let auth = authority(rest);
    let tail = &rest[auth.len()..];
    let hostport = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    // An IPv6 literal keeps its brackets; its colons are not a port separator.
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']').context("an IPv6 host is missing its ']'")?;
            let port = match after {
                "" => "",
                p => p.strip_prefix(':').context("unexpected text after the IPv6 host")?,
            };
            (format!("[{}]", addr.to_ascii_lowercase()), port)
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), p),
            None => (hostport.to_ascii_lowercase(), ""),
        },
    };
    crate::ensure!(host != "[]" && !host.is_empty(), "the URL has no host");
    let default = if scheme == "https" { 443 } else { 80 };
    let port = match port {
        "" => String::new(),
        p => match p.parse::<u16>() {
            Ok(n) if n == default => String::new(),
            Ok(n) => format!(":{n}"),
            Err(_) => crate::bail!("the port is not a number from 0 to 65535"),
        },
    };
    Ok(format!("{scheme}://{host}{port}{tail}"))
}

fn canonical_oras(rest: &str) -> Result<String> {
    // A digest follows '@'; otherwise a tag follows the last ':' after the last '/' (an earlier
    // ':' is a registry port).
    let sep = match rest.find('@') {
        Some(i) => Some(i),
        None => {
            let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
            rest[last_slash..].rfind(':').map(|i| last_slash + i)
        }
    };
    let Some(sep) = sep else {
        crate::bail!(
            "an oras:// reference needs a :tag or an @sha256:digest (oras://host/repo:tag)"
        )
    };
    let (name, locator) = rest.split_at(sep);
    let ok = name.split_once('/').is_some_and(|(host, repo)| !host.is_empty() && !repo.is_empty());
    crate::ensure!(ok, "an oras:// reference needs a registry host and a repository");
    crate::ensure!(locator.len() > 1, "the tag or digest after ':' or '@' is empty");
    Ok(format!("oras://{}{locator}", name.to_ascii_lowercase()))
}

fn canonical_file(rest: &str) -> Result<String> {
    crate::ensure!(!rest.contains('\0'), "the path contains a NUL byte");
    let mut kept = Vec::new();
    for seg in rest.split('/') {
        crate::ensure!(seg != "..", "the path contains a '..' segment");
        if !seg.is_empty() && seg != "." {
            kept.push(seg);
        }
    }
    crate::ensure!(!kept.is_empty(), "the path is empty");
    Ok(format!("file://{}", kept.join("/")))
}

/// The catalog format of a file name ("img.zst", "qcow2", "iso.gz", ...); "raw" when the name
/// says nothing.
pub fn format_of(name: &str) -> String {
    known_format(name).unwrap_or_else(|| "raw".into())
}

/// The catalog format a file name's suffix names, if any.
fn known_format(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    for base in ["img", "raw", "iso"] {
        for comp in ["gz", "zst", "xz", "bz2"] {
            if lower.ends_with(&format!(".{base}.{comp}")) {
                return Some(format!("{base}.{comp}"));
            }
        }
    }
    ["qcow2", "img", "raw", "iso", "gz", "zst", "xz", "bz2"]
        .into_iter()
        .find(|f| lower.ends_with(&format!(".{f}")))
        .map(str::to_string)
}

/// The last path segment of a URL, without query or fragment.
pub fn last_segment(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "catalog.toml";

    fn load(text: &str) -> Result<Catalog> {
        load_bytes(text.as_bytes(), SRC, Origin::Local)
    }

    #[test]
    fn test_vectors() {
        let want = "8901a5e57899d932786eeee7b6db93ec98a0e2c386cf3dc3541f2203a90f9dbe";
        assert_eq!(image_ref("https://example.com/foo.img.gz").unwrap(), want);
        assert_eq!(image_ref("HTTPS://EXAMPLE.com:443/foo.img.gz").unwrap(), want);
        assert_eq!(
            image_ref("oras://ghcr.io/safl/foo:latest").unwrap(),
            "46d9e90aeabee3af9a35976e2afdbdf4875e587523381f1c100165b8f152302e"
        );
    }

    #[test]
    fn canonical_http_forms() {
        let cases = [
            (" HTTPS://Images.Example:443/A/b.img ", "https://images.example/A/b.img"),
            ("http://h:80/x", "http://h/x"),
            ("http://h:443/x", "http://h:443/x"),
            ("https://h:8443/x", "https://h:8443/x"),
            ("http://H:08080/x", "http://h:8080/x"),
            ("http://User:Secret@Host.Example/x", "http://host.example/x"),
            ("https://h/P%41th/?Q=A&b#Frag", "https://h/P%41th/?Q=A&b#Frag"),
            ("https://h", "https://h"),
            ("https://h?x=1", "https://h?x=1"),
            ("https://h:/x", "https://h/x"),
            ("http://[FE80::1]:80/x", "http://[fe80::1]/x"),
            ("http://[::1]:8080", "http://[::1]:8080"),
        ];
        for (src, want) in cases {
            assert_eq!(canonical_src(src).unwrap(), want, "{src}");
        }
        for bad in
            ["https:///x", "https://user@/x", "http://h:99999/x", "http://h:x/", "http://[::1/"]
        {
            assert!(canonical_src(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_oras_and_file_forms() {
        let cases = [
            ("oras://GHCR.io/Safl/Foo:Latest", "oras://ghcr.io/safl/foo:Latest"),
            ("oras://Reg.Example:5000/A/b:v1", "oras://reg.example:5000/a/b:v1"),
            ("oras://R:5000/A@sha256:ABCD", "oras://r:5000/a@sha256:ABCD"),
            ("ORAS://h/r:t", "oras://h/r:t"),
            ("file:///var/lib//./bty/x.img", "file://var/lib/bty/x.img"),
            ("FILE://a/./B.img", "file://a/B.img"),
        ];
        for (src, want) in cases {
            assert_eq!(canonical_src(src).unwrap(), want, "{src}");
        }
        for bad in [
            "oras://ghcr.io/safl/foo",
            "oras://h:5000/repo",
            "oras://ghcr.io:latest",
            "oras:///r:t",
            "oras://h/r:",
            "file:///a/../b",
            "file:///./",
            "file://a\0b",
            "ftp://h/x",
            "/local/path.img",
            "",
        ] {
            assert!(canonical_src(bad).is_err(), "{bad:?}");
        }
        assert_ne!(image_ref("https://h/a.img").unwrap(), image_ref("https://h/A.img").unwrap());
    }

    #[test]
    fn parses_a_full_catalog() {
        let sha = "AB".repeat(32);
        let src = "https://example.com/foo.img.gz";
        let text = format!(
            r#"version = 1

[[images]]
name = "foo.img.gz"
src = "{src}"
sha256 = "{sha}"
size_bytes = 1024
description = "Foo"
arch = "arm64"
ref = "8901A5E57899D932786EEEE7B6DB93EC98A0E2C386CF3DC3541F2203A90F9DBE"

[[images]]
name = "bar"
src = "oras://ghcr.io/safl/foo:latest"
format = "qcow2"

[[images]]
name = "named without suffix"
src = "https://h/d/debian.img.xz?sig=1"
"#
        );
        let c = load(&text).unwrap();
        assert_eq!(c.entries.len(), 3);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let e = &c.entries[0];
        assert_eq!(e.sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!(e.format, "img.gz");
        assert_eq!(e.size_bytes, Some(1024));
        assert_eq!(e.arch.as_deref(), Some("arm64"));
        assert_eq!(e.image_ref, image_ref(src).unwrap());
        assert_eq!(c.entries[1].format, "qcow2");
        assert_eq!(c.entries[1].sha256, None);
        assert_eq!(c.entries[2].format, "img.xz", "from the src when the name has no suffix");
        assert_eq!(load("version = 1").unwrap().entries, vec![]);
    }

    #[test]
    fn unknown_keys_are_warnings() {
        let c = load(
            "version = 1\nextra = true\n[[images]]\nname = \"a\"\nsrc = \"https://h/a\"\nshasum = \"x\"\n",
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("unknown key \"extra\""));
        assert!(c.warnings[1].contains("entry #1 (\"a\"): unknown field \"shasum\""));
        let many: String = (0..30).map(|i| format!("k{i} = 1\n")).collect();
        let c = load(&format!("version = 1\n{many}")).unwrap();
        assert_eq!(c.warnings.len(), MAX_WARNINGS + 1);
        assert!(c.warnings[MAX_WARNINGS].ends_with(": 10 more unknown keys ignored"));
    }

    /// Every validation error names the source, the entry and the field.
    #[test]
    fn errors_name_source_entry_and_field() {
        let one = |body: &str| format!("version = 1\n[[images]]\n{body}\n");
        let ok = "name = \"a.img\"\nsrc = \"https://h/a.img\"";
        let with = |extra: &str| one(&format!("{ok}\n{extra}"));
        let a = "entry #1 (\"a.img\")";
        let cases: Vec<(String, String)> = vec![
            ("[[images]]\nname = \"a\"".into(), "version: missing".into()),
            ("version = 2".into(), "version: 2 is not supported".into()),
            ("version = \"1\"".into(), "version: expected the integer 1, got a string".into()),
            ("version = 1\nimages = 3".into(), "images: expected an array of tables".into()),
            ("version = 1\n[images]\nname = \"a\"".into(), "images: expected an array".into()),
            ("version = 1\nimages = [1]".into(), "images: entry #1 is an integer".into()),
            (one("src = \"https://h/a\""), "entry #1: name: missing".into()),
            (one("name = \" \"\nsrc = \"https://h/a\""), "entry #1: name: is empty".into()),
            (one("name = 5\nsrc = \"https://h/a\""), "entry #1: name: expected a string".into()),
            (one("name = \"a.img\""), format!("{a}: src: missing")),
            (
                one("name = \"a.img\"\nsrc = \"ftp://h/a.img\""),
                format!("{a}: src: \"ftp://h/a.img\": unsupported scheme"),
            ),
            (
                one("name = \"a.img\"\nsrc = \"https:///a.img\""),
                format!("{a}: src: \"https:///a.img\": the URL has no host"),
            ),
            (
                one("name = \"a.img\"\nsrc = \"oras://ghcr.io/o/r\""),
                format!("{a}: src: \"oras://ghcr.io/o/r\": an oras:// reference needs a :tag"),
            ),
            (with("sha256 = \"abc\""), format!("{a}: sha256: expected 64 hex digits")),
            (
                with(&format!("sha256 = \"{}\"", "g".repeat(64))),
                format!("{a}: sha256: expected 64"),
            ),
            (with("sha256 = 12"), format!("{a}: sha256: expected a string, got an integer")),
            (with("size_bytes = -1"), format!("{a}: size_bytes: expected a byte count of 0 or")),
            (with("size_bytes = \"1\""), format!("{a}: size_bytes: expected an integer")),
            (with("format = \"\""), format!("{a}: format: is empty")),
            (with("description = []"), format!("{a}: description: expected a string, got an")),
            (
                format!("{}[[images]]\n{ok}\n", one(ok)),
                "entry #2 (\"a.img\"): name: \"a.img\" is already the name of entry #1".into(),
            ),
            (
                one("name = \"a.img\"\nsrc = \"file:///srv/a.img\""),
                format!(
                    "{a}: src: \"file:///srv/a.img\": file:// sources are not allowed in a remote"
                ),
            ),
            (with(&format!("ref = \"{}\"", "0".repeat(64))), format!("{a}: ref: \"0000")),
        ];
        for (text, want) in cases {
            let e = load_bytes(text.as_bytes(), "https://lab.example/c.toml", Origin::Remote)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("catalog https://lab.example/c.toml: "), "{text}\n=> {e}");
            assert!(e.contains(&want), "{text}\n=> {e}\nwanted: {want}");
        }
        // A file:// src is fine in a local catalog, as long as it stays clear of "..".
        let local = one("name = \"a.img\"\nsrc = \"file:///srv/a.img\"");
        assert_eq!(load(&local).unwrap().entries[0].src, "file:///srv/a.img");
        let e = load(&local.replace("/srv/", "/srv/../")).unwrap_err().to_string();
        let want = "catalog catalog.toml: entry #1 (\"a.img\"): src: \"file:///srv/../a.img\": \
                    the path contains a '..' segment";
        assert_eq!(e, want);
    }

    #[test]
    fn malformed_text_is_refused_with_a_position() {
        let e = load("version = 1\n[[images]]\nname = \"a\nsrc = 1\n").unwrap_err().to_string();
        assert!(e.starts_with("catalog catalog.toml: invalid TOML at line 3, column"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = load_bytes(b"version = 1\n\xff\xfe", SRC, Origin::Local).unwrap_err().to_string();
        assert_eq!(e, "catalog catalog.toml: not UTF-8 text (invalid byte at offset 12)");
        let e = load("version = 1\nversion = 1\n").unwrap_err().to_string();
        assert!(e.contains("invalid TOML at line 2"), "{e}");
    }

    #[test]
    fn oversize_is_refused_before_parsing() {
        let mut text = b"version = 1\n#".to_vec();
        text.resize(MAX_BYTES as usize + 1, b'x');
        let e = load_bytes(&text, SRC, Origin::Remote).unwrap_err().to_string();
        assert!(e.contains("catalog catalog.toml: larger than 4.0 MiB"), "{e}");
        let ok = &text[..MAX_BYTES as usize];
        assert!(load_bytes(ok, SRC, Origin::Remote).is_ok());
    }

    #[test]
    fn sources_dispatch_by_scheme() {
        let remote = |src: &str, limit: u64| -> Result<Vec<u8>> {
            assert_eq!(limit, MAX_BYTES);
            Ok(format!(
                "version = 1\n[[images]]\nname = \"x\"\nsrc = \"file:///x\"\n# from {src}\n"
            )
            .into_bytes())
        };
        // A remote catalog is checked as remote: its file:// src is refused.
        let e =
            load_source("https://u:tok@lab.example/catalog.toml", &remote).unwrap_err().to_string();
        assert!(e.starts_with("catalog https://lab.example/catalog.toml: entry #1"), "{e}");
        assert!(!e.contains("tok"), "{e}");
        assert!(load_source("oras://ghcr.io/o/catalog:latest", &remote).is_err());

        for (bad, want) in [
            ("ftp://h/c.toml", "\"ftp\" sources are not supported"),
            ("http:///c.toml", "has no host"),
            ("file://c.toml", "absolute path"),
            ("", "empty"),
            ("/nonexistent/c.toml", "reading catalog /nonexistent/c.toml"),
        ] {
            let e = load_source(bad, &remote).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn local_files_and_file_urls_load() {
        let dir = std::env::temp_dir().join(format!("bty-catalog-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("my catalog.toml");
        std::fs::write(&p, "version = 1\n[[images]]\nname = \"x\"\nsrc = \"file:///x.img\"\n")
            .unwrap();
        let never = |_: &str, _: u64| -> Result<Vec<u8>> { panic!("no fetch for local files") };
        let c = load_source(p.to_str().unwrap(), &never).unwrap();
        assert_eq!(c.origin, Origin::Local);
        let url = format!("file://{}", p.display().to_string().replace(' ', "%20"));
        assert_eq!(load_source(&url, &never).unwrap().entries.len(), 1);
        let e = load_source(dir.to_str().unwrap(), &never).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn formats_from_names() {
        assert_eq!(format_of("debian-12.img.zst"), "img.zst");
        assert_eq!(format_of("disk.QCOW2"), "qcow2");
        assert_eq!(format_of("usb.iso.gz"), "iso.gz");
        assert_eq!(format_of("noext"), "raw");
    }

    /// What a server tells a client about a catalog never quotes it.
    #[test]
    fn untrusted_catalogs_are_never_quoted() {
        let m = "Zq9-marker";
        for text in [
            format!("{m} = [\n"),
            format!("version = 1\n{m} = 1\n{m} = 2\n"),
            format!("version = 1\n{m} = 1\n"),
            format!("version = 1\n[[images]]\nname = \"{m}\"\nsrc = \"{m}://h/x\"\n"),
            format!("version = 1\n[[images]]\nname = \"{m}\"\nsrc = \"https://h:{m}/x\"\n"),
            format!("version = 1\n[[images]]\nname = \"a\"\nsrc = \"file:///{m}\"\n"),
            format!(
                "version = 1\n[[images]]\nname = \"a\"\nsrc = \"https://h/a\"\nsha256 = \"{m}\"\n"
            ),
            format!(
                "version = 1\n[[images]]\nname = \"a\"\nsrc = \"https://h/a\"\nref = \"{m}\"\n"
            ),
            format!("version = 1\n[[images]]\nname = \"a\"\nsrc = \"https://h/a\"\n{m} = 1\n"),
            format!(
                "version = 1\n[[images]]\nname = \"{m}\"\nsrc = \"https://h/a\"\n[[images]]\nname = \"{m}\"\nsrc = \"https://h/b\"\n"
            ),
            "version = 987654321\n".to_string(),
            // Deep nesting is a parse error, not a stack overflow.
            format!("version = 1\nx = {}{}\n", "[".repeat(1 << 20), "]".repeat(1 << 20)),
            format!("version = 1\nx = {}1{}\n", "{a = ".repeat(1 << 19), "}".repeat(1 << 19)),
        ] {
            let said = match load_untrusted(text.as_bytes(), "https://h/c.toml") {
                Ok(c) => c.warnings.join("; "),
                Err(e) => e.to_string(),
            };
            assert!(said.starts_with("catalog https://h/c.toml: "), "{text}\n=> {said}");
            assert!(!said.contains(m) && !said.contains("987654321"), "{text}\n=> {said}");
        }
    }

    /// Seeded mutations of a valid catalog and random bytes through both parsers: no panic, a
    /// clean error naming the source, and (untrusted) no text of the input in any message.
    #[test]
    fn fuzz_the_catalog_parser() {
        use crate::fuzz::{Rng, iterations, mutate, seed};
        let base = format!(
            "version = 1\n# Zq9 lab\n[[images]]\nname = \"Zq9.img.zst\"\nsrc = \"https://Zq9.example:8080/a/Zq9.img.zst\"\nsha256 = \"{}\"\nformat = \"img.zst\"\nsize_bytes = 1234\ndescription = \"Zq9 \\\"x\\\"\"\narch = \"x86_64\"\n\n[[images]]\nname = 'b.qcow2'\nsrc = \"oras://ghcr.io/Zq9/b:1.0\"\nzq9 = [1, 2, {{ a = 1 }}]\n",
            "a".repeat(64)
        );
        assert!(load_bytes(base.as_bytes(), SRC, Origin::Remote).is_ok());
        let mut rng = Rng::new(seed());
        for i in 0..iterations(10_000) {
            let input = if rng.chance(8) {
                (0..rng.below(2048)).map(|_| rng.next() as u8).collect()
            } else {
                mutate(&mut rng, base.as_bytes(), 64 << 10)
            };
            let run = || {
                let quoted = load_bytes(&input, SRC, Origin::Remote).map(|c| c.entries.len());
                let quiet = load_untrusted(&input, "https://h/c.toml");
                (quoted, quiet)
            };
            let Ok((quoted, quiet)) = std::panic::catch_unwind(run) else {
                panic!("seed {} iteration {i}: the catalog parser panicked", seed());
            };
            if let Err(e) = quoted {
                assert!(e.to_string().starts_with("catalog catalog.toml: "), "#{i}: {e}");
            }
            let said = match quiet {
                Ok(c) => c.warnings.join("; "),
                Err(e) => e.to_string(),
            };
            assert!(!said.contains("Zq9") && !said.contains("zq9"), "seed {} #{i}: {said}", seed());
        }
    }
}
