//! The whole life of a lab machine, in QEMU against the real bty-web: the guest PXE-boots with
//! the NIC's iPXE ROM, is discovered and inventoried by the live environment (`make live`),
//! boots its old disk, is assigned an image through the JSON API, flashes it unattended on the
//! next boot, reboots into the new disk, and goes straight to the disk after that.
//!
//! QEMU's user-mode network is the whole network: the guest reaches the host's 127.0.0.1 as
//! 10.0.2.2, so bty-web and the image server listen on loopback only. Every power-on writes
//! its serial console to target/e2e/<firmware>/boot-<n>.log for a person to read.
//!
//! A third test boots legacy BIOS through bty-web's own TFTP server with Debian's iPXE
//! binaries (`make ipxe`, served from `[boot] ipxe_dir`).
//!
//! Needs the artifacts of `make live` (or `BTY_E2E_BOOT_DIR`) and qemu-system-x86 with
//! ipxe-qemu (`make deps`). It fails, never skips, when they are missing: CI runs it.
//! `BTY_E2E_IMAGE_MIB` sets the image size (default 8 MiB; `make bench-e2e` uses 256).
//! `BTY_E2E_ACCEL` picks the accelerator (default tcg: KVM inside these VMs stops with an
//! emulation failure in the iPXE ROM).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util;
use crate::util::Server;
use crate::util::guest::{self, Guest, tail};
use crate::util::httpd::Httpd;

const MAC: &str = "52:54:00:b7:e2:01";
const DISK_SERIAL: &str = "BTYE2E0001";
const OLD_MARKER: &str = "BTY-E2E-OLD-DISK";
const NEW_MARKER: &str = "BTY-E2E-NEW-DISK";
/// A TCG boot of Debian's kernel takes ~30 s on these machines; a whole PXE cycle (firmware,
/// iPXE, kernel, bty, reboot, disk) stays well inside this.
const CYCLE: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A guest on QEMU's user-mode network, whose DHCP names bty-web's bootstrap script.
fn power_on(firmware: &Firmware, server_port: u16, disk: &Path, log: PathBuf) -> Guest {
    let mut c = guest::qemu(Command::new("qemu-system-x86_64"), 512, &log);
    c.arg("-netdev")
        .arg(format!("user,id=n0,bootfile=http://10.0.2.2:{server_port}/pxe-bootstrap.ipxe"))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={MAC},bootindex=1"))
        .arg("-drive")
        .arg(format!("file={},if=none,id=d0,format=raw", disk.display()))
        .arg("-device")
        .arg(format!("virtio-blk-pci,drive=d0,serial={DISK_SERIAL},bootindex=2"))
        // Every boot asks the network first, as lab machines do: bty-web decides. SeaBIOS
        // reads -boot; OVMF only the bootindex properties above.
        .args(["-boot", "order=n"])
        .args(&firmware.args);
    Guest::start(c, log)
}

struct Firmware {
    name: &'static str,
    args: Vec<String>,
    /// Also run the bty-flash-always cycle (server-side the same for both firmwares: once is
    /// enough for CI's time).
    flash_always: bool,
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// After the first power-on: `mac` was inventoried with the disk `serial` among its disks. Then
/// the operator adds the test server's `/disk.img.zst` (with its sha256 manifest) to the catalog
/// and assigns it with a one-time flash of that disk. The catalog entry and the PUT body.
pub(crate) fn inventoried_then_assigned(
    s: &Server,
    cookie: &str,
    mac: &str,
    serial: &str,
    http_port: &str,
) -> (serde_json::Value, String) {
    let m = machine_of(s, cookie, mac);
    assert_eq!(m["boot_mode"], "bty-inventory", "{m}");
    let disks = m["known_disks"].as_array().unwrap_or_else(|| panic!("no inventory: {m}"));
    assert!(disks.iter().any(|d| d["serial"] == serial), "{m}");
    let (st, _, body) = s.call(
        "POST",
        "/catalog/entries",
        Some(cookie),
        &format!(
            r#"{{"image_url":"http://127.0.0.1:{http_port}/disk.img.zst","sha_url":"http://127.0.0.1:{http_port}/disk.img.zst.sha256"}}"#
        ),
    );
    assert!(st == 200 || st == 201, "{st} {body}");
    let entry = json(&body);
    let image_ref = entry["bty_image_ref"].as_str().unwrap();
    let put = format!(
        r#"{{"boot_mode":"bty-flash-once","bty_image_ref":"{image_ref}","target_disk_serial":"{serial}"}}"#
    );
    let (st, _, body) = s.call("PUT", &format!("/machines/{mac}"), Some(cookie), &put);
    assert_eq!(st, 200, "{body}");
    (entry, put)
}

fn machine(s: &Server, cookie: &str) -> serde_json::Value {
    machine_of(s, cookie, MAC)
}

fn machine_of(s: &Server, cookie: &str, mac: &str) -> serde_json::Value {
    let (st, _, body) = s.call("GET", &format!("/machines/{mac}"), Some(cookie), "");
    assert_eq!(st, 200, "{body}");
    json(&body)
}

fn life_of_a_machine(firmware: Firmware) {
    let boot = guest::live_dir();
    let out = repo().join("target/e2e").join(firmware.name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();

    // With the image cache on: the live environment flashes from bty-web, which pulls the
    // image from its origin once.
    let cache = out.join("cache");
    let s = Server::start_env(
        &format!("e2e-{}", firmware.name),
        &[
            ("BTY_PATHS_BOOT_DIR", boot.to_str().unwrap()),
            ("BTY_CACHE_DIR", cache.to_str().unwrap()),
        ],
    );
    let port: u16 = s.addr.rsplit(':').next().unwrap().parse().unwrap();
    let cookie = s.login();

    // The image is served by the test over http on 127.0.0.1, which the guest cannot reach (its
    // 127.0.0.1 is itself): bty-web reads the sha256 manifest and pulls the image into its
    // cache, and the plan sends the guest to the cache, pinned to that digest.
    let http = Httpd::start();
    let http_port = http.addr.rsplit(':').next().unwrap();
    // `make bench-e2e` sets a bigger image to time the flash; the test proper keeps it small.
    let mib: usize =
        std::env::var("BTY_E2E_IMAGE_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let new = guest::image(NEW_MARKER, 88, mib << 20, &out);
    let packed = util::zstd(&new);
    let manifest = format!("{}  disk.img.zst\n", util::sha256(&packed));
    http.file("/disk.img.zst", packed, true, None);
    http.file("/disk.img.zst.sha256", manifest.into_bytes(), false, None);

    // The machine's disk holds an older OS that says so when it boots.
    let disk = out.join("disk.raw");
    let mut old = guest::image(OLD_MARKER, 7, 8 << 20, &out);
    old.resize((mib + 56) << 20, 0);
    std::fs::write(&disk, &old).unwrap();

    // a. First power-on: the unknown MAC is discovered, the live env posts its inventory and
    // reboots, and the next contact boots the disk.
    let mut g = power_on(&firmware, port, &disk, out.join("boot-1.log"));
    g.wait_for("bty: inventory posted; rebooting", CYCLE);
    let t = g.wait_for(OLD_MARKER, CYCLE);
    eprintln!("e2e {}: discovered, inventoried, old disk booted after {t:.1?}", firmware.name);
    drop(g);
    // b. The operator assigns the image, the disk and a one-time flash.
    let (entry, put) = inventoried_then_assigned(&s, &cookie, MAC, DISK_SERIAL, http_port);
    assert_eq!(entry["disk_image_sha"].as_str(), Some(util::sha256(&util::zstd(&new)).as_str()));

    // c. Next power-on flashes unattended, posts done, reboots into the new disk.
    let mut g = power_on(&firmware, port, &disk, out.join("boot-2.log"));
    g.wait_for("bty: auto-flash starting", CYCLE);
    g.wait_for("bty: write 100%", CYCLE);
    let done = g.wait_for("bty: flash complete; rebooting", CYCLE);
    let t = g.wait_for(NEW_MARKER, CYCLE);
    eprintln!(
        "e2e {}: power-on to done {done:.1?}, to the new disk's boot sector {t:.1?} \
         ({} MiB image)",
        firmware.name,
        new.len() >> 20
    );
    drop(g);
    let m = machine(&s, &cookie);
    assert!(m["last_flashed_at"].is_string(), "done was posted: {m}");
    assert_eq!(m["last_status"], "done", "{m}");
    let written = std::fs::read(&disk).unwrap();
    assert!(written[..new.len()] == new[..], "the disk holds the image's bytes");
    let pulls = |http: &Httpd| {
        http.seen().iter().filter(|r| r.path == "/disk.img.zst" && r.range.is_none()).count()
    };
    assert_eq!(pulls(&http), 1, "bty-web pulled the image once: {:?}", http.seen());
    let sha = entry["disk_image_sha"].as_str().unwrap();
    assert!(cache.join("sha256").join(sha).is_file(), "the image is in the cache");

    // d. A further power-on goes straight to the disk: no live environment.
    let mut g = power_on(&firmware, port, &disk, out.join("boot-3.log"));
    let t = g.wait_for(NEW_MARKER, CYCLE);
    let serial = g.serial();
    assert!(!serial.contains("bty-live:"), "the live env booted again:\n{}", tail(&serial));
    eprintln!("e2e {}: third power-on booted the disk directly after {t:.1?}", firmware.name);
    drop(g);
    if !firmware.flash_always {
        // The serial logs stay for a person to read; the disk is just bytes.
        let _ = std::fs::remove_file(&disk);
        return;
    }

    // e. bty-flash-always: a boot flashes, the boot after it is the disk's, and the one after
    // that flashes again. The boot sector is wiped first, so only a flash brings the marker
    // back; the re-armed flash is read from the script rather than booted, to save CI a cycle.
    let put = put.replace("bty-flash-once", "bty-flash-always");
    let (st, _, body) = s.call("PUT", &format!("/machines/{MAC}"), Some(&cookie), &put);
    assert_eq!(st, 200, "{body}");
    let mut written = std::fs::read(&disk).unwrap();
    written[..512].fill(0);
    std::fs::write(&disk, &written).unwrap();
    let mut g = power_on(&firmware, port, &disk, out.join("boot-4.log"));
    g.wait_for("bty: flash complete; rebooting", CYCLE);
    let t = g.wait_for(NEW_MARKER, CYCLE);
    drop(g);
    eprintln!("e2e {}: flash-always flashed and booted the disk after {t:.1?}", firmware.name);
    let (_, _, script) = s.call("GET", &format!("/pxe/{MAC}"), None, "");
    assert!(script.contains("kernel http://"), "flash-always re-arms the flash: {script}");
    assert_eq!(pulls(&http), 1, "the second flash came from the cache: {:?}", http.seen());
    let _ = std::fs::remove_file(&disk);
}

#[test]
fn bios_machine_is_discovered_flashed_and_boots_its_new_disk() {
    life_of_a_machine(Firmware { name: "bios", args: vec![], flash_always: true });
}

/// OVMF: iPXE's EFI build in the NIC ROM; the disk branch is `exit` to the firmware's boot
/// order, which `bootindex` makes the NIC first and the disk second (what a lab machine's
/// setup menu says).
#[test]
fn uefi_machine_is_discovered_flashed_and_boots_its_new_disk() {
    life_of_a_machine(Firmware {
        name: "uefi",
        // After iPXE's `exit`, OVMF would try its own PXE and HTTP boot on the same NIC first,
        // over IPv4 and IPv6, each waiting for timeouts (~2 min under TCG) before the disk.
        // Turn off what fw_cfg can turn off.
        args: guest::ovmf_args(),
        flash_always: false,
    });
}

/// What the TFTP test reads from bty-web's log; waits up to `limit` for `done` to hold.
fn wait_log(
    log: &Path,
    guest: &mut Child,
    limit: Duration,
    what: &str,
    done: impl Fn(&str) -> bool,
) {
    let t0 = Instant::now();
    loop {
        let text = guest::read_lossy(log);
        if done(&text) {
            return;
        }
        if let Ok(Some(st)) = guest.try_wait() {
            panic!("qemu exited ({st}) before {what}; bty-web's log:\n{}", tail(&text));
        }
        assert!(
            t0.elapsed() < limit,
            "no {what} within {limit:?}; bty-web's log:\n{}",
            tail(&text)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A legacy-BIOS guest whose firmware loads `file` over TFTP from bty-web. No serial console:
/// SeaBIOS and the NIC's iPXE print to the screen only, so bty-web's log is what the test reads.
fn tftp_guest(tftp_port: u16, file: &str) -> Child {
    Command::new("qemu-system-x86_64")
        .args(["-accel", &std::env::var("BTY_E2E_ACCEL").unwrap_or_else(|_| "tcg".into())])
        .args(["-m", "256", "-smp", "1", "-vga", "none", "-display", "none", "-monitor", "none"])
        // No tftp= option: QEMU's DHCP names the file and forwards the guest's UDP to
        // 10.0.2.2 to the host's 127.0.0.1, where bty-web answers (a port in the URI keeps
        // the test off udp/69; iPXE, the NIC's ROM, honours it).
        .arg("-netdev")
        .arg(format!("user,id=n0,bootfile=tftp://10.0.2.2:{tftp_port}/{file}"))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={TFTP_MAC}"))
        .args(["-boot", "order=n"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting qemu-system-x86_64 (make deps installs it)")
}

const TFTP_MAC: &str = "52:54:00:b7:e2:02";

/// Legacy PXE the way a lab runs it with Debian's iPXE binaries, in one boot: the firmware (here
/// the NIC's own iPXE ROM) loads undionly.kpxe from bty-web's TFTP; the iPXE in it asks DHCP
/// again and, as QEMU's DHCP (like a lab's without a rule for iPXE's user class) names the same
/// file, asks bty-web's TFTP for undionly.kpxe again; bty-web recognises the chain loop and
/// answers with autoexec.ipxe, which chains its /pxe-bootstrap.ipxe, then /pxe/MAC.
#[test]
fn bios_pxe_through_bty_webs_tftp_reaches_the_bootstrap() {
    let ipxe = std::env::var_os("BTY_E2E_IPXE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("build/ipxe"));
    let kpxe = std::fs::metadata(ipxe.join("undionly.kpxe"))
        .unwrap_or_else(|e| panic!("{}/undionly.kpxe: {e}: run `make ipxe` first", ipxe.display()))
        .len();
    let out = repo().join("target/e2e/bios-tftp");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();

    let tftp_port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let state = std::env::temp_dir().join(format!("bty-e2e-tftp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let log = out.join("bty-web.log");
    let mut cmd = util::bty_web(&state);
    cmd.env("BTY_ADMIN_PASSWORD", "pw-for-tests")
        .env("BTY_TFTP_ENABLED", "true")
        .env("BTY_TFTP_LISTEN", format!("127.0.0.1:{tftp_port}"))
        .env("BTY_BOOT_IPXE_DIR", &ipxe)
        .env("BTY_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    let (child, addr) = util::spawn_web(cmd);
    let s = Server { child, addr, state };
    let cookie = s.login();

    // One boot: undionly.kpxe whole, then the same name again answered with the script, then
    // the bootstrap over HTTP and the machine's own script.
    let sent = format!("tftp: sent undionly.kpxe ({kpxe} bytes)");
    let contact = format!("GET /pxe/{} 200", TFTP_MAC.replace(':', "-"));
    let mut g = tftp_guest(tftp_port, "undionly.kpxe");
    wait_log(&log, &mut g, CYCLE, "contact at /pxe/MAC", |t| t.contains(&contact));
    let _ = g.kill();
    let _ = g.wait();
    let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
    let order = [
        sent.as_str(),
        "asks for undionly.kpxe again right after receiving it",
        "GET /pxe-bootstrap.ipxe 200",
        &contact,
    ];
    let at: Vec<Option<usize>> = order.iter().map(|m| text.find(m)).collect();
    assert!(
        at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1]),
        "expected {order:?} in this order; bty-web's log:\n{}",
        tail(&text)
    );
    let m = machine_of(&s, &cookie, TFTP_MAC);
    assert!(m["last_seen_at"].is_string(), "discovered at /pxe/MAC: {m}");
    eprintln!("e2e bios-tftp: undionly.kpxe, then autoexec.ipxe, from TFTP: machine discovered");
}
