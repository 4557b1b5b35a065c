//! The image cache of bty-web (`[cache] dir`): a real bty-web on 127.0.0.1 in front of a real
//! origin (our test http server, Debian's docker-registry), flashed with the real `bty` onto
//! loop devices.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util;
use crate::util::Server;
use crate::util::httpd::{Fault, Httpd};

/// (status, lower-cased head, body bytes) of one request with extra header lines; a body cut
/// short by the server is returned as far as it came.
pub(crate) fn get(addr: &str, method: &str, path: &str, headers: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head, out[end + 4..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

/// Imports a catalog of (name, src, sha256, size) entries through the API.
pub(crate) fn import(s: &Server, entries: &[(&str, &str, &str, usize)]) {
    let mut toml = String::from("version = 1\n");
    for (name, src, sha, size) in entries {
        let format = if name.ends_with(".zst") { "img.zst" } else { "img" };
        toml.push_str(&format!(
            "\n[[images]]\nname = \"{name}\"\nsrc = \"{src}\"\nsha256 = \"{sha}\"\nformat = \"{format}\"\nsize_bytes = {size}\n"
        ));
    }
    // bty-web imports only from URLs: serve the catalog for the one request.
    let web = Httpd::start();
    web.file("/catalog.toml", toml.into_bytes(), false, None);
    let url = web.url("/catalog.toml").replace(':', "%3A").replace('/', "%2F");
    let c = s.login();
    let (st, _, body) = s.call("POST", &format!("/catalog/import?source={url}"), Some(&c), "");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errors"], serde_json::json!([]), "{body}");
}

fn images(s: &Server) -> Vec<serde_json::Value> {
    let (st, _, body) = s.call("GET", "/images", None, "");
    assert_eq!(st, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub(crate) fn events(s: &Server, kind: &str) -> Vec<String> {
    let c = s.login();
    let (st, _, body) = s.call("GET", "/events?limit=500", Some(&c), "");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = v.as_array().cloned().or_else(|| v["events"].as_array().cloned()).unwrap();
    list.iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect()
}

/// How many times the origin was asked for the whole file (a resumed download adds ranged
/// requests, not whole ones).
pub(crate) fn whole_fetches(origin: &Httpd, path: &str) -> usize {
    origin.seen().iter().filter(|s| s.path == path && s.range.is_none()).count()
}

pub(crate) fn cache_files(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(cache.join("sha256"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

pub(crate) fn partials(cache: &Path) -> usize {
    std::fs::read_dir(cache.join("partial")).map(|rd| rd.count()).unwrap_or(0)
}

pub(crate) fn start(name: &str, cache: &Path, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![("BTY_CACHE_DIR", cache.to_str().unwrap())];
    env.extend_from_slice(extra);
    Server::start_env(name, &env)
}

#[test]
fn two_flashes_pull_from_the_origin_once_and_a_cut_origin_still_serves() {
    let dir = util::TestDir::new("cache-once");
    let raw = util::disk_image(7, 8 << 20);
    let image = util::zstd(&raw);
    let sha = util::sha256(&image);
    let origin = Httpd::start();
    origin.file("/img/debian.img.zst", image.clone(), true, Some("\"v1\""));
    // The first answer stalls after 256 KiB and is then cut: both clients below arrive while
    // the one fetch is in flight, and it resumes with a Range request.
    origin.faults("/img/debian.img.zst", vec![Fault::Stall(256 << 10, Duration::from_secs(2))]);
    let cache = dir.path("cache");
    let s = start("cache-once", &cache, &[]);
    import(&s, &[("debian.img.zst", &origin.url("/img/debian.img.zst"), &sha, image.len())]);

    let url = format!("http://{}/images/{sha}/debian.img.zst", s.addr);
    let listed = images(&s);
    assert_eq!(listed[0]["url"], url, "a cacheable entry is handed out through the cache");
    assert_eq!(listed[0]["cached"], false);

    let path = format!("/images/{sha}/debian.img.zst");
    let (st, head, _) = get(&s.addr, "HEAD", &path, "");
    assert_eq!(st, 200, "{head}");
    assert_eq!(header(&head, "content-length"), Some(image.len().to_string().as_str()));
    assert!(origin.seen().is_empty(), "a HEAD starts no download");
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let (addr, path) = (s.addr.clone(), path.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300 * i));
                get(&addr, "GET", &path, "")
            })
        })
        .collect();
    for c in clients {
        let (st, head, body) = c.join().unwrap();
        assert_eq!(st, 200, "{head}");
        assert_eq!(header(&head, "content-length"), Some(image.len().to_string().as_str()));
        assert!(body == image, "a client got {} bytes that differ from the image", body.len());
    }
    assert_eq!(whole_fetches(&origin, "/img/debian.img.zst"), 1, "{:?}", origin.seen());
    assert_eq!(cache_files(&cache), vec![sha.clone()]);
    assert_eq!(partials(&cache), 0);
    assert_eq!(images(&s)[0]["cached"], true);
    assert_eq!(events(&s, "cache.filled").len(), 1);

    // The plan of a machine bound to the image hands out the cache URL.
    let c = s.login();
    let r#ref = listed[0]["ref"].as_str().unwrap();
    let (st, _, body) = s.call(
        "PUT",
        "/machines/52:54:00:00:00:01",
        Some(&c),
        &format!(
            r#"{{"boot_mode":"bty-flash-always","bty_image_ref":"{ref}","target_disk_serial":"S1"}}"#
        ),
    );
    assert!(st == 200 || st == 201, "{body}");
    let (st, _, body) = s.call("GET", "/pxe/52:54:00:00:00:01/plan", None, "");
    assert_eq!(st, 200, "{body}");
    let plan: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(plan["mode"], "flash", "{body}");
    assert_eq!(plan["image"], url, "{body}");
    assert_eq!(plan["disk_image_sha"], sha.as_str());

    // The wizard's catalog (the interactive plan's) points at the cache too; the plain one, which
    // other servers import, keeps the origin.
    let (_, _, toml) = s.call("GET", "/catalog.toml?via=cache", None, "");
    assert!(toml.contains(&format!("src = \"{url}\"")) && toml.contains(&sha), "{toml}");
    let (st, _, body) =
        s.call("PUT", "/machines/52:54:00:00:00:02", Some(&c), r#"{"boot_mode":"bty-tui"}"#);
    assert!(st == 200 || st == 201, "{body}");
    let (_, _, body) = s.call("GET", "/pxe/52:54:00:00:00:02/plan", None, "");
    let plan: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(plan["mode"], "interactive", "{body}");
    assert!(plan["catalog"].as_str().unwrap().ends_with("/catalog.toml?via=cache"), "{body}");
    let (_, _, toml) = s.call("GET", "/catalog.toml", None, "");
    assert!(toml.contains("/img/debian.img.zst") && !toml.contains("/images/"), "{toml}");

    // Two flashes by the real bty through the cache: the origin is not asked again.
    for n in 0..2 {
        let target = util::Loop::new(&dir, &format!("disk{n}"), 12 << 20);
        let o = util::flash(Path::new(&url), &target.dev, &["--sha256", &sha]);
        assert!(o.status.success(), "flash {n}: {}", util::stderr(&o));
        assert!(target.read(0, raw.len()) == raw, "flash {n} wrote other bytes");
    }
    assert_eq!(whole_fetches(&origin, "/img/debian.img.zst"), 1);

    // The origin goes away: the cache still serves, whole and by ranges.
    drop(origin);
    let (st, _, body) = get(&s.addr, "GET", &path, "");
    assert_eq!(st, 200);
    assert!(body == image);
    let (st, head, body) = get(&s.addr, "GET", &path, "Range: bytes=100-199\r\n");
    assert_eq!(st, 206, "{head}");
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes 100-199/{}", image.len()).as_str())
    );
    assert_eq!(body, &image[100..200]);
    let (st, _, body) = get(&s.addr, "GET", &path, "Range: bytes=-10\r\n");
    assert_eq!(st, 206);
    assert_eq!(body, &image[image.len() - 10..]);
    let etag = format!("\"{sha}\"");
    let (st, _, body) =
        get(&s.addr, "GET", &path, &format!("Range: bytes=5-\r\nIf-Range: {etag}\r\n"));
    assert_eq!((st, body.as_slice()), (206, &image[5..]));
    let (st, _, body) = get(&s.addr, "GET", &path, "Range: bytes=5-\r\nIf-Range: \"old\"\r\n");
    assert_eq!(st, 200, "a stale If-Range gets the whole file");
    assert!(body == image);
    let (st, head, _) = get(&s.addr, "GET", &path, &format!("Range: bytes={}-\r\n", image.len()));
    assert_eq!(st, 416);
    assert_eq!(header(&head, "content-range"), Some(format!("bytes */{}", image.len()).as_str()));
    let (st, head, body) = get(&s.addr, "HEAD", &path, "");
    assert_eq!(st, 200);
    assert_eq!(header(&head, "content-length"), Some(image.len().to_string().as_str()));
    assert!(body.is_empty());

    // Hostile or unknown names.
    for bad in ["../../etc/passwd/x", "<script>/x", &"A".repeat(64)] {
        let (st, _, body) = get(&s.addr, "GET", &format!("/images/{bad}"), "");
        assert!(st == 400 || st == 404, "{bad}: {st} {}", String::from_utf8_lossy(&body));
    }
    let (st, _, body) = get(&s.addr, "GET", &format!("/images/{}/x.img", "0".repeat(64)), "");
    assert_eq!(st, 404);
    assert!(String::from_utf8_lossy(&body).contains("no catalog entry is pinned"));
}

#[test]
fn a_corrupted_cache_file_is_detected_by_its_digest_and_fetched_again() {
    use std::os::unix::fs::FileExt;
    let dir = util::TestDir::new("cache-corrupt");
    let image = util::prng_bytes(11, 3 << 20);
    let sha = util::sha256(&image);
    let origin = Httpd::start();
    origin.file("/a.img", image.clone(), true, None);
    let cache = dir.path("cache");
    let s = start("cache-corrupt", &cache, &[]);
    import(&s, &[("a.img", &origin.url("/a.img"), &sha, image.len())]);
    let path = format!("/images/{sha}/a.img");
    assert!(get(&s.addr, "GET", &path, "").2 == image);
    assert_eq!(whole_fetches(&origin, "/a.img"), 1);

    // A byte flipped in place (the file's mtime moves): hashed again, found bad, refetched.
    let file = cache.join("sha256").join(&sha);
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(&[image[1000] ^ 0xff], 1000).unwrap();
    drop(f);
    let (st, _, body) = get(&s.addr, "GET", &path, "");
    assert_eq!(st, 200);
    assert!(body == image, "the corrupt copy was served");
    assert_eq!(whole_fetches(&origin, "/a.img"), 2);
    assert_eq!(events(&s, "cache.corrupt").len(), 1);

    // Bit rot that keeps the mtime is caught at the first use after a restart.
    let state = s.state.clone();
    s.stop_keeping_state();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    f.write_all_at(&[image[2000] ^ 1], 2000).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let s = Server::start_in_env(state, &[("BTY_CACHE_DIR", cache.to_str().unwrap())]);
    assert!(get(&s.addr, "GET", &path, "").2 == image);
    assert_eq!(whole_fetches(&origin, "/a.img"), 3);

    // A truncated file is caught by its length.
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(100).unwrap();
    assert!(get(&s.addr, "GET", &path, "").2 == image);
    assert_eq!(whole_fetches(&origin, "/a.img"), 4);
    let corrupt = events(&s, "cache.corrupt");
    assert_eq!(corrupt.len(), 3, "{corrupt:?}");
    assert!(corrupt.iter().any(|m| m.contains("bytes, the catalog says")), "{corrupt:?}");
}

#[test]
fn an_origin_that_sends_other_bytes_leaves_nothing_and_says_why() {
    let dir = util::TestDir::new("cache-bad");
    let image = util::prng_bytes(12, 2 << 20);
    let pinned = util::sha256(b"something else");
    let origin = Httpd::start();
    origin.file("/b.img", image.clone(), true, None);
    let cache = dir.path("cache");
    let s = start("cache-bad", &cache, &[]);
    import(
        &s,
        &[
            ("b.img", &origin.url("/b.img"), &pinned, image.len()),
            ("gone.img", &origin.url("/gone.img"), &"e".repeat(64), 10),
        ],
    );
    // The client never receives a whole body: the last byte waits for the digest.
    let (st, head, body) = get(&s.addr, "GET", &format!("/images/{pinned}/b.img"), "");
    assert!(
        st == 502 || (st == 200 && body.len() < image.len()),
        "{st} {head} with {} bytes",
        body.len()
    );
    assert!(cache_files(&cache).is_empty());
    assert_eq!(partials(&cache), 0);
    let failed = events(&s, "cache.failed");
    assert!(failed.iter().any(|m| m.contains("but the catalog pins")), "{failed:?}");

    let (st, _, body) = get(&s.addr, "GET", &format!("/images/{}/gone.img", "e".repeat(64)), "");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(st, 502, "{body}");
    assert!(body.contains("/gone.img") && body.contains("404"), "{body}");
    assert_eq!(partials(&cache), 0);
}

#[test]
fn a_full_cache_disk_fails_the_fetch_with_the_reason_and_keeps_nothing() {
    let dir = util::TestDir::new("cache-full");
    let cache = dir.path("cache");
    let _tmpfs = util::Tmpfs::mount(cache.clone(), "2m");
    let big = util::prng_bytes(40, 3 << 20);
    let small = util::prng_bytes(41, 256 << 10);
    let (big_sha, small_sha) = (util::sha256(&big), util::sha256(&small));
    let origin = Httpd::start();
    origin.file("/big.img", big.clone(), true, None);
    origin.file("/small.img", small.clone(), true, None);
    let s = start("cache-full", &cache, &[]);
    import(
        &s,
        &[
            ("big.img", &origin.url("/big.img"), &big_sha, big.len()),
            ("small.img", &origin.url("/small.img"), &small_sha, small.len()),
        ],
    );
    let (st, _, body) = get(&s.addr, "GET", &format!("/images/{big_sha}/big.img"), "");
    assert!(st == 502 || body.len() < big.len(), "{st}: {} bytes", body.len());
    assert!(cache_files(&cache).is_empty());
    assert_eq!(partials(&cache), 0, "the partial file is removed");
    let failed = events(&s, "cache.failed");
    assert!(failed.iter().any(|m| m.contains("No space left")), "{failed:?}");
    // The cache still works for what fits.
    let (st, _, body) = get(&s.addr, "GET", &format!("/images/{small_sha}/small.img"), "");
    assert_eq!(st, 200);
    assert!(body == small);
}

/// `bty-web cache add FILE` into the cache dir `cache` of the state dir `state`, as an operator
/// pre-seeds an air-gapped lab; asserts it succeeded.
pub(crate) fn cache_add(file: &Path, state: &Path, cache: &Path) -> std::process::Output {
    let add = std::process::Command::new(env!("CARGO_BIN_EXE_bty-web"))
        .args(["cache", "add"])
        .arg(file)
        .arg("--state-dir")
        .arg(state)
        .env("BTY_CACHE_DIR", cache)
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    add
}

#[test]
fn an_air_gapped_lab_flashes_from_a_pre_seeded_cache() {
    let dir = util::TestDir::new("cache-airgap");
    let raw = util::disk_image(13, 4 << 20);
    let image = util::zstd(&raw);
    let sha = util::sha256(&image);
    let file = dir.path("debian.img.zst");
    std::fs::write(&file, &image).unwrap();
    let cache = dir.path("cache");
    let state = dir.path("state");
    let add = cache_add(&file, &state, &cache);
    let out = String::from_utf8_lossy(&add.stdout);
    assert!(out.starts_with(&sha), "{out}");
    let ls = std::process::Command::new(env!("CARGO_BIN_EXE_bty-web"))
        .args(["cache", "ls"])
        .env("BTY_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success() && out.contains(&sha) && out.contains("1 images"), "{out}");

    // The origin is unreachable (nothing listens on the discard port).
    let s = Server::start_in_env(state, &[("BTY_CACHE_DIR", cache.to_str().unwrap())]);
    import(&s, &[("debian.img.zst", "http://127.0.0.1:9/debian.img.zst", &sha, image.len())]);
    let listed = images(&s);
    assert_eq!(listed[0]["cached"], true);
    let url = listed[0]["url"].as_str().unwrap().to_string();
    assert!(url.contains(&format!("/images/{sha}/")), "{url}");
    let target = util::Loop::new(&dir, "disk", 8 << 20);
    let o = util::flash(Path::new(&url), &target.dev, &["--sha256", &sha]);
    assert!(o.status.success(), "{}", util::stderr(&o));
    assert!(target.read(0, raw.len()) == raw);
}

#[test]
fn the_cap_evicts_the_least_recently_used_image() {
    let dir = util::TestDir::new("cache-lru");
    let origin = Httpd::start();
    let mut entries = Vec::new();
    let mut shas = Vec::new();
    for (i, name) in ["a.img", "b.img", "c.img", "big.img"].iter().enumerate() {
        let len = if *name == "big.img" { 6 << 20 } else { 2 << 20 };
        let body = util::prng_bytes(20 + i as u64, len);
        shas.push(util::sha256(&body));
        origin.file(&format!("/{name}"), body, true, None);
        entries.push((name.to_string(), origin.url(&format!("/{name}")), len));
    }
    let cache = dir.path("cache");
    // 0.005 GiB: room for two of the 2 MiB images, not three, and never the 6 MiB one.
    let s = start("cache-lru", &cache, &[("BTY_CACHE_MAX_GIB", "0.005")]);
    let list: Vec<(&str, &str, &str, usize)> = entries
        .iter()
        .zip(&shas)
        .map(|((n, u, l), sha)| (n.as_str(), u.as_str(), sha.as_str(), *l))
        .collect();
    import(&s, &list);
    let fetch = |i: usize| {
        let (st, _, body) =
            get(&s.addr, "GET", &format!("/images/{}/{}", shas[i], entries[i].0), "");
        assert_eq!(st, 200);
        assert_eq!(body.len(), entries[i].2);
    };
    fetch(0);
    std::thread::sleep(Duration::from_millis(20));
    fetch(1);
    std::thread::sleep(Duration::from_millis(20));
    fetch(0); // a is now the most recently used
    std::thread::sleep(Duration::from_millis(20));
    fetch(2);
    let mut want = vec![shas[0].clone(), shas[2].clone()];
    want.sort();
    assert_eq!(cache_files(&cache), want, "b, the least recently used, was evicted");

    // Larger than the cap: handed out from its origin, and the cache route says why.
    let listed = images(&s);
    let big = listed.iter().find(|e| e["name"] == "big.img").unwrap();
    assert_eq!(big["url"], entries[3].1);
    let (st, _, body) = get(&s.addr, "GET", &format!("/images/{}/big.img", shas[3]), "");
    assert_eq!(st, 409, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn an_oras_image_is_cached_by_its_layer_digest() {
    use util::registry::{Options, Registry};
    let dir = util::TestDir::new("cache-oras");
    let reg = Registry::start(&dir, Options { tls: true, token: true, redirect_to: None });
    let image = util::zstd(&util::disk_image(31, 2 << 20));
    reg.push_artifact("lab/debian", "v1", &[("disk.img.zst", &image)]);
    let cache: PathBuf = dir.path("cache");
    let mut env: Vec<(String, String)> = reg.env();
    env.push(("BTY_CACHE_DIR".into(), cache.display().to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s = Server::start_env("cache-oras", &env);
    let c = s.login();
    let (st, _, body) = s.call(
        "POST",
        "/catalog/entries",
        Some(&c),
        &format!(r#"{{"image_url":"oras://{}/lab/debian:v1"}}"#, reg.addr),
    );
    assert_eq!(st, 201, "{body}");
    let sha = util::sha256(&image);
    let url = images(&s)[0]["url"].as_str().unwrap().to_string();
    assert!(url.ends_with(&format!("/images/{sha}/disk.img.zst")), "{url}");
    let (st, _, body) = get(&s.addr, "GET", &format!("/images/{sha}/disk.img.zst"), "");
    assert_eq!(st, 200);
    assert!(body == image);
    assert_eq!(cache_files(&cache), vec![sha]);
}
