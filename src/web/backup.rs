//! Backups of a running bty-web: a consistent copy of state.db (SQLite's online backup API),
//! the catalog as `catalog.toml`, the state dir's `bty.toml` and an `inventory.json` export, in
//! one `.tar.zst` under `<state>/backups/` with a `MANIFEST.sha256`; written to a hidden temp
//! file, synced and renamed, so `backups/` never holds half a backup. Retention keeps the newest
//! N. `bty-web restore FILE` checks the manifest and puts a backup back into a stopped state dir.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Context, Result};
use crate::web::app::App;
use crate::web::db::JobKind;
use crate::web::jobs::{self, Ctx, Jobs};

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
    Jobs::start(app, JobKind::Backup, create)
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
    let state = app.settings().state_dir();
    let dir = dir(&state);
    private_dir(&dir)?;
    let tmp_db = dir.join(format!(".job-{}-state.db", ctx.id));
    let tmp_tar = dir.join(format!(".job-{}{SUFFIX}", ctx.id));
    let _cleanup = jobs::TempFiles(vec![tmp_db.clone(), tmp_tar.clone()]);
    // SQLite would create the copy with the umask's mode; an empty 0600 file is a valid
    // database for it to fill, and no reader ever sees the copy under a wider mode.
    private_file(&tmp_db)?;
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
        let file = private_file(&tmp_tar)?;
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
        // The small files count in the total but tick nothing: without this a finished
        // backup would read as stopped short of 100%.
        ctx.progress(total, Some(total));
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
    app.db.event(
        "backup.created",
        None,
        &format!("backup {name} written ({})", crate::units::bytes(size)),
        Some(serde_json::json!({ "name": name, "size_bytes": size, "job": ctx.id })),
    );
    prune(app, keep(app))?;
    Ok(format!("{name} ({})", crate::units::bytes(size)))
}

/// Creates `dir` 0700, or narrows it to 0700: backups hold state.db and bty.toml, which may
/// hold the admin password.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private (0700)", dir.display()))
}

/// A new file, 0600 from its first byte.
fn private_file(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
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
    for old in list(&app.settings().state_dir())?.into_iter().skip(keep) {
        fs::remove_file(&old.path).with_context(|| format!("removing {}", old.path))?;
        app.db.event(
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
            let gone = crate::web::pxe::expire_discovered(&app.db, &app.settings());
            app.hub.changed_macs(gone.iter().map(String::as_str));
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
    let newest = list(&app.settings().state_dir())?.into_iter().next();
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
    crate::ensure!(
        len <= USTAR_MAX,
        "archiving {name}: {len} bytes is more than a ustar entry can hold ({USTAR_MAX})"
    );
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

/// Restore writes entries bigger than ustar's 11 octal digits nowhere: the writer cannot
/// express them either.
const USTAR_MAX: u64 = (1 << 33) - 1;

/// The entries a backup may hold and the most bytes each may have. Anything else, the
/// `session-secret` above all (whoever wrote the archive could forge sessions with it), is
/// refused.
const ENTRIES: [(&str, u64); 5] = [
    (MANIFEST, 64 << 10),
    ("state.db", USTAR_MAX),
    ("catalog.toml", crate::catalog::MAX_BYTES),
    ("bty.toml", 1 << 20),
    ("inventory.json", USTAR_MAX),
];

/// The entries restore puts into the state dir; the others are only checked.
const RESTORED: [&str; 3] = ["state.db", "catalog.toml", "bty.toml"];

/// One entry of a backup as read: its name, size and sha256 (hex).
#[derive(Debug)]
struct Entry {
    name: &'static str,
    len: u64,
    sha256: String,
}

/// Where `read_tar` sends an entry's bytes.
type Sink<'a> = &'a mut dyn FnMut(&'static str) -> Result<Box<dyn Write>>;

/// Reads the tar stream of a backup, one entry at a time and never more than a block in
/// memory (the manifest aside, which is capped small): each entry's header is checked (its
/// checksum, a regular file, a known plain name, not seen before, within its cap) before any
/// of its bytes go to `sink`. Returns the entries and the manifest's text; `label` names the
/// archive in messages.
fn read_tar(r: &mut dyn Read, label: &str, sink: Sink<'_>) -> Result<(Vec<Entry>, String)> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut manifest = None;
    loop {
        let n = entries.len() + 1;
        let mut h = [0u8; 512];
        fill(r, &mut h, || {
            format!("reading {label}: truncated archive (no end marker after {} entries)", n - 1)
        })?;
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let (name, len) = check_header(&h)
            .map_err(|why| crate::error::Error::msg(format!("{label}: entry #{n} {why}")))?;
        crate::ensure!(
            !entries.iter().any(|e| e.name == name),
            "{label}: entry #{n} {name}: appears twice (a backup holds each file once)"
        );
        let mut hasher = Sha256::new();
        let mut body = (&mut *r).take(len);
        let copied = if name == MANIFEST {
            let mut text = Vec::new();
            let got =
                body.read_to_end(&mut text).with_context(|| format!("reading {label}: {name}"))?;
            hasher.update(&text);
            manifest = Some(String::from_utf8(text).map_err(|_| {
                crate::error::Error::msg(format!("{label}: {name} is not UTF-8 text"))
            })?);
            got as u64
        } else {
            let mut out = sink(name)?;
            let mut tee = Tee { hasher: &mut hasher, out: &mut *out };
            let got = io::copy(&mut body, &mut tee)
                .with_context(|| format!("reading {label}: {name}"))?;
            out.flush().with_context(|| format!("writing {name} of {label}"))?;
            got
        };
        crate::ensure!(
            copied == len,
            "{label}: truncated archive ({name} ends after {copied} of {len} bytes)"
        );
        let pad = ((512 - len % 512) % 512) as usize;
        fill(r, &mut h[..pad], || format!("reading {label}: truncated archive (after {name})"))?;
        entries.push(Entry { name, len, sha256: crate::hex::encode(&hasher.finalize()) });
    }
    let manifest = manifest.with_context(|| format!("{label} has no {MANIFEST}"))?;
    Ok((entries, manifest))
}

/// Fills `buf`; an early end is `what` alone (the I/O error's text would add nothing).
fn fill(r: &mut dyn Read, buf: &mut [u8], what: impl FnOnce() -> String) -> Result<()> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(crate::error::Error::msg(what())),
        Err(e) => Err(crate::error::Error::from(e).wrap(what())),
    }
}

/// Hashes what it passes on.
struct Tee<'a> {
    hasher: &'a mut Sha256,
    out: &'a mut dyn Write,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The name and size of an entry whose header is acceptable, or why not (after "entry #n").
fn check_header(h: &[u8; 512]) -> Result<(&'static str, u64), String> {
    let stored = octal(&h[148..156]);
    let mut blank = *h;
    blank[148..156].copy_from_slice(b"        ");
    let sum: u64 = blank.iter().map(|&b| u64::from(b)).sum();
    if stored != Some(sum) {
        return Err("has a bad header checksum (not a tar archive, or a damaged one)".into());
    }
    let field = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let mut shown = field(&h[..100]);
    // POSIX ustar splits long paths into a prefix; GNU tar keeps other fields there.
    if &h[257..263] == b"ustar\0" && h[345] != 0 {
        shown = format!("{}/{shown}", field(&h[345..500]));
    }
    let kind = match h[156] {
        b'0' | 0 => None,
        b'1' => Some("a hard link"),
        b'2' => Some("a symbolic link"),
        b'3' => Some("a character device"),
        b'4' => Some("a block device"),
        b'5' => Some("a directory"),
        b'6' => Some("a FIFO"),
        b'L' | b'K' => Some("a GNU long-name record"),
        b'x' | b'g' => Some("a pax extended header"),
        _ => Some("not a regular file"),
    };
    if let Some(kind) = kind {
        return Err(format!("{shown:?} is {kind}: a backup holds only regular files"));
    }
    let why = if shown.is_empty() {
        Some("has no name")
    } else if shown.starts_with('/') {
        Some("is an absolute path")
    } else if shown.split(['/', '\\']).any(|s| s == "..") {
        Some("contains a '..' segment")
    } else if shown.contains(['/', '\\']) {
        Some("is a path: a backup holds plain file names")
    } else if shown.chars().any(char::is_control) {
        Some("contains control characters")
    } else if shown == "session-secret" {
        Some("is never restored (it would let whoever wrote the archive forge sessions)")
    } else {
        None
    };
    if let Some(why) = why {
        return Err(format!("{shown:?} {why}"));
    }
    let Some(&(name, cap)) = ENTRIES.iter().find(|(n, _)| *n == shown) else {
        let known: Vec<&str> = ENTRIES.iter().map(|(n, _)| *n).collect();
        return Err(format!("{shown:?} is not a backup file (expected {})", known.join(", ")));
    };
    let Some(len) = octal(&h[124..136]) else {
        return Err(format!("{name}: the size field is not an octal number"));
    };
    if len > cap {
        return Err(format!(
            "{name}: {len} bytes is more than the {} a backup's {name} may have",
            crate::units::bytes(cap)
        ));
    }
    Ok((name, len))
}

/// A tar numeric field: octal digits, padded with NULs or spaces.
fn octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?.trim_matches(['\0', ' ']);
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u64::from_str_radix(s, 8).ok()
}

/// Checks the entries against the manifest: every line well-formed and naming a known entry
/// once, every entry listed, every digest matching.
fn check_manifest(entries: &[Entry], manifest: &str, label: &str) -> Result<()> {
    let mut listed: Vec<&str> = Vec::new();
    for (i, line) in manifest.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let n = i + 1;
        let (sum, name) = line
            .split_once("  ")
            .with_context(|| format!("{label}: {MANIFEST} line {n} is not \"<sha256>  <name>\""))?;
        let entry = entries.iter().find(|e| e.name != MANIFEST && e.name == name);
        let Some(entry) = entry else {
            crate::bail!("{label}: {MANIFEST} line {n} lists a file the archive does not hold")
        };
        crate::ensure!(
            !listed.contains(&entry.name),
            "{label}: {MANIFEST} lists {} twice",
            entry.name
        );
        crate::ensure!(
            sum.eq_ignore_ascii_case(&entry.sha256),
            "{label}: {} does not match its manifest sha256",
            entry.name
        );
        listed.push(entry.name);
    }
    if let Some(e) = entries.iter().find(|e| e.name != MANIFEST && !listed.contains(&e.name)) {
        crate::bail!("{label}: the archive holds {}, which {MANIFEST} does not list", e.name);
    }
    Ok(())
}

/// Opens a backup file's tar stream (zstd).
fn open_backup(path: &Path) -> Result<impl Read> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut z = zstd::Decoder::new(file).with_context(|| format!("reading {}", path.display()))?;
    // A frame may ask for any window size; 128 MiB (zstd's own default limit, said here so it
    // does not depend on the library) covers what zstd writes without --long=31, and bounds
    // what a crafted archive can make restore allocate.
    z.window_log_max(27).with_context(|| format!("reading {}", path.display()))?;
    Ok(z)
}

/// `bty-web restore FILE`: reads the backup into hidden temp files in the stopped state dir
/// (streamed, each entry checked before its bytes are read), verifies the manifest, and only
/// then renames state.db (and catalog.toml, bty.toml) into place, keeping what was there as
/// `*.pre-restore-<UTC>`. A refused archive leaves the state dir as it was.
pub fn restore(file: &Path, state: &Path) -> Result<Vec<String>> {
    let _lock = crate::web::serve::lock_state_dir(state)?;
    let label = file.display().to_string();
    let temp = |name: &str| state.join(format!(".restore-{}-{name}", std::process::id()));
    let staged = std::cell::RefCell::new(jobs::TempFiles(Vec::new()));
    let checked = (|| {
        let mut r = open_backup(file)?;
        let mut sink = |name: &'static str| -> Result<Box<dyn Write>> {
            if !RESTORED.contains(&name) {
                return Ok(Box::new(io::sink()));
            }
            let path = temp(name);
            let f = private_file(&path)?;
            staged.borrow_mut().0.push(path);
            Ok(Box::new(io::BufWriter::with_capacity(256 << 10, f)))
        };
        let (entries, manifest) = read_tar(&mut r, &label, &mut sink)?;
        check_manifest(&entries, &manifest, &label)?;
        crate::ensure!(entries.iter().any(|e| e.name == "state.db"), "{label} holds no state.db");
        Ok(entries)
    })();
    let entries = checked
        .with_context(|| format!("restore refused, {} is left as it was", state.display()))?;
    let staged = staged.into_inner();
    for path in &staged.0 {
        File::open(path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", path.display()))?;
    }
    let stamp = crate::units::now_iso8601().replace(':', "-");
    let mut done = Vec::new();
    for e in entries.iter().filter(|e| RESTORED.contains(&e.name)) {
        let name = e.name;
        let dest = state.join(name);
        let keep = state.join(format!("{name}.pre-restore-{stamp}"));
        if fs::symlink_metadata(&dest).is_ok() {
            fs::rename(&dest, &keep)
                .with_context(|| format!("setting aside {}", dest.display()))?;
            done.push(format!("kept the previous {name} as {}", keep.display()));
        }
        if name == "state.db" {
            // A killed server's last commits may still be in its WAL: it goes with the copy
            // kept aside (SQLite finds it by name), never onto the restored database.
            let wal = state.join("state.db-wal");
            if wal.exists() {
                let kept_wal = state.join(format!("state.db.pre-restore-{stamp}-wal"));
                fs::rename(&wal, &kept_wal)
                    .with_context(|| format!("setting aside {}", wal.display()))?;
            }
            let _ = fs::remove_file(state.join("state.db-shm"));
        }
        fs::rename(temp(name), &dest).with_context(|| format!("renaming to {}", dest.display()))?;
        done.push(format!("restored {} ({})", dest.display(), crate::units::bytes(e.len)));
    }
    crate::web::auth::new_secret(state)?;
    done.push("ended every session (a new session-secret)".into());
    if let Err(e) = File::open(state).and_then(|d| d.sync_all()) {
        crate::warn!("syncing {}: {e}", state.display());
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

    /// A backup's tar stream (uncompressed) with these files and a manifest listing them.
    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut manifest = String::new();
        for (name, data) in files {
            manifest.push_str(&format!("{}  {name}\n", crate::hex::encode(&Sha256::digest(data))));
        }
        let mut out = Vec::new();
        append(&mut out, MANIFEST, manifest.as_bytes(), 1).unwrap();
        for (name, data) in files {
            append(&mut out, name, data, 1).unwrap();
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// Reads and checks an archive, discarding the bytes: the restore path minus the files.
    fn check(bytes: &[u8]) -> Result<Vec<Entry>> {
        let mut sink = |_: &'static str| -> Result<Box<dyn Write>> { Ok(Box::new(io::sink())) };
        let (entries, manifest) = read_tar(&mut &bytes[..], "t.tar", &mut sink)?;
        check_manifest(&entries, &manifest, "t.tar")?;
        Ok(entries)
    }

    fn valid() -> Vec<u8> {
        archive(&[
            ("state.db", b"SQLite format 3\0 and some pages"),
            ("catalog.toml", b"version = 1\n"),
            ("bty.toml", b"[admin]\npassword = \"x\"\n"),
            ("inventory.json", b"{}"),
        ])
    }

    #[test]
    fn a_written_archive_reads_back_and_bad_entries_are_named() {
        let e = check(&valid()).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.name).collect();
        assert_eq!(names, [MANIFEST, "state.db", "catalog.toml", "bty.toml", "inventory.json"]);
        for (name, want) in [
            ("../x", "contains a '..' segment"),
            ("/tmp/abs", "is an absolute path"),
            ("a/state.db", "is a path"),
            ("session-secret", "is never restored"),
            ("notes.txt", "is not a backup file"),
            ("", "has no name"),
        ] {
            let err = check(&archive(&[(name, b"x")])).unwrap_err().to_string();
            assert!(err.contains(want), "{name:?}: {err}");
        }
        let err = check(&archive(&[("bty.toml", b"a"), ("bty.toml", b"b")])).unwrap_err();
        assert!(err.to_string().contains("bty.toml: appears twice"), "{err}");
    }

    /// Sets the checksum of every non-zero 512-byte block as if it were a header, so that
    /// mutations get past the checksum and reach the rest of the header checks.
    fn fix_checksums(b: &mut [u8]) {
        for block in b.chunks_exact_mut(512).filter(|c| c.iter().any(|&x| x != 0)) {
            block[148..156].copy_from_slice(b"        ");
            let sum: u64 = block.iter().map(|&x| u64::from(x)).sum();
            block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        }
    }

    /// Seeded mutations of a valid archive and random bytes: every outcome is a clean result,
    /// and what is read is bounded by the input (the sink keeps nothing, the manifest is capped).
    #[test]
    fn fuzz_the_backup_tar_reader() {
        use crate::fuzz::{Rng, iterations, mutate, seed};
        let base = valid();
        let mut rng = Rng::new(seed());
        let (mut ok, mut refused) = (0, 0);
        for i in 0..iterations(20_000) {
            let mut input = if rng.chance(8) {
                (0..rng.below(4096)).map(|_| rng.next() as u8).collect()
            } else {
                mutate(&mut rng, &base, 64 << 10)
            };
            if rng.chance(2) {
                fix_checksums(&mut input);
            }
            match std::panic::catch_unwind(|| check(&input)) {
                Ok(Ok(entries)) => {
                    assert!(entries.iter().map(|e| e.len).sum::<u64>() <= input.len() as u64);
                    ok += 1
                }
                Ok(Err(e)) => {
                    assert!(e.to_string().contains("t.tar"), "seed {} #{i}: {e}", seed());
                    refused += 1
                }
                Err(_) => panic!("seed {} iteration {i}: the tar reader panicked", seed()),
            }
        }
        assert!(refused > 0, "{ok} accepted, none refused");
    }
}
