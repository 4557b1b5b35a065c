//! `deploy/mkimage.py`, the image `make image` writes: two builds of the same inputs give the
//! same index digest and bytes, the index holds linux/amd64 and linux/arm64 (v8) manifests, each
//! layer has fixed owners, mtimes and order, the configs run bty-web as uid 1000 with the volume
//! and port; podman loads the host's architecture from it, whose root answers /healthz; and the
//! arm64 bty-web inside the image is a static AArch64 ELF that serves under qemu-user.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util;
use crate::util::TestDir;
use serde_json::Value;

const EPOCH: &str = "1700000000";
const ARCHS: [&str; 2] = ["amd64", "arm64"];

/// Runs deploy/mkimage.py with one `ARCH=PATH` binary each; returns the image index digest.
fn mkimage_with(binaries: &[(&str, &Path)], out: &Path, epoch: &str, tag: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mkimage.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    for (arch, bin) in binaries {
        cmd.arg("--binary").arg(format!("{arch}={}", bin.display()));
    }
    let o = cmd
        .arg("--out")
        .arg(out)
        .args(["--tag", tag, "--version", "0.1.0", "--epoch", epoch])
        .output()
        .expect("running python3 deploy/mkimage.py");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("oci/index.json")).unwrap()).unwrap();
    let top = &index["manifests"][0];
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
    assert_eq!(top["mediaType"], "application/vnd.oci.image.index.v1+json", "{index}");
    assert_eq!(top["annotations"]["org.opencontainers.image.ref.name"], tag);
    top["digest"].as_str().unwrap().to_string()
}

fn mkimage(binaries: &[(&str, &Path)], out: &Path, epoch: &str) -> String {
    mkimage_with(binaries, out, epoch, "localhost/bty-web:test")
}

fn blob(out: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(out.join("oci/blobs/sha256").join(digest.trim_start_matches("sha256:"))).unwrap()
}

fn json_blob(out: &Path, digest: &str) -> Value {
    serde_json::from_slice(&blob(out, digest)).unwrap()
}

/// The image index's entry for `arch`, and that manifest.
fn arch_manifest(out: &Path, index_digest: &str, arch: &str) -> (Value, Value) {
    let index = json_blob(out, index_digest);
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == arch)
        .unwrap_or_else(|| panic!("no {arch} manifest in {index}"))
        .clone();
    let manifest = json_blob(out, entry["digest"].as_str().unwrap());
    (entry, manifest)
}

/// The layer of a manifest, as bytes.
fn layer_of(out: &Path, manifest: &Value) -> Vec<u8> {
    blob(out, manifest["layers"][0]["digest"].as_str().unwrap())
}

/// An ELF header for `machine` (62 x86-64, 183 AArch64) and a few bytes: what mkimage checks.
fn fake_elf(machine: u16) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // 64-bit
    h[5] = 1; // little-endian
    h[6] = 1;
    h[18..20].copy_from_slice(&machine.to_le_bytes());
    h.extend_from_slice(b"not really a program, but bytes are bytes");
    h
}

/// (name, mode, uid, mtime, data) of every entry of a ustar archive.
fn tar_files(tar: &[u8]) -> Vec<(String, u32, u32, u64, &[u8])> {
    let octal = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap_or(0)
    };
    let mut out = Vec::new();
    let mut off = 0;
    while off + 512 <= tar.len() && tar[off] != 0 {
        let h = &tar[off..off + 512];
        let name = String::from_utf8_lossy(&h[..100]).trim_end_matches('\0').to_string();
        let size = octal(&h[124..136]) as usize;
        out.push((
            name,
            octal(&h[100..108]) as u32,
            octal(&h[108..116]) as u32,
            octal(&h[136..148]),
            &tar[off + 512..off + 512 + size],
        ));
        off += 512 + size.div_ceil(512) * 512;
    }
    out
}

#[test]
fn two_builds_give_the_same_digest_and_bytes() {
    let t = TestDir::new("image-repro");
    let (amd, arm) = (t.path("bty-web-amd64"), t.path("bty-web-arm64"));
    std::fs::write(&amd, fake_elf(62)).unwrap();
    std::fs::write(&arm, fake_elf(183)).unwrap();
    let bins = [("amd64", amd.as_path()), ("arm64", arm.as_path())];
    let (a, b, c) = (t.path("a"), t.path("b"), t.path("c"));
    let d1 = mkimage(&bins, &a, EPOCH);
    let d2 = mkimage(&bins, &b, EPOCH);
    assert_eq!(d1, d2, "same inputs, same image index digest");
    for archive in
        ["bty-web-0.1.0.oci.tar", "bty-web-0.1.0-amd64.oci.tar", "bty-web-0.1.0-arm64.oci.tar"]
    {
        let (x, y) =
            (std::fs::read(a.join(archive)).unwrap(), std::fs::read(b.join(archive)).unwrap());
        assert!(x == y, "{archive}: two builds differ");
    }
    assert_ne!(mkimage(&bins, &c, "1700000001"), d1, "the epoch is part of the image");

    let index = json_blob(&a, &d1);
    let platforms: Vec<&Value> =
        index["manifests"].as_array().unwrap().iter().map(|m| &m["platform"]).collect();
    assert_eq!(platforms.len(), 2, "{index}");
    assert_eq!(*platforms[0], serde_json::json!({"architecture": "amd64", "os": "linux"}));
    assert_eq!(
        *platforms[1],
        serde_json::json!({"architecture": "arm64", "os": "linux", "variant": "v8"})
    );
    let mut layers = Vec::new();
    for arch in ARCHS {
        let (entry, manifest) = arch_manifest(&a, &d1, arch);
        let config = json_blob(&a, manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["os"], "linux");
        assert_eq!(config["variant"], entry["platform"]["variant"], "{arch}: variant");
        let c = &config["config"];
        assert_eq!(c["User"], "1000:1000");
        assert!(c["ExposedPorts"]["8080/tcp"].is_object());
        assert!(c["Volumes"]["/var/lib/bty"].is_object());
        assert!(c["Volumes"]["/var/cache/bty"].is_object());
        assert_eq!(c["Entrypoint"][0], "/usr/local/bin/bty-web");
        assert_eq!(c["Labels"]["org.bty.healthcheck.cmd"], "/usr/local/bin/bty-web health");

        let layer = layer_of(&a, &manifest);
        let entries = tar_files(&layer);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "{arch}: entries in name order");
        for want in ["etc/passwd", "etc/ssl/certs/ca-certificates.crt", "usr/local/bin/bty-web"] {
            assert!(names.contains(&want), "{arch}: {want} missing: {names:?}");
        }
        for (name, mode, uid, mtime, data) in &entries {
            assert_eq!(*mtime, EPOCH.parse::<u64>().unwrap(), "{arch}: {name}: mtime");
            // The state volume and the image cache's volume are the server's.
            let own = name.starts_with("var/lib/bty/") || name.starts_with("var/cache/bty/");
            let want_uid = if own { 1000 } else { 0 };
            assert_eq!(*uid, want_uid, "{arch}: {name}: owner");
            if name == "usr/local/bin/bty-web" {
                assert_eq!(*mode, 0o755);
                let want = if arch == "amd64" { fake_elf(62) } else { fake_elf(183) };
                assert!(*data == want.as_slice(), "{arch}: its own binary");
            }
        }
        let passwd = layer.windows(10).any(|w| w == b"bty:x:1000");
        assert!(passwd, "{arch}: a passwd entry for uid 1000");
        layers.push(manifest["layers"][0]["digest"].clone());

        // The single-arch archive holds that manifest, named by the tag.
        let one = std::fs::read(a.join(format!("bty-web-0.1.0-{arch}.oci.tar"))).unwrap();
        let files = tar_files(&one);
        let index_json = files.iter().find(|f| f.0 == "index.json").expect("index.json");
        let one_index: Value = serde_json::from_slice(index_json.4).unwrap();
        assert_eq!(one_index["manifests"][0]["digest"], entry["digest"], "{arch} archive");
        assert_eq!(
            one_index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "localhost/bty-web:test"
        );
    }
    assert_ne!(layers[0], layers[1], "each architecture its own layer");

    // A binary for the wrong architecture is refused, with both named.
    let o = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mkimage.py"))
        .arg("--binary")
        .arg(format!("arm64={}", amd.display()))
        .arg("--out")
        .arg(t.path("wrong"))
        .args(["--tag", "t", "--version", "0.1.0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("not arm64") && err.contains("bty-web-amd64"),
        "{err}"
    );
}

/// The static bty-webs `make static` and `make static-arm64` build (`make test` builds both).
fn static_binary(arch: &str) -> PathBuf {
    let (triple, make) = match arch {
        "amd64" => ("x86_64-unknown-linux-musl", "make static"),
        _ => ("aarch64-unknown-linux-musl", "make static-arm64"),
    };
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/{triple}/static/bty-web"));
    assert!(p.is_file(), "{} is missing: run {make} (make test does)", p.display());
    p
}

/// The multi-arch image of both static bty-webs in `out`; returns its index digest.
fn real_image(out: &Path, tag: &str) -> String {
    let (amd, arm) = (static_binary("amd64"), static_binary("arm64"));
    mkimage_with(&[("amd64", &amd), ("arm64", &arm)], out, EPOCH, tag)
}

/// The image is loadable by podman, and its layer, unpacked as a root file system, runs
/// bty-web as uid 1000 on the volume directory and answers /healthz. `podman run` itself needs
/// privileges this VM's sandbox lacks (crun's setrlimit fails without CAP_SYS_RESOURCE), so
/// the run goes through chroot with the image's user, entrypoint and volume: the same files,
/// the same uid, no container runtime.
#[test]
fn podman_loads_the_image_and_its_root_runs_bty_web_as_uid_1000() {
    let t = TestDir::new("image-run");
    let tag = format!("localhost/bty-web:test-{}", std::process::id());
    let out = t.path("img");
    let index_digest = real_image(&out, &tag);
    // The multi-arch archive: podman takes the host's architecture from the index.
    let host = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let o = Command::new("podman")
        .args(["load", "-i"])
        .arg(out.join("bty-web-0.1.0.oci.tar"))
        .output()
        .expect("running podman (make deps installs it)");
    let loaded = String::from_utf8_lossy(&o.stdout).to_string();
    let inspect = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Architecture}} {{.Digest}}", &tag])
        .output()
        .unwrap();
    let _ = Command::new("podman").args(["rmi", "-f", &tag]).output();
    assert!(o.status.success(), "{loaded}{}", String::from_utf8_lossy(&o.stderr));
    assert!(loaded.contains(&tag), "{loaded}");
    let inspect = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
    assert_eq!(inspect, format!("{host} {index_digest}"), "the host's image, by the index digest");

    // Unpack the host's layer as the container's root.
    let (_, manifest) = arch_manifest(&out, &index_digest, host);
    let config = json_blob(&out, manifest["config"]["digest"].as_str().unwrap());
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
    // The state volume (the image cache's /var/cache/bty is the other one).
    let volume = "/var/lib/bty".to_string();
    assert!(c["Volumes"][&volume].is_object(), "{c}");
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

/// The arm64 bty-web as the image carries it: a static AArch64 ELF (no program interpreter) that,
/// run by qemu-aarch64-static (called directly, not through binfmt_misc), prints its version,
/// answers /healthz and serves the login page on 127.0.0.1 with a temp state dir.
#[test]
fn the_arm64_bty_web_in_the_image_is_static_aarch64_and_serves_under_qemu_user() {
    let t = TestDir::new("image-arm64");
    let out = t.path("img");
    let index_digest = real_image(&out, "localhost/bty-web:test");
    let (_, manifest) = arch_manifest(&out, &index_digest, "arm64");
    let layer = layer_of(&out, &manifest);
    let files = tar_files(&layer);
    let (_, mode, _, _, elf) = *files
        .iter()
        .find(|f| f.0 == "usr/local/bin/bty-web")
        .expect("usr/local/bin/bty-web in the arm64 layer");
    util::assert_static_aarch64(elf);

    let bin = t.path("bty-web-arm64");
    std::fs::write(&bin, elf).unwrap();
    // With the layer's mode (qemu-user, like the kernel, runs only an executable file).
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    let qemu = "qemu-aarch64-static";
    let o = Command::new(qemu)
        .arg(&bin)
        .arg("--version")
        .output()
        .expect("running qemu-aarch64-static (make deps installs qemu-user-static)");
    let version = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(o.status.success(), "{version}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(version, format!("bty-web {}", env!("CARGO_PKG_VERSION")));

    let state = t.path("state");
    let mut cmd = Command::new(qemu);
    cmd.arg(&bin)
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .env_clear()
        .env("BTY_ADMIN_PASSWORD", "pw-for-tests")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let (child, addr) = util::spawn_web(cmd);
    let server = util::Server { child, addr, state: state.clone() };
    let (st, _, body) = server.call("GET", "/healthz", None, "");
    assert_eq!(st, 200, "{body}");
    let (st, head, body) = server.call("GET", "/ui/login", None, "");
    assert_eq!(st, 200, "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(body.contains("<title>Log in") && body.contains("name=\"password\""), "{body}");
    // It keeps its state where it was told: SQLite works under the arm64 build.
    assert!(state.join("state.db").is_file());
}
