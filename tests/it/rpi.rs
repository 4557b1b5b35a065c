//! The Raspberry Pi stick (`make rpi`, live/rpi.sh): its layout (the table, the Pi firmware of
//! Debian's package, config.txt and cmdline.txt, the arm64 live environment's kernel and
//! initrd, GRUB for arm64 UEFI); its kernel, device tree, initramfs and command line booted in
//! QEMU's Raspberry Pi 3 machine with the stick as the SD card, to the wizard on the mini UART
//! after BTY_IMAGES grew; and the whole stick booted under `-M virt` with AAVMF through
//! EFI/BOOT/BOOTAA64.EFI, flashing a second virtual disk from BTY_IMAGES.
//!
//! Why raspi3b and not raspi4b, the newest Pi QEMU has: QEMU 10.0's raspi4b lacks devices
//! Debian's 6.1 kernel touches at boot with the Pi 4's device tree (the brcmstb interrupt
//! controllers and I2C, clock gates, and the mini UART's interrupt then stalls the CPU), so the
//! kernel never reaches the initramfs there. The raspi3b model boots it as a Pi 3 does.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::e2e_arm64::aavmf;
use crate::usb::{Console, Images, flash_first_image_to_vda, partition, plain, wait_after};
use crate::util::guest::{self, Guest};
use crate::util::{TestDir, prng_bytes, zstd};

/// BTY_IMAGES as live/rpi.sh builds it (cmdline.txt's and GRUB's `bty.usb=`).
const BAKED_SECTORS: u64 = 65536;
/// The stick the tests boot: a power of two, as QEMU wants of an SD card.
const STICK: u64 = 1 << 30;

fn image_gz() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("build/usb/bty-usbboot-rpi-arm64-v{}.img.gz", env!("CARGO_PKG_VERSION")));
    assert!(p.is_file(), "{} is missing: run `make rpi` first", p.display());
    p
}

/// What the grow reports for a stick of STICK bytes: BTY_IMAGES from where it starts to the end.
fn grown(disk: &Path) -> String {
    let (start, _) = partition(disk, 1);
    format!("grown from 32.0 MiB to {:.1} MiB", (STICK - start * 512) as f64 / f64::from(1 << 20))
}

/// The stick's raw image, unpacked.
fn raw() -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(image_gz()).unwrap())
        .read_to_end(&mut out)
        .expect("unpacking the Pi stick's image");
    out
}

/// The stick as a file of `len` bytes, `files` copied onto BTY_IMAGES.
fn stick(dir: &TestDir, len: u64, files: &[(&str, &[u8])]) -> PathBuf {
    let p = dir.path("stick.img");
    std::fs::write(&p, raw()).unwrap();
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len).unwrap();
    let m = Images::mount(&p, dir.path("mnt"));
    for (name, data) in files {
        std::fs::write(m.dir.join(name), data).expect("writing onto BTY_IMAGES");
    }
    drop(m);
    p
}

/// A file of the boot partition (FAT32, read with mtools, no mount).
fn boot_file(disk: &Path, name: &str) -> Vec<u8> {
    let (start, _) = partition(disk, 0);
    let out = Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@{}", disk.display(), start * 512))
        .arg(format!("::/{name}"))
        .output()
        .expect("running mtype (make deps installs mtools)");
    assert!(out.status.success(), "mtype {name}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn live(ext: &str) -> Vec<u8> {
    let p =
        guest::live_dir().join(format!("bty-netboot-arm64-v{}.{ext}", env!("CARGO_PKG_VERSION")));
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("reading {}: {e} (make live ARCH=arm64)", p.display()))
}

#[test]
fn the_pi_stick_has_the_firmware_the_live_system_and_uefi_grub_in_its_table() {
    let dir = TestDir::new("rpi-layout");
    let gz = std::fs::read(image_gz()).unwrap();
    let sum = std::fs::read_to_string(image_gz().with_extension("gz.sha256")).unwrap();
    assert!(sum.starts_with(&crate::util::sha256(&gz)), "the .sha256 does not match: {sum}");
    let disk = dir.path("stick.img");
    let raw = raw();
    std::fs::write(&disk, &raw).unwrap();

    // The table: the boot partition (FAT32, LBA) at 4 MiB, BTY_IMAGES right after it and
    // last, the disk ending with it.
    assert_eq!(&raw[440..444], &0xb7e1_0002u32.to_le_bytes(), "the disk identifier");
    assert_eq!(raw[446 + 4], 0x0c);
    assert_eq!(raw[446 + 16 + 4], 0x07);
    assert_eq!((raw[446 + 32 + 4], raw[446 + 48 + 4]), (0, 0), "a third or fourth partition");
    let (boot_start, boot_sectors) = partition(&disk, 0);
    let (images_start, images_sectors) = partition(&disk, 1);
    assert_eq!(boot_start, 8192);
    assert_eq!(images_start, boot_start + boot_sectors);
    assert_eq!(images_sectors, BAKED_SECTORS);
    assert_eq!(raw.len() as u64, (images_start + images_sectors) * 512);
    let b = (boot_start * 512) as usize;
    assert_eq!(&raw[b + 71..b + 90], b"BTY_LIVE   FAT32   ", "the boot partition's label and type");
    Images::fsck(&disk);

    // The firmware, byte for byte Debian's.
    let deb = std::fs::read_dir(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/live-cache/arm64"),
    )
    .unwrap()
    .filter_map(|e| e.ok().map(|e| e.path()))
    .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("raspi-firmware_"))
    .expect("raspi-firmware's .deb in target/live-cache/arm64 (make rpi)");
    let x = dir.path("firmware");
    let st = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x).status().unwrap();
    assert!(st.success());
    for f in ["bootcode.bin", "start.elf", "fixup.dat", "start4.elf", "fixup4.dat"] {
        let want = std::fs::read(x.join("usr/lib/raspi-firmware").join(f)).unwrap();
        assert!(boot_file(&disk, f) == want, "{f} differs from raspi-firmware's");
    }
    assert!(!boot_file(&disk, "COPYING.raspi-firmware").is_empty());
    for dtb in ["bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb", "bcm2837-rpi-3-b.dtb"] {
        assert_eq!(
            &boot_file(&disk, dtb)[..4],
            &[0xd0, 0x0d, 0xfe, 0xed],
            "{dtb} is no device tree"
        );
    }
    assert!(boot_file(&disk, "vmlinuz") == live("vmlinuz"), "vmlinuz is not the live kernel");
    assert!(boot_file(&disk, "initrd") == live("initrd"), "initrd is not the live initrd");

    let config = String::from_utf8(boot_file(&disk, "config.txt")).unwrap();
    for line in ["arm_64bit=1", "enable_uart=1", "kernel=vmlinuz", "initramfs initrd followkernel"]
    {
        assert!(config.lines().any(|l| l == line), "config.txt lacks {line:?}:\n{config}");
    }
    let cmdline = String::from_utf8(boot_file(&disk, "cmdline.txt")).unwrap();
    assert_eq!(cmdline.lines().count(), 1, "cmdline.txt is one line: {cmdline:?}");
    for arg in ["bty.usb=b7e10001:65536", "console=ttyS1,115200", "console=tty1"] {
        assert!(cmdline.split_whitespace().any(|a| a == arg), "cmdline.txt lacks {arg}: {cmdline}");
    }

    // arm64 UEFI: a PE image for AArch64 (machine 0xaa64) where the firmware looks, and the
    // config that boots the same kernel and initrd.
    let efi = boot_file(&disk, "EFI/BOOT/BOOTAA64.EFI");
    assert_eq!(&efi[..2], b"MZ");
    let pe = u32::from_le_bytes(efi[0x3c..0x40].try_into().unwrap()) as usize;
    assert_eq!(&efi[pe..pe + 6], b"PE\0\0\x64\xaa", "BOOTAA64.EFI is not an arm64 PE image");
    let grub = String::from_utf8(boot_file(&disk, "boot/grub/grub.cfg")).unwrap();
    assert!(grub.contains("linux /vmlinuz bty.usb=b7e10001:65536"), "{grub}");
    assert!(grub.contains("initrd /initrd"), "{grub}");
}

/// The console's socket and log in `dir`, as QEMU arguments for a `-chardev` named `con`.
fn chardev(dir: &TestDir) -> (String, PathBuf, PathBuf) {
    let log = dir.path("serial.log");
    let sock = dir.path("serial.sock");
    let spec = format!(
        "socket,id=con,path={},server=on,wait=off,logfile={}",
        sock.display(),
        log.display()
    );
    (spec, sock, log)
}

fn qemu(dir: &TestDir, machine: &[&str]) -> (Command, Console, PathBuf) {
    let (spec, sock, log) = chardev(dir);
    let mut c = Command::new("qemu-system-aarch64");
    c.args(["-accel", &guest::accel()])
        .args(machine)
        .args(["-display", "none", "-monitor", "none", "-no-reboot", "-net", "none"])
        .arg("-chardev")
        .arg(spec)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    (c, Console::new(sock), log)
}

#[test]
fn on_qemus_raspberry_pi_the_stick_grows_and_the_wizard_refuses_it() {
    let dir = TestDir::new("rpi-raspi3b");
    let image = zstd(&crate::util::disk_image(0x3b, 2 << 20));
    let disk = stick(&dir, STICK, &[("pi.img.zst", &image)]);
    // What the Pi's firmware reads from the boot partition: the kernel, its device tree, the
    // initramfs and the command line.
    for f in ["vmlinuz", "initrd", "bcm2837-rpi-3-b.dtb"] {
        std::fs::write(dir.path(f), boot_file(&disk, f)).unwrap();
    }
    let cmdline = String::from_utf8(boot_file(&disk, "cmdline.txt")).unwrap();
    let (mut c, mut con, log) = qemu(&dir, &["-M", "raspi3b"]);
    c.arg("-kernel")
        .arg(dir.path("vmlinuz"))
        .arg("-dtb")
        .arg(dir.path("bcm2837-rpi-3-b.dtb"))
        .arg("-initrd")
        .arg(dir.path("initrd"))
        .arg("-append")
        .arg(cmdline.trim())
        .arg("-drive")
        .arg(format!("if=sd,format=raw,file={}", disk.display()))
        // The PL011 serves Bluetooth on a Pi 3; the console is the mini UART, QEMU's second.
        .args(["-serial", "null", "-serial", "chardev:con"]);
    let mut g = Guest::start(c, log);

    let (boot, at) = wait_after(&mut g, 0, "Image: ", Duration::from_secs(400));
    eprintln!(
        "rpi raspi3b: power-on to the wizard (grow included) {:.1} s",
        g.started.elapsed().as_secs_f64()
    );
    let boot = plain(&boot);
    assert!(boot.contains("booted from /dev/mmcblk0p1"), "{boot}");
    assert!(boot.contains(&grown(&disk)), "{boot}");
    assert!(boot.contains("mounted on /var/lib/bty/images"), "{boot}");
    assert!(boot.contains("pi.img.zst"), "the image on BTY_IMAGES is not listed:\n{boot}");
    con.send("1");
    let (screen, _) = wait_after(&mut g, at, "Disk: ", Duration::from_secs(60));
    let screen = plain(&screen);
    let lines: Vec<&str> = screen.lines().collect();
    let row = lines
        .iter()
        .position(|l| l.contains("/dev/mmcblk0"))
        .unwrap_or_else(|| panic!("no /dev/mmcblk0 row:\n{screen}"));
    let why = lines[row + 1..].iter().take(3).copied().collect::<Vec<_>>().join(" ");
    assert!(why.contains("boot medium"), "the stick is not refused as the boot medium:\n{screen}");
    drop(g);
    let (start, sectors) = partition(&disk, 1);
    assert_eq!(start + sectors, STICK / 512, "BTY_IMAGES does not reach the end of the stick");
    Images::fsck(&disk);
}

#[test]
fn through_arm64_uefi_the_stick_grows_and_flashes_a_disk_from_bty_images() {
    let dir = TestDir::new("rpi-uefi");
    let raw = crate::util::disk_image(0xaa64, 6 << 20);
    let keep = prng_bytes(0x9e, 3 << 20);
    let disk = stick(&dir, STICK, &[("keep.bin", &keep), ("small.img.zst", &zstd(&raw))]);
    let target = dir.path("target.img");
    std::fs::write(&target, prng_bytes(0xa7, 64 << 20)).unwrap();
    let (mut c, mut con, log) =
        qemu(&dir, &["-M", "virt", "-cpu", "max", "-m", "1024", "-smp", "1"]);
    c.args(aavmf(&dir.0))
        .args(["-serial", "chardev:con"])
        .arg("-drive")
        .arg(format!("if=none,id=stick,format=raw,file={}", disk.display()))
        .args(["-device", "qemu-xhci", "-device", "usb-storage,drive=stick,bootindex=0"])
        .arg("-drive")
        .arg(format!("if=virtio,format=raw,file={}", target.display()));
    let mut g = Guest::start(c, log);

    let (boot, at) = wait_after(&mut g, 0, "Image: ", Duration::from_secs(500));
    let to_wizard = g.started.elapsed();
    let boot = plain(&boot);
    assert!(boot.contains(&grown(&disk)), "{boot}");
    assert!(boot.contains("small.img.zst"), "the image on BTY_IMAGES is not listed:\n{boot}");
    let screen = flash_first_image_to_vda(&mut g, &mut con, at);
    eprintln!(
        "rpi uefi: power-on to the wizard (grow included) {:.1} s, to powered off after the flash {:.1} s",
        to_wizard.as_secs_f64(),
        g.started.elapsed().as_secs_f64()
    );
    assert!(screen.contains("/dev/sda"), "no row for the stick:\n{screen}");
    let written = std::fs::read(&target).unwrap();
    assert!(written[..raw.len()] == raw[..], "the flashed disk differs from the image");
    Images::fsck(&disk);
    let m = Images::mount(&disk, dir.path("mnt"));
    assert!(std::fs::read(m.dir.join("keep.bin")).unwrap() == keep, "keep.bin changed");
}

/// `bty usb-grow` on `stick` with the build's sentinels: its status and what it printed.
fn grow(stick: &Path) -> (std::process::Output, String) {
    let o = crate::util::bty()
        .args(["usb-grow"])
        .arg(stick)
        .args(["--baked", "b7e10001:65536"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    (o, out)
}

#[test]
fn usb_grow_on_the_pi_stick_refuses_a_changed_table_then_grows_once() {
    let dir = TestDir::new("rpi-grow");
    let p = dir.path("stick.img");
    let mut b = raw();
    b.resize(256 << 20, 0);
    // A third partition after BTY_IMAGES: not the table the build made.
    let mut changed = b.clone();
    changed[446 + 32 + 4] = 0x83;
    std::fs::write(&p, &changed).unwrap();
    let (o, err) = grow(&p);
    assert!(
        !o.status.success() && err.contains("want the boot partition first, exFAT second"),
        "{err}"
    );
    assert!(std::fs::read(&p).unwrap() == changed, "a refused grow wrote to the stick");

    std::fs::write(&p, &b).unwrap();
    let (o, out) = grow(&p);
    assert!(o.status.success() && out.contains("grown from 32.0 MiB"), "{out}");
    let (start, sectors) = partition(&p, 1);
    assert_eq!(start + sectors, (256u64 << 20) / 512);
    // Past the table (sector 0, where BTY_IMAGES's size changed), nothing before it moved.
    let grown = std::fs::read(&p).unwrap();
    assert!(
        grown[512..start as usize * 512] == b[512..start as usize * 512],
        "the boot partition changed"
    );
    Images::fsck(&p);
    let (o, out) = grow(&p);
    assert!(o.status.success() && out.contains("grown already"), "{out}");
}
