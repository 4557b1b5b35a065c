//! bty-web's background work through the real binary: backups under load, a backup killed
//! mid-way, retention, restore, and export / import of the machine inventory.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use util::{Server, TestDir};

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls `GET /workers/backups` until job `id` is in one of `states` (bounded).
fn wait_job(s: &Server, cookie: &str, id: i64, states: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, _, body) = s.call("GET", "/workers/backups", Some(cookie), "");
        let v = json(&body);
        if let Some(job) = v["jobs"].as_array().and_then(|j| j.iter().find(|j| j["id"] == id)) {
            if states.iter().any(|st| job["state"] == *st) {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "job {id} never reached {states:?}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_backup(s: &Server, cookie: &str) -> i64 {
    let (st, _, body) = s.call("POST", "/workers/backups", Some(cookie), "");
    assert_eq!(st, 202, "{body}");
    json(&body)["job"].as_i64().unwrap()
}

/// Unpacks a backup with the system's tar (zstd support) into `dest`.
fn unpack(file: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let o = Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(file)
        .arg("-C")
        .arg(dest)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", util::stderr(&o));
}

fn web(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bty-web"));
    c.arg("--state-dir").arg(state).env_remove("BTY_CONFIG_FILE").env_remove("BTY_CONFIG_DIR");
    c
}

#[test]
fn a_backup_under_load_is_consistent_and_holds_every_acknowledged_write() {
    // Thousands of discoveries from one address, past the default discovery rate.
    let s = Server::start_env("workers-load", &[("BTY_PXE_DISCOVERIES_PER_MINUTE", "0")]);
    let cookie = s.login();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let acked = std::sync::Mutex::new(Vec::new());
    let before_backup: Vec<String> = std::thread::scope(|scope| {
        let mut hammer = Vec::new();
        for t in 0..20 {
            let (s, cookie, stop, acked) = (&s, &cookie, &stop, &acked);
            hammer.push(scope.spawn(move || {
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) || i > 400 {
                        break;
                    }
                    let mac = format!("52:54:00:03:{t:02x}:{:02x}", i % 256);
                    if t % 2 == 0 {
                        assert_eq!(s.call("GET", &format!("/pxe/{mac}"), None, "").0, 200);
                    } else {
                        let (st, _, _) = s.call(
                            "PUT",
                            &format!("/machines/{mac}"),
                            Some(cookie),
                            r#"{"labels":["load"]}"#,
                        );
                        assert_eq!(st, 200);
                    }
                    acked.lock().unwrap().push(mac);
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(300));
        // Everything acknowledged by now was committed before the backup's read began.
        let before = acked.lock().unwrap().clone();
        let id = start_backup(&s, &cookie);
        // One backup at a time.
        assert_eq!(s.call("POST", "/workers/backups", Some(&cookie), "").0, 409);
        wait_job(&s, &cookie, id, &["done"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in hammer {
            h.join().unwrap();
        }
        before
    });
    let (_, _, body) = s.call("GET", "/workers/backups", Some(&cookie), "");
    let v = json(&body);
    let file = PathBuf::from(v["backups"][0]["path"].as_str().expect("a backup file"));
    let dir = TestDir::new("workers-load");
    unpack(&file, &dir.0);
    for f in ["MANIFEST.sha256", "state.db", "catalog.toml", "inventory.json"] {
        assert!(dir.path(f).exists(), "{f} in the backup");
    }
    let db = rusqlite::Connection::open(dir.path("state.db")).unwrap();
    let ok: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    // Every write acknowledged before the backup began is in it.
    assert!(!before_backup.is_empty());
    let mut st = db.prepare("SELECT count(*) FROM machines WHERE mac = ?1").unwrap();
    for mac in &before_backup {
        let n: i64 = st.query_row([mac], |r| r.get(0)).unwrap();
        assert_eq!(n, 1, "{mac} was acknowledged before the backup but is not in it");
    }
    let (_, _, events) = s.call("GET", "/events?kind=backup.created", Some(&cookie), "");
    assert!(events.contains("bty-backup-"), "{events}");
}

#[test]
fn a_backup_killed_mid_way_leaves_nothing_and_is_reported_interrupted() {
    let dir = TestDir::new("workers-kill");
    let state = dir.path("state");
    // A database large enough that the backup takes a while: 200 MB of event details.
    Server::start_in(state.clone()).stop_keeping_state();
    let db = rusqlite::Connection::open(state.join("state.db")).unwrap();
    db.execute_batch(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200) \
         INSERT INTO events (at, kind, message, details) \
         SELECT 'now', 'test.bulk', 'bulk', hex(randomblob(500000)) FROM c;",
    )
    .unwrap();
    drop(db);
    let s = Server::start_in(state.clone());
    let cookie = s.login();
    let id = start_backup(&s, &cookie);
    wait_job(&s, &cookie, id, &["running"]);
    // Wait until the archive is being written, then kill.
    let backups = state.join("backups");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_dir(&backups)
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".tar.zst")))
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "the backup never started writing");
        std::thread::sleep(Duration::from_millis(5));
    }
    s.stop_keeping_state();
    let s = Server::start_in(state.clone());
    let cookie = s.login();
    let v = wait_job(&s, &cookie, id, &["failed"]);
    let job = v["jobs"].as_array().unwrap().iter().find(|j| j["id"] == id).unwrap().clone();
    assert_eq!(job["error"], "interrupted", "{job}");
    assert_eq!(v["backups"].as_array().map(Vec::len), Some(0), "{v}");
    let left: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let (_, _, events) = s.call("GET", "/events?kind=backup.failed", Some(&cookie), "");
    assert!(events.contains("interrupted"), "{events}");
}

#[test]
fn retention_keeps_n_and_restore_checks_the_manifest_and_the_lock() {
    let dir = TestDir::new("workers-keep");
    let state = dir.path("state");
    Server::start_in(state.clone()).stop_keeping_state();
    let db = rusqlite::Connection::open(state.join("state.db")).unwrap();
    db.execute("INSERT INTO settings (key, value) VALUES ('backup.keep', '2')", []).unwrap();
    drop(db);
    let s = Server::start_in(state.clone());
    let cookie = s.login();
    let mac = "52:54:00:04:00:01";
    assert_eq!(
        s.call("PUT", &format!("/machines/{mac}"), Some(&cookie), r#"{"labels":["keep"]}"#).0,
        200
    );
    for _ in 0..3 {
        let id = start_backup(&s, &cookie);
        wait_job(&s, &cookie, id, &["done"]);
    }
    let (_, _, body) = s.call("GET", "/workers/backups", Some(&cookie), "");
    let v = json(&body);
    let files = v["backups"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{v}");
    let (_, _, events) = s.call("GET", "/events?kind=backup.pruned", Some(&cookie), "");
    assert!(events.contains("retention keeps 2"), "{events}");
    let newest = PathBuf::from(files[0]["path"].as_str().unwrap());

    // Restore refuses a running server's state dir.
    let o = web(&state).arg("restore").arg(&newest).output().unwrap();
    assert!(!o.status.success());
    assert!(util::stderr(&o).contains("running"), "{}", util::stderr(&o));
    s.stop_keeping_state();

    // Into a fresh state dir: the machine comes back.
    let fresh = dir.path("fresh");
    let o = web(&fresh).arg("restore").arg(&newest).output().unwrap();
    assert!(o.status.success(), "{}", util::stderr(&o));
    let s = Server::start_in(fresh.clone());
    let cookie = s.login();
    assert_eq!(s.call("GET", &format!("/machines/{mac}"), Some(&cookie), "").0, 200);
    s.stop_keeping_state();

    // A tampered backup is refused before anything is touched.
    let bad = dir.path("tampered.tar.zst");
    let unpacked = dir.path("unpacked");
    unpack(&newest, &unpacked);
    std::fs::write(unpacked.join("catalog.toml"), "version = 1\n# changed\n").unwrap();
    let o = Command::new("tar")
        .arg("--zstd")
        .arg("-cf")
        .arg(&bad)
        .arg("-C")
        .arg(&unpacked)
        .args(["MANIFEST.sha256", "state.db", "catalog.toml", "inventory.json"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let before = std::fs::read(fresh.join("state.db")).unwrap();
    let o = web(&fresh).arg("restore").arg(&bad).output().unwrap();
    assert!(!o.status.success());
    assert!(util::stderr(&o).contains("catalog.toml does not match"), "{}", util::stderr(&o));
    assert_eq!(std::fs::read(fresh.join("state.db")).unwrap(), before);
}

#[test]
fn export_then_import_round_trips_disks_and_lshw_and_refuses_bad_bundles() {
    let dir = TestDir::new("workers-export");
    let src = dir.path("src");
    let s = Server::start_in(src.clone());
    let cookie = s.login();
    let mac = "52:54:00:05:00:01";
    assert_eq!(s.call("GET", &format!("/pxe/{mac}"), None, "").0, 200);
    let inv = r#"{"disks":[{"path":"/dev/sda","size":"1.8T","vendor":"ATA","model":"X","serial":"S1","tran":"sata","removable":false,"readonly":false}],"lshw":{"id":"box","product":"Lab PC","children":[]}}"#;
    assert_eq!(s.call("POST", &format!("/pxe/{mac}/inventory"), None, inv).0, 204);
    s.stop_keeping_state();
    let out = dir.path("bundle");
    let o = web(&src).arg("export").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", util::stderr(&o));
    let doc = json(&std::fs::read_to_string(out.join("inventory.json")).unwrap());
    assert_eq!(doc["bty_export_version"], 3);
    assert_eq!(doc["machines"][0]["hw_lshw"]["product"], "Lab PC", "native JSON, not a string");
    assert_eq!(doc["machines"][0]["known_disks"][0]["serial"], "S1");

    let dst = dir.path("dst");
    let o = web(&dst).arg("import").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", util::stderr(&o));
    let s = Server::start_in(dst.clone());
    let cookie2 = s.login();
    let (_, _, m) = s.call("GET", &format!("/machines/{mac}"), Some(&cookie2), "");
    let m = json(&m);
    assert_eq!(m["boot_mode"], "bty-inventory");
    assert_eq!(m["known_disks"][0]["serial"], "S1");
    let (_, _, lshw) = s.call("GET", &format!("/machines/{mac}/lshw.json"), Some(&cookie2), "");
    assert!(lshw.contains("Lab PC"), "{lshw}");
    drop(s);
    let _ = cookie;

    // Old versions and broken files are refused and nothing is written.
    let bad = dir.path("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let empty = dir.path("empty");
    for (content, want) in [
        (r#"{"bty_export_version": 2, "machines": []}"#, "version 2 is not supported"),
        ("{not json", "not valid JSON"),
        (r#"{"bty_export_version": 3, "machines": [{"mac": "nope"}]}"#, "machines[0]"),
        (
            r#"{"bty_export_version": 3, "machines": [{"mac": "52:54:00:05:00:02"}, {"mac": "bad"}]}"#,
            "machines[1]",
        ),
    ] {
        std::fs::write(bad.join("inventory.json"), content).unwrap();
        let o = web(&empty).arg("import").arg(&bad).output().unwrap();
        assert!(!o.status.success(), "{content}");
        assert!(util::stderr(&o).contains(want), "{content}: {}", util::stderr(&o));
    }
    assert!(!empty.join("state.db").exists(), "a refused import writes nothing");
}

/// Polls `GET /boot/releases` until job `id` is in one of `states` (bounded).
fn wait_release(s: &Server, cookie: &str, id: i64, states: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, _, body) = s.call("GET", "/boot/releases", Some(cookie), "");
        let v = json(&body);
        if let Some(job) = v["jobs"].as_array().and_then(|j| j.iter().find(|j| j["id"] == id)) {
            if states.iter().any(|st| job["state"] == *st) {
                return job.clone();
            }
        }
        assert!(Instant::now() < deadline, "release job {id} never reached {states:?}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn netboot_release_fetch_installs_verified_files_and_keeps_the_old_ones_on_failure() {
    use util::httpd::{Fault, Httpd};
    let http = Httpd::start();
    let kernel = util::prng_bytes(91, 3 << 20);
    let initrd = util::prng_bytes(92, 5 << 20);
    let manifest = |k: &[u8], i: &[u8]| {
        format!("{}  k.vmlinuz\n{}  k.initrd\n", util::sha256(k), util::sha256(i)).into_bytes()
    };
    let base = http.url("/rel");
    let s = Server::start_env(
        "workers-release",
        &[
            ("BTY_BOOT_RELEASE_URL", base.as_str()),
            ("BTY_BOOT_KERNEL", "k.vmlinuz"),
            ("BTY_BOOT_INITRD", "k.initrd"),
        ],
    );
    let cookie = s.login();
    assert_eq!(s.call("POST", "/boot/releases", None, "").0, 401);
    let boot = s.state.join("boot");
    let fetch = |want: &str| -> serde_json::Value {
        let (st, _, body) = s.call("POST", "/boot/releases", Some(&cookie), "");
        assert_eq!(st, 202, "{body}");
        let id = json(&body)["job"].as_i64().unwrap();
        wait_release(&s, &cookie, id, &[want])
    };

    // A good release, with one connection cut on the way (resumed with Range).
    http.file("/rel/k.vmlinuz", kernel.clone(), true, None);
    http.file("/rel/k.initrd", initrd.clone(), true, None);
    http.file("/rel/k.sha256", manifest(&kernel, &initrd), false, None);
    http.faults("/rel/k.initrd", vec![Fault::Cut(2 << 20)]);
    fetch("done");
    assert_eq!(std::fs::read(boot.join("k.vmlinuz")).unwrap(), kernel);
    assert_eq!(std::fs::read(boot.join("k.initrd")).unwrap(), initrd);
    // Served to machines at once.
    let (st, _, _) = s.call("HEAD", "/boot/k.initrd", None, "");
    assert_eq!(st, 200);

    // A corrupted file: the job fails and the installed pair stays.
    let mut bad = util::prng_bytes(93, 5 << 20);
    http.file("/rel/k.vmlinuz", util::prng_bytes(94, 3 << 20), true, None);
    http.file("/rel/k.initrd", bad.clone(), true, None);
    bad[0] ^= 1;
    http.file("/rel/k.sha256", manifest(&util::prng_bytes(94, 3 << 20), &bad), false, None);
    let job = fetch("failed");
    assert!(job["error"].as_str().unwrap().contains("does not match"), "{job}");
    // A missing file.
    http.file("/rel/k.sha256", b"0000  nothing-listed\n".to_vec(), false, None);
    let job = fetch("failed");
    assert!(job["error"].as_str().unwrap().contains("lists no sha256 for k.vmlinuz"), "{job}");
    assert_eq!(std::fs::read(boot.join("k.vmlinuz")).unwrap(), kernel);
    assert_eq!(std::fs::read(boot.join("k.initrd")).unwrap(), initrd);
    let names: Vec<String> = std::fs::read_dir(&boot)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "temp files left: {names:?}");
}
