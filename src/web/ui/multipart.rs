//! `multipart/form-data` bodies as browsers send file uploads, read part by part as a stream:
//! a netboot artifact goes to disk without being held in memory.

use std::io::{self, Read};

/// Longest part head (its header lines) accepted.
const MAX_PART_HEAD: usize = 8 << 10;

/// A multipart body: parts are read in order with [`Multipart::next_part`], each part's data
/// through `Read` until its delimiter.
pub struct Multipart<'a> {
    inner: &'a mut dyn Read,
    /// `\r\n--boundary`: what ends a part's data.
    delim: Vec<u8>,
    /// Bytes read from `inner` and not yet consumed.
    buf: Vec<u8>,
    eof: bool,
    /// The current part's data has been read up to its delimiter.
    part_done: bool,
    finished: bool,
}

/// One part's head.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim_matches('"').to_string())
        .filter(|b| !b.is_empty() && b.len() <= 70)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("multipart body: {msg}"))
}

impl<'a> Multipart<'a> {
    pub fn new(inner: &'a mut dyn Read, boundary: &str) -> Multipart<'a> {
        // The leading CRLF makes the first delimiter look like every later one.
        Multipart {
            inner,
            delim: format!("\r\n--{boundary}").into_bytes(),
            buf: b"\r\n".to_vec(),
            eof: false,
            part_done: true,
            finished: false,
        }
    }

    /// Reads more into `buf`; false at the end of the body.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let mut chunk = [0u8; 16 << 10];
        let n = loop {
            match self.inner.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if n == 0 {
            self.eof = true;
            return Ok(false);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(true)
    }

    /// Moves to the next part and returns its head; None after the last one.
    pub fn next_part(&mut self) -> io::Result<Option<Part>> {
        // Skip what is left of the current part.
        let mut sink = [0u8; 8 << 10];
        while !self.part_done {
            if self.read(&mut sink)? == 0 && !self.part_done {
                return Err(bad("truncated"));
            }
        }
        if self.finished {
            return Ok(None);
        }
        // buf starts at a delimiter; then "--" ends the body, CRLF starts a part head.
        while self.buf.len() < self.delim.len() + 2 {
            if !self.fill()? {
                return Err(bad("truncated before a delimiter"));
            }
        }
        if !self.buf.starts_with(&self.delim) {
            return Err(bad("no boundary where one was expected"));
        }
        let after = &self.buf[self.delim.len()..self.delim.len() + 2];
        if after == b"--" {
            self.finished = true;
            return Ok(None);
        }
        if after != b"\r\n" {
            return Err(bad("malformed delimiter line"));
        }
        self.buf.drain(..self.delim.len() + 2);
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > MAX_PART_HEAD {
                return Err(bad("part head too long"));
            }
            if !self.fill()? {
                return Err(bad("truncated part head"));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        self.part_done = false;
        let mut part = Part::default();
        for line in head.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else { continue };
            if !name.trim().eq_ignore_ascii_case("content-disposition") {
                continue;
            }
            for p in value.split(';').skip(1) {
                let Some((k, v)) = p.trim().split_once('=') else { continue };
                let v = v.trim().trim_matches('"').to_string();
                match k.trim().to_ascii_lowercase().as_str() {
                    "name" => part.name = v,
                    "filename" => part.filename = Some(v),
                    _ => {}
                }
            }
        }
        Ok(Some(part))
    }

    /// The current part's data as text, at most `max` bytes.
    pub fn text(&mut self, max: usize) -> io::Result<String> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = self.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
            if out.len() > max {
                return Err(bad("form field too long"));
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// The current part's data; 0 at its delimiter.
impl Read for Multipart<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.part_done || out.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(i) = self.buf.windows(self.delim.len()).position(|w| w == self.delim) {
                if i == 0 {
                    self.part_done = true;
                    return Ok(0);
                }
                let n = i.min(out.len());
                out[..n].copy_from_slice(&self.buf[..n]);
                self.buf.drain(..n);
                return Ok(n);
            }
            // Everything but a tail that could be the start of the delimiter is part data.
            let safe = self.buf.len().saturating_sub(self.delim.len() - 1);
            if safe > 0 {
                let n = safe.min(out.len());
                out[..n].copy_from_slice(&self.buf[..n]);
                self.buf.drain(..n);
                return Ok(n);
            }
            if !self.fill()? {
                return Err(bad("truncated inside a part"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(file: &[u8]) -> Vec<u8> {
        let mut b =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\nt0k\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"f\"; filename=\"a.toml\"\r\n\
            Content-Type: application/octet-stream\r\n\r\n"
                .to_vec();
        b.extend_from_slice(file);
        b.extend_from_slice(b"\r\n--XyZ--\r\n");
        b
    }

    #[test]
    fn parts_stream_in_order_whatever_the_read_sizes() {
        let file: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).chain(*b"\r\n--Xy").collect();
        let raw = body(&file);
        for step in [1usize, 7, 4096, 1 << 20] {
            let mut r = Chunks(&raw, step);
            let mut m = Multipart::new(&mut r, "XyZ");
            let p = m.next_part().unwrap().unwrap();
            assert_eq!(p.name, "csrf");
            assert_eq!(m.text(100).unwrap(), "t0k");
            let p = m.next_part().unwrap().unwrap();
            assert_eq!((p.name.as_str(), p.filename.as_deref()), ("f", Some("a.toml")));
            let mut got = Vec::new();
            m.read_to_end(&mut got).unwrap();
            assert_eq!(got, file, "step {step}");
            assert_eq!(m.next_part().unwrap(), None);
        }
    }

    #[test]
    fn fuzzed_bodies_end_in_parts_or_an_error_with_bounded_memory() {
        let seeds = [
            body(b"abc"),
            body(b"line\r\n--Xy\r\n-- almost a delimiter\r\n\r\n--Xy"),
            b"--XyZ\r\nContent-Disposition: form-data; name=x\r\n\r\n\r\n--XyZ--\r\n".to_vec(),
            b"--XyZ--\r\n".to_vec(),
        ];
        // Past the data handed out, `buf` may hold at most a part head plus one read's worth.
        let bound = MAX_PART_HEAD + (16 << 10) + 80;
        let mut rng = crate::fuzz::Rng::new(crate::fuzz::seed());
        for i in 0..crate::fuzz::iterations(5000) {
            let seed = rng.pick(&seeds).clone();
            let input = crate::fuzz::mutate(&mut rng, &seed, 64 << 10);
            let step = 1 + rng.below(5000);
            let mut r = Chunks(&input, step);
            let mut m = Multipart::new(&mut r, "XyZ");
            // Each part consumes at least a delimiter, so the input bounds the number of parts.
            let mut parts = 0;
            let outcome = loop {
                match m.next_part() {
                    Ok(None) => break Ok(()),
                    Ok(Some(_)) => {
                        parts += 1;
                        assert!(parts <= input.len() / 8 + 1, "iteration {i}: parts never end");
                        let mut data = Vec::new();
                        if let Err(e) = (&mut m).take(1 << 20).read_to_end(&mut data) {
                            break Err(e);
                        }
                        assert!(data.len() <= input.len(), "iteration {i}: more data than input");
                    }
                    Err(e) => break Err(e),
                }
                assert!(m.buf.len() <= bound, "iteration {i}: buffer grew to {}", m.buf.len());
            };
            if let Err(e) = outcome {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "iteration {i}: {e}");
                assert!(e.to_string().starts_with("multipart body: "), "iteration {i}: {e}");
            }
        }
    }

    /// A reader that hands out at most `.1` bytes per call.
    struct Chunks<'a>(&'a [u8], usize);

    impl Read for Chunks<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(out.len()).min(self.1);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn truncated_and_foreign_bodies_are_errors() {
        let raw = body(b"abc");
        let cut = &raw[..raw.len() - 12];
        let mut r = cut;
        let mut m = Multipart::new(&mut r, "XyZ");
        m.next_part().unwrap();
        m.next_part().unwrap();
        assert!(m.read_to_end(&mut Vec::new()).is_err());
        let mut r: &[u8] = b"hello";
        assert!(Multipart::new(&mut r, "XyZ").next_part().is_err());
        assert_eq!(boundary("multipart/form-data; boundary=\"abc\""), Some("abc".into()));
        assert_eq!(boundary("application/json"), None);
    }
}
