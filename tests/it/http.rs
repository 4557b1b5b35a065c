//! bty-web's HTTP layer against misbehaving clients, and artifact uploads (`PUT /boot/{name}`),
//! through real sockets on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util;
use crate::util::Server;

fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(&s.addr).expect("connecting");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

/// Reads one response (head and Content-Length body) off a kept-alive connection.
fn read_response(r: &mut BufReader<TcpStream>) -> (u16, String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let len = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    (status, head.to_ascii_lowercase(), body)
}

/// Whether the server closed the connection (EOF) within `wait`.
fn closed_within(c: &mut TcpStream, wait: Duration) -> bool {
    c.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

fn healthy(s: &Server) -> bool {
    let (st, _, body) = s.call("GET", "/healthz", None, "");
    st == 200 && body.contains("ok")
}

#[test]
fn keep_alive_pipelining_and_chunked_bodies() {
    let s = Server::start("http-keepalive");
    let c = connect(&s);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    // Two requests in one write: answered in order on the same connection.
    w.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .unwrap();
    let (st, head, body) = read_response(&mut r);
    assert_eq!(st, 200, "{head}");
    assert!(head.contains("date: ") && !head.contains("connection: close"), "{head}");
    assert_eq!(body, br#"{"status":"ok"}"#);
    let (st, _, body) = read_response(&mut r);
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).contains("version"));
    // A chunked body (with an extension and a trailer) to a buffered route.
    let mac = "52:54:00:00:00:01";
    w.write_all(format!("GET /pxe/{mac} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).unwrap();
    assert_eq!(read_response(&mut r).0, 200);
    let body = r#"{"status":"failed","reason":"disk on fire"}"#;
    let (a, b) = body.split_at(10);
    w.write_all(
        format!(
            "POST /pxe/{mac}/status HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x};x=y\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: 1\r\n\r\n",
            a.len(),
            b.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let (st, head, _) = read_response(&mut r);
    assert_eq!(st, 204, "{head}");
    // Still usable afterwards; HTTP/1.0 without keep-alive is closed after its answer.
    w.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let (st, head, _) = read_response(&mut r);
    assert_eq!(st, 200);
    assert!(head.contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let cookie = s.login();
    let (_, _, events) = s.call("GET", "/events?kind=flash.failed", Some(&cookie), "");
    assert!(events.contains("disk on fire"), "{events}");
}

#[test]
fn hostile_heads_and_bodies_get_4xx_and_the_server_lives() {
    let s = Server::start("http-hostile");
    let send = |raw: &[u8]| -> String {
        let mut c = connect(&s);
        c.write_all(raw).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    // A declared body of 100 TB: answered 413 at once, nothing allocated for it.
    let huge = send(
        b"POST /pxe/52:54:00:00:00:02/done HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000000000\r\n\r\n",
    );
    assert!(huge.starts_with("HTTP/1.1 413"), "{huge}");
    assert!(huge.contains("connection: close") || huge.contains("Connection: close"), "{huge}");
    let cases: &[(&[u8], &str)] = &[
        (b"GARBAGE\r\n\r\n", "400"),
        (b"GET / HTTP/2.0\r\n\r\n", "505"),
        (b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n", "400"),
        (b"POST /pxe/52:54:00:00:00:02/done HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
        (b"POST /pxe/52:54:00:00:00:02/done HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "400"),
        (b"POST /pxe/52:54:00:00:00:02/done HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "501"),
        (b"POST /pxe/52:54:00:00:00:02/status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "400"),
        (b"GET /\x00 HTTP/1.1\r\n\r\n", "400"),
        (b"\xff\xfe / HTTP/1.1\r\n\r\n", "400"),
    ];
    for (raw, want) in cases {
        let got = send(raw);
        assert!(
            got.starts_with(&format!("HTTP/1.1 {want}")),
            "{:?} -> {got}",
            String::from_utf8_lossy(raw)
        );
        assert!(got.contains("\"detail\""), "{got}");
    }
    // A head that never ends: refused once it passes 16 KiB.
    let long = format!("GET /healthz HTTP/1.1\r\nX-Long: {}\r\n", "a".repeat(20_000));
    assert!(send(long.as_bytes()).starts_with("HTTP/1.1 431"));
    // A peer that sends half a body and vanishes.
    {
        let mut c = connect(&s);
        c.write_all(b"PUT /machines/52:54:00:00:00:03 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n{\"boot")
            .unwrap();
    }
    assert!(healthy(&s));
}

#[test]
fn slow_and_idle_clients_are_dropped_and_connections_are_capped() {
    let s = Server::start_env(
        "http-timeouts",
        &[("BTY_SERVER_HEADER_TIMEOUT", "1"), ("BTY_SERVER_IDLE_TIMEOUT", "1")],
    );
    // Slowloris: a head trickled byte by byte does not get past the header deadline.
    let mut slow = connect(&s);
    let started = Instant::now();
    let mut answer = Vec::new();
    for b in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " {
        if slow.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let _ = slow.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(8));
    // Idle keep-alive connections are closed after the idle timeout.
    let mut idle = connect(&s);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(5)));
    // Four silent connections fill the cap: the fifth is refused with 503 at once. A server
    // with the default header deadline (10 s), so that a loaded machine cannot time the silent
    // ones out before the fifth arrives.
    let s = Server::start_env("http-cap", &[("BTY_SERVER_MAX_CONNECTIONS", "4")]);
    let hold: Vec<TcpStream> = (0..4).map(|_| connect(&s)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let (st, head, body) = s.call("GET", "/healthz", None, "");
    assert_eq!(st, 503, "{head}{body}");
    assert!(body.contains("busy"));
    drop(hold);
    // The idle timeout frees the slots too, but dropping them is enough.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !healthy(&s) {
        assert!(Instant::now() < deadline, "the server did not recover after the cap");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PUT with an explicit Content-Length; returns (status, body).
fn put(s: &Server, path: &str, cookie: Option<&str>, data: &[u8], expect: bool) -> (u16, String) {
    let mut c = connect(s);
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    let exp = if expect { "Expect: 100-continue\r\n" } else { "" };
    write!(
        c,
        "PUT {path} HTTP/1.1\r\nHost: {}\r\n{cookie}{exp}Content-Length: {}\r\nConnection: close\r\n\r\n",
        s.addr,
        data.len()
    )
    .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    if expect {
        let (st, head, body) = read_response(&mut r);
        if st != 100 {
            return (st, format!("{head}{}", String::from_utf8_lossy(&body)));
        }
    }
    c.write_all(data).unwrap();
    let (st, _, body) = read_response(&mut r);
    (st, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn boot_artifact_uploads_are_atomic_authenticated_and_bounded() {
    let s = Server::start_env("http-upload", &[("BTY_BOOT_MAX_UPLOAD_MIB", "3")]);
    let boot = s.state.join("boot");
    let data = util::prng_bytes(7, (2 << 20) + 123);
    // Auth first: no 100 Continue and nothing written without a session.
    let (st, body) = put(&s, "/boot/k.vmlinuz", None, &data, true);
    assert_eq!(st, 401, "{body}");
    let cookie = s.login();
    let (st, body) = put(&s, "/boot/k.vmlinuz", Some(&cookie), &data, true);
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["name"], "k.vmlinuz");
    assert_eq!(v["size_bytes"], data.len() as u64);
    assert_eq!(v["path"], boot.join("k.vmlinuz").display().to_string());
    assert_eq!(std::fs::read(boot.join("k.vmlinuz")).unwrap(), data);
    // Served back byte for byte.
    let mut c = connect(&s);
    c.write_all(b"GET /boot/k.vmlinuz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (st, _, got) = read_response(&mut BufReader::new(c));
    assert_eq!(st, 200);
    assert_eq!(util::sha256(&got), util::sha256(&data));
    // Hostile names are refused as names.
    for bad in
        ["/boot/..%2Fstate.db", "/boot/.hidden", "/boot/a/b", "/boot/%3Cscript%3E", "/boot/a%00b"]
    {
        let (st, body) = put(&s, bad, Some(&cookie), b"x", false);
        assert_eq!(st, 400, "{bad}: {body}");
    }
    // Over the limit, declared (answered before the body is sent, as curl waits for 100
    // Continue) or found while reading a chunked body: 413 and the old file stays.
    let big = util::prng_bytes(8, (3 << 20) + 1);
    let (st, body) = put(&s, "/boot/k.vmlinuz", Some(&cookie), &big, true);
    assert_eq!(st, 413, "{body}");
    {
        let mut c = connect(&s);
        write!(
            c,
            "PUT /boot/k.vmlinuz HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            s.addr
        )
        .unwrap();
        for chunk in big.chunks(1 << 20) {
            let _ = write!(c, "{:x}\r\n", chunk.len());
            let _ = c.write_all(chunk);
            let _ = c.write_all(b"\r\n");
        }
        let _ = c.write_all(b"0\r\n\r\n");
        let (st, _, body) = read_response(&mut BufReader::new(c));
        assert_eq!(st, 413, "{}", String::from_utf8_lossy(&body));
    }
    // A client that drops mid-upload leaves neither a partial file nor a temp file.
    {
        let mut c = connect(&s);
        write!(
            c,
            "PUT /boot/k.vmlinuz HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nContent-Length: {}\r\n\r\n",
            s.addr,
            data.len()
        )
        .unwrap();
        c.write_all(&big[..1 << 20]).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names: Vec<String> = std::fs::read_dir(&boot)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if names == ["k.vmlinuz"] {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {names:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(boot.join("k.vmlinuz")).unwrap(), data);
    let (_, _, events) = s.call("GET", "/events?kind=boot.uploaded", Some(&cookie), "");
    assert!(events.contains("k.vmlinuz"), "{events}");
    assert!(healthy(&s));
}

#[test]
fn an_upload_onto_a_full_disk_is_507_and_leaves_nothing() {
    let dir = util::TestDir::new("http-full");
    let mnt = dir.path("boot");
    let _tmpfs = util::Tmpfs::mount(mnt.clone(), "1m");
    let s = Server::start_env("http-full", &[("BTY_PATHS_BOOT_DIR", mnt.to_str().unwrap())]);
    let cookie = s.login();
    let data = util::prng_bytes(9, 2 << 20);
    let (st, body) = put(&s, "/boot/big.initrd", Some(&cookie), &data, false);
    assert_eq!(st, 507, "{body}");
    assert!(body.contains("big.initrd"), "{body}");
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
    // Something that fits still works afterwards.
    let (st, body) = put(&s, "/boot/small.ipxe", Some(&cookie), b"#!ipxe\n", false);
    assert_eq!(st, 200, "{body}");
}

/// Sends a request head (no body) and returns the first response on the connection.
fn head_only(s: &Server, head: &str) -> (u16, String, Vec<u8>) {
    let mut c = connect(s);
    c.write_all(head.as_bytes()).unwrap();
    read_response(&mut BufReader::new(c))
}

#[test]
fn auth_is_checked_before_any_body_byte_is_read() {
    let s = Server::start("http-auth-first");
    let cookie = s.login();
    let mac = "52:54:00:00:00:21";
    assert_eq!(s.call("GET", &format!("/pxe/{mac}"), None, "").0, 200);
    let before = s.call("GET", &format!("/machines/{mac}"), Some(&cookie), "").2;
    // Each head declares a body that is never sent: a server that waited for it before the
    // session check would leave the read below hanging until its timeout. (The API heads say
    // JSON, so that they pass the content-type check, which also needs only the head.)
    for (head, want) in [
        (format!("PUT /machines/{mac} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n"), 401),
        // A method the route does not have: 405 with the ones it has, before the body.
        (
            format!("PATCH /machines/{mac} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n"),
            405,
        ),
        // No such route: refused from the route table, before the body, like a missing session.
        (
            format!("POST /machines/{mac}/inventory HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 4000000\r\n\r\n"),
            404,
        ),
        (
            "POST /catalog/entries HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 60000\r\n\r\n".into(),
            401,
        ),
        ("POST /catalog/import HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n".into(), 401),
        (
            format!("POST /ui/machines/{mac} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 60000\r\n\r\n"),
            303,
        ),
        (
            "POST /ui/catalog/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 4000000\r\n\r\n".into(),
            303,
        ),
    ] {
        let (st, h, body) = head_only(&s, &head);
        assert_eq!(st, want, "{head}\n{h}{}", String::from_utf8_lossy(&body));
        assert!(h.contains("connection: close"), "{h}");
        match want {
            303 => assert!(h.contains("location: /ui/login"), "{h}"),
            404 => assert!(String::from_utf8_lossy(&body).contains("Not Found")),
            405 => assert!(h.contains("allow: get, head, put, delete"), "{h}"),
            _ => assert!(String::from_utf8_lossy(&body).contains("login required")),
        }
    }
    // Nothing changed: the machine and the catalog are as they were.
    assert_eq!(s.call("GET", &format!("/machines/{mac}"), Some(&cookie), "").2, before);
    assert_eq!(s.call("GET", "/catalog/entries", Some(&cookie), "").2, "[]");
    // With the session the same route reads its body as before.
    let (st, _, body) = s.call(
        "PUT",
        &format!("/machines/{mac}"),
        Some(&cookie),
        r#"{"boot_mode":"bty-inventory"}"#,
    );
    assert_eq!(st, 200, "{body}");
    assert!(healthy(&s));
}

/// Sends `head`, then `body` one byte every `gap`, stopping when the server answers or closes;
/// returns what it answered.
fn trickle(s: &Server, head: &str, body: &[u8], gap: Duration) -> String {
    let mut c = connect(s);
    c.write_all(head.as_bytes()).unwrap();
    let mut r = c.try_clone().unwrap();
    r.set_read_timeout(Some(gap)).unwrap();
    let mut got = Vec::new();
    for b in body {
        if c.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
    }
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = r.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn bodies_trickled_below_the_minimum_rate_get_408_and_write_nothing() {
    let s = Server::start_env(
        "http-min-rate",
        &[("BTY_SERVER_BODY_GRACE", "1"), ("BTY_SERVER_MIN_BODY_RATE", "1000")],
    );
    let cookie = s.login();
    let mac = "52:54:00:00:00:22";
    assert_eq!(s.call("GET", &format!("/pxe/{mac}"), None, "").0, 200);
    let inv = br#"{"disks":[{"path":"/dev/vda","size":"1G","vendor":"TRICKLE"}]}"#;
    // A buffered body (inventory) at a few bytes a second: cut with 408 after the grace.
    let answer = trickle(
        &s,
        &format!(
            "POST /pxe/{mac}/inventory HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            inv.len()
        ),
        inv,
        Duration::from_millis(250),
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("slower than 1000 bytes/s"), "{answer}");
    let (_, _, m) = s.call("GET", &format!("/machines/{mac}"), Some(&cookie), "");
    assert!(!m.contains("TRICKLE"), "{m}");
    // A streamed upload the same: 408, and no file (not even a partial one) in the boot dir.
    let data = vec![b'k'; 64];
    let answer = trickle(
        &s,
        &format!(
            "PUT /boot/slow.kernel HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nContent-Length: {}\r\n\r\n",
            data.len()
        ),
        &data,
        Duration::from_millis(250),
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let left: Vec<_> = std::fs::read_dir(s.state.join("boot"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    // A body that arrives at once is not affected.
    let (st, _, body) = s.call(
        "POST",
        &format!("/pxe/{mac}/inventory"),
        None,
        r#"{"disks":[{"path":"/dev/vda","size":"1G","vendor":"FAST"}]}"#,
    );
    assert_eq!(st, 204, "{body}");
}

#[test]
fn buffered_bodies_share_a_budget_and_give_it_back() {
    let s = Server::start_env("http-budget", &[("BTY_SERVER_MAX_BUFFERED_MIB", "1")]);
    let cookie = s.login();
    let mac = "52:54:00:00:00:23";
    assert_eq!(s.call("GET", &format!("/pxe/{mac}"), None, "").0, 200);
    let inventory = |marker: &str| {
        let pad = "x".repeat(600 << 10);
        format!(r#"{{"disks":[],"lshw":{{"id":"{marker}","pad":"{pad}"}}}}"#)
    };
    let post = |body: &str| {
        format!(
            "POST /pxe/{mac}/inventory HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    };
    // The first request holds 600 KiB of the 1 MiB budget while its body is on the way.
    let first = inventory("FIRST");
    let mut holder = connect(&s);
    holder.write_all(post(&first).as_bytes()).unwrap();
    holder.write_all(&first.as_bytes()[..1000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A second one that would go over it: 503 before a byte of its body is read.
    let second = inventory("SECOND");
    let (st, h, body) = head_only(&s, &post(&second));
    assert_eq!(st, 503, "{h}");
    assert!(h.contains("retry-after"), "{h}");
    assert!(String::from_utf8_lossy(&body).contains("request bodies"), "{body:?}");
    holder.write_all(&first.as_bytes()[1000..]).unwrap();
    let (st, _, body) = read_response(&mut BufReader::new(holder));
    assert_eq!(st, 204, "{}", String::from_utf8_lossy(&body));
    // The refused body was not stored; the budget is back, so the same request now passes.
    let (_, _, lshw) = s.call("GET", &format!("/machines/{mac}/lshw.json"), Some(&cookie), "");
    assert!(lshw.contains("FIRST") && !lshw.contains("SECOND"));
    let (st, _, _) = s.call("POST", &format!("/pxe/{mac}/inventory"), None, &second);
    assert_eq!(st, 204);
}

#[test]
fn a_slowloris_from_one_address_leaves_healthz_answering_from_another() {
    let sockets = 1000;
    let limit = bty::sys::raise_open_files(4096).expect("raising RLIMIT_NOFILE");
    assert!(limit >= 2 * sockets as u64 + 100, "open-file limit {limit}");
    let s = Server::start("http-slowloris");
    let addr: std::net::SocketAddrV4 = s.addr.parse().unwrap();
    let attacker = std::net::Ipv4Addr::new(127, 0, 0, 2);
    // 1,000 connections from 127.0.0.2, each with half a head, held open.
    let mut held = Vec::with_capacity(sockets);
    let mut refused = 0;
    for _ in 0..sockets {
        let mut c = bty::sys::connect_from(attacker, addr).expect("connecting from 127.0.0.2");
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ");
        held.push(c);
    }
    // The server stays answering 127.0.0.1 while they are held.
    for _ in 0..5 {
        assert!(healthy(&s), "/healthz did not answer during the slowloris");
    }
    // Beyond its per-address cap (64 by default) the attacker was refused with a reason.
    for c in held.iter_mut().skip(100).take(20) {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        if out.starts_with("HTTP/1.1 503") && out.contains("too many connections from your address")
        {
            refused += 1;
        }
    }
    assert_eq!(refused, 20);
    // Its slots come back when its connections go.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = bty::sys::connect_from(attacker, addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        if out.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "127.0.0.2 still refused: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_forged_line_in_a_request_stays_in_one_log_line() {
    let dir = util::TestDir::new("http-log");
    let mut cmd = util::bty_web(&dir.0);
    cmd.env("BTY_ADMIN_PASSWORD", "pw-for-tests").stderr(std::process::Stdio::piped());
    let (mut child, addr) = util::spawn_web(cmd);
    // The server is stopped before any assertion, so a failing one leaves no process behind.
    let out = (|| {
        let mut c = TcpStream::connect(&addr)?;
        c.write_all(
            b"GET /x%0Abty-web:%20FORGED%0D%1B[2J HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )?;
        let mut out = String::new();
        c.read_to_string(&mut out).map(|_| out)
    })();
    let _ = child.kill();
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let _ = child.wait();
    let out = out.unwrap();
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(log.lines().all(|l| !l.starts_with("bty-web: FORGED")), "{log}");
    assert!(!log.contains('\x1b') && !log.contains('\r'), "{log:?}");
    let line = log.lines().find(|l| l.contains("FORGED")).expect("the access-log line");
    assert!(line.starts_with("bty-web: GET /x\\nbty-web: FORGED\\r\\u{1b}[2J 404 "), "{line}");
}

#[test]
fn mutated_requests_to_the_real_server_get_4xx_or_a_close() {
    let s = Server::start("http-fuzz");
    let cookie = s.login();
    let mac = "52:54:00:00:00:24";
    assert_eq!(s.call("GET", &format!("/pxe/{mac}"), None, "").0, 200);
    let before = s.call("GET", &format!("/machines/{mac}"), Some(&cookie), "").2;
    let seeds: Vec<Vec<u8>> = vec![
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /version HTTP/1.0\r\n\r\n".to_vec(),
        format!("POST /pxe/{mac}/progress HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{{\"a\":1}}\r\n0\r\n\r\n").into_bytes(),
        format!("POST /pxe/{mac}/status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 17\r\n\r\n{{\"status\":\"bad\"}}").into_bytes(),
        format!("PUT /machines/{mac} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n{{}}").into_bytes(),
        b"POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10\r\n\r\npassword=x".to_vec(),
    ];
    let mut rng = bty::fuzz::Rng::new(bty::fuzz::seed());
    for i in 0..bty::fuzz::iterations(300) {
        let seed = rng.pick(&seeds).clone();
        let input = bty::fuzz::mutate(&mut rng, &seed, 4096);
        let mut c = connect(&s);
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if c.write_all(&input).is_err() {
            continue;
        }
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        // Status lines; a detail that quotes "HTTP/1.1 only" is not one.
        let statuses = out
            .match_indices("HTTP/1.1 ")
            .filter_map(|(at, _)| out.get(at + 9..at + 12).and_then(|v| v.parse::<u16>().ok()));
        for st in statuses {
            assert!(
                (100..500).contains(&st) || st == 501 || st == 505,
                "iteration {i}: {:?} -> {out}",
                String::from_utf8_lossy(&input)
            );
        }
    }
    assert!(healthy(&s));
    // Without the cookie none of them could change the machine.
    assert_eq!(s.call("GET", &format!("/machines/{mac}"), Some(&cookie), "").2, before);
}

/// Sends a head and then `len` bytes of body without waiting for an answer, as most HTTP
/// libraries do without `Expect: 100-continue`; returns whether every byte went out, and the
/// answer read after.
fn send_whole_then_read(s: &Server, head: &str, len: usize) -> (bool, u16, String) {
    let mut c = connect(s);
    c.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut left = len;
    let mut sent_all = true;
    while left > 0 {
        let n = left.min(chunk.len());
        if c.write_all(&chunk[..n]).is_err() {
            sent_all = false;
            break;
        }
        left -= n;
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (sent_all, status, out)
}

#[test]
fn a_refused_large_upload_gets_a_413_the_client_reads_not_a_reset() {
    let s = Server::start_env("http-413", &[("BTY_BOOT_MAX_UPLOAD_MIB", "3")]);
    let cookie = s.login();
    let len = 24 << 20;
    let mac = "52:54:00:41:30:01";
    for (what, head) in [
        (
            "PUT /boot (streamed, the handler's limit)",
            format!(
                "PUT /boot/big.img HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nContent-Length: {len}\r\n\r\n",
                s.addr
            ),
        ),
        (
            "a buffered route (64 KiB)",
            format!(
                "POST /pxe/{mac}/status HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
                s.addr
            ),
        ),
        (
            "a buffered route, chunked",
            format!(
                "POST /pxe/{mac}/status HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                s.addr, len
            ),
        ),
    ] {
        let started = Instant::now();
        let (sent_all, status, out) = send_whole_then_read(&s, &head, len);
        assert!(sent_all, "{what}: the upload was cut off (reset) before the client could read");
        assert_eq!(status, 413, "{what}: {out}");
        assert!(out.contains("too large") || out.contains("upload limit"), "{what}: {out}");
        assert!(started.elapsed() < Duration::from_secs(15), "{what}: {:?}", started.elapsed());
    }
    // A client that reads while it sends gets the 413 at once, even for a body past what the
    // server discards (it then closes; the sender may see a reset, the answer is read).
    let c = connect(&s);
    let mut w = c.try_clone().unwrap();
    let head = format!(
        "POST /pxe/{mac}/inventory HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        s.addr,
        200u64 << 20
    );
    let sender = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..200 {
            if w.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let (st, _, body) = read_response(&mut BufReader::new(c.try_clone().unwrap()));
    assert_eq!(st, 413, "{}", String::from_utf8_lossy(&body));
    drop(c);
    sender.join().unwrap();
    assert!(healthy(&s));
    assert!(!s.state.join("boot/big.img").exists());
}
