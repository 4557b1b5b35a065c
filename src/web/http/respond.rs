//! Responses: `Resp` and its body, and writing them on the connection (status line, headers,
//! fixed, streamed, chunked and sendfile(2) bodies, server-sent events).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

/// A response body.
pub enum Body {
    Bytes(Vec<u8>),
    /// Bytes shared between responses (a cached view).
    Shared(Arc<[u8]>),
    /// Streamed (files): with a length when known, chunked otherwise.
    Stream(Box<dyn Read + Send>, Option<u64>),
    /// `len` bytes of a regular file from `offset`, sent with sendfile(2) straight from the page
    /// cache: no copy through user space and no buffer per client, so memory stays flat however
    /// many download at once. `keep` is held until the last byte is out (a cache file's use
    /// guard, which keeps eviction away from it).
    File {
        file: File,
        offset: u64,
        len: u64,
        keep: Option<Box<dyn Send>>,
    },
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

pub(super) fn too_large(max: impl std::fmt::Display) -> Resp {
    Resp::error(413, &format!("request body too large (limit {max} bytes)"))
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        _ => "",
    }
}

thread_local! {
    /// The Date header value, formatted once per second per thread.
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

fn date() -> String {
    let now = crate::units::now_secs();
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != now || d.1.is_empty() {
            *d = (now, crate::units::http_date(now));
        }
        d.1.clone()
    })
}

/// Writes status line, headers and body; `close` adds `Connection: close`.
pub(super) fn write_response(
    w: &mut BufWriter<&TcpStream>,
    resp: Resp,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nServer: bty-web\r\nDate: {}\r\n",
        resp.status,
        reason(resp.status),
        date()
    );
    for (n, v) in &resp.headers {
        // A value with a line break would split the response: drop it rather than send it.
        if !v.contains(['\r', '\n']) && !n.contains(['\r', '\n', ':']) {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    match resp.body {
        Body::Bytes(b) => {
            if resp.status != 204 && resp.status != 304 {
                head.push_str(&format!("Content-Length: {}\r\n", b.len()));
            }
            head.push_str("\r\n");
            w.write_all(head.as_bytes())?;
            if !head_only {
                w.write_all(&b)?;
            }
        }
        Body::Shared(b) => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
            w.write_all(head.as_bytes())?;
            if !head_only {
                w.write_all(&b)?;
            }
        }
        Body::Stream(mut r, Some(n)) => {
            head.push_str(&format!("Content-Length: {n}\r\n\r\n"));
            w.write_all(head.as_bytes())?;
            if !head_only {
                if n >= BULK {
                    bulk_thread();
                }
                let copied = io::copy(&mut (&mut r).take(n), w)?;
                if copied < n {
                    // The file shrank under us: the length is a lie, so the connection must go.
                    w.flush()?;
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        Body::File { file, offset, len, keep } => {
            head.push_str(&format!("Content-Length: {len}\r\n\r\n"));
            w.write_all(head.as_bytes())?;
            if !head_only {
                if len >= BULK {
                    bulk_thread();
                }
                // The body bypasses the buffer, so the head must be on the socket first.
                w.flush()?;
                send_file(w.get_ref(), &file, offset, len)?;
            }
            drop(keep);
        }
        Body::Stream(mut r, None) => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            w.write_all(head.as_bytes())?;
            if !head_only {
                // Of unknown length: an image still arriving from its origin.
                bulk_thread();
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    write!(w, "{n:x}\r\n")?;
                    w.write_all(&buf[..n])?;
                    w.write_all(b"\r\n")?;
                }
                w.write_all(b"0\r\n\r\n")?;
            }
        }
        Body::Events(_) => {
            head.push_str("Content-Length: 0\r\n\r\n");
            w.write_all(head.as_bytes())?;
        }
    }
    w.flush()
}

/// A body this large makes its connection a bulk one (an image, a kernel, an initrd).
const BULK: u64 = 1 << 20;
/// The nice value of a bulk connection's thread: CFS then gives it about a tenth of the CPU
/// share of a thread at 0 whenever both want a core.
const BULK_NICE: i32 = 10;

/// Marks this connection's thread as bulk for the rest of its life (a thread serves one
/// connection and ends with it): when a flash storm keeps the cores busy, the PXE scripts,
/// plans and reports of the machines booting meanwhile are answered first, and the images go
/// out with what is left. Failing to change the priority only costs that preference.
fn bulk_thread() {
    thread_local!(static BULK_SET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if BULK_SET.with(|b| b.replace(true)) {
        return;
    }
    if let Err(e) = crate::sys::deprioritize_this_thread(BULK_NICE) {
        crate::warn!("lowering the priority of a bulk connection's thread: {e}");
    }
}

/// The most one sendfile(2) call is asked for: Linux sends at most 0x7ffff000 bytes per call.
const SENDFILE_CHUNK: usize = 1 << 30;

/// Sends `[offset, offset + len)` of `file` on the socket with sendfile(2). A peer that reads
/// nothing for the write timeout fails it (so a stalled client cannot hold the thread), as does
/// a file that ends early: the Content-Length already sent would be a lie, so the connection
/// must close. Where sendfile does not apply (EINVAL: a file system without it; ENOSYS), the
/// rest goes out as a plain copy.
fn send_file(sock: &TcpStream, file: &File, mut offset: u64, len: u64) -> io::Result<()> {
    let end = offset.saturating_add(len);
    while offset < end {
        let want = usize::try_from(end - offset).unwrap_or(SENDFILE_CHUNK).min(SENDFILE_CHUNK);
        match crate::sys::sendfile(sock, file, &mut offset, want) {
            Ok(0) => return Err(shrank(end - offset)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("sending a file: the peer read nothing, {} bytes short", end - offset),
                ));
            }
            Err(e) if matches!(e.raw_os_error(), Some(crate::sys::EINVAL | crate::sys::ENOSYS)) => {
                return copy_file(sock, file, offset, end);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The file ended `missing` bytes before the length the head announced.
fn shrank(missing: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("sending a file: it ends {missing} bytes before the length sent"),
    )
}

/// `[offset, end)` of `file` written to the socket through a buffer: sendfile's fallback.
fn copy_file(mut sock: &TcpStream, file: &File, mut offset: u64, end: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    while offset < end {
        let want = usize::try_from(end - offset).unwrap_or(buf.len()).min(buf.len());
        let n = match file.read_at(&mut buf[..want], offset) {
            Ok(0) => return Err(shrank(end - offset)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sock.write_all(&buf[..n])?;
        offset += n as u64;
    }
    Ok(())
}

/// Writes server-sent events straight to the connection, each flushed at once. The body ends
/// when the connection closes; a peer that stops reading is dropped by the write timeout.
pub(super) fn stream_events(
    w: &mut BufWriter<&TcpStream>,
    rx: std::sync::mpsc::Receiver<Arc<str>>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let stop = crate::sys::cancel_flag();
    let head = format!(
        "HTTP/1.1 200 OK\r\nServer: bty-web\r\nDate: {}\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\nX-Accel-Buffering: no\r\n\r\n",
        date()
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_the_detail_shape() {
        let r = Resp::error(404, "no machine record for aa:bb:cc:dd:ee:ff");
        let Body::Bytes(b) = r.body else { panic!("bytes") };
        assert_eq!(
            String::from_utf8(b).unwrap(),
            r#"{"detail":"no machine record for aa:bb:cc:dd:ee:ff"}"#
        );
    }

    /// A connected pair on 127.0.0.1: (our end, the peer's).
    fn pair() -> (TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (l.accept().unwrap().0, peer)
    }

    /// What the peer receives until our end closes.
    fn received(ours: TcpStream, mut peer: TcpStream, send: impl FnOnce(&TcpStream)) -> Vec<u8> {
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap();
            got
        });
        send(&ours);
        drop(ours);
        reader.join().unwrap()
    }

    #[test]
    fn sendfile_and_its_copy_send_the_slice_and_fail_on_a_file_that_ends_early() {
        let path = std::env::temp_dir().join(format!("bty-sendfile-{}", std::process::id()));
        let data: Vec<u8> = (0..300_001u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        type SendFn = fn(&TcpStream, &File, u64, u64) -> io::Result<()>;
        let ways: [(&str, SendFn); 2] = [
            ("sendfile", send_file),
            ("copy", |s, f, offset, len| copy_file(s, f, offset, offset + len)),
        ];
        for (name, send) in ways {
            let (ours, peer) = pair();
            let got = received(ours, peer, |s| send(s, &file, 4095, 200_000).unwrap());
            assert!(got == data[4095..204_095], "{name}: the slice differs");
            // Asked for more than the file holds: what it has goes out, then an error, so
            // that the connection closes on a body shorter than its Content-Length.
            let (ours, peer) = pair();
            let got = received(ours, peer, |s| {
                let e = send(s, &file, 100_000, 250_000).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{name}: {e}");
            });
            assert!(got == data[100_000..], "{name}: the bytes the file had");
        }
    }

    #[test]
    fn http_dates() {
        assert_eq!(crate::units::http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(crate::units::http_date(1_795_436_457), "Mon, 23 Nov 2026 12:20:57 GMT");
    }
}
