//! The gate in front of the operator's routes, checked from the request head alone (so it can
//! run before any body byte is read), by the `Access` and `Body` that each row of the route
//! table (`routes::ROUTES`) declares:
//!
//! - a Host allow-list against DNS rebinding: a page on `http://evil.test:PORT` whose name
//!   resolves to this server talks to it as its own origin, so the browser's same-origin rule
//!   protects nothing; only the Host header tells that request apart. The UI and the
//!   cookie-authenticated API answer only for names this server owns, or an IP address,
//!   which no rebinding can use (421 otherwise);
//! - CSRF for the whole API: a change (any method but GET and HEAD) from another origin is
//!   refused, and a body must be declared as JSON, which no cross-site form can send without a
//!   CORS preflight (that we never grant). The UI's forms keep their own check (ui/mod.rs);
//! - the open PXE POSTs refuse anything that carries an `Origin`: firmware and `bty` never
//!   send one, so a request with it comes from a web page.
//!
//! The open PXE routes answer any Host (firmware uses IP literals or names the operator set up),
//! but the scripts they hand out only ever embed an allowed host: `script_host`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::web::app::App;
use crate::web::http::{BodyPolicy, Req, Resp};

/// How long the hostname is trusted before it is read again: it may change, and one read per
/// request would be waste.
const REFRESH: Duration = Duration::from_secs(30);

/// Who may call a route: each row of the route table (`routes::ROUTES`) names one, and
/// `check` (the Host and Origin part) and `routes::admit` (the session part) enforce it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, by any Host, without a session: what firmware, the live environment and health
    /// checks read (the spec's open routes).
    Open,
    /// Firmware and the live environment: no session, any Host (firmware uses IP literals or
    /// names the operator set up), and a change that carries an `Origin` is refused, since
    /// firmware and `bty` never send one.
    Pxe,
    /// The browser's way in (`/`, the login page, login and logout): no session, but only by a
    /// name this server owns; ui checks the login form's origin itself.
    Public,
    /// A page or form of the UI: an owned name and a session (a form post without one gets a
    /// 303 to the login page before its body is read); ui checks each form's token.
    Page,
    /// The operator's API: an owned name, a session (401), and a change only from our own
    /// origin with a JSON body unless the row's `Body` takes another format.
    Session,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Pxe => "pxe",
            Access::Public => "public",
            Access::Page => "page",
            Access::Session => "session",
        }
    }
}

/// The inventory body held in memory. Over it the disks are still stored and the lshw tree is
/// read through and dropped (it is then far over `wire::LSHW_MAX`, 2 MiB), so a machine with an
/// enormous tree still gets its disks in rather than a 413 that loses both.
pub const INVENTORY_HELD: usize = 4 << 20;
/// The longest inventory body read at all (413 beyond).
pub const INVENTORY_MAX: u64 = 64 << 20;

/// What a route's body may be, and so how the HTTP layer takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// Nothing is expected; up to 64 KiB is read and ignored.
    None,
    /// A small JSON document (64 KiB).
    Json,
    /// The live environment's inventory with its lshw tree: 4 MiB held; a longer one (up to
    /// 64 MiB) is read through, keeping its disks (see `INVENTORY_HELD`).
    Inventory,
    /// A catalog to import: a TOML file or a JSON `{"src": ...}` (64 KiB).
    Catalog,
    /// An artifact upload, streamed to disk (the handler applies the size limit).
    Upload,
    /// A URL-encoded page form (64 KiB).
    Form,
    /// A multipart form carrying a catalog file.
    CatalogForm,
    /// A multipart form carrying an artifact, streamed to disk like `Upload`.
    UploadForm,
}

impl Body {
    /// How the HTTP layer reads it.
    pub fn policy(self) -> BodyPolicy {
        match self {
            Body::None | Body::Json | Body::Catalog | Body::Form => BodyPolicy::Buffer(64 << 10),
            Body::Inventory => BodyPolicy::Spill(INVENTORY_HELD, INVENTORY_MAX),
            // A catalog file, plus the multipart framing around it.
            Body::CatalogForm => {
                BodyPolicy::Buffer(crate::web::ui::CATALOG_UPLOAD_MAX + (64 << 10))
            }
            Body::Upload | Body::UploadForm => BodyPolicy::Stream(u64::MAX),
        }
    }

    /// Whether an API change with this body must declare JSON: the others are formats no
    /// cross-site form can forge without a preflight either way, or are checked by the route.
    fn must_be_json(self) -> bool {
        !matches!(self, Body::Upload | Body::Catalog)
    }

    pub fn describe(self) -> String {
        let name = format!("{self:?}").to_lowercase();
        match self.policy() {
            BodyPolicy::Buffer(n) => format!("{name} (buffered, at most {} KiB)", n >> 10),
            BodyPolicy::Stream(_) => format!("{name} (streamed)"),
            BodyPolicy::Spill(held, max) => format!(
                "{name} (buffered up to {} KiB, read through up to {} MiB)",
                held >> 10,
                max >> 20
            ),
        }
    }
}

/// `None` to go on, or the refusal: the Host and Origin rules of a route's `Access`.
pub fn check(app: &App, req: &Req, access: Access, body: Body) -> Option<Resp> {
    let m = req.method.as_str();
    let change = !matches!(m, "GET" | "HEAD");
    match access {
        Access::Open => return None,
        Access::Pxe if change && req.header("origin").is_some() => {
            return Some(Resp::error(
                403,
                &format!(
                    "{m} {}: refused, the request carries an Origin header, so a web page sent \
                     it; the live environment never sends one",
                    req.path
                ),
            ));
        }
        Access::Pxe => return None,
        Access::Public | Access::Page | Access::Session => {}
    }
    if let Err(why) = host_allowed(app, req) {
        return Some(Resp::error(421, &why));
    }
    // The UI checks its own forms (a same-origin Origin, else the session's token in the
    // form) and answers a refusal with a page a browser shows.
    if !change || access != Access::Session {
        return None;
    }
    if let Some(origin) = foreign_origin(app, req) {
        return Some(Resp::error(
            403,
            &format!(
                "{m} {}: refused, sent from another site ({origin}); changes are accepted from \
                 this server's own pages or from clients that send no Origin",
                req.path
            ),
        ));
    }
    if body.must_be_json() && has_body(req) {
        let ctype = req.header("content-type").unwrap_or("");
        if !is_json(ctype) {
            let got = if ctype.is_empty() { "none".to_string() } else { format!("{ctype:?}") };
            return Some(Resp::error(
                415,
                &format!(
                    "{m} {}: the body must be JSON sent with Content-Type: application/json \
                     (got {got})",
                    req.path
                ),
            ));
        }
    }
    None
}

/// Whether the head announces a body (a body-less POST needs no Content-Type).
fn has_body(req: &Req) -> bool {
    req.content_length().is_some_and(|n| n > 0) || req.header("transfer-encoding").is_some()
}

fn is_json(ctype: &str) -> bool {
    ctype.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The request's `Origin` (else the origin of its `Referer`) when it is not this server's own:
/// the Host it was sent to, or `public_url` (a TLS proxy in front may rewrite the Host).
/// `None` when it is ours or the client sent neither (curl, scripts, `bty`).
fn foreign_origin(app: &App, req: &Req) -> Option<String> {
    let origin = match (req.header("origin"), req.header("referer")) {
        (Some(o), _) => o.trim().to_string(),
        (None, Some(r)) => origin_of(r.trim()).unwrap_or_else(|| r.trim().to_string()),
        (None, None) => return None,
    };
    (!own_origin(req.host(), app.settings().public_url(), &origin)).then_some(origin)
}

/// Whether `origin` is this server's: `http(s)://` and the `host` the request was sent to, or
/// `public_url` (a TLS proxy in front may rewrite the Host). The UI's forms use it too.
pub fn own_origin(host: &str, public_url: Option<&str>, origin: &str) -> bool {
    ["http://", "https://"].iter().any(|s| {
        origin.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s))
            && origin.get(s.len()..).is_some_and(|a| a.eq_ignore_ascii_case(host))
    }) || public_url.is_some_and(|u| u.eq_ignore_ascii_case(origin))
}

/// `scheme://authority` of a URL, if it has that shape.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    Some(format!("{scheme}://{authority}"))
}

/// Whether the request's Host is one this server owns; the refusal names the Host and the
/// setting that allows it.
fn host_allowed(app: &App, req: &Req) -> Result<(), String> {
    // Every browser sends a Host; a client without one is no rebinding page.
    let Some(host) = req.header("host") else { return Ok(()) };
    let refuse = || {
        format!(
            "Host {host:?} is not a name of this server (DNS rebinding?): add it to [server] \
             allowed_hosts, or set [server] public_url, to reach bty-web by that name"
        )
    };
    let (name, port) = split_host(host).ok_or_else(refuse)?;
    // An address is no rebinding: a page can only be served under an address it is reached
    // at, so a page whose origin is an address that leads here is ours. Any port, too, since
    // a container's published port or a NAT in front is not ours to know. This keeps bty-web
    // in a container (whose interfaces are not the host's) reachable by the host's address.
    // `Host: 0.0.0.0` is no address of ours: browsers send it to loopback from any site.
    if let Ok(ip) = name.parse::<IpAddr>() {
        return if ip.is_unspecified() { Err(refuse()) } else { Ok(()) };
    }
    let s = &app.settings();
    let public = s.public_url().and_then(url_host_port);
    let mut ports: Vec<u16> = req.local.map(|a| a.port()).into_iter().collect();
    ports.extend(s.get("server", "port").parse::<u16>().ok().filter(|&p| p != 0));
    ports.extend(public.as_ref().map(|(_, p)| *p));
    ports.sort_unstable();
    ports.dedup();
    // Without a port the client used the scheme's default (a proxy in front, or port 80).
    let port_ok = match port {
        Some(p) => ports.contains(&p),
        None => ports.iter().any(|p| matches!(p, 80 | 443)),
    };
    if !port_ok {
        let listed: Vec<String> = ports.iter().map(u16::to_string).collect();
        return Err(format!(
            "Host {host:?}: port {} is not one this server answers on ({}); set [server] \
             public_url to the address clients use to reach bty-web by another port",
            port.map_or_else(|| "(none)".to_string(), |p| p.to_string()),
            listed.join(", ")
        ));
    }
    if owned_name(app, &name, public.as_ref().map(|(h, _)| h.as_str())) {
        Ok(())
    } else {
        Err(refuse())
    }
}

/// Whether a host name is one of this server's (addresses are settled before it is asked).
fn owned_name(app: &App, name: &str, public_host: Option<&str>) -> bool {
    let s = &app.settings();
    let same = |other: &str| name.eq_ignore_ascii_case(other.trim_end_matches('.'));
    name == "localhost"
        || public_host.is_some_and(same)
        // A listen address given as a name.
        || same(s.get("server", "host"))
        || allowed_hosts(s.get("server", "allowed_hosts")).unwrap_or_default().iter().any(|h| same(h))
        || hostname().is_some_and(|h| same(&h))
}

/// A Host header as (name, port): names lower-cased without a trailing dot, IPv6 without its
/// brackets. `None` for anything that is not a plain host name or address.
fn split_host(host: &str) -> Option<(String, Option<u16>)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        addr.parse::<std::net::Ipv6Addr>().ok()?;
        let port = if after.is_empty() { None } else { Some(after.strip_prefix(':')?) };
        (addr, port)
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port = match port {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
        None => None,
    };
    let ok_name = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
    ok_name.then(|| (name.trim_end_matches('.').to_ascii_lowercase(), port))
}

/// The host (IPv6 without brackets) and the port of a validated `public_url`, the port
/// defaulting by scheme.
fn url_host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (name, port) = split_host(authority)?;
    let default = if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 };
    Some((name, port.unwrap_or(default)))
}

/// `[server] allowed_hosts`: comma-separated host names or addresses, without ports.
pub fn allowed_hosts(value: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bare = item.trim_start_matches('[').trim_end_matches(']');
        let name = if bare.parse::<std::net::Ipv6Addr>().is_ok() {
            Some(bare.to_ascii_lowercase())
        } else {
            split_host(item).filter(|(_, port)| port.is_none()).map(|(n, _)| n)
        };
        match name {
            Some(n) => out.push(n),
            None => {
                return Err(format!(
                    "{item:?}: expected a host name or an IP address, without a port"
                ));
            }
        }
    }
    Ok(out)
}

/// The machine's hostname (lower-cased), read again when older than `REFRESH`: one cache per
/// process, since it is the host's, not a server's.
fn hostname() -> Option<Arc<str>> {
    static CACHE: Mutex<Option<(Instant, Option<Arc<str>>)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, name)) = &*cache {
        if at.elapsed() < REFRESH {
            return name.clone();
        }
    }
    let name: Option<Arc<str>> = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .map(Into::into);
    *cache = Some((Instant::now(), name.clone()));
    name
}

/// The host (`name[:port]`) scripts for PXE clients embed: the request's Host when it is one
/// this server owns, else `public_url`'s (when it is plain http, which iPXE and the kernel
/// command line speak), else the local address the connection arrived on. A forged Host never
/// reaches a script. `None` for a Host that is no host name at all (answered 400), or without
/// any address to give (a request that came from no socket).
pub fn script_host(app: &App, req: &Req) -> Option<String> {
    if let Some(host) = req.header("host") {
        crate::web::guard::host_for_scripts(host)?;
        if host_allowed(app, req).is_ok() {
            return Some(host.to_string());
        }
    }
    if let Some(rest) = app.settings().public_url().and_then(|u| u.strip_prefix("http://")) {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if crate::web::guard::host_for_scripts(authority).is_some() {
            return Some(authority.to_string());
        }
    }
    req.local.map(|l| SocketAddr::new(l.ip().to_canonical(), l.port()).to_string())
}

/// A Host header that is safe to put into an iPXE script or a kernel command line: host names,
/// IPv4, bracketed IPv6, an optional port. Anything else (spaces, quotes, newlines) is refused
/// rather than escaped: iPXE has no escaping we should trust.
pub fn host_for_scripts(host: &str) -> Option<&str> {
    let ok = !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
    ok.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_in_scripts_are_allow_listed() {
        assert_eq!(host_for_scripts("10.0.2.2:8080"), Some("10.0.2.2:8080"));
        assert_eq!(host_for_scripts("[fe80::1]:80"), Some("[fe80::1]:80"));
        assert_eq!(host_for_scripts("bty.lab.local"), Some("bty.lab.local"));
        assert_eq!(host_for_scripts("evil\nkernel x"), None);
        assert_eq!(host_for_scripts("a b"), None);
        assert_eq!(host_for_scripts(""), None);
    }

    #[test]
    fn hosts_split_into_name_and_port() {
        assert_eq!(split_host("Bty.Lab.:8080"), Some(("bty.lab".into(), Some(8080))));
        assert_eq!(split_host("10.0.0.5"), Some(("10.0.0.5".into(), None)));
        assert_eq!(split_host("[FE80::1]:80"), Some(("fe80::1".into(), Some(80))));
        assert_eq!(split_host("[::1]"), Some(("::1".into(), None)));
        for bad in ["", ":80", "a:", "a:b", "a:99999", "::1", "[x]:1", "a b", "a\n", "[::1]x"] {
            assert_eq!(split_host(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn allowed_hosts_are_names_or_addresses_without_ports() {
        assert_eq!(
            allowed_hosts(" bty.lab , 10.0.0.5,[fd00::1], ::2,").unwrap(),
            vec!["bty.lab", "10.0.0.5", "fd00::1", "::2"]
        );
        assert_eq!(allowed_hosts("").unwrap(), Vec::<String>::new());
        assert!(allowed_hosts("bty.lab:8080").unwrap_err().contains("without a port"));
        assert!(allowed_hosts("a b").is_err());
    }

    #[test]
    fn origins_come_from_referers_and_json_types_take_parameters() {
        assert_eq!(origin_of("http://h:1/ui/x?y#z").as_deref(), Some("http://h:1"));
        assert_eq!(origin_of("nonsense"), None);
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/jsonx"));
    }
}
