//! `bty-web` as a process: binds, answers the open routes, reports its version.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serves_health_and_version_on_an_ephemeral_port() {
    let state = std::env::temp_dir().join(format!("bty-web-test-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_bty-web"))
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect("first line names the address")
        .to_string();
    let health = get(&addr, "/healthz");
    let version = get(&addr, "/version");
    let missing = get(&addr, "/nope");
    child.kill().unwrap();
    child.wait().unwrap();
    let secret = std::fs::metadata(state.join("session-secret"));
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
}

#[test]
fn version_flag() {
    let o = Command::new(env!("CARGO_BIN_EXE_bty-web")).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("bty-web {}", env!("CARGO_PKG_VERSION"))
    );
}
