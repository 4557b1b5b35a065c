//! A read-only TFTP server for the boot dir and the iPXE binaries (RFC 1350 with the option
//! extension of RFC 2347 and the blksize, timeout and tsize options of RFC 2348/2349), for PXE
//! firmware that can fetch its first bootfile (iPXE's `undionly.kpxe`, `ipxe.efi`,
//! `ipxe-arm64.efi`) only over TFTP. Each transfer runs on its own thread with its own socket, which is also the transfer
//! ID the RFC asks for.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::IpAddr;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Context, Result};
use crate::web::boot::open_first;
use crate::web::validate;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// RFC 1350 error codes we send.
const ERR_UNDEFINED: u16 = 0;
const ERR_NOT_FOUND: u16 = 1;
const ERR_ACCESS: u16 = 2;
const ERR_ILLEGAL: u16 = 4;
const ERR_OPTION: u16 = 8;

/// The block size when the client asks for none (RFC 1350).
const DEFAULT_BLKSIZE: usize = 512;
/// The bounds RFC 2348 puts on the blksize option.
const MIN_BLKSIZE: usize = 8;
const MAX_BLKSIZE: usize = 65464;
/// How long to wait for an ACK before sending again, when the client asks for no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Sends of one packet before the transfer is given up: ~10 s at the default timeout, which
/// rides out a firmware busy for a moment but frees the thread of a client that went away.
const MAX_SENDS: u32 = 5;
/// Transfers at once; more get "server busy" rather than a thread each. A lab boots tens of
/// machines at once, not hundreds.
const MAX_TRANSFERS: usize = 128;
/// iPXE first-stage binaries: once one has run, it asks for its own name again.
const FIRST_STAGE: [&str; 6] =
    ["undionly.kpxe", "undionly.kkpxe", "ipxe.efi", "snponly.efi", "ipxe.pxe", "ipxe-arm64.efi"];
/// A client that asks for the first stage it received whole this recently is that first stage
/// running (firmware fetches its boot file once per boot; iPXE starts in well under this).
const CHAIN_WINDOW: Duration = Duration::from_secs(60);
/// Clients remembered for the chain-loop check; beyond it the oldest are forgotten.
const MAX_RECENT: usize = 4096;

/// How often the receive loop looks at the stop flag.
const POLL: Duration = Duration::from_millis(500);

/// Binds the server's well-known socket.
pub fn bind(addr: SocketAddr) -> Result<UdpSocket> {
    let sock = UdpSocket::bind(addr).with_context(|| {
        if addr.port() < 1024 {
            format!(
                "binding TFTP to udp {addr} (ports below 1024 need root, CAP_NET_BIND_SERVICE \
                 or net.ipv4.ip_unprivileged_port_start)"
            )
        } else {
            format!("binding TFTP to udp {addr}")
        }
    })?;
    sock.set_read_timeout(Some(POLL)).context("setting the TFTP socket's read timeout")?;
    Ok(sock)
}

/// What the server hands out, looked up in this order for a name.
#[derive(Clone, Debug)]
pub struct Files {
    /// The boot dir: first, so an operator's file wins over anything of the same name below.
    pub boot: PathBuf,
    /// The generated `autoexec.ipxe` (see `pxe::autoexec`).
    pub autoexec: String,
    /// The iPXE binaries of the installation (`[boot] ipxe_dir`).
    pub ipxe: PathBuf,
    /// Clients that received a first-stage binary whole, and when (the chain-loop breaker).
    pub recent: Arc<Mutex<HashMap<IpAddr, (String, Instant)>>>,
}

impl Files {
    pub fn new(boot: PathBuf, autoexec: String, ipxe: PathBuf) -> Files {
        Files { boot, autoexec, ipxe, recent: Arc::default() }
    }

    /// Whether this request is the iPXE the client just received asking for itself again: a
    /// DHCP server without a rule for iPXE's user class hands iPXE the same boot file as the
    /// firmware, and iPXE would load itself forever. The answer is then the autoexec script,
    /// which chains to bty-web over HTTP; once only, so a client that really boots again gets
    /// the binary.
    fn chain_loop(&self, peer: IpAddr, name: &str) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        match recent.get(&peer) {
            Some((n, at)) if n == name && at.elapsed() < CHAIN_WINDOW => {
                recent.remove(&peer);
                true
            }
            _ => false,
        }
    }

    fn sent_whole(&self, peer: IpAddr, name: &str) {
        if !FIRST_STAGE.contains(&name) {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|_, (_, at)| at.elapsed() < CHAIN_WINDOW);
        if recent.len() >= MAX_RECENT {
            return;
        }
        recent.insert(peer, (name.to_string(), Instant::now()));
    }
}

/// Answers read requests until `stop` is set.
pub fn serve(sock: UdpSocket, files: Files, stop: &'static AtomicBool) {
    let active = Arc::new(AtomicUsize::new(0));
    // An RRQ with options fits in one Ethernet frame; a longer one is not one we can answer.
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                crate::warn!("tftp: receiving a request: {e}");
                continue;
            }
        };
        let req = match parse_request(&buf[..n]) {
            Ok(r) => r,
            Err((code, msg)) => {
                let _ = sock.send_to(&error_packet(code, &msg), peer);
                continue;
            }
        };
        if active.load(Ordering::Relaxed) >= MAX_TRANSFERS {
            let _ = sock.send_to(&error_packet(ERR_UNDEFINED, "server busy, try again"), peer);
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let local = sock.local_addr().ok();
        let files = files.clone();
        let done = Arc::clone(&active);
        let spawned = std::thread::Builder::new().name("tftp".into()).spawn(move || {
            transfer(&files, local, peer, req);
            done.fetch_sub(1, Ordering::Relaxed);
        });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::Relaxed);
            crate::error!("tftp: spawning the transfer thread for {peer}: {e}");
        }
    }
}

/// A parsed read request.
#[derive(Debug, PartialEq)]
struct Request {
    name: String,
    netascii: bool,
    /// Options in the order the client sent them, names lower-cased.
    options: Vec<(String, String)>,
}

/// Parses an RRQ; anything else is an (error code, message) to send back.
fn parse_request(pkt: &[u8]) -> Result<Request, (u16, String)> {
    let illegal = |m: &str| (ERR_ILLEGAL, m.to_string());
    if pkt.len() < 2 {
        return Err(illegal("packet too short"));
    }
    match u16::from_be_bytes([pkt[0], pkt[1]]) {
        OP_RRQ => {}
        OP_WRQ => return Err((ERR_ACCESS, "this server is read only".into())),
        op => return Err(illegal(&format!("expected a read request, got opcode {op}"))),
    }
    // NUL-terminated strings: filename, mode, then option name/value pairs.
    let body = &pkt[2..];
    let Some(body) = body.strip_suffix(&[0]) else {
        return Err(illegal("request not NUL-terminated"));
    };
    let mut fields = body.split(|&b| b == 0).map(|f| String::from_utf8_lossy(f).into_owned());
    let name = fields.next().unwrap_or_default();
    let mode = fields.next().ok_or_else(|| illegal("request without a mode"))?;
    let netascii = match mode.to_ascii_lowercase().as_str() {
        "octet" => false,
        "netascii" => true,
        _ => return Err(illegal(&format!("unsupported mode {mode:?} (octet or netascii)"))),
    };
    let rest: Vec<String> = fields.collect();
    if rest.len() % 2 != 0 {
        return Err(illegal("option without a value"));
    }
    let options = rest.chunks(2).map(|c| (c[0].to_ascii_lowercase(), c[1].clone())).collect();
    Ok(Request { name, netascii, options })
}

/// The file a request names, if it is one the boot dir may hand out: a plain name that
/// `/boot/{name}` would serve too, so TFTP never reaches outside the boot dir.
fn resolve(root: &Path, name: &str) -> Result<PathBuf, String> {
    if name.starts_with('/') {
        return Err(format!("{name:?}: absolute paths are not served"));
    }
    if name.split(['/', '\\']).any(|part| part == "..") {
        return Err(format!("{name:?}: \"..\" is not allowed"));
    }
    let name = validate::boot_file_name(name).map_err(|e| e.to_string())?;
    Ok(root.join(name))
}

/// The options we accept, as they go into the OACK, and what they set.
struct Negotiated {
    blksize: usize,
    timeout: Duration,
    /// Option names and values to acknowledge, in the client's order.
    ack: Vec<(String, String)>,
}

fn negotiate(options: &[(String, String)], size: Option<u64>) -> Negotiated {
    let mut n = Negotiated { blksize: DEFAULT_BLKSIZE, timeout: DEFAULT_TIMEOUT, ack: Vec::new() };
    for (name, value) in options {
        match name.as_str() {
            // A client may ask for more than we allow; RFC 2348 lets the server answer smaller.
            "blksize" => {
                if let Ok(b) = value.parse::<usize>() {
                    if b >= MIN_BLKSIZE {
                        n.blksize = b.min(MAX_BLKSIZE);
                        n.ack.push((name.clone(), n.blksize.to_string()));
                    }
                }
            }
            "timeout" => {
                if let Ok(t @ 1..=255) = value.parse::<u64>() {
                    n.timeout = Duration::from_secs(t);
                    n.ack.push((name.clone(), t.to_string()));
                }
            }
            // Unknown in netascii mode (the size changes in conversion): left out, as RFC 2349 allows.
            "tsize" => {
                if let Some(size) = size {
                    n.ack.push((name.clone(), size.to_string()));
                }
            }
            // Options we do not know are left out of the OACK, which RFC 2347 allows.
            _ => {}
        }
    }
    n
}

/// Runs one transfer to `peer` from a fresh socket, logging how it ended.
fn transfer(files: &Files, local: Option<SocketAddr>, peer: SocketAddr, req: Request) {
    // The reply comes from the address the request went to, on a fresh port (the transfer ID).
    let bind_ip = match local {
        Some(a) if !a.ip().is_unspecified() => a.ip(),
        _ if peer.is_ipv4() => std::net::Ipv4Addr::UNSPECIFIED.into(),
        _ => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let sock = match UdpSocket::bind((bind_ip, 0)).and_then(|s| s.connect(peer).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            crate::warn!("tftp: opening a socket for {peer}: {e}");
            return;
        }
    };
    let path = match resolve(&files.boot, &req.name) {
        Ok(p) => p,
        Err(msg) => {
            crate::warn!("tftp: {peer} asked for {msg}");
            let _ = sock.send(&error_packet(ERR_ACCESS, &msg));
            return;
        }
    };
    let chain = FIRST_STAGE.contains(&req.name.as_str())
        && ipxe_shaped(&req)
        && files.chain_loop(peer.ip(), &req.name);
    let opened = if chain {
        crate::info!(
            "tftp: {peer} asks for {} again right after receiving it: that is iPXE, chain-loading \
             itself (no DHCP rule for its user class); sending it {} instead",
            req.name,
            crate::web::pxe::AUTOEXEC
        );
        let script = files.boot.join(crate::web::pxe::AUTOEXEC);
        open_first(&script, crate::web::pxe::AUTOEXEC, &files.ipxe)
    } else {
        open_first(&path, &req.name, &files.ipxe)
    };
    let (source, size): (Box<dyn Read>, u64) = match opened {
        Ok(Some((f, len))) => (Box::new(f), len),
        Ok(None) if chain || req.name == crate::web::pxe::AUTOEXEC => {
            let script = files.autoexec.clone().into_bytes();
            let len = script.len() as u64;
            (Box::new(io::Cursor::new(script)), len)
        }
        Ok(None) => {
            crate::info!("tftp: {peer} asked for {}: no such file", req.name);
            let _ = sock.send(&error_packet(ERR_NOT_FOUND, &format!("no such file: {}", req.name)));
            return;
        }
        Err((p, e)) => {
            crate::warn!("tftp: opening {}: {e}", p.display());
            let _ = sock.send(&error_packet(ERR_ACCESS, &format!("cannot read {}", req.name)));
            return;
        }
    };
    match send_file(&sock, source, size, &req) {
        Ok(sent) => {
            crate::info!("tftp: sent {} ({sent} bytes) to {peer}", req.name);
            if !chain {
                files.sent_whole(peer.ip(), &req.name);
            }
        }
        Err(e) => crate::warn!("tftp: sending {} to {peer}: {e}", req.name),
    }
}

/// Whether a request has the shape of iPXE's own (its TFTP client asks for exactly `blksize`,
/// then `tsize`), so an operator's TFTP client fetching a file twice is not taken for a chain
/// loop.
fn ipxe_shaped(req: &Request) -> bool {
    let names: Vec<&str> = req.options.iter().map(|(k, _)| k.as_str()).collect();
    names == ["blksize", "tsize"]
}

/// Sends the source in blocks, each after the previous one's ACK; the bytes sent.
fn send_file(sock: &UdpSocket, source: Box<dyn Read>, size: u64, req: &Request) -> Result<u64> {
    let opts = negotiate(&req.options, (!req.netascii).then_some(size));
    let mut reader: Box<dyn Read> = if req.netascii {
        Box::new(Netascii { inner: io::BufReader::new(source), pending: None })
    } else {
        Box::new(io::BufReader::with_capacity(64 << 10, source))
    };
    let mut rx = vec![0u8; MAX_BLKSIZE + 4];
    if !opts.ack.is_empty() {
        let mut oack = OP_OACK.to_be_bytes().to_vec();
        for (k, v) in &opts.ack {
            oack.extend_from_slice(k.as_bytes());
            oack.push(0);
            oack.extend_from_slice(v.as_bytes());
            oack.push(0);
        }
        exchange(sock, &oack, 0, opts.timeout, &mut rx).context("negotiating options")?;
    }
    let mut packet = Vec::with_capacity(opts.blksize + 4);
    let mut block: u16 = 1;
    let mut sent = 0u64;
    loop {
        packet.clear();
        packet.extend_from_slice(&OP_DATA.to_be_bytes());
        packet.extend_from_slice(&block.to_be_bytes());
        let n = read_block(&mut reader, &mut packet, opts.blksize).context("reading the file")?;
        exchange(sock, &packet, block, opts.timeout, &mut rx)
            .with_context(|| format!("block {block}"))?;
        sent += n as u64;
        // A short block (possibly empty) ends the transfer.
        if n < opts.blksize {
            return Ok(sent);
        }
        // Block numbers wrap after 65535, as tftp-hpa, iPXE and most clients expect.
        block = block.wrapping_add(1);
    }
}

/// Appends up to `len` bytes of `r` to `out`; fewer only at the end of the file.
fn read_block(r: &mut dyn Read, out: &mut Vec<u8>, len: usize) -> io::Result<usize> {
    let start = out.len();
    out.resize(start + len, 0);
    let got = crate::io::read_full(r, &mut out[start..]);
    out.truncate(start + got.as_ref().map_or(0, |n| *n));
    got
}

/// Sends `packet` until the client acknowledges `block`, up to MAX_SENDS times.
fn exchange(
    sock: &UdpSocket,
    packet: &[u8],
    block: u16,
    timeout: Duration,
    rx: &mut [u8],
) -> Result<()> {
    for _ in 0..MAX_SENDS {
        sock.send(packet).context("sending")?;
        // Wait out the timeout for our ACK; an old duplicate ACK is not a reason to send again
        // (that would double every later block: the "Sorcerer's Apprentice" bug of RFC 1123).
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left)).context("setting the transfer timeout")?;
            let n = match sock.recv(rx) {
                Ok(n) => n,
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP port unreachable from a client that went away shows up here.
                Err(e) => return Err(crate::error::Error::from(e).wrap("receiving".into())),
            };
            if n < 4 {
                continue;
            }
            match u16::from_be_bytes([rx[0], rx[1]]) {
                OP_ACK if u16::from_be_bytes([rx[2], rx[3]]) == block => return Ok(()),
                OP_ACK => {}
                OP_ERROR => {
                    let code = u16::from_be_bytes([rx[2], rx[3]]);
                    let msg = String::from_utf8_lossy(&rx[4..n]);
                    let msg = msg.trim_end_matches('\0');
                    if code == ERR_OPTION {
                        crate::bail!("the client refused the options: {msg}");
                    }
                    crate::bail!("the client aborted with error {code}: {msg}");
                }
                op => {
                    let _ =
                        sock.send(&error_packet(ERR_ILLEGAL, &format!("unexpected opcode {op}")));
                    crate::bail!("the client sent opcode {op} during the transfer");
                }
            }
        }
    }
    crate::bail!("no acknowledgement after {MAX_SENDS} sends, {}s apart", timeout.as_secs())
}

fn error_packet(code: u16, msg: &str) -> Vec<u8> {
    let mut p = OP_ERROR.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

/// Converts a file to netascii on the fly: LF becomes CR LF and a bare CR becomes CR NUL.
struct Netascii<R> {
    inner: R,
    /// The second byte of a pair that did not fit the caller's buffer.
    pending: Option<u8>,
}

impl<R: Read> Read for Netascii<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        let mut byte = [0u8];
        while n < out.len() {
            if let Some(b) = self.pending.take() {
                out[n] = b;
                n += 1;
                continue;
            }
            if self.inner.read(&mut byte)? == 0 {
                break;
            }
            let (first, second) = match byte[0] {
                b'\n' => (b'\r', Some(b'\n')),
                b'\r' => (b'\r', Some(0)),
                b => (b, None),
            };
            out[n] = first;
            n += 1;
            self.pending = second;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(fields: &[&str]) -> Vec<u8> {
        let mut p = OP_RRQ.to_be_bytes().to_vec();
        for f in fields {
            p.extend_from_slice(f.as_bytes());
            p.push(0);
        }
        p
    }

    #[test]
    fn parses_read_requests_with_options() {
        let r = parse_request(&rrq(&["undionly.kpxe", "OCTET", "BLKSIZE", "1428", "tsize", "0"]))
            .unwrap();
        assert_eq!(r.name, "undionly.kpxe");
        assert!(!r.netascii);
        assert_eq!(
            r.options,
            vec![("blksize".into(), "1428".into()), ("tsize".into(), "0".into())]
        );
    }

    #[test]
    fn refuses_writes_bad_modes_and_truncated_requests() {
        let mut wrq = rrq(&["x", "octet"]);
        wrq[1] = OP_WRQ as u8;
        assert_eq!(parse_request(&wrq).unwrap_err().0, ERR_ACCESS);
        assert_eq!(parse_request(&rrq(&["x", "mail"])).unwrap_err().0, ERR_ILLEGAL);
        assert_eq!(parse_request(&rrq(&["x"])).unwrap_err().0, ERR_ILLEGAL);
        assert_eq!(parse_request(&rrq(&["x", "octet", "blksize"])).unwrap_err().0, ERR_ILLEGAL);
        let mut open = rrq(&["x", "octet"]);
        open.pop();
        assert_eq!(parse_request(&open).unwrap_err().0, ERR_ILLEGAL);
        assert_eq!(parse_request(&[0]).unwrap_err().0, ERR_ILLEGAL);
    }

    #[test]
    fn resolves_only_plain_names_inside_the_root() {
        let root = Path::new("/srv/boot");
        assert_eq!(resolve(root, "ipxe.efi").unwrap(), root.join("ipxe.efi"));
        assert_eq!(resolve(root, "undionly.kpxe").unwrap(), root.join("undionly.kpxe"));
        for bad in
            ["../etc/passwd", "/etc/passwd", "a/../../b", "..", ".hidden", "a/b", "", "a\\..\\b"]
        {
            assert!(resolve(root, bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn negotiates_within_the_rfc_bounds() {
        let o = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
        };
        let n = negotiate(&o(&[("blksize", "100000"), ("tsize", "0"), ("x", "y")]), Some(42));
        assert_eq!(n.blksize, MAX_BLKSIZE);
        assert_eq!(n.ack, o(&[("blksize", "65464"), ("tsize", "42")]));
        let n = negotiate(&o(&[("blksize", "4"), ("timeout", "0"), ("tsize", "0")]), None);
        assert_eq!(n.blksize, DEFAULT_BLKSIZE);
        assert!(n.ack.is_empty(), "out-of-range values and unknown sizes are not acknowledged");
        let n = negotiate(&o(&[("timeout", "3")]), None);
        assert_eq!(n.timeout, Duration::from_secs(3));
    }

    #[test]
    fn netascii_expands_line_ends_across_small_reads() {
        let mut r = Netascii { inner: &b"a\nb\rc"[..], pending: None };
        let mut out = Vec::new();
        let mut one = [0u8; 1];
        while r.read(&mut one).unwrap() == 1 {
            out.push(one[0]);
        }
        assert_eq!(out, b"a\r\nb\r\0c");
    }
}
