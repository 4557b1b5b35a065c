//! The `bty` command line: argument parsing (lexopt) and the scripted subcommands.

pub mod agent;
mod commands;
mod images;
mod inventory;
pub mod power;
pub mod progress;
pub mod uefi;
pub mod wizard;

use std::process::ExitCode;

use lexopt::prelude::*;

use crate::error::{Context, Result};

const HELP: &str = "\
bty: put pre-built OS disk images onto disks, fast and safely

Usage:
  bty [--catalog SRC] [--image-root DIR]
                                      the wizard: pick an image and a disk, flash
  bty --server URL --mac MAC [--image-root DIR]
                                      server-driven: do what bty-web plans for MAC
  bty flash SOURCE TARGET [options]   write an image to a disk (or a file)
  bty inspect SOURCE [--json] [--sha256]
                                      show an image's format, sizes and partitions
  bty images [--catalog SRC] [--json]
                                      list the image root and a catalog's images
  bty disks [--json] [--all]          list this machine's disks and whether bty
                                      may write them (bty disks --help)
  bty inventory [--json] [--all]      disks and hardware, as reported to bty-web
                                      (bty inventory --help)
  bty usb-grow DISK --baked SERIAL:SECTORS
                                      the USB live stick's first boot: grow its
                                      BTY_IMAGES partition (bty usb-grow --help)
  bty --version | --help

The wizard (bty with no command) runs on any terminal, 80x24 is enough: steps
Catalog, Image, Disk, Confirm, Flash, Done. Answer with a number and Enter, or
a letter (b goes back, q quits). Disks bty may not write are greyed out with the
reason. Nothing is written before you type yes on the Confirm step; Ctrl+C
during the flash cancels it (the disk is blanked). NO_COLOR or TERM=dumb gives
plain text.

wizard and server options:
  --catalog SRC       load this catalog (path, http(s)://, oras://, or a bty-web
                      /catalog.toml) and skip the Catalog step
  --image-root DIR    local images (default BTY_IMAGE_ROOT, else
                      /var/lib/bty/images); the Catalog step is skipped when it
                      holds images
  --server URL        bty-web base URL or bare host (http:// is added; default
                      bty-server)
  --mac MAC           server-driven mode: POST this machine's inventory to
                      <server>/pxe/<MAC>/inventory, GET <server>/pxe/<MAC>/plan and
                      do it: flash (the disk whose serial the plan names; progress
                      posted every 2 s; /done, then reboot), interactive (the
                      wizard with the plan's catalog), inventory (then reboot) or
                      exit. An unreachable server or a bad plan opens the wizard
                      with <server>/catalog.toml; a failed flash is reported to
                      /status, then the wizard opens with the plan's image.
                      Markers on stderr and /dev/console: `bty: auto-flash
                      starting`, `bty: write 25%` ... `100%`, `bty: flash
                      complete; rebooting`. Reboot and power off use reboot(2)
                      after sync (no init system needed).

SOURCE is a local path, a file:// URL, - (standard input), an http(s):// URL or
an oras://host[:port]/owner/repo:tag (or @sha256:...) reference to an OCI artifact
whose image layer is flashed, its digest checked like --sha256. Remote sources are
streamed; a dropped connection resumes with Range; qcow2 is read through Range
requests, no temporary file. Formats are detected by their magic
bytes (and must agree with the file name): raw/ISO, gzip, zstd, xz, bzip2, qcow2.
TARGET is a block device (/dev/sdX, /dev/disk/by-id/...) or a regular file.

flash options:
  --sha256 HEX        expected sha256 of SOURCE; the disk is activated (its first
                      MiB written) only if the bytes read match
  --verify            read the disk back after writing and compare
  --no-zero-skip      write zero blocks as data instead of zeroing them cheaply
  --yes, -y           do not ask for confirmation before writing a block device
  --progress MODE     auto (default: bar on a terminal, log otherwise), bar, log,
                      json (one JSON object per line on stdout), none
                      (no progress; the summary line is still printed)

Safety: bty refuses targets that are mounted, hold mounted partitions, are swap,
are held by RAID/LVM/device-mapper, back the running system or bty itself, or are
read-only, and images larger than the target. The first MiB of the disk is
blanked before writing and written last, after the whole image (and a pinned
digest) checked out; on any failure or Ctrl+C the first and last MiB are blanked
again, so the disk never looks like a half-written bootable disk.

Exit status: 0 done, 1 refused (nothing written), 2 failed (target blanked),
130 cancelled (target blanked).

bty images lists the image files directly in the image root (BTY_IMAGE_ROOT,
default /var/lib/bty/images): names ending in .img, .raw or .iso (each optionally
followed by .gz, .zst, .xz or .bz2) or .qcow2 whose magic bytes agree with the
name. Shown: format, an architecture guessed from the name (amd64, arm64, ...),
file size and on-disk size (where the format records it). Files named like
images that are not (wrong magic, tarballs, empty) are reported on stderr.

images options:
  --catalog SRC       add the images of a catalog (TOML, version = 1, one
                      [[images]] table per image) that are not already listed
                      (same bty_image_ref). SRC is a path, a file://,
                      http(s):// or oras:// URL, or a bty-web's /catalog.toml.
                      Catalogs larger than 4 MiB are refused; any error names
                      the catalog, entry and field.
  --json              print a JSON array of ImageEntry objects (name, format,
                      size_bytes, url, ref, sha_short, cached) with origin
                      (local or catalog), arch, virtual_size and description

Environment: BTY_LOG=error|warn|info|debug sets the log level; BTY_CA_FILE and
SSL_CERT_FILE add PEM CA certificates to the built-in roots; BTY_HTTP_TIMEOUT sets
the seconds allowed to connect and for each network read (default 30);
REGISTRY_AUTH_FILE (else ~/.docker/config.json) holds registry credentials;
BTY_INSECURE_REGISTRIES lists host:port registries that speak plain http;
BTY_REGISTRY_HOSTS_DIR (default /etc/containerd/certs.d) holds containerd-style
<registry>/hosts.toml files naming registry mirrors for oras:// pulls;
BTY_IMAGE_ROOT the image root. http_proxy, https_proxy and all_proxy (or
HTTP_PROXY, HTTPS_PROXY, ALL_PROXY) name the proxy for http, https (and oras)
and both, as http://[user:password@]host[:port]; no_proxy (NO_PROXY) lists
host names, domains, IP addresses and CIDR ranges to reach directly (* for all).
";

/// Entry point of the `bty` binary.
pub fn main() -> ExitCode {
    crate::log::run_main(run)
}

/// The bty-web that `--server` defaults to (a LAN DNS name or /etc/hosts entry).
pub const DEFAULT_SERVER: &str = "bty-server";

/// Options of the wizard and of server-driven mode (`bty` with no command).
#[derive(Clone, Debug)]
pub struct WizardArgs {
    pub catalog: Option<String>,
    /// bty-web base URL, scheme included, no trailing slash.
    pub server: String,
    pub mac: Option<String>,
    pub image_root: std::path::PathBuf,
}

fn run() -> Result<ExitCode> {
    let mut parser = lexopt::Parser::from_env();
    let mut args = WizardArgs {
        catalog: None,
        server: server_url(DEFAULT_SERVER),
        mac: None,
        image_root: crate::catalog::root::default_image_root(),
    };
    let mut first = true;
    while let Some(arg) = parser.next()? {
        // Commands come first; after a wizard option, a word is an error, not a command.
        let command = first;
        first = false;
        match arg {
            Short('h') | Long("help") => {
                print!("{HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            Short('V') | Long("version") => {
                println!("bty {}", crate::VERSION);
                return Ok(ExitCode::SUCCESS);
            }
            Value(cmd) if command => {
                return match cmd.to_string_lossy().as_ref() {
                    "flash" => commands::flash(parse_flash(&mut parser)?),
                    "inspect" => commands::inspect(parse_inspect(&mut parser)?),
                    "images" => images::images(parse_images(&mut parser)?),
                    "disks" => inventory::disks(parse_disks(&mut parser)?),
                    "inventory" => inventory::inventory(parse_inventory(&mut parser)?),
                    "usb-grow" => commands::usb_grow(parse_usb_grow(&mut parser)?),
                    other => crate::bail!("unknown command {other:?} (see bty --help)"),
                };
            }
            Long("catalog") => args.catalog = Some(parser.value()?.string()?),
            Long("server") => {
                let v = parser.value()?.string()?;
                crate::ensure!(!v.trim().is_empty(), "--server needs a URL or a host name");
                args.server = server_url(&v);
            }
            Long("mac") => args.mac = Some(parser.value()?.string()?),
            Long("image-root") => args.image_root = parser.value()?.into(),
            _ => return Err(arg.unexpected().into()),
        }
    }
    match args.mac.clone() {
        Some(mac) => {
            if args.catalog.is_some() {
                crate::warn!(
                    "--catalog is ignored with --mac: the server's plan names the catalog"
                );
                args.catalog = None;
            }
            agent::run(&args, &mac)
        }
        None => wizard::run(&args, None, None),
    }
}

const USB_GROW_HELP: &str = "\
bty usb-grow DISK --baked SERIAL:SECTORS

Grows the BTY_IMAGES exFAT partition of a bty USB live stick to fill the stick,
keeping the files on it. The live system runs it once on first boot, with the
sentinels from its kernel command line (bty.usb=SERIAL:SECTORS): it only acts
on a stick as the build made it (an MBR with BTY_IMAGES last, after the ISO
9660 medium and the EFI partition of the x86_64 stick, or after the FAT32
partition labelled BTY_LIVE of the Raspberry Pi stick) while BTY_IMAGES still
has the build's volume serial and size. The grown file system gets a new serial, so a second
run has nothing to do. Anything else is refused with the reason, unwritten.
The stick's partitions must not be mounted. An interrupted grow leaves the old
file system readable and is taken up again by the next run.

  DISK                 the whole stick: /dev/sdX, or an image file
  --baked SERIAL:SECTORS
                       BTY_IMAGES as the build made it (hex serial, 512-byte
                       sectors)
";

/// Arguments of `bty usb-grow`.
pub struct UsbGrowArgs {
    pub disk: std::path::PathBuf,
    pub baked: crate::usb::Baked,
}

fn parse_usb_grow(parser: &mut lexopt::Parser) -> Result<UsbGrowArgs> {
    let (mut disk, mut baked) = (None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("baked") => baked = Some(parser.value()?.string()?.parse()?),
            Short('h') | Long("help") => {
                print!("{USB_GROW_HELP}");
                std::process::exit(0);
            }
            Value(v) if disk.is_none() => disk = Some(std::path::PathBuf::from(v)),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let disk = disk.context("bty usb-grow needs the stick (see bty usb-grow --help)")?;
    let baked =
        baked.context("bty usb-grow needs --baked SERIAL:SECTORS (see bty usb-grow --help)")?;
    Ok(UsbGrowArgs { disk, baked })
}

/// `--server` as a base URL: a bare host gets http://, a trailing slash goes.
pub fn server_url(s: &str) -> String {
    let s = s.trim().trim_end_matches('/');
    if s.contains("://") { s.to_string() } else { format!("http://{s}") }
}

/// Arguments of `bty flash`.
pub struct FlashArgs {
    pub source: String,
    pub target: std::path::PathBuf,
    pub sha256: Option<[u8; 32]>,
    pub verify: bool,
    pub zero_skip: bool,
    pub yes: bool,
    pub progress: crate::flash::progress::Mode,
}

fn parse_flash(parser: &mut lexopt::Parser) -> Result<FlashArgs> {
    let mut positional = Vec::new();
    let mut args = FlashArgs {
        source: String::new(),
        target: Default::default(),
        sha256: None,
        verify: false,
        zero_skip: true,
        yes: false,
        progress: crate::flash::progress::Mode::Auto,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("sha256") => {
                args.sha256 = Some(crate::flash::parse_sha256(&parser.value()?.string()?)?)
            }
            Long("verify") => args.verify = true,
            Long("no-zero-skip") => args.zero_skip = false,
            Short('y') | Long("yes") => args.yes = true,
            Long("progress") => {
                let v = parser.value()?.string()?;
                args.progress = crate::flash::progress::Mode::parse(&v).ok_or_else(|| {
                    crate::error::Error::msg(format!(
                        "invalid --progress {v:?}: expected auto, bar, log, json or none"
                    ))
                })?;
            }
            Short('h') | Long("help") => {
                print!("{HELP}");
                std::process::exit(0);
            }
            Value(v) => positional.push(v.string()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let [source, target]: [String; 2] = positional.try_into().map_err(|p: Vec<String>| {
        crate::error::Error::msg(format!(
            "bty flash takes SOURCE and TARGET, got {} argument(s) (see bty --help)",
            p.len()
        ))
    })?;
    args.source = source;
    args.target = target.into();
    Ok(args)
}

/// Arguments of `bty inspect`.
pub struct InspectArgs {
    pub source: String,
    pub json: bool,
    pub sha256: bool,
}

fn parse_inspect(parser: &mut lexopt::Parser) -> Result<InspectArgs> {
    let mut source = None;
    let (mut json, mut sha256) = (false, false);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("json") => json = true,
            Long("sha256") => sha256 = true,
            Short('h') | Long("help") => {
                print!("{HELP}");
                std::process::exit(0);
            }
            Value(v) if source.is_none() => source = Some(v.string()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let source = source
        .ok_or_else(|| crate::error::Error::msg("bty inspect takes SOURCE (see bty --help)"))?;
    Ok(InspectArgs { source, json, sha256 })
}

/// Arguments of `bty images`.
pub struct ImagesArgs {
    pub catalog: Option<String>,
    pub json: bool,
}

fn parse_images(parser: &mut lexopt::Parser) -> Result<ImagesArgs> {
    let mut args = ImagesArgs { catalog: None, json: false };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("catalog") => args.catalog = Some(parser.value()?.string()?),
            Long("json") => args.json = true,
            Short('h') | Long("help") => {
                print!("{HELP}");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(args)
}

const DISKS_HELP: &str = "\
bty disks: list this machine's disks and whether bty may write them

Usage:
  bty disks [--json] [--all]

Reads sysfs and the udev database (no lsblk needed). One row per whole disk:
path, size (as lsblk prints it), model, transport, serial, and the verdict:
\"yes\", or \"no\" with the reason bty flash would refuse it (it holds the
running system or its boot medium, is read-only, mounted or has a mounted
partition, is swap, is held by RAID/LVM/device-mapper, or has no medium).

Serials come from the udev database, then sysfs, then the disk itself (SCSI
INQUIRY, VPD page 0x80), so they match lsblk's even where there is no udev.

Options:
  --json    print a JSON array: the InventoryDisk fields bty-web stores (path,
            size, vendor, model, serial, tran, removable, readonly) followed by
            name, size_bytes, rotational, logical_block_size,
            physical_block_size, mountpoints, holders, root, boot_medium,
            writable and refusal
  --all     also list loop, ram, zram, optical and device-mapper/md devices
";

const INVENTORY_HELP: &str = "\
bty inventory: this machine's disks and hardware, as reported to bty-web

Usage:
  bty inventory [--json] [--all] [--no-lshw]

The hardware tree is `lshw -json` when lshw is installed (killed after 30 s);
otherwise bty builds an lshw-shaped tree itself from /sys/class/dmi/id,
/proc/cpuinfo, /proc/meminfo and /sys/class/net (system, firmware, processors,
memory, network interfaces and their MACs), so a live environment needs no lshw.

Options:
  --json      print the body of POST /pxe/{mac}/inventory as bty-web takes it:
              {\"disks\": [InventoryDisk, ...], \"lshw\": tree} (at most 64 disks)
  --all       also list loop, ram, zram, optical and device-mapper/md devices
  --no-lshw   use bty's own summary even when lshw is installed

Environment: BTY_NO_LSHW=1 (or true, yes, on) is --no-lshw.
";

/// Arguments of `bty disks`.
pub struct DisksArgs {
    pub json: bool,
    pub all: bool,
}

fn parse_disks(parser: &mut lexopt::Parser) -> Result<DisksArgs> {
    let mut args = DisksArgs { json: false, all: false };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("json") => args.json = true,
            Long("all") | Short('a') => args.all = true,
            Short('h') | Long("help") => {
                print!("{DISKS_HELP}");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(args)
}

/// Arguments of `bty inventory`.
pub struct InventoryArgs {
    pub json: bool,
    pub all: bool,
    pub lshw: bool,
}

fn parse_inventory(parser: &mut lexopt::Parser) -> Result<InventoryArgs> {
    let no_lshw = std::env::var("BTY_NO_LSHW")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
    let mut args = InventoryArgs { json: false, all: false, lshw: !no_lshw };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("json") => args.json = true,
            Long("all") | Short('a') => args.all = true,
            Long("no-lshw") => args.lshw = false,
            Short('h') | Long("help") => {
                print!("{INVENTORY_HELP}");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(args)
}
