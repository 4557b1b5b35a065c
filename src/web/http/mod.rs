//! Our HTTP/1.1 server: one thread per connection under a global and a per-address cap, one
//! deadline for a whole request head, a minimum transfer rate for bodies, an idle timeout between
//! keep-alive requests, an admission check on the head before any body byte is read, per-route
//! body policies (buffered with a limit and under a global budget, or streamed to the handler),
//! JSON errors, an access-log line per request, server-sent events, and graceful shutdown on
//! SIGTERM/SIGINT.
//!
//! Why not tiny_http (as DESIGN.md first planned): 0.12 allocates the declared Content-Length of
//! an unread body when dropping the request, so one `Content-Length: 10^14` header aborts the
//! process; it has no read timeouts and starts a thread for every connection without a bound.
//! A lab server must survive a broken firmware or a port scan, so the parsing is ours.
//!
//! The files:
//! - `conn`: the listener, accept loop, connection caps, a thread per connection, keep-alive;
//! - `request`: one request: admission, body policy and budget, the handler, the access log;
//! - `parse`: the request head (request line, headers, their limits) and the body's framing;
//! - `body`: the request body as the handler reads it (chunked, 100 Continue, rate, limit);
//! - `respond`: `Resp` and writing it: status line, headers, bodies (files with sendfile(2)),
//!   server-sent events.

mod body;
mod conn;
mod parse;
mod request;
mod respond;

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

pub use conn::{addr_group, bind, serve};
pub use parse::split_url;
pub use respond::{Body, Resp};

/// A request as routes see it: method, path, decoded query, headers and, for buffered routes,
/// the whole body.
#[derive(Debug, Default, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: Option<SocketAddr>,
    /// The address of ours the connection arrived on: one the client can reach us at.
    pub local: Option<SocketAddr>,
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

    /// The Host header, or "localhost" for HTTP/1.0 clients that send none.
    pub fn host(&self) -> &str {
        self.header("host").unwrap_or("localhost")
    }

    /// The declared body length, if any.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }
}

/// Server limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections at once; beyond it a new connection gets 503 and is closed.
    pub max_connections: usize,
    /// Open connections from one address (IPv6: one /64); beyond it 503 and closed at once.
    pub max_connections_per_ip: usize,
    /// Time allowed from the first byte of a request to the end of its head, however the
    /// bytes are spread.
    pub header_timeout: Duration,
    /// Once `body_grace` has passed, a body must keep arriving at this many bytes/s on average.
    pub min_body_rate: u64,
    pub body_grace: Duration,
    /// Bytes all buffered request bodies may hold at once; a body that would go over it gets 503
    /// before it is read.
    pub max_buffered: usize,
    /// How long a keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Longest stall while reading a body or writing a response before the peer is dropped.
    pub io_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 512,
            max_connections_per_ip: 64,
            header_timeout: Duration::from_secs(10),
            min_body_rate: 1024,
            body_grace: Duration::from_secs(10),
            max_buffered: 64 << 20,
            idle_timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(30),
            drain: Duration::from_secs(5),
        }
    }
}

/// How a route takes its request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyPolicy {
    /// Read whole into `Req::body` before the handler runs; larger bodies get 413.
    Buffer(usize),
    /// Left on the connection for the handler to read from its reader, at most this many bytes:
    /// uploads go to disk and the handler checks auth before a byte is read.
    Stream(u64),
    /// Buffered like `Buffer(.0)` (and under the same budget), but a longer body, up to `.1`
    /// bytes, is not refused: the handler gets its first `.0 + 1` bytes in `Req::body` (one more
    /// than the buffer, so it can tell) and reads the rest from its reader. For a body whose
    /// bulk the handler can skip without holding it (the inventory's lshw tree).
    Spill(usize, u64),
}

/// Answers one request; the reader yields the body for `Stream` routes and nothing otherwise.
pub type Handler = dyn Fn(&Req, &mut dyn Read) -> Resp + Send + Sync;

/// Looks at a request's head (its `body` still empty) before any body byte is read or
/// buffered: an `Err` response refuses the request (no route, auth, Host, Origin); `Ok` lets
/// it go on and says how the route takes its body.
pub type Admit = dyn Fn(&Req) -> Result<BodyPolicy, Resp> + Send + Sync;

#[cfg(test)]
mod tests {
    // Shared by the tests of `parse` and `conn`.

    /// Whether a status is one malformed input may get: a 4xx, or the two 5xx that RFC 9112
    /// prescribes for what is well-formed but unsupported (501 for a transfer coding, 505 for
    /// an HTTP version). Never 500 or 503.
    pub(super) fn acceptable(status: u16) -> bool {
        (100..500).contains(&status) || status == 501 || status == 505
    }
}
