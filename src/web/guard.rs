//! The gate in front of the operator's routes, checked from the request head alone (so it can
//! run before any body byte is read):
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
use crate::web::http::{Req, Resp};

/// How long the hostname is trusted before it is read again: it may change, and one read per
/// request would be waste.
const REFRESH: Duration = Duration::from_secs(30);

/// `None` to go on, or the refusal.
/// `segs` is the path split at `/`, as the caller has it already.
pub fn check(app: &App, req: &Req, segs: &[&str]) -> Option<Resp> {
    let m = req.method.as_str();
    let change = !matches!(m, "GET" | "HEAD");
    if segs.first() == Some(&"pxe") {
        if change && req.header("origin").is_some() {
            return Some(Resp::error(
                403,
                &format!(
                    "{m} {}: refused, the request carries an Origin header, so a web page sent \
                     it; the live environment never sends one",
                    req.path
                ),
            ));
        }
        return None;
    }
    if open(m, segs) {
        return None;
    }
    if let Err(why) = host_allowed(app, req) {
        return Some(Resp::error(421, &why));
    }
    // The UI checks its own forms (a same-origin Origin, else the session's token in the
    // form) and answers a refusal with a page a browser shows.
    if !change || segs.first() == Some(&"ui") {
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
    if own_body_format(m, segs).is_none() && has_body(req) {
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

/// Routes that answer any Host and need no session: what firmware, the live environment and
/// health checks use. Everything else is the operator's (deny by default: a new route is
/// guarded until it is listed here).
fn open(m: &str, segs: &[&str]) -> bool {
    let read = matches!(m, "GET" | "HEAD");
    match segs {
        ["healthz"] | ["version"] | ["pxe-bootstrap.ipxe"] => true,
        ["boot", "releases"] => false,
        ["boot", _] => read,
        ["images", ..] | ["catalog.toml"] | ["static", _] => read,
        _ => false,
    }
}

/// Guarded routes whose body is not JSON: artifact uploads, and catalog imports (which take a
/// catalog file).
fn own_body_format(m: &str, segs: &[&str]) -> Option<&'static str> {
    match (m, segs) {
        ("PUT", ["boot", ..]) => Some("octet-stream"),
        ("POST", ["catalog", "import"]) => Some("catalog"),
        _ => None,
    }
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
    (!own_origin(req.host(), app.settings.public_url(), &origin)).then_some(origin)
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
    let s = &app.settings;
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
    let s = &app.settings;
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
    if let Some(rest) = app.settings.public_url().and_then(|u| u.strip_prefix("http://")) {
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

    #[test]
    fn only_firmware_routes_are_open() {
        assert!(open("GET", &["boot", "k.vmlinuz"]));
        assert!(!open("PUT", &["boot", "k.vmlinuz"]));
        assert!(!open("GET", &["boot", "releases"]));
        assert!(open("GET", &["images", "abc", "a.img"]));
        assert!(!open("GET", &["machines"]));
        assert!(!open("GET", &["ui", "login"]));
        assert!(!open("GET", &[""]));
        assert!(!open("GET", &["nowhere"]));
    }
}
