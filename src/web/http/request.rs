//! One request on a connection, its head read: admission, the route's body policy and the
//! buffered-body budget, the handler under a panic guard, and the access-log line.

use std::io::{self, BufReader, BufWriter, Read};
use std::net::{SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::body::{BodyReader, LimitedBody, read_all};
use super::conn::Shared;
use super::parse::{Framing, Head, framing, split_url};
use super::respond::{Body, Resp, stream_events, too_large, write_response};
use super::{BodyPolicy, Req};

/// An unread body up to this size is skipped to keep the connection; a larger one closes it.
pub(super) const MAX_DRAIN: u64 = 256 << 10;

/// Bytes of the buffered-body budget held by one request; given back on drop, whether the
/// request ends with a response, an error or a panic.
struct Reservation<'a> {
    counter: &'a AtomicUsize,
    n: usize,
}

impl<'a> Reservation<'a> {
    fn take(counter: &'a AtomicUsize, n: usize, budget: usize) -> Option<Reservation<'a>> {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(n).filter(|&t| t <= budget)
            })
            .ok()
            .map(|_| Reservation { counter, n })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.n, Ordering::SeqCst);
    }
}

/// What becomes of a connection after a request.
pub(super) enum Outcome {
    KeepAlive,
    Close,
    /// Close, with request bytes possibly still unread.
    CloseUnread,
}

/// Handles one request whose head has been read.
pub(super) fn request<'s>(
    head: Head,
    stream: &'s TcpStream,
    reader: &mut BufReader<&'s TcpStream>,
    writer: &mut BufWriter<&'s TcpStream>,
    (peer, local): (SocketAddr, Option<SocketAddr>),
    shared: &Shared,
) -> Outcome {
    let started = Instant::now();
    let limits = &shared.limits;
    let (path, query) = split_url(&head.target);
    let method = head.method.clone();
    let head_only = method == "HEAD";
    let mut keep = head.keep_alive();
    let framing = match framing(&head) {
        Ok(f) => f,
        Err(resp) => {
            let status = resp.status;
            let _ = write_response(writer, resp, head_only, true);
            log(&method, &path, status, started, peer);
            return Outcome::CloseUnread;
        }
    };
    let expects_continue =
        head.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let mut body = BodyReader {
        inner: reader,
        stream,
        framing,
        continue_to: expects_continue.then_some(stream),
        failed: false,
        started,
        received: 0,
        min_rate: limits.min_body_rate,
        grace: limits.body_grace,
        io_timeout: limits.io_timeout,
        too_slow: false,
    };
    let mut req = Req {
        method: method.clone(),
        path: path.clone(),
        query,
        headers: head.headers,
        body: Vec::new(),
        peer: Some(peer),
        local,
    };
    // Held until the request is answered: the buffered body lives in `req` until then.
    let mut _budget = None;
    // Refusals that need only the head are made before a byte of the body is read, so an
    // unauthenticated or unwanted client cannot make the server read, buffer or wait for it.
    let admitted = guarded(&req, |r| (shared.admit)(r), Err);
    // A refused request's body is never read, so its policy does not matter.
    let policy = *admitted.as_ref().unwrap_or(&BodyPolicy::Buffer(0));
    let early = match admitted {
        Err(resp) => Some(resp),
        Ok(policy) => match policy {
            BodyPolicy::Buffer(_) | BodyPolicy::Spill(..) => {
                // What is held in memory at most, and the largest body taken at all.
                let (held, max) = match policy {
                    BodyPolicy::Spill(buf, max) => (buf + 1, max),
                    BodyPolicy::Buffer(max) => (max, max as u64),
                    BodyPolicy::Stream(max) => (0, max),
                };
                let want = match body.framing {
                    Framing::Length(n) if n > max => None,
                    Framing::Length(n) => Some((n as usize).min(held)),
                    // Unknown length: the most it may grow to.
                    Framing::Chunked { .. } => Some(held),
                };
                match want {
                    None => Some(too_large(max)),
                    Some(0) => None,
                    Some(n) => match Reservation::take(&shared.buffered, n, limits.max_buffered) {
                        Some(r) => {
                            _budget = Some(r);
                            None
                        }
                        None => {
                            shared.refused_budget.warn(format_args!(
                                "request bodies in memory at the budget ({} MiB): refusing {method} {path} from {}",
                                limits.max_buffered >> 20,
                                peer.ip()
                            ));
                            Some(
                                Resp::error(
                                    503,
                                    "too many request bodies held in memory; try again shortly",
                                )
                                .with_header("Retry-After", "1"),
                            )
                        }
                    },
                }
            }
            BodyPolicy::Stream(max) if req.content_length().is_some_and(|n| n > max) => {
                Some(too_large(max))
            }
            BodyPolicy::Stream(_) => None,
        },
    };
    let refused = early.is_some();
    let mut resp = match (early, policy) {
        (Some(resp), _) => resp,
        (None, BodyPolicy::Buffer(max)) => match read_all(&mut body, max) {
            Ok(b) => {
                req.body = b;
                call(shared, &req, &mut io::empty())
            }
            Err(resp) => resp,
        },
        (None, BodyPolicy::Spill(buf, max)) => {
            let mut head = Vec::new();
            match (&mut body).take(buf as u64 + 1).read_to_end(&mut head) {
                Ok(_) => {
                    let rest = max.saturating_sub(head.len() as u64);
                    req.body = head;
                    let mut limited = LimitedBody { inner: &mut body, left: rest, over: false };
                    let resp = call(shared, &req, &mut limited);
                    if limited.over { too_large(max) } else { resp }
                }
                Err(e) => Resp::error(400, &format!("reading the request body: {e}")),
            }
        }
        (None, BodyPolicy::Stream(max)) => {
            let mut limited = LimitedBody { inner: &mut body, left: max, over: false };
            let resp = call(shared, &req, &mut limited);
            if limited.over { too_large(max) } else { resp }
        }
    };
    if body.too_slow {
        resp = Resp::error(
            408,
            &format!("request body arrived slower than {} bytes/s", limits.min_body_rate),
        );
    }
    // Whatever of the body the handler left unread must go before the next request can be
    // parsed; a large remainder is cheaper to drop with the connection. A refused request's
    // body is never read: the connection closes instead.
    let unread = if refused { !body.remaining_is_empty() } else { !body.finish(MAX_DRAIN) };
    if unread {
        keep = false;
    }
    let status = resp.status;
    if let Body::Events(rx) = resp.body {
        log(&method, &path, status, started, peer);
        stream_events(writer, rx);
        return Outcome::Close;
    }
    let sent = write_response(writer, resp, head_only, !keep);
    log(&method, &path, status, started, peer);
    match (sent.is_ok(), keep, unread) {
        (true, true, _) => Outcome::KeepAlive,
        (true, false, true) => Outcome::CloseUnread,
        _ => Outcome::Close,
    }
}

/// Runs the handler; a panic becomes a 500 instead of a dead connection thread.
fn call(shared: &Shared, req: &Req, body: &mut dyn Read) -> Resp {
    guarded(req, |r| (shared.handler)(r, body), |r| r)
}

/// Runs route code on a request, turning a panic into a 500 instead of a dead connection thread.
fn guarded<T>(req: &Req, f: impl FnOnce(&Req) -> T, answer: fn(Resp) -> T) -> T {
    match catch_unwind(AssertUnwindSafe(|| f(req))) {
        Ok(r) => r,
        Err(_) => {
            crate::error!("handler panicked on {} {}", req.method, req.path);
            answer(Resp::error(500, "internal error"))
        }
    }
}

/// The access-log line: the path only, since query strings can carry secrets.
fn log(method: &str, path: &str, status: u16, started: Instant, peer: SocketAddr) {
    crate::info!("{method} {path} {status} {}ms {}", started.elapsed().as_millis(), peer.ip());
}
