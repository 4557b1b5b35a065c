//! Netboot releases for the release-fetch tests: `release.toml` text, a machine whose per-MAC
//! script chains the live environment, and a fetch job run to its end.

use std::time::{Duration, Instant};

use super::Server;

/// One `[[assets]]` table, with the size and sha256 of `data`.
pub fn asset(name: &str, kind: &str, arch: &str, data: &[u8]) -> String {
    format!(
        "[[assets]]\nname = \"{name}\"\nkind = \"{kind}\"\narch = \"{arch}\"\nsize = {}\nsha256 = \"{}\"\n",
        data.len(),
        super::sha256(data)
    )
}

/// A manifest of `version` with x86_64 assets (name, kind, bytes), and keys and kinds a later
/// release might add, which the fetch must ignore.
pub fn manifest(version: &str, assets: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut t = format!(
        "# bty release manifest\nversion = \"{version}\"\nrevision = \"0123abcd\"\nbuilt = \"later key\"\n"
    );
    for (name, kind, data) in assets {
        t.push_str(&asset(name, kind, "x86_64", data));
    }
    t.push_str(&asset("bty-arm64.tar.zst", "future-kind", "arm64", b"ignored"));
    t.into_bytes()
}

/// A manifest of `version` with assets of any arch (name, kind, arch, bytes).
pub fn manifest_arches(version: &str, assets: &[(&str, &str, &str, &[u8])]) -> Vec<u8> {
    let mut t = format!("version = \"{version}\"\n");
    for (name, kind, arch, data) in assets {
        t.push_str(&asset(name, kind, arch, data));
    }
    t.into_bytes()
}

/// The kernel and initrd names the `:arm64` branch of `mac`'s per-MAC script chains.
pub fn arm64_script_names(s: &Server, mac: &str) -> (String, String) {
    let script = s.pxe(mac);
    let (_, arm64) =
        script.split_once("\n:arm64\n").unwrap_or_else(|| panic!("no :arm64 branch: {script}"));
    boot_names(arm64, &script)
}

/// Starts a fetch (`POST /boot/releases`) and waits until the job is `want` (bounded); returns
/// the job.
pub fn fetch(s: &Server, cookie: &str, want: &str) -> serde_json::Value {
    let (st, _, body) = s.call("POST", "/boot/releases", Some(cookie), "");
    assert_eq!(st, 202, "{body}");
    let id = json(&body)["job"].as_i64().expect("a job id");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, _, body) = s.call("GET", "/boot/releases", Some(cookie), "");
        let v = json(&body);
        if let Some(job) = v["jobs"].as_array().and_then(|j| j.iter().find(|j| j["id"] == id)) {
            if job["state"] == want {
                return job.clone();
            }
            let done = ["done", "failed", "cancelled"].iter().any(|st| job["state"] == *st);
            assert!(!done, "release job {id} ended {}, not {want}: {job}", job["state"]);
        }
        assert!(Instant::now() < deadline, "release job {id} never reached {want}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The job's error message (it failed).
pub fn error(job: &serde_json::Value) -> String {
    job["error"].as_str().unwrap_or_else(|| panic!("no error in {job}")).to_string()
}

/// Puts `mac` in `bty-flash-always` with an image and a target disk, so its per-MAC script
/// chains the live environment (and keeps doing so: no flash is ever reported).
pub fn flash_machine(s: &Server, cookie: &str, mac: &str) {
    let image_ref = "cd".repeat(32);
    let (_, _, body) = s.call("GET", "/catalog/entries", Some(cookie), "");
    if !body.contains(&image_ref) {
        s.seed_catalog(&image_ref, "https://images.example/debian.img.zst");
    }
    let body = format!(
        r#"{{"boot_mode":"bty-flash-always","bty_image_ref":"{image_ref}","target_disk_serial":"QEMU-1"}}"#
    );
    let (st, _, resp) = s.call("PUT", &format!("/machines/{mac}"), Some(cookie), &body);
    assert_eq!(st, 200, "{resp}");
}

/// The kernel and initrd names the per-MAC script of `mac` chains.
pub fn script_names(s: &Server, mac: &str) -> (String, String) {
    let script = s.pxe(mac);
    boot_names(&script, &script)
}

/// The boot-dir names of the first `kernel` and `initrd` lines of `part` (of `script`, shown
/// when a line is missing).
fn boot_names(part: &str, script: &str) -> (String, String) {
    let after = |word: &str| {
        let line = part
            .lines()
            .find(|l| l.starts_with(word))
            .unwrap_or_else(|| panic!("no {word} line: {script}"));
        let path = line.split_whitespace().find(|w| w.contains("/boot/")).unwrap_or_default();
        let name = path.split("/boot/").nth(1).unwrap_or_default();
        name.split('?').next().unwrap_or_default().to_string()
    };
    (after("kernel "), after("initrd "))
}

/// The names in the boot dir (none when it does not exist).
pub fn boot_files(s: &Server) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(s.state.join("boot"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}
