//! The HTTP layer over tiny_http: our own `Req` and `Resp` (so routes are plain functions that
//! tests can call), a handler thread per request with a cap, per-route body limits, JSON errors,
//! an access-log line per request, and graceful shutdown on SIGTERM/SIGINT.

use std::io::Read;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::source::percent_decode;

/// A request as routes see it: method, path, decoded query, headers, the whole body.
#[derive(Debug, Default, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: Option<SocketAddr>,
}

impl Req {
    /// The first header of that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The first query parameter of that name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The Host header, or the local address as a fallback (HTTP/1.0 clients).
    pub fn host(&self) -> &str {
        self.header("host").unwrap_or("localhost")
    }
}

/// A response body.
pub enum Body {
    Bytes(Vec<u8>),
    /// Streamed (files): with a length when known, chunked otherwise.
    Stream(Box<dyn Read + Send>, Option<usize>),
    /// Server-sent events, each written and flushed as it arrives; keep-alive comments in between.
    Events(std::sync::mpsc::Receiver<Arc<str>>),
}

/// A response: status, headers, body.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Resp {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Resp {
        Resp {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: Body::Bytes(body.into()),
        }
    }

    /// A JSON body.
    pub fn json(status: u16, value: &impl Serialize) -> Resp {
        match serde_json::to_vec(value) {
            Ok(b) => Resp::new(status, "application/json", b),
            Err(e) => Resp::error(500, &format!("encoding the response: {e}")),
        }
    }

    /// The error shape existing clients expect: `{"detail": "..."}`.
    pub fn error(status: u16, detail: &str) -> Resp {
        Resp::json(status, &serde_json::json!({ "detail": detail }))
    }

    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Resp {
        Resp::new(status, "text/plain; charset=utf-8", body)
    }

    pub fn no_content() -> Resp {
        Resp { status: 204, headers: Vec::new(), body: Body::Bytes(Vec::new()) }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Resp {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Server limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Requests handled at once; beyond it clients get 503 at once instead of queueing.
    pub max_in_flight: usize,
    /// How long shutdown waits for requests in flight.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_in_flight: 256, drain: Duration::from_secs(5) }
    }
}

/// Route-specific body limit: uploads of boot artifacts are big, everything else small.
pub type BodyLimit = fn(method: &str, path: &str) -> usize;

/// Serves until SIGTERM/SIGINT, then stops accepting, waits (bounded) for requests in flight
/// and returns.
pub fn serve(
    server: Arc<tiny_http::Server>,
    handler: Arc<dyn Fn(&Req) -> Resp + Send + Sync>,
    body_limit: BodyLimit,
    limits: Limits,
) {
    let stop = crate::sys::cancel_flag();
    {
        let server = Arc::clone(&server);
        // tiny_http's accept loop blocks; this watcher unblocks it once a signal arrives.
        let _ = thread::Builder::new().name("shutdown".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(100));
            }
            server.unblock();
        });
    }
    let in_flight = Arc::new(AtomicUsize::new(0));
    for rq in server.incoming_requests() {
        if stop.load(Ordering::Relaxed) {
            let _ = rq.respond(to_tiny(Resp::error(503, "shutting down")));
            break;
        }
        if in_flight.fetch_add(1, Ordering::SeqCst) >= limits.max_in_flight {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            crate::warn!(
                "busy: {} requests in flight, refusing {} {}",
                limits.max_in_flight,
                rq.method(),
                rq.url()
            );
            let _ = rq.respond(to_tiny(Resp::error(503, "server busy, try again")));
            continue;
        }
        let (handler, counter) = (Arc::clone(&handler), Arc::clone(&in_flight));
        let spawned = thread::Builder::new().name("http".into()).spawn(move || {
            handle(rq, handler.as_ref(), body_limit);
            counter.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            crate::error!("starting a request thread: {e}");
        }
    }
    let deadline = Instant::now() + limits.drain;
    while in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads one request into a `Req`, runs the handler (a panic becomes a 500), answers and logs.
fn handle(
    mut rq: tiny_http::Request,
    handler: &(dyn Fn(&Req) -> Resp + Send + Sync),
    limit: BodyLimit,
) {
    let started = Instant::now();
    let method = rq.method().as_str().to_ascii_uppercase();
    let url = rq.url().to_string();
    let (path, query) = split_url(&url);
    let peer = rq.remote_addr().copied();
    let headers: Vec<(String, String)> = rq
        .headers()
        .iter()
        .map(|h| (h.field.as_str().as_str().to_ascii_lowercase(), h.value.as_str().to_string()))
        .collect();
    let max = limit(&method, &path);
    let resp = match read_body(&mut rq, max) {
        Err(resp) => resp,
        Ok(body) => {
            let req =
                Req { method: method.clone(), path: path.clone(), query, headers, body, peer };
            match catch_unwind(AssertUnwindSafe(|| handler(&req))) {
                Ok(r) => r,
                Err(_) => {
                    crate::error!("handler panicked on {method} {path}");
                    Resp::error(500, "internal error")
                }
            }
        }
    };
    let status = resp.status;
    if let Body::Events(rx) = resp.body {
        crate::info!(
            "{method} {path} {status} stream {}",
            peer.map(|p| p.ip().to_string()).unwrap_or_else(|| "-".into())
        );
        stream_events(rq, rx);
        return;
    }
    // tiny_http leaves the body out for HEAD itself.
    if let Err(e) = rq.respond(to_tiny(resp)) {
        crate::debug!("answering {method} {path}: {e}");
    }
    // The path only: query strings can carry secrets, and /ui/login bodies are never logged.
    crate::info!(
        "{method} {path} {status} {}ms {}",
        started.elapsed().as_millis(),
        peer.map(|p| p.ip().to_string()).unwrap_or_else(|| "-".into())
    );
}

/// Writes server-sent events straight to the connection: tiny_http's chunked encoder would hold
/// small events back until 8 KiB had gathered. The body ends when the connection closes.
fn stream_events(rq: tiny_http::Request, rx: std::sync::mpsc::Receiver<Arc<str>>) {
    use std::io::Write;
    use std::sync::mpsc::RecvTimeoutError;
    let stop = crate::sys::cancel_flag();
    let mut w = rq.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\nX-Accel-Buffering: no\r\n\r\n";
    if w.write_all(head.as_bytes()).and_then(|_| w.flush()).is_err() {
        return;
    }
    let mut idle = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let chunk: Arc<str> = match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(ev) => {
                idle = Duration::ZERO;
                ev
            }
            Err(RecvTimeoutError::Timeout) => {
                idle += Duration::from_millis(250);
                if idle < Duration::from_secs(15) {
                    continue;
                }
                idle = Duration::ZERO;
                Arc::from(": keep-alive\n\n")
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if w.write_all(chunk.as_bytes()).and_then(|_| w.flush()).is_err() {
            break;
        }
    }
}

/// Reads the body, refusing (413) one larger than `max`, by Content-Length or by counting.
fn read_body(rq: &mut tiny_http::Request, max: usize) -> Result<Vec<u8>, Resp> {
    if rq.body_length().is_some_and(|n| n > max) {
        return Err(Resp::error(413, &format!("request body too large (limit {max} bytes)")));
    }
    let mut body = Vec::new();
    match rq.as_reader().take(max as u64 + 1).read_to_end(&mut body) {
        Ok(_) if body.len() > max => {
            Err(Resp::error(413, &format!("request body too large (limit {max} bytes)")))
        }
        Ok(_) => Ok(body),
        Err(e) => Err(Resp::error(400, &format!("reading the request body: {e}"))),
    }
}

/// Splits "/a/b?x=1&y=%20" into the path and decoded query pairs.
pub fn split_url(url: &str) -> (String, Vec<(String, String)>) {
    let (path, q) = url.split_once('?').unwrap_or((url, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect();
    (percent_decode(path, false), query)
}

fn to_tiny(resp: Resp) -> tiny_http::Response<Box<dyn Read + Send>> {
    let headers = resp
        .headers
        .iter()
        .filter_map(|(n, v)| tiny_http::Header::from_bytes(n.as_bytes(), v.as_bytes()).ok())
        .collect();
    let (data, len): (Box<dyn Read + Send>, Option<usize>) = match resp.body {
        Body::Bytes(b) => {
            let n = b.len();
            (Box::new(std::io::Cursor::new(b)), Some(n))
        }
        Body::Stream(r, n) => (r, n),
        Body::Events(_) => (Box::new(std::io::empty()), Some(0)),
    };
    // A known length is always sent as Content-Length (tiny_http would chunk above 32 KiB).
    tiny_http::Response::new(tiny_http::StatusCode(resp.status), headers, data, len, None)
        .with_chunked_threshold(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_decodes_urls() {
        let (p, q) = split_url("/pxe/AA%3Abb?mac=aa-bb&x=a+b%20c&flag&bad=%zz");
        assert_eq!(p, "/pxe/AA:bb");
        assert_eq!(
            q,
            vec![
                ("mac".into(), "aa-bb".into()),
                ("x".into(), "a b c".into()),
                ("flag".into(), String::new()),
                ("bad".into(), "%zz".into())
            ]
        );
        assert_eq!(split_url("/a+b").0, "/a+b");
        assert_eq!(percent_decode("%", false), "%");
        assert_eq!(percent_decode("%4", false), "%4");
    }

    #[test]
    fn errors_have_the_detail_shape() {
        let r = Resp::error(404, "no machine record for aa:bb:cc:dd:ee:ff");
        let Body::Bytes(b) = r.body else { panic!("bytes") };
        assert_eq!(
            String::from_utf8(b).unwrap(),
            r#"{"detail":"no machine record for aa:bb:cc:dd:ee:ff"}"#
        );
    }
}
