//! `bty images` on a real image root: compressed images, hostile file names, catalogs (merged,
//! oversize, malformed).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Output;

use crate::util::*;

const MIB: usize = 1 << 20;

fn images(root: &Path, extra: &[&str]) -> Output {
    bty().arg("images").args(extra).env("BTY_IMAGE_ROOT", root).output().expect("running bty")
}

fn images_json(root: &Path, extra: &[&str]) -> (Vec<serde_json::Value>, String) {
    let o = images(root, &[&["--json"], extra].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json prints JSON");
    (v.as_array().expect("an array").clone(), stderr(&o))
}

fn by_name<'a>(list: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    list.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{name} not listed"))
}

/// The `bty_image_ref` of a src, computed here independently: sha256 of the canonical form.
/// A plain HTTP server on 127.0.0.1 that answers GETs for these paths and 404 otherwise, for
/// as long as the test runs; returns its `host:port`.
fn serve_files(files: &[(&'static str, &'static str)]) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let files = files.to_vec();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(200) {
            let Ok(mut conn) = conn else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut h = String::new();
            while r.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            let path = line.split(' ').nth(1).unwrap_or("");
            let resp = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .into(),
            };
            let _ = conn.write_all(resp.as_bytes());
        }
    });
    addr
}

fn reference(canonical: &str) -> String {
    sha256(canonical.as_bytes())
}

#[test]
fn lists_every_format_with_sizes_and_arch() {
    let dir = TestDir::new("images-formats");
    let raw = disk_image(1, 4 * MIB);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("debian-12-amd64.img", raw.clone()),
        ("ubuntu-arm64.img.gz", gzip(&raw)),
        ("fedora-aarch64.raw.xz", xz(&raw)),
        ("alpine-riscv64.img.zst", zstd::bulk::compress(&raw, 3).unwrap()),
        ("streamed.img.zst", zstd(&raw)),
        ("arch-x86_64.img.bz2", bzip2(&raw)),
        ("live.iso.gz", gzip(&raw)),
    ];
    for (name, data) in &files {
        fs::write(dir.path(name), data).unwrap();
    }
    qcow2(&dir.path("debian-12-amd64.img"), &dir.path("cloud.qcow2"), &[]);
    fs::write(dir.path("README.txt"), "not an image").unwrap();
    fs::write(dir.path("debian-12-amd64.img.sha256"), format!("{}  x\n", sha256(&raw))).unwrap();
    fs::create_dir(dir.path("nested")).unwrap();
    fs::write(dir.path("nested/deeper.img"), &raw).unwrap();

    let (list, err) = images_json(&dir.0, &[]);
    assert!(err.is_empty(), "no warnings expected: {err}");
    let names: Vec<&str> = list.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "alpine-riscv64.img.zst",
            "arch-x86_64.img.bz2",
            "cloud.qcow2",
            "debian-12-amd64.img",
            "fedora-aarch64.raw.xz",
            "live.iso.gz",
            "streamed.img.zst",
            "ubuntu-arm64.img.gz",
        ],
        "sorted, only images, not in subdirectories"
    );
    let len = raw.len() as u64;
    let cases = [
        ("alpine-riscv64.img.zst", "img.zst", Some("riscv64"), Some(len)),
        ("arch-x86_64.img.bz2", "img.bz2", Some("x86_64"), None),
        ("cloud.qcow2", "qcow2", None, Some(len)),
        ("debian-12-amd64.img", "img", Some("x86_64"), Some(len)),
        ("fedora-aarch64.raw.xz", "raw.xz", Some("aarch64"), Some(len)),
        ("live.iso.gz", "iso.gz", None, None),
        ("streamed.img.zst", "img.zst", None, None),
        ("ubuntu-arm64.img.gz", "img.gz", Some("aarch64"), None),
    ];
    let root = fs::canonicalize(&dir.0).unwrap();
    for (name, format, arch, virtual_size) in cases {
        let e = by_name(&list, name);
        let path = root.join(name);
        assert_eq!(e["format"], format, "{name}");
        assert_eq!(e["arch"].as_str(), arch, "{name}");
        assert_eq!(e["virtual_size"].as_u64(), virtual_size, "{name}");
        assert_eq!(e["size_bytes"].as_u64(), Some(fs::metadata(&path).unwrap().len()), "{name}");
        assert_eq!(e["origin"], "local");
        assert_eq!(e["cached"], true);
        let url = format!("file://{}", path.display());
        assert_eq!(e["url"], url.as_str());
        let canonical = format!("file://{}", path.display().to_string().trim_start_matches('/'));
        assert_eq!(e["ref"], reference(&canonical).as_str(), "{name}");
    }
    let debian = by_name(&list, "debian-12-amd64.img");
    assert_eq!(debian["sha_short"], &sha256(&raw)[..12], "from the .sha256 file");
    assert_eq!(by_name(&list, "cloud.qcow2")["sha_short"], serde_json::Value::Null);

    // The table: one header and a row per image, sizes human-readable.
    let o = images(&dir.0, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 9, "{out}");
    assert!(lines[0].starts_with("NAME") && lines[0].ends_with("WHERE"), "{out}");
    let row = lines.iter().find(|l| l.starts_with("fedora-aarch64.raw.xz")).unwrap();
    let cells: Vec<&str> = row.split("  ").filter(|c| !c.is_empty()).map(str::trim).collect();
    assert_eq!(cells.len(), 6, "{row}");
    assert_eq!([cells[1], cells[2], cells[4], cells[5]], ["raw.xz", "aarch64", "4.0 MiB", "local"]);
    let row = lines.iter().find(|l| l.starts_with("live.iso.gz")).unwrap();
    assert!(row.contains(" -  "), "unknown on-disk size shows as '-': {row}");
}

#[test]
fn mislabelled_files_are_reported_not_listed() {
    let dir = TestDir::new("images-bad");
    let raw = disk_image(2, 2 * MIB);
    let xz_file = xz(&raw);
    fs::write(dir.path("good.img"), &raw).unwrap();
    fs::write(dir.path("wrong.img.gz"), zstd(&raw)).unwrap();
    fs::write(dir.path("packed.img"), gzip(&raw)).unwrap();
    fs::write(dir.path("rootfs.tar.gz"), gzip(&raw)).unwrap();
    fs::write(dir.path("empty.img"), b"").unwrap();
    fs::write(dir.path("truncated.img.xz"), &xz_file[..(xz_file.len() / 2) & !3]).unwrap();
    // macOS metadata files on exFAT sticks: hidden, never images.
    fs::write(dir.path("._good.img"), b"\x00\x05\x16\x07 AppleDouble").unwrap();
    std::os::unix::fs::symlink("no-such-file.img", dir.path("dangling.img")).unwrap();
    fs::create_dir(dir.path("folder.img")).unwrap();

    let (list, err) = images_json(&dir.0, &[]);
    let names: Vec<&str> = list.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["good.img", "truncated.img.xz"]);
    assert_eq!(list[1]["virtual_size"], serde_json::Value::Null);
    let root = fs::canonicalize(&dir.0).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    let want = [
        ("dangling.img", "No such file"),
        ("empty.img", "the file is empty"),
        ("packed.img", "named like a raw image but its content is gzip"),
        ("rootfs.tar.gz", "a tar archive, not a disk image"),
        ("truncated.img.xz", "xz"),
        ("wrong.img.gz", "named like a gzip image but its content is zstd"),
    ];
    assert_eq!(lines.len(), want.len(), "{err}");
    for (line, (name, why)) in lines.iter().zip(want) {
        assert!(line.starts_with("bty: warning: "), "{line}");
        assert!(line.contains(&root.join(name).display().to_string()), "{line}");
        assert!(line.contains(why), "{line}");
    }
    assert!(lines[4].ends_with("its on-disk size is unknown"), "{}", lines[4]);
}

#[test]
fn hostile_names_are_shown_exactly_and_safely() {
    let dir = TestDir::new("images-hostile");
    let raw = disk_image(3, MIB);
    let names: [&[u8]; 3] =
        [b"<script>alert(1)<!--.img", b"\xff\xfe-amd64.img", b"evil\x1b[2J\n-arm64.img"];
    for n in names {
        fs::write(dir.0.join(OsStr::from_bytes(n)), &raw).unwrap();
    }
    let catalog = dir.path("catalog.toml");
    fs::write(
        &catalog,
        r#"version = 1

[[images]]
name = "../../etc/passwd"
src = "https://h/../../etc/passwd.img"

[[images]]
name = "</script><img src=x onerror=alert(1)>\u001b[31m"
src = "https://h/x.img.gz"
"#,
    )
    .unwrap();
    let (list, err) = images_json(&dir.0, &["--catalog", catalog.to_str().unwrap()]);
    assert!(err.is_empty(), "{err}");
    let root = fs::canonicalize(&dir.0).unwrap();
    let shown: Vec<&str> = list.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(
        shown,
        [
            "<script>alert(1)<!--.img",
            "evil\x1b[2J\n-arm64.img",
            "\u{fffd}\u{fffd}-amd64.img",
            "../../etc/passwd",
            "</script><img src=x onerror=alert(1)>\x1b[31m",
        ]
    );
    // The URL keeps the exact bytes of a name that is not UTF-8.
    let odd = by_name(&list, "\u{fffd}\u{fffd}-amd64.img");
    assert_eq!(odd["url"], format!("file://{}/%FF%FE-amd64.img", root.display()).as_str());
    assert_eq!(odd["arch"], "x86_64");
    assert_eq!(by_name(&list, "evil\x1b[2J\n-arm64.img")["arch"], "aarch64");
    let passwd = by_name(&list, "../../etc/passwd");
    assert_eq!(passwd["url"], "https://h/../../etc/passwd.img", "kept byte for byte");
    assert_eq!(passwd["ref"], reference("https://h/../../etc/passwd.img").as_str());

    // In the table, control characters are escaped: no screen clearing, no fake rows.
    let o = images(&dir.0, &["--catalog", catalog.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!o.stdout.contains(&0x1b), "escape character reached the terminal");
    let out = String::from_utf8(o.stdout).expect("the table is UTF-8");
    assert_eq!(out.lines().count(), 6, "{out}");
    assert!(out.contains("evil\\u{1b}[2J\\n-arm64.img"), "{out}");
    assert!(out.contains("<script>alert(1)<!--.img"), "{out}");
    // Nothing was created or followed outside the image root.
    assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 4);
}

#[test]
fn catalog_entries_follow_local_images_without_duplicates() {
    let dir = TestDir::new("images-catalog");
    let root = dir.path("root");
    fs::create_dir(&root).unwrap();
    let raw = disk_image(4, 2 * MIB);
    fs::write(root.join("local-amd64.img.gz"), gzip(&raw)).unwrap();
    let local = fs::canonicalize(root.join("local-amd64.img.gz")).unwrap();
    let sha = sha256(b"published bytes");
    let catalog = dir.path("catalog.toml");
    fs::write(
        &catalog,
        format!(
            r#"version = 1

[[images]]
name = "same file, other spelling"
src = "file://{}"

[[images]]
name = "debian-12-genericcloud-arm64.qcow2"
src = "https://cloud.example/images/debian-12-genericcloud-arm64.qcow2"
sha256 = "{sha}"
size_bytes = 400000000
description = "Debian 12"

[[images]]
name = "same URL, other spelling"
src = "HTTPS://Cloud.Example:443/images/debian-12-genericcloud-arm64.qcow2"

[[images]]
name = "nosi"
src = "oras://ghcr.io/safl/nosi/debian-sysdev:latest"
arch = "x86_64"
format = "img.gz"
ref = "{}"
"#,
            local.display().to_string().replace('/', "//"),
            reference("oras://ghcr.io/safl/nosi/debian-sysdev:latest"),
        ),
    )
    .unwrap();
    let url = format!("file://{}", catalog.display());
    for src in [catalog.to_str().unwrap(), url.as_str()] {
        let (list, err) = images_json(&root, &["--catalog", src]);
        assert!(err.is_empty(), "{err}");
        let names: Vec<&str> = list.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["local-amd64.img.gz", "debian-12-genericcloud-arm64.qcow2", "nosi"]);
        let deb = &list[1];
        assert_eq!(deb["origin"], "catalog");
        assert_eq!(deb["cached"], false);
        assert_eq!(deb["format"], "qcow2");
        assert_eq!(deb["arch"], "aarch64");
        assert_eq!(deb["size_bytes"], 400000000);
        assert_eq!(deb["sha_short"], &sha[..12]);
        assert_eq!(deb["description"], "Debian 12");
        assert_eq!(
            deb["ref"],
            reference("https://cloud.example/images/debian-12-genericcloud-arm64.qcow2").as_str()
        );
        let nosi = reference("oras://ghcr.io/safl/nosi/debian-sysdev:latest");
        assert_eq!(list[2]["ref"], nosi.as_str());
        assert_eq!(list[2]["arch"], "x86_64");
        assert_eq!(list[2]["format"], "img.gz");
    }
    let o = images(&root, &["--catalog", catalog.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    let wheres: Vec<&str> = out.lines().skip(1).map(|l| l.rsplit(' ').next().unwrap()).collect();
    assert_eq!(wheres, ["local", "catalog", "catalog"], "{out}");

    // No image root at all: the catalog alone, and a warning naming the missing directory.
    let (list, err) = images_json(&dir.path("missing"), &["--catalog", catalog.to_str().unwrap()]);
    assert_eq!(list.len(), 3, "the file:// entry is shown when its file is not in the root");
    assert!(err.contains("reading image root") && err.contains("missing"), "{err}");
}

#[test]
fn bad_catalogs_fail_with_the_source_named() {
    let web = serve_files(&[
        ("/bad.toml", "version = 1\n[[images]]\nname = \"x\"\nsrc = \"file:///srv/x.img\"\n"),
        (
            "/good.toml",
            "version = 1\n[[images]]\nname = \"y.img.zst\"\nsrc = \"https://h/y.img.zst\"\n",
        ),
    ]);
    let dir = TestDir::new("images-badcat");
    fs::write(dir.path("good.img"), disk_image(5, MIB)).unwrap();
    let at = |name: &str| dir.path(name).display().to_string();
    // A catalog over http, as a bty-web's /catalog.toml is served.
    let (list, _) = images_json(&dir.0, &["--catalog", &format!("http://{web}/good.toml")]);
    assert_eq!(by_name(&list, "y.img.zst")["url"], "https://h/y.img.zst");

    let mut big = b"version = 1\n".to_vec();
    big.resize(4 * MIB + 1, b'\n');
    fs::write(dir.path("big.toml"), &big).unwrap();
    // Exactly the limit is still read.
    fs::write(dir.path("limit.toml"), &big[..4 * MIB]).unwrap();
    let bad_toml = "version = 1\n[[images]]\nname = \"a.img\"\nsrc = https://h/a.img\n";
    fs::write(dir.path("malformed.toml"), bad_toml).unwrap();
    fs::write(dir.path("binary.toml"), b"version = 1\n\x89PNG\r\n").unwrap();
    fs::write(
        dir.path("badsha.toml"),
        "version = 1\n[[images]]\nname = \"a.img\"\nsrc = \"https://h/a.img\"\nsha256 = \"abc\"\n",
    )
    .unwrap();
    fs::write(dir.path("v2.toml"), "version = 2\n").unwrap();

    let cases: Vec<(String, String)> = vec![
        (at("big.toml"), format!("catalog {}: larger than 4.0 MiB", at("big.toml"))),
        ("/dev/zero".into(), "catalog /dev/zero: larger than 4.0 MiB".into()),
        (
            at("malformed.toml"),
            format!("catalog {}: invalid TOML at line 4, column 7", at("malformed.toml")),
        ),
        (at("binary.toml"), format!("catalog {}: not UTF-8 text", at("binary.toml"))),
        (
            at("badsha.toml"),
            format!(
                "catalog {}: entry #1 (\"a.img\"): sha256: expected 64 hex digits",
                at("badsha.toml")
            ),
        ),
        (at("v2.toml"), format!("catalog {}: version: 2 is not supported", at("v2.toml"))),
        (at("none.toml"), format!("reading catalog {}: No such file", at("none.toml"))),
        (
            dir.0.display().to_string(),
            format!("reading catalog {}: is a directory", dir.0.display()),
        ),
        (
            format!("http://user:secret@{web}/missing.toml"),
            format!(
                "fetching catalog http://{web}/missing.toml: http://{web}/missing.toml: user names"
            ),
        ),
        (
            format!("http://{web}/missing.toml"),
            format!(
                "fetching catalog http://{web}/missing.toml: fetching http://{web}/missing.toml: HTTP 404"
            ),
        ),
        (
            format!("http://{web}/bad.toml"),
            format!(
                "catalog http://{web}/bad.toml: entry #1 (\"x\"): src: \"file:///srv/x.img\": file:// sources are not allowed in a remote catalog"
            ),
        ),
        ("ftp://h/c.toml".into(), "catalog ftp://h/c.toml: \"ftp\" sources are not".into()),
    ];
    for (src, want) in cases {
        for json in [false, true] {
            let extra: &[&str] = if json { &["--json"] } else { &[] };
            let o = images(&dir.0, &[&["--catalog", src.as_str()], extra].concat());
            assert_eq!(o.status.code(), Some(2), "{src}");
            assert!(o.stdout.is_empty(), "{src}: nothing listed on a catalog error");
            let err = stderr(&o);
            assert!(err.contains(&format!("bty: error: {want}")), "{src}: {err}");
            assert!(!err.contains("secret"), "{err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
        }
    }
    let (list, _) = images_json(&dir.0, &["--catalog", &at("limit.toml")]);
    assert_eq!(list.len(), 1);
}
