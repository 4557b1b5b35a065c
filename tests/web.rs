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
