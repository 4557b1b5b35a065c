//! The fleet view at scale through the real bty-web on 127.0.0.1: the delta feed of
//! `/events/machines?since=V` (only the changed rows, increasing versions, removals, replays
//! from Last-Event-ID, resets for versions it cannot bring up to date, a size that follows the
//! rows changed and not the fleet), the whole feed that API clients rely on, the machines
//! page paged and filtered on the server, and in headless Chromium a page that patches its
//! rows in place and comes back consistent after the server restarts under it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use crate::util::webdriver::Driver;
use crate::util::{Server, bty_web, spawn_web};

/// The i-th seeded machine, as tests/it/ui.rs names them.
fn mac(i: u32) -> String {
    format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 0xff)
}

/// The row id machines.rs gives a MAC.
fn row_id(mac: &str) -> String {
    format!("#m-{}", mac.replace(':', ""))
}

/// A server with `n` machines discovered through `/pxe/{mac}` (the fastest way in: one request
/// each), past the default discovery rate, and published: the delta that carries the last
/// one has gone out, so the tests' own changes are alone in the events they read.
fn fleet(name: &str, n: u32) -> (Server, String) {
    let s = Server::start_env(name, &[("BTY_PXE_DISCOVERIES_PER_MINUTE", "0")]);
    let c = s.login();
    let v = page_version(&page(&s, &c, "/ui/machines"));
    let mut feed = Stream::open(&s, &c, &format!("/events/machines?since={v}"), "");
    for i in 0..n {
        assert_eq!(s.call("GET", &format!("/pxe/{}", mac(i)), None, "").0, 200);
    }
    let last = format!("\"mac\":\"{}\"", mac(n - 1));
    let published = (0..1000).any(|_| feed.event().data.contains(&last));
    assert!(published, "the seeded machines were never published");
    (s, c)
}

/// One server-sent event: its name, its data, and its size on the wire.
struct Event {
    name: String,
    data: String,
    bytes: usize,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// An open `/events/machines` stream.
struct Stream {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Stream {
    /// `GET path` with the session cookie and `extra` header lines; the answer's head is read.
    fn open(s: &Server, cookie: &str, path: &str, extra: &str) -> Stream {
        let mut sock = TcpStream::connect(&s.addr).unwrap();
        write!(sock, "GET {path} HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\n{extra}\r\n", s.addr)
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut st = Stream { sock, buf: Vec::new() };
        let head = st.until(b"\r\n\r\n").expect("an answer head");
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head}");
        st
    }

    /// Bytes up to and including `end`, None when the stream ends first; bounded by the read
    /// timeout and a size cap.
    fn until(&mut self, end: &[u8]) -> Option<Vec<u8>> {
        let mut chunk = [0u8; 65536];
        for _ in 0..100_000 {
            if let Some(i) = self.buf.windows(end.len()).position(|w| w == end) {
                return Some(self.buf.drain(..i + end.len()).collect());
            }
            match self.sock.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading the event stream: {e}"),
            }
        }
        panic!("no end of event in 100,000 reads");
    }

    /// The next event (keep-alive comments skipped), None at the end of the stream.
    fn next(&mut self) -> Option<Event> {
        for _ in 0..100 {
            let raw = self.until(b"\n\n")?;
            let text = String::from_utf8(raw.clone()).expect("UTF-8 events");
            let mut name = String::new();
            let mut data = String::new();
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v.to_string();
                }
            }
            if !name.is_empty() {
                return Some(Event { name, data, bytes: raw.len() });
            }
        }
        panic!("100 comments and no event");
    }

    /// The next event that is not a jobs one; it must be there.
    fn event(&mut self) -> Event {
        for _ in 0..100 {
            let e = self.next().expect("an event before the end of the stream");
            if e.name != "jobs-update" {
                return e;
            }
        }
        panic!("only jobs events");
    }
}

/// The fleet version the machines page was rendered at.
fn page_version(body: &str) -> u64 {
    let v = body.split("data-version=\"").nth(1).and_then(|r| r.split('"').next());
    v.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no data-version in the page"))
}

fn page(s: &Server, c: &str, path: &str) -> String {
    let (st, _, body) = s.call("GET", path, Some(c), "");
    assert_eq!(st, 200, "{path}: {body}");
    body
}

fn rows(body: &str) -> usize {
    body.matches("<tr id=\"m-").count()
}

fn put_labels(s: &Server, c: &str, mac: &str, label: &str) {
    let body = format!(r#"{{"labels": ["{label}"], "boot_mode": "ipxe-exit"}}"#);
    let (st, _, text) = s.call("PUT", &format!("/machines/{mac}"), Some(c), &body);
    assert_eq!(st, 200, "{text}");
}

#[test]
fn delta_feed_sends_only_changed_rows_removals_and_rising_versions() {
    let (s, c) = fleet("fleet-delta", 60);
    let v0 = page_version(&page(&s, &c, "/ui/machines"));
    let mut feed = Stream::open(&s, &c, &format!("/events/machines?since={v0}"), "");
    let first = feed.event();
    assert_eq!(first.name, "machines-delta");
    let j = first.json();
    assert_eq!((j["version"].as_u64(), j["changed"].as_array().map(Vec::len)), (Some(v0), Some(0)));

    put_labels(&s, &c, &mac(5), "patched");
    let e = feed.event();
    let j = e.json();
    assert_eq!(e.name, "machines-delta", "{}", e.data);
    let changed = j["changed"].as_array().unwrap();
    assert_eq!(changed.len(), 1, "only the changed row: {}", e.data);
    assert_eq!(
        (changed[0]["mac"].as_str(), &changed[0]["labels"]),
        (Some(mac(5).as_str()), &serde_json::json!(["patched"]))
    );
    let v1 = j["version"].as_u64().unwrap();
    assert!(v1 > v0);

    let p = r#"{"phase": "writing", "written_bytes": 512, "total_bytes": 2048}"#;
    assert_eq!(s.call("POST", &format!("/pxe/{}/progress", mac(6)), None, p).0, 204);
    let j = feed.event().json();
    assert_eq!(j["changed"][0]["mac"].as_str(), Some(mac(6).as_str()), "{j}");
    assert_eq!(j["changed"][0]["flash_progress"]["written_bytes"], 512, "progress is a row change");
    let v2 = j["version"].as_u64().unwrap();
    assert!(v2 > v1);

    assert_eq!(s.call("DELETE", &format!("/machines/{}", mac(7)), Some(&c), "").0, 204);
    let j = feed.event().json();
    assert_eq!(
        (j["removed"].clone(), j["changed"].as_array().map(Vec::len)),
        (serde_json::json!([mac(7)]), Some(0))
    );
    let v3 = j["version"].as_u64().unwrap();
    assert!(v3 > v2);

    // A reconnecting EventSource sends the last version it got: it gets what came after, once
    // each machine, whatever its URL's since.
    let mut again = Stream::open(
        &s,
        &c,
        &format!("/events/machines?since={v0}"),
        &format!("Last-Event-ID: {v1}\r\n"),
    );
    let j = again.event().json();
    assert_eq!(j["version"].as_u64(), Some(v3));
    let changed: Vec<&str> =
        j["changed"].as_array().unwrap().iter().filter_map(|m| m["mac"].as_str()).collect();
    assert_eq!(
        (changed, j["removed"].clone()),
        (vec![mac(6).as_str()], serde_json::json!([mac(7)]))
    );

    // A version from before the changes kept, from another run, or not a number.
    for since in [1, v3 + 1_000_000_000] {
        let mut old = Stream::open(&s, &c, &format!("/events/machines?since={since}"), "");
        let e = old.event();
        assert_eq!((e.name.as_str(), e.json()["version"].as_u64()), ("machines-reset", Some(v3)));
        assert!(old.next().is_none(), "the stream ends after a reset");
    }
    let (st, _, body) = s.call("GET", "/events/machines?since=abc", Some(&c), "");
    assert_eq!(
        (st, body.as_str()),
        (422, r#"{"detail":"since: expected a fleet version (a number)"}"#)
    );
    assert_eq!(s.call("GET", &format!("/events/machines?since={v3}"), None, "").0, 401);
}

#[test]
fn a_delta_for_one_row_is_small_and_the_same_size_whatever_the_fleet() {
    let mut sizes = Vec::new();
    for n in [20, 400] {
        let (s, c) = fleet(&format!("fleet-size-{n}"), n);
        let mut whole = Stream::open(&s, &c, "/events/machines", "");
        let snapshot = whole.event();
        let v = page_version(&page(&s, &c, "/ui/machines"));
        let mut feed = Stream::open(&s, &c, &format!("/events/machines?since={v}"), "");
        assert_eq!(feed.event().name, "machines-delta");
        put_labels(&s, &c, &mac(3), "rack-9");
        let delta = feed.event();
        let update = whole.event();
        assert_eq!(
            (delta.name.as_str(), update.name.as_str()),
            ("machines-delta", "machines-update")
        );
        eprintln!(
            "{n} machines: one-row delta {} bytes, whole snapshot {} bytes",
            delta.bytes, update.bytes
        );
        assert!(delta.bytes < 2048, "{} bytes: {}", delta.bytes, delta.data);
        assert!(update.bytes > snapshot.bytes / 2 && update.bytes > delta.bytes * (n as usize / 2));
        sizes.push(delta.bytes);
    }
    assert_eq!(sizes[0], sizes[1], "the same change costs the same in a fleet 20 times larger");
}

#[test]
fn the_whole_feed_still_sends_the_fleet_on_connect_and_after_every_change() {
    let (s, c) = fleet("fleet-whole", 30);
    let mut whole = Stream::open(&s, &c, "/events/machines", "");
    let e = whole.event();
    assert_eq!(e.name, "machines-update");
    assert_eq!(e.json().as_array().map(Vec::len), Some(30));
    put_labels(&s, &c, &mac(1), "x");
    let j = whole.event().json();
    let all = j.as_array().unwrap();
    assert_eq!(all.len(), 30, "the whole fleet again");
    let m1 = all.iter().find(|m| m["mac"] == mac(1)).unwrap();
    assert_eq!(m1["labels"], serde_json::json!(["x"]));
    assert!(all.iter().all(|m| m.get("flash_progress").is_some()));
    assert_eq!(s.call("DELETE", &format!("/machines/{}", mac(2)), Some(&c), "").0, 204);
    assert_eq!(whole.event().json().as_array().map(Vec::len), Some(29));
}

#[test]
fn the_machines_page_is_paged_and_filtered_on_the_server() {
    let (s, c) = fleet("fleet-pages", 250);
    for i in (0..250).step_by(2) {
        put_labels(&s, &c, &mac(i), "even");
    }
    let body = page(&s, &c, "/ui/machines");
    assert_eq!(rows(&body), 100);
    assert!(body.contains("rows 1–100 of 250 matching, 250 machines in all"), "{body}");
    assert!(
        body.contains("page 1 of 3") && body.contains("href=\"/ui/machines?page=2\""),
        "{body}"
    );
    assert!(!body.contains("rel=\"prev\""));
    assert!(
        body.contains(&format!("data-mac=\"{}\"", mac(99)))
            && !body.contains(&format!("data-mac=\"{}\"", mac(100)))
    );
    assert!(body.contains("all 250 matching the filter"), "the bulk form counts every page");

    let body = page(&s, &c, "/ui/machines?page=3");
    assert_eq!(rows(&body), 50);
    assert!(body.contains("rows 201–250 of 250") && body.contains("href=\"/ui/machines?page=2\""));
    assert!(!body.contains("rel=\"next\""));
    assert_eq!(rows(&page(&s, &c, "/ui/machines?page=99")), 50, "past the end: the last page");
    // A page number whose offset would overflow is past the end too, with and without a text
    // filter (the two ways a page is read).
    for q in ["", "&q=02:"] {
        let far = format!("/ui/machines?page={}&per=500{q}", usize::MAX);
        assert!(rows(&page(&s, &c, &far)) > 0, "{far}: the last page");
    }
    assert_eq!(rows(&page(&s, &c, "/ui/machines?page=x&per=0")), 100, "nonsense: the defaults");

    let body = page(&s, &c, "/ui/machines?label=even&page=2&per=50");
    assert_eq!(rows(&body), 50);
    assert!(body.contains("rows 51–100 of 125 matching"), "{body}");
    assert!(body.contains("href=\"/ui/machines?page=1&amp;label=even&amp;per=50\""), "{body}");
    assert!(body.contains("href=\"/ui/machines?page=3&amp;label=even&amp;per=50\""), "{body}");
    assert!(body.contains(&format!("data-mac=\"{}\"", mac(100))), "the 51st even machine");
    // Without text the page is read in SQL; with text every machine goes through the bulk
    // change's filter. A text that matches every MAC gives the same page either way.
    let tbody = |b: &str| {
        b.split("<tbody>").nth(1).and_then(|r| r.split("</tbody>").next()).map(str::to_string)
    };
    let text = page(&s, &c, "/ui/machines?label=even&q=02:00:00&page=2&per=50");
    assert_eq!(tbody(&text), tbody(&body));
    assert!(text.contains("rows 51–100 of 125 matching"), "{text}");
    let body = page(&s, &c, "/ui/machines?q=02:00:00:00:00:0&label=even");
    assert_eq!(rows(&body), 8, "the even of 00..0f: {body}");
    assert!(!body.contains("class=\"pager\""), "one page: no pager");
}

/// The texts of the machines table's rows, as the browser shows them.
fn row_texts(d: &Driver) -> Vec<String> {
    let v = d.js(
        "return Array.from(document.querySelectorAll('#machines tbody tr')).map(r => r.innerText);",
    );
    serde_json::from_value(v).unwrap()
}

/// Whether the marked table and row are the same DOM nodes they were.
fn marks_kept(d: &Driver, row: &str) -> bool {
    d.js(&format!(
        "return document.getElementById('machines').btyMark === 'table' && \
         document.querySelector('{row}')?.btyMark === 'row';"
    )) == Value::Bool(true)
}

#[test]
fn the_page_patches_rows_in_place_and_is_consistent_after_a_restart_in_chromium() {
    let (s, c) = fleet("fleet-browser", 300);
    let d = Driver::start("fleet");
    let base = format!("http://{}", s.addr);
    d.log_in(&base);
    d.goto(&format!("{base}/ui/machines"));
    let live = |d: &Driver| d.text_of("#live-state").ends_with(", live");
    assert!(d.wait(Duration::from_secs(10), live), "{}", d.text_of("#live-state"));
    assert_eq!(d.find_all("#machines tbody tr").len(), 100);
    let untouched = row_id(&mac(40));
    d.js(&format!(
        "document.getElementById('machines').btyMark = 'table'; \
         document.querySelector('{untouched}').btyMark = 'row';"
    ));

    put_labels(&s, &c, &mac(5), "patched");
    assert!(
        d.wait(Duration::from_secs(10), |d| d.text_of(&row_id(&mac(5))).contains("patched")),
        "the changed row: {}",
        d.text_of(&row_id(&mac(5)))
    );
    assert!(marks_kept(&d, &untouched), "the table was not rebuilt");
    assert_eq!(s.call("DELETE", &format!("/machines/{}", mac(7)), Some(&c), "").0, 204);
    assert!(d.wait(Duration::from_secs(10), |d| d.find_all(&row_id(&mac(7))).is_empty()));
    // Discovered again, it sorts into this page; a new machine past its last row does not.
    assert_eq!(s.call("GET", &format!("/pxe/{}", mac(7)), None, "").0, 200);
    assert!(d.wait(Duration::from_secs(10), |d| !d.find_all(&row_id(&mac(7))).is_empty()));
    let order = d.js(&format!(
        "return document.querySelector('{}').previousElementSibling.dataset.mac;",
        row_id(&mac(7))
    ));
    assert_eq!(order.as_str(), Some(mac(6).as_str()));
    assert_eq!(s.call("GET", &format!("/pxe/{}", mac(1000)), None, "").0, 200);
    assert!(
        d.wait(Duration::from_secs(10), |d| d
            .text_of("#live-outside")
            .starts_with("1 machine(s) changed outside this page")),
        "{}",
        d.text_of("#live-outside")
    );
    assert!(marks_kept(&d, &untouched), "the table was not rebuilt");
    assert_eq!(d.find_all("#machines tbody tr").len(), 100);

    // The server restarts on the same address and state; changes land before the page's
    // EventSource is back. Its version is from the old run: a reset, and the page reloads.
    let (addr, state) = (s.addr.clone(), s.state.clone());
    s.stop_keeping_state();
    let mut cmd = bty_web(&state);
    cmd.args(["--listen", &addr]).env("BTY_ADMIN_PASSWORD", "pw-for-tests");
    let (child, new_addr) = spawn_web(cmd);
    let s = Server { child, addr: new_addr, state };
    assert_eq!(s.addr, addr);
    let c = s.login();
    put_labels(&s, &c, &mac(11), "after-restart");
    assert_eq!(s.call("DELETE", &format!("/machines/{}", mac(12)), Some(&c), "").0, 204);
    assert!(
        d.wait(Duration::from_secs(30), |d| d.text_of(&row_id(&mac(11))).contains("after-restart")
            && d.find_all(&row_id(&mac(12))).is_empty()
            && live(d)),
        "after the restart: {}",
        d.text_of("#live-state")
    );
    let patched = row_texts(&d);
    d.goto(&format!("{base}/ui/machines"));
    assert!(d.wait(Duration::from_secs(10), live));
    assert_eq!(patched, row_texts(&d), "the live table equals a fresh load");
    assert_eq!(patched.len(), 100);
}
