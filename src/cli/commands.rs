//! `bty flash` and `bty inspect`: plan, confirm, run, report.

use std::io::{BufRead, Read, Write};
use std::process::ExitCode;

use sha2::{Digest, Sha256};

use crate::cli::{FlashArgs, InspectArgs};
use crate::disks::TargetKind;
use crate::error::{Context, Result};
use crate::flash::probe;
use crate::flash::progress::{Mode, Reporter};
use crate::flash::{self, FlashError, Options, Plan};
use crate::source::Source;
use crate::units;

/// Exit status for "refused: nothing was written".
const REFUSED: u8 = 1;
/// Exit status for "failed after writing began" (the target was blanked).
const FAILED: u8 = 2;
/// Exit status after SIGINT/SIGTERM, as shells report a signal-killed command.
const CANCELLED: u8 = 130;

pub fn flash(args: FlashArgs) -> Result<ExitCode> {
    let mut reporter = Reporter::new(args.progress);
    let plan = match Plan::new(&args.source, &args.target) {
        Ok(p) => p,
        Err(e) => {
            reporter.fail(&e.to_string());
            crate::error!("{e}");
            return Ok(ExitCode::from(REFUSED));
        }
    };
    if args.progress != Mode::Json {
        describe_plan(&plan);
    }
    if let TargetKind::Block(dev) = &plan.target.kind {
        if !args.yes {
            match confirm(&plan, &dev.name) {
                Ok(true) => {}
                Ok(false) => return Ok(ExitCode::from(REFUSED)),
                Err(e) => {
                    crate::error!("{e}");
                    return Ok(ExitCode::from(REFUSED));
                }
            }
        }
    }
    crate::sys::catch_cancel_signals().context("installing the SIGINT/SIGTERM handler")?;
    let opts = Options { sha256: args.sha256, verify: args.verify, zero_skip: args.zero_skip };
    let cancel = crate::sys::cancel_flag();
    let target = plan.target.resolved.display().to_string();
    match flash::run(&plan, &opts, &mut |s| reporter.update(s), cancel) {
        Ok(report) => {
            reporter.finish(&target, &report);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            reporter.fail(&e.to_string());
            Ok(match e {
                FlashError::Refused(e) => {
                    crate::error!("{e}");
                    ExitCode::from(REFUSED)
                }
                FlashError::Failed(e) => {
                    crate::error!("{e}");
                    crate::error!(
                        "{target}: first and last MiB blanked; the disk holds no usable image"
                    );
                    ExitCode::from(FAILED)
                }
                FlashError::Cancelled => {
                    crate::error!("cancelled; {target}: first and last MiB blanked");
                    ExitCode::from(CANCELLED)
                }
            })
        }
    }
}

fn describe_plan(plan: &Plan) {
    let img = &plan.image;
    let size = img
        .virtual_size
        .map(|n| format!("{} on disk", units::bytes(n)))
        .unwrap_or_else(|| "on-disk size unknown".into());
    crate::info!(
        "image {}: {}, {size}; {}",
        img.source,
        img.format,
        img.partition_table.to_string().lines().next().unwrap_or_default()
    );
    crate::info!("target {}", plan.target.describe());
}

/// Asks on the terminal for the device name before destroying a block device.
fn confirm(plan: &Plan, name: &str) -> Result<bool> {
    let path = plan.target.resolved.display();
    crate::ensure!(
        crate::sys::isatty(0),
        "refusing to write {path} without --yes: there is no terminal to confirm on"
    );
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "\nThis destroys everything on {}.", plan.target.describe());
    let _ = write!(err, "Type the device name ({name}) to continue: ");
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the confirmation")?;
    if line.trim() == name {
        Ok(true)
    } else {
        crate::error!("not confirmed ({:?} is not {name:?}); nothing was written", line.trim());
        Ok(false)
    }
}

pub fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let src = Source::open(&args.source)?;
    let info = probe::probe(&src)?;
    let digest = if args.sha256 { Some(hash_source(&src)?) } else { None };
    // An oras:// layer promises its digest: hashing it all is the chance to check it.
    if let (Some(got), Some(want)) = (&digest, src.digest()) {
        let want = crate::hex::encode(&want);
        crate::ensure!(
            *got == want,
            "sha256 mismatch for {}: the layer digest is {want}, the bytes hash to {got}",
            src.display
        );
    }
    if args.json {
        let mut v = serde_json::to_value(&info).context("encoding the result as JSON")?;
        if let Some(o) = v.as_object_mut() {
            o.insert("sha256".into(), digest.clone().into());
        }
        println!("{}", serde_json::to_string_pretty(&v).context("encoding the result as JSON")?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    let sized = |n: Option<u64>| match n {
        Some(n) => format!("{} ({n} bytes)", units::bytes(n)),
        None => "unknown".into(),
    };
    let fmt =
        if info.iso9660 { format!("{} (ISO 9660)", info.format) } else { info.format.to_string() };
    let _ = writeln!(out, "source:          {}", info.source);
    let _ = writeln!(out, "format:          {fmt}");
    let _ = writeln!(out, "compressed size: {}", sized(info.compressed_size));
    let on_disk = match info.virtual_size {
        Some(_) => format!("{} [{}]", sized(info.virtual_size), info.virtual_size_source),
        None => info.virtual_size_source.clone(),
    };
    let _ = writeln!(out, "on-disk size:    {on_disk}");
    let _ = writeln!(out, "partitions:      {}", info.partition_table);
    if let Some(d) = digest {
        let _ = writeln!(out, "sha256:          {d}");
    }
    Ok(ExitCode::SUCCESS)
}

fn hash_source(src: &Source) -> Result<String> {
    let mut r = src.reader()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).with_context(|| format!("reading {}", src.display))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::hex::encode(&h.finalize()))
}

/// `bty usb-grow`: one line saying what happened, on stdout (the live system's console).
pub fn usb_grow(args: crate::cli::UsbGrowArgs) -> Result<ExitCode> {
    let disk = args.disk.display();
    match crate::usb::grow(&args.disk, args.baked)? {
        crate::usb::Outcome::Grown { from, to, kept } => println!(
            "bty: BTY_IMAGES on {disk} grown from {} to {}, {} of files and folders kept",
            crate::units::bytes(from),
            crate::units::bytes(to),
            crate::units::bytes(kept)
        ),
        crate::usb::Outcome::NotNeeded(why) => {
            println!("bty: BTY_IMAGES on {disk}: nothing to grow ({why})")
        }
    }
    Ok(ExitCode::SUCCESS)
}
