//! The URL map: one `match` on (method, path segments), each arm a small function.

use std::sync::Arc;

use crate::web::config::Settings;
use crate::web::db::Db;
use crate::web::http::{Req, Resp};

/// What every route can reach.
pub struct App {
    pub settings: Settings,
    pub db: Db,
}

/// Largest request body accepted: inventory with lshw gets a few MiB, the rest little.
pub fn body_limit(method: &str, path: &str) -> usize {
    match (method, path) {
        ("PUT", p) if p.starts_with("/boot/") => 4 << 30,
        ("POST", p) if p.ends_with("/inventory") => 4 << 20,
        _ => 64 << 10,
    }
}

/// Answers one request.
pub fn route(_app: &Arc<App>, req: &Req) -> Resp {
    let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let m = req.method.as_str();
    match (m, segs.as_slice()) {
        ("GET" | "HEAD", ["healthz"]) => Resp::json(200, &serde_json::json!({"status": "ok"})),
        ("GET" | "HEAD", ["version"]) => {
            Resp::json(200, &serde_json::json!({"version": crate::VERSION}))
        }
        ("GET" | "HEAD", ["pxe-bootstrap.ipxe"]) => pxe_bootstrap(req),
        (_, ["healthz"] | ["version"] | ["pxe-bootstrap.ipxe"]) => {
            Resp::error(405, "method not allowed").with_header("Allow", "GET, HEAD")
        }
        _ => Resp::error(404, "Not Found"),
    }
}

/// The static script dnsmasq points iPXE at: chain back to this server, by whatever name the
/// client used to reach it.
fn pxe_bootstrap(req: &Req) -> Resp {
    match host_for_scripts(req.host()) {
        Some(host) => {
            Resp::text(200, format!("#!ipxe\nchain http://{host}/pxe/${{net0/mac:hexhyp}}\n"))
        }
        None => Resp::error(400, "invalid Host header"),
    }
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
    fn body_limits_per_route() {
        assert_eq!(body_limit("PUT", "/boot/x.initrd"), 4 << 30);
        assert_eq!(body_limit("POST", "/pxe/aa:bb:cc:dd:ee:ff/inventory"), 4 << 20);
        assert_eq!(body_limit("PUT", "/machines/aa:bb:cc:dd:ee:ff"), 64 << 10);
    }
}
