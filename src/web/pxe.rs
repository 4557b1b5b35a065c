//! The per-MAC boot policy: what `GET /pxe/{mac}` answers and what `/pxe/{mac}/plan` tells the
//! live environment, decided by one pure function from the machine's row.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::web::config::Settings;
use crate::web::db::{Capped, CatalogEntry, Db, Machine};
use crate::web::metrics::Metrics;
use crate::wire::{BootMode, Plan, PlanMode};

/// What a machine gets on this contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Boot the local disk (firmware order on UEFI, sanboot on BIOS).
    Disk { reason: String, once: bool },
    /// Chain the live environment, whose plan will be in this mode (flash, interactive or
    /// inventory).
    LiveEnv { mode: PlanMode, reason: String },
    /// Cannot act: say why, then hand back to the firmware boot order.
    Exit { reason: String },
}

impl Decision {
    pub fn reason(&self) -> &str {
        match self {
            Decision::Disk { reason, .. }
            | Decision::LiveEnv { reason, .. }
            | Decision::Exit { reason } => reason,
        }
    }
}

/// Decides from the row (and the catalog entry of its image, if it exists).
pub fn decide(m: &Machine, image: Option<&CatalogEntry>) -> Decision {
    let disk = |reason: &str, once| Decision::Disk { reason: reason.into(), once };
    let live = |mode, reason: &str| Decision::LiveEnv { mode, reason: reason.into() };
    let mode = m.boot_mode;
    match mode {
        BootMode::Tui => live(PlanMode::Interactive, "boot mode bty-tui: the wizard"),
        BootMode::Inventory if m.boot_disk_next => {
            disk("inventory collected: booting the disk once, then re-arming", true)
        }
        BootMode::Inventory => {
            live(PlanMode::Inventory, "boot mode bty-inventory: collecting the disk inventory")
        }
        BootMode::FlashOnce | BootMode::FlashAlways => {
            if m.target_disk_serial.is_none() {
                return Decision::Exit {
                    reason: format!(
                        "boot mode {mode} needs a target disk serial: pick one on the machine page"
                    ),
                };
            }
            if image.is_none() {
                return Decision::Exit {
                    reason: match &m.bty_image_ref {
                        Some(r) => format!(
                            "image {} is no longer in the catalog: assign another",
                            &r[..r.len().min(12)]
                        ),
                        None => "no image assigned: assign one on the machine page".into(),
                    },
                };
            }
            if mode == BootMode::FlashOnce && m.last_flashed_at.is_some() {
                disk(
                    "flashed once already: booting the disk until the machine is saved again",
                    false,
                )
            } else if mode == BootMode::FlashAlways && m.boot_disk_next {
                disk("flashed: booting the new disk once, the next boot flashes again", true)
            } else {
                live(PlanMode::Flash, "flash pending: chaining the live environment")
            }
        }
        BootMode::IpxeExit => disk("boot mode ipxe-exit: local disk", false),
    }
}

/// The iPXE script for a decision. `host` was allow-listed by the caller; `mac` is normalised.
/// The live environment's kernel and initrd file names, per architecture.
pub struct LiveFiles<'a> {
    pub x86_64: (&'a str, &'a str),
    pub arm64: (&'a str, &'a str),
}

pub fn script(d: &Decision, m: &Machine, host: &str, live: &LiveFiles<'_>) -> String {
    match d {
        Decision::Disk { .. } => {
            let drive = m.sanboot_drive.as_deref().unwrap_or("0x80");
            format!(
                "#!ipxe\n# {}\niseq ${{platform}} efi && exit ||\nsanboot --no-describe --drive {drive} || exit\n",
                d.reason()
            )
        }
        // One script for both architectures: iPXE knows which it was built for. `boot` does not
        // return when it works, and a failed command ends an iPXE script, so x86_64 never runs
        // into the arm64 lines.
        // `initrd=initrd` names the initrd for the kernel's EFI stub, which loads it itself on
        // UEFI with iPXE builds before 2022 (no LoadFile2 protocol); BIOS kernels ignore it.
        // arm64 gets no console=: its firmware describes the console (ACPI SPCR, device tree)
        // and the kernel finds it there; a console=ttyS0 would send the output nowhere.
        Decision::LiveEnv { .. } => {
            let mac = &m.mac;
            let (kernel, initrd) = live.x86_64;
            let (kernel_arm64, initrd_arm64) = live.arm64;
            format!(
                "#!ipxe\n# {}\niseq ${{buildarch}} arm64 && goto arm64 ||\n\
                 kernel http://{host}/boot/{kernel}?mac={mac} initrd=initrd console=tty0 console=ttyS0,115200 bty.server=http://{host} bty.mac={mac}\n\
                 initrd --name initrd http://{host}/boot/{initrd}?mac={mac}\nboot\n\
                 :arm64\n\
                 kernel http://{host}/boot/{kernel_arm64}?mac={mac} initrd=initrd bty.server=http://{host} bty.mac={mac}\n\
                 initrd --name initrd http://{host}/boot/{initrd_arm64}?mac={mac}\nboot\n",
                d.reason()
            )
        }
        Decision::Exit { reason } => exit_script(reason),
    }
}

/// Says why on the console, then hands back to the firmware boot order.
pub fn exit_script(reason: &str) -> String {
    format!("#!ipxe\necho bty: {reason}\nsleep 5\nexit\n")
}

/// Deletes the unclaimed discoveries not seen for `[pxe] discovered_ttl_days` (0: keeps them);
/// run at start and then every minute by the scheduler. Returns the MACs that went.
pub fn expire_discovered(db: &Db, settings: &Settings) -> Vec<String> {
    let days = settings.pxe_limit("discovered_ttl_days");
    if days == 0 {
        return Vec::new();
    }
    match db.expire_discovered(days) {
        Ok(gone) => {
            if !gone.is_empty() {
                crate::info!(
                    "expired {} discovered machine(s) not seen for {days} day(s)",
                    gone.len()
                );
            }
            gone
        }
        Err(e) => {
            crate::warn!("expiring stale discovered machines: {e}");
            Vec::new()
        }
    }
}

/// Source addresses the discovery rate remembers within one minute; an address beyond them is
/// refused until the minute ends, so a client spraying addresses cannot grow the limiter.
const ADDRESSES_KEPT: usize = 16_384;
/// At most one `pxe.discovery.capped` event per cap this often.
const NOTICE_EVERY: Duration = Duration::from_secs(300);

/// The guards on PXE discovery outside the database: the per-address rate of new MACs and the
/// throttle of the events that say a cap bit.
pub struct Discovery {
    /// New MACs per source address per minute; 0: no limit.
    per_minute: u64,
    /// The current one-minute window: when it began and the discoveries per address in it.
    window: Mutex<(Instant, HashMap<Option<IpAddr>, u64>)>,
    /// When each cap last wrote its event, by `Capped` index.
    noticed: Mutex<[Option<Instant>; 3]>,
    /// `pxe.orphan` events in the current minute: when it began, how many were logged, and
    /// how many were not since the last one that was.
    orphans: Mutex<(Instant, u32, u64)>,
}

/// `pxe.orphan` events logged per minute, all clients together. Each is a write transaction,
/// and a client posting for random MACs would otherwise flush the event log (it keeps the
/// newest 100,000) in minutes; a real orphan (a machine deleted while its live environment
/// runs) posts a handful.
const ORPHANS_PER_MINUTE: u32 = 10;

impl Discovery {
    pub fn new(per_minute: u64) -> Discovery {
        Discovery {
            per_minute,
            window: Mutex::new((Instant::now(), HashMap::new())),
            noticed: Mutex::new([None; 3]),
            orphans: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// Whether a `pxe.orphan` event may be logged now; if so, how many were left out since the
    /// last one (for its summary).
    pub fn orphan_event(&self) -> Option<u64> {
        let mut w = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        if w.0.elapsed() >= Duration::from_secs(60) {
            (w.0, w.1) = (Instant::now(), 0);
        }
        if w.1 >= ORPHANS_PER_MINUTE {
            w.2 += 1;
            return None;
        }
        w.1 += 1;
        Some(std::mem::take(&mut w.2))
    }

    /// Takes one discovery from `ip`'s allowance for this minute; false when it has none left.
    /// IPv6 addresses count by /64: one host picks any address in its prefix.
    pub fn admit(&self, ip: Option<IpAddr>) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let key = ip.map(crate::web::http::addr_group);
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.0.elapsed() >= Duration::from_secs(60) {
            *w = (Instant::now(), HashMap::new());
        }
        if w.1.len() >= ADDRESSES_KEPT && !w.1.contains_key(&key) {
            return false;
        }
        let n = w.1.entry(key).or_insert(0);
        if *n >= self.per_minute {
            return false;
        }
        *n += 1;
        true
    }

    /// Counts a refusal by `cap` and, at most once per `NOTICE_EVERY` per cap, records a
    /// `pxe.discovery.capped` event with the count so far: a flood writes one event, not one
    /// per contact. `limit` describes the setting that bit.
    pub fn refused(&self, db: &Db, metrics: &Metrics, cap: Capped, limit: &str) {
        let i = cap as usize;
        let total = metrics.growth_refused[i].fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut noticed = self.noticed.lock().unwrap_or_else(|p| p.into_inner());
            if noticed[i].is_some_and(|at| at.elapsed() < NOTICE_EVERY) {
                return;
            }
            noticed[i] = Some(Instant::now());
        }
        let (reason, what) = match cap {
            Capped::MaxDiscovered => {
                ("max_discovered", "unknown MACs are not recorded (answered with exit)")
            }
            Capped::Rate => ("rate", "unknown MACs from this address are not recorded"),
            Capped::LshwTotal => ("lshw_total", "new lshw blobs are dropped (disks are kept)"),
        };
        let message = format!("{limit} reached: {what}; {total} refused so far");
        crate::warn!("{message}");
        db.event(
            "pxe.discovery.capped",
            None,
            &message,
            Some(serde_json::json!({ "reason": reason, "limit": limit, "refused": total })),
        );
    }
}

/// The name under which bty-web generates the second stage for iPXE binaries: Debian's carry no
/// embedded script, and an HTTP-booted ipxe.efi runs the `autoexec.ipxe` beside it by itself.
pub const AUTOEXEC: &str = "autoexec.ipxe";

/// The script that takes a freshly started iPXE to `{base}/pxe-bootstrap.ipxe`. `base` was
/// allow-listed by the caller; it may hold `${next-server}`, which iPXE expands after DHCP.
/// A failure says what was tried and retries, with a key for the iPXE shell, instead of falling
/// through silently: a machine that cannot reach bty-web would otherwise boot whatever disk it
/// has, which is the one thing a lab flasher must not do unnoticed.
///
/// `ifopen` first: an `ipxe.efi` loaded by UEFI PXE fetches this script through the firmware's
/// TFTP before it has opened the NIC, with the firmware's DHCP answer already in `${ip}`; it
/// would skip `dhcp` and find no route to bty-web ("Network unreachable", found by
/// tests/it/lab.rs). Opening an open interface does nothing.
///
/// A chain that returns is the machine's script handing back to the firmware for the local
/// disk; `exit 1` then, not `exit`: an `ipxe.efi` that firmware PXE or HTTP Boot loaded returns
/// the script's status to the firmware, and edk2's boot manager answers an EFI_SUCCESS with its
/// menu (OVMF's UiApp) instead of the next boot option, the disk (found by tests/it/lab.rs).
/// BIOS firmware goes to its next boot device either way.
pub fn autoexec(base: &str) -> String {
    format!(
        "#!ipxe\n\
         # bty-web: chain to {base}/pxe-bootstrap.ipxe\n\
         :retry\n\
         ifopen ||\n\
         isset ${{ip}} || dhcp || goto failed\n\
         echo bty: chaining {base}/pxe-bootstrap.ipxe\n\
         chain {base}/pxe-bootstrap.ipxe || goto failed\n\
         exit 1\n\
         :failed\n\
         echo bty: could not load {base}/pxe-bootstrap.ipxe (error ${{errno}}): check DHCP and that bty-web answers there\n\
         prompt --key s --timeout 10000 bty: press s for the iPXE shell, or wait 10 s to retry && shell ||\n\
         goto retry\n"
    )
}

/// The `/pxe/{mac}/plan` answer for a decision.
pub fn plan(d: &Decision, m: &Machine, image: Option<&CatalogEntry>, host: &str) -> Plan {
    match (d, image) {
        (Decision::LiveEnv { mode: PlanMode::Flash, .. }, Some(img)) => Plan::Flash {
            image: img.src.clone(),
            target_disk_serial: m.target_disk_serial.clone(),
            name: Some(img.name.clone()),
            format: Some(img.format.clone()),
            disk_image_sha: img.disk_image_sha.clone(),
        },
        (Decision::LiveEnv { mode: PlanMode::Interactive, .. }, _) => {
            Plan::Interactive { catalog: Some(format!("http://{host}/catalog.toml")) }
        }
        (Decision::LiveEnv { mode: PlanMode::Inventory, .. }, _) => Plan::Inventory,
        // The live env posts its inventory before it asks for the plan, and that post already
        // turned the next PXE answer into "boot the disk"; the running live env still has to
        // finish its inventory job, which ends in the reboot that gets there.
        (Decision::Disk { once: true, .. }, _) if m.boot_mode == BootMode::Inventory => {
            Plan::Inventory
        }
        _ => Plan::Exit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(mode: &str) -> Machine {
        Machine {
            mac: "aa:bb:cc:dd:ee:ff".into(),
            bty_image_ref: Some("ab".repeat(32)),
            labels: vec![],
            discovered_at: None,
            last_seen_at: None,
            last_seen_ip: None,
            boot_mode: mode.parse().expect("a boot mode"),
            sanboot_drive: None,
            last_flashed_at: None,
            known_disks: None,
            known_disks_at: None,
            target_disk_serial: Some("S123".into()),
            created_at: String::new(),
            updated_at: String::new(),
            saw_flasher_boot: false,
            boot_disk_next: false,
            last_status: None,
        }
    }

    fn entry() -> CatalogEntry {
        CatalogEntry {
            bty_image_ref: "ab".repeat(32),
            src: "https://example.com/debian.img.zst".into(),
            disk_image_sha: None,
            name: "debian.img.zst".into(),
            format: "img.zst".into(),
            size_bytes: None,
            sha_url: None,
            description: None,
            added_at: String::new(),
        }
    }

    #[test]
    fn flash_once_flashes_then_stays_on_disk() {
        let mut m = machine("bty-flash-once");
        assert!(matches!(
            decide(&m, Some(&entry())),
            Decision::LiveEnv { mode: PlanMode::Flash, .. }
        ));
        m.last_flashed_at = Some("t".into());
        assert!(matches!(decide(&m, Some(&entry())), Decision::Disk { once: false, .. }));
    }

    #[test]
    fn plans_carry_every_field_of_their_mode() {
        let m = machine("bty-flash-once");
        let p = plan(&decide(&m, Some(&entry())), &m, Some(&entry()), "h");
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({
                "mode": "flash", "image": "https://example.com/debian.img.zst",
                "target_disk_serial": "S123", "name": "debian.img.zst", "format": "img.zst",
                "disk_image_sha": null,
            })
        );
        let m = machine("bty-tui");
        let p = plan(&decide(&m, None), &m, None, "h:1");
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"mode": "interactive", "catalog": "http://h:1/catalog.toml"})
        );
        let m = machine("ipxe-exit");
        let p = plan(&decide(&m, None), &m, None, "h");
        assert_eq!(serde_json::to_value(&p).unwrap(), serde_json::json!({"mode": "exit"}));
    }

    #[test]
    fn flash_always_alternates_flash_and_disk() {
        let mut m = machine("bty-flash-always");
        assert!(matches!(
            decide(&m, Some(&entry())),
            Decision::LiveEnv { mode: PlanMode::Flash, .. }
        ));
        m.boot_disk_next = true;
        assert!(matches!(decide(&m, Some(&entry())), Decision::Disk { once: true, .. }));
    }

    #[test]
    fn inventory_plan_survives_the_inventory_post() {
        let mut m = machine("bty-inventory");
        m.boot_disk_next = true;
        let d = decide(&m, None);
        assert!(matches!(d, Decision::Disk { once: true, .. }), "the next PXE boot is the disk");
        assert_eq!(plan(&d, &m, None, "h"), Plan::Inventory);
    }

    #[test]
    fn flash_modes_without_serial_or_image_exit_with_the_reason() {
        let mut m = machine("bty-flash-once");
        assert!(decide(&m, None).reason().contains("no longer in the catalog"));
        m.target_disk_serial = None;
        let d = decide(&m, Some(&entry()));
        assert!(d.reason().contains("target disk serial"));
        assert!(script(&d, &m, "h", &LIVE).contains("echo bty: boot mode bty-flash-once needs"));
    }

    #[test]
    fn the_discovery_rate_counts_ipv6_by_64_and_remembers_a_bounded_number_of_addresses() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let d = Discovery::new(2);
        assert!(d.admit(ip("2001:db8:1:2::1")) && d.admit(ip("2001:db8:1:2:ffff::9")));
        assert!(!d.admit(ip("2001:db8:1:2::77")), "a third address in the same /64");
        assert!(d.admit(ip("2001:db8:1:3::1")), "another /64 has its own allowance");
        assert!(d.admit(ip("10.0.0.1")) && d.admit(ip("::ffff:10.0.0.1")));
        assert!(!d.admit(ip("10.0.0.1")), "an IPv4-mapped address is the IPv4 address");
        let d = Discovery::new(1);
        for i in 0..ADDRESSES_KEPT as u32 {
            assert!(d.admit(Some(IpAddr::V4(std::net::Ipv4Addr::from_bits(i)))));
        }
        assert!(!d.admit(ip("192.0.2.1")), "no room for another address this minute");
        assert_eq!(d.window.lock().unwrap().1.len(), ADDRESSES_KEPT);
        let d = Discovery::new(0);
        assert!((0..1000).all(|_| d.admit(ip("10.0.0.1"))), "0: no limit");
    }

    #[test]
    fn autoexec_chains_the_bootstrap_and_retries_on_failure() {
        let s = autoexec("http://${next-server}:8080");
        assert!(s.starts_with("#!ipxe\n"));
        assert!(
            s.contains("\nchain http://${next-server}:8080/pxe-bootstrap.ipxe || goto failed\n")
        );
        assert!(s.contains(":retry\nifopen ||\nisset ${ip} || dhcp || goto failed\n"));
        assert!(s.contains(":failed\necho bty: could not load"));
        // Back from the chain: the firmware's next boot option (UEFI needs a failure status).
        assert!(s.contains("/pxe-bootstrap.ipxe || goto failed\nexit 1\n:failed\n"));
        assert!(s.ends_with("goto retry\n"));
    }

    #[test]
    fn scripts_carry_host_mac_and_serial_consoles() {
        let m = machine("bty-tui");
        let d = decide(&m, None);
        let s = script(&d, &m, "10.0.2.2:8080", &LIVE);
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("kernel http://10.0.2.2:8080/boot/k.vmlinuz?mac=aa:bb:cc:dd:ee:ff initrd=initrd console=tty0 console=ttyS0,115200 bty.server=http://10.0.2.2:8080 bty.mac=aa:bb:cc:dd:ee:ff"));
        assert!(s.contains(
            "initrd --name initrd http://10.0.2.2:8080/boot/i.initrd?mac=aa:bb:cc:dd:ee:ff\nboot\n"
        ));
        assert_eq!(
            plan(&d, &m, None, "h:1"),
            Plan::Interactive { catalog: Some("http://h:1/catalog.toml".into()) }
        );
        let m = machine("ipxe-exit");
        let s = script(&decide(&m, None), &m, "h", &LIVE);
        assert!(s.contains(
            "iseq ${platform} efi && exit ||\nsanboot --no-describe --drive 0x80 || exit"
        ));
    }

    const LIVE: LiveFiles<'static> =
        LiveFiles { x86_64: ("k.vmlinuz", "i.initrd"), arm64: ("ka.vmlinuz", "ia.initrd") };

    #[test]
    fn the_live_script_branches_on_buildarch_and_arm64_gets_no_console() {
        let m = machine("bty-tui");
        let s = script(&decide(&m, None), &m, "h:1", &LIVE);
        let mac = "aa:bb:cc:dd:ee:ff";
        let want = format!(
            "iseq ${{buildarch}} arm64 && goto arm64 ||\n\
             kernel http://h:1/boot/k.vmlinuz?mac={mac} initrd=initrd console=tty0 console=ttyS0,115200 bty.server=http://h:1 bty.mac={mac}\n\
             initrd --name initrd http://h:1/boot/i.initrd?mac={mac}\n\
             boot\n\
             :arm64\n\
             kernel http://h:1/boot/ka.vmlinuz?mac={mac} initrd=initrd bty.server=http://h:1 bty.mac={mac}\n\
             initrd --name initrd http://h:1/boot/ia.initrd?mac={mac}\n\
             boot\n"
        );
        assert!(s.ends_with(&want), "{s}");
        // The branch comes before any x86_64 line, and the arm64 part has no console at all.
        let (x86, arm64) = s.split_once(":arm64\n").expect("an arm64 label");
        assert!(x86.find("iseq ${buildarch}") < x86.find("kernel "), "{s}");
        assert!(!arm64.contains("console="), "{s}");
        assert_eq!(s.matches("goto arm64").count(), 1);
    }
}
