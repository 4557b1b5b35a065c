//! A lab network of the test's own, the way a lab runs bty-web: a network namespace with a
//! bridge (util/netns.rs), bty-web with its TFTP server on the bridge's address, Debian's
//! dnsmasq as the lab's DHCP server fed exactly what `bty-web dhcp` prints (plus the lines every
//! lab has: the interface, the address range, the lease file), and QEMU guests on taps of the
//! bridge. Unlike e2e.rs (QEMU's user-mode network, whose DHCP gives one fixed answer), the
//! firmware here gets what the lab's DHCP server decides by client architecture, user class and
//! vendor class, so every boot path of the DHCP section of docs/pxe.md is checked against a real
//! DHCP server:
//!
//! - legacy BIOS over TFTP, UEFI PXE over TFTP, UEFI HTTP Boot, arm64 UEFI PXE and HTTP Boot
//!   (AAVMF), and BIOS and UEFI PXE behind a proxyDHCP, each until the machine's own script
//!   `/pxe/MAC` is asked for (bty-web's log says so);
//! - a mixed lab: three machines at once (BIOS, UEFI PXE, UEFI HTTP Boot) discovered, assigned
//!   an image through the API, flashed by the live environment (`make live`) from bty-web's image
//!   cache, booting their new disks.
//!
//! Every test keeps bty-web's log, dnsmasq's configuration and log and the guests' serial
//! consoles in target/e2e/lab/<test>/. Needs root, QEMU, dnsmasq (`make deps`), Debian's iPXE
//! binaries (`make ipxe`, or `BTY_E2E_IPXE_DIR`) and for the flash the live environment
//! (`make live`, or `BTY_E2E_BOOT_DIR`). It fails, never skips, when they are
//! missing: CI runs it.

use std::path::PathBuf;
use std::time::Duration;

use crate::util;
use crate::util::guest::{self, Guest, in_order, read_lossy, tail};
use crate::util::netns::{HTTP_PORT, Lab};

/// Firmware to iPXE to bty-web's bootstrap and the machine's script: well under a minute under
/// TCG; the bound leaves room for a loaded CI machine.
const TO_BOOTSTRAP: Duration = Duration::from_secs(240);

fn ipxe_dir() -> PathBuf {
    let dir = std::env::var_os("BTY_E2E_IPXE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("build/ipxe"));
    for f in ["undionly.kpxe", "ipxe.efi", "ipxe-arm64.efi"] {
        assert!(dir.join(f).is_file(), "{}/{f} is missing: run `make ipxe` first", dir.display());
    }
    dir
}

/// How a guest boots from the network.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Firmware {
    /// SeaBIOS with the NIC's option ROM (QEMU's is iPXE).
    Bios,
    /// OVMF's own PXE (no option ROM on the NIC: the firmware's virtio-net driver and PXE).
    UefiPxe,
    /// OVMF's own HTTP Boot: PXE turned off, so HTTP over IPv4 is the NIC's first boot option.
    UefiHttp,
    /// An arm64 machine (`qemu-system-aarch64 -M virt`) with AAVMF's own PXE.
    Arm64Pxe,
    /// The same with AAVMF's HTTP Boot.
    Arm64Http,
}

impl Firmware {
    fn arm64(self) -> bool {
        matches!(self, Firmware::Arm64Pxe | Firmware::Arm64Http)
    }
}

/// The lab's address-giving DHCP lines, which are not bty's: what a lab's DHCP server already
/// has besides the interface and the lease file.
fn range(lab: &Lab) -> String {
    let n = lab.net();
    format!("dhcp-range={n}.100,{n}.199,255.255.255.0,1h\n")
}

/// A guest's disk: its file and serial.
type Disk<'a> = Option<(&'a std::path::Path, &'a str)>;

/// Powers on a guest with no disk on a new tap of the lab.
fn power_on(lab: &mut Lab, fw: Firmware, mac: &str, name: &str) -> Guest {
    power_on_with(lab, fw, mac, name, None, 256)
}

/// Powers on a guest on a new tap of the lab, with a virtio disk after the NIC in the boot
/// order when one is given.
fn power_on_with(
    lab: &mut Lab,
    fw: Firmware,
    mac: &str,
    name: &str,
    disk: Disk,
    mem_mib: u32,
) -> Guest {
    let tap = lab.tap();
    let log = lab.log(&format!("serial-{name}.log"));
    let program = if fw.arm64() { "qemu-system-aarch64" } else { "qemu-system-x86_64" };
    let mut c = guest::qemu(lab.exec(program), mem_mib, &log);
    if let Some((file, serial)) = disk {
        c.arg("-drive")
            .arg(format!("file={},if=none,id=d0,format=raw", file.display()))
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive=d0,serial={serial},bootindex=2"));
    }
    // No option ROM for OVMF: the firmware's own driver and network boot are what is tested
    // (QEMU's default ROM would put iPXE there).
    let rom = if fw == Firmware::Bios { "" } else { ",romfile=" };
    c.arg("-netdev")
        .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1{rom}"))
        .args(["-boot", "order=n"]);
    match fw {
        Firmware::Bios => {}
        Firmware::UefiPxe => {
            c.args(["-bios", "/usr/share/ovmf/OVMF.fd"])
                .args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]);
        }
        Firmware::UefiHttp => {
            c.args(guest::ovmf_args());
        }
        Firmware::Arm64Pxe | Firmware::Arm64Http => {
            // AAVMF's code, and a variable store of the guest's own.
            let vars = lab.log(&format!("AAVMF_VARS-{name}.fd"));
            std::fs::copy("/usr/share/AAVMF/AAVMF_VARS.fd", &vars)
                .expect("copying AAVMF's variable store (make deps installs qemu-efi-aarch64)");
            c.args(["-M", "virt", "-cpu", "max"])
                .arg("-drive")
                .arg("if=pflash,format=raw,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd")
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
            if fw == Firmware::Arm64Http {
                c.args(["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n"]);
            }
            c.args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]);
        }
    }
    if fw != Firmware::Bios {
        // The lab has no IPv6 service: after iPXE's `exit` to the disk, OVMF's IPv6 boot
        // options on the NIC would each wait for their timeouts first.
        c.args(["-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=n"]);
    }
    Guest::start(c, log)
}

/// One guest of a case: its firmware, MAC, and what bty-web's log must show for it, in order,
/// before its `/pxe/MAC`.
type Case<'a> = (Firmware, &'a str, &'a [&'a str]);

/// Powers on the guests at once and waits until bty-web's log shows each one's `/pxe/MAC`;
/// then checks, from the log lines of each guest's address, that its steps came in order, and
/// that bty-web discovered it. Returns each guest's time from power-on to its `/pxe/MAC`.
fn reach_the_bootstrap(lab: &mut Lab, cases: &[Case]) -> Vec<Duration> {
    lab.assert_running();
    let web_log = lab.log("bty-web.log");
    let mut guests: Vec<Guest> =
        cases.iter().map(|(fw, mac, _)| power_on(lab, *fw, mac, &mac.replace(':', ""))).collect();
    let contact = |mac: &str| format!("GET /pxe/{} 200", mac.replace(':', "-"));
    let times: Vec<Duration> = guests
        .iter_mut()
        .zip(cases)
        .map(|(g, (_, mac, _))| {
            let c = contact(mac);
            g.wait_log(&web_log, TO_BOOTSTRAP, "contact at /pxe/MAC", |t| t.contains(&c))
        })
        .collect();
    drop(guests);
    let text = read_lossy(&web_log);
    for (_, mac, marks) in cases {
        let c = contact(mac);
        // The guest's address ends its contact's line; its TFTP lines name it as IP:PORT.
        let line = text.lines().find(|l| l.contains(&c)).unwrap_or_default();
        let ip = line.rsplit(' ').next().unwrap_or_default();
        let own: String = text
            .lines()
            .filter(|l| l.ends_with(&format!(" {ip}")) || l.contains(&format!(" {ip}:")))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut all: Vec<&str> = marks.to_vec();
        all.push(&c);
        assert!(
            in_order(&own, &all),
            "expected {all:?} in this order from {ip}; bty-web's log:\n{}",
            tail(&text)
        );
        let (st, body) = lab.api("GET", &format!("/machines/{mac}"), None);
        assert_eq!(st, 200, "the machine was discovered: {body}");
        assert!(body.contains("\"last_seen_at\":\""), "{body}");
    }
    times
}

/// dnsmasq's log (`--log-dhcp`).
fn dnsmasq_answers(lab: &Lab, name: &str) -> String {
    read_lossy(&lab.log(&format!("dnsmasq-{name}.log")))
}

/// Whether dnsmasq's log says it handed out `file`: as option 67 (an address-giving answer) or
/// as a proxyDHCP answer's boot file.
fn gave(log: &str, file: &str) -> bool {
    log.contains(&format!("bootfile-name  {file}"))
        || log.contains(&format!("bootfile name: {file}"))
}

/// (a) Legacy BIOS with the `tftp` configuration of docs/pxe.md. QEMU's BIOS network boot is the
/// NIC's option ROM, which is iPXE: it sends the user class `iPXE`, so it gets `autoexec.ipxe`
/// at once, as a lab machine whose NIC runs iPXE does. The firmware half of a machine with a
/// vendor's PXE ROM (no user class, architecture 0: `undionly.kpxe` over TFTP) is asked by a
/// stand-in, busybox udhcpc with the PXE vendor class and option 93 = 0, then tftp-hpa.
#[test]
fn bios_pxe_over_tftp_with_dnsmasq_reaches_the_bootstrap() {
    let ipxe = ipxe_dir();
    let mut lab = Lab::new("bios-tftp");
    lab.start_web(&ipxe, &[]);
    let conf = lab.dhcp_config(&["--mode", "tftp"]);
    lab.start_dnsmasq("dhcp", &format!("{}{conf}", range(&lab)));

    let lease = lab.dhcp_as_firmware("PXEClient:Arch:00000:UNDI:002001", &["0x5d:0000"]);
    let has = |lease: &str, line: &str| lease.lines().any(|l| l == line);
    assert!(has(&lease, "boot_file=undionly.kpxe"), "{lease}");
    assert!(has(&lease, &format!("siaddr={}", lab.addr)), "{lease}");
    let got = lab.tftp_get("undionly.kpxe");
    assert!(got == std::fs::read(ipxe.join("undionly.kpxe")).unwrap(), "undionly.kpxe's bytes");
    // UEFI PXE firmware (architecture 7) gets ipxe.efi the same way.
    let lease = lab.dhcp_as_firmware("PXEClient:Arch:00007:UNDI:003000", &["0x5d:0007"]);
    assert!(has(&lease, "boot_file=ipxe.efi"), "{lease}");

    let t = reach_the_bootstrap(
        &mut lab,
        &[(
            Firmware::Bios,
            "52:54:00:1a:b0:01",
            &["tftp: sent autoexec.ipxe", "GET /pxe-bootstrap.ipxe 200"],
        )],
    )[0];
    let d = dnsmasq_answers(&lab, "dhcp");
    assert!(gave(&d, "autoexec.ipxe"), "{}", tail(&d));
    eprintln!("lab bios-tftp: /pxe/MAC after {t:.1?}");
}

/// (b) UEFI PXE (OVMF's own): `ipxe.efi` over TFTP, then iPXE's user class gets autoexec.ipxe.
#[test]
fn uefi_pxe_over_tftp_with_dnsmasq_reaches_the_bootstrap() {
    let mut lab = Lab::new("uefi-pxe");
    lab.start_web(&ipxe_dir(), &[]);
    let conf = lab.dhcp_config(&["--mode", "tftp"]);
    lab.start_dnsmasq("dhcp", &format!("{}{conf}", range(&lab)));
    let t = reach_the_bootstrap(
        &mut lab,
        &[(
            Firmware::UefiPxe,
            "52:54:00:1a:b0:02",
            &["tftp: sent ipxe.efi", "tftp: sent autoexec.ipxe", "GET /pxe-bootstrap.ipxe 200"],
        )],
    )[0];
    // iPXE fetched autoexec.ipxe through the firmware's TFTP itself (the server that sent it):
    // it asked DHCP nothing.
    let d = dnsmasq_answers(&lab, "dhcp");
    assert!(gave(&d, "ipxe.efi"), "{}", tail(&d));
    eprintln!("lab uefi-pxe: /pxe/MAC after {t:.1?}");
}

/// (c) UEFI HTTP Boot (OVMF's own): the firmware's HTTPClient request is answered with
/// bty-web's `ipxe.efi` URL, which runs the `autoexec.ipxe` beside it.
#[test]
fn uefi_http_boot_with_dnsmasq_reaches_the_bootstrap() {
    let mut lab = Lab::new("uefi-http");
    lab.start_web(&ipxe_dir(), &[]);
    let conf = lab.dhcp_config(&["--mode", "http-boot"]);
    lab.start_dnsmasq("dhcp", &format!("{}{conf}", range(&lab)));
    let t = reach_the_bootstrap(
        &mut lab,
        &[(
            Firmware::UefiHttp,
            "52:54:00:1a:b0:03",
            &[
                "GET /boot/ipxe.efi 200",
                "GET /boot/autoexec.ipxe 200",
                "GET /pxe-bootstrap.ipxe 200",
            ],
        )],
    )[0];
    let d = dnsmasq_answers(&lab, "dhcp");
    let url = format!("http://{}:{HTTP_PORT}/boot/ipxe.efi", lab.addr);
    assert!(gave(&d, &url), "{}", tail(&d));
    assert!(d.contains("tags: httpboot"), "{}", tail(&d));
    eprintln!("lab uefi-http: /pxe/MAC after {t:.1?}");
}

/// (d) proxyDHCP: one dnsmasq gives addresses only (the lab's router), a second one in the
/// `proxy` configuration of docs/pxe.md gives boot options only. A BIOS guest (the NIC's iPXE, by its
/// user class) and a UEFI PXE guest (OVMF's own PXE, through a `pxe-service` line) boot at once.
/// (c') arm64 machines (`qemu-system-aarch64 -M virt`, AAVMF) in the same lab, both ways at
/// once: the firmware's PXE (client architecture 11) gets `ipxe-arm64.efi` over TFTP, its HTTP
/// Boot (architecture 19) gets bty-web's `/boot/ipxe-arm64.efi`; each iPXE then runs the
/// `autoexec.ipxe` beside it. A PXE stand-in (udhcpc with option 93 = 11) checks the answer
/// alone.
#[test]
fn arm64_pxe_and_http_boot_with_dnsmasq_reach_the_bootstrap() {
    let mut lab = Lab::new("arm64");
    lab.start_web(&ipxe_dir(), &[]);
    let conf = lab.dhcp_config(&["--mode", "all"]);
    lab.start_dnsmasq("dhcp", &format!("{}{conf}", range(&lab)));
    let lease = lab.dhcp_as_firmware("PXEClient:Arch:00011:UNDI:003000", &["0x5d:000b"]);
    assert!(lease.lines().any(|l| l == "boot_file=ipxe-arm64.efi"), "{lease}");
    let times = reach_the_bootstrap(
        &mut lab,
        &[
            (
                Firmware::Arm64Pxe,
                "52:54:00:1a:a6:01",
                &[
                    "tftp: sent ipxe-arm64.efi",
                    "tftp: sent autoexec.ipxe",
                    "GET /pxe-bootstrap.ipxe 200",
                ],
            ),
            (
                Firmware::Arm64Http,
                "52:54:00:1a:a6:02",
                &[
                    "GET /boot/ipxe-arm64.efi 200",
                    "GET /boot/autoexec.ipxe 200",
                    "GET /pxe-bootstrap.ipxe 200",
                ],
            ),
        ],
    );
    let d = dnsmasq_answers(&lab, "dhcp");
    assert!(gave(&d, "ipxe-arm64.efi"), "{}", tail(&d));
    let url = format!("http://{}:{HTTP_PORT}/boot/ipxe-arm64.efi", lab.addr);
    assert!(gave(&d, &url), "{}", tail(&d));
    eprintln!("lab arm64: /pxe/MAC after {:.1?} (PXE), {:.1?} (HTTP Boot)", times[0], times[1]);
}

#[test]
fn pxe_behind_a_proxy_dhcp_reaches_the_bootstrap() {
    let mut lab = Lab::new("proxy");
    lab.start_web(&ipxe_dir(), &[]);
    lab.start_dnsmasq("router", &range(&lab));
    let conf = lab.dhcp_config(&["--mode", "proxy"]);
    lab.start_dnsmasq("proxy", &conf);
    let t = reach_the_bootstrap(
        &mut lab,
        &[
            (
                Firmware::Bios,
                "52:54:00:1a:b0:04",
                &["tftp: sent autoexec.ipxe", "GET /pxe-bootstrap.ipxe 200"],
            ),
            (
                Firmware::UefiPxe,
                "52:54:00:1a:b0:05",
                &["tftp: sent ipxe.efi", "tftp: sent autoexec.ipxe", "GET /pxe-bootstrap.ipxe 200"],
            ),
        ],
    );
    let router = dnsmasq_answers(&lab, "router");
    assert!(router.contains("DHCPACK(br0)"), "the router gave the addresses:\n{}", tail(&router));
    assert!(!gave(&router, ""), "the router gave no boot file:\n{}", tail(&router));
    let proxy = dnsmasq_answers(&lab, "proxy");
    assert!(gave(&proxy, "autoexec.ipxe"), "{}", tail(&proxy));
    assert!(gave(&proxy, "ipxe.efi"), "{}", tail(&proxy));
    assert!(!proxy.contains("DHCPACK"), "the proxy gave no address:\n{}", tail(&proxy));
    eprintln!("lab proxy: /pxe/MAC after {:.1?} (BIOS), {:.1?} (UEFI PXE)", t[0], t[1]);
}

/// From power-on to a flashed disk's marker: firmware, iPXE, the live environment's kernel (~30 s
/// under TCG), the flash, the reboot and the disk, for three guests sharing two cores.
const CYCLE: Duration = Duration::from_secs(420);

/// (e) A mixed lab with `--mode all`: a BIOS, a UEFI PXE and a UEFI HTTP Boot machine at once are
/// discovered, assigned an image through the API, flashed by the live environment (`make live`)
/// from bty-web's image cache, which pulls the image from its origin once, post `done` and boot
/// their new disks, which hold the image's bytes.
#[test]
fn three_machines_are_flashed_from_the_cache_and_boot_their_new_disks() {
    const OLD: &str = "BTY-LAB-OLD-DISK";
    const NEW: &str = "BTY-LAB-NEW-DISK";
    let live = guest::live_dir();
    let mut lab = Lab::new("three");
    let cache = lab.tmp.join("cache");
    lab.start_web(
        &ipxe_dir(),
        &[
            ("BTY_PATHS_BOOT_DIR", live.to_str().unwrap()),
            ("BTY_CACHE_DIR", cache.to_str().unwrap()),
        ],
    );
    let conf = lab.dhcp_config(&[]);
    assert!(conf.starts_with("# bty-web dhcp --mode all --dnsmasq"), "{conf}");
    lab.start_dnsmasq("dhcp", &format!("{}{conf}", range(&lab)));

    // The image's origin: a web server on the namespace's loopback, which bty-web reaches and
    // the guests do not (their 127.0.0.1 is their own).
    let out = lab.out.clone();
    // `make bench-e2e` sets a bigger image (BTY_E2E_IMAGE_MIB) to time three flashes at once.
    let mib: usize =
        std::env::var("BTY_E2E_IMAGE_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let new = guest::image(NEW, 88, mib << 20, &out);
    let packed = util::zstd(&new);
    let sha = util::sha256(&packed);
    let origin = lab.tmp.join("origin");
    std::fs::create_dir_all(&origin).unwrap();
    std::fs::write(origin.join("disk.img.zst"), &packed).unwrap();
    std::fs::write(origin.join("disk.img.zst.sha256"), format!("{sha}  disk.img.zst\n")).unwrap();
    let origin_log = lab.log("origin.log");
    let mut c = lab.exec("python3");
    c.args(["-u", "-m", "http.server", "8081", "--bind", "127.0.0.1", "--directory"])
        .arg(&origin)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(lab.log("origin.out")).unwrap())
        .stderr(std::fs::File::create(&origin_log).unwrap());
    let child = c.spawn().expect("starting python3's http.server");
    lab.keep("the origin web server", child);

    let machines = [
        (Firmware::Bios, "52:54:00:1a:b0:11", "BTYLAB0011"),
        (Firmware::UefiPxe, "52:54:00:1a:b0:12", "BTYLAB0012"),
        (Firmware::UefiHttp, "52:54:00:1a:b0:13", "BTYLAB0013"),
    ];
    let disks: Vec<PathBuf> = machines
        .iter()
        .map(|(_, _, serial)| {
            let disk = lab.tmp.join(format!("{serial}.raw"));
            let mut old = guest::image(OLD, 7, 8 << 20, &out);
            old.resize((64 << 20).max(new.len() + (8 << 20)), 0);
            std::fs::write(&disk, &old).unwrap();
            disk
        })
        .collect();
    let web_log = lab.log("bty-web.log");

    // 1. First power-on: each unknown MAC asks for its script and is recorded.
    let mut guests: Vec<Guest> = machines
        .iter()
        .zip(&disks)
        .map(|((fw, mac, serial), disk)| {
            power_on_with(&mut lab, *fw, mac, &format!("{serial}-1"), Some((disk, serial)), 512)
        })
        .collect();
    for (g, (_, mac, _)) in guests.iter_mut().zip(&machines) {
        let c = format!("GET /pxe/{} 200", mac.replace(':', "-"));
        g.wait_log(&web_log, TO_BOOTSTRAP, "contact at /pxe/MAC", |t| t.contains(&c));
    }
    drop(guests);
    for (_, mac, _) in &machines {
        let (st, body) = lab.api("GET", &format!("/machines/{mac}"), None);
        assert_eq!(st, 200, "{mac} was discovered: {body}");
    }

    // 2. The operator adds the image (digest from its manifest) and assigns it to all three.
    let (st, body) = lab.api(
        "POST",
        "/catalog/entries",
        Some(
            r#"{"image_url":"http://127.0.0.1:8081/disk.img.zst","sha_url":"http://127.0.0.1:8081/disk.img.zst.sha256"}"#,
        ),
    );
    assert!(st == 200 || st == 201, "{st} {body}");
    let entry: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(entry["disk_image_sha"].as_str(), Some(sha.as_str()), "{entry}");
    let image_ref = entry["bty_image_ref"].as_str().unwrap().to_string();
    for (_, mac, serial) in &machines {
        let put = format!(
            r#"{{"boot_mode":"bty-flash-once","bty_image_ref":"{image_ref}","target_disk_serial":"{serial}"}}"#
        );
        let (st, body) = lab.api("PUT", &format!("/machines/{mac}"), Some(&put));
        assert_eq!(st, 200, "{body}");
    }

    // 3. Next power-on: each flashes unattended, posts done, reboots and boots its new disk.
    let mut guests: Vec<Guest> = machines
        .iter()
        .zip(&disks)
        .map(|((fw, mac, serial), disk)| {
            power_on_with(&mut lab, *fw, mac, &format!("{serial}-2"), Some((disk, serial)), 512)
        })
        .collect();
    // All three watched together, so each time is when that guest got there, not when the
    // test looked (the benchmark in bench/RESULTS.md reads these lines).
    let mut seen: Vec<[Option<Duration>; 2]> = vec![[None; 2]; guests.len()];
    let started = std::time::Instant::now();
    while seen.iter().any(|s| s[1].is_none()) {
        for (g, s) in guests.iter_mut().zip(seen.iter_mut()) {
            for (i, marker) in ["bty: flash complete; rebooting", NEW].into_iter().enumerate() {
                if s[i].is_none() && g.serial().contains(marker) {
                    s[i] = Some(g.started.elapsed());
                }
            }
        }
        if started.elapsed() > CYCLE {
            // Name what is missing, with the serial console of the first guest missing it.
            let i = seen.iter().position(|s| s[1].is_none()).unwrap_or(0);
            guests[i].wait_for(NEW, Duration::from_secs(1));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for (s, (fw, _, _)) in seen.iter().zip(&machines) {
        let done = s[0].unwrap_or_else(|| panic!("{fw:?} booted the new disk without `done`"));
        let t = s[1].unwrap_or_default();
        eprintln!("lab three {fw:?}: power-on to done {done:.1?}, to the new disk {t:.1?}");
    }
    drop(guests);

    // 4. bty-web recorded it, the disks hold the image, and the origin served it once.
    for ((_, mac, _), disk) in machines.iter().zip(&disks) {
        let (st, body) = lab.api("GET", &format!("/machines/{mac}"), None);
        assert_eq!(st, 200, "{body}");
        let m: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(m["last_status"], "done", "{m}");
        assert!(m["last_flashed_at"].is_string(), "{m}");
        let written = std::fs::read(disk).unwrap();
        assert!(written[..new.len()] == new[..], "{mac}'s disk holds the image's bytes");
    }
    let pulls = read_lossy(&origin_log).matches("\"GET /disk.img.zst HTTP").count();
    assert_eq!(pulls, 1, "bty-web pulled the image once:\n{}", read_lossy(&origin_log));
    assert!(cache.join("sha256").join(&sha).is_file(), "the image is in the cache");
}

/// `bty-web dhcp` on the command line: the default is `all` for dnsmasq, ISC has no proxy mode,
/// and a bad mode or address is refused with the value named. No namespace needed.
#[test]
fn bty_web_dhcp_prints_the_configuration_and_refuses_what_it_cannot_say() {
    let dir = util::TestDir::new("dhcp-cli");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bty-web"))
            .arg("dhcp")
            .args(args)
            .arg("--state-dir")
            .arg(&dir.0)
            .env_remove("BTY_CONFIG_FILE")
            .env_remove("BTY_CONFIG_DIR")
            .env_remove("BTY_SERVER_PUBLIC_URL")
            .output()
            .expect("running bty-web dhcp")
    };
    let o = run(&["--addr", "192.168.1.10"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.starts_with(
            "# bty-web dhcp --mode all --dnsmasq: bty-web at 192.168.1.10, HTTP port 8080\n"
        ),
        "{out}"
    );
    assert!(out.contains("dhcp-boot=tag:bios,tag:!ipxe,undionly.kpxe,,192.168.1.10\n"), "{out}");
    assert!(out.contains("http://192.168.1.10:8080/boot/ipxe.efi\n"), "{out}");

    let o = run(&["--addr", "10.0.0.5", "--listen", "0.0.0.0:8081", "--isc", "--mode", "tftp"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("next-server 10.0.0.5;") && !out.contains("HTTPClient"), "{out}");
    // The port is the listen port; iPXE gets autoexec.ipxe over TFTP in this mode.
    assert!(
        out.starts_with("# bty-web dhcp --mode tftp --isc: bty-web at 10.0.0.5, HTTP port 8081\n"),
        "{out}"
    );
    assert!(out.contains("filename \"autoexec.ipxe\";"), "{out}");

    for (args, want) in [
        (&["--addr", "10.0.0.5", "--isc", "--mode", "proxy"][..], "no proxyDHCP mode"),
        (&["--addr", "10.0.0.5", "--mode", "pxe"][..], "invalid DHCP mode \"pxe\""),
        (&["--addr", "lab.example"][..], "invalid --addr \"lab.example\""),
    ] {
        let o = run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?} printed nothing");
    }
}
