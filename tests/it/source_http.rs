//! `bty flash` and `bty inspect` from http:// URLs served by a test server on 127.0.0.1 that
//! cuts connections, stalls, answers 5xx, ignores Range, redirects and changes files.

use std::fs;
use std::time::Duration;

use crate::util::httpd::{Fault, Httpd};
use crate::util::registry;
use crate::util::*;

const MIB: usize = 1 << 20;

/// Runs `bty flash URL TARGET --yes --progress none EXTRA...`.
fn flash_url(url: &str, target: &std::path::Path, extra: &[&str]) -> std::process::Output {
    bty()
        .arg("flash")
        .arg(url)
        .arg(target)
        .args(["--yes", "--progress", "none"])
        .args(extra)
        .env("BTY_HTTP_TIMEOUT", "3")
        .output()
        .expect("running bty")
}

#[test]
fn flash_survives_cuts_a_stall_and_a_503_through_a_redirect() {
    let dir = TestDir::new("http-resume");
    let raw = disk_image(11, 24 * MIB);
    let z = zstd(&raw);
    let n = z.len() as u64;
    let srv = Httpd::start();
    srv.file("/files/disk.img.zst", z.clone(), true, Some("\"v1\""));
    srv.redirect("/latest/disk.img.zst", "/files/disk.img.zst");
    srv.faults(
        "/files/disk.img.zst",
        vec![
            Fault::Cut(n / 5),
            Fault::Status(503),
            Fault::Cut(n / 7),
            Fault::Stall(n / 9, Duration::from_secs(6)),
        ],
    );
    let l = Loop::new(&dir, "target", 32 * MIB);
    let o = flash_url(
        &srv.url("/latest/disk.img.zst"),
        &l.dev,
        &["--sha256", &sha256(&z), "--progress", "json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&l.read(0, raw.len())), sha256(&raw));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let done: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a done line")).expect("json");
    assert_eq!(done["source_bytes"].as_u64(), Some(n), "{stdout}");
    // Progress knew the size from Content-Length.
    assert!(stdout.contains(&format!("\"source_bytes\":{n}")), "{stdout}");

    // Every request after the first continued where the bytes stopped, guarded by the ETag,
    // and went through the redirect again.
    let seen: Vec<_> = srv.seen().into_iter().filter(|s| s.path == "/files/disk.img.zst").collect();
    assert!(seen.len() >= 5, "{seen:?}");
    assert_eq!(seen[0].range, None);
    let redirects = srv.seen().iter().filter(|s| s.path == "/latest/disk.img.zst").count();
    assert_eq!(redirects, seen.len(), "every attempt starts from the URL given");
    for s in &seen[1..] {
        let r = s.range.as_deref().expect("a resume sends Range");
        assert!(r.starts_with("bytes=") && r.ends_with('-') && r != "bytes=0-", "{r}");
        assert_eq!(s.if_range.as_deref(), Some("\"v1\""));
    }
    let err = stderr(&o);
    assert!(err.contains("connection lost at byte"), "{err}");
    assert!(err.contains("HTTP 503"), "{err}");
}

#[test]
fn server_without_range_support_restarts_from_zero_and_says_so() {
    let dir = TestDir::new("http-norange");
    let raw = disk_image(12, 16 * MIB);
    let gz = gzip(&raw);
    let n = gz.len() as u64;
    let srv = Httpd::start();
    srv.file("/disk.img.gz", gz.clone(), false, None);
    srv.faults("/disk.img.gz", vec![Fault::Cut(n / 2), Fault::Cut(n * 3 / 4)]);
    let l = Loop::new(&dir, "target", 16 * MIB);
    let o = flash_url(&srv.url("/disk.img.gz"), &l.dev, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&l.read(0, raw.len())), sha256(&raw));
    let err = stderr(&o);
    assert!(err.contains("ignored the Range request"), "{err}");
    assert!(err.contains("skipping the"), "{err}");
    assert_eq!(srv.seen().len(), 3);
}

#[test]
fn wrong_digest_over_http_leaves_the_first_mib_blank() {
    let dir = TestDir::new("http-digest");
    let raw = disk_image(13, 8 * MIB);
    let srv = Httpd::start();
    srv.file("/disk.img.xz", xz(&raw), true, Some("\"x\""));
    let l = Loop::new(&dir, "target", 16 * MIB);
    let o = flash_url(&srv.url("/disk.img.xz"), &l.dev, &["--sha256", &"cd".repeat(32)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("sha256 mismatch"), "{}", stderr(&o));
    assert_blank(&l);
}

#[test]
fn a_file_that_changes_mid_download_is_refused() {
    let dir = TestDir::new("http-changed");
    // Raw, so that the stall comes after the probe's first MiBs and writing has begun.
    let raw = disk_image(14, 16 * MIB);
    let srv = Httpd::start();
    srv.file("/disk.img", raw, true, Some("\"old\""));
    srv.faults("/disk.img", vec![Fault::Stall(12 * MIB as u64, Duration::from_secs(2))]);
    let l = Loop::new(&dir, "target", 16 * MIB);
    let child = bty()
        .args(["flash", "--yes", "--progress", "none"])
        .arg(srv.url("/disk.img"))
        .arg(&l.dev)
        .env("BTY_HTTP_TIMEOUT", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Replace the file while the first response stalls.
    std::thread::sleep(Duration::from_millis(300));
    srv.file("/disk.img", disk_image(15, 16 * MIB), true, Some("\"new\""));
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("changed on the server"), "{}", stderr(&o));
    assert_blank(&l);
}

#[test]
fn errors_name_the_url_and_the_status() {
    let dir = TestDir::new("http-404");
    let srv = Httpd::start();
    let url = srv.url("/nope.img.zst");
    let o = flash_url(&url, &dir.path("out.img"), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("fetching {url}: HTTP 404 Not Found")), "{}", stderr(&o));
    assert!(!dir.path("out.img").exists());

    // The name in the URL is checked against the content, as for files.
    srv.file("/disk.img.gz", zstd(&disk_image(16, MIB)), true, None);
    let o = flash_url(&srv.url("/disk.img.gz"), &dir.path("out.img"), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("named like a gzip image"), "{}", stderr(&o));
}

#[test]
fn inspect_reads_the_head_and_size_over_http() {
    let raw = disk_image(17, 4 * MIB);
    let z = zstd(&raw);
    let srv = Httpd::start();
    srv.file("/d/disk.img.zst", z.clone(), true, None);
    let o = bty()
        .args(["inspect", "--json", "--sha256"])
        .arg(srv.url("/d/disk.img.zst"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format"], "zstd");
    assert_eq!(v["compressed_size"].as_u64(), Some(z.len() as u64));
    assert_eq!(v["partition_table"]["kind"], "mbr", "{v}");
    assert_eq!(v["sha256"].as_str(), Some(sha256(&z).as_str()));
}

#[test]
fn get_bytes_follows_redirects_and_caps_the_size() {
    let srv = Httpd::start();
    srv.file("/catalog.toml", b"version = 1\n".to_vec(), false, None);
    srv.redirect("/c", "/catalog.toml");
    srv.faults("/catalog.toml", vec![Fault::Status(502)]);
    let got = bty::source::http::get_bytes(&srv.url("/c"), 100).unwrap();
    assert_eq!(got, b"version = 1\n");
    let e = bty::source::http::get_bytes(&srv.url("/c"), 4).unwrap_err().to_string();
    assert!(e.contains("larger than the 4 bytes allowed"), "{e}");
    let e = bty::source::http::get_bytes(&srv.url("/missing"), 4).unwrap_err().to_string();
    assert_eq!(e, format!("fetching {}: HTTP 404 Not Found", srv.url("/missing")));
}

#[test]
fn flash_to_a_file_target_streams_raw_bytes_exactly() {
    let dir = TestDir::new("http-raw");
    let raw = disk_image(18, 6 * MIB + 4096 + 17);
    let srv = Httpd::start();
    srv.file("/disk.img", raw.clone(), true, Some("\"r\""));
    srv.faults("/disk.img", vec![Fault::Cut(3 * MIB as u64 + 5)]);
    let out = dir.path("out.img");
    let o = flash_url(&srv.url("/disk.img"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&fs::read(&out).unwrap()), sha256(&raw));
}

#[test]
fn qcow2_streams_over_range_requests() {
    let dir = TestDir::new("http-qcow2");
    let raw = disk_image(19, 20 * MIB + 4096);
    fs::write(dir.path("disk.img"), &raw).unwrap();
    let srv = Httpd::start();
    for (name, extra) in [("plain.qcow2", &[][..]), ("packed.qcow2", &["-c"][..])] {
        qcow2(&dir.path("disk.img"), &dir.path(name), extra);
        let body = fs::read(dir.path(name)).unwrap();
        let path = format!("/{name}");
        srv.file(&path, body.clone(), true, Some("\"q\""));
        // A cut in the middle of the clusters is retried from the offset that was asked for.
        srv.faults(&path, vec![Fault::Cut(1 << 30), Fault::Cut(1 << 30), Fault::Cut(200_000)]);
        let l = Loop::new(&dir, "target", 32 * MIB);
        let o = flash_url(&srv.url(&path), &l.dev, &["--sha256", &sha256(&body)]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains("connection lost at byte"), "{name}: {}", stderr(&o));
        assert_eq!(sha256(&l.read(0, raw.len())), sha256(&raw), "{name}");
        let seen: Vec<_> = srv.seen().into_iter().filter(|s| s.path == path).collect();
        let ranged = seen.iter().filter(|s| s.range.is_some()).count();
        // Header, L1, then the clusters mostly in one forward stream: a handful of requests,
        // not one per cluster (a 20 MiB image has 320 clusters of 64 KiB).
        assert!((2..40).contains(&ranged), "{name}: {ranged} range requests: {seen:?}");
        eprintln!("{name}: {} requests, {ranged} with Range", seen.len());
    }
}

#[test]
fn qcow2_from_a_server_without_range_is_refused_with_the_reason() {
    let dir = TestDir::new("http-qcow2-norange");
    fs::write(dir.path("disk.img"), disk_image(20, 4 * MIB)).unwrap();
    qcow2(&dir.path("disk.img"), &dir.path("disk.qcow2"), &[]);
    let srv = Httpd::start();
    srv.file("/disk.qcow2", fs::read(dir.path("disk.qcow2")).unwrap(), false, None);
    let l = Loop::new(&dir, "target", 8 * MIB);
    let before = sha256(&l.read(0, 8 * MIB));
    let o = flash_url(&srv.url("/disk.qcow2"), &l.dev, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("does not support Range requests"), "{err}");
    assert!(err.contains("qcow2 images need them"), "{err}");
    assert_eq!(sha256(&l.read(0, 8 * MIB)), before, "a refused flash changed the target");
}

/// An https server on 127.0.0.1 (certificate from the test CA) that answers every request,
/// for at most `max` connections, with a 302 to `location`.
fn https_redirector(pki: &registry::Pki, location: String, max: usize) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<_> =
        CertificateDer::pem_file_iter(&pki.server_cert).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
    let cfg = std::sync::Arc::new(
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().take(max) {
            let Ok(tcp) = tcp else { continue };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
            let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
                match tls.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let _ = write!(
                tls,
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    format!("https://{addr}")
}

/// An https URL that redirects to plain http is refused, before any byte of the image is
/// fetched over http or written; the error names both URLs, without their queries (signed
/// URLs carry credentials there).
#[test]
fn https_to_http_redirect_is_refused_naming_both_urls() {
    let dir = TestDir::new("http-downgrade");
    let pki = registry::Pki::new(&dir);
    let raw = disk_image(17, 2 * MIB);
    let srv = Httpd::start();
    srv.file("/disk.img", raw, true, None);
    let plain = srv.url("/disk.img");
    let https = https_redirector(&pki, format!("{plain}?token=sekrit"), 16);
    let l = Loop::new(&dir, "target", 4 * MIB);
    let before = l.read(0, 4 * MIB);
    let url = format!("{https}/disk.img?X-Signature=hush");
    let o = bty()
        .arg("flash")
        .arg(&url)
        .arg(&l.dev)
        .args(["--yes", "--progress", "none"])
        .env("BTY_HTTP_TIMEOUT", "3")
        .env("BTY_CA_FILE", &pki.ca_pem)
        .output()
        .expect("running bty");
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("refusing its redirect"), "{err}");
    assert!(err.contains(&format!("{https}/disk.img")) && err.contains(&plain), "{err}");
    assert!(!err.contains("sekrit") && !err.contains("hush"), "no credentials: {err}");
    assert!(srv.seen().is_empty(), "nothing was fetched over plain http");
    assert!(l.read(0, 4 * MIB) == before, "nothing was written");
}
