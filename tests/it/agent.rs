//! Server-driven mode (`bty --server URL --mac MAC`) against the real bty-web on 127.0.0.1,
//! with loop devices as disks. Loop devices have no serial: `BTY_TEST_SERIALS` gives them one
//! (a test hook real disks never see), and `BTY_TEST_NO_REBOOT` turns a reboot into a line in
//! a file that says how it would have been done.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::util;
use crate::util::httpd::Httpd;
use crate::util::{Loop, Server, TestDir};

/// Runs `bty --server <server> --mac <mac>` with the test hooks and no terminal.
fn agent(server: &str, mac: &str, serials: &str, reboot_file: &std::path::Path) -> Output {
    agent_env(server, mac, serials, reboot_file, &[])
}

fn agent_env(
    server: &str,
    mac: &str,
    serials: &str,
    reboot_file: &std::path::Path,
    env: &[(&str, &std::ffi::OsStr)],
) -> Output {
    util::bty()
        .envs(env.iter().copied())
        .args(["--server", server, "--mac", mac, "--image-root", "/nonexistent-bty-root"])
        .env("BTY_TEST_SERIALS", serials)
        .env("BTY_TEST_NO_REBOOT", reboot_file)
        .env("BTY_NO_LSHW", "1")
        .env("TERM", "dumb")
        .stdin(Stdio::null())
        .output()
        .expect("running bty")
}

/// This machine is a workstation, not bty's live environment (PID 1 is not its `/init`): the
/// reboot is asked of the init system (systemctl, or its reboot command), never a raw reboot(2).
fn assert_clean_reboot(reboot: &std::path::Path) {
    let line = std::fs::read_to_string(reboot).unwrap();
    assert!(line.starts_with("reboot via ") && line.lines().count() == 1, "{line:?}");
    assert_ne!(line, "reboot via reboot(2)\n", "a workstation gets a clean reboot");
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Adds `url` to the catalog and returns its ref.
fn add_image(s: &Server, cookie: &str, url: &str) -> String {
    let (st, _, body) =
        s.call("POST", "/catalog/entries", Some(cookie), &format!(r#"{{"image_url":"{url}"}}"#));
    assert!(st == 201 || st == 200, "{st} {body}");
    json(&body)["bty_image_ref"].as_str().unwrap().to_string()
}

fn machine(s: &Server, cookie: &str, mac: &str) -> serde_json::Value {
    let (st, _, body) = s.call("GET", &format!("/machines/{mac}"), Some(cookie), "");
    assert_eq!(st, 200, "{body}");
    json(&body)
}

/// The first `machines-update` of the live stream: every machine with its flash progress.
fn live_snapshot(s: &Server, cookie: &str) -> serde_json::Value {
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET /events/machines HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\n\r\n", s.addr)
        .unwrap();
    let mut r = BufReader::new(c);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended before any data");
        if let Some(d) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
            return json(d.trim());
        }
    }
}

#[test]
fn flash_once_plan_flashes_the_disk_with_that_serial_and_reboots() {
    let dir = TestDir::new("agent-flash");
    let s = Server::start("agent-flash");
    let cookie = s.login();
    let http = Httpd::start();
    let image = util::disk_image(61, 12 << 20);
    http.file("/disk.img.zst", util::zstd(&image), true, None);
    let image_ref = add_image(&s, &cookie, &http.url("/disk.img.zst"));
    let disk = Loop::new(&dir, "disk", 16 << 20);
    let other = Loop::new(&dir, "other", 16 << 20);
    let other_before = other.read(0, 1 << 20);
    let mac = "52:54:00:aa:00:01";
    let m = format!(
        r#"{{"boot_mode":"bty-flash-once","bty_image_ref":"{image_ref}","target_disk_serial":"SERIAL-A"}}"#
    );
    assert_eq!(s.call("PUT", &format!("/machines/{mac}"), Some(&cookie), &m).0, 200);

    let reboot = dir.path("reboot");
    let serials = format!("{}=SERIAL-A,{}=SERIAL-B", disk.dev.display(), other.dev.display());
    let out = agent(&format!("http://{}", s.addr), mac, &serials, &reboot);
    let err = util::stderr(&out);
    assert!(out.status.success(), "{err}");
    for marker in [
        "bty: auto-flash starting",
        "bty: write 25%",
        "bty: write 50%",
        "bty: write 75%",
        "bty: write 100%",
        "bty: flash complete; rebooting",
    ] {
        assert!(err.contains(marker), "missing {marker:?} in:\n{err}");
    }
    assert_clean_reboot(&reboot);
    assert_eq!(disk.read(0, image.len()), image, "the disk holds the image");
    assert_eq!(other.read(0, 1 << 20), other_before, "the other disk is untouched");

    let m = machine(&s, &cookie, mac);
    assert!(m["last_flashed_at"].is_string(), "{m}");
    let disks = m["known_disks"].as_array().expect("the inventory was posted");
    assert!(disks.iter().any(|d| d["serial"] == "SERIAL-A"), "{m}");
    let snap = live_snapshot(&s, &cookie);
    let row = snap.as_array().unwrap().iter().find(|r| r["mac"] == mac).unwrap().clone();
    let p = &row["flash_progress"];
    assert_eq!(p["phase"], "done", "{row}");
    assert_eq!(p["written_bytes"], image.len() as u64, "{row}");
    assert_eq!(p["total_bytes"], image.len() as u64, "{row}");
    // The plan is flash-once: the next contact boots the disk.
    let (_, _, plan) = s.call("GET", &format!("/pxe/{mac}/plan"), None, "");
    assert_eq!(plan, r#"{"mode":"exit"}"#);
}

#[test]
fn wrong_serial_reports_failed_and_opens_the_wizard_on_the_disk_step() {
    let dir = TestDir::new("agent-wrong");
    let s = Server::start("agent-wrong");
    let cookie = s.login();
    let image_ref = add_image(&s, &cookie, "http://127.0.0.1:9/never-fetched.img");
    let disk = Loop::new(&dir, "disk", 8 << 20);
    let before = disk.read(0, 1 << 20);
    let mac = "52:54:00:aa:00:02";
    let m = format!(
        r#"{{"boot_mode":"bty-flash-once","bty_image_ref":"{image_ref}","target_disk_serial":"NOT-HERE"}}"#
    );
    assert_eq!(s.call("PUT", &format!("/machines/{mac}"), Some(&cookie), &m).0, 200);
    let reboot = dir.path("reboot");
    let serials = format!("{}=SERIAL-A", disk.dev.display());
    let out = agent(&s.addr, mac, &serials, &reboot);
    let (err, stdout) = (util::stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("bty: auto-flash starting"), "{err}");
    assert!(err.contains(r#"no disk with serial "NOT-HERE""#), "{err}");
    assert!(stdout.contains("[Disk]") && stdout.contains("never-fetched.img"), "{stdout}");
    assert!(stdout.contains("unattended flash of never-fetched.img failed"), "{stdout}");
    assert!(!reboot.exists(), "no reboot after a failed flash");
    assert_eq!(disk.read(0, 1 << 20), before, "nothing was written");
    let m = machine(&s, &cookie, mac);
    let status = m["last_status"].as_str().unwrap_or_default();
    assert!(status.contains("NOT-HERE"), "{m}");
    assert!(m["last_flashed_at"].is_null(), "{m}");
}

#[test]
fn inventory_plan_posts_the_disks_and_reboots() {
    let dir = TestDir::new("agent-inv");
    let s = Server::start("agent-inv");
    let cookie = s.login();
    let disk = Loop::new(&dir, "disk", 8 << 20);
    // An unknown MAC: the first inventory post is refused (no record), the plan request
    // creates the record in bty-inventory mode, and the inventory is posted again.
    let mac = "52:54:00:aa:00:03";
    let reboot = dir.path("reboot");
    let serials = format!("{}=INV-SERIAL", disk.dev.display());
    let out = agent(&format!("http://{}/", s.addr), mac, &serials, &reboot);
    let err = util::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("inventory posted; rebooting"), "{err}");
    assert_clean_reboot(&reboot);
    let (st, _, body) = s.call("GET", &format!("/machines/{mac}/disks.json"), Some(&cookie), "");
    assert_eq!(st, 200, "{body}");
    let disks = json(&body);
    let d = disks.as_array().unwrap().iter().find(|d| d["serial"] == "INV-SERIAL");
    let d = d.unwrap_or_else(|| panic!("the loop disk is in {body}"));
    assert_eq!(d["path"], disk.dev.display().to_string());
}

/// The order on real machines: the iPXE contact discovers the MAC before the live env runs, so
/// the live env's first inventory post is accepted and already points the next boot at the disk.
#[test]
fn inventory_after_a_pxe_contact_still_reboots() {
    let dir = TestDir::new("agent-inv-pxe");
    let s = Server::start("agent-inv-pxe");
    let disk = Loop::new(&dir, "disk", 8 << 20);
    let mac = "52:54:00:aa:00:05";
    let (st, _, script) = s.call("GET", &format!("/pxe/{mac}"), None, "");
    assert_eq!(st, 200);
    assert!(script.contains("kernel http://"), "discovery chains the live env: {script}");
    let reboot = dir.path("reboot");
    let serials = format!("{}=INV-SERIAL-2", disk.dev.display());
    let out = agent(&format!("http://{}", s.addr), mac, &serials, &reboot);
    let err = util::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("inventory posted; rebooting"), "{err}");
    assert_clean_reboot(&reboot);
    let (_, _, script) = s.call("GET", &format!("/pxe/{mac}"), None, "");
    assert!(script.contains("sanboot"), "the next boot is the disk: {script}");
}

#[test]
fn exit_plan_prints_a_notice_and_exits() {
    let dir = TestDir::new("agent-exit");
    let s = Server::start("agent-exit");
    let cookie = s.login();
    let mac = "52:54:00:aa:00:04";
    assert_eq!(
        s.call("PUT", &format!("/machines/{mac}"), Some(&cookie), r#"{"boot_mode":"ipxe-exit"}"#).0,
        200
    );
    let reboot = dir.path("reboot");
    let out = agent(&s.addr, mac, "", &reboot);
    let err = util::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("nothing for this machine to do"), "{err}");
    assert!(!reboot.exists());
    assert!(out.stdout.is_empty(), "no wizard: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn unreachable_server_falls_through_to_the_wizard_with_its_catalog() {
    let dir = TestDir::new("agent-down");
    // A port nobody listens on: bound, then closed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let reboot = dir.path("reboot");
    let out = agent(&addr.to_string(), "52:54:00:aa:00:05", "", &reboot);
    let (err, stdout) = (util::stderr(&out), String::from_utf8_lossy(&out.stdout));
    let catalog = format!("http://{addr}/catalog.toml");
    assert!(err.contains(&format!("opening the wizard with {catalog}")), "{err}");
    assert!(stdout.contains("[Catalog]") && stdout.contains(&catalog), "{stdout}");
    assert!(!reboot.exists());
}

#[test]
fn bad_plan_json_falls_through_to_the_wizard_with_the_servers_catalog() {
    let dir = TestDir::new("agent-badplan");
    let http = Httpd::start();
    let mac = "52:54:00:aa:00:06";
    http.file(&format!("/pxe/{mac}/plan"), b"{\"mode\": \"dance\"}".to_vec(), false, None);
    let image = util::disk_image(7, 2 << 20);
    http.file("/d.img", image, true, None);
    let catalog = format!(
        "version = 1\n[[images]]\nname = \"served-by-the-server.img\"\nsrc = \"{}\"\n",
        http.url("/d.img")
    );
    http.file("/catalog.toml", catalog.into_bytes(), false, None);
    let reboot = dir.path("reboot");
    let out = agent(&http.url(""), mac, "", &reboot);
    let (err, stdout) = (util::stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("is not one bty understands"), "{err}");
    assert!(stdout.contains("[Image]") && stdout.contains("served-by-the-server.img"), "{stdout}");
    assert!(!reboot.exists());
}

#[test]
fn interactive_plan_opens_the_wizard_with_the_servers_catalog() {
    let dir = TestDir::new("agent-tui");
    let s = Server::start("agent-tui");
    let cookie = s.login();
    add_image(&s, &cookie, "http://127.0.0.1:9/from-the-lab-catalog.img.zst");
    let mac = "52:54:00:aa:00:07";
    let body = r#"{"boot_mode":"bty-tui"}"#;
    assert_eq!(s.call("PUT", &format!("/machines/{mac}"), Some(&cookie), body).0, 200);
    let reboot = dir.path("reboot");
    let out = agent(&s.addr, mac, "", &reboot);
    let (err, stdout) = (util::stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{err}");
    let catalog = format!("http://{}/catalog.toml", s.addr);
    assert!(stdout.contains("[Image]") && stdout.contains(&catalog), "{stdout}");
    assert!(stdout.contains("from-the-lab-catalog.img.zst"), "{stdout}");
    assert!(stdout.contains(&format!("MAC {mac}")), "{stdout}");
    assert!(!reboot.exists());
}

/// The on-disk (mixed-endian) bytes of a GUID written as text.
fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let b: Vec<u8> =
        (0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
    out[4..6].copy_from_slice(&[b[5], b[4]]);
    out[6..8].copy_from_slice(&[b[7], b[6]]);
    out[8..].copy_from_slice(&b[8..]);
    out
}

#[test]
fn a_flash_with_uefi_registration_adds_a_boot_entry_and_sets_boot_next() {
    let dir = TestDir::new("agent-uefi");
    let s = Server::start("agent-uefi");
    let cookie = s.login();
    // A GPT image with an EFI system partition at LBA 2048, 4 MiB long.
    let img = dir.path("esp.img");
    std::fs::write(&img, util::prng_bytes(71, 12 << 20)).unwrap();
    let st = std::process::Command::new("sgdisk")
        .args(["-o", "-n", "1:2048:+4M", "-t", "1:ef00", "-n", "2:0:0"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", util::stderr(&st));
    let info = std::process::Command::new("sgdisk").args(["-i", "1"]).arg(&img).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    let guid = info
        .lines()
        .find_map(|l| l.strip_prefix("Partition unique GUID: "))
        .expect("sgdisk names the partition GUID")
        .trim()
        .to_string();
    let http = Httpd::start();
    http.file("/esp.img.zst", util::zstd(&std::fs::read(&img).unwrap()), true, None);
    let image_ref = add_image(&s, &cookie, &http.url("/esp.img.zst"));
    let disk = Loop::new(&dir, "disk", 16 << 20);
    let mac = "52:54:00:aa:00:07";
    let m = format!(
        r#"{{"boot_mode":"bty-flash-always","bty_image_ref":"{image_ref}","target_disk_serial":"SERIAL-U"}}"#
    );
    assert_eq!(s.call("PUT", &format!("/machines/{mac}"), Some(&cookie), &m).0, 200);
    // A stand-in for efivarfs with an entry of the firmware's own already there.
    let vars = dir.path("efivars");
    std::fs::create_dir_all(&vars).unwrap();
    let global = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
    std::fs::write(vars.join(format!("Boot0000-{global}")), b"\x07\0\0\0firmware").unwrap();
    let serials = format!("{}=SERIAL-U", disk.dev.display());
    let env: [(&str, &std::ffi::OsStr); 2] =
        [("BTY_REGISTER_UEFI_BOOT", "1".as_ref()), ("BTY_EFIVARS_DIR", vars.as_os_str())];
    for round in 0..2 {
        let out =
            agent_env(&format!("http://{}", s.addr), mac, &serials, &dir.path("reboot"), &env);
        let err = util::stderr(&out);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("UEFI boot entry Boot0001"), "round {round}: {err}");
        let entry = std::fs::read(vars.join(format!("Boot0001-{global}"))).unwrap();
        let want = bty::cli::uefi::load_option(
            "bty: esp.img.zst",
            1,
            2048,
            (4 << 20) / 512,
            &guid_bytes(&guid),
            "\\EFI\\BOOT\\BOOTX64.EFI",
        );
        assert_eq!(&entry[..4], &[7, 0, 0, 0]);
        assert_eq!(&entry[4..], &want[..], "round {round}");
        let next = std::fs::read(vars.join(format!("BootNext-{global}"))).unwrap();
        assert_eq!(next, [7, 0, 0, 0, 1, 0]);
        // Flash-always: the next plan flashes again, and the entry is reused, not added.
        let (_, _, plan) = s.call("GET", &format!("/pxe/{mac}"), None, "");
        assert!(plan.contains("sanboot") || plan.contains("exit"), "{plan}");
    }
    assert_eq!(std::fs::read_dir(&vars).unwrap().count(), 3, "Boot0000, Boot0001, BootNext");

    // An image without GPT: the flash succeeds, the registration is only a warning.
    let plain = util::disk_image(72, 4 << 20);
    http.file("/plain.img", plain.clone(), true, None);
    let plain_ref = add_image(&s, &cookie, &http.url("/plain.img"));
    let m = format!(
        r#"{{"boot_mode":"bty-flash-once","bty_image_ref":"{plain_ref}","target_disk_serial":"SERIAL-U"}}"#
    );
    assert_eq!(s.call("PUT", &format!("/machines/{mac}"), Some(&cookie), &m).0, 200);
    let out = agent_env(&format!("http://{}", s.addr), mac, &serials, &dir.path("reboot"), &env);
    let err = util::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("registering a UEFI boot entry") && err.contains("no GPT"), "{err}");
    assert_eq!(disk.read(0, plain.len()), plain);
}

#[test]
fn progress_reaches_the_server_while_the_write_is_under_way() {
    let dir = TestDir::new("agent-progress");
    let s = Server::start("agent-progress");
    let cookie = s.login();
    let http = Httpd::start();
    let image = util::prng_bytes(81, 24 << 20);
    http.file("/disk.img", image.clone(), true, None);
    // Half the image, then five seconds of silence (resumed with Range afterwards): the
    // poster's two-second beat must show the write under way meanwhile.
    http.faults("/disk.img", vec![util::httpd::Fault::Stall(12 << 20, Duration::from_secs(5))]);
    let image_ref = add_image(&s, &cookie, &http.url("/disk.img"));
    let disk = Loop::new(&dir, "disk", 32 << 20);
    let mac = "52:54:00:aa:00:08";
    let m = format!(
        r#"{{"boot_mode":"bty-flash-once","bty_image_ref":"{image_ref}","target_disk_serial":"SERIAL-P"}}"#
    );
    assert_eq!(s.call("PUT", &format!("/machines/{mac}"), Some(&cookie), &m).0, 200);
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(c, "GET /events/machines HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\n\r\n", s.addr)
        .unwrap();
    let watcher = std::thread::spawn(move || {
        let mut r = BufReader::new(c);
        let mut seen = Vec::new();
        let mut line = String::new();
        for _ in 0..10_000 {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let Some(d) = line.strip_prefix("data: ") else { continue };
            let rows: serde_json::Value = json(d.trim());
            let Some(row) = rows.as_array().and_then(|a| a.iter().find(|r| r["mac"] == mac)) else {
                continue;
            };
            let p = row["flash_progress"].clone();
            let done = p["phase"] == "done";
            seen.push(p);
            if done {
                break;
            }
        }
        seen
    });
    let serials = format!("{}=SERIAL-P", disk.dev.display());
    let out = agent(&format!("http://{}", s.addr), mac, &serials, &dir.path("reboot"));
    assert!(out.status.success(), "{}", util::stderr(&out));
    let seen = watcher.join().unwrap();
    let total = image.len() as u64;
    assert!(
        seen.iter().any(|p| p["phase"] == "write"
            && p["written_bytes"].as_u64().is_some_and(|w| w > 0 && w < total)),
        "no progress during the write: {seen:?}"
    );
    assert_eq!(seen.last().map(|p| p["phase"].clone()), Some("done".into()));
    assert_eq!(disk.read(0, image.len()), image);
}

/// A plan comes from whoever answers on the lab network: its image must be fetched over the
/// network, never a file, a device or the console of the machine being flashed.
#[test]
fn plan_with_a_local_image_is_refused_and_nothing_is_written() {
    let dir = TestDir::new("agent-local");
    let disk = Loop::new(&dir, "disk", 8 << 20);
    let before = disk.read(0, 8 << 20);
    // A real, valid image on this machine: without the refusal it would be flashed.
    let local = dir.path("local.img");
    std::fs::write(&local, util::disk_image(5, 2 << 20)).unwrap();
    let mac = "52:54:00:aa:00:0a";
    let serials = format!("{}=LOCAL-SERIAL", disk.dev.display());
    let file_url = format!("file://{}", local.display());
    let local_path = local.display().to_string();
    for image in [file_url.as_str(), local_path.as_str(), "-"] {
        let http = Httpd::start();
        let plan = serde_json::json!({
            "mode": "flash", "image": image, "target_disk_serial": "LOCAL-SERIAL",
            "name": "local.img", "format": "img", "disk_image_sha": null,
        });
        http.file(&format!("/pxe/{mac}/plan"), plan.to_string().into_bytes(), false, None);
        let reboot = dir.path("reboot");
        let out = agent(&http.url(""), mac, &serials, &reboot);
        let (err, stdout) = (util::stderr(&out), String::from_utf8_lossy(&out.stdout));
        assert!(err.contains("refusing the server's plan image"), "{image}: {err}");
        assert!(err.contains("only http(s):// or oras://"), "{image}: {err}");
        assert!(!err.contains("flashing "), "{image}: {err}");
        assert!(!stdout.contains("local.img"), "the refused image is not offered: {stdout}");
        assert!(!reboot.exists(), "{image}: no reboot after a refusal");
        assert_eq!(disk.read(0, 8 << 20), before, "{image}: nothing was written");
    }
}
