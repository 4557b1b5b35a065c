//! Filling the cache on a miss: where the bytes of a pinned image come from. Each upstream of
//! `[cache] upstreams` (another bty-web, such as the central cache a site cache is chained to)
//! is asked for `GET {upstream}/images/{sha256}/{name}` in order, then the entry's own origin.
//! Whatever answers is held to the pin as the origin is: an upstream whose bytes do not match
//! is reported (`cache.upstream_lied`) and the next source is tried, and an upstream that is
//! down or has no copy (refused, 404, 409, 5xx) is passed over at once.
//!
//! Requests stream from the partial file while it grows. When a copy that already started is
//! thrown away, the requests reading it fail (the last byte of a body always waits for the
//! digest, so none of them ends complete) and the next source fills a new partial file that
//! later requests read.
//!
//! Upstreams that name each other would wait on each other's fill until the first-byte
//! deadline: each fill's requests to an upstream carry `Bty-Cache-Chain`, the ids of the caches
//! the request went through, and a cache that finds its own id there on a miss answers 508 at
//! once, so the one before it moves on to its next source.

use std::fs::{self, OpenOptions};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Instant, SystemTime};

use super::{Cache, Fill, copy_hashing, lock, size_of, url_name};
use crate::error::{Context, Error};
use crate::web::app::App;
use crate::web::db::CatalogEntry;
use crate::web::http::{Req, Resp};

/// The header that carries the chain of caches a fill's request went through.
pub(super) const CHAIN_HEADER: &str = "Bty-Cache-Chain";
/// Caches one request may pass through: more is a loop or a mistake either way.
const MAX_CHAIN: usize = 16;

/// A new cache id: 16 hex digits, random, so that two servers cannot share one.
pub(super) fn new_id() -> crate::error::Result<String> {
    let mut b = [0u8; 8];
    crate::sys::random_bytes(&mut b).context("drawing the image cache's id")?;
    Ok(crate::hex::encode(&b))
}

/// Where a request stands in a chain of caches.
pub(super) struct Chain {
    /// This cache is in it already: a miss here would wait on itself.
    pub looped: bool,
    /// The header value for the requests this cache's fill makes: the chain plus its own id.
    pub onward: String,
}

/// The request's `Bty-Cache-Chain` as seen by the cache `id`; a 400 for a malformed one (it
/// comes from the network: only short hex ids, at most 16 of them).
pub(super) fn chain(req: &Req, id: &str) -> std::result::Result<Chain, Resp> {
    let ids: Vec<&str> = match req.header(&CHAIN_HEADER.to_ascii_lowercase()) {
        Some(v) => v.split(',').map(str::trim).collect(),
        None => Vec::new(),
    };
    let well_formed =
        |i: &&str| (1..=32).contains(&i.len()) && i.bytes().all(|b| b.is_ascii_hexdigit());
    if ids.len() > MAX_CHAIN || !ids.iter().all(well_formed) {
        return Err(Resp::error(
            400,
            &format!("{CHAIN_HEADER}: expected at most {MAX_CHAIN} comma-separated hex ids"),
        ));
    }
    let looped = ids.contains(&id);
    let mut onward: Vec<&str> = ids;
    onward.push(id);
    Ok(Chain { looped, onward: onward.join(",") })
}

/// The 508 for a miss that came back to the cache that asked: its upstreams form a loop.
pub(super) fn loop_detected(id: &str, hex: &str) -> Resp {
    Resp::error(
        508,
        &format!(
            "sha256 {hex} is not cached here, and this bty-web (cache id {id}) is already in the \
             chain of caches asking for it: the [cache] upstreams of these servers form a loop"
        ),
    )
}

/// The base URLs of `[cache] upstreams` (comma-separated), without trailing slashes: http(s)
/// only, with no credentials, query or fragment. A refusal never repeats credentials.
pub(crate) fn parse_upstreams(v: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, item) in v.split(',').map(str::trim).enumerate() {
        if item.is_empty() {
            continue;
        }
        let n = i + 1;
        let lower = item.to_ascii_lowercase();
        let Some(rest) = lower.strip_prefix("http://").or_else(|| lower.strip_prefix("https://"))
        else {
            return Err(format!("entry {n} {item:?}: expected an http:// or https:// URL"));
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(format!(
                "entry {n}: credentials (user:password@) are not allowed in an upstream URL"
            ));
        }
        if item.contains(['?', '#']) {
            return Err(format!("entry {n} {item:?}: a base URL has no query or fragment"));
        }
        let base = item.trim_end_matches('/');
        crate::source::http::Url::parse(base).map_err(|e| format!("entry {n}: {e}"))?;
        out.push(base.to_string());
    }
    Ok(out)
}

/// One place a fill may take the bytes from.
struct From {
    /// What a fetch opens: the upstream's /images URL, or the entry's own source.
    url: String,
    /// The upstream's base URL; None for the origin.
    upstream: Option<String>,
}

impl From {
    /// How messages name the source.
    fn label(&self) -> String {
        match &self.upstream {
            Some(base) => format!("upstream {base}"),
            None => format!("origin {}", self.url),
        }
    }
}

/// Why one source did not give the image.
struct Failed {
    err: Error,
    /// The source answered with other bytes than the pin (or another length than the
    /// catalog's), rather than failing to answer.
    lied: bool,
}

impl std::convert::From<Error> for Failed {
    fn from(err: Error) -> Failed {
        Failed { err, lied: false }
    }
}

fn lie(msg: String) -> Failed {
    Failed { err: Error::msg(msg), lied: true }
}

/// The sources of a fill, in the order they are tried.
fn sources(upstreams: &[String], hex: &str, entry: &CatalogEntry) -> Vec<From> {
    let mut v: Vec<From> = upstreams
        .iter()
        .map(|base| From {
            url: format!("{base}/images/{hex}/{}", url_name(&entry.name)),
            upstream: Some(base.clone()),
        })
        .collect();
    v.push(From { url: entry.src.clone(), upstream: None });
    v
}

/// Opens an entry's origin. An `oras://` reference that does not resolve (its tag, with the
/// origin registry down and only a pull-through mirror left, which resolves tags through it) is
/// fetched by the pinned layer digest instead, through the same mirrors.
fn open_origin(src: &str, hex: &str, size: Option<u64>) -> Result<crate::source::Source, Error> {
    let first = match crate::source::Source::open(src) {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    if !src.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("oras://")) {
        return Err(first);
    }
    crate::warn!("cache: {first}; fetching the pinned layer sha256:{hex} of {src} by its digest");
    crate::source::Source::open_oras_layer(src, hex, size)
        .map_err(|e| Error::msg(format!("{first}; by the pinned layer's digest: {e}")))
}

/// Ends a fill for the requests reading it.
pub(super) fn finish(fill: &Fill, result: std::result::Result<(), String>) {
    lock(&fill.state).done = Some(result);
    fill.cv.notify_all();
}

impl Cache {
    /// A fill of `hex` into a partial file of its own (`attempt` tells a source tried after a
    /// discarded copy from the first).
    pub(super) fn new_fill(&self, hex: &str, attempt: usize) -> Arc<Fill> {
        let pid = std::process::id();
        let name =
            if attempt == 0 { format!("{hex}.{pid}") } else { format!("{hex}.{pid}.{attempt}") };
        Arc::new(Fill {
            part: self.dir.join("partial").join(name),
            state: Mutex::default(),
            cv: Condvar::new(),
        })
    }

    /// Runs the fill `first` of `hex` to its end: tries each source in turn until one delivers
    /// the pinned bytes, then records where they came from (`cache.filled`) or everything that
    /// was tried (`cache.failed`).
    pub(super) fn run_fill(
        self: &Arc<Self>,
        app: &App,
        first: Arc<Fill>,
        hex: &str,
        entry: &CatalogEntry,
        chain: &str,
    ) {
        let t0 = Instant::now();
        let all = sources(&self.upstreams, hex, entry);
        let mut fill = first;
        let mut tried = Vec::new();
        let mut got = None;
        for (i, from) in all.iter().enumerate() {
            let failed = match self.fetch(&fill, hex, entry, from, chain) {
                Ok(len) => {
                    got = Some((len, from));
                    break;
                }
                Err(f) => f,
            };
            let part = fill.part.clone();
            let more = i + 1 < all.len();
            let what = format!("{}: {}", from.label(), failed.err);
            // An upstream is never last (the origin is), so a lie always has a next source.
            if let (true, Some(base)) = (failed.lied, &from.upstream) {
                let msg = format!(
                    "cache: the upstream {base} sent other bytes than pinned for {} ({}); trying \
                     the next source",
                    entry.name, failed.err
                );
                crate::warn!("{msg}");
                let details = serde_json::json!({ "sha256": hex, "upstream": base });
                app.db.event("cache.upstream_lied", None, &msg, Some(details));
            } else if more {
                crate::warn!("cache: caching {} from {what}; trying the next source", entry.name);
            }
            tried.push(what);
            if more && lock(&fill.state).started {
                // Requests already reading this copy cannot be given other bytes in its place:
                // they fail, and the next source fills a new file that later requests read.
                let next = self.new_fill(hex, i + 1);
                lock(&self.inner).fills.insert(hex.to_string(), Arc::clone(&next));
                finish(
                    &fill,
                    Err(format!(
                        "the copy from the {} was discarded ({}); request the image again",
                        from.label(),
                        failed.err
                    )),
                );
                fill = next;
            }
            // Only now: a request that took the old fill just before the swap still opens its
            // file, and then reads the failure instead of finding no file.
            if let Err(e) = fs::remove_file(&part) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    crate::warn!("cache: removing {}: {e}", part.display());
                }
            }
        }
        lock(&self.inner).fills.remove(hex);
        let secs = t0.elapsed().as_secs_f64();
        let result = match got {
            Some((len, from)) => {
                let msg = format!(
                    "cached {} ({}) from the {} in {secs:.1} s",
                    entry.name,
                    crate::units::bytes(len),
                    from.label()
                );
                crate::info!("{msg}");
                let details = serde_json::json!({ "sha256": hex, "from": from.url });
                app.db.event("cache.filled", None, &msg, Some(details));
                Ok(())
            }
            None => {
                let why = match tried.as_slice() {
                    [one] => one.clone(),
                    all => format!("every source failed: {}", all.join("; ")),
                };
                let msg = format!("caching {} failed: {why}", entry.name);
                crate::warn!("{msg}");
                app.db.event(
                    "cache.failed",
                    None,
                    &msg,
                    Some(serde_json::json!({ "sha256": hex })),
                );
                Err(why)
            }
        };
        finish(&fill, result);
    }

    /// Fetches the entry's bytes from one source into the fill's partial file, checks them
    /// against the pin and moves them into place; the length.
    fn fetch(
        &self,
        fill: &Fill,
        hex: &str,
        entry: &CatalogEntry,
        from: &From,
        chain: &str,
    ) -> std::result::Result<u64, Failed> {
        let what = from.url.as_str();
        let src = match from.upstream {
            Some(_) => crate::source::Source::open_once(what, &[(CHAIN_HEADER, chain)])?,
            None => open_origin(what, hex, size_of(entry))?,
        };
        if let Some(d) = src.digest() {
            let d = crate::hex::encode(&d);
            if d != hex {
                return Err(lie(format!(
                    "{what} now resolves to a layer with sha256 {d}, but the catalog pins {hex}"
                )));
            }
        }
        if let (Some(got), Some(want)) = (src.size(), size_of(entry)) {
            if got != want {
                return Err(lie(format!(
                    "{what} announces {got} bytes, but the catalog says the image has {want}"
                )));
            }
        }
        let total = src.size().or(size_of(entry));
        if let Some(n) = total.filter(|n| *n > self.max_bytes) {
            return Err(Error::msg(format!(
                "{what} has {}, more than the cache cap of {} ([cache] max_gib)",
                crate::units::bytes(n),
                crate::units::bytes(self.max_bytes)
            ))
            .into());
        }
        for (h, len) in self.make_room(total.unwrap_or(0))? {
            crate::info!("cache: evicted {h} ({}) to make room", crate::units::bytes(len));
        }
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&fill.part)
            .with_context(|| format!("creating {}", fill.part.display()))?;
        {
            let mut s = lock(&fill.state);
            s.started = true;
            s.total = total;
        }
        fill.cv.notify_all();
        let mut reader = src.reader()?;
        let mut overrun = false;
        let copied = copy_hashing(&mut reader, what, Some((&mut out, &fill.part)), |written| {
            overrun = total.is_some_and(|t| written > t) || written > self.max_bytes;
            crate::ensure!(
                !overrun,
                "{what} sends more than the {} it announced",
                crate::units::bytes(total.unwrap_or(self.max_bytes))
            );
            lock(&fill.state).written = written;
            fill.cv.notify_all();
            Ok(())
        });
        let (got, written) = match copied {
            Ok(c) => c,
            Err(e) if overrun => return Err(Failed { err: e, lied: true }),
            Err(e) => return Err(e.into()),
        };
        if let Some(t) = total.filter(|t| *t != written) {
            return Err(Error::msg(format!("{what} ended after {written} of {t} bytes")).into());
        }
        if got != hex {
            return Err(lie(format!(
                "{what} sent bytes with sha256 {got}, but the catalog pins {hex}"
            )));
        }
        out.sync_all().with_context(|| format!("syncing {}", fill.part.display()))?;
        let dest = self.file(hex);
        fs::rename(&fill.part, &dest)
            .with_context(|| format!("moving {} into place", fill.part.display()))?;
        if let Err(e) = fs::File::open(self.dir.join("sha256")).and_then(|d| d.sync_all()) {
            crate::warn!("syncing {}: {e}", self.dir.join("sha256").display());
        }
        let meta = out.metadata().with_context(|| format!("reading {}", dest.display()))?;
        lock(&self.inner).verified.insert(
            hex.to_string(),
            (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
        );
        // A fetch of unknown size reserved nothing: enforce the cap now that it is known.
        if total.is_none() {
            if let Err(e) = self.make_room(0) {
                crate::warn!("cache: {e}");
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_of_caches_is_extended_and_a_loop_is_seen() {
        let req = |v: Option<&str>| Req {
            headers: v
                .map(|v| vec![("bty-cache-chain".to_string(), v.to_string())])
                .unwrap_or_default(),
            ..Req::default()
        };
        let c = chain(&req(None), "aa").map_err(|r| r.status).unwrap();
        assert!(!c.looped);
        assert_eq!(c.onward, "aa");
        let c = chain(&req(Some("01, 02")), "aa").map_err(|r| r.status).unwrap();
        assert!(!c.looped);
        assert_eq!(c.onward, "01,02,aa");
        assert!(chain(&req(Some("01,aa")), "aa").map_err(|r| r.status).unwrap().looped);
        for bad in ["", "x1", "01,,02", "<script>", &"0,".repeat(17)] {
            assert_eq!(chain(&req(Some(bad)), "aa").err().map(|r| r.status), Some(400), "{bad}");
        }
        assert_eq!(loop_detected("aa", "00").status, 508);
        assert_ne!(new_id().unwrap(), new_id().unwrap());
    }

    #[test]
    fn upstreams_are_http_base_urls_without_credentials() {
        let v = parse_upstreams(" http://central:8080/ , https://c2.lab/bty,").unwrap();
        assert_eq!(v, ["http://central:8080", "https://c2.lab/bty"]);
        assert_eq!(parse_upstreams("").unwrap(), Vec::<String>::new());
        let e = parse_upstreams("http://a, ftp://b").unwrap_err();
        assert!(e.contains("entry 2 \"ftp://b\": expected an http:// or https:// URL"), "{e}");
        let e = parse_upstreams("https://bty:hunter2@central/").unwrap_err();
        assert!(e.contains("credentials") && !e.contains("hunter2"), "{e}");
        assert!(parse_upstreams("http://a/?x=1").unwrap_err().contains("no query"));
        assert!(parse_upstreams("http://a b/").is_err());
    }

    #[test]
    fn upstreams_are_tried_before_the_origin_with_the_name_escaped() {
        let entry = CatalogEntry {
            bty_image_ref: "deb".into(),
            src: "oras://reg.lab/os/deb:12".into(),
            disk_image_sha: None,
            name: "deb 12.img.zst".into(),
            format: "img.zst".into(),
            size_bytes: None,
            sha_url: None,
            description: None,
            added_at: String::new(),
        };
        let h = "a".repeat(64);
        let v = sources(&["http://c:1".into(), "https://d".into()], &h, &entry);
        let urls: Vec<&str> = v.iter().map(|f| f.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                format!("http://c:1/images/{h}/deb%2012.img.zst").as_str(),
                &format!("https://d/images/{h}/deb%2012.img.zst"),
                "oras://reg.lab/os/deb:12"
            ]
        );
        assert_eq!(v[0].label(), "upstream http://c:1");
        assert_eq!(v[2].label(), "origin oras://reg.lab/os/deb:12");
    }
}
