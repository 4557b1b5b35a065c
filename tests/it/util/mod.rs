//! Shared helpers for the integration tests: temp dirs, deterministic images, compressors,
//! loop devices and running the real `bty` binary. One copy for every module of the test
//! binary, and its tests run in parallel threads: a static here is shared by all of them.

use std::fs;
use std::io::Read;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

pub mod guest;
pub mod html;
pub mod httpd;
pub mod netns;
pub mod registry;
pub mod release;
pub mod webdriver;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("bty-test-{}-{name}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("creating test dir");
        TestDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
pub fn prng_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A disk-like raw image: an MBR in the first sector, then alternating stretches of
/// compressible text, random bytes and long zero runs (so zero skip has work), `len` bytes.
pub fn disk_image(seed: u64, len: usize) -> Vec<u8> {
    let mut img = vec![0u8; len];
    // MBR: one Linux partition from sector 2048 to the end.
    if len >= 2 << 20 {
        let sectors = (len / 512) as u32 - 2048;
        let e = &mut img[446..462];
        e[4] = 0x83;
        e[8..12].copy_from_slice(&2048u32.to_le_bytes());
        e[12..16].copy_from_slice(&sectors.to_le_bytes());
        img[510] = 0x55;
        img[511] = 0xaa;
    }
    let mut off = 4096usize;
    let mut i = 0u64;
    while off < len {
        let run = (192 << 10) + (i as usize % 5) * (64 << 10) + 4096;
        let end = (off + run).min(len);
        match i % 3 {
            0 => {
                let text = format!("block {i} of image {seed}: the quick brown fox. ");
                for (k, b) in img[off..end].iter_mut().enumerate() {
                    *b = text.as_bytes()[k % text.len()];
                }
            }
            1 => img[off..end].copy_from_slice(&prng_bytes(seed ^ i, end - off)),
            _ => {} // zeros
        }
        off = end + if i % 3 == 2 { 512 << 10 } else { 0 };
        i += 1;
    }
    img
}

pub fn sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compressed forms of an image, made with the same libraries' encoders (and qemu-img).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    // With a checksum, as the zstd command line writes it by default.
    let mut e = zstd::stream::Encoder::new(Vec::new(), 3).expect("zstd");
    e.include_checksum(true).expect("zstd");
    e.write_all(data).expect("zstd");
    e.finish().expect("zstd")
}

/// A multi-block xz (what `xz -T0` writes), so the threaded decoder is exercised.
pub fn xz(data: &[u8]) -> Vec<u8> {
    let stream = liblzma::stream::MtStreamBuilder::new()
        .threads(2)
        .block_size(1 << 20)
        .preset(1)
        // As the xz tool writes by default; without a check, damage in stored chunks of
        // incompressible data would go unnoticed (only a pinned digest would catch it).
        .check(liblzma::stream::Check::Crc64)
        .encoder()
        .expect("xz encoder");
    let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    e.write_all(data).expect("xz");
    e.finish().expect("xz")
}

pub fn bzip2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    e.write_all(data).expect("bzip2");
    e.finish().expect("bzip2")
}

/// Converts a raw file to qcow2 with qemu-img (extra options like "-c").
pub fn qcow2(raw: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    args.extend_from_slice(extra);
    let st = Command::new("qemu-img")
        .args(&args)
        .arg(raw)
        .arg(out)
        .status()
        .expect("running qemu-img (install qemu-utils: make deps)");
    assert!(st.success(), "qemu-img convert failed");
}

/// Every format: (file suffix, encoder). qcow2 is handled separately (needs a file).
pub type Encoder = fn(&[u8]) -> Vec<u8>;

pub fn encoders() -> Vec<(&'static str, Encoder)> {
    vec![
        ("img", |d| d.to_vec()),
        ("img.gz", gzip),
        ("img.zst", zstd),
        ("img.xz", xz),
        ("img.bz2", bzip2),
    ]
}

/// A loop device over a backing file, detached on drop.
pub struct Loop {
    pub dev: PathBuf,
    pub backing: PathBuf,
}

impl Loop {
    /// A loop device of `len` bytes whose backing file holds random bytes (so anything
    /// bty skips would show as garbage).
    pub fn new(dir: &TestDir, name: &str, len: usize) -> Loop {
        Loop::over(dir.path(name), len)
    }

    /// As `new`, with the backing file at `backing`.
    pub fn over(backing: PathBuf, len: usize) -> Loop {
        fs::write(&backing, prng_bytes(0xdead_beef ^ len as u64, len))
            .expect("writing backing file");
        let attach = |direct: bool| {
            let mut c = Command::new("losetup");
            c.args(["--show", "-f"]);
            if direct {
                c.arg("--direct-io=on");
            }
            c.arg(&backing).output().expect("running losetup (needs root and util-linux)")
        };
        // Direct I/O like the benchmark's target, where the backing file system allows it.
        let mut out = attach(true);
        if !out.status.success() {
            out = attach(false);
        }
        assert!(
            out.status.success(),
            "losetup failed (the loop-device tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        Loop { dev, backing }
    }

    /// Attaches an existing `backing` file with extra losetup flags (`-r`, `-b 4096`, `-P`);
    /// detached on drop like the others.
    pub fn attach(backing: &Path, flags: &[&str]) -> Loop {
        let out = Command::new("losetup")
            .args(["--show", "-f"])
            .args(flags)
            .arg(backing)
            .output()
            .expect("running losetup (needs root and util-linux)");
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        Loop { dev, backing: backing.to_path_buf() }
    }

    /// Reads `len` bytes at `off` straight from the device.
    pub fn read(&self, off: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(&self.dev).expect("opening loop device");
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off).expect("reading loop device");
        buf
    }

    pub fn size(&self) -> u64 {
        fs::metadata(&self.backing).expect("backing file").len()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A small tmpfs mounted at `dir` (created), unmounted on drop: a disk that fills up.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("running mount");
        assert!(ok.success(), "mounting a {size} tmpfs on {} (tests run as root)", dir.display());
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The `bty` binary under test.
pub fn bty() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bty"));
    c.env_remove("BTY_LOG");
    c
}

/// Runs `bty flash SOURCE TARGET --yes --progress none EXTRA...`.
pub fn flash(source: &Path, target: &Path, extra: &[&str]) -> Output {
    bty()
        .arg("flash")
        .arg(source)
        .arg(target)
        .args(["--yes", "--progress", "none"])
        .args(extra)
        .output()
        .expect("running bty")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Asserts the target reads as blank: first and last MiB all zeros.
pub fn assert_blank(l: &Loop) {
    let mib = 1 << 20;
    assert!(is_zero(&l.read(0, mib)), "first MiB of {} is not blank", l.dev.display());
    assert!(
        is_zero(&l.read(l.size() - mib as u64, mib)),
        "last MiB of {} is not blank",
        l.dev.display()
    );
}

/// The path of a program on PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// `bty-web` on 127.0.0.1, any free port, with `state` as its state directory and no config
/// files from the machine; stdout piped (for the address line), stderr discarded.
pub fn bty_web(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bty-web"));
    c.args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        // An installed /usr/share/bty/ipxe (the default) must not leak into a test.
        .env("BTY_BOOT_IPXE_DIR", state.join("ipxe"))
        .env_remove("BTY_CONFIG_FILE")
        .env_remove("BTY_CONFIG_DIR")
        .env_remove("BTY_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    c
}

/// Starts it and returns the process with the address of its first stdout line.
pub fn spawn_web(mut cmd: Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = cmd.spawn().expect("starting bty-web");
    let mut line = String::new();
    let out = child.stdout.take().expect("stdout is piped");
    std::io::BufReader::new(out).read_line(&mut line).expect("reading the address line");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect("the first line names the address")
        .to_string();
    (child, addr)
}

/// A real bty-web on 127.0.0.1 with a temp state dir and the password `pw-for-tests`; killed
/// and its state removed on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub state: std::path::PathBuf,
}

impl Server {
    pub fn start(name: &str) -> Server {
        Server::start_env(name, &[])
    }

    /// Starts with extra environment (settings such as `BTY_SERVER_IDLE_TIMEOUT`). The state
    /// dir's name has a counter: every module shares this process, and two of them may pick
    /// the same `name`.
    pub fn start_env(name: &str, env: &[(&str, &str)]) -> Server {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let state = std::env::temp_dir().join(format!("bty-api-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        Server::start_in_env(state, env)
    }

    /// Starts on an existing state directory (for restarts).
    pub fn start_in(state: std::path::PathBuf) -> Server {
        Server::start_in_env(state, &[])
    }

    pub fn start_in_env(state: std::path::PathBuf, env: &[(&str, &str)]) -> Server {
        let mut cmd = bty_web(&state);
        cmd.env("BTY_ADMIN_PASSWORD", "pw-for-tests").envs(env.iter().copied());
        let (child, addr) = spawn_web(cmd);
        Server { child, addr, state }
    }

    /// Sends one request; returns (status, headers lower-cased, body).
    pub fn call(
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

    /// Stops the server (SIGKILL) and keeps its state dir, for a restart or an offline command.
    pub fn stop_keeping_state(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }

    pub fn login(&self) -> String {
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

/// Asserts `elf` is a static AArch64 executable: 64-bit little-endian, EM_AARCH64, loadable
/// segments and no program interpreter.
pub fn assert_static_aarch64(elf: &[u8]) {
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!((elf[4], elf[5]), (2, 1), "64-bit little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    assert_eq!(u16_at(18), 183, "e_machine is EM_AARCH64");
    assert!(matches!(u16_at(16), 2 | 3), "an executable (ET_EXEC or static-pie ET_DYN)");
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56));
    let types: Vec<u32> = (0..phnum as usize).map(|i| u32_at(phoff + i * phentsize)).collect();
    assert!(types.contains(&1), "has PT_LOAD segments: {types:?}");
    assert!(!types.contains(&3), "static: no PT_INTERP (program interpreter): {types:?}");
}
