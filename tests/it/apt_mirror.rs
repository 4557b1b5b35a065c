//! `make deps` on a machine whose apt sources name a mirror of another name: a copy of this
//! machine's apt sources with every URI moved to a mirror on 127.0.0.1, and `make deps` told to
//! read that copy (`APT_SOURCES_DIR`, which deploy/apt-mirror.sh honours) and to fetch the arm64
//! musl headers afresh into a directory of the test. The mirror serves what this machine's
//! apt already verified for that step (the signed InRelease, the arm64 package index, the
//! musl-dev package), so apt checks the signature and every hash as against the real archive,
//! and nothing leaves 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::httpd::Httpd;
use crate::util::{TestDir, sha256};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files of this machine's arm64 apt state (`make deps` made it), by their name in the
/// lists directory.
fn lists() -> Vec<PathBuf> {
    let dir = root().join("target/apt-arm64/lists");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run make deps)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().unwrap().to_string_lossy().contains("_dists_"))
        .collect();
    out.sort();
    out
}

/// A list file as the archive serves it, and its path under dists/: apt may keep an index
/// recompressed (lz4, by this machine's apt settings), and `apt-helper cat-file` gives the
/// original back; a file whose own hash InRelease lists (a .yml.gz, or an index kept as
/// fetched) is the original already.
fn original(file: &Path, release: &str) -> (String, Vec<u8>) {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let rel = name.split_once("_dists_").unwrap().1.replace('_', "/");
    let raw = std::fs::read(file).unwrap();
    if name.ends_with("InRelease") || release.contains(&sha256(&raw)) {
        return (rel, raw);
    }
    let out = Command::new("/usr/lib/apt/apt-helper")
        .arg("cat-file")
        .arg(file)
        .output()
        .expect("running apt-helper cat-file");
    assert!(out.status.success(), "apt-helper cat-file {}", file.display());
    let rel = ["lz4", "gz", "xz", "zst", "bz2", "lzma"]
        .iter()
        .find_map(|e| rel.strip_suffix(&format!(".{e}")))
        .unwrap_or(&rel)
        .to_string();
    (rel, out.stdout)
}

/// The copy of /etc/apt's sources with every `scheme://host` replaced by `base`.
fn rewritten_sources(dir: &Path, base: &str) -> PathBuf {
    let out = dir.join("etc-apt");
    std::fs::create_dir_all(out.join("sources.list.d")).unwrap();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(rd.map(|e| e.unwrap().path()));
    }
    let mut n = 0;
    for f in files.iter().filter(|f| f.is_file()) {
        let text = std::fs::read_to_string(f).unwrap();
        let mut moved = String::new();
        for line in text.lines() {
            // Left to right, past each replacement (the new base is a URI too).
            let (mut l, mut from) = (line.to_string(), 0);
            while let Some(i) = ["http://", "https://"]
                .iter()
                .filter_map(|s| l[from..].find(s).map(|i| (from + i, s.len())))
                .min()
                .map(|(i, len)| (i, i + len))
            {
                let (start, host) = i;
                let rest = &l[host..];
                let host_end = host + rest.find(['/', ' ', '\t']).unwrap_or(rest.len());
                l = format!("{}{base}{}", &l[..start], &l[host_end..]);
                from = start + base.len();
                n += 1;
            }
            moved.push_str(&l);
            moved.push('\n');
        }
        let rel = f.strip_prefix("/etc/apt").unwrap();
        std::fs::write(out.join(rel), moved).unwrap();
    }
    assert!(n > 0, "no http(s) URI in this machine's apt sources to move");
    out
}

#[test]
fn make_deps_takes_its_mirror_from_the_machines_apt_sources_whatever_its_name() {
    let dir = TestDir::new("apt-mirror");
    let http = Httpd::start();
    let base = http.url("").trim_end_matches('/').to_string();
    let sources = rewritten_sources(&dir.0, &base);

    // deploy/apt-mirror.sh reads the copy: the mirror is the moved one, path kept.
    let mirror = Command::new(root().join("deploy/apt-mirror.sh"))
        .env("APT_SOURCES_DIR", &sources)
        .output()
        .unwrap();
    let mirror = String::from_utf8(mirror.stdout).unwrap().trim().to_string();
    assert!(mirror.starts_with(&format!("{base}/")), "apt-mirror.sh gave {mirror:?}");
    let prefix = mirror.strip_prefix(&base).unwrap().to_string();

    // The mirror: the signed InRelease and the indexes under their paths and by hash, and the
    // musl-dev package where the index says it is.
    let inrelease = lists()
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("_dists_bookworm_InRelease"))
        .expect("bookworm's InRelease in target/apt-arm64/lists (run make deps)");
    let release = std::fs::read_to_string(&inrelease).unwrap();
    let mut packages = None;
    for file in lists() {
        let (rel, body) = original(&file, &release);
        let hash = sha256(&body);
        if let Some(dir_part) = rel.strip_prefix("bookworm/").and_then(|r| r.rsplit_once('/')) {
            // Every index apt fetched is listed in InRelease with the hash of what it serves.
            assert!(release.contains(&hash), "{rel}'s sha256 is not in InRelease");
            http.file(
                &format!("{prefix}/dists/bookworm/{}/by-hash/SHA256/{hash}", dir_part.0),
                body.clone(),
                false,
                None,
            );
        }
        if rel.ends_with("binary-arm64/Packages") {
            packages = Some(String::from_utf8_lossy(&body).into_owned());
        }
        http.file(&format!("{prefix}/dists/{rel}"), body, false, None);
    }
    let packages = packages.expect("the arm64 package index");
    let stanza = packages
        .split("\n\n")
        .find(|s| s.starts_with("Package: musl-dev\n"))
        .expect("musl-dev in the arm64 index");
    let pool = stanza.lines().find_map(|l| l.strip_prefix("Filename: ")).unwrap();
    let deb = root().join("target/apt-arm64/deb").join(Path::new(pool).file_name().unwrap());
    http.file(&format!("{prefix}/{pool}"), std::fs::read(&deb).unwrap(), false, None);

    // `make deps` with the arm64 headers to fetch afresh, into the test's directory.
    let fresh = dir.path("apt-arm64");
    let out = Command::new("make")
        .current_dir(root())
        .arg("deps")
        .arg(format!("APT_ARM64={}", fresh.display()))
        .env("APT_SOURCES_DIR", &sources)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .output()
        .expect("running make deps");
    let log =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "make deps failed:\n{log}");
    assert!(log.contains("fetching: musl-dev:arm64"), "the fresh fetch did not run:\n{log}");
    assert!(fresh.join("musl/usr/include/aarch64-linux-musl/stdio.h").is_file(), "{log}");
    let list = std::fs::read_to_string(fresh.join("sources.list")).unwrap();
    assert_eq!(list.trim(), format!("deb {mirror} bookworm main"));
    let seen: Vec<String> = http.seen().into_iter().map(|s| s.path).collect();
    assert!(seen.iter().any(|p| p.ends_with("/dists/bookworm/InRelease")), "{seen:?}");
    assert!(seen.iter().any(|p| p.ends_with(pool)), "the package came from elsewhere: {seen:?}");
}
