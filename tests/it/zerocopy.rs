//! Files sent with sendfile(2): `/boot/{name}` and a cached `/images/{sha256}/{name}` from a real
//! bty-web on 127.0.0.1, whole, by Range and If-Range, as HEAD and on one keep-alive connection,
//! byte for byte; and a client that stops reading mid-file, which must hold no one else up and
//! be dropped by the write timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::util;
use crate::util::Server;

/// One answer: status, lower-cased head, body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")))
    }
}

/// A keep-alive connection to bty-web.
struct Conn(BufReader<TcpStream>);

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn(BufReader::new(s))
    }

    /// Sends one request and reads its answer: the head, then exactly Content-Length bytes
    /// (none for HEAD), so the next answer on the connection must start right after.
    fn ask(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.0.get_mut().write_all(req.as_bytes()).unwrap();
        let mut head = String::new();
        for _ in 0..64 {
            let mut line = String::new();
            self.0.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        assert!(head.starts_with("http/1.1 "), "a status line first, got {head:?}");
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut a = Answer { status, head, body: Vec::new() };
        // A 304 has no body and, from us, no Content-Length.
        let len: usize = match status {
            304 => 0,
            _ => a.header("content-length").and_then(|v| v.trim().parse().ok()).unwrap(),
        };
        if method != "HEAD" {
            a.body = vec![0; len];
            self.0.read_exact(&mut a.body).unwrap();
        }
        a
    }
}

/// Every way of asking for the file at `path`, whose bytes are `data`, on one keep-alive
/// connection; returns its ETag.
fn served_byte_exact(addr: &str, path: &str, data: &[u8]) -> String {
    let len = data.len();
    let mut c = Conn::open(addr);
    // Whole, twice on one connection: the head goes through a buffer and the body around it.
    let mut etag = String::new();
    for _ in 0..2 {
        let a = c.ask("GET", path, &[]);
        assert_eq!(a.status, 200, "{}", a.head);
        assert!(a.body == data, "GET {path}: the body differs from the file");
        assert_eq!(a.header("accept-ranges"), Some("bytes"));
        etag = a.header("etag").expect("an etag").trim().to_string();
    }
    // HEAD: the length of the body, and no body (the next answer parses).
    let a = c.ask("HEAD", path, &[]);
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(a.header("content-length"), Some(len.to_string().as_str()));
    // First, middle, last, suffix, open-ended, and across 4 KiB and 64 KiB boundaries.
    let ranges = [
        (0, 0),
        (0, 4095),
        (4095, 4096),
        (65_535, 131_073),
        (len / 2 - 777, len / 2 + 12_345),
        (len - 1, len - 1),
    ];
    for (first, last) in ranges {
        let a = c.ask("GET", path, &[("Range", &format!("bytes={first}-{last}"))]);
        assert_eq!(a.status, 206, "{first}-{last}: {}", a.head);
        assert_eq!(a.header("content-range"), Some(format!("bytes {first}-{last}/{len}").as_str()));
        assert!(a.body == data[first..=last], "bytes {first}-{last} differ");
    }
    for (spec, first) in [("-1", len - 1), ("-5000", len - 5000), ("-4097", len - 4097)] {
        let a = c.ask("GET", path, &[("Range", &format!("bytes={spec}"))]);
        assert_eq!(a.status, 206, "{spec}: {}", a.head);
        assert!(a.body == data[first..], "suffix {spec} differs");
    }
    let a = c.ask("GET", path, &[("Range", &format!("bytes={}-", len - 12_289))]);
    assert_eq!(a.status, 206, "{}", a.head);
    assert!(a.body == data[len - 12_289..], "the open-ended range differs");
    // A range past the end is asked with a last byte beyond it: clamped to the file.
    let a = c.ask("GET", path, &[("Range", &format!("bytes={}-{}", len - 10, len + 100))]);
    assert_eq!(a.status, 206, "{}", a.head);
    assert!(a.body == data[len - 10..]);
    // HEAD of a range: its headers, no body.
    let a = c.ask("HEAD", path, &[("Range", "bytes=100-199")]);
    assert_eq!(a.status, 206, "{}", a.head);
    assert_eq!(a.header("content-length"), Some("100"));
    // If-Range: the range for the same version, the whole file for another.
    let a = c.ask("GET", path, &[("Range", "bytes=10-19"), ("If-Range", &etag)]);
    assert_eq!(a.status, 206, "{}", a.head);
    assert!(a.body == data[10..20]);
    let a = c.ask("GET", path, &[("Range", "bytes=10-19"), ("If-Range", "\"stale\"")]);
    assert_eq!(a.status, 200, "{}", a.head);
    assert!(a.body == data, "a stale If-Range gets the whole file");
    // If-None-Match: 304 and no body for the copy the client has, the file for another.
    let a = c.ask("GET", path, &[("If-None-Match", &format!("\"other\", {etag}"))]);
    assert_eq!(a.status, 304, "{}", a.head);
    assert_eq!(a.header("etag"), Some(etag.as_str()));
    let a = c.ask("GET", path, &[("If-None-Match", "\"other\"")]);
    assert_eq!(a.status, 200, "{}", a.head);
    assert!(a.body == data, "another version gets the whole file");
    // Unsatisfiable: 416 with the length, and the connection still serves.
    let a = c.ask("GET", path, &[("Range", &format!("bytes={len}-"))]);
    assert_eq!(a.status, 416, "{}", a.head);
    assert_eq!(a.header("content-range"), Some(format!("bytes */{len}").as_str()));
    let a = c.ask("GET", path, &[("Range", "bytes=0-9")]);
    assert_eq!(a.status, 206, "{}", a.head);
    assert!(a.body == data[..10]);
    etag
}

#[test]
fn boot_files_go_out_whole_and_by_range_byte_exact() {
    let dir = util::TestDir::new("zerocopy-boot");
    let boot = dir.path("boot");
    std::fs::create_dir_all(&boot).unwrap();
    // Several MiB, not a multiple of the page size.
    let data = util::prng_bytes(41, (5 << 20) + 1234);
    std::fs::write(boot.join("vmlinuz"), &data).unwrap();
    let s = Server::start_env("zerocopy-boot", &[("BTY_PATHS_BOOT_DIR", boot.to_str().unwrap())]);
    let etag = served_byte_exact(&s.addr, "/boot/vmlinuz", &data);
    let a = Conn::open(&s.addr).ask("HEAD", "/boot/vmlinuz", &[]);
    assert_eq!(a.header("cache-control"), Some("no-cache"), "a boot file may be uploaded again");

    // A new file renamed into place is another version: a resume with the old ETag gets the
    // whole new file, not a range of it.
    let newer = util::prng_bytes(42, (3 << 20) + 77);
    std::fs::write(boot.join(".vmlinuz.new"), &newer).unwrap();
    std::fs::rename(boot.join(".vmlinuz.new"), boot.join("vmlinuz")).unwrap();
    let mut c = Conn::open(&s.addr);
    let a = c.ask("GET", "/boot/vmlinuz", &[("Range", "bytes=100-"), ("If-Range", &etag)]);
    assert_eq!(a.status, 200, "{}", a.head);
    assert_ne!(a.header("etag"), Some(etag.as_str()));
    assert!(a.body == newer, "the whole new file");
}

#[test]
fn cached_images_go_out_whole_and_by_range_byte_exact() {
    let dir = util::TestDir::new("zerocopy-image");
    let data = util::prng_bytes(43, (6 << 20) + 4097);
    let sha = util::sha256(&data);
    let file = dir.path("disk.img");
    std::fs::write(&file, &data).unwrap();
    let cache = dir.path("cache");
    let state = dir.path("state");
    crate::cache::cache_add(&file, &state, &cache);
    // The origin is unreachable: every byte must come from the cache file.
    let s = Server::start_in_env(state, &[("BTY_CACHE_DIR", cache.to_str().unwrap())]);
    crate::cache::import(&s, &[("disk.img", "http://127.0.0.1:9/disk.img", &sha, data.len())]);
    let etag = served_byte_exact(&s.addr, &format!("/images/{sha}/disk.img"), &data);
    assert_eq!(etag, format!("\"{sha}\""));
    // Content-addressed, so HTTP caches in front may keep it for good.
    let a = Conn::open(&s.addr).ask("HEAD", &format!("/images/{sha}/disk.img"), &[]);
    assert_eq!(a.header("cache-control"), Some("public, max-age=31536000, immutable"));
}

/// The nice value of each thread of process `pid` (field 19 of /proc/PID/task/TID/stat).
fn thread_nices(pid: u32) -> Vec<i64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter_map(|stat| {
            let (_, rest) = stat.rsplit_once(") ")?;
            rest.split_whitespace().nth(16)?.parse().ok()
        })
        .collect()
}

/// Whether the server's end of the connection from local port `client` to port `server` has
/// left ESTABLISHED (closed by the server), from /proc/net/tcp.
fn server_closed(server: u16, client: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |a: &str| a.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    let ours = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && port(f[1]) == Some(server) && port(f[2]) == Some(client)).then(|| f[3])
    });
    // Gone from the table altogether, or in any state but ESTABLISHED (01).
    ours != Some("01")
}

#[test]
fn a_client_that_stops_reading_holds_no_one_else_and_is_dropped() {
    let dir = util::TestDir::new("zerocopy-stall");
    let boot = dir.path("boot");
    std::fs::create_dir_all(&boot).unwrap();
    // Larger than what the socket buffers of both ends hold, so the sender must wait.
    let data = util::prng_bytes(44, (64 << 20) + 3);
    std::fs::write(boot.join("big.img"), &data).unwrap();
    let s = Server::start_env(
        "zerocopy-stall",
        &[("BTY_PATHS_BOOT_DIR", boot.to_str().unwrap()), ("BTY_SERVER_IO_TIMEOUT", "2")],
    );
    let mut stalled = TcpStream::connect(&s.addr).unwrap();
    stalled.write_all(b"GET /boot/big.img HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();

    // Meanwhile, others get the whole file and the server answers.
    let others: Vec<_> = (0..4)
        .map(|_| {
            let addr = s.addr.clone();
            std::thread::spawn(move || Conn::open(&addr).ask("GET", "/boot/big.img", &[]))
        })
        .collect();
    for t in others {
        let a = t.join().unwrap();
        assert_eq!(a.status, 200, "{}", a.head);
        assert!(a.body == data, "another client's copy differs from the file");
    }
    assert_eq!(s.call("GET", "/healthz", None, "").0, 200);
    // The thread still sending to the stalled client is a bulk one, at nice 10, so that small
    // requests go first on busy cores; the threads that answer them stay at 0.
    let nices = thread_nices(s.child.id());
    assert!(nices.contains(&10), "no thread of bty-web runs at nice 10: {nices:?}");
    assert!(nices.contains(&0), "{nices:?}");

    // The write timeout drops the one that stopped reading.
    let server = stalled.peer_addr().unwrap().port();
    let client = stalled.local_addr().unwrap().port();
    let mut closed = false;
    for _ in 0..600 {
        if server_closed(server, client) {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(closed, "the server still holds the connection that stopped reading");
    // What it had queued arrives, then the end: well short of the whole file.
    stalled.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let _ = stalled.read_to_end(&mut got);
    let body = got.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| got.len() - p - 4);
    let start = String::from_utf8_lossy(&got[..got.len().min(64)]).into_owned();
    assert!(got.starts_with(b"HTTP/1.1 200"), "{start:?}");
    assert!(body < data.len(), "the stalled client got the whole file after all");
    assert!(data.starts_with(&got[got.len() - body..]), "what did come is the file's start");
}
