//! Connections: the listener, the accept loop under the global and per-address caps, a thread
//! per connection and its keep-alive loop, and closing without losing the last answer.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, BufWriter, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::parse::{HeadError, read_head};
use super::request::{MAX_DRAIN, Outcome, request};
use super::respond::{Resp, write_response};
use super::{Admit, Handler, Limits};

/// Binds the listen address ("host:port", "[v6]:port").
pub fn bind(listen: &str) -> io::Result<TcpListener> {
    TcpListener::bind(listen)
}

pub(super) struct Shared {
    pub(super) handler: Arc<Handler>,
    pub(super) admit: Arc<Admit>,
    pub(super) limits: Limits,
    connections: AtomicUsize,
    /// Open connections per address group (see `addr_group`); groups at zero are removed.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Bytes reserved by buffered bodies being read or held (see `request::Reservation`).
    pub(super) buffered: AtomicUsize,
    /// Refusals by the per-address cap and by the body budget, logged sparingly.
    refused_per_ip: Sparse,
    pub(super) refused_budget: Sparse,
    in_flight: AtomicUsize,
    /// When the heap was last trimmed (seconds since the epoch).
    trimmed_at: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn new(handler: Arc<Handler>, admit: Arc<Admit>, limits: Limits) -> Arc<Self> {
        Arc::new(Shared {
            handler,
            admit,
            limits,
            connections: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            buffered: AtomicUsize::new(0),
            refused_per_ip: Sparse::default(),
            refused_budget: Sparse::default(),
            in_flight: AtomicUsize::new(0),
            trimmed_at: Default::default(),
        })
    }

    /// The last connection closed: give the memory of the burst back, at most once a second
    /// (a client that connects for every request would otherwise pay for it each time).
    fn went_idle(&self) {
        let now = crate::units::now_secs();
        if self.trimmed_at.swap(now, Ordering::Relaxed) != now {
            crate::sys::trim_heap();
        }
    }

    /// Takes a connection slot for the peer's address group, unless the group is at its cap.
    fn take_slot(self: &Arc<Self>, peer: IpAddr) -> Option<PeerSlot> {
        let group = addr_group(peer);
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(group).or_insert(0);
        if *n >= self.limits.max_connections_per_ip {
            return None;
        }
        *n += 1;
        Some(PeerSlot { shared: Arc::clone(self), group })
    }
}

/// A warning that a flood would repeat: logged at most once a second, with the number of
/// occurrences left unsaid since, so a flood of refusals is not a flood of log lines.
#[derive(Default)]
pub(super) struct Sparse {
    logged_at: std::sync::atomic::AtomicU64,
    quiet: AtomicUsize,
}

impl Sparse {
    pub(super) fn warn(&self, what: std::fmt::Arguments<'_>) {
        let now = crate::units::now_secs();
        let quiet = self.quiet.fetch_add(1, Ordering::Relaxed);
        if self.logged_at.swap(now, Ordering::Relaxed) != now {
            self.quiet.store(0, Ordering::Relaxed);
            match quiet {
                0 => crate::warn!("{what}"),
                n => crate::warn!("{what} ({n} more like it since the last such line)"),
            }
        }
    }
}

/// The address a per-address cap counts by: IPv4 as is (and IPv4-mapped IPv6 as IPv4), IPv6
/// by its /64, since one host may hold a whole /64 and rotate through it.
pub fn addr_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// One open connection counted against its address group; given back on drop, whichever way
/// the connection ends.
struct PeerSlot {
    shared: Arc<Shared>,
    group: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.group) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.group);
            }
        }
    }
}

/// Serves until SIGTERM/SIGINT, then stops accepting, waits (bounded) for requests in flight
/// and returns.
pub fn serve(listener: TcpListener, handler: Arc<Handler>, admit: Arc<Admit>, limits: Limits) {
    let stop = crate::sys::cancel_flag();
    let listener = Arc::new(listener);
    {
        let listener = Arc::clone(&listener);
        // accept() blocks; shutting the socket down is what wakes it once a signal arrives.
        let _ = thread::Builder::new().name("shutdown".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(100));
            }
            if let Err(e) = crate::sys::shutdown_listener(&listener) {
                crate::warn!("stopping the listener: {e}");
            }
        });
    }
    let shared = Shared::new(handler, admit, limits);
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                crate::warn!("accepting a connection: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // The per-address cap comes first, so one address flooding cannot fill the global one.
        let Some(slot) = shared.take_slot(peer.ip()) else {
            let per_ip = shared.limits.max_connections_per_ip;
            shared.refused_per_ip.warn(format_args!(
                "{per_ip} connections open from {}: refusing another",
                addr_group(peer.ip())
            ));
            refuse_now(
                stream,
                &format!(
                    "too many connections from your address (limit {per_ip}); close some and retry"
                ),
            );
            continue;
        };
        let max = shared.limits.max_connections;
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= max {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            crate::warn!("busy: {max} connections open, refusing {peer}");
            refuse(stream, "server busy, try again");
            continue;
        }
        let conn = Arc::clone(&shared);
        // Small stacks: thousands of idle connections must not cost real memory.
        let spawned =
            thread::Builder::new().name("http".into()).stack_size(512 << 10).spawn(move || {
                let _slot = slot;
                connection(stream, peer, &conn);
                if conn.connections.fetch_sub(1, Ordering::SeqCst) == 1 {
                    conn.went_idle();
                }
            });
        if let Err(e) = spawned {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            crate::error!("starting a connection thread: {e}");
        }
    }
    let deadline = Instant::now() + shared.limits.drain;
    while shared.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Answers 503 on a connection over the cap, spending at most a few tens of milliseconds of
/// the accept thread on it.
fn refuse(stream: TcpStream, detail: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let resp = Resp::error(503, detail).with_header("Retry-After", "1");
    let mut w = BufWriter::new(&stream);
    if write_response(&mut w, resp, false, true).is_ok() {
        linger(&stream, Duration::from_millis(50), MAX_DRAIN * 4);
    }
}

/// Answers 503 without waiting on the peer at all: the accept thread must stay free while one
/// address floods it. What the peer already sent is taken first, so that closing sends a FIN
/// rather than a reset that could destroy the answer before it is read.
fn refuse_now(stream: TcpStream, detail: &str) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let resp = Resp::error(503, detail).with_header("Retry-After", "1");
    let mut w = BufWriter::new(&stream);
    let _ = write_response(&mut w, resp, false, true);
    drop(w);
    let mut sink = [0u8; 8192];
    for _ in 0..8 {
        match (&mut &stream).read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// What is read and discarded of a refused body before the connection is closed, and for how
/// long at most. A client that sends its whole body before it reads the answer (most HTTP
/// libraries without `Expect: 100-continue`) must be able to finish sending, or its write fails
/// with a reset and it never reads the 413; a bound keeps a client from holding a thread with
/// an endless body. Beyond it the connection is closed (and the peer may see a reset).
pub(super) const REFUSED_DRAIN: u64 = 64 << 20;
pub(super) const REFUSED_WAIT: Duration = Duration::from_secs(10);

/// Closes our side and discards what the peer still sends, up to `max` bytes and for at most
/// `wait`: closing a socket with unread input makes Linux send a reset, and the reset can
/// destroy the response we just wrote before the client reads it, or fail the client's write
/// of its body before it gets to read (a 413 or 503 would never be seen).
fn linger(stream: &TcpStream, wait: Duration, max: u64) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + wait;
    let mut sink = [0u8; 16 << 10];
    let mut left = max;
    while left > 0 {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // A second of silence: the peer has sent what it will and waits for the close.
        let _ = stream.set_read_timeout(Some((deadline - now).min(Duration::from_secs(1))));
        match (&mut &*stream).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n as u64),
        }
    }
}

/// Serves requests on one connection until the peer closes, misbehaves, idles out, or the
/// server stops.
fn connection(stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    let stop = crate::sys::cancel_flag();
    let limits = &shared.limits;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(limits.io_timeout));
    let mut reader = BufReader::with_capacity(8 << 10, &stream);
    let mut writer = BufWriter::with_capacity(16 << 10, &stream);
    // Once per connection, not per request: a getsockname each time costs the keep-alive path.
    let local = stream.local_addr().ok();
    loop {
        // Idle: wait for the first byte of the next request.
        let _ = stream.set_read_timeout(Some(limits.idle_timeout));
        match reader.fill_buf() {
            Ok([]) | Err(_) => return,
            Ok(_) => {}
        }
        let deadline = Instant::now() + limits.header_timeout;
        let head = match read_head(&mut reader, &stream, deadline) {
            Ok(h) => h,
            Err(HeadError::Gone) => return,
            Err(HeadError::Reject(status, detail)) => {
                crate::info!("- - {status} {detail} {}", peer.ip());
                if write_response(&mut writer, Resp::error(status, &detail), false, true).is_ok() {
                    linger(&stream, Duration::from_secs(1), MAX_DRAIN * 4);
                }
                return;
            }
        };
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let outcome = request(head, &stream, &mut reader, &mut writer, (peer, local), shared);
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        match outcome {
            Outcome::KeepAlive if !stop.load(Ordering::Relaxed) => {}
            Outcome::KeepAlive | Outcome::Close => return,
            Outcome::CloseUnread => {
                linger(&stream, REFUSED_WAIT, REFUSED_DRAIN);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::parse::{MAX_HEAD, MAX_HEADERS};
    use super::super::tests::acceptable;
    use super::super::{BodyPolicy, Req};
    use super::*;

    /// A test server's routes: a buffered route, a streamed one, one refused by admission.
    fn fuzz_admit(req: &Req) -> Result<BodyPolicy, Resp> {
        match req.path.as_str() {
            "/deny" => Err(Resp::error(401, "login required")),
            "/s" => Ok(BodyPolicy::Stream(4096)),
            "/b" => Ok(BodyPolicy::Buffer(1024)),
            _ => Ok(BodyPolicy::Buffer(64)),
        }
    }

    fn fuzz_shared() -> Arc<Shared> {
        let handler: Arc<Handler> = Arc::new(|req: &Req, body: &mut dyn Read| {
            let mut got = Vec::new();
            match body.take(1 << 20).read_to_end(&mut got) {
                Ok(_) => {
                    assert!(got.len() <= 4096 && req.body.len() <= 1024, "a body past its limit");
                    Resp::text(200, "ok")
                }
                Err(e) => Resp::error(400, &format!("reading: {e}")),
            }
        });
        let admit: Arc<Admit> = Arc::new(fuzz_admit);
        let limits = Limits {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(5),
            ..Limits::default()
        };
        Shared::new(handler, admit, limits)
    }

    /// Runs one client input through a real connection on loopback: the client sends all of it
    /// and closes its side, the server side runs `connection` to the end; the responses.
    fn over_a_socket(listener: &TcpListener, shared: &Shared, input: &[u8]) -> Vec<u8> {
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        // Inputs stay far below the loopback socket buffers, so neither side blocks the other.
        client.write_all(input).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        connection(server, peer, shared);
        let mut out = Vec::new();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = client.read_to_end(&mut out);
        out
    }

    /// Statuses of every response in `out`.
    fn statuses(out: &[u8]) -> Vec<u16> {
        let text = String::from_utf8_lossy(out);
        text.match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| text.get(i + 9..i + 12).and_then(|s| s.parse().ok()))
            .collect()
    }

    /// A header flood, a long head, many tiny chunks or a long chunk line: the shapes plain
    /// mutation rarely reaches.
    fn generated(rng: &mut crate::fuzz::Rng) -> Vec<u8> {
        let mut out = b"POST /s HTTP/1.1\r\nHost: x\r\n".to_vec();
        match rng.below(4) {
            0 => {
                for i in 0..rng.below(2 * MAX_HEADERS) {
                    out.extend_from_slice(
                        format!("X-{i}: {}\r\n", "v".repeat(rng.below(64))).as_bytes(),
                    );
                }
                out.extend_from_slice(b"\r\n");
            }
            1 => {
                let long = "a".repeat(MAX_HEAD - 64 + rng.below(128));
                out.extend_from_slice(format!("X-Long: {long}\r\n\r\n").as_bytes());
            }
            2 => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for _ in 0..rng.below(3000) {
                    out.extend_from_slice(b"1\r\nz\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            _ => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let ext = ";e".repeat(rng.below(1200));
                out.extend_from_slice(format!("3{ext}\r\nabc\r\n0\r\n\r\n").as_bytes());
            }
        }
        out
    }

    #[test]
    fn fuzzed_requests_over_a_socket_get_4xx_never_5xx() {
        let seeds: &[&[u8]] = &[
            b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n",
            b"POST /s HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
            b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
            b"PUT /deny HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
            b"POST /s HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nabcd",
        ];
        // An access-log line per input would bury the test output.
        crate::log::set_level(crate::log::Level::Error);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let shared = fuzz_shared();
        let mut rng = crate::fuzz::Rng::new(crate::fuzz::seed());
        for i in 0..crate::fuzz::iterations(1500) {
            let input = if rng.chance(8) {
                generated(&mut rng)
            } else {
                let seed = *rng.pick(seeds);
                crate::fuzz::mutate(&mut rng, seed, 8 << 10)
            };
            let out = over_a_socket(&listener, &shared, &input);
            for st in statuses(&out) {
                assert!(
                    acceptable(st),
                    "iteration {i}: {:?} -> {st}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
        assert_eq!(shared.buffered.load(Ordering::SeqCst), 0, "the body budget was not given back");
    }

    #[test]
    fn addresses_are_grouped_by_host_or_v6_prefix() {
        let g = |a: &str| addr_group(a.parse().unwrap()).to_string();
        assert_eq!(g("10.0.0.7"), "10.0.0.7");
        assert_eq!(g("::ffff:10.0.0.7"), "10.0.0.7");
        assert_eq!(g("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(g("2001:db8:1:2::1"), g("2001:db8:1:2:ffff::9"));
        assert_ne!(g("2001:db8:1:2::1"), g("2001:db8:1:3::1"));
    }
}
