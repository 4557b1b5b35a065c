//! The request body as the handler reads it: decoded from its framing, `100 Continue` sent on
//! the first read, held to a minimum rate, cut at the route's limit.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::parse::Framing;
use super::respond::{Resp, too_large};

/// The request body on the connection, decoded from its framing; sends `100 Continue` before
/// the first read when the client waits for it.
pub(super) struct BodyReader<'a, 'b> {
    pub(super) inner: &'a mut BufReader<&'b TcpStream>,
    pub(super) stream: &'b TcpStream,
    pub(super) framing: Framing,
    pub(super) continue_to: Option<&'b TcpStream>,
    /// A read failed or the framing was broken: the connection cannot carry another request.
    pub(super) failed: bool,
    /// When the request head was complete, and body bytes decoded since: with `min_rate` and
    /// `grace`, when the next byte is due.
    pub(super) started: Instant,
    pub(super) received: u64,
    pub(super) min_rate: u64,
    pub(super) grace: Duration,
    /// Longest wait for any one read, whatever the rate allows.
    pub(super) io_timeout: Duration,
    /// The body fell behind the minimum rate: the request gets 408.
    pub(super) too_slow: bool,
}

impl BodyReader<'_, '_> {
    pub(super) fn remaining_is_empty(&self) -> bool {
        matches!(self.framing, Framing::Length(0) | Framing::Chunked { done: true, .. })
    }

    /// Skips an unread remainder up to `max` bytes; whether the connection is still usable.
    pub(super) fn finish(&mut self, max: u64) -> bool {
        if self.failed {
            return false;
        }
        if self.remaining_is_empty() {
            return true;
        }
        if self.continue_to.is_some() {
            // The client is still waiting for permission to send: it will not send anything.
            return false;
        }
        if matches!(self.framing, Framing::Length(n) if n > max) {
            return false;
        }
        // A client that declared a body and does not send it must not hold the thread long.
        self.io_timeout = self.io_timeout.min(Duration::from_secs(1));
        let mut sink = [0u8; 8192];
        let mut skipped = 0u64;
        while skipped <= max {
            match self.read(&mut sink) {
                Ok(0) => return !self.failed && self.remaining_is_empty(),
                Ok(n) => skipped += n as u64,
                Err(_) => return false,
            }
        }
        false
    }

    fn chunk_size_line(&mut self) -> io::Result<u64> {
        let mut line = Vec::new();
        (&mut *self.inner).take(1024).read_until(b'\n', &mut line)?;
        let text = std::str::from_utf8(&line).unwrap_or("");
        let hex = text.trim_end_matches(['\r', '\n']).split(';').next().unwrap_or("").trim();
        if !line.ends_with(b"\n") || hex.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed chunk size line"));
        }
        u64::from_str_radix(hex, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "malformed chunk size"))
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.remaining_is_empty() {
            if let Some(mut s) = self.continue_to.take() {
                s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
        }
        match self.framing {
            Framing::Length(0) | Framing::Chunked { done: true, .. } => Ok(0),
            Framing::Length(left) => {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.framing = Framing::Length(left - n as u64);
                Ok(n)
            }
            Framing::Chunked { left: None, .. } => {
                let size = self.chunk_size_line()?;
                if size == 0 {
                    // Trailer fields, then the blank line.
                    loop {
                        let mut line = Vec::new();
                        (&mut *self.inner).take(8192).read_until(b'\n', &mut line)?;
                        if !line.ends_with(b"\n") {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        if line == b"\r\n" || line == b"\n" {
                            break;
                        }
                    }
                    self.framing = Framing::Chunked { left: None, done: true };
                    return Ok(0);
                }
                self.framing = Framing::Chunked { left: Some(size), done: false };
                self.read_inner(buf)
            }
            Framing::Chunked { left: Some(left), .. } => {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let left = left - n as u64;
                if left == 0 {
                    let mut crlf = Vec::new();
                    (&mut *self.inner).take(2).read_until(b'\n', &mut crlf)?;
                    if crlf != b"\r\n" && crlf != b"\n" {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "chunk not followed by CRLF",
                        ));
                    }
                }
                self.framing = Framing::Chunked { left: (left > 0).then_some(left), done: false };
                Ok(n)
            }
        }
    }
}

impl Read for BodyReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Whatever the size of each read, the body as a whole must keep up with the minimum
        // rate once the grace period is over: one deadline for the next byte, not a timeout
        // per read that a byte every few seconds would keep resetting.
        let earned = self.received as f64 / self.min_rate.max(1) as f64;
        let allowed =
            self.grace.saturating_add(Duration::try_from_secs_f64(earned).unwrap_or(Duration::MAX));
        let wait = allowed.saturating_sub(self.started.elapsed()).min(self.io_timeout);
        if wait.is_zero() {
            self.too_slow = true;
            self.failed = true;
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request body too slow"));
        }
        let _ = self.stream.set_read_timeout(Some(wait));
        let r = self.read_inner(buf);
        match &r {
            Ok(n) => self.received += *n as u64,
            Err(e) => {
                self.failed = true;
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
                    && self.started.elapsed() >= allowed
                {
                    self.too_slow = true;
                }
            }
        }
        r
    }
}

/// A streamed body cut at the route's limit: reading past it is an error and marks the
/// request as too large.
pub(super) struct LimitedBody<'a, R: Read> {
    pub(super) inner: &'a mut R,
    pub(super) left: u64,
    pub(super) over: bool,
}

impl<R: Read> Read for LimitedBody<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.over = true;
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "request body too large"));
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads a whole body, refusing (413) one larger than `max` by its declared length or by count.
pub(super) fn read_all(body: &mut BodyReader, max: usize) -> Result<Vec<u8>, Resp> {
    if let Framing::Length(n) = body.framing {
        if n > max as u64 {
            return Err(too_large(max));
        }
    }
    let mut out = Vec::new();
    match body.take(max as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > max => Err(too_large(max)),
        Ok(_) => Ok(out),
        Err(e) => Err(Resp::error(400, &format!("reading the request body: {e}"))),
    }
}
