//! http(s) sources: a streaming GET that resumes with `Range` after a dropped connection or a
//! server error, positioned reads through `Range` requests (for qcow2), and small documents with
//! a size cap ([`get_bytes`]).
//!
//! Redirects are followed here rather than by ureq, so that every resume starts again from the
//! URL the user gave (signed redirect targets expire) and so that an `Authorization` header never
//! leaves the origin it was meant for.
//!
//! Trust: the Mozilla root certificates built into bty (a netbooted live environment has no
//! certificate store), the system bundle when there is one, and the PEM certificates in the
//! files named by `SSL_CERT_FILE` and `BTY_CA_FILE` (a lab's own CA).

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ureq::http::{HeaderMap, StatusCode};

use crate::error::{Context, Error, Result};
use crate::io::ReadAt;
use crate::source::proxy::{self, ProxyUrl};
use crate::source::trust;
pub(crate) use crate::source::trust::trust_for_host;

/// Redirect hops followed for one request (curl and browsers stop around 20; 10 is plenty).
const MAX_REDIRECTS: usize = 10;
/// Failed attempts in a row (no byte received in between) before a transfer gives up.
pub(crate) const MAX_ATTEMPTS: u32 = 6;
/// First wait before a retry; doubled after each failure up to BACKOFF_MAX (about 16 s in all).
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Seconds allowed to connect, to get response headers, and for each read of the body (a
/// stalled server is a failure like a dropped one); BTY_HTTP_TIMEOUT overrides it.
const DEFAULT_TIMEOUT_S: u64 = 30;
/// A positioned read this far ahead of the open Range response reads on through the gap rather
/// than paying for a new request (on a LAN 1 MiB costs about one round trip).
const SKIP_AHEAD: u64 = 1 << 20;
/// An http(s) URL, split into what redirects, `Authorization` scoping and messages need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    scheme: String,
    /// `host[:port]`, lower case.
    authority: String,
    /// Path and query, starting with '/'.
    path: String,
}

impl Url {
    /// Parses an absolute http:// or https:// URL (no user info; the fragment is dropped).
    pub fn parse(s: &str) -> Result<Url> {
        let (scheme, rest) =
            s.split_once("://").with_context(|| format!("{s:?} is not an http(s) URL"))?;
        let scheme = scheme.to_ascii_lowercase();
        crate::ensure!(
            scheme == "http" || scheme == "https",
            "{s:?} is not an http(s) URL (scheme {scheme})"
        );
        let rest = rest.split('#').next().unwrap_or_default();
        let cut = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(cut);
        crate::ensure!(!authority.is_empty(), "{s:?} has no host");
        crate::ensure!(
            !authority.contains('@'),
            "{scheme}://{}{path}: user names and passwords in URLs are not supported (they \
             would show in logs; the URL is shown here without them)",
            authority.rsplit('@').next().unwrap_or_default()
        );
        crate::ensure!(
            s.bytes().all(|b| b.is_ascii_graphic()),
            "{s:?}: URLs must not contain spaces or control characters (percent-encode them)"
        );
        let path = match path.chars().next() {
            None => "/".to_string(),
            Some('?') => format!("/{path}"),
            Some(_) => path.to_string(),
        };
        Ok(Url { scheme, authority: authority.to_ascii_lowercase(), path })
    }

    /// `scheme://host[:port]`: requests to the same origin may carry its credentials.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    /// `host[:port]` as written.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Whether the scheme is https.
    pub fn is_https(&self) -> bool {
        self.scheme == "https"
    }

    /// The last path segment, percent-decoded: the file name that the format is checked against.
    pub fn file_name(&self) -> String {
        let path = self.path.split('?').next().unwrap_or_default();
        crate::source::percent_decode(path.rsplit('/').next().unwrap_or_default(), false)
    }

    /// The URL a `Location` header points to, resolved against this one.
    pub fn join(&self, location: &str) -> Result<Url> {
        let location = location.trim();
        if let Some(rest) = location.strip_prefix("//") {
            return Url::parse(&format!("{}://{rest}", self.scheme));
        }
        if location.starts_with('/') {
            return Url::parse(&format!("{}{location}", self.origin()));
        }
        let scheme_end = location.find("://");
        let first_sep = location.find(['/', '?']);
        if let Some(i) = scheme_end {
            if first_sep.is_none_or(|j| i < j) {
                return Url::parse(location);
            }
        }
        let base = self.path.split('?').next().unwrap_or("/");
        let joined = if location.starts_with('?') {
            format!("{base}{location}")
        } else {
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        Url::parse(&format!("{}{joined}", self.origin()))
    }

    /// The URL without its query (which may hold a signature or a token), for messages.
    pub fn without_query(&self) -> String {
        let path = self.path.split('?').next().unwrap_or_default();
        format!("{}://{}{path}", self.scheme, self.authority)
    }

    /// A URL on the same origin with another path (which starts with '/').
    pub fn with_path(&self, path: &str) -> Url {
        Url { scheme: self.scheme.clone(), authority: self.authority.clone(), path: path.into() }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)
    }
}

/// Credentials for one origin: sent there, never to another one a redirect leads to.
#[derive(Clone, Debug)]
pub(crate) struct Auth {
    pub origin: String,
    /// The whole `Authorization` header value (`Bearer ...`, `Basic ...`).
    pub value: String,
}

/// A response after redirects.
pub(crate) struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: ureq::Body,
    /// The proxy it came through: a 407 (or a 5xx) may be the proxy's answer, not the server's.
    pub proxy: Option<ProxyUrl>,
}

impl Response {
    /// A header's value as text (None when absent or not ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Content-Length, when the server sent one.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.trim().parse().ok())
    }

    /// Reads at most `max` bytes of the body; more is an error.
    pub fn read_capped(self, max: u64, what: &str) -> Result<Vec<u8>, Fail> {
        let mut out = Vec::new();
        let mut r = self.body.into_reader().take(max + 1);
        r.read_to_end(&mut out)
            .map_err(|e| Fail::Transient(Error::msg(format!("{what}: reading the body: {e}"))))?;
        if out.len() as u64 > max {
            return Err(Fail::Final(Error::msg(format!(
                "{what}: the response is larger than the {max} bytes allowed"
            ))));
        }
        Ok(out)
    }

    /// The failure that this status stands for, worth retrying or not. A registry's JSON error
    /// text is appended when it sent one.
    pub fn status_fail(self, what: &str) -> Fail {
        let status = self.status;
        let via = self.proxy.as_ref().map(|p| format!(" (through the proxy {p})"));
        let reason = StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason());
        let detail = self.read_capped(64 << 10, what).ok().and_then(|b| registry_error(&b));
        let e = Error::msg(format!(
            "{what}: HTTP {status}{}{}{}",
            reason.map(|r| format!(" {r}")).unwrap_or_default(),
            detail.map(|d| format!(" ({d})")).unwrap_or_default(),
            via.unwrap_or_default(),
        ));
        if status >= 500 || status == 429 || status == 408 {
            Fail::Transient(e)
        } else {
            Fail::Final(e)
        }
    }
}

/// The first message of an OCI distribution error body (`{"errors":[{"message":...}]}`).
fn registry_error(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let first = v.get("errors")?.get(0)?;
    let msg = first.get("message")?.as_str()?;
    Some(msg.chars().take(200).collect())
}

/// Why an attempt failed: worth another try (network trouble, a 5xx) or final (a 404, a changed
/// file, a bad certificate).
pub(crate) enum Fail {
    Transient(Error),
    Final(Error),
}

impl From<Fail> for Error {
    fn from(f: Fail) -> Error {
        match f {
            Fail::Transient(e) | Fail::Final(e) => e,
        }
    }
}

/// Counts failures in a row, waits with backoff between attempts, and gives up after
/// `MAX_ATTEMPTS`; a transfer that makes progress starts counting again.
pub(crate) struct Retry {
    failures: u32,
}

impl Retry {
    pub fn new() -> Retry {
        Retry { failures: 0 }
    }

    /// Bytes arrived: the connection works again.
    pub fn progressed(&mut self) {
        self.failures = 0;
    }

    /// Records a transient failure: sleeps before the next attempt, or returns the error when
    /// the attempts are used up.
    pub fn failed(&mut self, e: Error) -> Result<()> {
        self.failures += 1;
        if self.failures >= MAX_ATTEMPTS {
            return Err(Error::msg(format!("{e} (gave up after {MAX_ATTEMPTS} attempts)")));
        }
        let wait = BACKOFF_FIRST.saturating_mul(1 << (self.failures - 1).min(16)).min(BACKOFF_MAX);
        crate::warn!(
            "{e}; trying again in {:.2} s (attempt {} of {MAX_ATTEMPTS})",
            wait.as_secs_f64(),
            self.failures + 1
        );
        std::thread::sleep(wait);
        Ok(())
    }
}

/// Runs `attempt` until it succeeds, fails for good, or has failed `MAX_ATTEMPTS` times.
pub(crate) fn with_retries<T>(mut attempt: impl FnMut() -> Result<T, Fail>) -> Result<T> {
    let mut retry = Retry::new();
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(Fail::Final(e)) => return Err(e),
            Err(Fail::Transient(e)) => retry.failed(e)?,
        }
    }
}

/// Seconds allowed for each step of a source's request: BTY_HTTP_TIMEOUT or the default.
fn source_timeout() -> Result<Duration> {
    static TIMEOUT: OnceLock<Duration> = OnceLock::new();
    if let Some(t) = TIMEOUT.get() {
        return Ok(*t);
    }
    let secs = match std::env::var("BTY_HTTP_TIMEOUT") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&s| s > 0)
            .with_context(|| format!("BTY_HTTP_TIMEOUT={v:?}: expected a number of seconds"))?,
        Err(_) => DEFAULT_TIMEOUT_S,
    };
    Ok(*TIMEOUT.get_or_init(|| Duration::from_secs(secs)))
}

/// The agent for requests to `url` and the proxy it goes through (from the environment, see
/// [`proxy`](crate::source::proxy)). Agents are kept per timeout and proxy, so connections
/// are pooled and the trust store is read once.
pub(crate) fn agent_for(url: &Url, timeout: Duration) -> Result<(ureq::Agent, Option<ProxyUrl>)> {
    type Agents = Mutex<HashMap<(Duration, Option<ProxyUrl>, Vec<PathBuf>), ureq::Agent>>;
    static AGENTS: OnceLock<Agents> = OnceLock::new();
    let proxy = proxy::Settings::from_env().for_url(url)?;
    let extra = trust::host_cas(url.authority());
    let key = (timeout, proxy.clone(), extra.clone());
    let agents = AGENTS.get_or_init(Agents::default);
    if let Some(a) = agents.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok((a.clone(), proxy));
    }
    let agent = build_agent(timeout, proxy.as_ref(), &extra)?;
    agents.lock().unwrap_or_else(|e| e.into_inner()).insert(key, agent.clone());
    Ok((agent, proxy))
}

/// An agent like the sources' (same trust store, no redirects followed, statuses returned
/// rather than raised, the environment's proxy for `url`) with its own timeout: bty-web calls
/// use a short one, so an unreachable server costs seconds, not minutes.
pub(crate) fn agent_with_timeout(url: &str, timeout: Duration) -> Result<ureq::Agent> {
    Ok(agent_for(&Url::parse(url)?, timeout)?.0)
}

fn build_agent(
    timeout: Duration,
    proxy: Option<&ProxyUrl>,
    extra: &[PathBuf],
) -> Result<ureq::Agent> {
    let tls = trust::tls_for(extra)?;
    let timeout = Some(timeout);
    let config = || {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(timeout)
            .timeout_recv_response(timeout)
            .timeout_per_read(timeout)
            .user_agent(format!("bty/{}", crate::VERSION))
            .tls_config(tls.clone())
    };
    // ureq's default configuration reads the proxy variables itself (without curl's choice by
    // scheme); the proxy is set explicitly, None included, so that only ours counts.
    let (connector, ureq_proxy) = proxy::ProxyConnector::new(proxy, config().proxy(None).build())?;
    Ok(ureq::Agent::with_parts(
        config().proxy(ureq_proxy).build(),
        connector,
        ureq::unversioned::resolver::DefaultResolver::default(),
    ))
}

/// Whether a transport error is worth another attempt.
fn transport_fail(e: ureq::Error, what: &str) -> Fail {
    // rustls reports a refused certificate through an io::Error: no retry will change it.
    let tls = match &e {
        ureq::Error::Rustls(_) | ureq::Error::Tls(_) => true,
        ureq::Error::Io(io) => io.get_ref().is_some_and(|i| i.is::<rustls::Error>()),
        _ => false,
    };
    let transient = !tls
        && matches!(
            e,
            ureq::Error::Io(_)
                | ureq::Error::Timeout(_)
                | ureq::Error::ConnectionFailed
                | ureq::Error::Protocol(_)
                | ureq::Error::BodyStalled
        );
    let text = e.to_string();
    let hint = if tls && (text.contains("UnknownIssuer") || text.contains("certificate")) {
        "; if the server uses a lab CA, point BTY_CA_FILE at its certificate (PEM)"
    } else if tls && text.contains("InvalidContentType") {
        "; the server seems to speak plain http (for a registry, list it in BTY_INSECURE_REGISTRIES)"
    } else {
        ""
    };
    let e = Error::msg(format!("{what}: {text}{hint}"));
    if transient { Fail::Transient(e) } else { Fail::Final(e) }
}

/// Sends one GET with `headers`, following redirects; `auth` goes only to its own origin.
/// A redirect from https to plain http is refused.
pub(crate) fn send(
    url: &Url,
    headers: &[(&str, &str)],
    auth: Option<&Auth>,
) -> Result<Response, Fail> {
    send_redirected(url, headers, auth, false)
}

/// As [`send`], for content-addressed bytes whose sha256 the caller checks (a registry blob, a
/// manifest fetched by digest): these may follow a redirect from https to plain http, as
/// registries do to their storage, since whatever arrives is checked against the digest.
pub(crate) fn send_pinned(
    url: &Url,
    headers: &[(&str, &str)],
    auth: Option<&Auth>,
) -> Result<Response, Fail> {
    send_redirected(url, headers, auth, true)
}

fn send_redirected(
    url: &Url,
    headers: &[(&str, &str)],
    auth: Option<&Auth>,
    pinned: bool,
) -> Result<Response, Fail> {
    let timeout = source_timeout().map_err(Fail::Final)?;
    let mut url = url.clone();
    for _ in 0..=MAX_REDIRECTS {
        // Each hop picks its own proxy: a redirect may lead to a host NO_PROXY lists.
        let (agent, proxy) = agent_for(&url, timeout).map_err(Fail::Final)?;
        let what = match &proxy {
            Some(p) => format!("fetching {url} through the proxy {p}"),
            None => format!("fetching {url}"),
        };
        let mut req = agent.get(url.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(a) = auth.filter(|a| a.origin == url.origin()) {
            req = req.header("Authorization", a.value.as_str());
        }
        let resp = req.call().map_err(|e| transport_fail(e, &what))?;
        let status = resp.status().as_u16();
        if matches!(status, 301 | 302 | 303 | 307 | 308) {
            let location =
                resp.headers().get("location").and_then(|v| v.to_str().ok()).ok_or_else(|| {
                    Fail::Final(Error::msg(format!("{what}: HTTP {status} without a Location")))
                })?;
            let next = url.join(location).map_err(|e| Fail::Final(e.wrap(what.clone())))?;
            if !pinned {
                check_redirect(&url, &next).map_err(Fail::Final)?;
            }
            url = next;
            continue;
        }
        let (parts, body) = resp.into_parts();
        return Ok(Response { status, headers: parts.headers, body, proxy });
    }
    Err(Fail::Final(Error::msg(format!("fetching {url}: more than {MAX_REDIRECTS} redirects"))))
}

/// Refuses a redirect from https to plain http: whoever sits on the path could then swap the
/// bytes (an unpinned image is flashed as served; a catalog or a sha256 list pins nothing
/// itself) or read them. Refused for every http(s) URL, even with `--sha256` (which the source
/// does not know about, and which is checked only once the whole image was written); only
/// content-addressed registry requests ([`send_pinned`]) may follow one. The URLs are shown
/// without their query, where signed URLs carry their credentials.
fn check_redirect(from: &Url, to: &Url) -> Result<()> {
    crate::ensure!(
        !from.is_https() || to.is_https(),
        "fetching {}: refusing its redirect to {}: it leaves https for plain http, where the \
         bytes could be read or replaced on the way (serve the file over https, or give the \
         http:// URL directly if plain http is meant)",
        from.without_query(),
        to.without_query()
    );
    Ok(())
}

/// How to GET one remote file: plain http(s), or a registry blob with its token dance.
pub(crate) trait Fetch: Send + Sync {
    /// Sends one GET for the file with extra headers (Range, If-Range), following redirects.
    fn get(&self, headers: &[(&str, &str)]) -> Result<Response, Fail>;
}

/// A plain http(s) URL, and headers every request to it carries (none for a flash; the chain
/// of caches for a bty-web cache asking an upstream).
struct Plain {
    url: Url,
    headers: Vec<(String, String)>,
}

impl Fetch for Plain {
    fn get(&self, headers: &[(&str, &str)]) -> Result<Response, Fail> {
        let mut all: Vec<(&str, &str)> =
            self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        all.extend_from_slice(headers);
        send(&self.url, &all, None)
    }
}

/// A remote file as its first response described it.
pub(crate) struct Resource {
    fetch: Box<dyn Fetch>,
    /// The URL or reference as the user gave it, for messages.
    pub display: String,
    /// Total length (Content-Length of the first full response).
    pub len: Option<u64>,
    etag: Option<String>,
    last_modified: Option<String>,
}

impl Resource {
    /// Sends the first GET (retrying transient failures) and returns the resource with a stream
    /// over that response's body.
    pub fn open(fetch: Box<dyn Fetch>, display: String) -> Result<(Arc<Resource>, Resumable)> {
        Resource::open_sized(fetch, display, None)
    }

    /// As `open`, for a file whose length is known beforehand (a blob's size in its manifest):
    /// a response of another length is refused.
    pub fn open_sized(
        fetch: Box<dyn Fetch>,
        display: String,
        expected: Option<u64>,
    ) -> Result<(Arc<Resource>, Resumable)> {
        Resource::open_with(fetch, display, expected, true)
    }

    /// As `open_sized`; `retry` false sends the first GET only once (later resumes still retry).
    fn open_with(
        fetch: Box<dyn Fetch>,
        display: String,
        expected: Option<u64>,
        retry: bool,
    ) -> Result<(Arc<Resource>, Resumable)> {
        let what = format!("fetching {display}");
        let first = || {
            let resp = fetch.get(&[])?;
            if resp.status != 200 {
                return Err(resp.status_fail(&what));
            }
            Ok(resp)
        };
        let resp = if retry { with_retries(first)? } else { first().map_err(Error::from)? };
        let len = match (resp.content_length(), expected) {
            (Some(got), Some(want)) if got != want => crate::bail!(
                "{what}: the server sends {got} bytes, but the manifest says the blob has {want}"
            ),
            (got, want) => got.or(want),
        };
        let res = Arc::new(Resource {
            len,
            etag: resp.header("etag").map(str::to_string),
            last_modified: resp.header("last-modified").map(str::to_string),
            fetch,
            display,
        });
        let mut stream = Resumable::new(Arc::clone(&res));
        stream.body = Some(resp.body.into_reader());
        Ok((res, stream))
    }

    /// The validator for `If-Range`: a strong ETag, else Last-Modified (RFC 9110 13.1.5).
    fn if_range(&self) -> Option<&str> {
        self.etag.as_deref().filter(|e| !e.starts_with("W/")).or(self.last_modified.as_deref())
    }

    /// Why a full (200) response cannot continue the file we started, if it cannot.
    fn changed(&self, resp: &Response) -> Option<String> {
        let pairs = [
            ("ETag", &self.etag, resp.header("etag")),
            ("Last-Modified", &self.last_modified, resp.header("last-modified")),
        ];
        for (name, was, now) in pairs {
            if let (Some(was), Some(now)) = (was, now) {
                if was != now {
                    return Some(format!("its {name} changed from {was} to {now}"));
                }
            }
        }
        match (self.len, resp.content_length()) {
            (Some(a), Some(b)) if a != b => Some(format!("its length changed from {a} to {b}")),
            _ => None,
        }
    }

    /// Sends a GET for the bytes from `from` on (guarded by If-Range). The flag is false when
    /// the server answered with the whole file instead.
    fn get_from(&self, from: u64) -> Result<(Response, bool), Fail> {
        let what = format!("fetching {} from byte {from}", self.display);
        let range = format!("bytes={from}-");
        let mut headers = vec![("Range", range.as_str())];
        if let Some(v) = self.if_range() {
            headers.push(("If-Range", v));
        }
        let resp = self.fetch.get(&headers)?;
        match resp.status {
            206 => {
                let cr = resp.header("content-range").unwrap_or_default().to_string();
                let (start, total) = parse_content_range(&cr).ok_or_else(|| {
                    Fail::Final(Error::msg(format!("{what}: bad Content-Range {cr:?}")))
                })?;
                if start != from || total.zip(self.len).is_some_and(|(t, l)| t != l) {
                    return Err(Fail::Final(Error::msg(format!(
                        "{what}: the server sent the range {cr:?}, which does not continue the file"
                    ))));
                }
                Ok((resp, true))
            }
            200 => {
                if let Some(why) = self.changed(&resp) {
                    return Err(Fail::Final(Error::msg(format!(
                        "{what}: the file changed on the server during the download ({why}); start again"
                    ))));
                }
                Ok((resp, false))
            }
            _ => Err(resp.status_fail(&what)),
        }
    }
}

/// `bytes START-END/TOTAL` -> (START, Some(TOTAL)), or None for TOTAL `*`.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = if total.trim() == "*" { None } else { Some(total.trim().parse().ok()?) };
    Some((start, total))
}

/// The file front to back as one `Read`. A dropped connection, a stalled read or a 5xx is
/// resumed with `Range: bytes=N-` from where the bytes stopped, so whoever reads (the hash, the
/// decoder, the writer) sees one continuous stream. A server that ignores Range sends the whole
/// file again; the bytes already delivered are skipped.
pub(crate) struct Resumable {
    res: Arc<Resource>,
    /// Bytes delivered to the reader.
    pos: u64,
    body: Option<ureq::BodyReader<'static>>,
    /// Bytes of the current body to drop before delivering (a restart from byte 0).
    discard: u64,
    retry: Retry,
}

impl Resumable {
    /// A stream from byte 0 that sends its first request on the first read.
    pub fn new(res: Arc<Resource>) -> Resumable {
        Resumable { res, pos: 0, body: None, discard: 0, retry: Retry::new() }
    }

    fn reopen(&mut self) -> Result<(), Fail> {
        let (resp, ranged) = self.res.get_from(self.pos)?;
        if !ranged && self.pos > 0 {
            crate::warn!(
                "{}: the server ignored the Range request; downloading again from byte 0 and \
                 skipping the {} bytes already read",
                self.res.display,
                self.pos
            );
            self.discard = self.pos;
        } else if self.pos > 0 {
            crate::info!("{}: resumed at byte {}", self.res.display, self.pos);
        }
        self.body = Some(resp.body.into_reader());
        Ok(())
    }

    fn try_read(&mut self, buf: &mut [u8]) -> Result<usize, Fail> {
        if self.body.is_none() {
            self.reopen()?;
        }
        let Some(body) = self.body.as_mut() else { return Ok(0) };
        let lost = |pos: u64, e: &dyn std::fmt::Display| {
            Fail::Transient(Error::msg(format!("connection lost at byte {pos}: {e}")))
        };
        while self.discard > 0 {
            let mut scratch = [0u8; 64 << 10];
            let want = scratch.len().min(usize::try_from(self.discard).unwrap_or(usize::MAX));
            match body.read(&mut scratch[..want]) {
                Ok(0) => return Err(lost(self.pos - self.discard, &"end of response")),
                Ok(n) => self.discard -= n as u64,
                Err(e) => return Err(lost(self.pos - self.discard, &e)),
            }
        }
        match body.read(buf) {
            Ok(0) => match self.res.len {
                Some(len) if self.pos < len => {
                    Err(lost(self.pos, &format_args!("the response ended before byte {len}")))
                }
                _ => Ok(0),
            },
            Ok(n) => {
                self.pos += n as u64;
                if self.res.len.is_some_and(|len| self.pos > len) {
                    return Err(Fail::Final(Error::msg(format!(
                        "{}: the server sent more than the {} bytes it announced",
                        self.res.display,
                        self.res.len.unwrap_or_default()
                    ))));
                }
                Ok(n)
            }
            Err(e) => Err(lost(self.pos, &e)),
        }
    }
}

impl Read for Resumable {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.try_read(buf) {
                Ok(n) => {
                    if n > 0 {
                        self.retry.progressed();
                    }
                    return Ok(n);
                }
                Err(Fail::Final(e)) => return Err(io::Error::other(e.to_string())),
                Err(Fail::Transient(e)) => {
                    self.body = None;
                    self.retry
                        .failed(e.wrap(self.res.display.clone()))
                        .map_err(|e| io::Error::other(e.to_string()))?;
                }
            }
        }
    }
}

/// Positioned reads over Range requests. One response stays open and serves reads that move
/// forward (skipping small gaps), so a qcow2 image whose clusters lie in disk order streams
/// through few requests; a read elsewhere opens a new range.
pub(crate) struct Ranged {
    res: Arc<Resource>,
    cur: Mutex<Option<Cursor>>,
}

/// The open Range response and the last bytes it gave.
struct Cursor {
    /// File offset of the next byte of `body`.
    pos: u64,
    body: ureq::BodyReader<'static>,
    /// The bytes just before `pos`: qcow2 reads compressed clusters in whole sectors, so each
    /// read overlaps the start of the next cluster; those overlaps are served from here.
    tail: Vec<u8>,
}

/// Bytes kept behind the cursor (a sector of overlap is what qcow2 needs; a cluster is ample).
const TAIL: usize = 64 << 10;

impl Cursor {
    fn keep(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(TAIL)..];
        let excess = (self.tail.len() + bytes.len()).saturating_sub(TAIL);
        self.tail.drain(..excess);
        self.tail.extend_from_slice(bytes);
    }
}

impl Ranged {
    pub fn new(res: Arc<Resource>) -> Ranged {
        Ranged { res, cur: Mutex::new(None) }
    }

    fn try_read_at(
        &self,
        cur: &mut Option<Cursor>,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<usize, Fail> {
        if let Some(c) = cur.as_ref() {
            let tail_start = c.pos - c.tail.len() as u64;
            if (tail_start..c.pos).contains(&offset) {
                let i = (offset - tail_start) as usize;
                let n = buf.len().min(c.tail.len() - i);
                buf[..n].copy_from_slice(&c.tail[i..i + n]);
                return Ok(n);
            }
            if c.pos > offset || offset - c.pos > SKIP_AHEAD {
                *cur = None;
            }
        }
        if cur.is_none() {
            let (resp, ranged) = self.res.get_from(offset)?;
            if !ranged {
                return Err(Fail::Final(Error::msg(format!(
                    "{}: the server does not support Range requests (it sent the whole file for \
                     a range), and qcow2 images need them: download the file first, or serve it \
                     from a server that does",
                    self.res.display
                ))));
            }
            *cur = Some(Cursor { pos: offset, body: resp.body.into_reader(), tail: Vec::new() });
        }
        let Some(c) = cur.as_mut() else { return Ok(0) };
        let lost = |at: u64, e: &dyn std::fmt::Display| {
            Fail::Transient(Error::msg(format!(
                "{}: connection lost at byte {at}: {e}",
                self.res.display
            )))
        };
        while c.pos < offset {
            let mut scratch = [0u8; 64 << 10];
            let want = scratch.len().min((offset - c.pos) as usize);
            match c.body.read(&mut scratch[..want]) {
                Ok(0) => return Err(lost(c.pos, &"end of response")),
                Ok(n) => {
                    c.pos += n as u64;
                    c.keep(&scratch[..n]);
                }
                Err(e) => return Err(lost(c.pos, &e)),
            }
        }
        match c.body.read(buf) {
            Ok(0) if self.res.len.is_some_and(|len| offset < len) => {
                Err(lost(offset, &"end of response"))
            }
            Ok(n) => {
                c.pos += n as u64;
                c.keep(&buf[..n]);
                Ok(n)
            }
            Err(e) => Err(lost(offset, &e)),
        }
    }
}

impl ReadAt for Ranged {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if buf.is_empty() || self.res.len.is_some_and(|len| offset >= len) {
            return Ok(0);
        }
        let mut cur = self.cur.lock().unwrap_or_else(|p| p.into_inner());
        let mut retry = Retry::new();
        loop {
            match self.try_read_at(&mut cur, buf, offset) {
                Ok(n) => return Ok(n),
                Err(Fail::Final(e)) => {
                    *cur = None;
                    return Err(io::Error::new(io::ErrorKind::Unsupported, e.to_string()));
                }
                Err(Fail::Transient(e)) => {
                    *cur = None;
                    retry.failed(e).map_err(|e| io::Error::other(e.to_string()))?;
                }
            }
        }
    }

    fn size(&self) -> Option<u64> {
        self.res.len
    }
}

/// An opened http(s) source: its name, the resource, and a stream over the first response.
pub(crate) struct Opened {
    pub display: String,
    pub name: String,
    pub resource: Arc<Resource>,
    pub stream: Resumable,
}

/// Opens an http(s) URL for reading: the first GET is sent now, so a 404 or a TLS failure is
/// reported before anything else happens.
pub(crate) fn open(spec: &str) -> Result<Opened> {
    let url = Url::parse(spec)?;
    let name = url.file_name();
    let display = url.to_string();
    let (resource, stream) =
        Resource::open(Box::new(Plain { url, headers: Vec::new() }), display.clone())?;
    Ok(Opened { display, name, resource, stream })
}

/// As [`open`], but a first request that fails is not retried: for a caller with another place
/// to get the same bytes from (bty-web's cache, trying its upstreams before the origin), which
/// moves on at once rather than waiting out the backoff on a server that is down. A transfer
/// that started still resumes and retries as usual.
pub(crate) fn open_once(spec: &str, headers: &[(&str, &str)]) -> Result<Opened> {
    let url = Url::parse(spec)?;
    let name = url.file_name();
    let display = url.to_string();
    let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    let (resource, stream) =
        Resource::open_with(Box::new(Plain { url, headers }), display.clone(), None, false)?;
    Ok(Opened { display, name, resource, stream })
}

/// Fetches a small document (a sha256 list, a catalog TOML) from an http(s) URL: redirects
/// followed, transient failures retried, and refused when larger than `max_bytes`.
///
/// Errors name the URL and the cause: `fetching https://host/x.toml: HTTP 404 Not Found`.
pub fn get_bytes(url: &str, max_bytes: u64) -> Result<Vec<u8>> {
    let url = Url::parse(url)?;
    let what = format!("fetching {url}");
    with_retries(|| {
        let resp = send(&url, &[], None)?;
        if resp.status != 200 {
            return Err(resp.status_fail(&what));
        }
        if resp.content_length().is_some_and(|n| n > max_bytes) {
            return Err(Fail::Final(Error::msg(format!(
                "{what}: the response is larger than the {max_bytes} bytes allowed"
            ))));
        }
        resp.read_capped(max_bytes, &what)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_join_like_browsers() {
        let u = Url::parse("HTTPS://Host.example:8443/a/b/disk%20one.img.zst?x=1#frag").unwrap();
        assert_eq!(u.origin(), "https://host.example:8443");
        assert_eq!(u.file_name(), "disk one.img.zst");
        assert_eq!(u.to_string(), "https://host.example:8443/a/b/disk%20one.img.zst?x=1");
        assert_eq!(u.join("/c").unwrap().to_string(), "https://host.example:8443/c");
        assert_eq!(u.join("c.img").unwrap().to_string(), "https://host.example:8443/a/b/c.img");
        assert_eq!(
            u.join("?y=2").unwrap().to_string(),
            "https://host.example:8443/a/b/disk%20one.img.zst?y=2"
        );
        assert_eq!(u.join("//cdn.example/z").unwrap().to_string(), "https://cdn.example/z");
        assert_eq!(u.join("http://other/q?u=http://x").unwrap().origin(), "http://other");
        assert_eq!(u.join("/p?u=http://x").unwrap().origin(), "https://host.example:8443");
        assert_eq!(Url::parse("http://h").unwrap().to_string(), "http://h/");
        assert_eq!(Url::parse("http://h?q").unwrap().to_string(), "http://h/?q");
        for bad in ["ftp://h/x", "http://", "http://u:p@h/x", "http://h/a b", "nourl"] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn https_to_http_redirects_are_refused_naming_both_urls() {
        let from = Url::parse("https://a.test/x.img?X-Sig=secret").unwrap();
        let to = Url::parse("http://b.test/y.img?token=secret").unwrap();
        let e = check_redirect(&from, &to).unwrap_err().to_string();
        assert!(e.contains("https://a.test/x.img:") && e.contains("http://b.test/y.img:"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        let https = Url::parse("https://b.test/y.img").unwrap();
        assert!(check_redirect(&from, &https).is_ok());
        assert!(check_redirect(&to, &from).is_ok(), "http to https is an upgrade");
        assert!(check_redirect(&to, &to).is_ok());
    }

    #[test]
    fn content_range_parses_and_refuses_garbage() {
        assert_eq!(parse_content_range("bytes 10-99/100"), Some((10, Some(100))));
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        for bad in ["bytes 9-1/100", "items 0-1/2", "bytes x-1/2", "bytes 0-1"] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn registry_errors_are_read_from_json() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        assert_eq!(registry_error(body).as_deref(), Some("manifest unknown"));
        assert_eq!(registry_error(b"<html>"), None);
    }
}
