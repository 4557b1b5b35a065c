//! `bty` and bty-web behind a real proxy: Debian's tinyproxy on 127.0.0.1, one instance per test
//! with its own config and log in the test's directory. http targets must reach it in absolute
//! form (its `ConnectPort 443` refuses a CONNECT to the test servers' ports), https targets
//! (the TLS registry) with CONNECT; NO_PROXY skips it; a dead proxy is named in the error.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::httpd::{Fault, Httpd};
use crate::util::registry::{Options, Registry};
use crate::util::*;

const MIB: usize = 1 << 20;
const TINYPROXY: &str = "/usr/bin/tinyproxy";
/// Every proxy variable bty reads: the test process's own must not leak into a child.
const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// A tinyproxy in the foreground; killed on drop.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Tinyproxy {
    /// Starts one that allows CONNECT to `connect_ports` only and, with `auth`, wants
    /// `Proxy-Authorization: Basic` for that user and password.
    fn start(dir: &TestDir, connect_ports: &[u16], auth: Option<(&str, &str)>) -> Tinyproxy {
        assert!(
            std::path::Path::new(TINYPROXY).exists(),
            "{TINYPROXY} is missing: install Debian's tinyproxy (make deps)"
        );
        let port = free_port();
        let log = dir.path("tinyproxy.log");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Info\n\
             MaxClients 20\nAllow 127.0.0.1\n",
            log.display()
        );
        for p in connect_ports {
            conf.push_str(&format!("ConnectPort {p}\n"));
        }
        if let Some((u, p)) = auth {
            conf.push_str(&format!("BasicAuth {u} {p}\n"));
        }
        let conf_path = dir.path("tinyproxy.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(TINYPROXY)
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tinyproxy");
        let mut t = Tinyproxy { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.child.try_wait().unwrap().is_none(), "tinyproxy exited: {}", t.log_text());
            assert!(Instant::now() < deadline, "tinyproxy did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines of requests that name `needle`.
    fn requests(&self, needle: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("Request (file descriptor") && l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bty` with no proxy settings but `env`.
fn bty_env(env: &[(&str, &str)]) -> Command {
    let mut c = bty();
    for v in PROXY_VARS {
        c.env_remove(v);
    }
    c.envs(env.iter().copied()).env("BTY_HTTP_TIMEOUT", "10");
    c
}

fn flash_to(url: &str, out: &std::path::Path, env: &[(&str, &str)]) -> Output {
    bty_env(env)
        .args(["flash", "--yes", "--progress", "none"])
        .arg(url)
        .arg(out)
        .output()
        .expect("running bty")
}

#[test]
fn flash_over_http_goes_through_the_proxy_with_credentials() {
    let dir = TestDir::new("proxy-http");
    let raw = disk_image(71, 4 * MIB);
    let z = zstd(&raw);
    let srv = Httpd::start();
    srv.file("/disk.img.zst", z.clone(), true, Some("\"p1\""));
    let proxy = Tinyproxy::start(&dir, &[443], Some(("bob", "s3cret")));
    let with_creds = format!("http://bob:s3cret@127.0.0.1:{}", proxy.port);
    let out = dir.path("out.img");
    let o = flash_to(
        &srv.url("/disk.img.zst"),
        &out,
        &[("HTTP_PROXY", &with_creds), ("https_proxy", "http://127.0.0.1:9")],
    );
    assert!(o.status.success(), "{}\n{}", stderr(&o), proxy.log_text());
    assert_eq!(sha256(&std::fs::read(&out).unwrap()), sha256(&raw));
    let url = srv.url("/disk.img.zst");
    assert_eq!(proxy.requests(&format!("GET {url}")).len(), 1, "{}", proxy.log_text());
    assert!(!stderr(&o).contains("s3cret"), "{}", stderr(&o));

    // Wrong credentials: the proxy's refusal (tinyproxy answers 401, others 407) is reported
    // with the proxy named and its password hidden.
    let wrong = format!("http://bob:wrong-pw@127.0.0.1:{}", proxy.port);
    let o = flash_to(&url, &dir.path("out2.img"), &[("http_proxy", &wrong)]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!((err.contains("HTTP 401") || err.contains("HTTP 407")) && err.contains(&url), "{err}");
    assert!(err.contains(&format!("http://bob:***@127.0.0.1:{}", proxy.port)), "{err}");
    assert!(!err.contains("wrong-pw"), "{err}");
}

#[test]
fn a_cut_download_resumes_with_range_through_the_proxy() {
    let dir = TestDir::new("proxy-resume");
    let raw = disk_image(72, 12 * MIB);
    let z = zstd(&raw);
    let n = z.len() as u64;
    let srv = Httpd::start();
    srv.file("/files/disk.img.zst", z.clone(), true, Some("\"r1\""));
    srv.faults("/files/disk.img.zst", vec![Fault::Cut(n / 3)]);
    let proxy = Tinyproxy::start(&dir, &[443], None);
    let out = dir.path("out.img");
    let o = flash_to(&srv.url("/files/disk.img.zst"), &out, &[("http_proxy", &proxy.url())]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), proxy.log_text());
    assert_eq!(sha256(&std::fs::read(&out).unwrap()), sha256(&raw));
    assert!(stderr(&o).contains("connection lost at byte"), "{}", stderr(&o));
    let seen = srv.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    let r = seen[1].range.as_deref().expect("the resume sends Range");
    assert!(r.starts_with("bytes=") && r != "bytes=0-", "{r}");
    assert_eq!(seen[1].if_range.as_deref(), Some("\"r1\""));
    let url = srv.url("/files/disk.img.zst");
    assert_eq!(proxy.requests(&format!("GET {url}")).len(), 2, "{}", proxy.log_text());
}

#[test]
fn no_proxy_sends_listed_hosts_around_the_proxy() {
    let dir = TestDir::new("proxy-bypass");
    let raw = disk_image(73, 2 * MIB);
    let srv = Httpd::start();
    srv.file("/disk.img", raw.clone(), true, None);
    let proxy = Tinyproxy::start(&dir, &[443], None);
    let out = dir.path("out.img");
    for no_proxy in ["127.0.0.1", "127.0.0.0/8", "*"] {
        let o = flash_to(
            &srv.url("/disk.img"),
            &out,
            &[("http_proxy", &proxy.url()), ("NO_PROXY", &format!("other.test, {no_proxy}"))],
        );
        assert!(o.status.success(), "NO_PROXY={no_proxy}: {}", stderr(&o));
        assert_eq!(sha256(&std::fs::read(&out).unwrap()), sha256(&raw));
    }
    assert_eq!(srv.seen().len(), 3);
    assert!(proxy.requests("GET").is_empty(), "{}", proxy.log_text());
}

#[test]
fn a_dead_proxy_is_named_with_the_target_and_no_password() {
    let dir = TestDir::new("proxy-dead");
    let srv = Httpd::start();
    srv.file("/disk.img", vec![0u8; 4096], true, None);
    let dead = free_port();
    let url = srv.url("/disk.img");
    let o = flash_to(
        &url,
        &dir.path("out.img"),
        &[
            ("ALL_PROXY", &format!("http://ops:topsecret@127.0.0.1:{dead}")),
            ("BTY_HTTP_TIMEOUT", "2"),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{url} through the proxy http://ops:***@127.0.0.1:{dead}")),
        "{err}"
    );
    assert!(!err.contains("topsecret"), "{err}");
    assert!(srv.seen().is_empty(), "{:?}", srv.seen());
}

#[test]
fn oras_pulls_through_the_proxy_with_connect() {
    let dir = TestDir::new("proxy-oras");
    let reg = Registry::start(&dir, Options { tls: true, token: true, redirect_to: None });
    let raw = disk_image(74, 2 * MIB);
    reg.push_artifact("lab/proxied", "v1", &[("disk.img", &raw)]);
    let reg_port: u16 = reg.addr.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = Tinyproxy::start(&dir, &[reg_port], Some(("reg", "pw")));
    let mut cmd = bty_env(&[]);
    for (k, v) in reg.env() {
        cmd.env(k, v);
    }
    let with_creds = format!("http://reg:pw@127.0.0.1:{}", proxy.port);
    let out = dir.path("out.img");
    let o = cmd
        .env("HTTPS_PROXY", &with_creds)
        .env("http_proxy", &with_creds)
        .args(["flash", "--yes", "--progress", "none"])
        .arg(format!("oras://{}/lab/proxied:v1", reg.addr))
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", stderr(&o), proxy.log_text());
    assert_eq!(sha256(&std::fs::read(&out).unwrap()), sha256(&raw));
    // The registry over https through a tunnel; its plain-http token realm in absolute form.
    assert!(!proxy.requests(&format!("CONNECT {}", reg.addr)).is_empty(), "{}", proxy.log_text());
    let realm = &reg.tokens.as_ref().expect("a token server").addr;
    assert!(!proxy.requests(&format!("GET http://{realm}/")).is_empty(), "{}", proxy.log_text());
}

#[test]
fn bty_web_fetches_a_catalog_manifest_through_the_proxy() {
    let dir = TestDir::new("proxy-web");
    let proxy = Tinyproxy::start(&dir, &[443], None);
    let web = Httpd::start();
    let sums = format!("{}  debian.img.zst\n", "d".repeat(64));
    web.file("/images/SHA256SUMS", sums.into_bytes(), false, None);
    let proxy_url = proxy.url();
    let mut env: Vec<(&str, &str)> = vec![("http_proxy", &proxy_url)];
    env.extend(PROXY_VARS.iter().filter(|v| **v != "http_proxy").map(|v| (*v, "")));
    let s = Server::start_env("proxy-web", &env);
    let c = s.login();
    let sha_url = web.url("/images/SHA256SUMS");
    let (st, _, body) = s.call(
        "POST",
        "/catalog/entries",
        Some(&c),
        &format!(r#"{{"image_url":"https://img.lab/debian.img.zst","sha_url":"{sha_url}"}}"#),
    );
    assert_eq!(st, 201, "{body}\n{}", proxy.log_text());
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["disk_image_sha"], "d".repeat(64));
    assert_eq!(proxy.requests(&format!("GET {sha_url}")).len(), 1, "{}", proxy.log_text());
}
