//! Byte ranges of a file (RFC 9110 Range and If-Range), shared by the two routes that serve
//! large files: `/images/{sha256}/{name}` (from the cache) and `/boot/{name}`. A flasher or a
//! firmware that lost its connection resumes where it stopped instead of starting over.

use std::fs::File;
use std::time::UNIX_EPOCH;

use crate::web::http::{Body, Req, Resp};

/// The byte range a request asks for: `Ok(None)` for the whole file (no Range, an If-Range
/// that no longer matches, or a Range we do not serve, which RFC 9110 lets us ignore), an
/// inclusive `(first, last)`, or the 416 to send. `what` names the file in the 416.
fn range(
    req: &Req,
    len: u64,
    etag: &str,
    what: &str,
) -> std::result::Result<Option<(u64, u64)>, Resp> {
    let Some(spec) = req.header("range") else { return Ok(None) };
    if req.header("if-range").is_some_and(|v| v.trim() != etag) {
        return Ok(None);
    }
    parse(spec, len).map_err(|()| {
        Resp::error(416, &format!("range {spec:?} is outside the {len} bytes of {what}"))
            .with_header("Content-Range", &format!("bytes */{len}"))
    })
}

/// A Range header's value against a file of `len` bytes: `Ok(None)` when it is not one range
/// of bytes we serve (a multi-range, another unit, a malformed one), `Err` when it cannot be
/// satisfied.
fn parse(spec: &str, len: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
    let Some(spec) = spec.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else { return Ok(None) };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else { return Ok(None) };
        if n == 0 || len == 0 {
            return Err(());
        }
        return Ok(Some((len.saturating_sub(n), len - 1)));
    }
    let Ok(first) = a.parse::<u64>() else { return Ok(None) };
    let last = if b.is_empty() {
        len.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(l) if l >= first => l.min(len.saturating_sub(1)),
            _ => return Ok(None),
        }
    };
    if first >= len {
        return Err(());
    }
    Ok(Some((first, last)))
}

/// The 304 for a client (or an HTTP cache in front of us) whose copy has this `etag`: its
/// If-None-Match lists it (weak or strong, compared weakly as RFC 9110 says for GET) or is `*`.
pub fn not_modified(req: &Req, etag: &str, cache_control: &str) -> Option<Resp> {
    let list = req.header("if-none-match")?;
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let hit = list.split(',').any(|t| t.trim() == "*" || bare(t) == bare(etag));
    hit.then(|| Resp {
        status: 304,
        headers: vec![
            ("ETag".into(), etag.to_string()),
            ("Cache-Control".into(), cache_control.to_string()),
        ],
        body: Body::Bytes(Vec::new()),
    })
}

/// The 200, 206 or 304 answer for a file of `len` bytes whose version `etag` names (quotes
/// included), with `cache_control` for HTTP caches between us and the clients;
/// `body(first, count)` makes the body of the bytes chosen.
pub fn answer(
    req: &Req,
    len: u64,
    etag: String,
    cache_control: &str,
    what: &str,
    body: impl FnOnce(u64, u64) -> Body,
) -> Resp {
    if let Some(r) = not_modified(req, &etag, cache_control) {
        return r;
    }
    let (status, first, last) = match range(req, len, &etag, what) {
        Ok(Some((a, b))) => (206, a, b),
        Ok(None) => (200, 0, len.saturating_sub(1)),
        Err(r) => return r,
    };
    let count = if len == 0 { 0 } else { last - first + 1 };
    let mut resp = Resp {
        status,
        headers: vec![
            ("Content-Type".into(), "application/octet-stream".into()),
            ("Accept-Ranges".into(), "bytes".into()),
            ("ETag".into(), etag),
            ("Cache-Control".into(), cache_control.into()),
        ],
        body: body(first, count),
    };
    if status == 206 {
        resp = resp.with_header("Content-Range", &format!("bytes {first}-{last}/{len}"));
    }
    resp
}

/// The ETag of a file that may be replaced in place (a boot file re-uploaded under its name):
/// its size and modification time, which a rename into place changes.
pub fn file_etag(file: &File, len: u64) -> String {
    let mtime = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("\"{len:x}-{mtime:x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_answers_304_for_the_same_version_only() {
        let req = |v: &str| Req {
            method: "GET".into(),
            headers: vec![("if-none-match".into(), v.into())],
            ..Req::default()
        };
        for hit in ["\"abc\"", "W/\"abc\"", "\"x\", \"abc\"", "*"] {
            let r = not_modified(&req(hit), "\"abc\"", "no-cache").expect(hit);
            assert_eq!(r.status, 304);
            assert!(r.headers.contains(&("ETag".into(), "\"abc\"".into())));
        }
        assert!(not_modified(&req("\"abd\""), "\"abc\"", "no-cache").is_none());
        assert!(not_modified(&Req::default(), "\"abc\"", "no-cache").is_none());
    }

    #[test]
    fn one_range_of_bytes_is_served_and_the_rest_ignored_or_refused() {
        let len = 10_000;
        // First, middle, last, open-ended, suffix, and a last byte past the end (clamped).
        assert_eq!(parse("bytes=0-0", len), Ok(Some((0, 0))));
        assert_eq!(parse("bytes=4096-8191", len), Ok(Some((4096, 8191))));
        assert_eq!(parse("bytes=9999-9999", len), Ok(Some((9999, 9999))));
        assert_eq!(parse("bytes=5000-", len), Ok(Some((5000, 9999))));
        assert_eq!(parse("bytes=-100", len), Ok(Some((9900, 9999))));
        assert_eq!(parse("bytes=-20000", len), Ok(Some((0, 9999))));
        assert_eq!(parse("bytes=9000-20000", len), Ok(Some((9000, 9999))));
        assert_eq!(parse(" bytes= 10 - 20 ", len), Ok(Some((10, 20))));
        // Unsatisfiable: starts at or past the end, an empty suffix, any suffix of nothing.
        assert_eq!(parse("bytes=10000-", len), Err(()));
        assert_eq!(parse("bytes=10000-10001", len), Err(()));
        assert_eq!(parse("bytes=-0", len), Err(()));
        assert_eq!(parse("bytes=-5", 0), Err(()));
        assert_eq!(parse("bytes=0-", 0), Err(()));
        // Not served, so the whole file: multi-range, another unit, malformed, reversed.
        assert_eq!(parse("bytes=0-1,5-6", len), Ok(None));
        assert_eq!(parse("items=0-1", len), Ok(None));
        assert_eq!(parse("bytes=abc", len), Ok(None));
        assert_eq!(parse("bytes=a-1", len), Ok(None));
        assert_eq!(parse("bytes=5-x", len), Ok(None));
        assert_eq!(parse("bytes=20-10", len), Ok(None));
        assert_eq!(parse("bytes=-", len), Ok(None));
        assert_eq!(parse("bytes=18446744073709551616-", len), Ok(None));
    }

    fn req(headers: &[(&str, &str)]) -> Req {
        Req {
            method: "GET".into(),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            ..Req::default()
        }
    }

    #[test]
    fn if_range_serves_the_range_only_for_the_same_version() {
        let etag = "\"abc\"";
        let r = req(&[("range", "bytes=1-2"), ("if-range", "\"abc\"")]);
        assert_eq!(range(&r, 10, etag, "f").ok(), Some(Some((1, 2))));
        let r = req(&[("range", "bytes=1-2"), ("if-range", "\"old\"")]);
        assert_eq!(range(&r, 10, etag, "f").ok(), Some(None));
        let r = req(&[("range", "bytes=50-")]);
        let Err(resp) = range(&r, 10, etag, "f") else { panic!("a 416") };
        assert_eq!(resp.status, 416);
        assert!(resp.headers.iter().any(|(n, v)| n == "Content-Range" && v == "bytes */10"));
    }
}
