//! The image cache: catalog images pinned by sha256 are fetched from their origin (http(s) or
//! oras://) once, kept under `[cache] dir` by digest, and served from there at
//! `GET /images/{sha256}/{name}` with Range support, so a lab flashes from its own server after
//! the first pull and an air-gapped lab flashes from a pre-seeded cache.
//!
//! Only pinned entries are cached: an unpinned URL may change at its origin, and a cache that
//! cannot tell would hand out a stale image as if it were the current one. Pinning also makes
//! every cached file checkable: a file is hashed before it is first served after a start or
//! after it changed on disk, and a file whose bytes do not match its name is thrown away and
//! fetched again.
//!
//! Layout: `sha256/<hex>` complete files (their mtime is the last use, for LRU eviction);
//! `partial/<hex>.<pid>` files being fetched. Concurrent first requests for one image share a
//! single fetch and stream from the partial file as it grows; the last byte is held back until
//! the whole file matched its digest, so a client never receives a complete body of wrong bytes.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

mod fill;

pub(crate) use fill::parse_upstreams;

use crate::error::{Context, Error, Result};
use crate::web::app::App;
use crate::web::app::internal;
use crate::web::db::CatalogEntry;
use crate::web::http::{Body, Req, Resp};

/// A fetch that delivers no byte for this long fails (its readers with it).
const STALL: Duration = Duration::from_secs(120);
/// How long a request waits for the origin's first answer before it gives up with 504.
const FIRST_BYTE: Duration = Duration::from_secs(60);

pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
    /// Other bty-web servers a miss is fetched from before the origin (`[cache] upstreams`).
    upstreams: Vec<String>,
    /// This cache's name in `Bty-Cache-Chain` (random per start): how it recognises a request
    /// that it caused itself through a loop of upstreams.
    id: String,
    inner: Mutex<Inner>,
    /// Hashing a file of gigabytes takes seconds: one at a time, and a request that waited
    /// finds the file already checked.
    verifying: Mutex<()>,
}

#[derive(Default)]
struct Inner {
    fills: HashMap<String, Arc<Fill>>,
    /// Files whose digest was checked, with the (length, mtime) they had then: a file that
    /// changed since is hashed again before it is served.
    verified: HashMap<String, (u64, SystemTime)>,
    /// Responses reading each file now: eviction skips these.
    in_use: HashMap<String, usize>,
}

/// One fetch from the origin, shared by every request that wants the image meanwhile.
struct Fill {
    part: PathBuf,
    state: Mutex<FillState>,
    cv: Condvar,
}

#[derive(Default)]
struct FillState {
    /// The origin answered and the partial file exists.
    started: bool,
    total: Option<u64>,
    written: u64,
    done: Option<std::result::Result<(), String>>,
}

/// What the cache holds, for the UI and /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub files: u64,
    pub bytes: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The entry's size as the catalog states it.
fn size_of(e: &CatalogEntry) -> Option<u64> {
    e.size_bytes.and_then(|n| u64::try_from(n).ok())
}

/// Whether `s` is a sha256 in lowercase hex, as cache file names and catalog pins are.
fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An image name as the last segment of an /images URL: escaped, never empty.
fn url_name(name: &str) -> String {
    let mut file = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"._~-".contains(&b) {
            file.push(b as char);
        } else {
            file.push_str(&format!("%{b:02X}"));
        }
    }
    if file.is_empty() {
        file.push_str("image");
    }
    file
}

impl Cache {
    /// Opens (creating) the cache at `dir` and evicts down to the cap if it was lowered. The
    /// server (`clean`) also drops the partial files a killed process left behind; `bty-web
    /// cache` must not, as a running server may be filling them.
    pub fn open(dir: &Path, max_bytes: u64, clean: bool) -> Result<Cache> {
        for sub in ["sha256", "partial"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let partial = dir.join("partial");
        let entries =
            fs::read_dir(&partial).with_context(|| format!("reading {}", partial.display()))?;
        for e in entries.flatten().filter(|_| clean) {
            if let Err(err) = fs::remove_file(e.path()) {
                crate::warn!("removing the leftover {}: {err}", e.path().display());
            }
        }
        let cache = Cache {
            dir: dir.to_path_buf(),
            max_bytes,
            upstreams: Vec::new(),
            id: fill::new_id()?,
            inner: Mutex::default(),
            verifying: Mutex::new(()),
        };
        let evicted = cache.make_room(0)?;
        for (hex, len) in evicted {
            crate::info!("cache: evicted {hex} ({}) to fit the cap", crate::units::bytes(len));
        }
        Ok(cache)
    }

    /// The cache with these upstreams (base URLs checked by [`parse_upstreams`]) asked before
    /// each origin.
    pub fn with_upstreams(mut self, upstreams: Vec<String>) -> Cache {
        self.upstreams = upstreams;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, hex: &str) -> PathBuf {
        self.dir.join("sha256").join(hex)
    }

    /// Whether the image with this sha256 is in the cache, whole.
    pub fn is_cached(&self, sha256: &str) -> bool {
        is_digest(sha256) && self.file(sha256).is_file()
    }

    /// Whether a flash of the entry can go through the cache: it is pinned, comes from a remote
    /// origin and, when its size is known, fits under the cap. Cached entries always can.
    pub fn can_serve(&self, e: &CatalogEntry) -> bool {
        let Some(sha) = e.disk_image_sha.as_deref().filter(|s| is_digest(s)) else {
            return false;
        };
        if self.is_cached(sha) {
            return true;
        }
        let src = e.src.get(..8).unwrap_or(&e.src).to_ascii_lowercase();
        let remote = ["http://", "https://", "oras://"].iter().any(|p| src.starts_with(p));
        remote && size_of(e).is_none_or(|n| n <= self.max_bytes)
    }

    /// Where the live environment fetches the entry through this server.
    pub fn url(host: &str, sha256: &str, name: &str) -> String {
        format!("http://{host}/images/{sha256}/{}", url_name(name))
    }

    /// The complete files and their total size.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        for (_, len, _) in self.complete_files() {
            u.files += 1;
            u.bytes += len;
        }
        u
    }

    /// (hex, length, last use as UTC text) of every complete file, most recently used first.
    pub fn list(&self) -> Vec<(String, u64, String)> {
        let mut files = self.complete_files();
        files.sort_by_key(|f| std::cmp::Reverse(f.2));
        files
            .into_iter()
            .map(|(h, len, t)| {
                let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                (h, len, crate::units::iso8601(secs))
            })
            .collect()
    }

    /// (hex, length, last use) of every complete file.
    fn complete_files(&self) -> Vec<(String, u64, SystemTime)> {
        let Ok(rd) = fs::read_dir(self.dir.join("sha256")) else { return Vec::new() };
        rd.flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok().filter(|n| is_digest(n))?;
                let meta = e.metadata().ok().filter(|m| m.is_file())?;
                Some((name, meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
            })
            .collect()
    }

    /// Evicts least recently used files not being read until `need` more bytes fit under the
    /// cap, counting fetches in flight at their announced size. The files evicted.
    fn make_room(&self, need: u64) -> Result<Vec<(String, u64)>> {
        let inner = lock(&self.inner);
        let mut files = self.complete_files();
        let pending: u64 = inner
            .fills
            .values()
            .map(|f| {
                let s = lock(&f.state);
                s.total.unwrap_or(s.written)
            })
            .sum();
        let mut used = files.iter().map(|f| f.1).sum::<u64>() + pending;
        files.sort_by_key(|f| f.2);
        let mut evicted = Vec::new();
        for (hex, len, _) in files {
            if used.saturating_add(need) <= self.max_bytes {
                break;
            }
            if inner.in_use.get(&hex).is_some_and(|n| *n > 0) {
                continue;
            }
            let path = self.file(&hex);
            fs::remove_file(&path).with_context(|| format!("evicting {}", path.display()))?;
            used -= len;
            evicted.push((hex, len));
        }
        crate::ensure!(
            used.saturating_add(need) <= self.max_bytes,
            "the cache cap of {} cannot make room for {}: {} is in use",
            crate::units::bytes(self.max_bytes),
            crate::units::bytes(need),
            crate::units::bytes(used)
        );
        Ok(evicted)
    }

    /// The complete file, checked against its name: `None` when it is not cached (or was just
    /// found corrupt and removed, which is reported as an event).
    fn open_checked(
        self: &Arc<Self>,
        app: &App,
        hex: &str,
        want_len: Option<u64>,
    ) -> Result<Option<(File, u64)>> {
        let path = self.file(hex);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::from(e).wrap(format!("opening {}", path.display()))),
        };
        let stamp = |f: &File| -> Result<(u64, SystemTime)> {
            let m = f.metadata().with_context(|| format!("reading {}", path.display()))?;
            Ok((m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
        };
        let checked = |s: &(u64, SystemTime)| lock(&self.inner).verified.get(hex) == Some(s);
        let mut now = stamp(&file)?;
        let problem = if want_len.is_some_and(|n| n != now.0) {
            Some(format!("it has {} bytes, the catalog says {}", now.0, want_len.unwrap_or(0)))
        } else if checked(&now) {
            None
        } else {
            let _one = lock(&self.verifying);
            now = stamp(&file)?;
            if checked(&now) {
                None
            } else {
                // The reads move the shared offset only: responses read by position.
                let (got, _) =
                    copy_hashing(&mut &file, &path.display().to_string(), None, |_| Ok(()))?;
                if got == hex {
                    lock(&self.inner).verified.insert(hex.to_string(), now);
                    None
                } else {
                    Some(format!("its bytes hash to {got}"))
                }
            }
        };
        if let Some(problem) = problem {
            let msg =
                format!("cache: {} is corrupt ({problem}); fetching it again", path.display());
            crate::warn!("{msg}");
            app.db.event("cache.corrupt", None, &msg, None);
            lock(&self.inner).verified.remove(hex);
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            return Ok(None);
        }
        // The mtime is the last use, for LRU; the new stamp stays a checked one.
        if file.set_modified(SystemTime::now()).is_ok() {
            if let Ok(s) = stamp(&file) {
                let mut inner = lock(&self.inner);
                if inner.verified.get(hex).is_some_and(|v| v.0 == s.0) {
                    inner.verified.insert(hex.to_string(), s);
                }
            }
        }
        Ok(Some((file, now.0)))
    }

    /// Marks the file as being read until the guard drops.
    fn use_file(self: &Arc<Self>, hex: &str) -> InUse {
        *lock(&self.inner).in_use.entry(hex.to_string()).or_default() += 1;
        InUse { cache: Arc::clone(self), hex: hex.to_string() }
    }

    /// The fetch of `hex` in flight, or a new one started for the entry.
    fn fill(
        self: &Arc<Self>,
        app: &Arc<App>,
        hex: &str,
        entry: &CatalogEntry,
        chain: &str,
    ) -> Arc<Fill> {
        let mut inner = lock(&self.inner);
        if let Some(f) = inner.fills.get(hex) {
            return Arc::clone(f);
        }
        let fill = self.new_fill(hex, 0);
        inner.fills.insert(hex.to_string(), Arc::clone(&fill));
        drop(inner);
        let (cache, app, key, entry, f) =
            (Arc::clone(self), Arc::clone(app), hex.to_string(), entry.clone(), Arc::clone(&fill));
        let chain = chain.to_string();
        let spawned = std::thread::Builder::new()
            .name("cache-fill".into())
            .spawn(move || cache.run_fill(&app, f, &key, &entry, &chain));
        if let Err(e) = spawned {
            lock(&self.inner).fills.remove(hex);
            fill::finish(&fill, Err(format!("starting the fetch: {e}")));
        }
        fill
    }

    /// Copies a local image into the cache under its sha256 (pre-seeding an air-gapped lab);
    /// the digest and length.
    pub fn add_file(&self, path: &Path) -> Result<(String, u64)> {
        let mut input = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = input.metadata().with_context(|| format!("reading {}", path.display()))?.len();
        crate::ensure!(
            len <= self.max_bytes,
            "{}: {} is more than the cache cap of {}",
            path.display(),
            crate::units::bytes(len),
            crate::units::bytes(self.max_bytes)
        );
        self.make_room(len)?;
        let part = self.dir.join("partial").join(format!("add.{}", std::process::id()));
        let copied = (|| -> Result<String> {
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&part)
                .with_context(|| format!("creating {}", part.display()))?;
            let what = path.display().to_string();
            let (hex, _) = copy_hashing(&mut input, &what, Some((&mut out, &part)), |_| Ok(()))?;
            out.sync_all().with_context(|| format!("syncing {}", part.display()))?;
            Ok(hex)
        })();
        let hex = match copied {
            Ok(h) => h,
            Err(e) => {
                let _ = fs::remove_file(&part);
                return Err(e);
            }
        };
        let dest = self.file(&hex);
        fs::rename(&part, &dest).with_context(|| format!("moving into {}", dest.display()))?;
        Ok((hex, len))
    }
}

/// Keeps a file from eviction while a response reads it.
struct InUse {
    cache: Arc<Cache>,
    hex: String,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut inner = lock(&self.cache.inner);
        if let Some(n) = inner.in_use.get_mut(&self.hex) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.in_use.remove(&self.hex);
            }
        }
    }
}

/// Reads `input` (named `what` in errors) to its end, writing it to `out` when given, hashing
/// as it goes; `each` sees the count so far after every chunk and may stop the copy with an
/// error. The sha256 in hex and the count.
fn copy_hashing(
    input: &mut dyn Read,
    what: &str,
    mut out: Option<(&mut File, &Path)>,
    mut each: impl FnMut(u64) -> Result<()>,
) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut count = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok((crate::hex::encode(&hasher.finalize()), count)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::from(e).wrap(format!("reading {what}"))),
        };
        if let Some((f, path)) = out.as_mut() {
            f.write_all(&buf[..n]).with_context(|| format!("writing {}", path.display()))?;
        }
        hasher.update(&buf[..n]);
        count += n as u64;
        each(count)?;
    }
}

/// `[start, end)` of a file still being fetched: reads wait for the bytes, and the last byte
/// waits for the digest check.
struct Growing {
    file: File,
    fill: Arc<Fill>,
    pos: u64,
    end: u64,
}

impl Read for Growing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.end || buf.is_empty() {
            return Ok(0);
        }
        let mut st = lock(&self.fill.state);
        let mut last = (st.written, Instant::now());
        loop {
            let avail = match &st.done {
                Some(Err(e)) => return Err(io::Error::other(format!("fetching the image: {e}"))),
                Some(Ok(())) => st.written,
                None => st.written.saturating_sub(1),
            };
            if self.pos < avail {
                drop(st);
                let want = avail.min(self.end) - self.pos;
                let want = usize::try_from(want).unwrap_or(usize::MAX).min(buf.len());
                let n = self.file.read_at(&mut buf[..want], self.pos)?;
                if n == 0 {
                    return Err(io::Error::other("the partial cache file is shorter than written"));
                }
                self.pos += n as u64;
                return Ok(n);
            }
            if st.done.is_some() {
                // Everything written was read: the end (a short body is caught by the length).
                return Ok(0);
            }
            if st.written != last.0 {
                last = (st.written, Instant::now());
            } else if last.1.elapsed() > STALL {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the origin stalled"));
            }
            st = self
                .fill
                .cv
                .wait_timeout(st, Duration::from_secs(1))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// How HTTP caches in front of us may keep an image: for good, since its URL names its sha256
/// and the bytes behind it can never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// An image's ETag: its digest, which names its bytes for good.
fn etag(hex: &str) -> String {
    format!("\"{hex}\"")
}

/// The 200 or 206 answer for `len` bytes of an image.
fn answer(req: &Req, hex: &str, len: u64, body: impl FnOnce(u64, u64) -> Body) -> Resp {
    crate::web::ranges::answer(req, len, etag(hex), IMMUTABLE, "the image", body)
}

/// `GET|HEAD /images/{sha256}/{name}`: a pinned catalog image, from the cache, fetched into it
/// first when it is not there yet.
pub fn serve(app: &Arc<App>, req: &Req, sha256: &str) -> Resp {
    let Some(cache) = &app.cache else {
        return Resp::error(404, "the image cache is off ([cache] dir is not set)");
    };
    let hex = sha256.to_ascii_lowercase();
    if !is_digest(&hex) {
        return Resp::error(400, &format!("{sha256:?}: expected a sha256 in hex"));
    }
    let entry = match app.db.catalog() {
        Ok(all) => all.into_iter().find(|e| e.disk_image_sha.as_deref() == Some(hex.as_str())),
        Err(e) => return internal(e),
    };
    let Some(entry) = entry else {
        return Resp::error(404, &format!("no catalog entry is pinned to sha256 {hex}"));
    };
    let chain = match fill::chain(req, &cache.id) {
        Ok(c) => c,
        Err(r) => return r,
    };
    // A client or an HTTP cache that holds these bytes already needs nothing, least of all a
    // fetch from the origin.
    if let Some(r) = crate::web::ranges::not_modified(req, &etag(&hex), IMMUTABLE) {
        return r;
    }
    // Twice at most: a file found corrupt is fetched again, and a fetch that just finished is
    // served from its complete file.
    for _ in 0..3 {
        match cache.open_checked(app, &hex, size_of(&entry)) {
            Ok(Some((file, len))) => {
                app.metrics.cache_hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let guard = cache.use_file(&hex);
                return answer(req, &hex, len, move |offset, len| Body::File {
                    file,
                    offset,
                    len,
                    keep: Some(Box::new(guard)),
                });
            }
            Ok(None) => {}
            Err(e) => return internal(e),
        }
        // A HEAD of an image not yet cached answers from the catalog instead of starting a
        // download of gigabytes nobody asked for.
        if let (true, Some(len)) = (req.method == "HEAD", size_of(&entry)) {
            if cache.can_serve(&entry) {
                return answer(req, &hex, len, |_, n| {
                    Body::Stream(Box::new(std::io::empty()), Some(n))
                });
            }
        }
        if !cache.can_serve(&entry) {
            return Resp::error(
                409,
                &format!(
                    "{} cannot be cached (larger than the cap, or not a remote source); fetch it \
                     from {}",
                    entry.name, entry.src
                ),
            );
        }
        if chain.looped {
            return fill::loop_detected(&cache.id, &hex);
        }
        let fill = cache.fill(app, &hex, &entry, &chain.onward);
        let t0 = Instant::now();
        let mut st = lock(&fill.state);
        while !st.started && st.done.is_none() && t0.elapsed() < FIRST_BYTE {
            st = fill
                .cv
                .wait_timeout(st, Duration::from_millis(500))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match (&st.done, st.started, st.total) {
            (Some(Err(e)), ..) => {
                return Resp::error(502, &format!("fetching {} into the cache: {e}", entry.src));
            }
            (Some(Ok(())), ..) => continue,
            (None, false, _) => {
                return Resp::error(
                    504,
                    &format!("{} did not answer within {} s", entry.src, FIRST_BYTE.as_secs()),
                );
            }
            (None, true, None) if req.header("range").is_none() => {
                drop(st);
                app.metrics.cache_misses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Ok(file) = File::open(&fill.part) else { continue };
                let body = Growing { file, fill, pos: 0, end: u64::MAX };
                return Resp {
                    status: 200,
                    headers: vec![("Content-Type".into(), "application/octet-stream".into())],
                    body: Body::Stream(Box::new(body), None),
                };
            }
            (None, true, None) => {
                // A range of a file of unknown length: wait for the fetch to finish.
                while st.done.is_none() {
                    st = fill
                        .cv
                        .wait_timeout(st, Duration::from_secs(1))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                continue;
            }
            (None, true, Some(len)) => {
                drop(st);
                app.metrics.cache_misses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // The fetch may have finished and moved the file since: then serve that.
                let Ok(file) = File::open(&fill.part) else { continue };
                return answer(req, &hex, len, move |pos, n| {
                    Body::Stream(Box::new(Growing { file, fill, pos, end: pos + n }), Some(n))
                });
            }
        }
    }
    Resp::error(503, &format!("{}: the cache could not settle on a copy; try again", entry.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_urls_escape_the_name() {
        let h = "a".repeat(64);
        assert_eq!(
            Cache::url("10.0.2.2:8080", &h, "deb 12.img.zst"),
            format!("http://10.0.2.2:8080/images/{h}/deb%2012.img.zst")
        );
        assert!(Cache::url("h", &h, "../x").ends_with("/..%2Fx"));
        assert!(Cache::url("h", &h, "").ends_with("/image"));
    }

    #[test]
    fn digests_are_lowercase_hex() {
        assert!(is_digest(&"0f".repeat(32)));
        assert!(!is_digest(&"0F".repeat(32)));
        assert!(!is_digest("../etc/passwd"));
        assert!(!is_digest(&"0".repeat(63)));
    }
}
