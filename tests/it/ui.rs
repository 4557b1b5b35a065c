//! The browser UI over real HTTP, without a browser: every page well-formed with an empty state
//! and with 500 machines, links that resolve, forms that work without JavaScript (POST → 303 →
//! flash), validation errors shown next to the field, escaping, CSRF refusal, CSP, ETags.
//! The browser module drives the same pages in headless Chromium.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use crate::util;
use crate::util::Server;
use crate::util::html;

/// One request with extra headers; returns (status, lower-cased head, body).
fn req(
    s: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    req_to(s, &s.addr, method, path, headers, body)
}

/// As `req`, with the Host header the client claims.
fn req_to(
    s: &Server,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(body).unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    let (h, b) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = h.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    // Header names and values lower-cased for matching, except cookie values (flash messages).
    let head = h
        .lines()
        .map(|l| match l.split_once(": ") {
            Some((n, v)) if n.eq_ignore_ascii_case("set-cookie") => format!("set-cookie: {v}"),
            _ => l.to_ascii_lowercase(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    (status, head, b.to_string())
}

fn get(s: &Server, cookie: &str, path: &str) -> (u16, String, String) {
    req(s, "GET", path, &[("Cookie", cookie)], b"")
}

/// A same-origin form post, as a browser sends it.
fn post_form(s: &Server, cookie: &str, path: &str, body: &str) -> (u16, String, String) {
    let origin = format!("http://{}", s.addr);
    req(
        s,
        "POST",
        path,
        &[
            ("Cookie", cookie),
            ("Origin", &origin),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    )
}

fn flash_cookie(head: &str) -> String {
    head.lines()
        .find(|l| l.starts_with("set-cookie: bty-flash="))
        .map(|l| l.trim_start_matches("set-cookie: ").split(';').next().unwrap().to_string())
        .unwrap_or_default()
}

/// Posts a form, follows the 303 with the flash cookie, and returns (location, page).
fn post_and_follow(s: &Server, cookie: &str, path: &str, body: &str) -> (String, String) {
    let (st, head, _) = post_form(s, cookie, path, body);
    assert_eq!(st, 303, "{path}: {head}");
    let loc = head.lines().find_map(|l| l.strip_prefix("location: ")).unwrap().trim().to_string();
    let flash = flash_cookie(&head);
    let page_path = loc.split('#').next().unwrap();
    let (st, _, page) = get(s, &format!("{cookie}; {flash}"), page_path);
    assert_eq!(st, 200, "{loc}");
    (loc, page)
}

fn pxe(s: &Server, mac: &str) {
    let (st, _, body) = s.call("GET", &format!("/pxe/{mac}"), None, "");
    assert_eq!(st, 200, "{body}");
}

/// Every page once; each must be well-formed, carry the CSP, and link only to routes that exist.
fn check_pages(s: &Server, cookie: &str, mac: Option<&str>) -> Vec<(String, usize, f64)> {
    let mut pages: Vec<String> =
        ["dashboard", "machines", "images", "netboot", "backups", "events", "settings", "account"]
            .iter()
            .map(|p| format!("/ui/{p}"))
            .collect();
    pages.push("/ui/machines?q=aa&label=rack-1&status=discovered".into());
    pages.push("/ui/events?unacked=1&kind=pxe.discovered".into());
    if let Some(m) = mac {
        pages.push(format!("/ui/machines/{m}"));
    }
    let mut stats = Vec::new();
    let mut links = std::collections::BTreeSet::new();
    for p in &pages {
        let t = Instant::now();
        let (st, head, body) = get(s, cookie, p);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(st, 200, "{p}: {body}");
        assert!(
            head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
            "{p}: {head}"
        );
        assert!(!body.contains("{{"), "{p}: a placeholder was left unfilled");
        html::check(&body).unwrap_or_else(|e| panic!("{p}: {e}"));
        for l in html::attr_values(&body, "href").into_iter().chain(html::attr_values(&body, "src"))
        {
            if l.starts_with('/') {
                links.insert(l.split('#').next().unwrap().to_string());
            } else {
                assert!(l.starts_with('#'), "{p}: external link {l}");
            }
        }
        for a in html::attr_values(&body, "action") {
            let ok = a == "/ui/logout"
                || a == "/ui/machines"
                || a == "/ui/events"
                || a.starts_with("/ui/machines/")
                || a.starts_with("/ui/events/") && a.ends_with("/ack")
                || [
                    "/ui/catalog/entries",
                    "/ui/catalog/upload",
                    "/ui/catalog/delete",
                    "/ui/catalog/fetch-release",
                    "/ui/netboot/upload",
                    "/ui/netboot/fetch-release",
                    "/ui/backups/run",
                    "/ui/settings/backup",
                    "/ui/settings/upstream",
                    "/ui/settings/config/edit",
                ]
                .contains(&a.as_str());
            assert!(ok, "{p}: form action {a} is not a route");
        }
        stats.push((p.clone(), body.len(), ms));
    }
    for l in links {
        let (st, _, _) = get(s, cookie, &l);
        assert!(st == 200 || st == 304, "link {l} answers {st}");
    }
    stats
}

#[test]
fn every_page_is_well_formed_empty_and_with_500_machines() {
    // 500 discoveries from one address, past the default discovery rate.
    let s = Server::start_env("ui-pages", &[("BTY_PXE_DISCOVERIES_PER_MINUTE", "0")]);
    let cookie = s.login();
    check_pages(&s, &cookie, None);
    for i in 0..500u32 {
        pxe(&s, &format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 0xff));
    }
    for i in 0..50u32 {
        let mac = format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 0xff);
        let body =
            format!(r#"{{"labels": ["rack-{}", "noisy box"], "boot_mode": "ipxe-exit"}}"#, i % 4);
        assert_eq!(s.call("PUT", &format!("/machines/{mac}"), Some(&cookie), &body).0, 200);
    }
    let stats = check_pages(&s, &cookie, Some("02:00:00:00:00:01"));
    for (p, size, ms) in &stats {
        eprintln!("{p}: {size} bytes, {ms:.1} ms (debug build, over loopback)");
    }
    let (_, size, _) = stats.iter().find(|(p, ..)| p == "/ui/machines").unwrap();
    assert!(*size < 300_000, "the 500-machine page is {size} bytes");
    let (_, _, body) = get(&s, &cookie, "/ui/machines");
    assert_eq!(body.matches("<tr id=\"m-").count(), 100, "the first page");
    assert!(body.contains("rows 1–100 of 500 matching, 500 machines in all"), "{body}");
    let (_, _, body) = get(&s, &cookie, "/ui/machines?per=500");
    assert_eq!(body.matches("<tr id=\"m-").count(), 500);
    let p = r#"{"phase": "writing", "written_bytes": 512, "total_bytes": 2048}"#;
    assert_eq!(s.call("POST", "/pxe/02:00:00:00:00:05/progress", None, p).0, 204);
    let (_, _, body) = get(&s, &cookie, "/ui/machines?q=02:00:00:00:00:05");
    assert!(
        body.contains("<progress max=\"2048\" value=\"512\"") && body.contains("writing 25%"),
        "{body}"
    );
    let (_, _, body) = get(&s, &cookie, "/ui/machines?label=rack-1");
    assert_eq!(body.matches("<tr id=\"m-").count(), 13, "label filter");
    let (_, _, body) = get(&s, &cookie, "/ui/machines?status=discovered&q=02:00:00:00:01");
    assert_eq!(body.matches("<tr id=\"m-").count(), 100, "text and state filters, paged");
    assert!(body.contains("of 244 matching"), "{body}");
}

#[test]
fn pages_need_a_session_and_static_assets_revalidate() {
    let s = Server::start("ui-auth");
    for p in ["/ui/dashboard", "/ui/machines", "/ui/machines/02:00:00:00:00:01", "/ui/settings"] {
        let (st, head, _) = req(&s, "GET", p, &[], b"");
        assert_eq!(st, 303, "{p}");
        assert!(head.contains("location: /ui/login"), "{p}: {head}");
    }
    let (st, head, _) =
        req(&s, "POST", "/ui/machines/02:00:00:00:00:01", &[], b"boot_mode=bty-tui");
    assert!(st == 303 && head.contains("location: /ui/login"), "form posts too: {head}");
    let (st, head, body) = req(&s, "GET", "/ui/login", &[], b"");
    assert_eq!(st, 200);
    assert!(head.contains("content-security-policy"));
    html::check(&body).unwrap();
    let (st, head, css) = req(&s, "GET", "/static/style.css", &[], b"");
    assert_eq!(st, 200);
    assert!(head.contains("content-type: text/css"));
    assert!(css.contains("prefers-color-scheme: dark"));
    let etag = head.lines().find_map(|l| l.strip_prefix("etag: ")).unwrap().trim().to_string();
    let (st, _, body) = req(&s, "GET", "/static/style.css", &[("If-None-Match", &etag)], b"");
    assert_eq!((st, body.as_str()), (304, ""));
    let (st, head, js) = req(&s, "GET", "/static/app.js", &[], b"");
    assert_eq!(st, 200);
    assert!(head.contains("content-type: text/javascript"));
    assert!(
        js.contains("EventSource") && !js.contains("innerHTML"),
        "rows are built as text nodes"
    );
    assert_eq!(req(&s, "GET", "/static/nope.js", &[], b"").0, 404);
}

#[test]
fn machine_form_saves_without_javascript_and_reports_errors_at_the_field() {
    let s = Server::start("ui-form");
    let cookie = s.login();
    let mac = "02:00:00:00:00:07";
    pxe(&s, mac);
    let inv = r#"{"disks": [{"path": "/dev/sda", "size": "20G", "vendor": "ATA", "model": "QEMU HARDDISK", "serial": "QM0001", "tran": "sata", "removable": false, "readonly": false}]}"#;
    assert_eq!(s.call("POST", &format!("/pxe/{mac}/inventory"), None, inv).0, 204);
    let (st, _, entry) = s.call(
        "POST",
        "/catalog/entries",
        Some(&cookie),
        r#"{"image_url": "https://images.example/debian-12.img.zst"}"#,
    );
    assert_eq!(st, 201, "{entry}");
    let image_ref = serde_json::from_str::<serde_json::Value>(&entry).unwrap()["bty_image_ref"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, _, page) = get(&s, &cookie, &format!("/ui/machines/{mac}"));
    assert!(
        page.contains("QM0001") && page.contains("debian-12.img.zst"),
        "disk and image offered"
    );

    // A flash mode without a disk: the form comes back with the input and the message.
    let (st, _, page) = post_form(
        &s,
        &cookie,
        &format!("/ui/machines/{mac}"),
        &format!(
            "bty_image_ref={image_ref}&target_disk_serial=&boot_mode=bty-flash-once&labels=rack+1%2C+%3Cscript%3Ealert(1)%3C%2Fscript%3E&sanboot_drive="
        ),
    );
    assert_eq!(st, 422);
    html::check(&page).unwrap();
    assert!(page.contains("class=\"field-error\""), "{page}");
    assert!(
        page.contains("labels[1]: must start with a letter or digit"),
        "the label error first: {page}"
    );
    assert!(
        page.contains("value=\"rack 1, &lt;script&gt;alert(1)&lt;/script&gt;\""),
        "input kept, escaped"
    );
    assert!(!page.contains("<script>alert"), "no markup from input");
    let (st, _, page) = post_form(
        &s,
        &cookie,
        &format!("/ui/machines/{mac}"),
        &format!(
            "bty_image_ref={image_ref}&target_disk_serial=&boot_mode=bty-flash-once&labels=rack+1&sanboot_drive="
        ),
    );
    assert_eq!(st, 422);
    assert!(
        page.contains("target_disk_serial: required when boot_mode is bty-flash-once"),
        "{page}"
    );

    let (loc, page) = post_and_follow(
        &s,
        &cookie,
        &format!("/ui/machines/{mac}"),
        &format!(
            "csrf=x&bty_image_ref={image_ref}&target_disk_serial=QM0001&boot_mode=bty-flash-once&labels=rack+1%2C+web&sanboot_drive=0x81"
        ),
    );
    assert_eq!(loc, format!("/ui/machines/{mac}"));
    assert!(page.contains(&format!("Saved {mac}.")), "flash message shown");
    let (_, _, json) = s.call("GET", &format!("/machines/{mac}"), Some(&cookie), "");
    let m: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(m["boot_mode"], "bty-flash-once");
    assert_eq!(m["target_disk_serial"], "QM0001");
    assert_eq!(m["bty_image_ref"], image_ref.as_str());
    assert_eq!(m["labels"], serde_json::json!(["rack 1", "web"]));
    assert_eq!(m["sanboot_drive"], "0x81");

    // Delete needs the confirmation box.
    let (_, page) = post_and_follow(&s, &cookie, &format!("/ui/machines/{mac}/delete"), "");
    assert!(page.contains("Not deleted"), "{page}");
    let (loc, page) =
        post_and_follow(&s, &cookie, &format!("/ui/machines/{mac}/delete"), "confirm=yes");
    assert_eq!(loc, "/ui/machines");
    assert!(page.contains(&format!("Deleted {mac}.")));
    assert_eq!(s.call("GET", &format!("/machines/{mac}"), Some(&cookie), "").0, 404);
}

#[test]
fn cross_site_posts_are_refused_and_the_token_works_without_origin() {
    let s = Server::start("ui-csrf");
    let cookie = s.login();
    let mac = "02:00:00:00:00:09";
    pxe(&s, mac);
    let path = format!("/ui/machines/{mac}");
    let form = "boot_mode=bty-tui&labels=x";
    let ct = ("Content-Type", "application/x-www-form-urlencoded");
    let (st, _, body) = req(
        &s,
        "POST",
        &path,
        &[("Cookie", &cookie), ("Origin", "http://evil.example"), ct],
        form.as_bytes(),
    );
    assert_eq!(st, 403, "{body}");
    let (st, _, _) = req(&s, "POST", &path, &[("Cookie", &cookie), ct], form.as_bytes());
    assert_eq!(st, 403, "no Origin and no token");
    // A multipart body is still a form post to this route: the same check applies.
    let mp = "--B\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\na&boot_mode=bty-tui&\r\n--B--\r\n";
    let (st, _, _) = req(
        &s,
        "POST",
        &path,
        &[
            ("Cookie", &cookie),
            ("Origin", "http://evil.example"),
            ("Content-Type", "multipart/form-data; boundary=B"),
        ],
        mp.as_bytes(),
    );
    assert_eq!(st, 403, "multipart is not a way around the check");
    let (_, _, json) = s.call("GET", &format!("/machines/{mac}"), Some(&cookie), "");
    assert!(json.contains("bty-inventory"), "unchanged: {json}");
    // The token from the page's hidden field lets a client without Origin through.
    let (_, _, page) = get(&s, &cookie, &path);
    let token = html::attr_values(&page, "value")
        .into_iter()
        .find(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .expect("a csrf field");
    let (st, head, _) = req(
        &s,
        "POST",
        &path,
        &[("Cookie", &cookie), ct],
        format!("csrf={token}&{form}").as_bytes(),
    );
    assert_eq!(st, 303, "{head}");
    let (st, _, _) = req(
        &s,
        "POST",
        &path,
        &[("Cookie", &cookie), ct],
        format!("csrf={}&{form}", "0".repeat(64)).as_bytes(),
    );
    assert_eq!(st, 403, "a wrong token");
    let (st, _, _) = req(
        &s,
        "POST",
        "/ui/login",
        &[("Origin", "http://evil.example"), ct],
        b"password=pw-for-tests",
    );
    assert_eq!(st, 403, "no login from another site");
}

#[test]
fn images_page_adds_uploads_escapes_and_deletes() {
    let s = Server::start("ui-images");
    let cookie = s.login();
    let (loc, page) = post_and_follow(
        &s,
        &cookie,
        "/ui/catalog/entries",
        "image_url=https%3A%2F%2Fimages.example%2Fa.img.xz&name=%3Cscript%3Ealert(1)%3C%2Fscript%3E&description=",
    );
    assert_eq!(loc, "/ui/images");
    assert!(page.contains("Added &lt;script&gt;alert(1)&lt;/script&gt;."), "{page}");
    assert!(page.contains("<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>"));
    assert!(!page.contains("<script>alert"));
    html::check(&page).unwrap();
    let (st, _, page) =
        post_form(&s, &cookie, "/ui/catalog/entries", "image_url=ftp%3A%2F%2Fx%2Fy.img&name=kept");
    assert_eq!(st, 422);
    assert!(page.contains("ftp:// is not supported") && page.contains("value=\"kept\""), "{page}");

    let toml = "version = 1\n\n[[images]]\nname = \"b.img.gz\"\nsrc = \"https://images.example/b.img.gz\"\n\n[[images]]\nname = \"c.img\"\nsrc = \"https://images.example/c.img\"\n";
    let multipart = |csrf: &str| {
        format!(
            "--BoUnD\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n--BoUnD\r\n\
             Content-Disposition: form-data; name=\"catalog\"; filename=\"lab.toml\"\r\n\
             Content-Type: application/toml\r\n\r\n{toml}\r\n--BoUnD--\r\n"
        )
    };
    let origin = format!("http://{}", s.addr);
    let ct = ("Content-Type", "multipart/form-data; boundary=BoUnD");
    let (st, _, _) = req(
        &s,
        "POST",
        "/ui/catalog/upload",
        &[("Cookie", &cookie), ct],
        multipart("nope").as_bytes(),
    );
    assert_eq!(st, 403, "multipart posts are checked too");
    let (st, head, _) = req(
        &s,
        "POST",
        "/ui/catalog/upload",
        &[("Cookie", &cookie), ("Origin", &origin), ct],
        multipart("").as_bytes(),
    );
    assert_eq!(st, 303, "{head}");
    let flash = flash_cookie(&head);
    let (_, _, page) = get(&s, &format!("{cookie}; {flash}"), "/ui/images");
    assert!(page.contains("Imported 2 entries, skipped 0"), "{page}");
    let (_, _, json) = s.call("GET", "/catalog/entries", Some(&cookie), "");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap().as_array().unwrap().len(),
        3
    );
    let (_, page) = post_and_follow(
        &s,
        &cookie,
        "/ui/catalog/delete",
        "src=https%3A%2F%2Fimages.example%2Fc.img",
    );
    assert!(page.contains("Deleted https://images.example/c.img."), "{page}");
    let (_, _, json) = s.call("GET", "/catalog/entries", Some(&cookie), "");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap().as_array().unwrap().len(),
        2
    );
}

#[test]
fn events_acknowledge_and_netboot_upload_through_forms() {
    let s = Server::start("ui-events");
    let cookie = s.login();
    let (_, _, json) = s.call("GET", "/events?kind=auth.login.succeeded", Some(&cookie), "");
    let id = serde_json::from_str::<serde_json::Value>(&json).unwrap()["events"][0]["id"]
        .as_i64()
        .unwrap();
    let (_, _, list) = get(&s, &cookie, "/ui/events?kind=auth.login.succeeded");
    assert!(
        list.contains("name=\"back\" value=\"/ui/events?kind=auth.login.succeeded\""),
        "{list}"
    );
    let (loc, page) = post_and_follow(
        &s,
        &cookie,
        &format!("/ui/events/{id}/ack"),
        "back=%2Fui%2Fevents%3Fkind%3Dauth.login.succeeded",
    );
    assert_eq!(loc, "/ui/events?kind=auth.login.succeeded", "back to the filtered list");
    assert!(page.contains(&format!("Event {id} acknowledged.")), "{page}");
    let (st, head, _) = post_form(
        &s,
        &cookie,
        &format!("/ui/events/{id}/ack"),
        "back=https%3A%2F%2Fevil.example%2F",
    );
    assert!(
        st == 303 && head.contains("location: /ui/events\n"),
        "no redirect off the site: {head}"
    );
    let (_, _, json) = s.call("GET", "/events?kind=auth.login.succeeded", Some(&cookie), "");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap()["events"][0]["acknowledged"],
        true
    );

    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let mut body =
        b"--XX\r\nContent-Disposition: form-data; name=\"artifact\"; filename=\"ipxe.efi\"\r\n\r\n"
            .to_vec();
    body.extend_from_slice(&data);
    body.extend_from_slice(b"\r\n--XX--\r\n");
    let origin = format!("http://{}", s.addr);
    let (st, head, _) = req(
        &s,
        "POST",
        "/ui/netboot/upload",
        &[
            ("Cookie", &cookie),
            ("Origin", &origin),
            ("Content-Type", "multipart/form-data; boundary=XX"),
        ],
        &body,
    );
    assert_eq!(st, 303, "{head}");
    assert_eq!(std::fs::read(s.state.join("boot/ipxe.efi")).unwrap(), data);
    let (_, _, page) = get(&s, &format!("{cookie}; {}", flash_cookie(&head)), "/ui/netboot");
    assert!(page.contains("Uploaded ipxe.efi"), "{page}");
    assert!(
        page.contains(">ipxe.efi</td><td>other</td><td><span class=\"badge ok\">present</span>")
    );
    // Where each iPXE binary comes from: the upload wins over the installed ones.
    let boot = s.state.join("boot").display().to_string();
    let ipxe = s.state.join("ipxe");
    assert!(page.contains(&format!("ipxe.efi from {boot}")), "{page}");
    assert!(page.contains("undionly.kpxe missing (neither in"), "{page}");
    std::fs::create_dir_all(&ipxe).unwrap();
    std::fs::write(ipxe.join("undionly.kpxe"), b"kpxe").unwrap();
    let (_, _, page) = get(&s, &cookie, "/ui/netboot");
    assert!(page.contains(&format!("undionly.kpxe from {}", ipxe.display())), "{page}");
}

#[test]
fn settings_store_the_default_catalog_which_the_images_page_fetches() {
    let s = Server::start("ui-settings");
    let cookie = s.login();
    let (_, _, page) = get(&s, &cookie, "/ui/settings");
    assert!(page.contains("[admin] password") && page.contains("(set)"), "config rows");
    assert!(page.contains("env BTY_ADMIN_PASSWORD"), "with their source");
    assert!(page.contains("pxe-bootstrap.ipxe") && page.contains("HTTPClient"), "the cheatsheet");
    let (st, _, page) = post_form(
        &s,
        &cookie,
        "/ui/settings/upstream",
        "catalog_url=&release_repo=no-slash&release_tag=latest",
    );
    assert_eq!(st, 422);
    assert!(
        page.contains("release_repo: no-slash: expected owner/name")
            && page.contains("value=\"no-slash\"")
    );
    let file = s.state.join("lab.toml");
    let text =
        "version = 1\n[[images]]\nname = \"x.img\"\nsrc = \"https://images.example/x.img\"\n";
    std::fs::write(&file, text).unwrap();
    // A path on the server is never a catalog source.
    let body = format!("catalog_url={}&release_repo=lab%2Fbty&release_tag=v1.2.3", file.display());
    let (st, _, page) = post_form(&s, &cookie, "/ui/settings/upstream", &body);
    assert_eq!(st, 422);
    assert!(page.contains("expected an http(s):// or oras:// URL"), "{page}");
    let web = util::httpd::Httpd::start();
    web.file("/lab.toml", text.as_bytes().to_vec(), false, None);
    let url = web.url("/lab.toml").replace(':', "%3A").replace('/', "%2F");
    let body = format!("catalog_url={url}&release_repo=lab%2Fbty&release_tag=v1.2.3");
    let (_, page) = post_and_follow(&s, &cookie, "/ui/settings/upstream", &body);
    assert!(
        page.contains("Upstream sources saved.") && page.contains("value=\"lab/bty\""),
        "{page}"
    );
    let (_, _, page) = get(&s, &cookie, "/ui/netboot");
    assert!(page.contains("the GitHub release lab/bty v1.2.3"), "{page}");
    let (_, page) = post_and_follow(&s, &cookie, "/ui/catalog/fetch-release", "");
    assert!(page.contains("Imported 1 entries, skipped 0"), "{page}");
}

#[test]
fn settings_are_saved_in_the_state_dir_applied_now_or_at_restart() {
    use std::os::unix::fs::PermissionsExt;
    let dir = util::TestDir::new("ui-config");
    let file = dir.path("bty.toml");
    let text = "# lab\n[boot]\nmax_upload_mib = 100 # small disks\nrelease_tag = \"v1\"\n";
    std::fs::write(&file, text).unwrap();
    // As the compose and Quadlet stacks mount it: read-only. Saving must not need it.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
    let s = Server::start_env(
        "ui-config",
        &[("BTY_CONFIG_FILE", file.to_str().unwrap()), ("BTY_PXE_MAX_DISCOVERED", "50")],
    );
    let cookie = s.login();
    let (_, _, page) = get(&s, &cookie, "/ui/settings");
    html::check(&page).unwrap();
    let form = |name: &str| format!("name=\"name\" value=\"{name}\"");
    assert!(page.contains(&form("[boot] max_upload_mib")), "a form for a row from the file");
    assert!(page.contains(&form("[server] max_connections")), "a form for a default");
    assert!(!page.contains(&form("[pxe] max_discovered")), "none for the environment's");
    assert!(!page.contains(&form("[admin] password")), "none for the password");

    let edit = |body: &str| post_and_follow(&s, &cookie, "/ui/settings/config/edit", body).1;
    let page = edit("name=%5Bboot%5D+max_upload_mib&value=abc");
    assert!(
        page.contains("Not saved: ") && page.contains("expected a whole number above 0"),
        "{page}"
    );
    let saved = s.state.join("settings.toml");
    assert!(!saved.exists(), "a refused value wrote the file");

    // In force at once: the netboot page names the new release source.
    let page = edit("name=%5Bboot%5D+release_url&value=%2Fsrv%2Fbty-mirror");
    assert!(page.contains("Saved [boot] release_url = /srv/bty-mirror in "), "{page}");
    assert!(page.contains("in force now"), "{page}");
    let (_, _, page) = get(&s, &cookie, "/ui/netboot");
    assert!(page.contains("/srv/bty-mirror"), "{page}");

    // At the next start: said so, and shown as pending on the page.
    let page = edit("name=%5Bserver%5D+max_connections&value=77");
    assert!(page.contains("restart it to apply"), "{page}");
    assert!(page.contains("at restart (saved: 77)"), "{page}");

    // The environment wins over the page, and the page says where to change it.
    let page = edit("name=%5Bpxe%5D+max_discovered&value=9");
    assert!(page.contains("set by the environment (BTY_PXE_MAX_DISCOVERED)"), "{page}");
    let page = edit("name=%5Badmin%5D+password&value=x");
    assert!(page.contains("the password is not changed in the browser"), "{page}");

    assert_eq!(std::fs::read_to_string(&file).unwrap(), text, "bty.toml is the operator's");
    let saved_text = std::fs::read_to_string(&saved).unwrap();
    assert!(saved_text.contains("max_connections = \"77\""), "{saved_text}");

    // After a restart both saved values are in force, from the saved file.
    let state = s.state.clone();
    s.stop_keeping_state();
    let s = Server::start_in_env(
        state,
        &[("BTY_CONFIG_FILE", file.to_str().unwrap()), ("BTY_PXE_MAX_DISCOVERED", "50")],
    );
    let cookie = s.login();
    let (_, _, page) = get(&s, &cookie, "/ui/settings");
    assert!(page.contains("value=\"77\""), "{page}");
    assert!(!page.contains("at restart (saved:"), "nothing pending after the restart: {page}");
    assert!(page.contains("saved ") && page.contains("settings.toml"), "{page}");
}

#[test]
fn backups_page_runs_a_backup_and_saves_the_schedule() {
    let s = Server::start("ui-backups");
    let cookie = s.login();
    let (_, page) = post_and_follow(&s, &cookie, "/ui/backups/run", "");
    assert!(page.contains("Backup started (job"), "{page}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, _, page) = get(&s, &cookie, "/ui/backups");
        if page.contains("bty-backup-") && page.contains("<td>done</td>") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no finished backup listed: {page}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_, page) =
        post_and_follow(&s, &cookie, "/ui/settings/backup", "enabled=true&interval_hours=6&keep=3");
    assert!(page.contains("Backups every 6 h, keeping 3."), "{page}");
    assert!(page.contains("value=\"true\" checked>") && page.contains("value=\"6\""), "{page}");
    let (_, page) = post_and_follow(&s, &cookie, "/ui/settings/backup", "interval_hours=0&keep=x");
    assert!(page.contains("needs whole numbers"), "{page}");
}

#[test]
fn an_empty_password_is_the_default_on_loopback_and_the_dashboard_says_so() {
    let s = Server::start_env("ui-empty-pw", &[("BTY_ADMIN_PASSWORD", "")]);
    let (st, _, _) = req(
        &s,
        "POST",
        "/ui/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"password=",
    );
    assert_eq!(st, 401, "the empty string is not the password");
    let (st, head, _) = req(
        &s,
        "POST",
        "/ui/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"password=bty-lab",
    );
    assert_eq!(st, 303, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let (_, _, page) = get(&s, &cookie, "/ui/dashboard");
    assert!(
        page.contains("the built-in default password is in use; BTY_ADMIN_PASSWORD is empty"),
        "{page}"
    );
    assert!(!page.contains("set (env BTY_ADMIN_PASSWORD)"), "{page}");
    let (_, _, page) = get(&s, &cookie, "/ui/account");
    assert!(page.contains("The built-in default password is in use"), "{page}");
    let (_, _, page) = get(&s, &cookie, "/ui/settings");
    assert!(page.contains("(built-in default: change it)"), "{page}");
}

/// The port of a server's `127.0.0.1:PORT`.
fn port(s: &Server) -> &str {
    s.addr.rsplit(':').next().unwrap()
}

#[test]
fn a_rebinding_page_cannot_log_in_and_allowed_names_can() {
    let s =
        Server::start_env("ui-rebind", &[("BTY_SERVER_ALLOWED_HOSTS", "bty.lab.test, 10.9.9.9")]);
    let port = port(&s);
    let cookie = s.login();
    let (_, _, before) = s.call("GET", "/events?limit=500", Some(&cookie), "");
    let form = b"password=pw-for-tests";
    let ct = ("Content-Type", "application/x-www-form-urlencoded");
    // The attack from issue 16: evil.test resolves to this server, the page posts to its own
    // origin, so Origin and Host agree. Only the Host tells it apart.
    let evil = format!("evil.test:{port}");
    let origin = format!("http://{evil}");
    let (st, head, body) = req_to(&s, &evil, "POST", "/ui/login", &[("Origin", &origin), ct], form);
    assert_eq!(st, 421, "{head}\n{body}");
    assert!(!head.contains("set-cookie"), "no session for a foreign Host: {head}");
    assert!(body.contains("evil.test") && body.contains("allowed_hosts"), "{body}");
    // Nor does a stolen cookie help a page under a foreign name, for pages or the API.
    for path in ["/ui/dashboard", "/machines", "/", "/events"] {
        let (st, _, body) = req_to(&s, &evil, "GET", path, &[("Cookie", &cookie)], b"");
        assert_eq!(st, 421, "{path}: {body}");
    }
    let (st, _, _) = req_to(&s, &evil, "GET", "/ui/login", &[], b"");
    assert_eq!(st, 421);
    // A name this server owns but on another port is another origin.
    let (st, _, body) = req_to(&s, "localhost:1", "POST", "/ui/login", &[ct], form);
    assert_eq!(st, 421, "{body}");
    assert!(body.contains("port 1"), "{body}");
    // Nothing was logged in, nothing written.
    let (_, _, after) = s.call("GET", "/events?limit=500", Some(&cookie), "");
    assert_eq!(before, after);
    // An address is never a rebinding (a page is served under the address it is reached
    // at), so any address and port log in: bty-web in a container behind a published port.
    let (st, head, _) = req_to(&s, "192.0.2.7:18080", "POST", "/ui/login", &[ct], form);
    assert_eq!(st, 303, "{head}");
    let (st, _, _) = req_to(&s, &format!("0.0.0.0:{port}"), "GET", "/ui/login", &[], b"");
    assert_eq!(st, 421, "0.0.0.0 is loopback to a browser on any site");
    // The names the server owns log in: the configured ones (any case), localhost, the
    // hostname, the address the connection came to.
    let mut names = vec![
        format!("bty.lab.test:{port}"),
        format!("BTY.Lab.Test:{port}"),
        format!("10.9.9.9:{port}"),
        format!("localhost:{port}"),
        s.addr.clone(),
    ];
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    if !hostname.trim().is_empty() {
        names.push(format!("{}:{port}", hostname.trim()));
    }
    for host in names {
        let origin = format!("http://{host}");
        let (st, head, body) =
            req_to(&s, &host, "POST", "/ui/login", &[("Origin", &origin), ct], form);
        assert_eq!(st, 303, "{host}: {head}\n{body}");
        assert!(head.contains("set-cookie: bty-token="), "{host}: {head}");
    }
}

#[test]
fn api_changes_need_our_origin_and_a_json_body() {
    let s = Server::start("ui-api-csrf");
    let cookie = s.login();
    let entries = || {
        let (st, _, body) = s.call("GET", "/catalog/entries", Some(&cookie), "");
        assert_eq!(st, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap().as_array().unwrap().len()
    };
    let json = br#"{"image_url":"https://images.example/a.img.zst"}"#;
    let ours = format!("http://{}", s.addr);
    let text = ("Content-Type", "text/plain");
    let app_json = ("Content-Type", "application/json");
    // The cross-site request from issue 16, and its variants: each refused, nothing added.
    for (headers, want) in [
        (vec![("Origin", "http://evil.example"), text], 403),
        (vec![("Origin", "http://evil.example"), app_json], 403),
        (vec![("Origin", "null"), app_json], 403),
        (vec![("Referer", "http://evil.example/page.html"), app_json], 403),
        (vec![("Origin", ours.as_str()), text], 415),
        (vec![text], 415),
        (vec![], 415),
    ] {
        let mut h = vec![("Cookie", cookie.as_str())];
        h.extend(headers.iter().copied());
        let (st, _, body) = req(&s, "POST", "/catalog/entries", &h, json);
        assert_eq!(st, want, "{headers:?}: {body}");
        assert!(body.contains("/catalog/entries"), "the refusal names the request: {body}");
        assert_eq!(entries(), 0, "{headers:?} added an entry");
    }
    // curl and scripts: a cookie, JSON, no Origin. And the server's own pages.
    let (st, _, body) = req(&s, "POST", "/catalog/entries", &[("Cookie", &cookie), app_json], json);
    assert_eq!(st, 201, "{body}");
    let referer = format!("{ours}/ui/images");
    let (st, _, body) = req(
        &s,
        "POST",
        "/catalog/entries",
        &[
            ("Cookie", &cookie),
            ("Referer", &referer),
            ("Content-Type", "application/json; charset=utf-8"),
        ],
        br#"{"image_url":"https://images.example/b.img.zst"}"#,
    );
    assert_eq!(st, 201, "{body}");
    assert_eq!(entries(), 2);
    // A body-less POST needs no Content-Type.
    let (st, _, body) = req(&s, "POST", "/events/999999/ack", &[("Cookie", &cookie)], b"");
    assert_eq!(st, 404, "{body}");
    // Deletes are changes too.
    let (st, _, _) = req(
        &s,
        "DELETE",
        "/catalog/entries?src=https%3A%2F%2Fimages.example%2Fa.img.zst",
        &[("Cookie", &cookie), ("Origin", "http://evil.example")],
        b"",
    );
    assert_eq!(st, 403);
    assert_eq!(entries(), 2);
}

#[test]
fn pxe_posts_with_an_origin_are_refused() {
    let s = Server::start("ui-pxe-origin");
    let cookie = s.login();
    let mac = "02:00:00:00:00:16";
    pxe(&s, mac);
    let machine = || s.call("GET", &format!("/machines/{mac}"), Some(&cookie), "").2;
    let before = machine();
    let path = format!("/pxe/{mac}/inventory");
    let body = br#"{"disks":[{"path":"/dev/sda","size_bytes":1000,"serial":"S16"}]}"#;
    let ct = ("Content-Type", "application/json");
    for origin in [format!("http://{}", s.addr), "http://evil.example".into(), "null".into()] {
        let (st, _, resp) = req(&s, "POST", &path, &[("Origin", &origin), ct], body);
        assert_eq!(st, 403, "{origin}: {resp}");
        assert!(resp.contains("Origin"), "{resp}");
    }
    assert_eq!(machine(), before, "nothing recorded");
    // The live environment sends none, and gets through.
    let (st, _, resp) = req(&s, "POST", &path, &[ct], body);
    assert_eq!(st, 204, "{resp}");
    assert!(machine().contains("S16"));
}

#[test]
fn pxe_scripts_embed_only_hosts_the_server_owns() {
    let s = Server::start_env("ui-pxe-host", &[("BTY_SERVER_ALLOWED_HOSTS", "bty.lab.test")]);
    let port = port(&s);
    let mac = "02:00:00:00:00:17";
    let script = |host: &str, path: &str| {
        let (st, _, body) = req_to(&s, host, "GET", path, &[], b"");
        assert_eq!(st, 200, "{host} {path}: {body}");
        body
    };
    // A forged Host gets the address the connection came to, never itself.
    for host in ["evil.test".to_string(), format!("evil.test:{port}"), "bty.lab.test:1".into()] {
        let boot = script(&host, "/pxe-bootstrap.ipxe");
        assert!(
            boot.ends_with(&format!("chain http://{}/pxe/${{net0/mac:hexhyp}}\n", s.addr)),
            "{boot}"
        );
        let menu = script(&host, &format!("/pxe/{mac}"));
        assert!(
            !menu.contains("evil") && !boot.contains("evil") && !boot.contains(":1/"),
            "{menu}"
        );
        let auto = script(&host, "/boot/autoexec.ipxe");
        assert!(auto.contains(&format!("chain http://{}/pxe-bootstrap.ipxe", s.addr)), "{auto}");
    }
    // Names it owns are kept: firmware chains by the name the operator gave it.
    let lab = format!("bty.lab.test:{port}");
    let boot = script(&lab, "/pxe-bootstrap.ipxe");
    assert!(boot.contains(&format!("chain http://{lab}/pxe/")), "{boot}");
    // So are addresses, whatever the port: bty-web in a container is reached by the host's
    // address and a published port, neither of which it can see (no rebinding needs a name).
    let boot = script("192.0.2.7:18080", "/pxe-bootstrap.ipxe");
    assert!(boot.contains("chain http://192.0.2.7:18080/pxe/"), "{boot}");
    drop(s);
    // With public_url, a forged Host gets that instead.
    let s =
        Server::start_env("ui-pxe-public", &[("BTY_SERVER_PUBLIC_URL", "http://bty.example:8081")]);
    let (st, _, boot) = req_to(&s, "evil.test", "GET", "/pxe-bootstrap.ipxe", &[], b"");
    assert_eq!(st, 200);
    assert!(boot.contains("chain http://bty.example:8081/pxe/"), "{boot}");
    // public_url's name with its port is one of ours: the UI answers there.
    let (st, _, body) = req_to(&s, "bty.example:8081", "GET", "/ui/login", &[], b"");
    assert_eq!(st, 200, "{body}");
}

#[test]
fn the_netboot_page_says_which_boot_setups_are_served_with_the_dhcp_configuration() {
    let dir = crate::util::TestDir::new("ui-bootpaths");
    let ipxe = dir.path("ipxe");
    std::fs::create_dir_all(&ipxe).unwrap();
    std::fs::write(ipxe.join("ipxe.efi"), b"not really ipxe").unwrap();
    let ipxe_dir = ipxe.display().to_string();
    let s = Server::start_env(
        "ui-bootpaths",
        &[
            ("BTY_BOOT_IPXE_DIR", &ipxe_dir),
            ("BTY_SERVER_PUBLIC_URL", "http://10.66.0.1:8080"),
            ("BTY_SERVER_ALLOWED_HOSTS", "10.66.0.1"),
        ],
    );
    let cookie = s.login();
    let (_, _, page) = get(&s, &cookie, "/ui/netboot");
    // TFTP is off and undionly.kpxe missing: only UEFI HTTP Boot is served, at the public address.
    assert!(page.contains("http://10.66.0.1:8080/boot/ipxe.efi"), "{page}");
    assert!(page.contains("bty-web&#39;s TFTP server is off"), "{page}");
    // The configuration, as `bty-web dhcp` prints it, for that address.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bty-web"))
        .args(["dhcp", "--addr", "10.66.0.1"])
        .env("BTY_SERVER_PORT", "8080")
        .env("BTY_PATHS_STATE_DIR", dir.path("state"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed =
        String::from_utf8_lossy(&out.stdout).replace('\'', "&#39;").replace('"', "&quot;");
    assert!(page.contains(printed.trim()), "the page's dnsmasq differs from bty-web dhcp:\n{page}");
    let (_, _, dash) = get(&s, &cookie, "/ui/dashboard");
    assert!(dash.contains("missing: undionly.kpxe"), "{dash}");
    assert!(dash.contains("UEFI HTTP Boot: http://10.66.0.1:8080/boot/ipxe.efi"), "{dash}");
}
