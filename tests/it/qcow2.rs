//! The native qcow2 reader against images made by the real qemu-img / qemu-io.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use bty::image::qcow2::{Compression, Qcow2Reader, read_header};
use bty::io::ReadAt;

/// A temp dir removed on drop, unique per test so tests can run in parallel.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "bty-qcow2-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("creating temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a tool, failing the test with its stderr (or a hint if it is missing).
fn run(tool: &str, args: &[&str]) {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {tool} ({e}); install qemu-utils to run the qcow2 tests")
    });
    assert!(
        out.status.success(),
        "{tool} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn p(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// xorshift64*: deterministic and good enough to defeat compression.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A raw disk of `size` bytes mixing incompressible data, compressible text-like data, long
/// zero stretches, runs shorter than a cluster, and data in the final (partial) cluster.
fn make_raw(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut data = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let len = ((rng.next() % (768 << 10)) as usize + 512).min(size - at);
        let region = &mut data[at..at + len];
        match rng.next() % 5 {
            0 => rng.fill(region),
            1 => {
                // Low-entropy bytes: compress well but not to nothing.
                for b in region.iter_mut() {
                    *b = b"abcdefgh \n"[(rng.next() % 10) as usize];
                }
            }
            2 => {
                // A few scattered sectors in a mostly-zero stretch.
                for s in region.chunks_mut(512).step_by(97) {
                    rng.fill(s);
                }
            }
            _ => {} // zeros
        }
        at += len;
    }
    let tail = size.saturating_sub(1000);
    rng.fill(&mut data[tail..]);
    data
}

/// Reads the whole guest disk with reads of `chunk` bytes, checking it ends cleanly.
fn read_all(reader: &mut Qcow2Reader, chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(reader.virtual_size() as usize);
    let mut buf = vec![0u8; chunk];
    loop {
        let n = reader.read(&mut buf).expect("reading qcow2 guest data");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(reader.read(&mut buf).expect("read after end"), 0);
    out
}

fn open(path: &Path) -> bty::error::Result<Qcow2Reader> {
    let f = std::fs::File::open(path).expect("opening test image");
    Qcow2Reader::open(Box::new(f))
}

fn open_err(path: &Path) -> String {
    match open(path) {
        Ok(_) => panic!("{} opened but should have been refused", path.display()),
        Err(e) => e.to_string(),
    }
}

/// `qemu-img map --output=json`, one extent per line.
fn qemu_map(q: &Path) -> String {
    let out = Command::new("qemu-img")
        .args(["map", "--output=json", p(q)])
        .output()
        .expect("running qemu-img map (install qemu-utils)");
    assert!(out.status.success(), "qemu-img map failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many clusters `qemu-img check` counts as compressed (`qemu-img map` names them only
/// from QEMU 8 on; Debian 12 ships 7.2).
fn compressed_clusters(q: &Path) -> u64 {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", p(q)])
        .output()
        .expect("running qemu-img check (install qemu-utils)");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("qemu-img check output: {e}"));
    v["compressed-clusters"].as_u64().unwrap_or(0)
}

/// Converts `raw` to qcow2 with `opts` and checks our reader returns exactly the raw bytes.
fn roundtrip(tag: &str, raw: &[u8], opts: &[&str]) -> bty::image::qcow2::Header {
    let dir = TempDir::new(tag);
    let raw_path = dir.path("disk.raw");
    let q = dir.path("disk.qcow2");
    std::fs::write(&raw_path, raw).expect("writing raw image");
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[p(&raw_path), p(&q)]);
    run("qemu-img", &args);
    if opts.contains(&"-c") {
        assert!(compressed_clusters(&q) > 0, "{tag}: nothing was compressed");
    }

    // 4 MiB like the flash path, and an odd size so reads start and end mid-cluster.
    for chunk in [4 << 20, 100_003] {
        let mut reader = open(&q).expect("opening qcow2");
        assert_eq!(reader.virtual_size(), raw.len() as u64, "{tag}: virtual size");
        let got = read_all(&mut reader, chunk);
        assert_eq!(got.len(), raw.len(), "{tag}: length with {chunk}-byte reads");
        if let Some(i) = got.iter().zip(raw).position(|(a, b)| a != b) {
            panic!("{tag}: first difference at guest offset {i} with {chunk}-byte reads");
        }
    }
    let f = std::fs::File::open(&q).expect("opening test image");
    read_header(&f).expect("reading header")
}

/// Size a multiple of 512 (qemu rounds raw sizes up to that) but not of any cluster size.
const SIZE: usize = (24 << 20) + 3 * 512;

#[test]
fn v3_default() {
    let h = roundtrip("v3", &make_raw(SIZE, 1), &[]);
    assert_eq!((h.version, h.cluster_bits, h.compression), (3, 16, Compression::Zlib));
}

#[test]
fn v2_compat() {
    let h = roundtrip("v2", &make_raw(SIZE, 2), &["-o", "compat=0.10"]);
    assert_eq!(h.version, 2);
}

#[test]
fn compressed_zlib() {
    let h = roundtrip("zlib", &make_raw(SIZE, 3), &["-c"]);
    assert_eq!(h.compression, Compression::Zlib);
}

#[test]
fn compressed_zlib_v2() {
    let h = roundtrip("zlib2", &make_raw(8 << 20, 4), &["-c", "-o", "compat=0.10"]);
    assert_eq!((h.version, h.compression), (2, Compression::Zlib));
}

#[test]
fn compressed_zstd() {
    let h = roundtrip("zstd", &make_raw(SIZE, 5), &["-c", "-o", "compression_type=zstd"]);
    assert_eq!(h.compression, Compression::Zstd);
}

#[test]
fn cluster_512() {
    let h = roundtrip("c512", &make_raw((4 << 20) + 512, 6), &["-o", "cluster_size=512"]);
    assert_eq!(h.cluster_bits, 9);
}

#[test]
fn cluster_512_compressed() {
    let opts = ["-c", "-o", "cluster_size=512"];
    assert_eq!(roundtrip("c512z", &make_raw((2 << 20) + 512, 7), &opts).cluster_bits, 9);
}

#[test]
fn cluster_2m() {
    let h = roundtrip("c2m", &make_raw(SIZE, 8), &["-o", "cluster_size=2M"]);
    assert_eq!(h.cluster_bits, 21);
}

#[test]
fn cluster_2m_compressed_zstd() {
    let opts = ["-c", "-o", "cluster_size=2M,compression_type=zstd"];
    assert_eq!(roundtrip("c2mz", &make_raw(SIZE, 9), &opts).cluster_bits, 21);
}

#[test]
fn empty_and_tiny_images() {
    let dir = TempDir::new("tiny");
    for (name, size) in [("zero.qcow2", "0"), ("one.qcow2", "512"), ("big.qcow2", "3T")] {
        let q = dir.path(name);
        run("qemu-img", &["create", "-q", "-f", "qcow2", p(&q), size]);
        let mut r = open(&q).expect("opening empty image");
        let mut buf = vec![0xffu8; 1 << 20];
        let n = r.read(&mut buf).expect("reading empty image");
        assert_eq!(n as u64, r.virtual_size().min(1 << 20));
        assert!(buf[..n].iter().all(|&b| b == 0), "{name}: unallocated must read as zeros");
    }
}

/// v3 zero clusters, with and without a host offset kept, checked against qemu's own output.
#[test]
fn zero_clusters() {
    let dir = TempDir::new("zero");
    let q = dir.path("z.qcow2");
    let raw = dir.path("z.raw");
    run("qemu-img", &["create", "-q", "-f", "qcow2", p(&q), "8M"]);
    run(
        "qemu-io",
        &[
            "-c",
            "write -P 0xaa 0 1M",
            "-c",
            "write -z 0 64k",
            "-c",
            "write -P 0x55 2M 256k",
            "-c",
            "write -z -u 2M 64k",
            "-c",
            "write -z 4M 1M",
            p(&q),
        ],
    );
    run("qemu-img", &["convert", "-f", "qcow2", "-O", "raw", p(&q), p(&raw)]);
    let want = std::fs::read(&raw).expect("reading qemu's raw output");
    assert_eq!(&want[..64 << 10], &[0u8; 64 << 10][..], "qemu-io did not zero");
    assert_eq!(want[64 << 10], 0xaa);

    // Prove the first cluster holds the zero flag next to a kept host offset (whose stale 0xaa
    // data must not show), so the test covers that case.
    let map = qemu_map(&q);
    let first = map.lines().next().unwrap_or_default();
    assert!(
        first.contains("\"start\": 0,")
            && first.contains("\"zero\": true")
            && first.contains("\"offset\""),
        "expected an allocated zero cluster first: {map}"
    );

    let mut r = open(&q).expect("opening qcow2");
    assert_eq!(r.virtual_size(), 8 << 20);
    assert!(read_all(&mut r, 4 << 20) == want, "zero-cluster image differs from qemu's raw");
    let mut r = open(&q).expect("opening qcow2");
    assert!(read_all(&mut r, 12_345) == want, "zero-cluster image differs with odd reads");
}

#[test]
fn dirty_image_is_read() {
    let dir = TempDir::new("dirty");
    let raw = make_raw(2 << 20, 10);
    let raw_path = dir.path("d.raw");
    let q = dir.path("d.qcow2");
    std::fs::write(&raw_path, &raw).expect("writing raw");
    run("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", p(&raw_path), p(&q)]);
    patch(&q, 79, |b| b | 1);
    let mut r = open(&q).expect("a dirty image is still readable");
    assert!(r.header().dirty);
    assert!(read_all(&mut r, 1 << 20) == raw);
}

fn patch(path: &Path, at: usize, f: impl Fn(u8) -> u8) {
    let mut bytes = std::fs::read(path).expect("reading image to patch");
    bytes[at] = f(bytes[at]);
    std::fs::write(path, bytes).expect("writing patched image");
}

fn assert_mentions(msg: &str, words: &[&str]) {
    for w in words {
        assert!(msg.contains(w), "error message {msg:?} should mention {w:?}");
    }
}

#[test]
fn refuses_backing_file() {
    let dir = TempDir::new("backing");
    let base = dir.path("base.qcow2");
    let top = dir.path("top.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", p(&base), "1M"]);
    run("qemu-img", &["create", "-q", "-f", "qcow2", "-b", p(&base), "-F", "qcow2", p(&top)]);
    let msg = open_err(&top);
    assert_mentions(&msg, &["has a backing file", p(&base), "qemu-img convert"]);
}

#[test]
fn refuses_encryption() {
    let dir = TempDir::new("crypt");
    let e = dir.path("e.qcow2");
    let args = [
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=s0,data=pw",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=100",
        p(&e),
        "1M",
    ];
    // qemu-img times PBKDF2 with getrusage to size the key's iterations; on a busy VM it can
    // measure no CPU time at all and give up ("Unable to get accurate CPU usage"): try again.
    let mut last = String::new();
    let made = (0..5).any(|_| {
        let out = Command::new("qemu-img").args(args).output().expect("running qemu-img");
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        out.status.success()
    });
    assert!(made, "qemu-img create of a LUKS image failed: {last}");
    assert_mentions(&open_err(&e), &["encrypted", "LUKS"]);
}

#[test]
fn refuses_external_data_file() {
    let dir = TempDir::new("datafile");
    let q = dir.path("x.qcow2");
    let d = dir.path("x.data");
    let opt = format!("data_file={}", p(&d));
    run("qemu-img", &["create", "-q", "-f", "qcow2", "-o", &opt, p(&q), "1M"]);
    assert_mentions(&open_err(&q), &["external data file"]);
}

#[test]
fn refuses_extended_l2() {
    let dir = TempDir::new("extl2");
    let q = dir.path("x.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", "-o", "extended_l2=on", p(&q), "1M"]);
    assert_mentions(&open_err(&q), &["extended L2"]);
}

/// A fresh 1 MiB v3 image to patch.
fn fresh(dir: &TempDir) -> PathBuf {
    let q = dir.path("x.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", p(&q), "1M"]);
    q
}

#[test]
fn refuses_patched_headers() {
    let dir = TempDir::new("patched");
    // (byte offset, bits to OR in, expected words); 79 is the low byte of the incompatible
    // feature bits, 104 the compression type (with bit 3 set, as a non-zlib type requires).
    type Case = (&'static [(usize, u8)], &'static [&'static str]);
    let cases: &[Case] = &[
        (&[(79, 0x02)], &["marked corrupt"]),
        (&[(79, 0x20)], &["unknown incompatible features (bits 5"]),
        (&[(79, 0x08), (104, 7)], &["unknown compression type 7"]),
        (&[(7, 0x04)], &["version 7"]),
        (&[(0, 0x02)], &["bad magic"]),
        (&[(23, 0x08)], &["cluster_bits 24"]),
        (&[(24, 0x7f)], &["virtual size", "too large"]),
        (&[(46, 0x10)], &["not cluster-aligned"]),
        (&[(43, 0x01)], &["beyond the end of the file"]),
        (&[(27, 0x10)], &["L1 table has 1 entries, too few"]),
    ];
    for (patches, words) in cases {
        let q = fresh(&dir);
        for &(at, bits) in *patches {
            patch(&q, at, |b| b | bits);
        }
        match open(&q) {
            Ok(_) => panic!("image patched with {patches:?} was not refused"),
            Err(e) => assert_mentions(&e.to_string(), words),
        }
    }
}

#[test]
fn truncated_image_errors() {
    let dir = TempDir::new("trunc");
    let raw = make_raw(8 << 20, 11);
    let raw_path = dir.path("t.raw");
    std::fs::write(&raw_path, &raw).expect("writing raw");
    for (name, opts) in [("plain", &[][..]), ("compressed", &["-c"][..])] {
        let q = dir.path(&format!("{name}.qcow2"));
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&[p(&raw_path), p(&q)]);
        run("qemu-img", &args);
        let bytes = std::fs::read(&q).expect("reading qcow2");
        std::fs::write(&q, &bytes[..bytes.len() / 2]).expect("truncating qcow2");
        let msg = match open(&q) {
            Err(e) => e.to_string(),
            Ok(mut r) => {
                let mut buf = vec![0u8; 4 << 20];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => panic!("{name}: truncated image read to the end without error"),
                        Ok(_) => {}
                        Err(e) => break e.to_string(),
                    }
                }
            }
        };
        assert!(
            msg.contains("truncated") || msg.contains("end of the file"),
            "{name}: unclear truncation error: {msg}"
        );
    }
}

/// Random bytes behind the magic, and a real image with random bytes flipped: errors, never
/// panics or runaway allocations.
#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..200 {
        let mut junk = vec![0u8; 4096];
        rng.fill(&mut junk);
        junk[..4].copy_from_slice(b"QFI\xfb");
        assert!(Qcow2Reader::open(Box::new(junk)).is_err(), "random bytes opened as qcow2");
    }

    let dir = TempDir::new("fuzz");
    let raw = make_raw(1 << 20, 12);
    let raw_path = dir.path("f.raw");
    std::fs::write(&raw_path, &raw).expect("writing raw");
    for (name, opts) in
        [("plain", &["-o", "cluster_size=4k"][..]), ("zlib", &["-c", "-o", "cluster_size=4k"][..])]
    {
        let q = dir.path(&format!("{name}.qcow2"));
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&[p(&raw_path), p(&q)]);
        run("qemu-img", &args);
        let good = std::fs::read(&q).expect("reading qcow2");
        for _ in 0..300 {
            let mut bad = good.clone();
            for _ in 0..1 + rng.next() % 8 {
                let i = (rng.next() % bad.len() as u64) as usize;
                bad[i] = rng.next() as u8;
            }
            let Ok(mut r) = Qcow2Reader::open(Box::new(bad)) else { continue };
            // A flipped size byte may make the disk huge; reading a bounded prefix is enough.
            let mut buf = vec![0u8; 256 << 10];
            for _ in 0..16 {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    }
}

#[test]
fn reader_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Qcow2Reader>();
    let empty: Vec<u8> = Vec::new();
    assert!(read_header(&empty).is_err());
    assert!(empty.size() == Some(0));
}
