//! bty-web's background work through the real binary: backups under load, a backup killed
//! mid-way, retention, restore, and export / import of the machine inventory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util;
use crate::util::{Server, TestDir};

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

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
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
    // Private while it is being written, not only once it is done.
    assert_eq!(mode(&backups), 0o700);
    for e in std::fs::read_dir(&backups).unwrap().flatten() {
        assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
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
    // They hold state.db and bty.toml: the owner's alone.
    assert_eq!(mode(&state.join("backups")), 0o700);
    for f in files {
        assert_eq!(mode(Path::new(f["path"].as_str().unwrap())), 0o600, "{f}");
    }

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

/// One tar entry: name, type flag, link target, data; the size field says `claimed` bytes
/// (the data's length when None).
struct TarEntry<'a> {
    name: &'a str,
    kind: u8,
    link: &'a str,
    data: &'a [u8],
    claimed: Option<u64>,
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> TarEntry<'a> {
    TarEntry { name, kind: b'0', link: "", data, claimed: None }
}

/// A tar stream (ustar headers, written here rather than by tar(1), so that it can say what
/// an attacker's archive would).
fn tar(entries: &[TarEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = [0u8; 512];
        h[..e.name.len()].copy_from_slice(e.name.as_bytes());
        h[100..107].copy_from_slice(b"0000600");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        let size = format!("{:011o}", e.claimed.unwrap_or(e.data.len() as u64));
        h[124..135].copy_from_slice(size.as_bytes());
        h[136..147].copy_from_slice(b"00000000001");
        h[156] = e.kind;
        h[157..157 + e.link.len()].copy_from_slice(e.link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A manifest listing `files` with their true digests.
fn manifest(files: &[(&str, &[u8])]) -> String {
    files.iter().map(|(n, d)| format!("{}  {n}\n", util::sha256(d))).collect()
}

/// Every file under `dir` with its type, mode and bytes (or link target), to compare a state
/// dir before and after a refused restore.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, (u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let bytes = if meta.is_dir() {
                todo.push(p.clone());
                Vec::new()
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes()
            } else {
                std::fs::read(&p).unwrap()
            };
            out.insert(
                p.strip_prefix(dir).unwrap().to_path_buf(),
                (meta.permissions().mode(), bytes),
            );
        }
    }
    out
}

#[test]
fn restore_refuses_crafted_archives_and_leaves_everything_as_it_was() {
    let dir = TestDir::new("workers-crafted");
    let state = dir.path("state");
    let s = Server::start_in(state.clone());
    let cookie = s.login();
    let mac = "52:54:00:04:00:02";
    assert_eq!(s.call("PUT", &format!("/machines/{mac}"), Some(&cookie), "{}").0, 200);
    s.stop_keeping_state();
    // The machine is in the WAL of a killed server: fold it into state.db for the archive.
    let conn = rusqlite::Connection::open(state.join("state.db")).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    drop(conn);
    assert!(state.join("session-secret").exists());
    let db = std::fs::read(state.join("state.db")).unwrap();
    let catalog = b"version = 1\n".to_vec();
    let outside_abs = std::env::temp_dir().join(format!("bty-crafted-abs-{}", std::process::id()));
    let abs = outside_abs.display().to_string();
    let m = manifest(&[("state.db", &db[..]), ("catalog.toml", &catalog[..])]);
    let mut big = vec![b'#'; (1 << 20) + 1];
    big[0] = b'\n';
    let mut wrong = m.clone();
    wrong.replace_range(..1, if m.starts_with('0') { "1" } else { "0" });
    let full = tar(&[
        file("MANIFEST.sha256", m.as_bytes()),
        file("state.db", &db),
        file("catalog.toml", &catalog),
    ]);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "../x",
            tar(&[file("MANIFEST.sha256", m.as_bytes()), file("../x", b"escaped")]),
            "\"../x\" contains a '..' segment",
        ),
        (
            "absolute",
            tar(&[file("MANIFEST.sha256", m.as_bytes()), file(&abs, b"escaped")]),
            "is an absolute path",
        ),
        (
            "session-secret",
            tar(&[
                file("MANIFEST.sha256", m.as_bytes()),
                file("state.db", &db),
                file("session-secret", &[7u8; 32]),
            ]),
            "\"session-secret\" is never restored",
        ),
        (
            "duplicate",
            tar(&[
                file("MANIFEST.sha256", m.as_bytes()),
                file("state.db", &db),
                file("state.db", b"second"),
            ]),
            "state.db: appears twice",
        ),
        (
            "symlink",
            tar(&[
                file("MANIFEST.sha256", m.as_bytes()),
                TarEntry {
                    name: "bty.toml",
                    kind: b'2',
                    link: "/etc/passwd",
                    data: b"",
                    claimed: None,
                },
            ]),
            "\"bty.toml\" is a symbolic link",
        ),
        (
            "hard link",
            tar(&[
                file("MANIFEST.sha256", m.as_bytes()),
                TarEntry {
                    name: "state.db",
                    kind: b'1',
                    link: "/etc/shadow",
                    data: b"",
                    claimed: None,
                },
            ]),
            "\"state.db\" is a hard link",
        ),
        (
            "device",
            tar(&[
                file("MANIFEST.sha256", m.as_bytes()),
                TarEntry { name: "state.db", kind: b'4', link: "", data: b"", claimed: None },
            ]),
            "is a block device",
        ),
        (
            "oversize",
            tar(&[
                file("MANIFEST.sha256", m.as_bytes()),
                file("state.db", &db),
                file("bty.toml", &big),
            ]),
            "bty.toml: 1048577 bytes is more than the 1.0 MiB",
        ),
        (
            "truncated",
            {
                let mut t = full.clone();
                t.truncate(512 * 2 + db.len() / 2);
                t
            },
            "truncated archive (state.db ends after",
        ),
        // A short zstd frame: whatever the decoder says, it is a refusal.
        ("truncated zstd", full.clone(), ""),
        (
            "claims more than it holds",
            tar(&[
                file("MANIFEST.sha256", m.as_bytes()),
                TarEntry {
                    name: "state.db",
                    kind: b'0',
                    link: "",
                    data: &db,
                    claimed: Some(db.len() as u64 + 4096),
                },
            ]),
            "truncated archive",
        ),
        (
            "wrong digest",
            tar(&[
                file("MANIFEST.sha256", wrong.as_bytes()),
                file("state.db", &db),
                file("catalog.toml", &catalog),
            ]),
            "does not match its manifest sha256",
        ),
        (
            "unlisted",
            tar(&[
                file("MANIFEST.sha256", m.as_bytes()),
                file("state.db", &db),
                file("catalog.toml", &catalog),
                file("bty.toml", b"[admin]\n"),
            ]),
            "holds bty.toml, which MANIFEST.sha256 does not list",
        ),
        ("no manifest", tar(&[file("state.db", &db)]), "has no MANIFEST.sha256"),
    ];

    let before = snapshot(&state);
    let parent_before = snapshot(&dir.0);
    for (i, (what, bytes, want)) in cases.iter().enumerate() {
        let mut compressed = util::zstd(bytes);
        if *what == "truncated zstd" {
            // Cut the compressed stream too: the tar reader sees a short zstd frame.
            compressed.truncate(compressed.len() * 3 / 4);
        }
        let file = dir.path(&format!("crafted-{i}.tar.zst"));
        std::fs::write(&file, &compressed).unwrap();
        let o = web(&state).arg("restore").arg(&file).output().unwrap();
        let err = util::stderr(&o);
        assert!(!o.status.success(), "{what}: restore succeeded");
        assert!(err.contains("restore refused"), "{what}: {err}");
        assert!(err.contains(want), "{what}: {err}\nwanted: {want}");
        assert_eq!(snapshot(&state), before, "{what}: the state dir changed");
        assert!(!outside_abs.exists(), "{what}: wrote {abs}");
        assert!(!dir.path("x").exists(), "{what}: wrote ../x");
        std::fs::remove_file(&file).unwrap();
        let mut after = snapshot(&dir.0);
        after.retain(|p, _| !p.starts_with("state"));
        let mut was = parent_before.clone();
        was.retain(|p, _| !p.starts_with("state"));
        assert_eq!(after, was, "{what}: something was written beside the state dir");
    }

    // The same parts, well formed, restore: the machine is back, and the session secret is a
    // new one of the state dir's own (never the archive's), so sessions from before end.
    let secret = std::fs::read(state.join("session-secret")).unwrap();
    let ok = dir.path("ok.tar.zst");
    std::fs::write(&ok, util::zstd(&full)).unwrap();
    let o = web(&state).arg("restore").arg(&ok).output().unwrap();
    assert!(o.status.success(), "{}", util::stderr(&o));
    let new_secret = std::fs::read(state.join("session-secret")).unwrap();
    assert_ne!(new_secret, secret, "a restore ends the sessions signed before it");
    assert_ne!(new_secret, [7u8; 32]);
    assert_eq!(new_secret.len(), 64, "32 random bytes in hex");
    assert_eq!(mode(&state.join("session-secret")), 0o600);
    assert_eq!(mode(&state.join("state.db")), 0o600);
    let kept: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.db.pre-restore-"))
        .collect();
    assert!(kept.iter().any(|n| !n.ends_with("-wal")), "the replaced state.db is kept: {kept:?}");
    assert!(!state.join("state.db-wal").exists(), "no old WAL beside the restored database");
    let s = Server::start_in(state.clone());
    assert_eq!(s.call("GET", "/machines", Some(&cookie), "").0, 401, "a cookie from before");
    let cookie = s.login();
    assert_eq!(s.call("GET", &format!("/machines/{mac}"), Some(&cookie), "").0, 200);
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

/// The reference server's `state.db` as its public schema has it: a one-row `bty_version`
/// table, the `Machine` wire fields as machines columns (lshw as `hw_lshw`, JSON as text), a
/// `machine_labels` side table, and columns and tables bty-web does not read.
const REFERENCE_SCHEMA: &str = "
CREATE TABLE bty_version (version TEXT NOT NULL);
INSERT INTO bty_version VALUES ('0.60.1');
CREATE TABLE machines (
    mac TEXT PRIMARY KEY, bty_image_ref TEXT, hostname TEXT, discovered_at TEXT,
    last_seen_at TEXT, last_seen_ip TEXT, boot_mode TEXT NOT NULL DEFAULT 'ipxe-exit',
    sanboot_drive TEXT, last_flashed_at TEXT, saw_flasher_boot INTEGER NOT NULL DEFAULT 0,
    known_disks TEXT, known_disks_at TEXT, hw_lshw TEXT, hw_lshw_at TEXT,
    target_disk_serial TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    a_later_column BLOB
);
CREATE TABLE machine_labels (mac TEXT NOT NULL, label TEXT NOT NULL, PRIMARY KEY (mac, label));
CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT, kind TEXT, summary TEXT);
";

/// Writes a reference-shaped state.db at `path` with two good machines, then runs `extra`.
fn reference_db(path: &Path, extra: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(REFERENCE_SCHEMA).unwrap();
    let disks = r#"[{"path":"/dev/sda","size":"1.8T","vendor":"ATA","model":"X","serial":"S1","tran":"sata","removable":false,"readonly":false}]"#;
    c.execute(
        "INSERT INTO machines (mac, bty_image_ref, boot_mode, target_disk_serial, known_disks, \
         known_disks_at, hw_lshw, hw_lshw_at, created_at, updated_at, a_later_column) \
         VALUES ('aa:bb:cc:00:00:01', ?1, 'bty-flash-always', 'S1', ?2, \
         '2026-05-25T10:00:00+00:00', '{\"id\":\"box\",\"product\":\"Lab PC\"}', \
         '2026-05-25T10:00:00+00:00', 't', 't', x'00ff')",
        rusqlite::params!["ab".repeat(32), disks],
    )
    .unwrap();
    c.execute_batch(
        "INSERT INTO machines (mac, created_at, updated_at) VALUES ('AA-BB-CC-00-00-02', 't', 't');
         INSERT INTO machine_labels VALUES ('aa:bb:cc:00:00:01', 'rack-3'),
             ('aa:bb:cc:00:00:01', 'noisy'), ('AA-BB-CC-00-00-02', 'gpu');",
    )
    .unwrap();
    c.execute_batch(extra).unwrap();
}

#[test]
fn import_brings_the_reference_state_db_across_read_only_and_refuses_hostile_values() {
    let dir = TestDir::new("workers-reference-import");
    let reference = dir.path("reference/state.db");
    reference_db(&reference, "");
    let before = std::fs::read(&reference).unwrap();
    // A stopped server's state dir with a machine of its own, which the import keeps.
    let dst = dir.path("dst");
    let s = Server::start_in(dst.clone());
    let cookie = s.login();
    let own = "52:54:00:06:00:01";
    assert_eq!(s.call("PUT", &format!("/machines/{own}"), Some(&cookie), "{}").0, 200);
    s.stop_keeping_state();

    let o = web(&dst).arg("import").arg(&reference).output().unwrap();
    assert!(o.status.success(), "{}", util::stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("imported 2 machines") && out.contains("0.60.1"), "{out}");
    assert_eq!(std::fs::read(&reference).unwrap(), before, "the reference database is untouched");
    for side in ["-wal", "-shm", "-journal"] {
        let p = dir.path(&format!("reference/state.db{side}"));
        assert!(!p.exists(), "{} was created", p.display());
    }

    // Not the target's own database: that would clear every binding it holds.
    let o = web(&dst).arg("import").arg(dst.join("state.db")).output().unwrap();
    assert!(!o.status.success());
    assert!(util::stderr(&o).contains("is the database of the state dir"), "{}", util::stderr(&o));

    let s = Server::start_in(dst.clone());
    let c = s.login();
    let get = |p: &str| s.call("GET", p, Some(&c), "");
    let (st, _, m) = get("/machines/aa:bb:cc:00:00:01");
    assert_eq!(st, 200, "{m}");
    let m = json(&m);
    assert_eq!(m["boot_mode"], "bty-inventory", "bindings cleared: {m}");
    assert_eq!(m["bty_image_ref"], serde_json::Value::Null);
    assert_eq!(m["target_disk_serial"], serde_json::Value::Null);
    assert_eq!(m["labels"], serde_json::json!(["noisy", "rack-3"]));
    assert_eq!(m["known_disks"][0]["serial"], "S1");
    assert_eq!(m["known_disks_at"], "2026-05-25T10:00:00+00:00");
    let (st, _, lshw) = get("/machines/aa:bb:cc:00:00:01/lshw.json");
    assert!(st == 200 && lshw.contains("Lab PC"), "{st} {lshw}");
    // The MAC is normalised; no inventory, so its disks are 404.
    let (st, _, m) = get("/machines/aa:bb:cc:00:00:02");
    assert_eq!(st, 200, "{m}");
    assert_eq!(json(&m)["labels"], serde_json::json!(["gpu"]));
    let (st, _, body) = get("/machines/aa:bb:cc:00:00:02/disks.json");
    assert!(st == 404 && body.contains("no inventory for aa:bb:cc:00:00:02 yet"), "{st} {body}");
    assert_eq!(get(&format!("/machines/{own}")).0, 200, "the server's own machine stays");
    let (_, _, ev) = get("/events?kind=machines.imported");
    assert!(ev.contains("0.60.1"), "{ev}");
    drop(s);

    // A reference database in WAL mode whose last rows are still only in its -wal (copied
    // while the reference server ran): those rows are read, and the file is still not written.
    let live = dir.path("live/state.db");
    reference_db(&live, "");
    let writer = rusqlite::Connection::open(&live).unwrap();
    let _: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).unwrap();
    writer
        .execute_batch(
            "INSERT INTO machines (mac, created_at, updated_at) VALUES ('aa:bb:cc:00:00:03', 't', 't')",
        )
        .unwrap();
    let copy = dir.path("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["state.db", "state.db-wal"] {
        std::fs::copy(dir.path(&format!("live/{f}")), copy.join(f)).unwrap();
    }
    drop(writer);
    let main_before = std::fs::read(copy.join("state.db")).unwrap();
    let wal_dst = dir.path("wal-dst");
    let o = web(&wal_dst).arg("import").arg(copy.join("state.db")).output().unwrap();
    assert!(o.status.success(), "{}", util::stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("imported 3 machines"));
    assert_eq!(std::fs::read(copy.join("state.db")).unwrap(), main_before, "not checkpointed");

    // One hostile or broken value refuses the whole import, named, and writes nothing.
    for (n, (sql, want)) in [
        ("INSERT INTO machine_labels VALUES ('aa:bb:cc:00:00:01', '../x')", "labels[0]: must start with a letter or digit"),
        ("INSERT INTO machine_labels VALUES ('aa:bb:cc:00:00:01', 'a<script>')", "character '<' is not allowed"),
        ("INSERT INTO machines (mac, created_at, updated_at) VALUES ('not-a-mac', 't', 't')", "is not a MAC address"),
        ("INSERT INTO machines (mac, created_at, updated_at) VALUES (x'aabbcc', 't', 't')", "mac: holds binary data"),
        ("INSERT INTO machines (mac, created_at, updated_at) VALUES ('aa:bb:cc:00:00:02', 't', 't')", "appears twice"),
        ("UPDATE machines SET known_disks = '[{\"path\":\"/etc/passwd\"}]' WHERE mac = 'AA-BB-CC-00-00-02'", "known_disks[0].path: must be a device path under /dev/"),
        ("UPDATE machines SET hw_lshw = '{not json' WHERE mac = 'AA-BB-CC-00-00-02'", "hw_lshw: not valid JSON"),
        ("UPDATE machines SET known_disks_at = '<img src=x>' WHERE mac = 'AA-BB-CC-00-00-02'", "known_disks_at: expected an ISO 8601 time"),
    ]
    .into_iter()
    .enumerate()
    {
        let bad = dir.path(&format!("bad-{n}/state.db"));
        reference_db(&bad, sql);
        let empty = dir.path(&format!("empty-{n}"));
        let o = web(&empty).arg("import").arg(&bad).output().unwrap();
        let err = util::stderr(&o);
        assert!(!o.status.success(), "{sql}");
        assert!(err.contains(want) && err.contains("state.db: machine"), "{sql}: {err}");
        assert!(!empty.join("state.db").exists(), "{sql}: a refused import writes nothing");
    }
}

/// Starts bty-web on `state` and waits for it to exit (it must: the start is refused); its
/// stderr.
fn refused_start(state: &Path) -> String {
    let mut child = web(state)
        .args(["--listen", "127.0.0.1:0"])
        .env("BTY_ADMIN_PASSWORD", "pw-for-tests")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("bty-web started on {}", state.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    util::stderr(&o)
}

#[test]
fn upgrading_over_the_reference_state_db_archives_it_and_import_brings_it_back() {
    let dir = TestDir::new("workers-reference-upgrade");
    let state = dir.path("state");
    reference_db(&state.join("state.db"), "");
    let s = Server::start_in(state.clone());
    let c = s.login();
    let (_, _, ev) = s.call("GET", "/events?kind=system.schema.reset", Some(&c), "");
    let ev = json(&ev);
    let details = &ev["events"][0]["details"];
    assert_eq!(details["from_version"], "0.60.1", "{ev}");
    assert_eq!(details["to_version"], "bty-rs-1");
    let bak = PathBuf::from(details["archived_at"].as_str().unwrap());
    let name = bak.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("state.db.0.60.1.") && name.ends_with(".bak"), "{name}");
    assert_eq!(bak.parent(), Some(state.as_path()));
    assert!(bak.is_file(), "{} missing", bak.display());
    assert_eq!(s.call("GET", "/machines", Some(&c), "").2, "[]", "a fresh database");
    s.stop_keeping_state();
    let full = std::fs::read(&bak).unwrap();
    let o = web(&state).arg("import").arg(&bak).output().unwrap();
    assert!(o.status.success(), "{}", util::stderr(&o));
    let s = Server::start_in(state.clone());
    let c = s.login();
    let (st, _, m) = s.call("GET", "/machines/aa:bb:cc:00:00:01", Some(&c), "");
    assert_eq!(st, 200, "{m}");
    assert_eq!(json(&m)["labels"], serde_json::json!(["noisy", "rack-3"]));
    drop(s);

    // Not SQLite at all, or a truncated copy: the start is refused and the file kept as it was.
    for (n, bytes) in
        [b"PK\x03\x04 a zip, not a database".to_vec(), full[..full.len() / 2].to_vec()]
            .into_iter()
            .enumerate()
    {
        let state = dir.path(&format!("broken-{n}"));
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("state.db"), &bytes).unwrap();
        let err = refused_start(&state);
        assert!(err.contains("refusing to start over it"), "{err}");
        assert_eq!(std::fs::read(state.join("state.db")).unwrap(), bytes, "left as it was");
        let names: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("state.db."))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }
}
