//! A small HTTP/1.1 file server for the http(s) source tests (std TcpListener, one thread per
//! connection, `Connection: close`): Range and If-Range when asked to, redirects, and scripted
//! misbehaviour (a connection cut or stalled mid-body, a 5xx, a file that changes).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What to do to the next full or ranged response of a file.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Send this many body bytes, then close the connection.
    Cut(u64),
    /// Send this many body bytes, then go silent for the duration, then close.
    Stall(u64, Duration),
    /// Answer with this status and no body.
    Status(u16),
}

/// One served file.
#[derive(Clone)]
pub struct File {
    pub body: Arc<Vec<u8>>,
    pub ranges: bool,
    pub etag: Option<String>,
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, File>,
    redirects: HashMap<String, String>,
    faults: HashMap<String, Vec<Fault>>,
    seen: Vec<Seen>,
    /// Files not in `files` are looked up under this directory.
    root: Option<std::path::PathBuf>,
}

/// The server; stops accepting when dropped.
pub struct Httpd {
    pub addr: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Httpd {
    pub fn start() -> Httpd {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = Arc::clone(&st);
                thread::spawn(move || serve(conn, &st));
            }
        });
        Httpd { addr, state, stop, accept: Some(accept) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn file(&self, path: &str, body: Vec<u8>, ranges: bool, etag: Option<&str>) {
        let f = File { body: Arc::new(body), ranges, etag: etag.map(str::to_string) };
        self.state.lock().unwrap().files.insert(path.into(), f);
    }

    /// Serves the files under `root` too (Range, no ETag), read on each request.
    pub fn serve_dir(&self, root: std::path::PathBuf) {
        self.state.lock().unwrap().root = Some(root);
    }

    pub fn redirect(&self, from: &str, to: &str) {
        self.state.lock().unwrap().redirects.insert(from.into(), to.into());
    }

    /// Faults for the next responses of `path`, in order.
    pub fn faults(&self, path: &str, faults: Vec<Fault>) {
        self.state.lock().unwrap().faults.insert(path.into(), faults);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
    let mut r = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut w = conn;
    let seen = Seen {
        path: path.clone(),
        range: headers.get("range").cloned(),
        if_range: headers.get("if-range").cloned(),
        authorization: headers.get("authorization").cloned(),
    };
    let (file, redirect, fault) = {
        let mut st = state.lock().unwrap();
        st.seen.push(seen.clone());
        let fault = st.faults.get_mut(&path).and_then(|f| (!f.is_empty()).then(|| f.remove(0)));
        let file = st.files.get(&path).cloned().or_else(|| {
            let p = st.root.as_ref()?.join(path.trim_start_matches('/'));
            let body = std::fs::read(p).ok()?;
            Some(File { body: Arc::new(body), ranges: true, etag: None })
        });
        (file, st.redirects.get(&path).cloned(), fault)
    };
    if let Some(to) = redirect {
        let _ = write!(
            w,
            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    }
    let Some(file) = file else {
        let _ = write!(
            w,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found"
        );
        return;
    };
    if let Some(Fault::Status(code)) = fault {
        let _ = write!(w, "HTTP/1.1 {code} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let total = file.body.len() as u64;
    let mut start = 0u64;
    let mut end = total.saturating_sub(1);
    let mut partial = false;
    let validator_ok = match (&seen.if_range, &file.etag) {
        (None, _) => true,
        (Some(v), Some(e)) => v == e,
        (Some(_), None) => false,
    };
    if let (true, true, Some(range)) = (file.ranges, validator_ok, &seen.range) {
        if let Some((a, b)) = range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
            let a: u64 = a.parse().unwrap_or(0);
            if a >= total {
                let _ = write!(
                    w,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
                return;
            }
            start = a;
            if let Ok(b) = b.parse::<u64>() {
                end = b.min(end);
            }
            partial = true;
        }
    }
    let mut head = if partial {
        format!("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end}/{total}\r\n")
    } else {
        "HTTP/1.1 200 OK\r\n".to_string()
    };
    let len = if total == 0 { 0 } else { end - start + 1 };
    head.push_str(&format!("Content-Length: {len}\r\nConnection: close\r\n"));
    if file.ranges {
        head.push_str("Accept-Ranges: bytes\r\n");
    }
    if let Some(e) = &file.etag {
        head.push_str(&format!("ETag: {e}\r\n"));
    }
    head.push_str("\r\n");
    if w.write_all(head.as_bytes()).is_err() {
        return;
    }
    let body = &file.body[start as usize..(start + len) as usize];
    let (send, after) = match fault {
        Some(Fault::Cut(n)) => (n.min(len) as usize, None),
        Some(Fault::Stall(n, d)) => (n.min(len) as usize, Some(d)),
        _ => (body.len(), None),
    };
    let _ = w.write_all(&body[..send]);
    let _ = w.flush();
    if let Some(d) = after {
        thread::sleep(d);
    }
    let _ = w.shutdown(std::net::Shutdown::Both);
}
