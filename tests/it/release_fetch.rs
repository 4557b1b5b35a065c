//! bty-web's netboot fetch (`POST /boot/releases`) against releases the tests make: served over
//! http on 127.0.0.1 with cut connections and bad files, from a local directory, with hostile
//! manifests, and against the upload limit. tests/it/release.rs takes the real `make release`.

use crate::util;
use crate::util::release as rel;
use crate::util::{Server, TestDir};

const K1: &str = "bty-netboot-pc-x86_64-v1.0.0.vmlinuz";
const I1: &str = "bty-netboot-pc-x86_64-v1.0.0.initrd";
const K2: &str = "bty-netboot-pc-x86_64-v2.0.0.vmlinuz";
const I2: &str = "bty-netboot-pc-x86_64-v2.0.0.initrd";
const KA: &str = "bty-netboot-arm64-v1.0.0.vmlinuz";
const IA: &str = "bty-netboot-arm64-v1.0.0.initrd";
const K3: &str = "bty-netboot-pc-x86_64-v3.0.0.vmlinuz";
const I3: &str = "bty-netboot-pc-x86_64-v3.0.0.initrd";

/// No hidden temp file is left in the boot dir.
fn no_temp_files(s: &Server) {
    let names = rel::boot_files(s);
    assert!(names.iter().all(|n| !n.starts_with('.')), "temp files left: {names:?}");
}

#[test]
fn netboot_release_fetch_installs_verified_files_and_keeps_the_old_ones_on_failure() {
    use util::httpd::{Fault, Httpd};
    let http = Httpd::start();
    let s = Server::start_env(
        "workers-release",
        &[("BTY_BOOT_RELEASE_URL", http.url("/rel/").as_str())],
    );
    let cookie = s.login();
    assert_eq!(s.call("POST", "/boot/releases", None, "").0, 401);
    let boot = s.state.join("boot");
    let mac = "52:54:00:07:00:01";
    rel::flash_machine(&s, &cookie, mac);
    let default = format!("bty-netboot-pc-x86_64-v{}.vmlinuz", env!("CARGO_PKG_VERSION"));
    assert_eq!(rel::script_names(&s, mac).0, default, "before any fetch, the default name");
    let serve = |files: &[(&str, &[u8])], manifest: Vec<u8>| {
        for (name, data) in files {
            http.file(&format!("/rel/{name}"), data.to_vec(), true, None);
        }
        http.file("/rel/release.toml", manifest, false, None);
    };

    // Release 1.0.0 with an iPXE binary, one connection cut on the way (resumed with Range).
    let k1 = util::prng_bytes(91, 3 << 20);
    let i1 = util::prng_bytes(92, 5 << 20);
    let efi = util::prng_bytes(90, 64 << 10);
    let files: [(&str, &[u8]); 3] = [(K1, &k1), (I1, &i1), ("ipxe.efi", &efi)];
    serve(
        &files,
        rel::manifest(
            "1.0.0",
            &[
                (K1, "netboot-kernel", &k1),
                (I1, "netboot-initrd", &i1),
                ("ipxe.efi", "ipxe-efi", &efi),
            ],
        ),
    );
    http.faults(&format!("/rel/{I1}"), vec![Fault::Cut(2 << 20)]);
    rel::fetch(&s, &cookie, "done");
    assert_eq!(std::fs::read(boot.join(K1)).unwrap(), k1);
    assert_eq!(std::fs::read(boot.join(I1)).unwrap(), i1);
    assert_eq!(std::fs::read(boot.join("ipxe.efi")).unwrap(), efi);
    assert_eq!(
        std::fs::read_to_string(boot.join("bty-netboot-pc-x86_64-v1.0.0.sha256")).unwrap(),
        format!("{}  {K1}\n{}  {I1}\n", util::sha256(&k1), util::sha256(&i1))
    );
    assert!(!boot.join("bty-arm64.tar.zst").exists(), "only the netboot assets are installed");
    // Served to machines at once, and named in their scripts.
    assert_eq!(s.call("HEAD", &format!("/boot/{I1}"), None, "").0, 200);
    assert_eq!(rel::script_names(&s, mac), (K1.to_string(), I1.to_string()));
    let (_, _, ev) = s.call("GET", "/events?kind=boot.release.installed", Some(&cookie), "");
    let ev = rel::json(&ev);
    let d = &ev["events"][0]["details"];
    assert_eq!(d["version"], "1.0.0", "{ev}");
    assert_eq!(
        d["files"],
        serde_json::json!([K1, I1, "ipxe.efi", "bty-netboot-pc-x86_64-v1.0.0.sha256"])
    );
    assert_eq!(d["source"], http.url("/rel/release.toml"), "{ev}");

    // Release 2.0.0 replaces the pair in the scripts; 1.0.0's files stay where they are.
    let k2 = util::prng_bytes(93, 3 << 20);
    let i2 = util::prng_bytes(94, 4 << 20);
    serve(
        &[(K2, &k2), (I2, &i2)],
        rel::manifest("2.0.0", &[(K2, "netboot-kernel", &k2), (I2, "netboot-initrd", &i2)]),
    );
    rel::fetch(&s, &cookie, "done");
    assert_eq!(rel::script_names(&s, mac), (K2.to_string(), I2.to_string()));
    assert_eq!(std::fs::read(boot.join(K1)).unwrap(), k1);

    // Release 3.0.0 goes wrong in each way; every time 2.0.0 stays installed and in the scripts.
    let unchanged = |what: &str| {
        assert_eq!(std::fs::read(boot.join(K2)).unwrap(), k2, "{what}");
        assert_eq!(std::fs::read(boot.join(I2)).unwrap(), i2, "{what}");
        assert_eq!(rel::script_names(&s, mac), (K2.to_string(), I2.to_string()), "{what}");
        assert!(!boot.join(K3).exists() && !boot.join(I3).exists(), "{what}");
        no_temp_files(&s);
    };
    let k3 = util::prng_bytes(95, 3 << 20);
    let i3 = util::prng_bytes(96, 4 << 20);
    let m3 = |k: &[u8], i: &[u8]| {
        rel::manifest("3.0.0", &[(K3, "netboot-kernel", k), (I3, "netboot-initrd", i)])
    };
    // A corrupted initrd: the message names the file.
    let mut bad = i3.clone();
    bad[4096] ^= 1;
    serve(&[(K3, &k3), (I3, &bad)], m3(&k3, &i3));
    let e = rel::error(&rel::fetch(&s, &cookie, "failed"));
    assert!(e.contains(I3) && e.contains("sha256") && e.contains("does not match"), "{e}");
    unchanged("wrong sha256");
    // A truncated initrd: fewer bytes than the manifest lists.
    serve(&[(K3, &k3), (I3, &i3[..i3.len() - 1000])], m3(&k3, &i3));
    let e = rel::error(&rel::fetch(&s, &cookie, "failed"));
    assert!(e.contains(I3) && e.contains(&i3.len().to_string()), "{e}");
    unchanged("truncated");
    // An oversize kernel: more bytes than the manifest lists.
    let mut big = k3.clone();
    big.extend_from_slice(&[0u8; 4096]);
    serve(&[(K3, &big), (I3, &i3)], m3(&k3, &i3));
    let e = rel::error(&rel::fetch(&s, &cookie, "failed"));
    assert!(e.contains(K3) && e.contains(&k3.len().to_string()), "{e}");
    unchanged("oversize");
    // A listed file the origin does not have.
    http.file(&format!("/rel/{K3}"), k3.clone(), true, None);
    http.file("/rel/release.toml", m3(&k3, b"not served"), false, None);
    http.faults(&format!("/rel/{I3}"), vec![Fault::Status(404)]);
    let e = rel::error(&rel::fetch(&s, &cookie, "failed"));
    assert!(e.contains(I3) && e.contains("404"), "{e}");
    unchanged("missing file");
}

#[test]
fn netboot_release_fetch_reads_a_local_directory_and_the_operators_names_win() {
    let dir = TestDir::new("workers-release-dir");
    let mirror = dir.path("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    let k1 = util::prng_bytes(81, 2 << 20);
    let i1 = util::prng_bytes(82, 3 << 20);
    let write = |name: &str, data: &[u8]| std::fs::write(mirror.join(name), data).unwrap();
    write(K1, &k1);
    write(I1, &i1);
    write(
        "release.toml",
        &rel::manifest("1.0.0", &[(K1, "netboot-kernel", &k1), (I1, "netboot-initrd", &i1)]),
    );
    let url = mirror.display().to_string();
    let s = Server::start_env("workers-release-dir", &[("BTY_BOOT_RELEASE_URL", url.as_str())]);
    let cookie = s.login();
    let boot = s.state.join("boot");
    let mac = "52:54:00:07:00:02";
    rel::flash_machine(&s, &cookie, mac);
    rel::fetch(&s, &cookie, "done");
    assert_eq!(std::fs::read(boot.join(K1)).unwrap(), k1);
    assert_eq!(std::fs::read(boot.join(I1)).unwrap(), i1);
    assert_eq!(rel::script_names(&s, mac), (K1.to_string(), I1.to_string()));
    let (_, _, ev) = s.call("GET", "/events?kind=boot.release.installed", Some(&cookie), "");
    assert!(ev.contains(&format!("{url}/release.toml")), "{ev}");
    // The Netboot page and the dashboard's readiness check look for the fetched pair.
    let (_, _, page) = s.call("GET", "/ui/netboot", Some(&cookie), "");
    for (name, role) in [(K1, "live kernel"), (I1, "live initrd")] {
        let row =
            format!("<td class=\"mono\">{name}</td><td>{role}</td><td><span class=\"badge ok\">");
        assert!(page.contains(&row), "{row}: {page}");
    }
    let (_, _, page) = s.call("GET", "/ui/dashboard", Some(&cookie), "");
    assert!(page.contains("kernel and initrd are in"), "{page}");

    // 2.0.0 in the mirror, corrupted, then too long: 1.0.0 stays.
    let k2 = util::prng_bytes(83, 2 << 20);
    let i2 = util::prng_bytes(84, 3 << 20);
    let m2 = rel::manifest("2.0.0", &[(K2, "netboot-kernel", &k2), (I2, "netboot-initrd", &i2)]);
    write("release.toml", &m2);
    let mut bad = k2.clone();
    bad[0] ^= 1;
    write(K2, &bad);
    write(I2, &i2);
    let e = rel::error(&rel::fetch(&s, &cookie, "failed"));
    assert!(e.contains(K2) && e.contains("does not match"), "{e}");
    let mut big = k2.clone();
    big.push(0);
    write(K2, &big);
    let e = rel::error(&rel::fetch(&s, &cookie, "failed"));
    assert!(e.contains(K2) && e.contains(&k2.len().to_string()), "{e}");
    assert_eq!(rel::script_names(&s, mac), (K1.to_string(), I1.to_string()));
    assert!(!boot.join(K2).exists() && !boot.join(I2).exists());
    no_temp_files(&s);
    drop(s);

    // A kernel the operator names in the configuration stays in the scripts after a fetch;
    // the initrd, left to the default, follows the release.
    write(K2, &k2);
    let s = Server::start_env(
        "workers-release-pinned",
        &[("BTY_BOOT_RELEASE_URL", url.as_str()), ("BTY_BOOT_KERNEL", "mine.vmlinuz")],
    );
    let cookie = s.login();
    rel::flash_machine(&s, &cookie, mac);
    rel::fetch(&s, &cookie, "done");
    assert_eq!(rel::script_names(&s, mac), ("mine.vmlinuz".to_string(), I2.to_string()));
}

#[test]
fn netboot_release_fetch_refuses_bad_manifests_and_writes_nothing() {
    use util::httpd::Httpd;
    let http = Httpd::start();
    let s = Server::start_env(
        "workers-release-bad",
        &[("BTY_BOOT_RELEASE_URL", http.url("/rel").as_str())],
    );
    let cookie = s.login();
    let mac = "52:54:00:07:00:03";
    rel::flash_machine(&s, &cookie, mac);
    let default = rel::script_names(&s, mac);
    let k = util::prng_bytes(71, 1 << 20);
    let i = util::prng_bytes(72, 1 << 20);
    for name in [K1, I1, "../x", ".hidden", "a/b", "<script>"] {
        http.file(&format!("/rel/{name}"), k.clone(), true, None);
    }
    let initrd = rel::asset(I1, "netboot-initrd", "x86_64", &i);
    let hostile = |name: &str| {
        format!("version = \"1.0.0\"\n{}{initrd}", rel::asset(name, "netboot-kernel", "x86_64", &k))
    };
    for (manifest, want) in [
        ("version = \"1.0.0\"\n[[assets]\nname = \"k\"\n".to_string(), "not valid release TOML"),
        (hostile("../x"), "assets[0] \"../x\": name: must be a plain file name, not a path"),
        (hostile("a/b"), "assets[0] \"a/b\": name: must be a plain file name, not a path"),
        (hostile(".hidden"), "assets[0] \".hidden\": name: must not start with a dot"),
        (hostile("<script>"), "assets[0] \"<script>\": name: character '<' is not allowed"),
        (format!("version = \"1.0.0\"\n{initrd}"), "lists no netboot-kernel asset for arch x86_64"),
        (
            format!("version = \"1.0.0\"\n{}", rel::asset(K1, "netboot-kernel", "arm64", &k)),
            "lists no netboot-kernel asset for arch x86_64",
        ),
        (
            format!(
                "version = \"1.0.0\"\n[[assets]]\nname = \"{K1}\"\nkind = \"netboot-kernel\"\nsize = 1\n"
            ),
            "missing required key sha256",
        ),
    ] {
        http.file("/rel/release.toml", manifest.clone().into_bytes(), false, None);
        let e = rel::error(&rel::fetch(&s, &cookie, "failed"));
        assert!(e.contains(want) && e.contains("release.toml"), "{manifest}\n=> {e}");
        assert_eq!(
            rel::boot_files(&s),
            Vec::<String>::new(),
            "{manifest}: the boot dir is untouched"
        );
        assert_eq!(rel::script_names(&s, mac), default, "{manifest}");
    }
    // No manifest at all.
    http.faults("/rel/release.toml", vec![util::httpd::Fault::Status(404)]);
    let e = rel::error(&rel::fetch(&s, &cookie, "failed"));
    assert!(e.contains("release.toml") && e.contains("404"), "{e}");
    assert_eq!(rel::boot_files(&s), Vec::<String>::new());
}

#[test]
fn netboot_release_fetch_holds_only_what_it_installs_to_the_upload_limit() {
    let dir = TestDir::new("workers-release-limit");
    let mirror = dir.path("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    let k1 = util::prng_bytes(91, 1 << 20);
    let i1 = util::prng_bytes(92, 1 << 20);
    let big = util::prng_bytes(93, 3 << 20);
    let write = |name: &str, data: &[u8]| std::fs::write(mirror.join(name), data).unwrap();
    write(K1, &k1);
    write(I1, &i1);
    // The USB image is larger than the 2 MiB limit, but the fetch does not download it.
    let mut m = rel::manifest("1.0.0", &[(K1, "netboot-kernel", &k1), (I1, "netboot-initrd", &i1)]);
    m.extend_from_slice(rel::asset("bty-usbboot.iso", "usb-iso", "x86_64", &big).as_bytes());
    write("release.toml", &m);
    let url = mirror.display().to_string();
    let s = Server::start_env(
        "workers-release-limit",
        &[("BTY_BOOT_RELEASE_URL", url.as_str()), ("BTY_BOOT_MAX_UPLOAD_MIB", "2")],
    );
    let cookie = s.login();
    rel::fetch(&s, &cookie, "done");
    assert_eq!(std::fs::read(s.state.join("boot").join(K1)).unwrap(), k1);
    // An initrd over the limit is refused before a byte is downloaded; the old pair stays.
    write(I2, &big);
    write(
        "release.toml",
        &rel::manifest("1.0.1", &[(K1, "netboot-kernel", &k1), (I2, "netboot-initrd", &big)]),
    );
    let e = rel::error(&rel::fetch(&s, &cookie, "failed"));
    assert!(e.contains(I2) && e.contains("max_upload_mib"), "{e}");
    assert!(!s.state.join("boot").join(I2).exists());
    assert!(rel::boot_files(&s).iter().all(|f| !f.starts_with('.')));
}

#[test]
fn netboot_release_fetch_installs_the_arm64_pair_beside_x86_64_and_the_script_names_both() {
    let dir = TestDir::new("release-arm64");
    let mirror = dir.path("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    let write = |name: &str, data: &[u8]| std::fs::write(mirror.join(name), data).unwrap();
    let (k1, i1) = (util::prng_bytes(71, 1 << 20), util::prng_bytes(72, 2 << 20));
    let (ka, ia) = (util::prng_bytes(73, 1 << 20), util::prng_bytes(74, 2 << 20));
    let efi = util::prng_bytes(75, 64 << 10);
    for (name, data) in [(K1, &k1), (I1, &i1), (KA, &ka), (IA, &ia), ("ipxe-arm64.efi", &efi)] {
        write(name, data);
    }

    // Only x86_64 first: it installs as before, and arm64 keeps its default names.
    write(
        "release.toml",
        &rel::manifest_arches(
            "1.0.0",
            &[(K1, "netboot-kernel", "x86_64", &k1), (I1, "netboot-initrd", "x86_64", &i1)],
        ),
    );
    let url = mirror.display().to_string();
    let s = Server::start_env("release-arm64", &[("BTY_BOOT_RELEASE_URL", url.as_str())]);
    let cookie = s.login();
    let boot = s.state.join("boot");
    let mac = "52:54:00:07:00:64";
    rel::flash_machine(&s, &cookie, mac);
    rel::fetch(&s, &cookie, "done");
    let v = env!("CARGO_PKG_VERSION");
    let default_arm64 =
        (format!("bty-netboot-arm64-v{v}.vmlinuz"), format!("bty-netboot-arm64-v{v}.initrd"));
    assert_eq!(rel::script_names(&s, mac), (K1.to_string(), I1.to_string()));
    assert_eq!(rel::arm64_script_names(&s, mac), default_arm64);
    assert!(!boot.join(KA).exists() && !boot.join("ipxe-arm64.efi").exists());
    // The dashboard warns about arm64 only, and the x86_64 row stays good.
    let (_, _, dash) = s.call("GET", "/ui/dashboard", Some(&cookie), "");
    assert!(dash.contains("kernel and initrd are in"), "{dash}");
    assert!(dash.contains("arm64 machines cannot netboot until"), "{dash}");
    let (_, _, page) = s.call("GET", "/ui/netboot", Some(&cookie), "");
    let row = format!(
        "<td class=\"mono\">{}</td><td>arm64 live kernel</td><td><span class=\"badge new\">missing",
        default_arm64.0
    );
    assert!(page.contains(&row), "{row}: {page}");

    // Then a release with both: both pairs installed, each with its checksum file, and the
    // script's arm64 branch names the arm64 pair while the x86_64 lines keep theirs.
    let both = rel::manifest_arches(
        "1.0.0",
        &[
            (K1, "netboot-kernel", "x86_64", &k1),
            (I1, "netboot-initrd", "x86_64", &i1),
            (KA, "netboot-kernel", "arm64", &ka),
            (IA, "netboot-initrd", "arm64", &ia),
            ("ipxe-arm64.efi", "ipxe-efi", "arm64", &efi),
        ],
    );
    write("release.toml", &both);
    rel::fetch(&s, &cookie, "done");
    assert_eq!(std::fs::read(boot.join(KA)).unwrap(), ka);
    assert_eq!(std::fs::read(boot.join(IA)).unwrap(), ia);
    assert_eq!(std::fs::read(boot.join("ipxe-arm64.efi")).unwrap(), efi);
    assert_eq!(
        std::fs::read_to_string(boot.join("bty-netboot-arm64-v1.0.0.sha256")).unwrap(),
        format!("{}  {KA}\n{}  {IA}\n", util::sha256(&ka), util::sha256(&ia))
    );
    assert_eq!(rel::script_names(&s, mac), (K1.to_string(), I1.to_string()));
    assert_eq!(rel::arm64_script_names(&s, mac), (KA.to_string(), IA.to_string()));
    let script = s.pxe(mac);
    assert!(script.contains("iseq ${buildarch} arm64 && goto arm64 ||\nkernel "), "{script}");
    let (x86, arm64) = script.split_once(":arm64\n").unwrap();
    assert!(x86.contains("console=ttyS0,115200") && !arm64.contains("console="), "{script}");
    assert!(arm64.contains(&format!("bty.mac={mac}")), "{script}");
    let (_, _, ev) = s.call("GET", "/events?kind=boot.release.installed", Some(&cookie), "");
    let d = &rel::json(&ev)["events"][0]["details"];
    assert_eq!(
        d["files"],
        serde_json::json!([
            K1,
            I1,
            KA,
            IA,
            "ipxe-arm64.efi",
            "bty-netboot-pc-x86_64-v1.0.0.sha256",
            "bty-netboot-arm64-v1.0.0.sha256"
        ]),
        "{d}"
    );
    // The arm64 kernel is served at /boot with ?mac=, as x86_64's.
    assert_eq!(s.call("HEAD", &format!("/boot/{KA}?mac={mac}"), None, "").0, 200);
    let (_, _, dash) = s.call("GET", "/ui/dashboard", Some(&cookie), "");
    assert!(!dash.contains("arm64 machines cannot netboot until"), "{dash}");

    // Half an arm64 pair is refused, naming the missing half; the installed pairs stay.
    write(
        "release.toml",
        &rel::manifest_arches(
            "1.0.1",
            &[
                (K1, "netboot-kernel", "x86_64", &k1),
                (I1, "netboot-initrd", "x86_64", &i1),
                (KA, "netboot-kernel", "arm64", &ka),
            ],
        ),
    );
    let e = rel::error(&rel::fetch(&s, &cookie, "failed"));
    assert!(e.contains(&format!("{KA} for arch arm64 but no netboot-initrd")), "{e}");
    assert_eq!(rel::arm64_script_names(&s, mac), (KA.to_string(), IA.to_string()));
    drop(s);

    // [boot] kernel_arm64 set by the operator wins over the fetched name, as kernel does; the
    // arm64 initrd, left to the default, follows the release.
    write("release.toml", &both);
    let s = Server::start_env(
        "release-arm64-pinned",
        &[("BTY_BOOT_RELEASE_URL", url.as_str()), ("BTY_BOOT_KERNEL_ARM64", "mine.vmlinuz")],
    );
    let cookie = s.login();
    rel::flash_machine(&s, &cookie, mac);
    rel::fetch(&s, &cookie, "done");
    assert_eq!(rel::arm64_script_names(&s, mac), ("mine.vmlinuz".to_string(), IA.to_string()));
    assert_eq!(rel::script_names(&s, mac), (K1.to_string(), I1.to_string()));
}

/// A release origin on 127.0.0.1 that sends `release.toml` at once and every other file in
/// 64 KiB pieces with a 50 ms pause after each (about 1.3 MB/s), so a fetch of a large file stays
/// in progress long enough to be watched and cancelled. A connection whose client went away (a
/// cancelled fetch) ends at its next write; every connection ends when its file is sent.
pub struct SlowRelease {
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SlowRelease {
    /// Serves `files` (name, bytes) under `/rel/`.
    pub fn start(files: Vec<(String, Vec<u8>)>) -> SlowRelease {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let files: Arc<Vec<(String, Vec<u8>)>> = Arc::new(files);
        let halt = Arc::clone(&stop);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let (files, halt) = (Arc::clone(&files), Arc::clone(&halt));
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(20)));
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    let name = path.strip_prefix("/rel/").unwrap_or("");
                    let Some((_, body)) = files.iter().find(|(n, _)| n == name) else {
                        let _ = conn.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        return;
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    if conn.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    if name == "release.toml" {
                        let _ = conn.write_all(body);
                        return;
                    }
                    for piece in body.chunks(64 << 10) {
                        if halt.load(Ordering::SeqCst) || conn.write_all(piece).is_err() {
                            return;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                });
            }
        });
        SlowRelease { addr, stop }
    }

    /// The release's base URL, for `BTY_BOOT_RELEASE_URL`.
    pub fn url(&self) -> String {
        format!("http://{}/rel/", self.addr)
    }

    /// A release 9.0.0 whose kernel is large enough (64 MiB, about 50 s at this pace) that a
    /// test always cancels it long before its end.
    pub fn large() -> SlowRelease {
        let k = vec![0u8; 64 << 20];
        let i = util::prng_bytes(99, 256 << 10);
        let m = rel::manifest("9.0.0", &[(K3, "netboot-kernel", &k), (I3, "netboot-initrd", &i)]);
        SlowRelease::start(vec![
            ("release.toml".into(), m),
            (K3.to_string(), k),
            (I3.to_string(), i),
        ])
    }
}

impl Drop for SlowRelease {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop so it sees the stop.
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

/// The release jobs as `GET /boot/releases` lists them; the one with `id`.
fn release_job(s: &Server, cookie: &str, id: i64) -> serde_json::Value {
    let (_, _, body) = s.call("GET", "/boot/releases", Some(cookie), "");
    let v = rel::json(&body);
    v["jobs"]
        .as_array()
        .and_then(|j| j.iter().find(|j| j["id"] == id).cloned())
        .unwrap_or_else(|| panic!("no release job {id}: {body}"))
}

/// Polls job `id` (every 50 ms, at most 60 s) until `f` holds; the job then.
fn wait_job(
    s: &Server,
    cookie: &str,
    id: i64,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let job = release_job(s, cookie, id);
        if f(&job) {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "release job {id} never {what}: {job}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A form post from this server's own pages (a same-origin `Origin`); the status and headers.
fn ui_post(s: &Server, cookie: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: {0}\r\nOrigin: http://{0}\r\nCookie: {cookie}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        s.addr
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let head = out.split("\r\n\r\n").next().unwrap_or("").to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, percent_decoded(&head))
}

fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn netboot_release_fetch_is_cancelled_by_the_api_and_the_form_leaving_nothing_behind() {
    let origin = SlowRelease::large();
    let s = Server::start_env("release-cancel", &[("BTY_BOOT_RELEASE_URL", origin.url().as_str())]);
    let cookie = s.login();
    let mac = "52:54:00:07:00:21";
    rel::flash_machine(&s, &cookie, mac);
    let before = rel::script_names(&s, mac);
    let start = || {
        let (st, _, body) = s.call("POST", "/boot/releases", Some(&cookie), "");
        assert_eq!(st, 202, "{body}");
        rel::json(&body)["job"].as_i64().expect("a job id")
    };
    let id = start();
    let moving = |j: &serde_json::Value| j["progress_bytes"].as_u64().unwrap_or(0) > 0;
    let job = wait_job(&s, &cookie, id, "made progress", moving);
    assert_eq!(job["state"], "running", "{job}");
    assert_eq!(job["total_bytes"], (64 << 20) + (256 << 10), "{job}");

    // Refusals change nothing: no session, ids that are not job numbers, a job that does not
    // exist, and the backup route, which stops only backups.
    assert_eq!(s.call("DELETE", &format!("/boot/releases/{id}"), None, "").0, 401);
    for bad in ["abc", "0", "-1", "+1", "1.0", "1e3", "99999999999999999999"] {
        let (st, _, body) = s.call("DELETE", &format!("/boot/releases/{bad}"), Some(&cookie), "");
        assert_eq!(st, 422, "{bad}: {body}");
        assert!(body.contains("job id: expected a positive number"), "{bad}: {body}");
    }
    let (st, _, body) = s.call("DELETE", "/boot/releases/987654", Some(&cookie), "");
    assert_eq!((st, body.contains("no running release job 987654")), (404, true), "{body}");
    let (st, _, body) = s.call("DELETE", &format!("/workers/backups/{id}"), Some(&cookie), "");
    assert_eq!(st, 404, "a release fetch is not a backup: {body}");
    let (st, head) = ui_post(&s, &cookie, "/ui/netboot/fetch-release/x1/cancel");
    assert!(st == 303 && head.contains("not cancelled: job id: expected"), "{head}");
    let (st, head) = ui_post(&s, &cookie, &format!("/ui/backups/{id}/cancel"));
    assert!(st == 303 && head.contains("no backup job"), "{head}");
    let job = release_job(&s, &cookie, id);
    assert_eq!(job["state"], "running", "still running after the refusals: {job}");

    // The API's DELETE stops it: cancelled, no temp file, nothing installed, the scripts as
    // they were; a second DELETE finds nothing running.
    assert_eq!(s.call("DELETE", &format!("/boot/releases/{id}"), Some(&cookie), "").0, 204);
    let job = wait_job(&s, &cookie, id, "ended", |j| j["finished_at"].is_string());
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(job["error"].is_null(), "{job}");
    no_temp_files(&s);
    assert!(!s.state.join("boot").join(K3).exists() && !s.state.join("boot").join(I3).exists());
    assert_eq!(rel::script_names(&s, mac), before);
    assert_eq!(s.call("DELETE", &format!("/boot/releases/{id}"), Some(&cookie), "").0, 404);
    let (_, _, ev) =
        s.call("GET", &format!("/events?kind=job.cancelled&subject_id={id}"), Some(&cookie), "");
    assert!(ev.contains(&format!("release job {id} cancelled")), "{ev}");

    // The next fetch may start at once, and the Netboot page's form cancels it as well.
    let id = start();
    wait_job(&s, &cookie, id, "made progress", moving);
    let (_, _, page) = s.call("GET", "/ui/netboot", Some(&cookie), "");
    let action = format!("action=\"/ui/netboot/fetch-release/{id}/cancel\"");
    assert!(page.contains(&action), "a Cancel form for the running fetch: {page}");
    assert!(page.contains(&format!("<tr id=\"job-{id}\"><td>{id}</td><td>running</td>")), "{page}");
    let (st, head) = ui_post(&s, &cookie, &format!("/ui/netboot/fetch-release/{id}/cancel"));
    assert_eq!(st, 303, "{head}");
    assert!(head.contains("location: /ui/netboot#fetch"), "{head}");
    assert!(head.contains(&format!("cancelling netboot fetch job {id}")), "{head}");
    let job = wait_job(&s, &cookie, id, "ended", |j| j["finished_at"].is_string());
    assert_eq!(job["state"], "cancelled", "{job}");
    no_temp_files(&s);
    assert!(!s.state.join("boot").join(K3).exists());
    let (_, _, page) = s.call("GET", "/ui/netboot", Some(&cookie), "");
    assert!(!page.contains(&action), "no Cancel form once it ended: {page}");
    assert!(page.contains(&format!("<td>{id}</td><td>cancelled</td>")), "{page}");
}

#[test]
fn the_job_stream_needs_a_session_and_starts_with_the_recent_jobs() {
    use std::io::{BufRead, BufReader, Write};
    let s = Server::start("jobs-stream");
    assert_eq!(s.call("GET", "/events/jobs", None, "").0, 401);
    let cookie = s.login();
    let (st, _, body) = s.call("POST", "/workers/backups", Some(&cookie), "");
    assert_eq!(st, 202, "{body}");
    let id = rel::json(&body)["job"].as_i64().expect("a job id");
    let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    write!(c, "GET /events/jobs HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\n\r\n", s.addr).unwrap();
    let mut r = BufReader::new(c);
    let mut lines = Vec::new();
    // The head, then the first event: bounded by lines and by the read timeout.
    for _ in 0..40 {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 {
            break;
        }
        let data = l.starts_with("data: ");
        lines.push(l);
        if data {
            break;
        }
    }
    let text = lines.concat();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.to_ascii_lowercase().contains("content-type: text/event-stream"), "{text}");
    assert!(text.contains("event: jobs-update\ndata: ["), "{text}");
    let data = text.rsplit("data: ").next().unwrap_or("");
    let jobs = rel::json(data.trim());
    assert!(
        jobs.as_array().is_some_and(|a| a.iter().any(|j| j["id"] == id && j["kind"] == "backup")),
        "{jobs}"
    );
}
