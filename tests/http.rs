//! bty-web's HTTP layer against misbehaving clients, and artifact uploads (`PUT /boot/{name}`),
//! through real sockets on 127.0.0.1.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::Server;

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
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /version HTTP/1.1\r\nHost: x\r\n\r\n",
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
    w.write_all(format!("GET /pxe/{mac} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    assert_eq!(read_response(&mut r).0, 200);
    let body = r#"{"status":"failed","reason":"disk on fire"}"#;
    let (a, b) = body.split_at(10);
    w.write_all(
        format!(
            "POST /pxe/{mac}/status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x};x=y\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: 1\r\n\r\n",
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
        b"POST /pxe/52:54:00:00:00:02/done HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000000\r\n\r\n",
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
        c.write_all(b"PUT /machines/52:54:00:00:00:03 HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"boot")
            .unwrap();
    }
    assert!(healthy(&s));
}

#[test]
fn slow_and_idle_clients_are_dropped_and_connections_are_capped() {
    let s = Server::start_env(
        "http-timeouts",
        &[
            ("BTY_SERVER_HEADER_TIMEOUT", "1"),
            ("BTY_SERVER_IDLE_TIMEOUT", "1"),
            ("BTY_SERVER_MAX_CONNECTIONS", "4"),
        ],
    );
    // Slowloris: a head trickled byte by byte does not get past the header deadline.
    let mut slow = connect(&s);
    let started = Instant::now();
    let mut answer = Vec::new();
    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " {
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
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(5)));
    // Four silent connections fill the cap: the fifth is refused with 503 at once.
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
    c.write_all(b"GET /boot/k.vmlinuz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
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
