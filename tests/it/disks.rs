//! `bty disks` and `bty inventory` on this machine, checked against lsblk and against
//! bty-web's own validator. Loop devices need root, like the flash tests.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::util::{Loop, TestDir, bty, prng_bytes, stderr};
use serde_json::Value;

const MIB: usize = 1 << 20;

fn run_json(cmd: &mut Command) -> Value {
    let o = cmd.output().expect("running a command");
    assert!(o.status.success(), "{cmd:?} failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("{cmd:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&o.stdout))
    })
}

/// `bty disks --json` (with `--all` if asked), by path.
fn bty_disks(all: bool) -> BTreeMap<String, Value> {
    let mut c = bty();
    c.args(["disks", "--json"]);
    if all {
        c.arg("--all");
    }
    let v = run_json(&mut c);
    v.as_array()
        .expect("an array of disks")
        .iter()
        .map(|d| (d["path"].as_str().expect("a path").to_string(), d.clone()))
        .collect()
}

/// lsblk's top-level devices by path, in the C locale (its decimal point is the locale's).
fn lsblk(bytes: bool) -> BTreeMap<String, Value> {
    let mut c = Command::new("lsblk");
    c.env("LC_ALL", "C").arg("-J");
    if bytes {
        c.args([
            "-b",
            "-o",
            "PATH,SIZE,RO,RM,ROTA,VENDOR,MODEL,SERIAL,TRAN,LOG-SEC,PHY-SEC,MOUNTPOINTS",
        ]);
    } else {
        c.args(["-o", "PATH,SIZE"]);
    }
    let v = run_json(&mut c);
    v["blockdevices"]
        .as_array()
        .expect("lsblk's blockdevices")
        .iter()
        .map(|d| (d["path"].as_str().expect("lsblk gives a path").to_string(), d.clone()))
        .collect()
}

/// lsblk's JSON types changed over versions (strings, then numbers and booleans): read any.
fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn as_bool(v: &Value) -> bool {
    v.as_bool().unwrap_or_else(|| v.as_str() == Some("1"))
}

/// A string field, trimmed as lsblk versions differ in trimming sysfs strings; null stays None.
fn as_text(v: &Value) -> Option<String> {
    v.as_str().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Mount points of an lsblk device and its children (partitions), sorted, nulls dropped.
fn lsblk_mounts(d: &Value) -> Vec<String> {
    let mut out: Vec<String> = d["mountpoints"]
        .as_array()
        .map(|a| a.iter().filter_map(as_text).collect())
        .unwrap_or_default();
    for c in d["children"].as_array().into_iter().flatten() {
        out.extend(lsblk_mounts(c));
    }
    out.sort();
    out.dedup();
    out
}

fn lsblk_version() -> (u32, u32) {
    let o = Command::new("lsblk").arg("--version").output().expect("running lsblk");
    let text = String::from_utf8_lossy(&o.stdout);
    let ver = text.split_whitespace().last().unwrap_or("0.0");
    let mut it = ver.split('.').map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// A mounted ext4 file system; unmounted on drop (before its loop device is detached).
struct Mounted(std::path::PathBuf);

impl Mounted {
    fn new(dev: &Path, mnt: std::path::PathBuf) -> Mounted {
        let st = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(dev).status().expect("mkfs");
        assert!(st.success(), "mkfs.ext4 failed");
        fs::create_dir_all(&mnt).unwrap();
        assert!(Command::new("mount").arg(dev).arg(&mnt).status().unwrap().success(), "mount");
        Mounted(mnt)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn disks_agree_with_lsblk() {
    let dir = TestDir::new("disks-lsblk");
    // Plain; read-only; 4 KiB logical blocks; mounted.
    let plain = Loop::new(&dir, "plain", 12 * MIB + 512 * 1024);
    fs::write(dir.path("ro"), prng_bytes(7, 8 * MIB)).unwrap();
    let ro = Loop::attach(&dir.path("ro"), &["-r"]);
    fs::write(dir.path("4k"), prng_bytes(8, 8 * MIB)).unwrap();
    let four_k = Loop::attach(&dir.path("4k"), &["-b", "4096"]);
    let mounted = Loop::new(&dir, "mounted", 16 * MIB);
    let mnt = Mounted::new(&mounted.dev, dir.path("mnt"));
    let ours_loops: Vec<String> =
        [&plain, &ro, &four_k, &mounted].iter().map(|l| l.dev.display().to_string()).collect();

    let ours = bty_disks(true);
    let theirs = lsblk(true);
    let human = lsblk(false);
    let (major, minor) = lsblk_version();

    for path in &ours_loops {
        assert!(ours.contains_key(path), "bty disks --all misses {path}: {ours:#?}");
        assert!(theirs.contains_key(path), "lsblk misses {path}");
    }
    let mut compared = 0;
    for (path, l) in &theirs {
        // Other people's loop devices come and go between the two listings.
        if path.starts_with("/dev/loop") && !ours_loops.contains(path) {
            continue;
        }
        let d = ours.get(path).unwrap_or_else(|| panic!("bty disks --all misses {path}"));
        let ctx = format!("{path}: ours {d:#}\nlsblk {l:#}");
        assert_eq!(d["size_bytes"].as_u64(), as_u64(&l["size"]), "size: {ctx}");
        assert_eq!(d["size"], human[path]["size"], "size string: {ctx}");
        assert_eq!(d["readonly"], as_bool(&l["ro"]), "ro: {ctx}");
        assert_eq!(d["removable"], as_bool(&l["rm"]), "rm: {ctx}");
        assert_eq!(d["rotational"], as_bool(&l["rota"]), "rota: {ctx}");
        assert_eq!(as_text(&d["model"]), as_text(&l["model"]), "model: {ctx}");
        assert_eq!(as_text(&d["vendor"]), as_text(&l["vendor"]), "vendor: {ctx}");
        assert_eq!(d["logical_block_size"].as_u64(), as_u64(&l["log-sec"]), "log-sec: {ctx}");
        assert_eq!(d["physical_block_size"].as_u64(), as_u64(&l["phy-sec"]), "phy-sec: {ctx}");
        let mut mounts: Vec<String> =
            d["mountpoints"].as_array().unwrap().iter().filter_map(as_text).collect();
        mounts.sort();
        assert_eq!(mounts, lsblk_mounts(l), "mountpoints: {ctx}");
        // Without a udev database lsblk reads only `device/serial`; bty also reads the
        // `serial` attribute that udev's rules turn into ID_SERIAL for virtio disks, so on
        // such a machine it knows a serial lsblk does not.
        let name = path.trim_start_matches("/dev/");
        let sysfs_serial = fs::read_to_string(format!("/sys/block/{name}/serial"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        match (as_text(&d["serial"]), as_text(&l["serial"])) {
            (a, b) if a == b => {}
            (a, None) if a.is_some() && a == sysfs_serial => {}
            (a, b) => panic!("serial {a:?} vs lsblk's {b:?}: {ctx}"),
        }
        // lsblk names virtio and MMC transports since util-linux 2.39.
        match (as_text(&d["tran"]), as_text(&l["tran"])) {
            (a, b) if a == b => {}
            (Some(t), None) if (major, minor) < (2, 39) && (t == "virtio" || t == "mmc") => {}
            (a, b) => panic!("tran {a:?} vs lsblk's {b:?}: {ctx}"),
        }
        compared += 1;
    }
    assert!(compared > ours_loops.len(), "only our loop devices were compared");

    assert_eq!(ours[&ours_loops[1]]["refusal"], "the device is read-only");
    assert_eq!(ours[&ours_loops[2]]["logical_block_size"], 4096);
    assert_eq!(ours[&ours_loops[0]]["writable"], true);
    assert_eq!(ours[&ours_loops[0]]["refusal"], Value::Null);
    drop(mnt);
}

#[test]
fn loop_devices_are_listed_only_with_all() {
    let dir = TestDir::new("disks-all");
    let l = Loop::new(&dir, "target", 8 * MIB);
    let path = l.dev.display().to_string();
    assert!(!bty_disks(false).contains_key(&path));
    let all = bty_disks(true);
    let d = &all[&path];
    assert_eq!(d["writable"], true, "{d:#}");
    assert_eq!(d["tran"], Value::Null);
    assert_eq!(d["size"], "8M");
    assert_eq!(d["size_bytes"], 8 * MIB as u64);

    let table = |args: &[&str]| {
        let o = bty().arg("disks").args(args).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(table(&[]).starts_with("PATH "), "{}", table(&[]));
    assert!(!table(&[]).contains(&path));
    let row =
        table(&["--all"]).lines().find(|r| r.starts_with(&format!("{path} "))).map(String::from);
    let row = row.expect("a row for the loop device");
    assert!(row.contains(" 8M ") && row.ends_with(" yes"), "{row}");
}

#[test]
fn a_mounted_disk_is_not_writable_and_says_why() {
    let dir = TestDir::new("disks-mounted");
    let l = Loop::new(&dir, "target", 16 * MIB);
    let mnt = Mounted::new(&l.dev, dir.path("mnt"));
    let path = l.dev.display().to_string();
    let d = bty_disks(true).remove(&path).expect("the loop device is listed");
    let mp = mnt.0.display().to_string();
    assert_eq!(d["writable"], false, "{d:#}");
    assert_eq!(d["refusal"], format!("{path} is mounted on {mp}"));
    assert_eq!(d["mountpoints"], serde_json::json!([mp]));
    let o = bty().args(["disks", "--all"]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let row = out.lines().find(|r| r.starts_with(&format!("{path} "))).expect("a row");
    assert!(row.ends_with(&format!("no: {path} is mounted on {mp}")), "{row}");
    // The root disk is refused for what it is, not merely for being mounted.
    let root = bty_disks(false).into_values().find(|d| d["root"] == true);
    if let Some(root) = root {
        assert_eq!(root["refusal"], "it holds the running system's root file system");
    }
    drop(mnt);
}

/// Runs `bty inventory --json` with extra environment and checks it with bty-web's validator.
fn inventory(env: &[(&str, &str)]) -> (Value, bty::web::validate::Inventory) {
    let o = bty().args(["inventory", "--json"]).envs(env.iter().copied()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let checked = bty::web::validate::inventory(&o.stdout)
        .unwrap_or_else(|e| panic!("bty-web refuses the inventory: {e}"));
    (serde_json::from_slice(&o.stdout).unwrap(), checked)
}

fn nodes<'a>(n: &'a Value, class: &str, out: &mut Vec<&'a Value>) {
    if n["class"] == class {
        out.push(n);
    }
    for c in n["children"].as_array().into_iter().flatten() {
        nodes(c, class, out);
    }
}

fn find<'a>(tree: &'a Value, class: &str) -> Vec<&'a Value> {
    let mut out = Vec::new();
    nodes(tree, class, &mut out);
    out
}

#[test]
fn inventory_without_lshw_passes_bty_web_and_has_cpu_memory_and_network() {
    for env in [vec![("BTY_NO_LSHW", "1")], vec![("PATH", "/nonexistent")]] {
        let (v, checked) = inventory(&env);
        let tree = checked.report.lshw.expect("a hardware tree");
        assert_eq!(tree["class"], "system", "{env:?}");
        assert!(tree["configuration"]["generator"].as_str().unwrap().starts_with("bty "));
        let cpus = find(&tree, "processor");
        assert!(!cpus.is_empty() && cpus[0]["product"].is_string(), "{tree:#}");
        let threads: usize = cpus
            .iter()
            .map(|c| c["configuration"]["threads"].as_str().unwrap().parse::<usize>().unwrap())
            .sum();
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap();
        assert_eq!(threads, cpuinfo.lines().filter(|l| l.starts_with("processor")).count());
        let memory = find(&tree, "memory").into_iter().find(|m| m["id"] == "memory").unwrap();
        assert!(memory["size"].as_u64().unwrap() > 64 * MIB as u64, "{memory}");
        // Every interface with a device behind it, with its MAC.
        for e in fs::read_dir("/sys/class/net").unwrap().flatten() {
            if !e.path().join("device").exists() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let mac = fs::read_to_string(e.path().join("address")).unwrap().trim().to_string();
            let nets = find(&tree, "network");
            let n = nets.iter().find(|n| n["logicalname"] == name.as_str()).expect("the NIC");
            assert_eq!(n["serial"], mac.as_str());
        }
        // The disks are the InventoryDisk fields of `bty disks --json`, nothing more.
        let disks = bty_disks(false);
        assert_eq!(v["disks"].as_array().unwrap().len(), disks.len());
        for d in v["disks"].as_array().unwrap() {
            let full = &disks[d["path"].as_str().unwrap()];
            for (k, val) in d.as_object().unwrap() {
                assert_eq!(&full[k], val, "{k}");
            }
            assert_eq!(d.as_object().unwrap().len(), 8);
        }
        assert_eq!(serde_json::to_value(&checked.report.disks).unwrap(), v["disks"]);
    }
}

#[test]
fn inventory_with_lshw_passes_bty_web() {
    assert!(
        Command::new("lshw").arg("-version").output().is_ok(),
        "lshw is not installed (make deps installs it)"
    );
    let (_, checked) = inventory(&[]);
    let tree = checked.report.lshw.expect("lshw's tree");
    assert_eq!(tree["class"], "system");
    assert!(tree["configuration"].get("generator").is_none(), "lshw's tree, not ours");
    assert!(!find(&tree, "processor").is_empty());

    let o = bty().arg("inventory").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("\nhardware  lshw\n") && out.contains("\ncpu       "), "{out}");
    assert!(out.contains("\nPATH "), "{out}");
}
