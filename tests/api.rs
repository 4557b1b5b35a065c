//! bty-web's JSON API through real HTTP on 127.0.0.1: auth, machines, events.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    addr: String,
    state: std::path::PathBuf,
}

impl Server {
    fn start(name: &str) -> Server {
        let state = std::env::temp_dir().join(format!("bty-api-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let mut child = Command::new(env!("CARGO_BIN_EXE_bty-web"))
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .env("BTY_ADMIN_PASSWORD", "pw-for-tests")
            .env_remove("BTY_CONFIG_FILE")
            .env_remove("BTY_CONFIG_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr =
            line.trim().strip_prefix("listening on http://").expect("address line").to_string();
        Server { child, addr, state }
    }

    /// Sends one request; returns (status, headers lower-cased, body).
    fn call(
        &self,
        method: &str,
        path: &str,
        cookie: Option<&str>,
        body: &str,
    ) -> (u16, String, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
        let ctype = if path == "/ui/login" {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{cookie}Content-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    fn login(&self) -> String {
        let (st, head, _) = self.call("POST", "/ui/login", None, "password=pw-for-tests");
        assert_eq!(st, 303, "{head}");
        assert!(head.contains("location: /ui/dashboard"), "{head}");
        let line = head
            .lines()
            .find(|l| l.starts_with("set-cookie: bty-token="))
            .expect("a session cookie");
        assert!(
            line.contains("httponly")
                && line.contains("samesite=strict")
                && line.contains("max-age=604800")
        );
        // The cookie value keeps its case; take it from the header as lower-cased hex is fine.
        line.trim_start_matches("set-cookie: ").split(';').next().unwrap().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

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
    let cookie = s.login();
    let (st, _, body) = s.call("GET", "/machines", Some(&cookie), "");
    assert_eq!((st, body.as_str()), (200, "[]"));
    let (st, head, _) = s.call("POST", "/ui/logout", Some(&cookie), "");
    assert_eq!(st, 303);
    assert!(head.contains("bty-token=;") && head.contains("max-age=0"), "{head}");
    let (_, _, body) = s.call("GET", "/events?kind=auth.login.failed", Some(&cookie), "");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 1, "{body}");
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
    let (st, _, _) = s.call("DELETE", "/machines/aa:bb:cc:dd:ee:01", Some(&c), "");
    assert_eq!(st, 204);
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
