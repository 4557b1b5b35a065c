//! Registry mirrors for `oras://` pulls, configured as containerd configures them: a hosts
//! directory (`BTY_REGISTRY_HOSTS_DIR`, default `/etc/containerd/certs.d`) holding
//! `<registry host[:port]>/hosts.toml` (or `_default/hosts.toml` for every registry):
//!
//! ```toml
//! server = "https://registry.lab:5000"          # the origin (default: the registry itself)
//! [host."https://cache.lab:5000"]
//! capabilities = ["pull", "resolve"]            # pull: blobs and manifests by digest; resolve: tags
//! ca = "/etc/bty/cache-ca.pem"                  # or a list; trusted for this host only
//! override_path = false                         # true: the URL's path is the API root
//! ```
//!
//! The hosts are tried in file order, then the origin. `skip_verify` is not supported: it is
//! ignored with a warning naming the file (the host's certificate is still checked, so such a
//! mirror fails and the next host is tried). Unknown keys are ignored.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Context, Result};
use crate::source::http::Url;

/// The default hosts directory, containerd's.
pub const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";
/// A hosts.toml is a few lines; a larger one is refused.
const MAX_HOSTS_FILE: u64 = 64 << 10;

/// The hosts directory a program chose for itself (bty-web's `[registry] hosts_dir`, which it
/// resolves from bty.toml and the environment alike); unset, `BTY_REGISTRY_HOSTS_DIR` is read.
static HOSTS_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Sets the hosts directory for every later pull of this process; the first call wins, as the
/// setting is read once at start.
pub(crate) fn use_hosts_dir(dir: PathBuf) {
    if HOSTS_DIR.set(dir).is_err() {
        crate::debug!("the registry hosts directory was set already; keeping the first");
    }
}

/// One place to pull from: a mirror, or the origin (last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `scheme://host[:port]/`.
    pub base: Url,
    /// The API root path, `/v2` unless the hosts file says otherwise.
    pub api: String,
    /// Blobs and manifests by digest may come from here.
    pub pull: bool,
    /// Tags may be resolved here.
    pub resolve: bool,
    /// Extra PEM roots trusted for this host.
    pub ca: Vec<PathBuf>,
}

impl Endpoint {
    /// The authority (`host[:port]`) requests go to.
    pub fn authority(&self) -> &str {
        self.base.authority()
    }
}

/// The endpoints for `registry` (`host[:port]`), mirrors first and the origin last. `origin` is
/// the origin's URL when no hosts file names a `server`.
pub(crate) fn endpoints(registry: &str, origin: &Url) -> Result<Vec<Endpoint>> {
    let dir = match (HOSTS_DIR.get(), std::env::var_os("BTY_REGISTRY_HOSTS_DIR")) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(DEFAULT_HOSTS_DIR),
    };
    for sub in [registry, "_default"] {
        let path = dir.join(sub).join("hosts.toml");
        let text = match read_capped(&path)? {
            Some(t) => t,
            None => continue,
        };
        crate::debug!("registry hosts for {registry} from {}", path.display());
        return parse(&text, &path, origin);
    }
    Ok(vec![origin_endpoint(origin.clone())])
}

fn origin_endpoint(base: Url) -> Endpoint {
    Endpoint { base, api: "/v2".into(), pull: true, resolve: true, ca: Vec::new() }
}

/// The file's text; None when it does not exist.
fn read_capped(path: &Path) -> Result<Option<String>> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut buf = Vec::new();
    f.take(MAX_HOSTS_FILE + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    crate::ensure!(
        buf.len() as u64 <= MAX_HOSTS_FILE,
        "{}: larger than {MAX_HOSTS_FILE} bytes; a hosts.toml is a few lines",
        path.display()
    );
    let text = String::from_utf8(buf)
        .map_err(|_| crate::error::Error::msg(format!("{}: not UTF-8", path.display())))?;
    Ok(Some(text))
}

/// Parses a hosts.toml: its `[host."..."]` entries in file order, then the origin (`server`,
/// else `origin`).
pub(crate) fn parse(text: &str, path: &Path, origin: &Url) -> Result<Vec<Endpoint>> {
    let shown = path.display();
    let table: toml::Table =
        toml::from_str(text).with_context(|| format!("{shown}: not a hosts.toml"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let origin = match table.get("server") {
        None => origin.clone(),
        Some(toml::Value::String(s)) => parse_url(s, &format!("{shown}: server"))?.0,
        Some(_) => crate::bail!("{shown}: server must be a URL string"),
    };
    let mut out = Vec::new();
    match table.get("host") {
        None => {}
        Some(toml::Value::Table(hosts)) => {
            for (url, v) in hosts {
                let what = format!("{shown}: [host.{url:?}]");
                let toml::Value::Table(h) = v else { crate::bail!("{what} is not a table") };
                out.push(host_entry(url, h, &what, dir, path)?);
            }
        }
        Some(_) => crate::bail!("{shown}: host must be a table of [host.\"<url>\"] tables"),
    }
    out.push(origin_endpoint(origin));
    Ok(out)
}

fn host_entry(url: &str, h: &toml::Table, what: &str, dir: &Path, path: &Path) -> Result<Endpoint> {
    let (base, url_path) = parse_url(url, what)?;
    let (mut pull, mut resolve) = (true, true);
    if let Some(c) = h.get("capabilities") {
        let toml::Value::Array(caps) = c else {
            crate::bail!("{what}: capabilities must be a list of strings")
        };
        let caps: Vec<&str> = caps.iter().filter_map(toml::Value::as_str).collect();
        pull = caps.contains(&"pull");
        resolve = caps.contains(&"resolve");
    }
    let ca = match h.get("ca") {
        None => Vec::new(),
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("{what}: ca must be a path or a list of paths"))?,
        Some(_) => crate::bail!("{what}: ca must be a path or a list of paths"),
    };
    // Relative paths are relative to the hosts.toml's directory, as containerd has them.
    let ca = ca.into_iter().map(|p| dir.join(p)).collect();
    match h.get("skip_verify") {
        Some(toml::Value::Boolean(true)) => crate::warn!(
            "{}: skip_verify for {url} is not supported and ignored: the host's certificate is \
             still verified (give its CA with ca = \"<pem>\" instead)",
            path.display()
        ),
        Some(toml::Value::Boolean(false)) | None => {}
        Some(_) => crate::bail!("{what}: skip_verify must be true or false"),
    }
    let override_path = match h.get("override_path") {
        Some(toml::Value::Boolean(b)) => *b,
        None => false,
        Some(_) => crate::bail!("{what}: override_path must be true or false"),
    };
    let trimmed = url_path.trim_end_matches('/');
    let api = if override_path || trimmed.ends_with("/v2") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v2")
    };
    Ok(Endpoint { base, api, pull, resolve, ca })
}

/// `http(s)://host[:port][/path]` into its origin and its path (no query).
fn parse_url(s: &str, what: &str) -> Result<(Url, String)> {
    let lower = s.to_ascii_lowercase();
    crate::ensure!(
        lower.starts_with("https://") || lower.starts_with("http://"),
        "{what}: {s:?} is not an http(s) URL"
    );
    crate::ensure!(!s.contains(['?', '#']), "{what}: {s:?} has a query or fragment");
    let u = Url::parse(s).with_context(|| format!("{what}: {s:?}"))?;
    let rest = s.split_once("://").map_or("", |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]).to_string();
    let base = Url::parse(&format!("{}/", u.origin())).with_context(|| format!("{what}: {s:?}"))?;
    Ok((base, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Url {
        Url::parse("https://registry.lab:5000/").unwrap()
    }

    fn p(text: &str) -> Result<Vec<Endpoint>> {
        parse(text, Path::new("/etc/hosts.d/registry.lab:5000/hosts.toml"), &origin())
    }

    #[test]
    fn hosts_come_in_file_order_then_the_origin() {
        let e = p(r#"
            [host."https://zeta.lab:5000"]
            capabilities = ["pull", "resolve"]
            unknown = 1
            [host."http://alpha.lab:8080"]
            capabilities = ["pull"]
            ca = ["a.pem", "/abs/b.pem"]
            [host."https://mid.lab/sub"]
            [host."https://ovr.lab/api/v2/x"]
            override_path = true
        "#)
        .unwrap();
        let hosts: Vec<String> = e.iter().map(|e| e.base.to_string()).collect();
        assert_eq!(
            hosts,
            [
                "https://zeta.lab:5000/",
                "http://alpha.lab:8080/",
                "https://mid.lab/",
                "https://ovr.lab/",
                "https://registry.lab:5000/"
            ]
        );
        assert!(e[0].pull && e[0].resolve);
        assert!(e[1].pull && !e[1].resolve);
        assert_eq!(
            e[1].ca,
            [PathBuf::from("/etc/hosts.d/registry.lab:5000/a.pem"), PathBuf::from("/abs/b.pem")]
        );
        assert_eq!(e[0].api, "/v2");
        assert_eq!(e[2].api, "/sub/v2");
        assert_eq!(e[3].api, "/api/v2/x");
        assert!(e[4].pull && e[4].resolve && e[4].api == "/v2");
    }

    #[test]
    fn server_names_the_origin() {
        let e = p(r#"server = "https://central.lab""#).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].base.to_string(), "https://central.lab/");
        let e = p("").unwrap();
        assert_eq!(e, [origin_endpoint(origin())]);
    }

    #[test]
    fn malformed_files_are_refused_by_name() {
        for (bad, why) in [
            ("[host", "not a hosts.toml"),
            ("server = 5", "server must be"),
            (r#"server = "ftp://x""#, "not an http(s) URL"),
            (r#"host = "x""#, "host must be"),
            (
                r#"[host."https://m"]
                capabilities = "pull""#,
                "capabilities must be",
            ),
            (
                r#"[host."https://m"]
                ca = 3"#,
                "ca must be",
            ),
            (
                r#"[host."https://m"]
                ca = ["a", 3]"#,
                "ca must be",
            ),
            (r#"[host."mirror.lab"]"#, "not an http(s) URL"),
            (
                r#"[host."https://m"]
                skip_verify = "yes""#,
                "skip_verify must be",
            ),
        ] {
            let e = p(bad).unwrap_err().to_string();
            assert!(e.contains("registry.lab:5000/hosts.toml"), "{bad}: {e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_hosts_dir_has_per_registry_and_default_files() {
        let dir = std::env::temp_dir().join(format!("bty-hosts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("registry.lab:5000")).unwrap();
        std::fs::create_dir_all(dir.join("_default")).unwrap();
        std::fs::write(dir.join("registry.lab:5000/hosts.toml"), "[host.\"https://cache.lab\"]\n")
            .unwrap();
        std::fs::write(dir.join("_default/hosts.toml"), "[host.\"https://any.lab\"]\n").unwrap();
        let read = |reg: &str| {
            let text = read_capped(&dir.join(reg).join("hosts.toml")).unwrap();
            let text = match text {
                Some(t) => t,
                None => read_capped(&dir.join("_default/hosts.toml")).unwrap().unwrap(),
            };
            parse(&text, &dir.join("x"), &origin()).unwrap()[0].base.to_string()
        };
        assert_eq!(read("registry.lab:5000"), "https://cache.lab/");
        assert_eq!(read("other.lab"), "https://any.lab/");
        std::fs::write(dir.join("_default/hosts.toml"), vec![b'#'; 70 << 10]).unwrap();
        let e = read_capped(&dir.join("_default/hosts.toml")).unwrap_err().to_string();
        assert!(e.contains("_default/hosts.toml") && e.contains("larger than"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
