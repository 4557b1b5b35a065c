//! `bty-web` as a process: binds, answers the open routes, reports its version.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use crate::util;
use crate::util::{bty_web, spawn_web};

fn get(addr: &str, path: &str) -> String {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

#[test]
fn serves_health_and_version_on_an_ephemeral_port() {
    let state = std::env::temp_dir().join(format!("bty-web-test-{}", std::process::id()));
    let (mut child, addr) = spawn_web(bty_web(&state));
    let health = get(&addr, "/healthz");
    let version = get(&addr, "/version");
    let missing = get(&addr, "/nope");
    child.kill().unwrap();
    child.wait().unwrap();
    let secret = std::fs::metadata(state.join("session-secret"));
    let db = std::fs::metadata(state.join("state.db"));
    let _ = std::fs::remove_dir_all(&state);
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with(r#"{"status":"ok"}"#),
        "{health}"
    );
    assert!(
        version.contains(&format!(r#"{{"version":"{}"}}"#, env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(missing.starts_with("HTTP/1.1 404") && missing.contains(r#""detail""#), "{missing}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(secret.unwrap().permissions().mode() & 0o777, 0o600);
    assert!(db.is_ok(), "bty-web creates state.db at start");
}

#[test]
fn version_flag() {
    let o = Command::new(env!("CARGO_BIN_EXE_bty-web")).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("bty-web {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn config_prints_every_setting_with_its_source() {
    let dir = std::env::temp_dir().join(format!("bty-web-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bty.toml");
    std::fs::write(
        &f,
        "[server]\nhost = \"127.0.0.1\"\n[admin]\npassword = \"hunter2\"\n[typo]\nx = 1\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_bty-web"))
        .arg("config")
        .env("BTY_CONFIG_FILE", &f)
        .env("BTY_SERVER_PORT", "9999")
        .env_remove("BTY_ADMIN_PASSWORD")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    let line = |name: &str| out.lines().find(|l| l.starts_with(name)).unwrap_or("").to_string();
    assert!(line("[server] host").contains(&format!("toml {}", f.display())), "{out}");
    assert!(
        line("[server] port").contains("9999")
            && line("[server] port").contains("env BTY_SERVER_PORT")
    );
    assert!(
        line("[paths] state_dir").contains("/var/lib/bty")
            && line("[paths] state_dir").contains("default")
    );
    assert!(line("[admin] password").contains("(set)") && !out.contains("hunter2"), "{out}");
    assert!(err.contains("unknown setting ignored") && err.contains("[typo] x"), "{err}");

    std::fs::write(&f, "[server\nport = 1\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_bty-web"))
        .arg("config")
        .env("BTY_CONFIG_FILE", &f)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("parsing"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Sends raw bytes and returns the raw answer.
fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn bootstrap_script_limits_and_graceful_stop() {
    let state = std::env::temp_dir().join(format!("bty-web-test2-{}", std::process::id()));
    let mut cmd = bty_web(&state);
    cmd.stderr(Stdio::piped());
    let (child, addr) = spawn_web(cmd);

    // A name that is not the server's is not repeated: the script chains to the address the
    // request came to (the ui module covers the names that are kept).
    let script = raw(
        &addr,
        b"GET /pxe-bootstrap.ipxe HTTP/1.1\r\nHost: bty.lab:8080\r\nConnection: close\r\n\r\n",
    );
    assert!(script.starts_with("HTTP/1.1 200"), "{script}");
    assert!(
        script.ends_with(&format!("#!ipxe\nchain http://{addr}/pxe/${{net0/mac:hexhyp}}\n")),
        "{script}"
    );
    let evil =
        raw(&addr, b"GET /pxe-bootstrap.ipxe HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n");
    assert!(evil.starts_with("HTTP/1.1 400"), "{evil}");
    let post = raw(
        &addr,
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    // Over the 64 KiB limit by Content-Length: refused without reading it all (on an open
    // route: a protected one answers 401 before it looks at the body at all).
    let big = raw(
        &addr,
        b"POST /pxe/aa:bb:cc:dd:ee:ff/done HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\nConnection: close\r\n\r\n{",
    );
    assert!(big.starts_with("HTTP/1.1 413") && big.contains("too large"), "{big}");
    let head = raw(&addr, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200") && !head.contains("status"), "{head}");

    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&state);
    assert_eq!(out.status.code(), Some(0), "SIGTERM stops cleanly");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("GET /pxe-bootstrap.ipxe 200"), "one access-log line per request: {log}");
    assert!(log.contains("POST /pxe/aa:bb:cc:dd:ee:ff/done 413"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

/// Runs a bty-web that is expected to exit by itself (a refused start): (exit code, stderr).
/// Killed after 20 s if it does not.
fn run_to_exit(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let _ = child.wait();
    (status.and_then(|s| s.code()), err)
}

/// The names and contents of the files in a directory, for "nothing was written" checks.
fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, std::fs::read(e.path()).unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    all.sort();
    all
}

#[test]
fn refuses_the_default_or_an_empty_password_off_loopback_and_writes_nothing() {
    let base = std::env::temp_dir().join(format!("bty-web-pwrefuse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let fresh = base.join("fresh");
    let kept = base.join("kept");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::write(kept.join("bty.toml"), "[admin]\npassword = \"\"\n").unwrap();
    std::fs::write(kept.join("precious"), "keep me").unwrap();
    let before = snapshot(&kept);
    // (listen address, state dir, BTY_ADMIN_PASSWORD or none, what the message adds)
    let cases: [(&str, &std::path::Path, Option<&str>, &str); 5] = [
        ("0.0.0.0:0", &fresh, None, ""),
        ("0.0.0.0:0", &fresh, Some(""), "BTY_ADMIN_PASSWORD is empty"),
        ("[::]:0", &fresh, Some(""), "BTY_ADMIN_PASSWORD is empty"),
        ("0.0.0.0:0", &fresh, Some("bty-lab"), "set again in env BTY_ADMIN_PASSWORD"),
        ("0.0.0.0:0", &kept, Some(""), "[admin] password in"),
    ];
    for (listen, state, pw, extra) in cases {
        let mut cmd = bty_web(state);
        cmd.args(["--listen", listen]);
        match pw {
            Some(p) => cmd.env("BTY_ADMIN_PASSWORD", p),
            None => cmd.env_remove("BTY_ADMIN_PASSWORD"),
        };
        // The state dir's bty.toml is read when no other config file is named.
        let (code, err) = run_to_exit(cmd);
        assert_eq!(code, Some(2), "{listen} {pw:?}: {err}");
        assert!(
            err.contains("refusing to serve on")
                && err.contains("built-in default admin password")
                && err.contains("BTY_ADMIN_PASSWORD=")
                && err.contains("[admin] password")
                && err.contains(extra),
            "{listen} {pw:?}: {err}"
        );
        assert!(!err.contains("bty-lab"), "the password is never printed: {err}");
        assert!(!fresh.exists(), "no state dir is created: {listen} {pw:?}");
        assert_eq!(snapshot(&kept), before, "nothing written to an existing state dir");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn the_start_up_line_names_where_the_password_came_from() {
    let base = std::env::temp_dir().join(format!("bty-web-pwsource-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let toml = base.join("bty.toml");
    std::fs::write(&toml, "[admin]\npassword = \"from-the-file\"\n").unwrap();
    let start = |env: &[(&str, &str)], file: Option<&std::path::Path>| -> String {
        let state = base.join("state");
        let mut cmd = bty_web(&state);
        cmd.env_remove("BTY_ADMIN_PASSWORD").envs(env.iter().copied()).stderr(Stdio::piped());
        if let Some(f) = file {
            cmd.env("BTY_CONFIG_FILE", f);
        }
        let (mut child, _addr) = spawn_web(cmd);
        // The line comes before the address line; once that is read, stopping loses nothing.
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let env = start(&[("BTY_ADMIN_PASSWORD", "from-the-env")], None);
    assert!(env.contains("admin password from env BTY_ADMIN_PASSWORD"), "{env}");
    assert!(!env.contains("from-the-env"), "{env}");
    let file = start(&[], Some(&toml));
    assert!(file.contains(&format!("admin password from toml {}", toml.display())), "{file}");
    assert!(!file.contains("from-the-file"), "{file}");
    // On loopback the default is allowed, with a warning; an empty one is no password.
    let default = start(&[("BTY_ADMIN_PASSWORD", "")], None);
    assert!(
        default.contains("admin password: the built-in default admin password")
            && default.contains("BTY_ADMIN_PASSWORD is empty")
            && default.contains("loopback only"),
        "{default}"
    );
    assert!(!default.contains("bty-lab"), "{default}");
    let _ = std::fs::remove_dir_all(&base);
}

/// GET `path` with a cookie: the status.
fn status_with(s: &util::Server, path: &str, cookie: &str) -> u16 {
    s.call("GET", path, Some(cookie), "").0
}

#[test]
fn logout_and_a_new_password_revoke_every_session_across_restarts() {
    let s = util::Server::start("web-revoke");
    let first = s.login();
    let second = s.login();
    assert_eq!(status_with(&s, "/machines", &first), 200);
    assert_eq!(status_with(&s, "/machines", &second), 200);
    // A client with no session cannot log anyone out.
    let (st, head, _) = s.call("POST", "/ui/logout", None, "");
    assert!(st == 303 && head.contains("set-cookie: bty-token=; path=/; max-age=0"), "{head}");
    assert_eq!(status_with(&s, "/machines", &first), 200);
    // Logging out with one ends both, and the same cookie replayed is refused.
    let (st, _, _) = s.call("POST", "/ui/logout", Some(&first), "");
    assert_eq!(st, 303);
    assert_eq!(status_with(&s, "/machines", &first), 401, "the logged-out cookie replayed");
    assert_eq!(status_with(&s, "/machines", &second), 401, "every session ends");
    let (st, head, _) = s.call("GET", "/ui/dashboard", Some(&second), "");
    assert!(st == 303 && head.contains("location: /ui/login"), "{head}");
    let third = s.login();
    assert_eq!(status_with(&s, "/machines", &third), 200);
    // The epoch survives a restart: the old cookies stay dead, the new one lives.
    let state = s.state.clone();
    s.stop_keeping_state();
    let s = util::Server::start_in(state.clone());
    assert_eq!(status_with(&s, "/machines", &first), 401);
    assert_eq!(status_with(&s, "/machines", &third), 200);
    let csrf_page = s.call("GET", "/ui/account", Some(&third), "").2;
    assert!(csrf_page.contains("name=\"csrf\""), "forms still carry the CSRF token");
    // A restart with another password ends every session.
    s.stop_keeping_state();
    let s = util::Server::start_in_env(state, &[("BTY_ADMIN_PASSWORD", "a-new-password")]);
    assert_eq!(status_with(&s, "/machines", &third), 401, "signed under the old password");
    let (st, _, _) = s.call("POST", "/ui/login", None, "password=pw-for-tests");
    assert_eq!(st, 401, "the old password is gone");
    let (st, head, _) = s.call("POST", "/ui/login", None, "password=a-new-password");
    assert_eq!(st, 303, "{head}");
    assert!(!head.contains("secure"), "plain http: no Secure flag: {head}");
}

#[test]
fn the_session_cookie_is_secure_behind_an_https_public_url() {
    let s = util::Server::start_env(
        "web-secure",
        &[("BTY_SERVER_PUBLIC_URL", "https://bty.lab.example:8443")],
    );
    let (st, head, _) = s.call("POST", "/ui/login", None, "password=pw-for-tests");
    assert_eq!(st, 303, "{head}");
    let line = head.lines().find(|l| l.starts_with("set-cookie: bty-token=")).unwrap();
    assert!(line.contains("; secure") && line.contains("httponly"), "{line}");
}

#[test]
fn parallel_wrong_logins_cannot_pass_the_limit() {
    let s = std::sync::Arc::new(util::Server::start("web-login-race"));
    let cookie = s.login();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (s, barrier) = (std::sync::Arc::clone(&s), std::sync::Arc::clone(&barrier));
                scope.spawn(move || {
                    barrier.wait();
                    s.call("POST", "/ui/login", None, &format!("password=guess-{i}")).0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let checked = statuses.iter().filter(|&&st| st == 401).count();
    let limited = statuses.iter().filter(|&&st| st == 429).count();
    assert_eq!((checked, limited), (10, 40), "{statuses:?}");
    // The server compared exactly ten passwords: one failure event each.
    let (_, _, json) = s.call("GET", "/events?kind=auth.login.failed", Some(&cookie), "");
    let events = serde_json::from_str::<serde_json::Value>(&json).unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 10, "{json}");
    // Now the right password is refused too, until the window has passed.
    let (st, head, body) = s.call("POST", "/ui/login", None, "password=pw-for-tests");
    assert_eq!(st, 429, "{head}");
    assert!(!head.contains("set-cookie: bty-token="), "{head}");
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!((1..=300).contains(&retry), "{head}");
    assert!(body.contains("Too many failed logins"), "{body}");
    // The session from before the burst still works: limiting refuses logins, not sessions.
    assert_eq!(status_with(&s, "/machines", &cookie), 200);
}

/// `POST /ui/login` from another loopback address (curl binds it): (status, lower-cased head).
fn login_from(addr: &str, source: &str, password: &str) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10", "--interface", source, "-d"])
        .arg(format!("password={password}"))
        .arg(format!("http://{addr}/ui/login"))
        .output()
        .expect("running curl");
    let out = String::from_utf8_lossy(&o.stdout).to_ascii_lowercase();
    let head = out.split("\r\n\r\n").next().unwrap_or("").to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head)
}

#[test]
fn failures_from_many_addresses_ration_logins_except_for_known_clients() {
    let s = util::Server::start("web-login-global");
    let cookie = s.login();
    // Ten addresses, ten failures each: each within its own limit, a hundred in all.
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (2..12)
            .map(|n| {
                let addr = s.addr.clone();
                scope.spawn(move || {
                    (0..10)
                        .map(|_| login_from(&addr, &format!("127.0.0.{n}"), "wrong").0)
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|&st| st == 401), "{statuses:?}");
    // Now twenty new addresses with the right password at once: checks are rationed, so most
    // wait (one check every 2 s), and the refused ones say for how long.
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(20));
        let handles: Vec<_> = (20..40)
            .map(|n| {
                let (addr, barrier) = (s.addr.clone(), std::sync::Arc::clone(&barrier));
                scope.spawn(move || {
                    barrier.wait();
                    login_from(&addr, &format!("127.0.0.{n}"), "pw-for-tests")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<&String> =
        answers.iter().filter(|(st, _)| *st == 429).map(|(_, h)| h).collect();
    assert!(
        answers.iter().all(|(st, _)| *st == 429 || *st == 303) && !refused.is_empty(),
        "{answers:?}"
    );
    assert!(refused.iter().all(|h| h.contains("retry-after: ")), "{refused:?}");
    // The operator's address logged in before: not rationed.
    let (st, _) = login_from(&s.addr, "127.0.0.1", "pw-for-tests");
    assert_eq!(st, 303);
    let (_, _, json) = s.call("GET", "/events?kind=auth.login.backoff", Some(&cookie), "");
    let events = serde_json::from_str::<serde_json::Value>(&json).unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "one event: {json}");
    let (_, _, json) = s.call("GET", "/events?kind=auth.login.failed&limit=500", Some(&cookie), "");
    let events = serde_json::from_str::<serde_json::Value>(&json).unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 100, "nothing else was checked");
}
