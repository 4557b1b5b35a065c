//! `bty-web` as a process: binds, answers the open routes, reports its version.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use util::{bty_web, spawn_web};

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
    // request came to (tests/ui.rs covers the names that are kept).
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
    // Over the 64 KiB limit by Content-Length: refused without reading it all.
    let big = raw(
        &addr,
        b"PUT /machines/aa:bb:cc:dd:ee:ff HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\nConnection: close\r\n\r\n{",
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
    assert!(log.contains("PUT /machines/aa:bb:cc:dd:ee:ff 413"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}
