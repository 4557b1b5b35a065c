//! arm64 machines end to end: a `qemu-system-aarch64 -M virt` guest with Debian's AAVMF
//! firmware (TCG), on QEMU's user-mode network, as tests/it/e2e.rs does for x86_64. The
//! firmware's own PXE loads Debian's arm64 iPXE (`make ipxe`) from QEMU's TFTP server with
//! bty-web's `autoexec.ipxe` beside it; from there it is bty-web's per-MAC script, which picks
//! the arm64 live environment (`make live ARCH=arm64`) by iPXE's `${buildarch}`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::guest::{self, Guest};
use crate::util::httpd::Httpd;
use crate::util::{self, Server, TestDir};

const MAC: &str = "52:54:00:b7:a6:01";
const DISK_SERIAL: &str = "BTYA640001";
const OLD_MARKER: &str = "BTY-ARM64-OLD-DISK";
const NEW_MARKER: &str = "BTY-ARM64-NEW-DISK";
/// A PXE cycle under TCG: AAVMF, iPXE, the arm64 kernel, bty, reboot, the disk.
const CYCLE: Duration = Duration::from_secs(400);

/// AAVMF's code and a fresh copy of its variable store in `dir`, as pflash drives.
pub(crate) fn aavmf(dir: &Path) -> Vec<String> {
    let code = Path::new("/usr/share/AAVMF/AAVMF_CODE.fd");
    assert!(code.is_file(), "{} is missing (make deps installs qemu-efi-aarch64)", code.display());
    let vars = dir.join("AAVMF_VARS.fd");
    std::fs::copy("/usr/share/AAVMF/AAVMF_VARS.fd", &vars).expect("copying AAVMF's variable store");
    vec![
        "-drive".into(),
        format!("if=pflash,format=raw,readonly=on,file={}", code.display()),
        "-drive".into(),
        format!("if=pflash,format=raw,file={}", vars.display()),
    ]
}

/// A `-M virt` guest with AAVMF, `mem_mib` of memory, its console (PL011) to `log`.
fn arm64_guest(dir: &Path, mem_mib: u32, log: &Path) -> Command {
    let mut c = guest::qemu(Command::new("qemu-system-aarch64"), mem_mib, log);
    c.args(["-M", "virt", "-cpu", "max"]).args(aavmf(dir));
    c
}

fn disk_spec(path: &Path) -> String {
    format!("if=none,id=d0,format=raw,file={}", path.display())
}

/// The disk images the e2e tests flash carry `\EFI\BOOT\BOOTAA64.EFI` beside the x86_64 app:
/// AAVMF boots it from a virtio disk and it prints its marker, so a flashed arm64 machine can
/// be seen booting its new disk.
#[test]
fn the_test_images_boot_on_arm64_uefi() {
    let dir = TestDir::new("e2e-arm64-esp");
    let img = dir.path("disk.img");
    std::fs::write(&img, guest::image("BTY-ARM64-DISK", 0xa6, 16 << 20, &dir.0)).unwrap();
    let log = dir.path("serial.log");
    let mut c = arm64_guest(&dir.0, 512, &log);
    c.args([
        "-net",
        "none",
        "-drive",
        &disk_spec(&img),
        "-device",
        "virtio-blk-pci,drive=d0,bootindex=0",
    ]);
    let mut g = Guest::start(c, log);
    let t = g.wait_for("BTY-ARM64-DISK", Duration::from_secs(240));
    eprintln!("arm64: AAVMF to the disk's EFI application in {:.1} s", t.as_secs_f64());
}

/// bty-web's generated `autoexec.ipxe`, as a machine that reaches it at `host` gets it.
fn autoexec(s: &Server, host: &str) -> Vec<u8> {
    let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
    write!(c, "GET /boot/autoexec.ipxe HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains(&format!("chain http://{host}/pxe-bootstrap.ipxe")), "{body}");
    body.as_bytes().to_vec()
}

fn machine(s: &Server, cookie: &str) -> serde_json::Value {
    let (st, _, body) = s.call("GET", &format!("/machines/{MAC}"), Some(cookie), "");
    assert_eq!(st, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The arm64 machine's life: discovered and inventoried by the arm64 live environment, then an
/// unattended flash, then its new disk boots (its `BOOTAA64.EFI` prints the marker).
#[test]
fn arm64_machine_is_discovered_flashed_and_boots_its_new_disk() {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/e2e/arm64");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let live = guest::live_dir();
    let version = env!("CARGO_PKG_VERSION");
    for ext in ["vmlinuz", "initrd"] {
        let f = live.join(format!("bty-netboot-arm64-v{version}.{ext}"));
        assert!(f.is_file(), "{} is missing: run `make live ARCH=arm64` first", f.display());
    }
    let ipxe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("build/ipxe/ipxe-arm64.efi");
    assert!(ipxe.is_file(), "{} is missing: run `make ipxe` first", ipxe.display());
    // With the image cache: bty-web pulls the image from the test's server on 127.0.0.1 (which
    // the guest cannot reach) and the plan sends the guest to the cache.
    let cache = out.join("cache");
    let s = Server::start_env(
        "e2e-arm64",
        &[
            ("BTY_PATHS_BOOT_DIR", live.to_str().unwrap()),
            ("BTY_CACHE_DIR", cache.to_str().unwrap()),
        ],
    );
    let port = s.addr.rsplit(':').next().unwrap().to_string();
    let cookie = s.login();

    // QEMU's TFTP server hands AAVMF the arm64 iPXE and, beside it, bty-web's autoexec.ipxe.
    let tftp = out.join("tftp");
    std::fs::create_dir_all(&tftp).unwrap();
    std::fs::copy(&ipxe, tftp.join("ipxe-arm64.efi")).unwrap();
    std::fs::write(tftp.join("autoexec.ipxe"), autoexec(&s, &format!("10.0.2.2:{port}"))).unwrap();

    let http = Httpd::start();
    let http_port = http.addr.rsplit(':').next().unwrap().to_string();
    let new = guest::image(NEW_MARKER, 0xa7, 8 << 20, &out);
    let packed = util::zstd(&new);
    let manifest = format!("{}  disk.img.zst\n", util::sha256(&packed));
    http.file("/disk.img.zst", packed, true, None);
    http.file("/disk.img.zst.sha256", manifest.into_bytes(), false, None);
    let disk = out.join("disk.raw");
    let mut old = guest::image(OLD_MARKER, 0xa8, 8 << 20, &out);
    old.resize(64 << 20, 0);
    std::fs::write(&disk, &old).unwrap();

    let power_on = |name: &str| {
        let log = out.join(name);
        let mut c = arm64_guest(&out, 1024, &log);
        c.arg("-netdev")
            .arg(format!("user,id=n0,tftp={},bootfile=ipxe-arm64.efi", tftp.display()))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={MAC},bootindex=1"))
            .arg("-drive")
            .arg(disk_spec(&disk))
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive=d0,serial={DISK_SERIAL},bootindex=2"))
            // The firmware's IPv4 PXE loads iPXE; its IPv6 PXE would only wait for timeouts
            // after iPXE hands back to it on the way to the disk.
            .args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]);
        Guest::start(c, log)
    };

    // a. Discovered and inventoried by the arm64 live environment, then the old disk boots.
    let mut g = power_on("boot-1.log");
    let t = g.wait_for("bty: inventory posted; rebooting", CYCLE);
    eprintln!("e2e arm64: power-on to the inventory posted {:.1} s", t.as_secs_f64());
    g.wait_for(OLD_MARKER, CYCLE);
    drop(g);
    // b. The image, assigned with a one-time flash of that disk.
    crate::e2e::inventoried_then_assigned(&s, &cookie, MAC, DISK_SERIAL, &http_port);

    // c. Flashed unattended; the new disk's EFI application boots.
    let mut g = power_on("boot-2.log");
    g.wait_for("bty: auto-flash starting", CYCLE);
    let done = g.wait_for("bty: flash complete; rebooting", CYCLE);
    let t = g.wait_for(NEW_MARKER, CYCLE);
    eprintln!(
        "e2e arm64: power-on to done {:.1} s, to the new disk's EFI application {:.1} s",
        done.as_secs_f64(),
        t.as_secs_f64()
    );
    drop(g);
    let m = machine(&s, &cookie);
    assert_eq!(m["last_status"], "done", "{m}");
    let written = std::fs::read(&disk).unwrap();
    assert!(written[..new.len()] == new[..], "the disk holds the image's bytes");
    let _ = std::fs::remove_file(&disk);
}
