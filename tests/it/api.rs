//! bty-web's JSON API through real HTTP on 127.0.0.1: auth, machines, events.

use crate::discovery::events_of;
use crate::util;
use crate::util::Server;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;

#[test]
fn protected_routes_need_a_session_and_login_works() {
    let s = Server::start("auth");
    for (m, p) in [("GET", "/machines"), ("PUT", "/machines/aa:bb:cc:dd:ee:ff"), ("GET", "/events")]
    {
        let (st, _, body) = s.call(m, p, None, "{}");
        assert_eq!(st, 401, "{m} {p}");
        assert_eq!(body, r#"{"detail":"login required"}"#);
    }
    let (st, _, _) = s.call("GET", "/machines", Some("bty-token=123.abcd"), "");
    assert_eq!(st, 401, "a forged token is refused");
    let (st, head, body) = s.call("POST", "/ui/login", None, "password=wrong");
    assert_eq!(st, 401);
    assert!(!head.contains("set-cookie"), "no cookie for a wrong password");
    assert!(body.contains("Wrong password"));
    for p in ["/", "/ui"] {
        let (st, head, _) = s.call("GET", p, None, "");
        assert_eq!(st, 303);
        assert!(head.contains("location: /ui/login"), "{p}: {head}");
    }
    assert_eq!(s.call("GET", "/ui/login", None, "").0, 200);
    let cookie = s.login();
    let (st, _, body) = s.call("GET", "/machines", Some(&cookie), "");
    assert_eq!((st, body.as_str()), (200, "[]"));
    for p in ["/", "/ui", "/ui/login"] {
        let (st, head, _) = s.call("GET", p, Some(&cookie), "");
        assert_eq!(st, 303);
        assert!(head.contains("location: /ui/dashboard"), "{p}: {head}");
    }
    let (_, _, body) = s.call("GET", "/events?kind=auth.login.failed", Some(&cookie), "");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 1, "{body}");
    let (st, head, _) = s.call("POST", "/ui/logout", Some(&cookie), "");
    assert_eq!(st, 303);
    assert!(head.contains("bty-token=;") && head.contains("max-age=0"), "{head}");
    assert_eq!(s.call("GET", "/events", Some(&cookie), "").0, 401, "logout ends the session");
}

#[test]
fn failed_logins_are_rate_limited() {
    let s = Server::start("rate");
    for _ in 0..10 {
        assert_eq!(s.call("POST", "/ui/login", None, "password=nope").0, 401);
    }
    let (st, _, _) = s.call("POST", "/ui/login", None, "password=pw-for-tests");
    assert_eq!(st, 429, "even the right password waits after 10 failures");
}

#[test]
fn machines_crud_with_validation() {
    let s = Server::start("machines");
    let c = s.login();
    let (st, _, body) = s.call(
        "PUT",
        "/machines/AA-BB-CC-DD-EE-01",
        Some(&c),
        r#"{"labels":["rack-3","a","rack-3"]}"#,
    );
    assert_eq!(st, 200, "{body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["mac"], "aa:bb:cc:dd:ee:01");
    assert_eq!(m["boot_mode"], "ipxe-exit");
    assert_eq!(m["labels"], serde_json::json!(["a", "rack-3"]));
    let (st, _, body) = s.call("GET", "/machines/aa:bb:cc:dd:ee:01", Some(&c), "");
    assert_eq!(st, 200, "{body}");
    for (body, field) in [
        (r#"{"labels":["<script>"]}"#, "labels[0]"),
        (r#"{"boot_mode":"bty-flash-once"}"#, "target_disk_serial"),
        (r#"{"surprise":1}"#, "surprise"),
        ("{not json", "not valid JSON"),
    ] {
        let (st, _, resp) = s.call("PUT", "/machines/aa:bb:cc:dd:ee:01", Some(&c), body);
        assert_eq!(st, 422, "{body} -> {resp}");
        assert!(resp.contains(field), "{body} -> {resp}");
    }
    let (st, _, resp) = s.call("PUT", "/machines/../etc", Some(&c), "{}");
    assert!((400..500).contains(&st), "{resp}");
    // The list is served from a cache that every write invalidates.
    let list = || s.call("GET", "/machines", Some(&c), "").2;
    assert!(list().contains("aa:bb:cc:dd:ee:01"));
    assert_eq!(s.call("GET", "/pxe/aa:bb:cc:dd:ee:01", None, "").0, 200);
    assert!(list().contains(r#""last_seen_ip":"127.0.0.1""#), "{}", list());
    let (st, _, _) = s.call("DELETE", "/machines/aa:bb:cc:dd:ee:01", Some(&c), "");
    assert_eq!(st, 204);
    assert!(!list().contains("aa:bb:cc:dd:ee:01"));
    let (st, _, body) = s.call("DELETE", "/machines/aa:bb:cc:dd:ee:01", Some(&c), "");
    assert_eq!(st, 404);
    assert_eq!(body, r#"{"detail":"no machine record for aa:bb:cc:dd:ee:01"}"#);
    let (_, _, body) = s.call("GET", "/events?kind=machine.deleted", Some(&c), "");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = v["events"][0]["id"].as_i64().unwrap();
    let (st, _, body) = s.call("POST", &format!("/events/{id}/ack"), Some(&c), "");
    assert_eq!(st, 200);
    assert_eq!(body, format!(r#"{{"acknowledged":true,"id":{id}}}"#));
    assert_eq!(s.call("POST", "/events/999999/ack", Some(&c), "").0, 404);
    assert_eq!(s.call("GET", "/events?limit=0", Some(&c), "").0, 422);
}

impl Server {
    fn boot_file(&self, name: &str, data: &[u8]) {
        std::fs::write(self.state.join("boot").join(name), data).unwrap();
    }

    /// Seeds a catalog entry into the real state.db (the catalog routes are not built yet).
    pub(crate) fn seed_catalog(&self, image_ref: &str, src: &str) {
        let c = rusqlite::Connection::open(self.state.join("state.db")).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        c.execute(
            "INSERT INTO catalog_entries (bty_image_ref, src, name, format, added_at) VALUES (?1, ?2, 'debian.img.zst', 'img.zst', 'now')",
            [image_ref, src],
        )
        .unwrap();
    }

    pub(crate) fn pxe(&self, mac: &str) -> String {
        let (st, head, body) = self.call("GET", &format!("/pxe/{mac}"), None, "");
        assert_eq!(st, 200, "{head}{body}");
        assert!(body.starts_with("#!ipxe\n"), "{body}");
        body
    }
}

const KERNEL: &str = concat!("bty-netboot-pc-x86_64-v", env!("CARGO_PKG_VERSION"), ".vmlinuz");

pub(crate) fn is_live(script: &str) -> bool {
    script.contains(&format!("/boot/{KERNEL}?mac=")) && script.contains("bty.mac=")
}
pub(crate) fn is_disk(script: &str) -> bool {
    script.contains("sanboot --no-describe --drive 0x80 || exit")
}

#[test]
fn discovery_and_inventory_cycle() {
    let s = Server::start("inventory");
    s.boot_file(KERNEL, b"kernel bytes");
    let mac = "52:54:00:12:34:56";
    let first = s.pxe("52-54-00-12-34-56");
    assert!(is_live(&first), "unknown MACs are discovered and inventoried: {first}");
    assert!(first.contains(&format!("bty.server=http://{}", s.addr)), "{first}");
    let (st, _, body) = s.call("GET", &format!("/boot/{KERNEL}?mac={mac}"), None, "");
    assert_eq!((st, body.as_str()), (200, "kernel bytes"));
    let inv = r#"{"disks":[{"path":"/dev/vda","size":"8G","serial":"QEMU-1","tran":null,"removable":false,"readonly":false,"vendor":null,"model":null}]}"#;
    assert_eq!(s.call("POST", &format!("/pxe/{mac}/inventory"), None, inv).0, 204);
    assert!(is_disk(&s.pxe(mac)), "after the inventory the disk boots once");
    let lshw = r#"{"disks":[],"lshw":{"id":"qemu","children":[]}}"#;
    assert_eq!(s.call("POST", &format!("/pxe/{mac}/inventory"), None, lshw).0, 204);
    let c0 = s.login();
    let (st, _, body) = s.call("GET", &format!("/machines/{mac}/lshw.json"), Some(&c0), "");
    assert_eq!((st, body.as_str()), (200, r#"{"children":[],"id":"qemu"}"#));
    // An inventory without lshw keeps the previous blob.
    assert_eq!(s.call("POST", &format!("/pxe/{mac}/inventory"), None, inv).0, 204);
    let (_, _, body) = s.call("GET", &format!("/machines/{mac}/lshw.json"), Some(&c0), "");
    assert!(body.contains("qemu"));
    let (st, _, body) = s.call("GET", &format!("/machines/{mac}/disks.json"), Some(&c0), "");
    assert_eq!(st, 200);
    assert!(body.contains("QEMU-1"), "{body}");
    assert!(is_disk(&s.pxe(mac)), "still the one disk boot");
    assert!(is_live(&s.pxe(mac)), "then it re-arms: the next power cycle collects again");
    let c = s.login();
    let (_, _, body) = s.call("GET", &format!("/machines/{mac}"), Some(&c), "");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["boot_mode"], "bty-inventory");
    assert_eq!(m["known_disks"][0]["serial"], "QEMU-1");
    assert!(m["discovered_at"].is_string() && m["last_seen_ip"] == "127.0.0.1", "{m}");
    // Four offers: live environment, disk, the same disk offer again within 10 s (logged once),
    // live environment again.
    let (_, _, body) = s.call("GET", "/events?kind=pxe.offered", Some(&c), "");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["events"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "{body}"
    );
}

#[test]
fn flash_always_alternates_and_flash_once_stays_on_disk() {
    let s = Server::start("flash");
    let image_ref = "ab".repeat(32);
    s.seed_catalog(&image_ref, "https://images.example/debian.img.zst");
    let c = s.login();
    let mac = "52:54:00:00:00:01";
    let body = format!(
        r#"{{"boot_mode":"bty-flash-always","bty_image_ref":"{image_ref}","target_disk_serial":"QEMU-1"}}"#
    );
    assert_eq!(s.call("PUT", &format!("/machines/{mac}"), Some(&c), &body).0, 200);
    assert!(is_live(&s.pxe(mac)));
    let (_, _, plan) = s.call("GET", &format!("/pxe/{mac}/plan"), None, "");
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["mode"], "flash");
    assert_eq!(plan["image"], "https://images.example/debian.img.zst");
    assert_eq!(plan["target_disk_serial"], "QEMU-1");
    // A reboot before "done" (a failed or interrupted flash) never boots the half-written disk.
    assert!(is_live(&s.pxe(mac)));
    assert_eq!(
        s.call(
            "POST",
            &format!("/pxe/{mac}/progress"),
            None,
            r#"{"phase":"write","written_bytes":5,"total_bytes":10,"rate_bytes_per_s":1}"#
        )
        .0,
        204
    );
    assert_eq!(s.call("POST", &format!("/pxe/{mac}/done"), None, "").0, 204);
    assert!(is_disk(&s.pxe(mac)), "after done the new disk boots");
    assert!(is_live(&s.pxe(mac)), "flash-always re-arms: the next boot flashes again");

    let once = "52:54:00:00:00:02";
    let body = body.replace("bty-flash-always", "bty-flash-once");
    assert_eq!(s.call("PUT", &format!("/machines/{once}"), Some(&c), &body).0, 200);
    assert!(is_live(&s.pxe(once)));
    assert_eq!(s.call("POST", &format!("/pxe/{once}/status"), None, r#"{"status":"done"}"#).0, 204);
    assert!(is_disk(&s.pxe(once)) && is_disk(&s.pxe(once)), "flash-once stays on the disk");
    // Saving the machine again re-arms it.
    assert_eq!(
        s.call("PUT", &format!("/machines/{once}"), Some(&c), &body.replace("QEMU-1", "QEMU-2")).0,
        200
    );
    assert!(is_live(&s.pxe(once)));

    // An image that left the catalog: say why and hand back to the firmware.
    let gone = "52:54:00:00:00:03";
    let body = body.replace(&image_ref, &"cd".repeat(32));
    assert_eq!(s.call("PUT", &format!("/machines/{gone}"), Some(&c), &body).0, 200);
    let script = s.pxe(gone);
    assert!(
        script.contains("echo bty: image cdcdcdcdcdcd is no longer in the catalog")
            && script.ends_with("exit\n"),
        "{script}"
    );
    let (_, _, plan) = s.call("GET", &format!("/pxe/{gone}/plan"), None, "");
    assert_eq!(plan, r#"{"mode":"exit"}"#);
}

#[test]
fn pxe_bad_input_and_orphans() {
    let s = Server::start("pxe-bad");
    let (st, _, body) = s.call("POST", "/pxe/52:54:00:99:99:99/done", None, "");
    assert_eq!(st, 404);
    assert_eq!(body, r#"{"detail":"no machine record for 52:54:00:99:99:99"}"#);
    assert!((400..500).contains(&s.call("GET", "/pxe/not-a-mac", None, "").0));
    s.pxe("52:54:00:99:99:98");
    for (body, want) in [
        (r#"{"disks":[],"extra":1}"#, "extra"),
        ("[1,2", "not valid JSON"),
        (r#"{"disks":[{"path":"/etc/passwd"}]}"#, "path"),
    ] {
        let (st, _, resp) = s.call("POST", "/pxe/52:54:00:99:99:98/inventory", None, body);
        assert_eq!(st, 422, "{body}: {resp}");
        assert!(resp.contains(want), "{body}: {resp}");
    }
    let long = format!(r#"{{"status":"failed","reason":"{}"}}"#, "x".repeat(501));
    assert_eq!(s.call("POST", "/pxe/52:54:00:99:99:98/status", None, &long).0, 422);
    assert_eq!(
        s.call(
            "POST",
            "/pxe/52:54:00:99:99:98/status",
            None,
            r#"{"status":"failed","reason":"disk gone"}"#
        )
        .0,
        204
    );
    // Posts for MACs with no record are refused, and a flood of them logs a few events, not
    // one each: a client cannot flush the event log with random MACs.
    for i in 0..40 {
        let mac = format!("52:54:00:98:00:{i:02x}");
        let (st, _, _) = s.call("POST", &format!("/pxe/{mac}/done"), None, "");
        assert_eq!(st, 404, "{mac}");
    }
    let cookie = s.login();
    let orphans = events_of(&s, &cookie, "pxe.orphan");
    assert!((2..=10).contains(&orphans.len()), "{} orphan events", orphans.len());
    let (st, _, body) = s.call("GET", "/boot/missing.initrd", None, "");
    assert_eq!((st, body.as_str()), (404, r#"{"detail":"no such file: missing.initrd"}"#));
    let (st, _, body) = s.call("GET", "/boot/..%2Fstate.db", None, "");
    assert!((400..500).contains(&st) && !body.contains("SQLite"), "{st} {body}");
    assert_eq!(s.call("GET", "/boot/.hidden", None, "").0, 400);
}

#[test]
fn live_updates_stream_snapshots_after_changes() {
    let s = Server::start("sse");
    let c = s.login();
    assert_eq!(s.call("GET", "/events/machines", None, "").0, 401);
    let mut stream = TcpStream::connect(&s.addr).unwrap();
    write!(stream, "GET /events/machines HTTP/1.1\r\nHost: {}\r\nCookie: {c}\r\n\r\n", s.addr)
        .unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream);
    // Reads lines until an event whose data satisfies `want`; bounded by the read timeout.
    let mut next_event = |want: &dyn Fn(&str) -> bool| -> String {
        for _ in 0..1000 {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if let Some(data) = line.strip_prefix("data: ") {
                if want(data) {
                    return data.to_string();
                }
            }
        }
        panic!("no matching event");
    };
    assert_eq!(next_event(&|d| d.starts_with('[')).trim(), "[]", "the snapshot comes at once");
    assert_eq!(
        s.call("PUT", "/machines/52:54:00:00:00:0a", Some(&c), r#"{"labels":["x"]}"#).0,
        200
    );
    let data = next_event(&|d| d.contains("52:54:00:00:00:0a"));
    assert!(data.contains(r#""labels":["x"]"#), "{data}");
    assert_eq!(
        s.call(
            "POST",
            "/pxe/52:54:00:00:00:0a/progress",
            None,
            r#"{"phase":"write","written_bytes":42,"total_bytes":100}"#
        )
        .0,
        204
    );
    let data = next_event(&|d| d.contains("\"written_bytes\":42"));
    assert!(data.contains("flash_progress"), "{data}");
}

#[test]
fn catalog_entries_images_and_catalog_toml() {
    let s = Server::start("catalog");
    let c = s.login();
    assert_eq!(s.call("POST", "/catalog/entries", None, "{}").0, 401);
    let (st, _, body) = s.call(
        "POST",
        "/catalog/entries",
        Some(&c),
        r#"{"image_url":"https://Images.Example/debian/debian-12.img.zst","description":"Debian"}"#,
    );
    assert_eq!(st, 201, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["name"], "debian-12.img.zst");
    assert_eq!(e["format"], "img.zst");
    let image_ref = e["bty_image_ref"].as_str().unwrap().to_string();
    assert_eq!(image_ref.len(), 64);
    // The same src (up to host case and default port) is not added twice.
    let (st, _, body) = s.call(
        "POST",
        "/catalog/entries",
        Some(&c),
        r#"{"image_url":"https://images.example:443/debian/debian-12.img.zst"}"#,
    );
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(&image_ref));
    for (body, want) in [
        (r#"{"image_url":"ftp://h/x.img"}"#, "not supported"),
        (r#"{"image_url":"https:///x.img"}"#, "no host"),
        (r#"{"image_url":"oras:///r:latest"}"#, "no host"),
        (r#"{"image_url":"https://h/x.img","sha_url":"ftp://h/x.sha256"}"#, "sha_url"),
        (r#"{"image_url":"https://h/x.img","size":1}"#, "unknown field"),
        (r#"{}"#, "required"),
        ("nope", "not valid JSON"),
    ] {
        let (st, _, resp) = s.call("POST", "/catalog/entries", Some(&c), body);
        assert_eq!(st, 422, "{body}: {resp}");
        assert!(resp.contains(want), "{body}: {resp}");
    }
    let (st, _, body) = s.call("GET", "/images", None, "");
    assert_eq!(st, 200);
    let images: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(images[0]["ref"], image_ref.as_str());
    assert_eq!(images[0]["cached"], false);
    let (st, head, body) = s.call("GET", "/catalog.toml", None, "");
    assert_eq!(st, 200);
    assert!(head.contains("application/toml"));
    let t: toml::Table = toml::from_str(&body).unwrap();
    assert_eq!(t["version"].as_integer(), Some(1));
    assert_eq!(
        t["images"][0]["src"].as_str(),
        Some("https://Images.Example/debian/debian-12.img.zst")
    );

    // The entry drives a flash plan.
    let mac = "52:54:00:00:00:0b";
    let m = format!(
        r#"{{"boot_mode":"bty-flash-once","bty_image_ref":"{image_ref}","target_disk_serial":"S1"}}"#
    );
    assert_eq!(s.call("PUT", &format!("/machines/{mac}"), Some(&c), &m).0, 200);
    let (_, _, plan) = s.call("GET", &format!("/pxe/{mac}/plan"), None, "");
    assert!(plan.contains(r#""mode":"flash""#) && plan.contains("debian-12.img.zst"), "{plan}");

    let src = "https%3A%2F%2FImages.Example%2Fdebian%2Fdebian-12.img.zst";
    assert_eq!(s.call("DELETE", &format!("/catalog/entries?src={src}"), Some(&c), "").0, 204);
    assert_eq!(s.call("DELETE", &format!("/catalog/entries?src={src}"), Some(&c), "").0, 404);
    let (_, _, plan) = s.call("GET", &format!("/pxe/{mac}/plan"), None, "");
    assert_eq!(plan, r#"{"mode":"exit"}"#, "an image that left the catalog is not flashed");
}

#[test]
fn sigkill_during_a_burst_of_puts_loses_no_acknowledged_write() {
    let s = Server::start("sigkill");
    let c = s.login();
    let pid = s.child.id();
    let mut acked = Vec::new();
    for i in 0..400u32 {
        if i == 150 {
            // Kill from another thread while requests keep coming.
            std::thread::spawn(move || {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            });
        }
        let mac = format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256);
        let r = std::panic::catch_unwind(|| {
            s.call("PUT", &format!("/machines/{mac}"), Some(&c), r#"{"labels":["burst"]}"#)
        });
        match r {
            Ok((200, _, _)) => acked.push(mac),
            _ => break,
        }
    }
    assert!(acked.len() >= 150, "the burst ran before the kill");
    let state = s.state.clone();
    // Keep the state dir: take it out of the first server before it is dropped.
    let mut first = s;
    let _ = first.child.wait();
    first.state = std::path::PathBuf::from("/nonexistent-bty-keep");
    drop(first);
    let s = Server::start_in(state);
    let c = s.login();
    let (_, _, body) = s.call("GET", "/machines", Some(&c), "");
    let all: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let stored: std::collections::HashSet<&str> =
        all.iter().filter_map(|m| m["mac"].as_str()).collect();
    for mac in &acked {
        assert!(
            stored.contains(mac.as_str()),
            "acknowledged {mac} was lost ({} acked, {} stored)",
            acked.len(),
            stored.len()
        );
    }
}

#[test]
fn metrics_count_requests_offers_flashes_and_boot_bytes() {
    let s = Server::start("metrics");
    assert_eq!(s.call("GET", "/metrics", None, "").0, 401);
    let c = s.login();
    s.boot_file(KERNEL, &[0u8; 1000]);
    let mac = "52:54:00:00:00:0c";
    s.pxe(mac);
    assert_eq!(s.call("GET", &format!("/boot/{KERNEL}?mac={mac}"), None, "").0, 200);
    assert_eq!(
        s.call("POST", &format!("/pxe/{mac}/status"), None, r#"{"status":"failed","reason":"x"}"#)
            .0,
        204
    );
    assert_eq!(s.call("POST", &format!("/pxe/{mac}/done"), None, "").0, 204);
    let (st, head, body) = s.call("GET", "/metrics", Some(&c), "");
    assert_eq!(st, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for want in [
        "bty_pxe_offers_total{decision=\"live\"} 1",
        "bty_flashes_total{result=\"done\"} 1",
        "bty_flashes_total{result=\"failed\"} 1",
        "bty_boot_bytes_served_total 1000",
        "bty_machines{boot_mode=\"bty-inventory\"} 1",
        "bty_http_requests_total{code=\"4xx\"} 1",
    ] {
        assert!(body.contains(want), "missing {want}:\n{body}");
    }
}

#[test]
fn a_burst_of_200_pxe_contacts_costs_a_bounded_number_of_snapshots() {
    // 200 new MACs from one address: past the default discovery rate, which is not tested here.
    let s = Server::start_env("sse-burst", &[("BTY_PXE_DISCOVERIES_PER_MINUTE", "0")]);
    let c = s.login();
    let mut stream = TcpStream::connect(&s.addr).unwrap();
    write!(stream, "GET /events/machines HTTP/1.1\r\nHost: {}\r\nCookie: {c}\r\n\r\n", s.addr)
        .unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut reader = BufReader::new(stream);
    let macs: Vec<String> =
        (0..200).map(|i| format!("52:54:00:01:{:02x}:{:02x}", i / 256, i % 256)).collect();
    std::thread::scope(|scope| {
        for part in macs.chunks(50) {
            let s = &s;
            scope.spawn(move || {
                for mac in part {
                    assert_eq!(s.call("GET", &format!("/pxe/{mac}"), None, "").0, 200);
                }
            });
        }
    });
    // Every contact discovered a machine; the snapshots that follow must end with all of them,
    // and there must be far fewer snapshots than changes.
    let mut snapshots = 0;
    let mut last = String::new();
    for _ in 0..100_000 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some(data) = line.strip_prefix("data: ") {
            snapshots += 1;
            last = data.to_string();
            if macs.iter().all(|m| last.contains(m.as_str())) {
                break;
            }
        }
    }
    let rows: serde_json::Value = serde_json::from_str(&last).expect("a JSON snapshot");
    assert_eq!(rows.as_array().map(Vec::len), Some(200), "the final snapshot has every machine");
    assert!(snapshots <= 40, "{snapshots} snapshots for 200 changes: not coalesced");
}

/// A query value, percent-encoded.
fn percent(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One POST with its own Content-Type; (status, body).
fn post_typed(s: &Server, path: &str, cookie: &str, ctype: &str, body: &str) -> (u16, String) {
    use std::io::Read;
    let mut c = TcpStream::connect(&s.addr).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        s.addr,
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), body.to_string())
}

/// Answers one request on 127.0.0.1 with a 404 whose body is a registry-style JSON error.
fn one_404_with_a_body(body: &'static str) -> (String, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let _ = write!(
            c,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    (addr, t)
}

#[test]
fn catalog_import_is_idempotent_and_names_bad_input() {
    let s = Server::start("catalog-import");
    let c = s.login();
    let web = util::httpd::Httpd::start();
    let sha = "a".repeat(64);
    let good = format!(
        "version = 1\n\n[[images]]\nname = \"debian-12.img.zst\"\nsrc = \"https://img.lab/debian-12.img.zst\"\nsha256 = \"{sha}\"\nsize_bytes = 1234\n\n[[images]]\nname = \"<script>.qcow2\"\nsrc = \"https://img.lab/x.qcow2\"\n"
    );
    web.file("/lab.toml", good.clone().into_bytes(), false, None);
    let q = |url: &str| format!("/catalog/import?source={}", percent(url));
    assert_eq!(s.call("POST", &q(&web.url("/lab.toml")), None, "").0, 401);
    let (st, _, body) = s.call("POST", &q(&web.url("/lab.toml")), Some(&c), "");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["imported"].as_u64(), v["skipped"].as_u64()), (Some(2), Some(0)), "{body}");
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(0));
    let (_, _, body) = s.call("POST", &q(&web.url("/lab.toml")), Some(&c), "");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["imported"].as_u64(), v["skipped"].as_u64()), (Some(0), Some(2)), "{body}");
    let (_, _, list) = s.call("GET", "/catalog/entries", Some(&c), "");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let deb = list.as_array().unwrap().iter().find(|e| e["name"] == "debian-12.img.zst").unwrap();
    assert_eq!(deb["disk_image_sha"], sha.as_str());
    assert_eq!(deb["size_bytes"], 1234);
    assert_eq!(deb["format"], "img.zst");
    // The hostile name is stored as text and comes back escaped in TOML, not as markup.
    let (_, _, toml_text) = s.call("GET", "/catalog.toml", None, "");
    let t: toml::Table = toml::from_str(&toml_text).unwrap();
    assert_eq!(t["images"].as_array().map(Vec::len), Some(2));

    // Bad documents are named by source, place and field; none of their text comes back.
    let secret = "SeCrEt-7f3a";
    for (path, text, want) in [
        (
            "/bad-sha.toml",
            format!(
                "version = 1\n[[images]]\nname = \"x\"\nsrc = \"https://a/x.img\"\nsha256 = \"{secret}\"\n"
            ),
            "entry #1: sha256: expected 64 hex digits",
        ),
        ("/not-toml.toml", format!("{secret} and more text\n"), "invalid TOML at line 1, column"),
        (
            "/dup.toml",
            format!("version = 1\n{secret} = 1\n{secret} = 2\n"),
            "invalid TOML at line 3, column 1",
        ),
        (
            "/unknown-src.toml",
            format!("version = 1\n[[images]]\nname = \"{secret}\"\nsrc = \"{secret}://h/x\"\n"),
            "entry #1: src: unsupported scheme",
        ),
        (
            "/file-src.toml",
            format!("version = 1\n[[images]]\nname = \"x\"\nsrc = \"file:///{secret}\"\n"),
            "entry #1: src: file:// sources are not allowed in a remote catalog",
        ),
    ] {
        web.file(path, text.into_bytes(), false, None);
        let (st, _, body) = s.call("POST", &q(&web.url(path)), Some(&c), "");
        assert_eq!(st, 422, "{path}: {body}");
        assert!(body.contains(&web.url(path)) && body.contains(want), "{path}: {body}");
        assert!(!body.contains(secret), "{path} echoed: {body}");
    }
    let (st, _, body) = s.call("POST", &q(&web.url("/missing.toml")), Some(&c), "");
    assert_eq!(st, 422, "{body}");
    assert!(body.contains("missing.toml") && body.contains("HTTP 404"), "{body}");
    let (addr, t) = one_404_with_a_body(r#"{"errors":[{"message":"SeCrEt-7f3a in a 404"}]}"#);
    let (st, _, body) = s.call("POST", &q(&format!("http://{addr}/c.toml")), Some(&c), "");
    t.join().unwrap();
    assert_eq!(st, 422, "{body}");
    assert!(body.contains("HTTP 404") && !body.contains(secret), "{body}");

    // Never a server path or file://: refused before anything is read, naming what to do.
    let file = s.state.join("lab.toml");
    std::fs::write(&file, &good).unwrap();
    let secret_file = s.state.join("session-secret");
    for source in [
        file.display().to_string(),
        format!("file://{}", file.display()),
        secret_file.display().to_string(),
        format!("file://{}", secret_file.display()),
        "ftp://h/c.toml".to_string(),
        "https:///c.toml".to_string(),
    ] {
        let (st, _, body) = s.call("POST", &q(&source), Some(&c), "");
        assert_eq!(st, 422, "{source}: {body}");
        assert!(body.contains("expected an http(s):// or oras:// URL"), "{source}: {body}");
        assert!(body.contains("never reads a path or file://"), "{source}: {body}");
        assert!(!body.contains("version") && !body.contains("debian"), "{source}: {body}");
    }
    let (st, _, body) = s.call("POST", "/catalog/import", Some(&c), "");
    assert_eq!(st, 422, "{body}");
    assert!(body.contains("source: required"), "{body}");

    // Or the catalog itself as the body, as application/toml.
    let other = "version = 1\n[[images]]\nname = \"u.img\"\nsrc = \"https://img.lab/u.img\"\n";
    let (st, body) = post_typed(&s, "/catalog/import", &c, "text/plain", other);
    assert_eq!(st, 415, "{body}");
    let with_source = q(&web.url("/lab.toml"));
    let (st, body) = post_typed(&s, &with_source, &c, "application/toml", other);
    assert_eq!(st, 422, "{body}");
    assert!(body.contains("not both"), "{body}");
    let file_src = "version = 1\n[[images]]\nname = \"f.img\"\nsrc = \"file:///etc/f.img\"\n";
    let (st, body) = post_typed(&s, "/catalog/import", &c, "application/toml", file_src);
    assert_eq!(st, 422, "{body}");
    assert!(
        body.contains("(request body): entry #1: src: file:// sources are not allowed"),
        "{body}"
    );
    // None of the refusals added an entry.
    let (_, _, list) = s.call("GET", "/catalog/entries", Some(&c), "");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&list).unwrap().as_array().map(Vec::len),
        Some(2)
    );
    let (st, body) =
        post_typed(&s, "/catalog/import", &c, "application/toml; charset=utf-8", other);
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"imported\":1"), "{body}");
}

#[test]
fn the_wal_stays_small_under_pxe_load_and_is_emptied_at_shutdown() {
    // 800 discoveries from one address: the write load this measures, not the rate limit.
    let mut s = Server::start_env("wal", &[("BTY_PXE_DISCOVERIES_PER_MINUTE", "0")]);
    let wal = s.state.join("state.db-wal");
    std::thread::scope(|scope| {
        for t in 0..4 {
            let s = &s;
            scope.spawn(move || {
                for i in 0..750 {
                    let mac = format!("52:54:00:02:{t:02x}:{:02x}", i % 200);
                    assert_eq!(s.call("GET", &format!("/pxe/{mac}"), None, "").0, 200);
                }
            });
        }
    });
    // 3000 contacts write about 16 KiB of pages each: 48 MiB if checkpoints never rewound
    // the WAL (a bug once), a few MiB when they do.
    let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(size < 24 << 20, "state.db-wal is {size} bytes after 3000 PXE contacts");
    let st = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let code = s.child.wait().unwrap();
    assert!(code.success(), "{code:?}");
    let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(size, 0, "a clean stop leaves nothing to replay");
}

#[test]
fn catalog_entries_pin_digests_from_sha_url_and_oras_layers() {
    use util::registry::{Options, Registry};
    let dir = util::TestDir::new("catalog-pins");
    let reg = Registry::start(&dir, Options { tls: true, token: true, redirect_to: None });
    let image = util::zstd(&util::disk_image(41, 1 << 20));
    let sidecar = format!("{}  disk.img.zst\n", util::sha256(&image));
    reg.push_artifact(
        "lab/debian",
        "v1",
        &[("disk.img.zst.sha256", sidecar.as_bytes()), ("disk.img.zst", &image)],
    );
    let web = util::httpd::Httpd::start();
    let a = "a".repeat(64);
    web.file(
        "/images/SHA256SUMS",
        format!("{a}  other.img\n{}  debian.img.zst\n", "C".repeat(64)).into_bytes(),
        false,
        None,
    );
    let env: Vec<(String, String)> = reg.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s = Server::start_env("catalog-pins", &env);
    let c = s.login();
    let add = |body: String| s.call("POST", "/catalog/entries", Some(&c), &body);

    // http(s) with a manifest: the digest listed for the file becomes the pin.
    let (st, _, body) = add(format!(
        r#"{{"image_url":"https://img.lab/debian.img.zst","sha_url":"{}"}}"#,
        web.url("/images/SHA256SUMS")
    ));
    assert_eq!(st, 201, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["disk_image_sha"], "c".repeat(64));
    assert_eq!(e["sha_url"], web.url("/images/SHA256SUMS"));
    // A manifest that does not list the file, or that is not there, is a 422 that says so.
    let (st, _, body) = add(format!(
        r#"{{"image_url":"https://img.lab/ubuntu.img.xz","sha_url":"{}"}}"#,
        web.url("/images/SHA256SUMS")
    ));
    assert_eq!(st, 422, "{body}");
    assert!(body.contains("no sha256 listed for ubuntu.img.xz"), "{body}");
    let (st, _, body) = add(format!(
        r#"{{"image_url":"https://img.lab/ubuntu.img.xz","sha_url":"{}"}}"#,
        web.url("/missing.sha256")
    ));
    assert_eq!(st, 422, "{body}");
    assert!(body.contains("404"), "{body}");

    // oras: resolved at add time; the image layer (not the sidecar) gives digest, name, size.
    let reference = format!("oras://{}/lab/debian:v1", reg.addr);
    let (st, _, body) = add(format!(r#"{{"image_url":"{reference}"}}"#));
    assert_eq!(st, 201, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["disk_image_sha"], util::sha256(&image));
    assert_eq!(e["name"], "disk.img.zst");
    assert_eq!(e["format"], "img.zst");
    assert_eq!(e["size_bytes"], image.len() as u64);
    let (st, _, body) = add(format!(r#"{{"image_url":"oras://{}/lab/nothing:v1"}}"#, reg.addr));
    assert_eq!(st, 422, "{body}");
    assert!(body.contains("lab/nothing"), "{body}");
}
