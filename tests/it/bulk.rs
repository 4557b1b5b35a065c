//! Bulk assignment through the real bty-web on 127.0.0.1: `POST /machines/bulk` (preview, all
//! or nothing, the single PUT's validation, one event per changed machine, disk rules resolved
//! from each machine's stored inventory and the machines they do not resolve on left alone and
//! listed, hostile input), and the machines page's flow in headless Chromium (tick, preview,
//! apply).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::Server;
use crate::util::webdriver::Driver;

const REF: &str = "abababababababababababababababababababababababababababababababab";

/// One machine on one fixed disk (and a USB stick), one on two fixed disks, one with no
/// inventory, all labelled rack3; one more elsewhere.
const M1: &str = "02:00:00:00:0b:01";
const M2: &str = "02:00:00:00:0b:02";
const M3: &str = "02:00:00:00:0b:03";
const M4: &str = "02:00:00:00:0b:04";

fn disk(path: &str, size: &str, serial: &str, model: &str, tran: &str, removable: bool) -> Value {
    json!({"path": path, "size": size, "vendor": null, "model": model, "serial": serial,
           "tran": tran, "removable": removable, "readonly": false})
}

fn lab(s: &Server, c: &str) {
    for (mac, labels) in [(M1, "rack3"), (M2, "rack3"), (M3, "rack3"), (M4, "other")] {
        let body = json!({ "labels": [labels] }).to_string();
        assert_eq!(s.call("PUT", &format!("/machines/{mac}"), Some(c), &body).0, 200);
    }
    let inv1 = json!({"disks": [
        disk("/dev/vda", "20G", "VD-1", "virt disk", "virtio", false),
        disk("/dev/sdb", "64G", "STICK-1", "Stick", "usb", true),
    ]});
    let inv2 = json!({"disks": [
        disk("/dev/sda", "500G", "SSD-2A", "Fast SSD", "sata", false),
        disk("/dev/nvme0n1", "1.8T", "NV-2B", "Big NVMe", "nvme", false),
    ]});
    for (mac, inv) in [(M1, inv1), (M2, inv2)] {
        let (st, _, body) =
            s.call("POST", &format!("/pxe/{mac}/inventory"), None, &inv.to_string());
        assert_eq!(st, 204, "{body}");
    }
}

fn machine(s: &Server, c: &str, mac: &str) -> Value {
    let (st, _, body) = s.call("GET", &format!("/machines/{mac}"), Some(c), "");
    assert_eq!(st, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn updates(s: &Server, c: &str, mac: &str) -> usize {
    let (_, _, body) =
        s.call("GET", &format!("/events?kind=machine.updated&subject_id={mac}"), Some(c), "");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["events"].as_array().map_or(0, Vec::len)
}

fn bulk(s: &Server, c: &str, body: &Value) -> (u16, Value) {
    let (st, _, text) = s.call("POST", "/machines/bulk", Some(c), &body.to_string());
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (st, v)
}

/// Every machine as the API shows it, to compare before and after a refused request.
fn snapshot(s: &Server, c: &str) -> String {
    s.call("GET", "/machines", Some(c), "").2
}

#[test]
fn bulk_api_previews_applies_all_or_nothing_and_lists_unresolved() {
    let s = Server::start("bulk-api");
    let c = s.login();
    lab(&s, &c);
    let events_before: Vec<usize> = [M1, M2, M3, M4].map(|m| updates(&s, &c, m)).to_vec();
    let set = json!({"bty_image_ref": REF, "boot_mode": "bty-flash-once",
                     "labels": {"add": ["bulk"]}, "target_disk": {"rule": "largest"}});

    // A preview changes nothing and shows each machine's before, after and resolved disk.
    let before = snapshot(&s, &c);
    let (st, v) = bulk(&s, &c, &json!({"select": {"label": "rack3"}, "set": set, "dry_run": true}));
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["applied"].as_bool(), v["would_change"].as_u64()), (Some(false), Some(2)), "{v}");
    let ms = v["machines"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "{v}");
    assert_eq!(ms[0]["mac"], M1);
    assert_eq!(ms[0]["after"]["target_disk_serial"], "VD-1", "a USB disk is never the target");
    assert_eq!(ms[0]["target_disk"]["path"], "/dev/vda");
    assert_eq!(ms[1]["after"]["target_disk_serial"], "NV-2B", "1.8T beats 500G");
    assert_eq!(ms[1]["before"]["target_disk_serial"], Value::Null);
    assert_eq!(ms[1]["after"]["labels"], json!(["bulk", "rack3"]));
    assert_eq!(v["unresolved"][0]["mac"], M3, "{v}");
    assert!(v["unresolved"][0]["reason"].as_str().unwrap().starts_with("no inventory"), "{v}");
    assert_eq!(snapshot(&s, &c), before, "a preview writes nothing");

    // The rule "only fixed disk" does not resolve on a machine with two: it is listed.
    let (_, v) = bulk(
        &s,
        &c,
        &json!({"select": {"macs": [M2]}, "set": {"target_disk": {"rule": "only-fixed"}},
                "dry_run": true}),
    );
    let why = v["unresolved"][0]["reason"].as_str().unwrap();
    assert!(why.starts_with("2 fixed disks (/dev/sda, /dev/nvme0n1)"), "{v}");

    // All or nothing: one field failing the single PUT's checks, or one machine that would,
    // refuses the whole request and changes nothing.
    let refused = [
        (
            json!({"select": {"label": "rack3"}, "set": {"labels": {"add": ["ok", "<script>"]}}}),
            422,
            "set.labels.add[1]: must start with a letter or digit",
        ),
        (
            json!({"select": {"label": "<script>"}, "set": {"boot_mode": "bty-tui"}}),
            422,
            "select.label: must start",
        ),
        (
            json!({"select": {"macs": [M1, "02:00:00:00:0b:99"]}, "set": {"boot_mode": "bty-tui"}}),
            404,
            "select.macs[1]: no machine record for 02:00:00:00:0b:99",
        ),
        (
            json!({"select": {"macs": [M1, "not-a-mac"]}, "set": {"boot_mode": "bty-tui"}}),
            422,
            "select.macs[1]: ",
        ),
        (
            json!({"select": {"macs": [M4, M1]}, "set": {"boot_mode": "bty-flash-once"}}),
            422,
            "02:00:00:00:0b:01: would be refused: target_disk_serial: required",
        ),
        (
            json!({"select": {"label": "rack3"}, "set": {"bty_image_ref": "nope"}}),
            422,
            "set.bty_image_ref: must be 64 hex digits",
        ),
        (
            json!({"select": {"label": "rack3"}, "set": {"boot_mode": "bty-tui", "mac": M1}}),
            422,
            "set.mac: unknown field",
        ),
        (
            json!({"select": {"label": "nobody"}, "set": {"boot_mode": "bty-tui"}}),
            422,
            "select: no machine has the label",
        ),
        (
            json!({"select": {"label": "rack3"}, "set": {"boot_mode": "bty-tui"}, "expect": "00"}),
            409,
            "the machines changed since the preview",
        ),
    ];
    for (body, status, detail) in refused {
        let (st, v) = bulk(&s, &c, &body);
        assert_eq!(st, status, "{body}: {v}");
        let d = v["detail"].as_str().unwrap_or("");
        assert!(d.starts_with(detail), "{body}: {d}");
        assert_eq!(snapshot(&s, &c), before, "{body} changed something");
    }
    // A label that is not even a string, a non-object body, no session.
    let (st, _, _) = s.call("POST", "/machines/bulk", Some(&c), r#"{"select":{"label":3}}"#);
    assert_eq!(st, 422);
    assert_eq!(s.call("POST", "/machines/bulk", Some(&c), "[]").0, 422);
    assert_eq!(s.call("POST", "/machines/bulk", None, "{}").0, 401);
    // An oversize body is refused from its head, before it is read.
    let mut t = TcpStream::connect(&s.addr).unwrap();
    write!(
        t,
        "POST /machines/bulk HTTP/1.1\r\nHost: {}\r\nCookie: {c}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        s.addr,
        1 << 20
    )
    .unwrap();
    let mut out = String::new();
    let _ = t.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert_eq!(snapshot(&s, &c), before);

    // Apply the previewed change: the fingerprint still matches, two machines change, the
    // machine the rule does not resolve on stays as it was, one event per changed machine.
    let (_, preview) =
        bulk(&s, &c, &json!({"select": {"label": "rack3"}, "set": set, "dry_run": true}));
    let (st, v) = bulk(
        &s,
        &c,
        &json!({"select": {"label": "rack3"}, "set": set, "expect": preview["fingerprint"]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["applied"].as_bool(), v["changed"].as_u64()), (Some(true), Some(2)), "{v}");
    assert_eq!(v["unresolved"][0]["mac"], M3);
    let m1 = machine(&s, &c, M1);
    assert_eq!(
        (m1["boot_mode"].as_str(), m1["bty_image_ref"].as_str()),
        (Some("bty-flash-once"), Some(REF))
    );
    assert_eq!(m1["target_disk_serial"], "VD-1");
    assert_eq!(m1["labels"], json!(["bulk", "rack3"]));
    assert_eq!(machine(&s, &c, M2)["target_disk_serial"], "NV-2B");
    let m3 = machine(&s, &c, M3);
    assert_eq!(
        (m3["boot_mode"].as_str(), m3["labels"].clone()),
        (Some("ipxe-exit"), json!(["rack3"]))
    );
    let after: Vec<usize> = [M1, M2, M3, M4].map(|m| updates(&s, &c, m)).to_vec();
    let added: Vec<usize> = after.iter().zip(&events_before).map(|(a, b)| a - b).collect();
    assert_eq!(added, [1, 1, 0, 0], "one event per changed machine");

    // The same request again changes nothing and records nothing; removing a label is a change.
    let (_, v) = bulk(&s, &c, &json!({"select": {"label": "rack3"}, "set": set}));
    assert_eq!(v["changed"], 0, "{v}");
    let (_, v) = bulk(
        &s,
        &c,
        &json!({"select": {"filter": {"q": "0b:0", "status": "assigned"}},
                "set": {"labels": {"remove": ["bulk"]}}}),
    );
    assert_eq!(v["changed"], 2, "{v}");
    assert_eq!(machine(&s, &c, M2)["labels"], json!(["rack3"]));
    let last: Vec<usize> = [M1, M2, M3, M4].map(|m| updates(&s, &c, m)).to_vec();
    assert_eq!(last.iter().zip(&after).map(|(a, b)| a - b).collect::<Vec<_>>(), [1, 1, 0, 0]);
}

#[test]
fn bulk_change_on_the_machines_page_in_headless_chromium() {
    let s = Server::start("bulk-browser");
    let c = s.login();
    lab(&s, &c);
    s.seed_catalog(REF, "https://images.example/debian.img.zst");
    let d = Driver::start("bulk");
    let base = format!("http://{}", s.addr);
    d.log_in(&base);

    d.goto(&format!("{base}/ui/machines"));
    assert!(
        d.wait(Duration::from_secs(5), |d| d.text_of("#live-state").contains("live")),
        "the live stream did not connect"
    );
    // Tick three rows: two resolve to a disk, one has no inventory.
    for mac in [M1, M2, M3] {
        let id = mac.replace(':', "");
        d.click(&d.find(&format!("#m-{id} input[name=mac]")));
    }
    d.select("#bulk-image", REF);
    d.select("#bulk-mode", "bty-flash-once");
    d.type_into(&d.find("#bulk-add"), "rack 9");
    d.select("#bulk-disk", "largest");
    d.screenshot("bulk-01-form");
    d.click(&d.find("#bulk-preview-button"));
    assert!(
        d.wait(Duration::from_secs(5), |d| !d.find_all("#bulk-preview").is_empty()),
        "no preview: {}",
        d.url()
    );
    let row1 = d.text_of("#p-020000000b01");
    assert!(row1.contains("VD-1") && row1.contains("bty-flash-once"), "{row1}");
    assert!(d.text_of("#p-020000000b02").contains("NV-2B"));
    assert!(d.text_of("#bulk-unresolved").contains(M3), "{}", d.text_of("#bulk-unresolved"));
    assert!(
        d.text_of("#bulk-summary").contains("2 would change"),
        "{}",
        d.text_of("#bulk-summary")
    );
    d.screenshot("bulk-02-preview");
    assert_eq!(machine(&s, &c, M1)["boot_mode"], "ipxe-exit", "the preview wrote nothing");

    d.click(&d.find("#bulk-apply button"));
    assert!(
        d.wait(Duration::from_secs(5), |d| d
            .text_of(".flash")
            .starts_with("Changed 2 machine(s).")),
        "{}",
        d.text_of(".flash")
    );
    assert!(d.text_of(".flash").contains(M3), "the unresolved machine is named");
    assert!(
        d.wait(Duration::from_secs(5), |d| {
            let r = d.text_of("#m-020000000b01");
            r.contains("bty-flash-once") && r.contains("rack 9")
        }),
        "{}",
        d.text_of("#m-020000000b01")
    );
    assert!(d.text_of("#m-020000000b03").contains("ipxe-exit"));
    d.screenshot("bulk-03-applied");
    let m2 = machine(&s, &c, M2);
    assert_eq!(
        (m2["target_disk_serial"].as_str(), m2["bty_image_ref"].as_str()),
        (Some("NV-2B"), Some(REF))
    );
    assert_eq!(machine(&s, &c, M3)["labels"], json!(["rack3"]));
}

/// A same-origin form post, as a browser without JavaScript sends it.
fn post_form(s: &Server, cookie: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut t = TcpStream::connect(&s.addr).unwrap();
    write!(
        t,
        "POST {path} HTTP/1.1\r\nHost: {a}\r\nCookie: {cookie}\r\nOrigin: http://{a}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len(),
        a = s.addr
    )
    .unwrap();
    let mut out = String::new();
    let _ = t.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

#[test]
fn bulk_forms_work_without_javascript_and_refuse_without_changing() {
    let s = Server::start("bulk-forms");
    let c = s.login();
    lab(&s, &c);
    let before = snapshot(&s, &c);
    // Script-looking labels are refused by the API's own parser: back to the page, nothing saved.
    let (st, head, _) = post_form(
        &s,
        &c,
        "/ui/machines/bulk/preview",
        "select=label&select_label=rack3&labels_add=%3Cscript%3E",
    );
    assert_eq!(st, 303, "{head}");
    assert!(head.contains("Nothing%20changed%3A%20set.labels.add%5B0%5D"), "{head}");
    let (st, head, _) =
        post_form(&s, &c, "/ui/machines/bulk/preview", "select=macs&boot_mode=bty-tui");
    assert_eq!(st, 303, "nothing ticked: {head}");
    assert_eq!(snapshot(&s, &c), before);

    let (st, _, page) = post_form(
        &s,
        &c,
        "/ui/machines/bulk/preview",
        "select=label&select_label=rack3&boot_mode=bty-tui&disk=only-fixed",
    );
    assert_eq!(st, 200, "{page}");
    crate::util::html::check(&page).unwrap_or_else(|e| panic!("preview markup: {e}\n{page}"));
    assert!(page.contains("id=\"bulk-unresolved\"") && page.contains("2 fixed disks"), "{page}");
    assert_eq!(snapshot(&s, &c), before, "a preview writes nothing");
    let fp = page
        .split("name=\"expect\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the apply form carries the preview's fingerprint")
        .to_string();
    // A stale fingerprint shows the new preview instead of applying.
    let stale = format!(
        "select=macs&mac={M1}&mac={M2}&mac={M3}&boot_mode=bty-tui&disk=only-fixed&expect=00"
    );
    let (st, _, again) = post_form(&s, &c, "/ui/machines/bulk/apply", &stale);
    assert_eq!(st, 409);
    assert!(again.contains("Not applied") && again.contains("id=\"bulk-apply\""), "{again}");
    assert_eq!(snapshot(&s, &c), before);
    let apply = format!(
        "select=macs&mac={M1}&mac={M2}&mac={M3}&boot_mode=bty-tui&disk=only-fixed&expect={fp}"
    );
    let (st, head, _) = post_form(&s, &c, "/ui/machines/bulk/apply", &apply);
    assert_eq!(st, 303, "{head}");
    assert!(head.contains("Changed%201%20machine"), "{head}");
    assert_eq!(machine(&s, &c, M1)["boot_mode"], "bty-tui");
    assert_eq!(machine(&s, &c, M1)["target_disk_serial"], "VD-1");
    assert_eq!(machine(&s, &c, M2)["boot_mode"], "ipxe-exit", "its rule did not resolve");
}
