//! The request head: request line, headers and their limits, read within a deadline; the
//! body's framing; the request target split into path and query.

use std::io::{self, BufRead, BufReader};
use std::net::TcpStream;
use std::time::Instant;

use super::respond::Resp;
use crate::source::percent_decode;

/// Longest request head (request line and headers) accepted.
pub(super) const MAX_HEAD: usize = 16 << 10;
/// Most header lines accepted.
pub(super) const MAX_HEADERS: usize = 100;

/// A parsed request head.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) method: String,
    pub(super) target: String,
    http10: bool,
    pub(super) headers: Vec<(String, String)>,
}

impl Head {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Whether the client asked to keep the connection open after this request.
    pub(super) fn keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        let has = |t: &str| conn.split(',').any(|p| p.trim() == t);
        if self.http10 { has("keep-alive") } else { !has("close") }
    }
}

/// Why a request head could not be read.
#[derive(Debug)]
pub(super) enum HeadError {
    /// The peer closed or the socket failed: nothing to answer.
    Gone,
    /// Answer with this status and detail, then close.
    Reject(u16, String),
}

/// Reads the head up to the blank line, within the deadline and the size caps.
pub(super) fn read_head(
    reader: &mut BufReader<&TcpStream>,
    stream: &TcpStream,
    deadline: Instant,
) -> Result<Head, HeadError> {
    let mut raw: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Reject(408, "request head not received in time".into()));
        }
        let _ = stream.set_read_timeout(Some(left));
        let buf = match reader.fill_buf() {
            Ok([]) => return Err(HeadError::Gone),
            Ok(b) => b,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(HeadError::Reject(408, "request head not received in time".into()));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(HeadError::Gone),
        };
        // Copy up to and including the blank line, leaving the body in the reader.
        let before = raw.len();
        raw.extend_from_slice(buf);
        let end = find_head_end(&raw, before.saturating_sub(3));
        let used = match end {
            Some(e) => e - before,
            None => buf.len(),
        };
        reader.consume(used);
        if let Some(e) = end {
            raw.truncate(e);
            return parse_head(&raw);
        }
        if raw.len() > MAX_HEAD {
            return Err(HeadError::Reject(431, format!("request head over {MAX_HEAD} bytes")));
        }
    }
}

/// The index just past the first blank line ("\r\n\r\n" or bare "\n\n") at or after `from`.
fn find_head_end(raw: &[u8], from: usize) -> Option<usize> {
    (from..raw.len()).find_map(|i| {
        if raw[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if raw[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

fn parse_head(raw: &[u8]) -> Result<Head, HeadError> {
    let bad = |m: &str| HeadError::Reject(400, m.to_string());
    let text = std::str::from_utf8(raw).map_err(|_| bad("request head is not UTF-8"))?;
    // Leading blank lines before a request line are allowed (RFC 9112 section 2.2).
    let mut lines =
        text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).skip_while(|l| l.is_empty());
    let line = lines.next().ok_or_else(|| bad("empty request"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_token) {
        return Err(bad("malformed request method"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        // A well-formed version we do not speak is 505; anything else is malformed (400).
        v if matches!(v.as_bytes(), [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit()) =>
        {
            return Err(HeadError::Reject(505, format!("{v} is not supported (HTTP/1.1 only)")));
        }
        _ => return Err(bad("malformed HTTP version")),
    };
    // Absolute form ("http://host/path") is allowed from proxies; keep the path.
    let target = match target.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => &rest[i..],
            None => "/",
        },
        None => target,
    };
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("malformed request target"));
    }
    let mut headers = Vec::new();
    for l in lines.take_while(|l| !l.is_empty()) {
        if headers.len() == MAX_HEADERS {
            return Err(HeadError::Reject(431, format!("more than {MAX_HEADERS} header lines")));
        }
        if l.starts_with([' ', '\t']) {
            return Err(bad("folded header lines are not accepted"));
        }
        let (name, value) = l.split_once(':').ok_or_else(|| bad("header line without a colon"))?;
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(bad("malformed header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Head { method: method.to_ascii_uppercase(), target: target.to_string(), http10, headers })
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy)]
pub(super) enum Framing {
    Length(u64),
    /// Chunked: bytes left in the current chunk, or None before a chunk-size line.
    Chunked {
        left: Option<u64>,
        done: bool,
    },
}

/// Works out the body framing, refusing the ambiguous cases request smuggling relies on.
pub(super) fn framing(head: &Head) -> Result<Framing, Resp> {
    let lengths: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    let te = head.header("transfer-encoding");
    match (te, lengths.as_slice()) {
        (Some(_), [_, ..]) => {
            Err(Resp::error(400, "both Transfer-Encoding and Content-Length were sent"))
        }
        (Some(te), []) if te.eq_ignore_ascii_case("chunked") => {
            Ok(Framing::Chunked { left: None, done: false })
        }
        (Some(te), []) => {
            Err(Resp::error(501, &format!("transfer encoding {te} is not supported")))
        }
        (None, []) => Ok(Framing::Length(0)),
        (None, [first, rest @ ..]) => {
            if rest.iter().any(|v| v != first) {
                return Err(Resp::error(400, "conflicting Content-Length headers"));
            }
            if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Resp::error(400, "malformed Content-Length"));
            }
            first
                .parse()
                .map(Framing::Length)
                .map_err(|_| Resp::error(400, "Content-Length too large"))
        }
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

#[cfg(test)]
mod tests {
    use super::super::tests::acceptable;
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

    fn head(raw: &str) -> Result<Head, u16> {
        parse_head(raw.as_bytes()).map_err(|e| match e {
            HeadError::Reject(s, _) => s,
            HeadError::Gone => 0,
        })
    }

    #[test]
    fn parses_heads_and_refuses_malformed_ones() {
        let h = head("\r\nget /pxe/x?y=1 HTTP/1.1\r\nHost: a:8080\r\nX-A:  b \r\n\r\n").unwrap();
        assert_eq!((h.method.as_str(), h.target.as_str(), h.http10), ("GET", "/pxe/x?y=1", false));
        assert_eq!(h.header("host"), Some("a:8080"));
        assert_eq!(h.header("x-a"), Some("b"));
        assert!(h.keep_alive());
        let h = head("GET http://h:1/a/b HTTP/1.0\n\n").unwrap();
        assert_eq!((h.target.as_str(), h.http10, h.keep_alive()), ("/a/b", true, false));
        assert_eq!(head("GET / HTTP/2.0\r\n\r\n").unwrap_err(), 505);
        for bad in [
            "GET /\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1 x\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET x HTTP/1.1\r\n\r\n",
            "GET /a\x01 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
            "GET / HTTP/1.1\r\nBad name: c\r\n\r\n",
            "GET / FTP/1.1\r\n\r\n",
            "GET / HTTP/1.1.\r\n\r\n",
            "GET / HTTP/\r\n\r\n",
        ] {
            assert_eq!(head(bad).unwrap_err(), 400, "{bad:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(head(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(), 431);
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n", 0), None);
    }

    #[test]
    fn framing_refuses_smuggling_shapes() {
        let f = |raw: &str| framing(&head(raw).unwrap()).map_err(|r| r.status);
        assert!(matches!(f("POST / HTTP/1.1\r\n\r\n"), Ok(Framing::Length(0))));
        assert!(matches!(
            f("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Ok(Framing::Length(12))
        ));
        assert!(matches!(
            f("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        ));
        assert!(matches!(
            f("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Framing::Chunked { .. })
        ));
        assert_eq!(f("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n").err(), Some(400));
        assert_eq!(f("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").err(), Some(400));
        assert_eq!(f("POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n").err(), Some(400));
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n").err(),
            Some(400)
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n").err(),
            Some(400)
        );
        assert_eq!(f("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").err(), Some(501));
    }

    #[test]
    fn fuzzed_heads_parse_or_get_4xx() {
        let seeds: &[&[u8]] = &[
            b"GET /pxe/aa?x=1&y=%20 HTTP/1.1\r\nHost: a:8080\r\nConnection: keep-alive\r\n\r\n",
            b"POST /b HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"\r\nPUT http://h:1/a HTTP/1.1\nExpect: 100-continue\nX: y\n\n",
        ];
        let mut rng = crate::fuzz::Rng::new(crate::fuzz::seed());
        for i in 0..crate::fuzz::iterations(20_000) {
            let seed = *rng.pick(seeds);
            let input = crate::fuzz::mutate(&mut rng, seed, MAX_HEAD);
            match parse_head(&input) {
                Ok(h) => {
                    let _ = h.keep_alive();
                    if let Err(r) = framing(&h) {
                        assert!(acceptable(r.status), "iteration {i}: {input:?} -> {}", r.status);
                    }
                }
                Err(HeadError::Reject(st, _)) => {
                    assert!(acceptable(st), "iteration {i}: {input:?} -> {st}")
                }
                Err(HeadError::Gone) => panic!("iteration {i}: parse_head said Gone"),
            }
        }
    }
}
