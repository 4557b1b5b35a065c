//! Where image bytes come from: a local path, a `file://` URL, standard input, an http(s) URL
//! ([`http`]) or an `oras://` reference to an OCI artifact ([`oras`]).
//!
//! A source offers two views: a sequential `Read` (for streaming formats, hashed as it passes) and
//! positioned reads through `ReadAt` (for qcow2, whose clusters are not in stream order; over
//! http these are Range requests).

pub mod http;
pub(crate) mod mirrors;
pub mod oras;
pub(crate) mod proxy;
pub(crate) mod trust;

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Context, Result};
use crate::io::{ReadAt, read_full};

/// An opened image source.
pub struct Source {
    /// What the user named, for messages.
    pub display: String,
    /// The file name part, used to cross-check the format against the content ("" for a pipe).
    pub name: String,
    kind: Kind,
    /// The sha256 the source itself promises for its bytes (an OCI layer digest).
    digest: Option<[u8; 32]>,
}

enum Kind {
    /// A regular file (or block device): random access, known size.
    File(File),
    /// A pipe (stdin, a FIFO): read once, front to back.
    Pipe(Stream),
    /// An http(s) file or registry blob: the first response is read as a stream (like a pipe);
    /// further readers and positioned reads send new requests.
    Remote { stream: Stream, res: Arc<http::Resource> },
}

/// A stream read once front to back. The bytes peeked at by the probe are kept and replayed in
/// front of the rest.
struct Stream {
    rest: Mutex<Option<Box<dyn Read + Send>>>,
    prefix: Mutex<Vec<u8>>,
    ended: Mutex<bool>,
}

impl Stream {
    fn new(r: Box<dyn Read + Send>) -> Stream {
        Stream {
            rest: Mutex::new(Some(r)),
            prefix: Mutex::new(Vec::new()),
            ended: Mutex::new(false),
        }
    }

    fn peek(&self, n: usize, display: &str) -> Result<(Vec<u8>, bool)> {
        let mut prefix = lock(&self.prefix);
        let mut ended = lock(&self.ended);
        if prefix.len() < n && !*ended {
            let mut rest = lock(&self.rest);
            let r = rest.as_mut().context("the input stream was already consumed")?;
            let have = prefix.len();
            prefix.resize(n, 0);
            let got = read_full(r.as_mut(), &mut prefix[have..])
                .with_context(|| format!("reading the start of {display}"))?;
            prefix.truncate(have + got);
            *ended = have + got < n;
        }
        let k = n.min(prefix.len());
        Ok((prefix[..k].to_vec(), *ended))
    }

    /// The stream from its start, once; None when it was taken already.
    fn take(&self) -> Option<Box<dyn Read + Send>> {
        let r = lock(&self.rest).take()?;
        let prefix = std::mem::take(&mut *lock(&self.prefix));
        Some(Box::new(std::io::Cursor::new(prefix).chain(r)))
    }
}

impl Source {
    /// Opens a local path, a `file://` URL, `-` for standard input, an http(s) URL or an
    /// `oras://` reference. A remote source sends its first request now, so that a 404 or a TLS
    /// failure is reported before any planning.
    pub fn open(spec: &str) -> Result<Source> {
        let lower = spec.get(..8).unwrap_or(spec).to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let o = http::open(spec)?;
            return Ok(Source::remote(o.display, o.name, o.resource, Box::new(o.stream), None));
        }
        if lower.starts_with("oras://") {
            let o = oras::open(spec)?;
            return Ok(Source::remote(
                o.display,
                o.name,
                o.resource,
                Box::new(o.stream),
                Some(o.digest),
            ));
        }
        if spec == "-" {
            return Ok(Source::pipe("standard input".into(), Box::new(std::io::stdin())));
        }
        let path = local_path(spec)?;
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let meta = file.metadata().with_context(|| format!("reading {}", path.display()))?;
        crate::ensure!(!meta.is_dir(), "opening {}: is a directory, not an image", path.display());
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let ft = meta.file_type();
        if ft.is_fifo() || ft.is_char_device() || ft.is_socket() {
            let mut src = Source::pipe(path.display().to_string(), Box::new(file));
            src.name = name;
            return Ok(src);
        }
        Ok(Source {
            display: path.display().to_string(),
            name,
            kind: Kind::File(file),
            digest: None,
        })
    }

    /// An http(s) URL opened as [`open`](Source::open) does, except that a first request that
    /// fails (refused, 404, 5xx) fails at once instead of being retried: for a caller that has
    /// somewhere else to fetch the same bytes from. Every request carries `headers` too.
    pub fn open_once(spec: &str, headers: &[(&str, &str)]) -> Result<Source> {
        let lower = spec.get(..8).unwrap_or(spec).to_ascii_lowercase();
        crate::ensure!(
            lower.starts_with("http://") || lower.starts_with("https://"),
            "opening {spec}: expected an http(s) URL"
        );
        let o = http::open_once(spec, headers)?;
        Ok(Source::remote(o.display, o.name, o.resource, Box::new(o.stream), None))
    }

    /// The layer with this sha256 (hex) of an `oras://` reference's repository, fetched by its
    /// digest through the registry's mirrors without resolving the reference: for a caller that
    /// pinned the layer (bty-web's cache), when the tag cannot be resolved. Checked against the
    /// digest like any oras:// source.
    pub fn open_oras_layer(spec: &str, sha256: &str, size: Option<u64>) -> Result<Source> {
        let o = oras::open_blob(spec, &format!("sha256:{sha256}"), size)?;
        Ok(Source::remote(o.display, o.name, o.resource, Box::new(o.stream), Some(o.digest)))
    }

    /// A source over any byte stream (read once).
    pub fn pipe(display: String, r: Box<dyn Read + Send>) -> Source {
        Source { display, name: String::new(), kind: Kind::Pipe(Stream::new(r)), digest: None }
    }

    fn remote(
        display: String,
        name: String,
        res: Arc<http::Resource>,
        first: Box<dyn Read + Send>,
        digest: Option<[u8; 32]>,
    ) -> Source {
        Source { display, name, kind: Kind::Remote { stream: Stream::new(first), res }, digest }
    }

    /// Whether the source is a local file, cheap to read by offset, rather than a stream.
    pub fn is_seekable(&self) -> bool {
        matches!(self.kind, Kind::File(_))
    }

    /// The metadata of a local file or block device source, for telling whether a target is
    /// the source itself; None for pipes and remote sources.
    pub fn local_metadata(&self) -> Option<std::fs::Metadata> {
        match &self.kind {
            Kind::File(f) => f.metadata().ok(),
            _ => None,
        }
    }

    /// Whether the source is remote (http(s), oras://): streamed, with positioned reads through
    /// Range requests where the server supports them.
    pub fn is_remote(&self) -> bool {
        matches!(self.kind, Kind::Remote { .. })
    }

    /// The sha256 the source promises for its bytes (an oras:// layer digest), checked by the
    /// flash like a pinned `--sha256`.
    pub fn digest(&self) -> Option<[u8; 32]> {
        self.digest
    }

    /// The first `n` bytes (fewer if the source is shorter), without consuming a pipe.
    /// The flag says whether they are the whole source.
    pub fn peek(&self, n: usize) -> Result<(Vec<u8>, bool)> {
        match &self.kind {
            Kind::File(f) => {
                let mut buf = vec![0u8; n];
                let got = read_full(&mut ReadAtCursor { inner: f.try_clone()?, pos: 0 }, &mut buf)
                    .with_context(|| format!("reading the start of {}", self.display))?;
                buf.truncate(got);
                let whole = self.size().is_some_and(|s| s <= got as u64);
                Ok((buf, whole))
            }
            Kind::Pipe(s) | Kind::Remote { stream: s, .. } => s.peek(n, &self.display),
        }
    }

    /// A sequential reader from the start of the source. A pipe can be read this way once; a
    /// remote source hands out its first response, then sends a new request for each reader.
    pub fn reader(&self) -> Result<Box<dyn Read + Send>> {
        match &self.kind {
            Kind::File(f) => {
                let f = f.try_clone().with_context(|| format!("reopening {}", self.display))?;
                Ok(Box::new(ReadAtCursor { inner: f, pos: 0 }))
            }
            Kind::Pipe(s) => s.take().with_context(|| {
                format!("reading {}: the stream was already consumed", self.display)
            }),
            Kind::Remote { stream, res } => {
                Ok(stream.take().unwrap_or_else(|| Box::new(http::Resumable::new(Arc::clone(res)))))
            }
        }
    }

    /// A sequential reader that finds holes with SEEK_DATA/SEEK_HOLE and returns them as zeros
    /// without reading them (reading a hole makes the kernel zero-fill page cache for it, which
    /// cost more than the whole write of a sparse raw image). None for pipes.
    pub fn sparse_reader(&self) -> Result<Option<Box<dyn Read + Send>>> {
        let Kind::File(f) = &self.kind else { return Ok(None) };
        let file = f.try_clone().with_context(|| format!("reopening {}", self.display))?;
        let len = self.size().unwrap_or(0);
        Ok(Some(Box::new(SparseReader {
            file,
            pos: 0,
            len,
            data_end: 0,
            hole_end: 0,
            seekable: true,
        })))
    }

    /// Random access to the source (for qcow2); pipes have none, remote sources go through
    /// Range requests (a server without them fails on the first read, saying so).
    pub fn random_access(&self) -> Result<Box<dyn ReadAt>> {
        match &self.kind {
            Kind::File(f) => {
                let f = f.try_clone().with_context(|| format!("reopening {}", self.display))?;
                Ok(Box::new(f))
            }
            Kind::Remote { res, .. } => Ok(Box::new(http::Ranged::new(Arc::clone(res)))),
            Kind::Pipe(_) => crate::bail!(
                "{} is a stream: this needs random access (save it to a file first)",
                self.display
            ),
        }
    }

    /// Size in bytes of the (possibly compressed) source, when known.
    pub fn size(&self) -> Option<u64> {
        match &self.kind {
            Kind::File(f) => ReadAt::size(f),
            Kind::Remote { res, .. } => res.len,
            Kind::Pipe(_) => None,
        }
    }
}

/// Reads a small document (a catalog TOML, a sha256 list) from a local path, a `file://` URL,
/// an http(s) URL ([`http::get_bytes`]) or an `oras://` reference (its TOML layer,
/// [`oras::fetch_toml`]); more than `max_bytes` is refused.
pub fn fetch_document(spec: &str, max_bytes: u64) -> Result<Vec<u8>> {
    let lower = spec.get(..8).unwrap_or(spec).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return http::get_bytes(spec, max_bytes);
    }
    if lower.starts_with("oras://") {
        return oras::fetch_toml(spec, max_bytes);
    }
    let path = local_path(spec)?;
    let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    f.take(max_bytes + 1)
        .read_to_end(&mut out)
        .with_context(|| format!("reading {}", path.display()))?;
    crate::ensure!(
        out.len() as u64 <= max_bytes,
        "reading {}: larger than the {max_bytes} bytes allowed",
        path.display()
    );
    Ok(out)
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the data is plain bytes).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A sequential `Read` over positioned reads, so that clones of one fd do not share an offset.
struct ReadAtCursor<R> {
    inner: R,
    pos: u64,
}

impl<R: ReadAt> Read for ReadAtCursor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads a file front to back, producing holes as zeros without reading them.
struct SparseReader {
    file: File,
    pos: u64,
    len: u64,
    /// End of the data extent that contains `pos` (valid while pos < data_end).
    data_end: u64,
    /// End of the hole that contains `pos` (valid while pos < hole_end).
    hole_end: u64,
    /// False once the file system said it cannot report holes: then everything is data.
    seekable: bool,
}

impl SparseReader {
    /// Classifies `pos`: updates data_end or hole_end.
    fn locate(&mut self) -> io::Result<()> {
        if !self.seekable {
            self.data_end = self.len;
            return Ok(());
        }
        match crate::sys::seek_data(&self.file, self.pos) {
            Ok(Some(d)) if d == self.pos => {
                self.data_end = crate::sys::seek_hole(&self.file, self.pos)?.min(self.len);
            }
            Ok(Some(d)) => self.hole_end = d.min(self.len),
            Ok(None) => self.hole_end = self.len,
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                self.seekable = false;
                self.data_end = self.len;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

impl Read for SparseReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.data_end && self.pos >= self.hole_end {
            self.locate()?;
        }
        if self.pos < self.hole_end {
            let n = (self.hole_end - self.pos).min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            self.pos += n as u64;
            return Ok(n);
        }
        let want = (self.data_end - self.pos).min(buf.len() as u64) as usize;
        let n = FileExt::read_at(&self.file, &mut buf[..want], self.pos)?;
        if n == 0 {
            // The file shrank under us: report it rather than pad.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ended at {} bytes, {} were expected", self.pos, self.len),
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Turns a CLI source argument into a local path; other schemes are refused.
fn local_path(spec: &str) -> Result<PathBuf> {
    if let Some(rest) = spec.strip_prefix("file://") {
        crate::ensure!(rest.starts_with('/'), "opening {spec}: file:// URLs need an absolute path");
        return Ok(PathBuf::from(percent_decode(rest, false)));
    }
    if let Some((scheme, _)) = spec.split_once("://") {
        crate::bail!(
            "opening {spec}: {scheme}:// sources are not supported (use a local path, file://, http(s):// or oras://)"
        );
    }
    Ok(Path::new(spec).to_path_buf())
}

/// Decodes %XX escapes, and '+' as a space when `plus` (queries and forms; in a path '+' is
/// itself). Invalid escapes stay as they are.
pub fn percent_decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 3 <= b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' if plus => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_decode_to_paths() {
        assert_eq!(local_path("file:///tmp/a%20b.img").unwrap(), PathBuf::from("/tmp/a b.img"));
        assert_eq!(local_path("/x/y.img").unwrap(), PathBuf::from("/x/y.img"));
        assert!(local_path("file://relative").is_err());
        assert!(local_path("ftp://host/x").is_err());
    }

    #[test]
    fn local_documents_are_read_with_a_cap() {
        let p = std::env::temp_dir().join(format!("bty-doc-{}.toml", std::process::id()));
        std::fs::write(&p, b"version = 1\n").unwrap();
        let spec = p.display().to_string();
        assert_eq!(fetch_document(&spec, 64).unwrap(), b"version = 1\n");
        assert!(fetch_document(&spec, 4).unwrap_err().to_string().contains("larger than"));
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn slice_read_at_stops_at_end() {
        let data = vec![1u8, 2, 3];
        let mut buf = [0u8; 4];
        assert_eq!(ReadAt::read_at(&data, &mut buf, 1).unwrap(), 2);
        assert_eq!(ReadAt::read_at(&data, &mut buf, 9).unwrap(), 0);
        assert!(data.read_exact_at(&mut buf, 0).is_err());
    }
}
