//! bty-web's TFTP server against a small client written here on std's UdpSocket (and Debian's
//! tftp-hpa client when it is installed): whole files byte-exact, blksize and tsize, missing
//! files, names outside the boot dir, and a lost ACK that the server must recover from.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util;
use crate::util::{TestDir, prng_bytes};

/// A `bty-web tftp` on 127.0.0.1 with an ephemeral port; killed on drop.
struct Tftp {
    child: Child,
    addr: SocketAddr,
}

impl Tftp {
    fn start(state: &Path) -> Tftp {
        Tftp::start_env(state, &[])
    }

    /// The iPXE dir is the test's own `ipxe/`, so an installed /usr/share/bty/ipxe plays no part.
    fn start_env(state: &Path, env: &[(&str, &str)]) -> Tftp {
        std::fs::create_dir_all(state.join("boot")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_bty-web"))
            .arg("tftp")
            .arg("--state-dir")
            .arg(state)
            .env("BTY_TFTP_LISTEN", "127.0.0.1:0")
            .env("BTY_BOOT_IPXE_DIR", state.join("ipxe"))
            .envs(env.iter().copied())
            .env_remove("BTY_CONFIG_FILE")
            .env_remove("BTY_CONFIG_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting bty-web tftp");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("tftp listening on udp://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Tftp { child, addr }
    }
}

impl Drop for Tftp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a download ended with.
#[derive(Debug, Default)]
struct Got {
    data: Vec<u8>,
    oack: Vec<(String, String)>,
    /// DATA packets that repeated a block already received.
    duplicates: usize,
}

/// Downloads `name`; `lose_ack` is a block whose first ACK the client "loses" (never sends).
/// Err is the server's (error code, message).
fn get(
    server: SocketAddr,
    name: &str,
    opts: &[(&str, &str)],
    lose_ack: Option<u16>,
) -> Result<Got, (u16, String)> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rrq = vec![0, 1];
    for f in [name, "octet"].into_iter().chain(opts.iter().flat_map(|(k, v)| [*k, *v])) {
        rrq.extend_from_slice(f.as_bytes());
        rrq.push(0);
    }
    sock.send_to(&rrq, server).unwrap();
    let mut got = Got::default();
    let mut blksize = 512;
    let mut expect: u16 = 1;
    let mut lost = false;
    let mut buf = vec![0u8; 70000];
    loop {
        let (n, tid) = sock.recv_from(&mut buf).expect("the server answers within 10 s");
        assert_ne!(tid, server, "replies come from a fresh transfer port");
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        let ack = |b: u16| {
            let mut a = vec![0, 4];
            a.extend_from_slice(&b.to_be_bytes());
            sock.send_to(&a, tid).unwrap();
        };
        match op {
            5 => {
                let code = u16::from_be_bytes([buf[2], buf[3]]);
                let msg = String::from_utf8_lossy(&buf[4..n]).trim_end_matches('\0').to_string();
                return Err((code, msg));
            }
            6 => {
                let fields: Vec<String> = buf[2..n - 1]
                    .split(|&b| b == 0)
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect();
                got.oack = fields.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect();
                if let Some((_, b)) = got.oack.iter().find(|(k, _)| k == "blksize") {
                    blksize = b.parse().unwrap();
                }
                ack(0);
            }
            3 => {
                let block = u16::from_be_bytes([buf[2], buf[3]]);
                if block != expect {
                    assert_eq!(block, expect.wrapping_sub(1), "only a repeat of the last block");
                    got.duplicates += 1;
                    ack(block);
                    continue;
                }
                got.data.extend_from_slice(&buf[4..n]);
                expect = expect.wrapping_add(1);
                if lose_ack == Some(block) && !lost {
                    lost = true;
                } else {
                    ack(block);
                }
                if n - 4 < blksize {
                    return Ok(got);
                }
            }
            op => panic!("unexpected opcode {op}"),
        }
    }
}

#[test]
fn sends_whole_files_with_default_and_large_block_sizes() {
    let dir = TestDir::new("tftp-whole");
    let server = Tftp::start(&dir.0);
    // Sizes around the block boundary: a file of whole blocks ends with an empty DATA packet.
    let files = [("undionly.kpxe", 70_001usize), ("ipxe.efi", 1024), ("empty", 0)];
    for (i, (name, len)) in files.iter().enumerate() {
        std::fs::write(dir.0.join("boot").join(name), prng_bytes(i as u64, *len)).unwrap();
    }
    for (i, (name, len)) in files.iter().enumerate() {
        let want = prng_bytes(i as u64, *len);
        let plain = get(server.addr, name, &[], None).unwrap();
        assert!(plain.data == want, "{name}: default blksize differs");
        assert!(plain.oack.is_empty(), "no options asked, no OACK");
        // (tsize first: blksize then tsize is iPXE's shape, which a second fetch of an iPXE
        // binary answers with the chain script; see the test below.)
        let big = get(server.addr, name, &[("tsize", "0"), ("blksize", "1428")], None).unwrap();
        assert!(big.data == want, "{name}: blksize 1428 differs");
        assert_eq!(
            big.oack,
            vec![("tsize".into(), len.to_string()), ("blksize".into(), "1428".into())]
        );
        let huge = get(server.addr, name, &[("blksize", "65464")], None).unwrap();
        assert!(huge.data == want, "{name}: blksize 65464 differs");
    }
}

#[test]
fn wraps_block_numbers_past_65535() {
    let dir = TestDir::new("tftp-wrap");
    let server = Tftp::start(&dir.0);
    // 65536 blocks of 8 bytes and a short one: the block number rolls over to 0 once.
    let want = prng_bytes(7, 65_536 * 8 + 3);
    std::fs::write(dir.0.join("boot/big.bin"), &want).unwrap();
    let got = get(server.addr, "big.bin", &[("blksize", "8")], None).unwrap();
    assert!(got.data == want, "data differs after the block number wrapped");
}

#[test]
fn missing_files_and_names_outside_the_boot_dir_get_error_packets() {
    let dir = TestDir::new("tftp-refuse");
    std::fs::write(dir.0.join("secret"), "state-dir file").unwrap();
    let server = Tftp::start(&dir.0);
    let (code, msg) = get(server.addr, "nope.efi", &[], None).unwrap_err();
    assert_eq!(code, 1, "file not found: {msg}");
    assert!(msg.contains("nope.efi"), "{msg}");
    for name in ["../secret", "/etc/passwd", "sub/../../secret", ".hidden", "a b"] {
        let (code, msg) = get(server.addr, name, &[], None).unwrap_err();
        assert_eq!(code, 2, "{name:?} must be an access violation: {msg}");
    }
    // A write request is refused: the server is read only.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(b"\x00\x02upload.bin\x00octet\x00", server.addr).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..4], b"\x00\x05\x00\x02", "{:?}", String::from_utf8_lossy(&buf[..n]));
    assert!(!dir.0.join("boot/upload.bin").exists());
}

#[test]
fn a_lost_ack_makes_the_server_send_the_block_again() {
    let dir = TestDir::new("tftp-retransmit");
    let server = Tftp::start(&dir.0);
    let want = prng_bytes(3, 5000);
    std::fs::write(dir.0.join("ipxe.efi"), b"not this one").unwrap();
    std::fs::write(dir.0.join("boot/ipxe.efi"), &want).unwrap();
    let got = get(server.addr, "ipxe.efi", &[("timeout", "1")], Some(3)).unwrap();
    assert_eq!(got.oack, vec![("timeout".into(), "1".into())]);
    assert!(got.data == want, "data differs after the retransmit");
    assert_eq!(got.duplicates, 1, "block 3 comes again once its ACK is lost");
}

#[test]
fn ipxe_binaries_and_the_generated_autoexec_come_after_the_boot_dir() {
    let dir = TestDir::new("tftp-ipxe");
    std::fs::create_dir_all(dir.0.join("ipxe")).unwrap();
    std::fs::write(dir.0.join("ipxe/undionly.kpxe"), b"installed kpxe").unwrap();
    std::fs::write(dir.0.join("ipxe/ipxe.efi"), b"installed efi").unwrap();
    std::fs::write(dir.0.join("ipxe/autoexec.ipxe"), b"never served from the iPXE dir").unwrap();
    std::fs::write(dir.0.join("secret"), "state-dir file").unwrap();
    let server = Tftp::start(&dir.0);
    let got = |name| get(server.addr, name, &[], None);
    assert_eq!(got("undionly.kpxe").unwrap().data, b"installed kpxe");
    // arm64 UEFI firmware's first stage (DHCP client architecture 11) comes the same way.
    std::fs::write(dir.0.join("ipxe/ipxe-arm64.efi"), b"installed arm64 efi").unwrap();
    assert_eq!(got("ipxe-arm64.efi").unwrap().data, b"installed arm64 efi");
    // The operator's own file wins.
    std::fs::write(dir.0.join("boot/ipxe.efi"), b"operator efi").unwrap();
    assert_eq!(got("ipxe.efi").unwrap().data, b"operator efi");
    // Without [server] public_url the script chains to the TFTP server on the HTTP port.
    let script = String::from_utf8(got("autoexec.ipxe").unwrap().data).unwrap();
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(
        script.contains("\nchain http://${next-server}:8080/pxe-bootstrap.ipxe || goto failed\n"),
        "{script}"
    );
    let sized = get(server.addr, "autoexec.ipxe", &[("tsize", "0")], None).unwrap();
    assert_eq!(sized.oack, vec![("tsize".into(), script.len().to_string())]);
    // The iPXE dir is no way around the boot dir's confinement.
    for name in ["../secret", "../ipxe/undionly.kpxe", "/etc/passwd"] {
        assert_eq!(got(name).unwrap_err().0, 2, "{name:?} must be refused");
    }
    assert_eq!(got("snponly.efi").unwrap_err().0, 1);
    std::fs::write(dir.0.join("boot/autoexec.ipxe"), b"#!ipxe\necho operator\n").unwrap();
    assert_eq!(got("autoexec.ipxe").unwrap().data, b"#!ipxe\necho operator\n");
    drop(server);

    let server =
        Tftp::start_env(&dir.0, &[("BTY_SERVER_PUBLIC_URL", "http://bty.lab.example:8081/")]);
    std::fs::remove_file(dir.0.join("boot/autoexec.ipxe")).unwrap();
    let script = get(server.addr, "autoexec.ipxe", &[], None).unwrap().data;
    let script = String::from_utf8(script).unwrap();
    assert!(
        script.contains("\nchain http://bty.lab.example:8081/pxe-bootstrap.ipxe || goto failed\n"),
        "{script}"
    );
}

#[test]
fn ipxe_asking_for_itself_again_gets_the_autoexec_script_once() {
    let dir = TestDir::new("tftp-chain");
    std::fs::create_dir_all(dir.0.join("ipxe")).unwrap();
    std::fs::write(dir.0.join("ipxe/undionly.kpxe"), b"installed kpxe").unwrap();
    let server = Tftp::start(&dir.0);
    let ipxe = [("blksize", "1432"), ("tsize", "0")];
    let got = |name| get(server.addr, name, &ipxe, None).unwrap().data;

    // A firmware's size probe (OACK, then the client aborts) is not a boot file received.
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    probe.send_to(b"\0\x01undionly.kpxe\0octet\0tsize\x000\0", server.addr).unwrap();
    let mut buf = [0u8; 600];
    let (n, tid) = probe.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0, 6], "an OACK: {:?}", &buf[..n]);
    probe.send_to(b"\0\x05\0\0size probe\0", tid).unwrap();

    assert_eq!(got("undionly.kpxe"), b"installed kpxe", "the firmware gets the binary");
    // The server records the transfer once its last ACK is in, which can be just after the
    // client has returned; the iPXE it loaded needs far longer than this to start up and ask.
    std::thread::sleep(Duration::from_millis(500));
    // The same client asking again at once is the iPXE it loaded: it gets the script that
    // chains to bty-web, not itself again.
    let script = String::from_utf8(got("undionly.kpxe")).unwrap();
    assert!(script.starts_with("#!ipxe\n") && script.contains("pxe-bootstrap.ipxe"), "{script}");
    // Once: a machine that boots again gets the binary.
    assert_eq!(got("undionly.kpxe"), b"installed kpxe");
    // Another TFTP client fetching it twice (other options) is not taken for iPXE.
    let plain = |name| get(server.addr, name, &[], None).unwrap().data;
    assert_eq!(plain("undionly.kpxe"), b"installed kpxe");
    assert_eq!(plain("undionly.kpxe"), b"installed kpxe");
}

#[test]
fn serve_runs_tftp_next_to_http_when_enabled() {
    let dir = TestDir::new("tftp-serve");
    std::fs::create_dir_all(dir.0.join("boot")).unwrap();
    std::fs::write(dir.0.join("boot/undionly.kpxe"), b"kpxe bytes").unwrap();
    let mut cmd = util::bty_web(&dir.0);
    cmd.env("BTY_TFTP_ENABLED", "true")
        .env("BTY_TFTP_LISTEN", "127.0.0.1:0")
        .env("BTY_SERVER_ALLOWED_HOSTS", "bty.lab.example");
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut http, mut tftp) = (String::new(), String::new());
    out.read_line(&mut http).unwrap();
    out.read_line(&mut tftp).unwrap();
    assert!(http.starts_with("listening on http://"), "{http:?}");
    let addr: SocketAddr =
        tftp.trim().strip_prefix("tftp listening on udp://").unwrap().parse().unwrap();
    let got = get(addr, "undionly.kpxe", &[], None);
    // The generated script names the port HTTP really got, not the configured 0.
    let script = get(addr, "autoexec.ipxe", &[], None);
    std::fs::create_dir_all(dir.0.join("ipxe")).unwrap();
    std::fs::write(dir.0.join("ipxe/ipxe.efi"), b"installed efi").unwrap();
    std::fs::write(dir.0.join("ipxe/ipxe-arm64.efi"), b"installed arm64 efi").unwrap();
    let web = http.trim().strip_prefix("listening on http://").unwrap().to_string();
    let port = web.rsplit(':').next().unwrap();
    let lab = format!("bty.lab.example:{port}");
    let efi = http_get(&web, "/boot/ipxe.efi", &lab);
    let efi_arm64 = http_get(&web, "/boot/ipxe-arm64.efi", &lab);
    let http_script = http_get(&web, "/boot/autoexec.ipxe", &lab);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got.unwrap().data, b"kpxe bytes");
    let script = String::from_utf8(script.unwrap().data).unwrap();
    assert!(script.contains(&format!("chain http://${{next-server}}:{port}/pxe-bootstrap.ipxe ")));
    assert!(efi.starts_with("HTTP/1.1 200") && efi.ends_with("\r\n\r\ninstalled efi"), "{efi}");
    // UEFI HTTP Boot on arm64 (client architecture 19) fetches its binary the same way.
    assert!(efi_arm64.ends_with("\r\n\r\ninstalled arm64 efi"), "{efi_arm64}");
    // Over HTTP (an HTTP-booted ipxe.efi fetches it beside itself) it chains by the Host used,
    // a name of this server's ([server] allowed_hosts).
    assert!(
        http_script.contains(&format!("\nchain http://{lab}/pxe-bootstrap.ipxe || goto")),
        "{http_script}"
    );
}

/// One GET with a chosen Host header; the whole response as text.
fn http_get(addr: &str, path: &str, host: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn tftp_hpa_client_downloads_byte_exact() {
    let tftp = util::which("tftp").expect("Debian's tftp-hpa client (make deps installs it)");
    let dir = TestDir::new("tftp-hpa");
    let server = Tftp::start(&dir.0);
    let want = prng_bytes(9, 300_000);
    std::fs::write(dir.0.join("boot/undionly.kpxe"), &want).unwrap();
    let out = dir.0.join("downloaded");
    let status = Command::new(tftp)
        .current_dir(&dir.0)
        .args(["127.0.0.1", &server.addr.port().to_string()])
        .args(["-m", "binary", "-c", "get", "undionly.kpxe"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(std::fs::read(&out).unwrap() == want, "tftp-hpa got different bytes");
}

#[test]
fn the_dashboard_sees_the_tftp_server_answer() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let s = util::Server::start_env(
        "tftp-dash",
        &[("BTY_TFTP_ENABLED", "true"), ("BTY_TFTP_LISTEN", listen.as_str())],
    );
    let cookie = s.login();
    let (st, _, page) = s.call("GET", "/ui/dashboard", Some(&cookie), "");
    assert_eq!(st, 200);
    assert!(page.contains(&format!("answering on {listen}")), "{page}");
    // Off counts as ready too (HTTP boot, or another TFTP server), and says so.
    let s = util::Server::start("tftp-dash-off");
    let cookie = s.login();
    let (_, _, page) = s.call("GET", "/ui/dashboard", Some(&cookie), "");
    assert!(page.contains("not configured: bty-web"), "{page}");
}
