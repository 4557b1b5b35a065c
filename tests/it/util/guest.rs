//! QEMU guests of the end-to-end tests (tests/it/e2e.rs with QEMU's user-mode network,
//! tests/it/lab.rs in a network namespace of its own): one powered-on guest that is killed on
//! drop, its serial console read from a file, and waits on that console or on bty-web's log,
//! each bounded in time; the disk images they boot (a marker in the MBR's boot code and in an
//! EFI system partition) and the live environment they netboot.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The accelerator: TCG unless `BTY_E2E_ACCEL` says otherwise (KVM inside the project's VMs
/// stops with an emulation failure in the iPXE ROM).
pub fn accel() -> String {
    std::env::var("BTY_E2E_ACCEL").unwrap_or_else(|_| "tcg".into())
}

/// OVMF, with its own PXE turned off: after iPXE's `exit` it would try PXE on the NIC over
/// IPv4 and IPv6 first, each waiting for timeouts (~2 min under TCG), before the disk. The
/// lab's HTTP Boot guest relies on this too: with PXE off, OVMF's first boot option on the NIC
/// is its HTTP Boot over IPv4.
pub fn ovmf_args() -> Vec<String> {
    [
        "-bios",
        "/usr/share/ovmf/OVMF.fd",
        "-fw_cfg",
        "name=opt/org.tianocore/IPv4PXESupport,string=n",
        "-fw_cfg",
        "name=opt/org.tianocore/IPv6PXESupport,string=n",
    ]
    .map(String::from)
    .to_vec()
}

/// The start of a guest's command line: headless, serial console to `log`, one CPU.
pub fn qemu(program: Command, mem_mib: u32, log: &Path) -> Command {
    let mut c = program;
    c.args(["-accel", &accel(), "-m", &mem_mib.to_string(), "-smp", "1"])
        .args(["-vga", "none", "-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// One powered-on guest; powered off (killed) on drop.
pub struct Guest {
    pub child: Child,
    pub log: PathBuf,
    pub started: Instant,
}

impl Guest {
    /// Starts `cmd` (a QEMU command line whose serial console goes to `log`).
    pub fn start(mut cmd: Command, log: PathBuf) -> Guest {
        let _ = std::fs::remove_file(&log);
        let child = cmd.spawn().expect("starting qemu-system-x86_64 (make deps installs it)");
        Guest { child, log, started: Instant::now() }
    }

    pub fn serial(&self) -> String {
        let b = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&b).replace('\r', "")
    }

    /// QEMU's stderr, once it has exited.
    fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    /// Waits until the serial console shows `marker`; the time since power-on.
    pub fn wait_for(&mut self, marker: &str, limit: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if self.serial().contains(marker) {
                return self.started.elapsed();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "qemu exited ({st}) before {marker:?}: {}\nserial ({}):\n{}",
                    self.stderr(),
                    self.log.display(),
                    tail(&self.serial())
                );
            }
            assert!(
                t0.elapsed() < limit,
                "no {marker:?} on the serial console within {limit:?}; serial ({}):\n{}",
                self.log.display(),
                tail(&self.serial())
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits up to `limit` until `done` holds for the text of `log` (bty-web's log); the time
    /// since power-on. A failure shows both the log's and the serial console's tail.
    pub fn wait_log(
        &mut self,
        log: &Path,
        limit: Duration,
        what: &str,
        done: impl Fn(&str) -> bool,
    ) -> Duration {
        let t0 = Instant::now();
        loop {
            let text = read_lossy(log);
            if done(&text) {
                return self.started.elapsed();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "qemu exited ({st}) before {what}: {}\n{} ends:\n{}\nserial ({}):\n{}",
                    self.stderr(),
                    log.display(),
                    tail(&text),
                    self.log.display(),
                    tail(&self.serial())
                );
            }
            assert!(
                t0.elapsed() < limit,
                "no {what} within {limit:?}; {} ends:\n{}\nserial ({}):\n{}",
                log.display(),
                tail(&text),
                self.log.display(),
                tail(&self.serial())
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file's text, empty when it is not there (yet).
pub fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// The last 40 lines, for a failure message.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Whether `marks` occur in `text` in this order (each after the one before).
pub fn in_order(text: &str, marks: &[&str]) -> bool {
    let mut from = 0;
    for m in marks {
        match text[from..].find(m) {
            Some(i) => from += i + m.len(),
            None => return false,
        }
    }
    true
}

/// A boot sector that writes the NUL-terminated text after its code to COM1 and halts.
pub fn boot_sector(marker: &str) -> Vec<u8> {
    #[rustfmt::skip]
    let code: [u8; 21] = [
        0x31, 0xc0,             // xor ax, ax
        0x8e, 0xd8,             // mov ds, ax: the text is addressed from segment 0
        0xbe, 0x15, 0x7c,       // mov si, 0x7c00 + 21 (the text follows the code)
        0xba, 0xf8, 0x03,       // mov dx, 0x3f8 (COM1)
        0xac,                   // next: lodsb
        0x08, 0xc0,             // or al, al
        0x74, 0x03,             // jz halt
        0xee,                   // out dx, al
        0xeb, 0xf8,             // jmp next
        0xf4,                   // halt: hlt (interrupts wake it: go back to sleep)
        0xeb, 0xfd,             // jmp halt
    ];
    let mut s = code.to_vec();
    s.extend_from_slice(format!("\r\n{marker}\r\n\0").as_bytes());
    s.resize(510, 0);
    s.extend_from_slice(&[0x55, 0xaa]);
    s
}

/// A UEFI application (PE32+, x86-64) that prints the marker through the firmware's ConOut,
/// which OVMF mirrors to the serial port, and halts. No relocations: the code is RIP-relative.
pub fn efi_app(marker: &str) -> Vec<u8> {
    #[rustfmt::skip]
    let code: [u8; 21] = [
        0x48, 0x83, 0xec, 0x28,             // sub rsp, 40: shadow space, 16-byte alignment
        0x48, 0x8b, 0x4a, 0x40,             // mov rcx, [rdx+64]: SystemTable->ConOut
        0x48, 0x8d, 0x15, 0x09, 0, 0, 0,    // lea rdx, [rip+9]: the text, at code offset 24
        0xff, 0x51, 0x08,                   // call [rcx+8]: ConOut->OutputString
        0xf4,                               // halt: hlt
        0xeb, 0xfd,                         // jmp halt
    ];
    pe(0x8664, &code, marker)
}

/// The same for AArch64 (AAVMF): the arguments arrive in x0 (image) and x1 (system table).
pub fn efi_app_arm64(marker: &str) -> Vec<u8> {
    let code: Vec<u8> = [
        0xf940_2020u32, // ldr x0, [x1, #64]: SystemTable->ConOut
        0x1000_00a1,    // adr x1, #20: the text, at code offset 24
        0xf940_0402,    // ldr x2, [x0, #8]: ConOut->OutputString
        0xd63f_0040,    // blr x2
        0xd503_207f,    // halt: wfi
        0x17ff_ffff,    // b halt
    ]
    .iter()
    .flat_map(|i| i.to_le_bytes())
    .collect();
    pe(0xaa64, &code, marker)
}

/// A one-section PE32+ EFI application for `machine`: `code`, then at offset 24 the marker as
/// UTF-16 between line breaks.
fn pe(machine: u16, code: &[u8], marker: &str) -> Vec<u8> {
    let mut text = code.to_vec();
    text.resize(24, 0);
    for u in format!("\r\n{marker}\r\n\0").encode_utf16() {
        text.extend_from_slice(&u.to_le_bytes());
    }
    assert!(text.len() <= 0x200);
    text.resize(0x200, 0);

    let mut pe = vec![0u8; 0x200];
    pe[..2].copy_from_slice(b"MZ");
    pe[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
    let mut h = Vec::new();
    h.extend_from_slice(b"PE\0\0");
    // COFF: the machine, one section, a PE32+ optional header of 240 bytes, executable.
    for v in [machine, 1] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&[0; 12]);
    for v in [240u16, 0x0022] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    // Optional header: entry and code at RVA 0x1000, 4 KiB sections, 512-byte file alignment,
    // subsystem 10 (EFI application), 16 empty data directories.
    h.extend_from_slice(&0x20bu16.to_le_bytes());
    h.extend_from_slice(&[0, 0]);
    for v in [0x200u32, 0, 0, 0x1000, 0x1000] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&0x1000_0000u64.to_le_bytes());
    for v in [0x1000u32, 0x200] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&[0; 16]); // OS, image and subsystem versions, Win32VersionValue
    for v in [0x2000u32, 0x200, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    for v in [10u16, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    for v in [0x10000u64, 0x1000, 0x10000, 0x1000] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&[0; 128]);
    // The one section: .text, readable and executable code.
    h.extend_from_slice(b".text\0\0\0");
    for v in [0x200u32, 0x1000, 0x200, 0x200, 0, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&0x6000_0020u32.to_le_bytes());
    pe[0x40..0x40 + h.len()].copy_from_slice(&h);
    pe.extend_from_slice(&text);
    pe
}

/// A FAT file system holding `\EFI\BOOT\BOOTX64.EFI` and `BOOTAA64.EFI`, the paths x86_64
/// and arm64 UEFI boot on a disk with no boot entry of its own (dosfstools and mtools: no
/// mount, no root).
pub fn esp(marker: &str, dir: &Path) -> Vec<u8> {
    let fat = dir.join(format!("esp-{marker}.fat"));
    let app = dir.join(format!("esp-{marker}.efi"));
    let app_arm64 = dir.join(format!("esp-{marker}-aa64.efi"));
    let _ = std::fs::remove_file(&fat);
    std::fs::write(&app, efi_app(marker)).unwrap();
    std::fs::write(&app_arm64, efi_app_arm64(marker)).unwrap();
    let run = |c: &mut Command| {
        let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e} (make deps installs it)"));
        assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    run(Command::new("mkfs.vfat")
        .args(["-C", "-i", "b7e20001", "-n", "ESP"])
        .arg(&fat)
        .arg("6144"));
    run(Command::new("mmd").arg("-i").arg(&fat).args(["::/EFI", "::/EFI/BOOT"]));
    run(Command::new("mcopy").arg("-i").arg(&fat).arg(&app).arg("::/EFI/BOOT/BOOTX64.EFI"));
    run(Command::new("mcopy").arg("-i").arg(&fat).arg(&app_arm64).arg("::/EFI/BOOT/BOOTAA64.EFI"));
    std::fs::read(&fat).unwrap()
}

/// A disk image with the marker in both firmwares' boot paths: the MBR's boot code (BIOS) and
/// an EFI system partition from 1 MiB (UEFI), then data bty has to get exactly right.
pub fn image(marker: &str, seed: u64, len: usize, dir: &Path) -> Vec<u8> {
    let mut img = super::disk_image(seed, len);
    img[..512].copy_from_slice(&boot_sector(marker));
    let fat = esp(marker, dir);
    assert!(len >= (1 << 20) + fat.len() + (1 << 20));
    img[1 << 20..(1 << 20) + fat.len()].copy_from_slice(&fat);
    let e = &mut img[446..462];
    e[4] = 0xef; // EFI system partition
    e[8..12].copy_from_slice(&2048u32.to_le_bytes());
    e[12..16].copy_from_slice(&((fat.len() / 512) as u32).to_le_bytes());
    img
}

/// The live environment of `make live` (or `BTY_E2E_BOOT_DIR`), checked to be there.
pub fn live_dir() -> PathBuf {
    let dir = std::env::var_os("BTY_E2E_BOOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("build/live"));
    let version = env!("CARGO_PKG_VERSION");
    for ext in ["vmlinuz", "initrd"] {
        let f = dir.join(format!("bty-netboot-pc-x86_64-v{version}.{ext}"));
        assert!(f.is_file(), "{} is missing: run `make live` first", f.display());
    }
    dir
}
