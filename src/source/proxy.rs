//! Outbound proxies from the environment, chosen per request URL the way curl chooses them.
//!
//! - `http_proxy` (then `HTTP_PROXY`) for http:// targets, `https_proxy` (then `HTTPS_PROXY`)
//!   for https:// targets, `all_proxy` (then `ALL_PROXY`) for either when its own is unset.
//!   curl reads only the lower-case `http_proxy`, against "httpoxy": a CGI program gets a
//!   request's `Proxy:` header as `HTTP_PROXY`. bty and bty-web are no CGI programs and run
//!   none, container runtimes and lab how-tos hand over the upper-case names, and the issue
//!   that asked for proxies names `HTTP_PROXY`; so both are read, lower case first (as curl
//!   does for the other variables).
//! - `no_proxy` (then `NO_PROXY`): comma- or space-separated host names (a name also covers its
//!   subdomains; a leading `.` or `*.` changes nothing), IP addresses, CIDR ranges, each
//!   optionally with `:port`; `*` alone turns proxies off. Names are compared as written,
//!   never resolved. 127.0.0.1 and localhost go through the proxy unless listed, as with curl.
//! - A proxy is `[http://|https://][user:password@]host[:port]`; the port defaults to 1080 (curl's
//!   default) for http and 443 for https. Credentials become `Proxy-Authorization: Basic`;
//!   messages show the proxy with its password replaced by `***`.
//!
//! https targets are tunnelled with CONNECT (TLS runs end to end, the proxy sees only the host
//! name). http targets are sent to the proxy in absolute form (`GET http://host/path`), as
//! curl does: ureq would tunnel them with CONNECT too, which proxies commonly refuse for any
//! port but 443 (squid's default configuration does). A small connector does that rewriting.

use std::net::IpAddr;
use std::sync::OnceLock;

use ureq::http::Uri;
use ureq::http::uri::Scheme;
use ureq::unversioned::resolver::Resolver;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, DefaultConnector, NextTimeout, Transport,
};

use crate::error::{Error, Result};
use crate::source::http::Url;

/// A proxy as configured, credentials included (shown only redacted).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ProxyUrl {
    https: bool,
    /// As written in the URL: an IPv6 address keeps its brackets.
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
}

impl ProxyUrl {
    /// Parses a proxy setting; `var` names where it came from, for the message.
    pub fn parse(var: &str, value: &str) -> Result<ProxyUrl> {
        let bad = |why: &str| Error::msg(format!("{var}={}: {why}", redact_raw(value)));
        let value = value.trim();
        let (scheme, rest) = match value.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("http".to_string(), value),
        };
        let https = match scheme.as_str() {
            "http" => false,
            "https" => true,
            other => {
                return Err(bad(&format!(
                    "{other} proxies are not supported (use an http:// or https:// proxy)"
                )));
            }
        };
        let rest = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (name, pass) = u.split_once(':').unwrap_or((u, ""));
                let name = crate::source::percent_decode(name, false);
                let pass = crate::source::percent_decode(pass, false);
                (Some(name), Some(pass))
            }
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad("not a host[:port]"))?;
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(bad("no valid host name"));
        }
        let port = match port {
            None => {
                if https {
                    443
                } else {
                    1080
                }
            }
            Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| bad("bad port"))?,
        };
        Ok(ProxyUrl { https, host: host.to_ascii_lowercase(), port, user, password })
    }

    /// The ureq proxy that tunnels https targets with CONNECT.
    fn to_ureq(&self) -> Result<ureq::Proxy> {
        let proto = if self.https { ureq::ProxyProtocol::Https } else { ureq::ProxyProtocol::Http };
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let mut b = ureq::Proxy::builder(proto).host(host).port(self.port);
        if let Some(u) = &self.user {
            b = b.username(u);
        }
        if let Some(p) = &self.password {
            b = b.password(p);
        }
        b.build().map_err(|e| Error::msg(format!("the proxy {self}: {e}")))
    }

    /// The proxy's own URI (no credentials), which the connection to it is made for.
    fn uri(&self) -> Result<Uri> {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}:{}/", self.host, self.port)
            .parse()
            .map_err(|e| Error::msg(format!("the proxy {self}: {e}")))
    }

    /// The `Proxy-Authorization` value, when the URL carries credentials.
    fn authorization(&self) -> Option<String> {
        let user = self.user.as_deref()?;
        let pass = self.password.as_deref().unwrap_or_default();
        Some(format!(
            "Basic {}",
            crate::source::oras::base64_encode(format!("{user}:{pass}").as_bytes())
        ))
    }
}

/// The proxy as a URL with the password replaced: safe for messages and logs.
impl std::fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://")?;
        match (&self.user, &self.password) {
            (Some(u), Some(p)) if !p.is_empty() => write!(f, "{u}:***@")?,
            (Some(u), _) => write!(f, "{u}@")?,
            _ => {}
        }
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

/// A setting that did not parse, with anything between `://` and the last `@` hidden: it may
/// hold a password.
fn redact_raw(value: &str) -> String {
    let (scheme, rest) = match value.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), value),
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}***@{host}"),
        None => value.to_string(),
    }
}

/// `host[:port]`, `[v6][:port]`; None when the brackets or the port are malformed.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, rest) = s.split_at(end + 1);
        return match rest.strip_prefix(':') {
            Some(p) => Some((host, Some(p))),
            None if rest.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match s.rsplit_once(':') {
        // A bare IPv6 address (`::1` in NO_PROXY) has several colons and no port.
        Some((h, _)) if h.contains(':') => Some((s, None)),
        Some((h, p)) => Some((h, Some(p))),
        None => Some((s, None)),
    }
}

/// The proxy variables, read once.
#[derive(Debug, Default)]
pub(crate) struct Settings {
    /// (variable, value) for http, https and the fallback.
    http: Option<(String, String)>,
    https: Option<(String, String)>,
    all: Option<(String, String)>,
    no_proxy: NoProxy,
}

impl Settings {
    /// The settings of this process's environment.
    pub fn from_env() -> &'static Settings {
        static SETTINGS: OnceLock<Settings> = OnceLock::new();
        SETTINGS.get_or_init(|| Settings::from_lookup(|k| std::env::var(k).ok()))
    }

    /// Reads the variables through `get`; an empty value counts as unset, as with curl.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Settings {
        let pick = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| get(n).filter(|v| !v.trim().is_empty()).map(|v| (n.to_string(), v)))
        };
        Settings {
            http: pick(["http_proxy", "HTTP_PROXY"]),
            https: pick(["https_proxy", "HTTPS_PROXY"]),
            all: pick(["all_proxy", "ALL_PROXY"]),
            no_proxy: NoProxy::parse(&pick(["no_proxy", "NO_PROXY"]).unwrap_or_default().1),
        }
    }

    /// The proxy for `url`, or None to connect directly.
    pub fn for_url(&self, url: &Url) -> Result<Option<ProxyUrl>> {
        let own = if url.is_https() { &self.https } else { &self.http };
        let Some((var, value)) = own.as_ref().or(self.all.as_ref()) else {
            return Ok(None);
        };
        let (host, port) = host_port(url);
        if self.no_proxy.bypasses(&host, port) {
            return Ok(None);
        }
        ProxyUrl::parse(var, value).map(Some)
    }
}

/// A URL's host (IPv6 without brackets) and port (the scheme's default when not written).
fn host_port(url: &Url) -> (String, u16) {
    let default = if url.is_https() { 443 } else { 80 };
    match split_host_port(url.authority()) {
        Some((h, p)) => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.and_then(|p| p.parse().ok()).unwrap_or(default),
        ),
        None => (url.authority().to_string(), default),
    }
}

/// What `NO_PROXY` lists.
#[derive(Debug, Default, PartialEq)]
struct NoProxy {
    everything: bool,
    entries: Vec<(Pattern, Option<u16>)>,
}

#[derive(Debug, PartialEq)]
enum Pattern {
    /// A host name and its subdomains, lower case, without a leading dot.
    Domain(String),
    /// An address and the length of the prefix that must match (32 or 128 for one address).
    Net(IpAddr, u8),
}

impl NoProxy {
    fn parse(list: &str) -> NoProxy {
        let mut out = NoProxy::default();
        for item in list.split([',', ' ', '\t']).map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                out.everything = true;
                continue;
            }
            let (addr, prefix) = match item.split_once('/') {
                Some((a, p)) => (a, p.parse::<u8>().ok()),
                None => (item, None),
            };
            let bare = addr.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = bare.parse::<IpAddr>() {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                if let Some(p) = prefix.or(Some(max)).filter(|&p| p <= max) {
                    out.entries.push((Pattern::Net(ip, p), None));
                }
                continue;
            }
            let Some((host, port)) = split_host_port(item) else { continue };
            let port = match port {
                Some(p) => match p.parse::<u16>() {
                    Ok(p) => Some(p),
                    Err(_) => continue,
                },
                None => None,
            };
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let pattern = match bare.parse::<IpAddr>() {
                Ok(ip) => Pattern::Net(ip, if ip.is_ipv4() { 32 } else { 128 }),
                Err(_) => {
                    let name = host.trim_start_matches("*.").trim_start_matches('.');
                    let name = name.trim_end_matches('.').to_ascii_lowercase();
                    if name.is_empty() {
                        continue;
                    }
                    Pattern::Domain(name)
                }
            };
            out.entries.push((pattern, port));
        }
        out
    }

    /// Whether a request to `host` (no brackets) on `port` skips the proxy.
    fn bypasses(&self, host: &str, port: u16) -> bool {
        if self.everything {
            return true;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.entries.iter().any(|(pattern, p)| {
            p.is_none_or(|p| p == port)
                && match (pattern, ip) {
                    (Pattern::Domain(d), None) => {
                        host == *d
                            || host.strip_suffix(d.as_str()).is_some_and(|h| h.ends_with('.'))
                    }
                    (Pattern::Net(net, bits), Some(ip)) => in_net(ip, *net, *bits),
                    _ => false,
                }
        })
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (a, b, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.to_bits(), b.to_bits(), 128),
        _ => return false,
    };
    let shift = width - u32::from(bits);
    shift >= width || (a >> shift) == (b >> shift)
}

/// An agent's connector: https targets (and everything without a proxy) take ureq's own path,
/// CONNECT included; an http target behind a proxy gets a connection to the proxy whose
/// requests are rewritten into absolute form.
#[derive(Debug)]
pub(crate) struct ProxyConnector {
    default: DefaultConnector,
    forward: Option<Forward>,
}

#[derive(Debug)]
struct Forward {
    uri: Uri,
    /// The agent's configuration without the proxy, for the connection to the proxy itself.
    direct: ureq::config::Config,
    authorization: Option<String>,
}

impl ProxyConnector {
    /// A connector for an agent whose configuration is `direct` plus `proxy`; the returned
    /// ureq proxy goes into that configuration (it drives CONNECT for https targets).
    pub fn new(
        proxy: Option<&ProxyUrl>,
        direct: ureq::config::Config,
    ) -> Result<(ProxyConnector, Option<ureq::Proxy>)> {
        let default = DefaultConnector::new();
        let Some(p) = proxy else { return Ok((ProxyConnector { default, forward: None }, None)) };
        let forward = Forward { uri: p.uri()?, direct, authorization: p.authorization() };
        Ok((ProxyConnector { default, forward: Some(forward) }, Some(p.to_ureq()?)))
    }
}

impl Connector for ProxyConnector {
    type Out = Box<dyn Transport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        // ureq's CONNECT connects to the proxy through this same connector, with the proxy
        // left out of the configuration: that connection must not be forwarded again.
        let forwarded =
            details.uri.scheme() == Some(&Scheme::HTTP) && details.config.proxy().is_some();
        let Some(fw) = self.forward.as_ref().filter(|_| forwarded) else {
            return self.default.connect(details, None);
        };
        let origin = match details.uri.authority() {
            Some(a) => format!("http://{a}"),
            None => return Err(ureq::Error::BadUri(details.uri.to_string())),
        };
        let addrs = ureq::unversioned::resolver::DefaultResolver::default().resolve(
            &fw.uri,
            &fw.direct,
            details.timeout,
        )?;
        let to_proxy = ConnectionDetails {
            uri: &fw.uri,
            addrs,
            config: &fw.direct,
            request_level: details.request_level,
            resolver: details.resolver,
            now: details.now,
            timeout: details.timeout,
            current_time: details.current_time.clone(),
            run_connector: details.run_connector.clone(),
            register_shutdown: details.register_shutdown.clone(),
        };
        let Some(inner) = self.default.connect(&to_proxy, None)? else { return Ok(None) };
        let authorization = fw.authorization.clone();
        Ok(Some(Box::new(AbsoluteForm { inner, origin, authorization })))
    }
}

/// A connection to a proxy on behalf of one http origin: each request head leaves with its
/// target in absolute form and with the proxy's credentials.
#[derive(Debug)]
struct AbsoluteForm {
    inner: Box<dyn Transport>,
    origin: String,
    authorization: Option<String>,
}

impl Transport for AbsoluteForm {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let out = &self.inner.buffers().output()[..amount];
        let Some(head) = absolute_head(out, &self.origin, self.authorization.as_deref()) else {
            return self.inner.transmit_output(amount, timeout);
        };
        let mut rest = &head[..];
        while !rest.is_empty() {
            let out = self.inner.buffers().output();
            let n = rest.len().min(out.len());
            if n == 0 {
                return Err(ureq::Error::Io(std::io::Error::other("no room in the output buffer")));
            }
            out[..n].copy_from_slice(&rest[..n]);
            self.inner.transmit_output(n, timeout)?;
            rest = &rest[n..];
        }
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }
}

/// `bytes` with its request line turned into absolute form and `Proxy-Authorization` added,
/// when they start a request head (`METHOD /target HTTP/1.x`); None for anything else (a body).
fn absolute_head(bytes: &[u8], origin: &str, authorization: Option<&str>) -> Option<Vec<u8>> {
    let end = bytes.windows(2).take(16 << 10).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let is_head = parts.next().is_none()
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && target.starts_with('/')
        && version.starts_with("HTTP/1.");
    if !is_head {
        return None;
    }
    let mut out = format!("{method} {origin}{target} {version}\r\n").into_bytes();
    if let Some(a) = authorization {
        out.extend_from_slice(format!("Proxy-Authorization: {a}\r\n").as_bytes());
    }
    out.extend_from_slice(&bytes[end + 2..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Settings {
        Settings::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    fn chosen(s: &Settings, url: &str) -> Option<String> {
        s.for_url(&Url::parse(url).unwrap()).unwrap().map(|p| p.to_string())
    }

    #[test]
    fn the_scheme_picks_the_variable_lower_case_first_all_proxy_last() {
        let s = settings(&[
            ("http_proxy", "http://lower:3128"),
            ("HTTP_PROXY", "http://upper:3128"),
            ("HTTPS_PROXY", "https://secure:8443"),
        ]);
        assert_eq!(chosen(&s, "http://a.test/x").as_deref(), Some("http://lower:3128"));
        assert_eq!(chosen(&s, "https://a.test/x").as_deref(), Some("https://secure:8443"));
        let s = settings(&[("HTTP_PROXY", "upper"), ("ALL_PROXY", "all:99"), ("https_proxy", "")]);
        assert_eq!(chosen(&s, "http://a.test/x").as_deref(), Some("http://upper:1080"));
        assert_eq!(
            chosen(&s, "https://a.test/x").as_deref(),
            Some("http://all:99"),
            "empty = unset"
        );
        assert_eq!(chosen(&settings(&[]), "https://a.test/x"), None);
    }

    #[test]
    fn no_proxy_matches_names_suffixes_addresses_ranges_and_ports() {
        let s = settings(&[
            ("ALL_PROXY", "http://p:3128"),
            ("NO_PROXY", "example.com, .lab.test,*.corp ,10.0.0.0/8 192.168.1.7,[::1],h.test:8080"),
        ]);
        for direct in [
            "http://example.com/",
            "http://www.EXAMPLE.com./",
            "https://lab.test/",
            "http://a.b.lab.test/",
            "http://x.corp/",
            "http://10.20.30.40:81/",
            "https://192.168.1.7/",
            "http://[::1]:8080/",
            "http://h.test:8080/",
        ] {
            assert_eq!(chosen(&s, direct), None, "{direct}");
        }
        for proxied in [
            "http://notexample.com/",
            "http://example.com.evil/",
            "http://11.0.0.1/",
            "http://192.168.1.8/",
            "http://h.test/",
            "http://127.0.0.1:8080/",
            "http://localhost/",
        ] {
            assert!(chosen(&s, proxied).is_some(), "{proxied}");
        }
        let all = settings(&[("https_proxy", "p:1"), ("no_proxy", "*"), ("NO_PROXY", "x")]);
        assert_eq!(chosen(&all, "https://anything.test/"), None);
        let v6 = NoProxy::parse("fd00::/8,::1");
        assert!(v6.bypasses("fd12::5", 80) && v6.bypasses("::1", 1) && !v6.bypasses("fe80::1", 80));
        assert!(NoProxy::parse("0.0.0.0/0").bypasses("8.8.8.8", 53));
    }

    #[test]
    fn proxy_urls_parse_and_never_show_the_password() {
        let p = ProxyUrl::parse("HTTPS_PROXY", "http://bob:s%3Acret@Proxy.lab:3128/").unwrap();
        assert_eq!(p.to_string(), "http://bob:***@proxy.lab:3128");
        assert_eq!(format!("{p:?}"), "ProxyUrl(http://bob:***@proxy.lab:3128)");
        assert_eq!(p.password.as_deref(), Some("s:cret"));
        assert_eq!(p.authorization().as_deref(), Some("Basic Ym9iOnM6Y3JldA=="));
        assert_eq!(ProxyUrl::parse("x", "https://[::1]").unwrap().to_string(), "https://[::1]:443");
        for bad in ["socks5://u:hunter2@h:1080", "http://u:hunter2@h:notaport", "http://u:hunter2@"]
        {
            let e = ProxyUrl::parse("ALL_PROXY", bad).unwrap_err().to_string();
            assert!(e.starts_with("ALL_PROXY=") && !e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn request_heads_go_to_the_proxy_in_absolute_form() {
        let head = b"GET /a/b.img?x=1 HTTP/1.1\r\nhost: t:8080\r\n\r\n";
        let out = absolute_head(head, "http://t:8080", Some("Basic eA==")).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET http://t:8080/a/b.img?x=1 HTTP/1.1\r\nProxy-Authorization: Basic eA==\r\n\
             host: t:8080\r\n\r\n"
        );
        assert_eq!(absolute_head(b"{\"json\": \"GET / HTTP/1.1\"}\r\n", "http://t", None), None);
        assert_eq!(absolute_head(b"partial GET", "http://t", None), None);
    }
}
