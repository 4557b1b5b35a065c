//! Discovery under load and the growth caps: the flood past max_discovered, the per-address
//! rate, the lshw total, expiry of stale discoveries, and the inventory contract.

use crate::api::{is_disk, is_live};
use crate::util::Server;

use std::process::Command;

/// The events of one kind, newest first.
pub(crate) fn events_of(s: &Server, cookie: &str, kind: &str) -> Vec<serde_json::Value> {
    let (st, _, body) = s.call("GET", &format!("/events?kind={kind}&limit=500"), Some(cookie), "");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["events"].as_array().unwrap().clone()
}

/// The MACs in the machine table.
fn macs(s: &Server, cookie: &str) -> Vec<String> {
    let (st, _, body) = s.call("GET", "/machines", Some(cookie), "");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array().unwrap().iter().map(|m| m["mac"].as_str().unwrap().to_string()).collect()
}

fn metrics(s: &Server, cookie: &str) -> String {
    let (st, _, body) = s.call("GET", "/metrics", Some(cookie), "");
    assert_eq!(st, 200, "{body}");
    body
}

#[test]
fn a_flood_of_new_macs_past_max_discovered_records_the_cap_and_answers_every_contact() {
    let s = Server::start_env(
        "discovery-cap",
        &[("BTY_PXE_MAX_DISCOVERED", "20"), ("BTY_PXE_DISCOVERIES_PER_MINUTE", "0")],
    );
    let c = s.login();
    // A machine the operator configured is not a discovery and does not count.
    let claimed = "52:54:00:0c:00:00";
    let put = |mac: &str| {
        s.call("PUT", &format!("/machines/{mac}"), Some(&c), r#"{"boot_mode":"ipxe-exit"}"#).0
    };
    assert_eq!(put(claimed), 200);
    let answers = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for t in 1..=4 {
            let (s, answers) = (&s, &answers);
            scope.spawn(move || {
                for i in 0..25 {
                    let mac = format!("52:54:00:0c:{t:02x}:{i:02x}");
                    let (st, _, body) = s.call("GET", &format!("/pxe/{mac}"), None, "");
                    assert_eq!(st, 200, "{mac}: {body}");
                    assert!(body.starts_with("#!ipxe\n"), "{mac}: {body}");
                    answers.lock().unwrap().push((mac, body));
                }
            });
        }
    });
    let all = macs(&s, &c);
    assert_eq!(all.len(), 21, "exactly the cap was recorded, plus the claimed machine: {all:?}");
    let answers = answers.into_inner().unwrap();
    let mut refused = Vec::new();
    for (mac, script) in &answers {
        if all.contains(mac) {
            assert!(is_live(script), "a recorded machine gets its inventory: {script}");
        } else {
            assert!(!is_live(script), "{script}");
            assert!(script.contains("[pxe] max_discovered = 20"), "the console says why: {script}");
            assert!(script.ends_with("\nexit\n"), "back to the firmware boot order: {script}");
            refused.push(mac.clone());
        }
    }
    assert_eq!(refused.len(), 80);
    assert_eq!(events_of(&s, &c, "machine.discovered").len(), 20);
    let capped = events_of(&s, &c, "pxe.discovery.capped");
    assert_eq!(capped.len(), 1, "one event for the whole flood: {capped:?}");
    assert_eq!(capped[0]["details"]["reason"], "max_discovered");
    assert!(capped[0]["details"]["refused"].as_u64().is_some_and(|n| (1..=80).contains(&n)));
    let m = metrics(&s, &c);
    assert!(m.contains("bty_pxe_discoveries_refused_total{reason=\"max_discovered\"} 80"), "{m}");
    assert!(m.contains("\nbty_pxe_unclaimed_machines 20\n"), "{m}");
    // The plan route refuses the same way, and records nothing either.
    let (st, _, body) = s.call("GET", &format!("/pxe/{}/plan", refused[0]), None, "");
    assert_eq!((st, body.as_str()), (200, r#"{"mode":"exit"}"#));
    assert_eq!(macs(&s, &c).len(), 21);
    // Known machines are answered and updated as before, cap or not.
    let known = all.iter().find(|m| *m != claimed).unwrap();
    let inv = r#"{"disks":[{"path":"/dev/vda","size":"8G","serial":"QEMU-9","tran":null,"removable":false,"readonly":false,"vendor":null,"model":null}]}"#;
    assert_eq!(s.call("POST", &format!("/pxe/{known}/inventory"), None, inv).0, 204);
    assert!(is_disk(&s.pxe(known)), "the inventory was stored: the disk boots once");
    // Claiming a discovered machine frees its place for the next unknown MAC.
    assert_eq!(put(known), 200);
    assert!(is_live(&s.pxe(&refused[0])), "{} is discovered now", refused[0]);
    assert!(!is_live(&s.pxe(&refused[1])), "and the cap holds again");
    assert_eq!(macs(&s, &c).len(), 22);
    assert_eq!(events_of(&s, &c, "pxe.discovery.capped").len(), 1, "still one event");
}

/// `GET /pxe/{mac}` from another loopback source address, through curl (std cannot bind the
/// source address of a connection).
fn pxe_from(s: &Server, source: &str, mac: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--interface", source])
        .arg(format!("http://{}/pxe/{mac}", s.addr))
        .output()
        .expect("running curl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let body = String::from_utf8(out.stdout).unwrap();
    assert!(body.starts_with("#!ipxe\n"), "{body}");
    body
}

#[test]
fn the_discovery_rate_limits_one_address_while_another_still_discovers() {
    let s = Server::start_env("discovery-rate", &[("BTY_PXE_DISCOVERIES_PER_MINUTE", "5")]);
    let c = s.login();
    // The window is a minute from the start, and these contacts come right after it.
    let answers: Vec<(String, String)> = (0..8)
        .map(|i| {
            let mac = format!("52:54:00:0d:00:{i:02x}");
            let script = s.pxe(&mac);
            (mac, script)
        })
        .collect();
    for (i, (mac, script)) in answers.iter().enumerate() {
        if i < 5 {
            assert!(is_live(script), "{mac}: {script}");
        } else {
            assert!(
                script.contains("[pxe] discoveries_per_minute = 5 from 127.0.0.1")
                    && script.ends_with("\nexit\n"),
                "{mac}: {script}"
            );
        }
    }
    for i in 0..3 {
        let script = pxe_from(&s, "127.0.0.2", &format!("52:54:00:0d:01:{i:02x}"));
        assert!(is_live(&script), "another address still discovers: {script}");
    }
    let all = macs(&s, &c);
    assert_eq!(all.len(), 8, "{all:?}");
    assert!(answers[5..].iter().all(|(m, _)| !all.contains(m)), "refusals write nothing");
    // A known machine from the limited address is still answered and its contact recorded.
    assert!(is_live(&pxe_from(&s, "127.0.0.3", &answers[0].0)));
    let (_, _, body) = s.call("GET", &format!("/machines/{}", answers[0].0), Some(&c), "");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["last_seen_ip"], "127.0.0.3");
    let capped = events_of(&s, &c, "pxe.discovery.capped");
    assert_eq!(capped.len(), 1, "{capped:?}");
    assert_eq!(capped[0]["details"]["reason"], "rate");
    assert!(metrics(&s, &c).contains("bty_pxe_discoveries_refused_total{reason=\"rate\"} 3"));
}

#[test]
fn the_lshw_total_cap_keeps_the_disks_and_drops_the_new_blob() {
    let s = Server::start_env("lshw-cap", &[("BTY_PXE_MAX_LSHW_TOTAL_MIB", "1")]);
    let c = s.login();
    let (a, b) = ("52:54:00:0e:00:01", "52:54:00:0e:00:02");
    s.pxe(a);
    s.pxe(b);
    let inv = |serial: &str, lshw: &str| {
        format!(
            r#"{{"disks":[{{"path":"/dev/vda","size":"8G","serial":"{serial}","tran":null,"removable":false,"readonly":false,"vendor":null,"model":null}}],"lshw":{lshw}}}"#
        )
    };
    let big = |tag: &str| format!(r#"{{"id":"{tag}","blob":"{}"}}"#, "x".repeat(600_000));
    let post = |mac: &str, body: &str| s.call("POST", &format!("/pxe/{mac}/inventory"), None, body);
    let lshw = |mac: &str| s.call("GET", &format!("/machines/{mac}/lshw.json"), Some(&c), "");
    assert_eq!(post(a, &inv("A-1", &big("a"))).0, 204);
    assert_eq!(post(b, &inv("B-1", r#"{"id":"b-small"}"#)).0, 204);
    // B's big blob would take the total past 1 MiB: the disks go in, the blob does not, and
    // B keeps its previous one.
    assert_eq!(post(b, &inv("B-2", &big("b"))).0, 204);
    let (st, _, body) = s.call("GET", &format!("/machines/{b}/disks.json"), Some(&c), "");
    assert!(st == 200 && body.contains("B-2"), "{st} {body}");
    let (st, _, blob) = lshw(b);
    assert_eq!((st, blob.as_str()), (200, r#"{"id":"b-small"}"#));
    assert!(lshw(a).2.contains(r#""id":"a""#), "A's blob is untouched");
    let capped = events_of(&s, &c, "pxe.discovery.capped");
    assert_eq!(capped.len(), 1, "{capped:?}");
    assert_eq!(capped[0]["details"]["reason"], "lshw_total");
    // Again: counted, but no second event.
    assert_eq!(post(b, &inv("B-3", &big("b"))).0, 204);
    assert_eq!(events_of(&s, &c, "pxe.discovery.capped").len(), 1);
    assert!(metrics(&s, &c).contains("bty_pxe_lshw_dropped_total 2"));
    // A smaller replacement always fits; the room it frees lets B's blob in.
    assert_eq!(post(a, &inv("A-2", r#"{"id":"a-small"}"#)).0, 204);
    assert_eq!(lshw(a).2, r#"{"id":"a-small"}"#);
    assert_eq!(post(b, &inv("B-4", &big("b"))).0, 204);
    assert!(lshw(b).2.contains(r#""id":"b""#));
    // Deleting a machine gives its bytes back.
    assert_eq!(s.call("DELETE", &format!("/machines/{b}"), Some(&c), "").0, 204);
    assert_eq!(post(a, &inv("A-3", &big("a2"))).0, 204);
    assert!(lshw(a).2.contains(r#""id":"a2""#));
}

#[test]
fn stale_unclaimed_discoveries_expire_with_one_event() {
    let s = Server::start("discovery-ttl");
    let c = s.login();
    let (stale, fresh, claimed) = ("52:54:00:0f:00:01", "52:54:00:0f:00:02", "52:54:00:0f:00:03");
    for mac in [stale, fresh, claimed] {
        s.pxe(mac);
    }
    let body = r#"{"boot_mode":"ipxe-exit"}"#;
    assert_eq!(s.call("PUT", &format!("/machines/{claimed}"), Some(&c), body).0, 200);
    let state = s.state.clone();
    s.stop_keeping_state();
    // Two days without a contact, for the stale one and the claimed one.
    {
        let db = rusqlite::Connection::open(state.join("state.db")).unwrap();
        let n = db
            .execute(
                "UPDATE machines SET last_seen_at = '2000-01-01T00:00:00Z' WHERE mac IN (?1, ?2)",
                [stale, claimed],
            )
            .unwrap();
        assert_eq!(n, 2);
    }
    // Without a TTL (the default) nothing goes.
    let s = Server::start_in(state.clone());
    let c = s.login();
    assert_eq!(macs(&s, &c).len(), 3);
    assert!(events_of(&s, &c, "pxe.discovery.expired").is_empty());
    s.stop_keeping_state();
    // With one, the start's sweep deletes the stale unclaimed discovery and only it.
    let s = Server::start_in_env(state, &[("BTY_PXE_DISCOVERED_TTL_DAYS", "1")]);
    let c = s.login();
    let mut left = macs(&s, &c);
    left.sort();
    assert_eq!(left, vec![fresh.to_string(), claimed.to_string()]);
    let expired = events_of(&s, &c, "pxe.discovery.expired");
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["details"]["count"], 1);
    assert!(metrics(&s, &c).contains("\nbty_pxe_unclaimed_machines 1\n"), "the fresh one");
    assert!(expired[0]["message"].as_str().unwrap().contains("deleted 1 discovered machine"));
    // The machine comes back as a new discovery when it boots again.
    assert!(is_live(&s.pxe(stale)));
}

#[test]
fn inventory_contract_404_before_the_first_and_an_oversize_lshw_keeps_the_disks() {
    let s = Server::start("inventory-contract");
    let c = s.login();
    let mac = "52:54:00:0f:00:01";
    s.pxe(mac);
    let get = |p: &str| s.call("GET", &format!("/machines/{mac}/{p}"), Some(&c), "");
    // Discovered, never inventoried: both downloads are 404 with the reason, not `[]`.
    let (st, _, body) = get("disks.json");
    assert_eq!(
        (st, body.as_str()),
        (404, r#"{"detail":"no inventory for 52:54:00:0f:00:01 yet"}"#)
    );
    let (st, _, body) = get("lshw.json");
    assert!(st == 404 && body.contains("no lshw data"), "{st} {body}");
    let disks = |serial: &str| {
        format!(
            r#"[{{"path":"/dev/vda","size":"8G","serial":"{serial}","tran":null,"removable":false,"readonly":false,"vendor":null,"model":null}}]"#
        )
    };
    let post = |body: &str| s.call("POST", &format!("/pxe/{mac}/inventory"), None, body).0;
    assert_eq!(post(&format!(r#"{{"disks":{},"lshw":{{"id":"first"}}}}"#, disks("D-1"))), 204);
    let (st, _, body) = get("disks.json");
    assert!(st == 200 && body.contains("D-1"), "{st} {body}");
    let blob = |mib: usize| format!(r#"{{"id":"huge","pad":"{}"}}"#, "x".repeat(mib << 20));

    // lshw over its 2 MiB cap in a body the server holds (4 MiB): the disks are stored, the
    // previous tree kept.
    let body = format!(r#"{{"disks":{},"lshw":{}}}"#, disks("D-2"), blob(3));
    assert!(body.len() < 4 << 20);
    assert_eq!(post(&body), 204);
    assert!(get("disks.json").2.contains("D-2"));
    assert_eq!(get("lshw.json").2, r#"{"id":"first"}"#);

    // A body over the 4 MiB held: read through, not refused; the disks still land, whichever
    // comes first.
    for (serial, body) in [
        ("D-3", format!(r#"{{"disks":{},"lshw":{}}}"#, disks("D-3"), blob(9))),
        ("D-4", format!(r#"{{"lshw":{}, "disks":{}}}"#, blob(9), disks("D-4"))),
    ] {
        assert_eq!(post(&body), 204, "{serial}");
        let (st, _, got) = get("disks.json");
        assert!(st == 200 && got.contains(serial), "{serial}: {st} {got}");
        assert_eq!(get("lshw.json").2, r#"{"id":"first"}"#, "{serial}");
    }
    // Read through is still checked: broken JSON, an unknown key, bad disks, no disks.
    let big = "x".repeat(5 << 20);
    for (body, want) in [
        (format!(r#"{{"disks":{},"lshw":["{big}""#, disks("E")), "body is not valid JSON"),
        (format!(r#"{{"disks":{},"junk":"{big}"}}"#, disks("E")), "junk: unknown field"),
        (format!(r#"{{"disks":[{{"path":"/etc/passwd"}}],"lshw":"{big}"}}"#), "disks[0].path"),
        (format!(r#"{{"lshw":"{big}"}}"#), "disks: required"),
    ] {
        let (st, _, got) = s.call("POST", &format!("/pxe/{mac}/inventory"), None, &body);
        assert!(st == 422 && got.contains(want), "{want}: {st} {got}");
    }
    assert!(get("disks.json").2.contains("D-4"), "refused posts changed nothing");
    // An unknown MAC with a long body: 404, readable.
    let other = "52:54:00:0f:00:99";
    let body = format!(r#"{{"disks":[],"lshw":{}}}"#, blob(5));
    assert_eq!(s.call("POST", &format!("/pxe/{other}/inventory"), None, &body).0, 404);
}
