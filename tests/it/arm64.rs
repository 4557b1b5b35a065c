//! The static arm64 `bty` (`make static-arm64`, cross-built with musl like the arm64 bty-web),
//! run on this x86_64 machine by qemu-aarch64-static (called directly, not through
//! binfmt_misc): a static AArch64 executable within the 4 MiB budget whose `inspect` reports
//! what the x86_64 build reports and whose `flash` writes every format byte for byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::{self, TestDir, bty, disk_image, encoders};

fn arm64_bty() -> PathBuf {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/aarch64-unknown-linux-musl/static/bty");
    assert!(p.is_file(), "{} is missing: run make static-arm64 (make test does)", p.display());
    p
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new("qemu-aarch64-static")
        .arg(arm64_bty())
        .args(args)
        .env_remove("BTY_LOG")
        .output()
        .expect("running qemu-aarch64-static (make deps installs qemu-user-static)")
}

#[test]
fn the_arm64_bty_is_a_static_aarch64_executable_within_4_mib() {
    let elf = std::fs::read(arm64_bty()).unwrap();
    util::assert_static_aarch64(&elf);
    assert!(elf.len() <= 4 << 20, "the arm64 bty is {} bytes, over 4 MiB", elf.len());
    let o = run(&["--version".as_ref()]);
    assert!(o.status.success(), "{}", util::stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("bty {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_arm64_bty_inspects_and_flashes_every_format_byte_exact() {
    let t = TestDir::new("arm64-bty");
    let raw = disk_image(0xa64, 12 << 20);
    let raw_path = t.path("disk.img");
    std::fs::write(&raw_path, &raw).unwrap();
    let mut sources: Vec<PathBuf> = Vec::new();
    for (suffix, encode) in encoders() {
        let p = t.path(&format!("disk.{suffix}"));
        std::fs::write(&p, encode(&raw)).unwrap();
        sources.push(p);
    }
    let q = t.path("disk.qcow2");
    util::qcow2(&raw_path, &q, &[]);
    sources.push(q);
    for src in &sources {
        let name = src.file_name().unwrap().to_string_lossy().to_string();
        // inspect: the same report as the x86_64 build's.
        let args = ["inspect".as_ref(), src.as_os_str(), "--json".as_ref()];
        let arm = run(&args);
        assert!(arm.status.success(), "{name}: {}", util::stderr(&arm));
        let x86 = bty().args(args).output().unwrap();
        assert!(x86.status.success(), "{name}: {}", util::stderr(&x86));
        let parse =
            |o: &Output| -> serde_json::Value { serde_json::from_slice(&o.stdout).unwrap() };
        assert_eq!(parse(&arm), parse(&x86), "{name}: inspect differs between arm64 and x86_64");
        // flash to a file, with its digest checked, then compared.
        let target = t.path(&format!("{name}.out"));
        let sha = util::sha256(&std::fs::read(src).unwrap());
        let o = run(&[
            "flash".as_ref(),
            src.as_os_str(),
            target.as_os_str(),
            "--yes".as_ref(),
            "--progress".as_ref(),
            "none".as_ref(),
            "--sha256".as_ref(),
            sha.as_ref(),
        ]);
        assert!(o.status.success(), "{name}: {}", util::stderr(&o));
        let written = std::fs::read(&target).unwrap();
        assert!(written == raw, "{name}: the arm64 bty wrote different bytes");
    }
    // A corrupt archive is refused by the arm64 build as by the other.
    let bad = t.path("bad.img.zst");
    let mut z = std::fs::read(t.path("disk.img.zst")).unwrap();
    let n = z.len();
    z.truncate(n / 2);
    std::fs::write(&bad, z).unwrap();
    let target = t.path("bad.out");
    let o = run(&[
        "flash".as_ref(),
        bad.as_os_str(),
        target.as_os_str(),
        "--yes".as_ref(),
        "--progress".as_ref(),
        "none".as_ref(),
    ]);
    assert!(!o.status.success(), "a truncated archive was flashed");
}
