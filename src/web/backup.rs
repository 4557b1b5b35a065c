//! Backups of a running bty-web: a consistent copy of state.db (SQLite's online backup API),
//! the catalog as `catalog.toml`, the state dir's `bty.toml` and an `inventory.json` export, in
//! one `.tar.zst` under `<state>/backups/` with a `MANIFEST.sha256`; written to a hidden temp
//! file, synced and renamed, so `backups/` never holds half a backup. Retention keeps the newest
//! N. `bty-web restore FILE` checks the manifest and puts a backup back into a stopped state dir.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Context, Result};
use crate::web::jobs::{self, Ctx, Jobs};
use crate::web::routes::App;

/// File names of backups: `bty-backup-<UTC>.tar.zst`, which sort by age.
const PREFIX: &str = "bty-backup-";
const SUFFIX: &str = ".tar.zst";
/// The manifest inside every backup.
const MANIFEST: &str = "MANIFEST.sha256";

/// One backup file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupFile {
    pub name: String,
    pub size_bytes: u64,
    pub path: String,
}

/// Starts a backup job; None when one is running already.
pub fn start(app: &Arc<App>) -> Result<Option<i64>> {
    Jobs::start(app, "backup", create)
}

/// The backups directory of a state dir.
pub fn dir(state: &Path) -> PathBuf {
    state.join("backups")
}

/// The backups present, newest first.
pub fn list(state: &Path) -> Result<Vec<BackupFile>> {
    let dir = dir(state);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(crate::error::Error::from(e).wrap(format!("listing {}", dir.display())));
        }
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(PREFIX) && name.ends_with(SUFFIX) {
            let size_bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(BackupFile { path: e.path().display().to_string(), name, size_bytes });
        }
    }
    out.sort_by(|a, b| b.name.cmp(&a.name));
    Ok(out)
}

/// The backup job.
fn create(ctx: &Ctx) -> Result<String> {
    let app = &ctx.app;
    let state = app.settings.state_dir();
    let dir = dir(&state);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp_db = dir.join(format!(".job-{}-state.db", ctx.id));
    let tmp_tar = dir.join(format!(".job-{}{SUFFIX}", ctx.id));
    let _cleanup = jobs::TempFiles(vec![tmp_db.clone(), tmp_tar.clone()]);
    app.db.backup_to(&tmp_db)?;
    jobs::check_cancel(ctx)?;

    let catalog = crate::web::catalog::to_toml(&app.db.catalog()?);
    let inventory = crate::web::export::inventory_json(&app.db)?;
    let bty_toml = match fs::read(state.join("bty.toml")) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(crate::error::Error::from(e).wrap("reading bty.toml".into())),
    };
    let db_len = fs::metadata(&tmp_db).map(|m| m.len()).context("sizing the database copy")?;
    let db_sha = {
        let mut h = Sha256::new();
        io::copy(&mut File::open(&tmp_db).context("reading the database copy")?, &mut h)
            .context("hashing the database copy")?;
        crate::hex::encode(&h.finalize())
    };
    let mut small: Vec<(&str, Vec<u8>)> =
        vec![("catalog.toml", catalog.into_bytes()), ("inventory.json", inventory.into_bytes())];
    if let Some(b) = bty_toml {
        small.push(("bty.toml", b));
    }
    let mut manifest = format!("{db_sha}  state.db\n");
    for (name, data) in &small {
        manifest.push_str(&format!("{}  {name}\n", crate::hex::encode(&Sha256::digest(data))));
    }
    let total = db_len + small.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
    let mtime = crate::units::now_secs();
    {
        let file =
            File::create(&tmp_tar).with_context(|| format!("creating {}", tmp_tar.display()))?;
        let mut z = zstd::Encoder::new(file, 3).context("starting zstd")?;
        append(&mut z, MANIFEST, manifest.as_bytes(), mtime)?;
        let mut db = File::open(&tmp_db).context("reading the database copy")?;
        append_reader(&mut z, "state.db", db_len, &mut db, mtime, &|n| {
            ctx.progress(n, Some(total));
            jobs::check_cancel(ctx)
        })?;
        for (name, data) in &small {
            append(&mut z, name, data, mtime)?;
        }
        // Two zero blocks end a tar archive.
        z.write_all(&[0u8; 1024]).context("ending the archive")?;
        let file = z.finish().context("finishing zstd")?;
        file.sync_all().with_context(|| format!("syncing {}", tmp_tar.display()))?;
    }
    jobs::check_cancel(ctx)?;
    let stamp = crate::units::now_iso8601().replace(':', "-");
    // The job id keeps two backups of the same second apart.
    let name = format!("{PREFIX}{stamp}-{}{SUFFIX}", ctx.id);
    let dest = dir.join(&name);
    fs::rename(&tmp_tar, &dest).with_context(|| format!("renaming to {}", dest.display()))?;
    if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
        crate::warn!("syncing {}: {e}", dir.display());
    }
    let size = fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
    let _ = app.db.add_event(
        "backup.created",
        None,
        &format!("backup {name} written ({})", crate::units::bytes(size)),
        Some(serde_json::json!({ "name": name, "size_bytes": size, "job": ctx.id })),
    );
    prune(app, keep(app))?;
    Ok(format!("{name} ({})", crate::units::bytes(size)))
}

/// Removes what a backup killed mid-way left behind (its hidden temp files); at start.
pub fn remove_leftovers(state: &Path) {
    let Ok(entries) = fs::read_dir(dir(state)) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(".job-") {
            match fs::remove_file(e.path()) {
                Ok(()) => {
                    crate::info!("removed {}, left by an interrupted backup", e.path().display())
                }
                Err(err) => crate::warn!("removing {}: {err}", e.path().display()),
            }
        }
    }
}

/// How many backups retention keeps (settings table `backup.keep`, default 7).
pub fn keep(app: &App) -> usize {
    app.db
        .setting("backup.keep")
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
        .filter(|n: &usize| *n > 0)
        .unwrap_or(7)
}

/// Deletes all but the newest `keep` backups.
pub fn prune(app: &App, keep: usize) -> Result<()> {
    for old in list(&app.settings.state_dir())?.into_iter().skip(keep) {
        fs::remove_file(&old.path).with_context(|| format!("removing {}", old.path))?;
        let _ = app.db.add_event(
            "backup.pruned",
            None,
            &format!("backup {} removed (retention keeps {keep})", old.name),
            Some(serde_json::json!({ "name": old.name })),
        );
    }
    Ok(())
}

/// Starts a backup when the schedule (settings `backup.enabled`, `backup.interval_hours`) says
/// one is due; checked every minute by the scheduler thread.
pub fn run_scheduler(app: Arc<App>) -> io::Result<()> {
    std::thread::Builder::new().name("backup-schedule".into()).spawn(move || {
        let stop = crate::sys::cancel_flag();
        let mut waited = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_secs(1));
            waited += 1;
            if waited < 60 {
                continue;
            }
            waited = 0;
            if let Err(e) = scheduled(&app) {
                crate::warn!("backup schedule: {e}");
            }
            // The one periodic worker also runs the expiry of stale discoveries.
            if crate::web::pxe::expire_discovered(&app.db, &app.settings) > 0 {
                app.hub.changed();
            }
        }
    })?;
    Ok(())
}

fn scheduled(app: &Arc<App>) -> Result<()> {
    let on = app.db.setting("backup.enabled")?.is_some_and(|v| v == "true" || v == "1");
    if !on {
        return Ok(());
    }
    let hours: u64 = app
        .db
        .setting("backup.interval_hours")?
        .and_then(|v| v.parse().ok())
        .filter(|h| *h > 0)
        .unwrap_or(24);
    let newest = list(&app.settings.state_dir())?.into_iter().next();
    let age = newest
        .and_then(|b| fs::metadata(&b.path).ok())
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok());
    if age.is_none_or(|a| a.as_secs() >= hours * 3600) {
        start(app)?;
    }
    Ok(())
}

/// Appends one in-memory file to a tar stream.
fn append(w: &mut impl Write, name: &str, data: &[u8], mtime: u64) -> Result<()> {
    append_reader(w, name, data.len() as u64, &mut &data[..], mtime, &|_| Ok(()))
}

/// Appends one file of `len` bytes from `r` to a tar stream (ustar header, data, padding);
/// `tick` sees the bytes copied so far and can stop the copy.
fn append_reader(
    w: &mut impl Write,
    name: &str,
    len: u64,
    r: &mut impl Read,
    mtime: u64,
    tick: &dyn Fn(u64) -> Result<()>,
) -> Result<()> {
    w.write_all(&ustar_header(name, len, mtime)).with_context(|| format!("archiving {name}"))?;
    let mut buf = vec![0u8; 256 << 10];
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min(usize::try_from(len - done).unwrap_or(usize::MAX));
        let n = r.read(&mut buf[..want]).with_context(|| format!("reading {name}"))?;
        crate::ensure!(n > 0, "archiving {name}: it ended after {done} of {len} bytes");
        w.write_all(&buf[..n]).with_context(|| format!("archiving {name}"))?;
        done += n as u64;
        tick(done)?;
    }
    let pad = (512 - (len % 512) as usize) % 512;
    w.write_all(&vec![0u8; pad]).with_context(|| format!("archiving {name}"))?;
    Ok(())
}

/// A ustar header for a regular file owned by root, mode 0600.
fn ustar_header(name: &str, len: u64, mtime: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
        let s = format!("{v:0w$o}", w = width - 1);
        h[at..at + width - 1].copy_from_slice(&s.as_bytes()[s.len() - (width - 1)..]);
    };
    let n = name.as_bytes();
    h[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
    octal(&mut h, 100, 8, 0o600);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, len);
    octal(&mut h, 136, 12, mtime);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// The files of a backup, read back and checked against its manifest.
pub fn read_backup(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut z = zstd::Decoder::new(file).with_context(|| format!("reading {}", path.display()))?;
    let mut files = Vec::new();
    loop {
        let mut h = [0u8; 512];
        z.read_exact(&mut h)
            .with_context(|| format!("reading {}: truncated archive", path.display()))?;
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&h[..name_end]).into_owned();
        let size_field =
            String::from_utf8_lossy(&h[124..135]).trim_matches(['\0', ' ']).to_string();
        let len = u64::from_str_radix(&size_field, 8)
            .with_context(|| format!("reading {}: bad size of {name}", path.display()))?;
        crate::ensure!(len <= 1 << 34, "reading {}: {name} claims {len} bytes", path.display());
        let mut data = vec![0u8; len as usize];
        z.read_exact(&mut data)
            .with_context(|| format!("reading {}: {name} is cut short", path.display()))?;
        let pad = (512 - (len % 512) as usize) % 512;
        let mut skip = vec![0u8; pad];
        z.read_exact(&mut skip)
            .with_context(|| format!("reading {}: truncated archive", path.display()))?;
        files.push((name, data));
    }
    let manifest = files
        .iter()
        .find(|(n, _)| n == MANIFEST)
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .with_context(|| format!("{} has no {MANIFEST}", path.display()))?;
    let mut listed = 0;
    for line in manifest.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, name) = line
            .split_once("  ")
            .with_context(|| format!("{}: malformed manifest line {line:?}", path.display()))?;
        let (_, data) = files.iter().find(|(n, _)| n == name).with_context(|| {
            format!("{}: {name} is in the manifest but not the archive", path.display())
        })?;
        let got = crate::hex::encode(&Sha256::digest(data));
        crate::ensure!(got == sum, "{}: {name} does not match its manifest sha256", path.display());
        listed += 1;
    }
    crate::ensure!(
        listed + 1 == files.len(),
        "{}: the archive holds files the manifest does not list",
        path.display()
    );
    Ok(files)
}

/// `bty-web restore FILE`: verifies the backup, then puts its state.db (and catalog.toml,
/// bty.toml) into the stopped state dir, keeping what was there as `*.pre-restore-<UTC>`.
pub fn restore(file: &Path, state: &Path) -> Result<Vec<String>> {
    let _lock = crate::web::lock_state_dir(state)?;
    let files = read_backup(file)?;
    crate::ensure!(
        files.iter().any(|(n, _)| n == "state.db"),
        "{} holds no state.db",
        file.display()
    );
    fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    let stamp = crate::units::now_iso8601().replace(':', "-");
    let mut done = Vec::new();
    for (name, data) in &files {
        if name == MANIFEST || name == "inventory.json" {
            continue;
        }
        let dest = state.join(name);
        if dest.exists() {
            let keep = state.join(format!("{name}.pre-restore-{stamp}"));
            fs::rename(&dest, &keep)
                .with_context(|| format!("setting aside {}", dest.display()))?;
            done.push(format!("kept the previous {name} as {}", keep.display()));
        }
        if name == "state.db" {
            for side in ["state.db-wal", "state.db-shm"] {
                let _ = fs::remove_file(state.join(side));
            }
        }
        let tmp = state.join(format!(".{name}.restore"));
        fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, &dest).with_context(|| format!("renaming to {}", dest.display()))?;
        done.push(format!("restored {}", dest.display()));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_have_valid_checksums() {
        let h = ustar_header("state.db", 1234, 1_700_000_000);
        let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut blank = h;
        blank[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, blank.iter().map(|&b| u64::from(b)).sum::<u64>());
        assert_eq!(&h[124..135], b"00000002322");
    }
}
