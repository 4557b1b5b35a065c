//! `deploy/mkimage.py`, the image `make image` writes: two builds of the same inputs give the
//! same manifest digest and bytes, the layer has fixed owners, mtimes and order, the config runs
//! bty-web as uid 1000 with the volume and port; and, where podman can run containers here,
//! the loaded image answers /healthz.

mod util;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use util::TestDir;

const EPOCH: &str = "1700000000";

fn mkimage(binary: &Path, out: &Path, epoch: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mkimage.py");
    let o = Command::new("python3")
        .arg(script)
        .arg("--binary")
        .arg(binary)
        .arg("--out")
        .arg(out)
        .args(["--tag", "localhost/bty-web:test", "--version", "0.1.0", "--epoch", epoch])
        .output()
        .expect("running python3 deploy/mkimage.py");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("oci/index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_string()
}

fn blob(out: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(out.join("oci/blobs/sha256").join(digest.trim_start_matches("sha256:"))).unwrap()
}

/// (name, mode, uid, mtime) of every entry of a ustar archive.
fn tar_entries(tar: &[u8]) -> Vec<(String, u32, u32, u64)> {
    let octal = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap_or(0)
    };
    let mut out = Vec::new();
    let mut off = 0;
    while off + 512 <= tar.len() && tar[off] != 0 {
        let h = &tar[off..off + 512];
        let name = String::from_utf8_lossy(&h[..100]).trim_end_matches('\0').to_string();
        let size = octal(&h[124..136]);
        out.push((
            name,
            octal(&h[100..108]) as u32,
            octal(&h[108..116]) as u32,
            octal(&h[136..148]),
        ));
        off += 512 + size.div_ceil(512) as usize * 512;
    }
    out
}

#[test]
fn two_builds_give_the_same_digest_and_bytes() {
    let t = TestDir::new("image-repro");
    let bin = t.path("bty-web");
    std::fs::write(&bin, b"\x7fELF not really, but bytes are bytes").unwrap();
    let (a, b, c) = (t.path("a"), t.path("b"), t.path("c"));
    let d1 = mkimage(&bin, &a, EPOCH);
    let d2 = mkimage(&bin, &b, EPOCH);
    assert_eq!(d1, d2, "same inputs, same manifest digest");
    let archive = "bty-web-0.1.0-amd64.oci.tar";
    assert!(std::fs::read(a.join(archive)).unwrap() == std::fs::read(b.join(archive)).unwrap());
    assert_ne!(mkimage(&bin, &c, "1700000001"), d1, "the epoch is part of the image");

    let manifest: Value = serde_json::from_slice(&blob(&a, &d1)).unwrap();
    let config: Value =
        serde_json::from_slice(&blob(&a, manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let c = &config["config"];
    assert_eq!(c["User"], "1000:1000");
    assert!(c["ExposedPorts"]["8080/tcp"].is_object());
    assert!(c["Volumes"]["/var/lib/bty"].is_object());
    assert_eq!(c["Entrypoint"][0], "/usr/local/bin/bty-web");
    assert_eq!(c["Labels"]["org.bty.healthcheck.cmd"], "/usr/local/bin/bty-web health");

    let layer = blob(&a, manifest["layers"][0]["digest"].as_str().unwrap());
    let entries = tar_entries(&layer);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries in name order");
    for want in ["etc/passwd", "etc/ssl/certs/ca-certificates.crt", "usr/local/bin/bty-web"] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    for (name, mode, uid, mtime) in &entries {
        assert_eq!(*mtime, EPOCH.parse::<u64>().unwrap(), "{name}: mtime");
        let want_uid = if name.starts_with("var/lib/bty/") { 1000 } else { 0 };
        assert_eq!(*uid, want_uid, "{name}: owner");
        if name == "usr/local/bin/bty-web" {
            assert_eq!(*mode, 0o755);
        }
    }
    let passwd = layer.windows(10).any(|w| w == b"bty:x:1000");
    assert!(passwd, "a passwd entry for uid 1000");
}

/// The static bty-web `make static` builds (`make test` builds it first).
fn static_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-musl/static/bty-web");
    assert!(p.is_file(), "{} is missing: run make static (make test does)", p.display());
    p
}

/// The image is loadable by podman, and its layer, unpacked as a root file system, runs
/// bty-web as uid 1000 on the volume directory and answers /healthz. `podman run` itself needs
/// privileges this VM's sandbox lacks (crun's setrlimit fails without CAP_SYS_RESOURCE), so
/// the run goes through chroot with the image's user, entrypoint and volume: the same files,
/// the same uid, no container runtime.
#[test]
fn podman_loads_the_image_and_its_root_runs_bty_web_as_uid_1000() {
    let bin = static_binary();
    let t = TestDir::new("image-run");
    let tag = format!("localhost/bty-web:test-{}", std::process::id());
    let out = t.path("img");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mkimage.py");
    let o = Command::new("python3")
        .arg(script)
        .arg("--binary")
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .args(["--tag", &tag, "--version", "0.1.0", "--epoch", EPOCH])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("podman")
        .args(["load", "-i"])
        .arg(out.join("bty-web-0.1.0-amd64.oci.tar"))
        .output()
        .expect("running podman (make deps installs it)");
    let loaded = String::from_utf8_lossy(&o.stdout).to_string();
    let _ = Command::new("podman").args(["rmi", "-f", &tag]).output();
    assert!(o.status.success(), "{loaded}{}", String::from_utf8_lossy(&o.stderr));
    assert!(loaded.contains(&tag), "{loaded}");

    // Unpack the layer as the container's root.
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("oci/index.json")).unwrap()).unwrap();
    let manifest: Value =
        serde_json::from_slice(&blob(&out, index["manifests"][0]["digest"].as_str().unwrap()))
            .unwrap();
    let config: Value =
        serde_json::from_slice(&blob(&out, manifest["config"]["digest"].as_str().unwrap()))
            .unwrap();
    let layer = out
        .join("oci/blobs/sha256")
        .join(manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:"));
    let root = t.path("root");
    std::fs::create_dir_all(&root).unwrap();
    let o = Command::new("tar")
        .args(["--same-owner", "-xpf"])
        .arg(&layer)
        .arg("-C")
        .arg(&root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = &config["config"];
    let user = c["User"].as_str().unwrap();
    let entry = c["Entrypoint"][0].as_str().unwrap();
    let volume = c["Volumes"].as_object().unwrap().keys().next().unwrap().clone();
    let mut child = Command::new("/usr/sbin/chroot")
        .arg(format!("--userspec={user}"))
        .arg(&root)
        .arg(entry)
        .args(["--listen", "127.0.0.1:0", "--state-dir", &volume])
        .env_clear()
        .env("BTY_ADMIN_PASSWORD", "x")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
    let addr = line.trim().strip_prefix("listening on http://").map(str::to_string);
    let mut answer = String::new();
    if let Some(addr) = &addr {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
        let _ = s.read_to_string(&mut answer);
    }
    let pid = child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        addr.is_some(),
        "bty-web did not start in the image's root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("").to_string();
    assert!(uid.split_whitespace().nth(1) == Some("1000"), "runs as uid 1000: {uid}");
    // It created its state in the volume, as uid 1000 can.
    assert!(root.join(volume.trim_start_matches('/')).join("state.db").exists());
}
