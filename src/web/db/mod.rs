//! bty-web state: one SQLite file, `state.db`, in WAL mode. All SQL lives in this directory:
//! here the `Db` type, opening, the schema and its migration, settings and the write
//! generation; `machines.rs` the machines and their inventory, `contact.rs` a PXE contact and
//! its marks, `catalog.rs` the catalog entries, `events.rs` the event log, `jobs.rs` the jobs,
//! `reference.rs` the reference server's `state.db`, read (never written) for an import.
//!
//! One writer connection behind a mutex, a few reader connections, short transactions and
//! cached prepared statements, so that one PXE contact costs the same whatever the fleet size.
//! A database written by another schema version is set aside as `state.db.<from>.<UTC>.bak`
//! and a fresh one records a `system.schema.reset` event.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::{Context, Result};
use crate::units::now_iso8601;

mod catalog;
mod contact;
mod events;
mod jobs;
mod machines;
mod reference;

pub use catalog::CatalogEntry;
pub use contact::{Contact, Contacted, Decided, PxeMark};
pub use events::Event;
pub use jobs::{Job, JobKind, JobState};
pub use machines::{
    BulkWrite, ImportedMachine, InventoryStored, Machine, MachineKey, MachineUpsert,
};
pub use reference::{StoredMachine, StoredState, read_state};

/// The schema this build writes. Bump it with every incompatible schema change.
pub const SCHEMA_VERSION: &str = "bty-rs-1";

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE machines (
    mac TEXT PRIMARY KEY,
    bty_image_ref TEXT,
    boot_mode TEXT NOT NULL,
    sanboot_drive TEXT,
    target_disk_serial TEXT,
    discovered_at TEXT,
    last_seen_at TEXT,
    last_seen_ip TEXT,
    last_flashed_at TEXT,
    known_disks TEXT,
    known_disks_at TEXT,
    lshw TEXT,
    saw_flasher_boot INTEGER NOT NULL DEFAULT 0,
    boot_disk_next INTEGER NOT NULL DEFAULT 0,
    last_status TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    unclaimed INTEGER NOT NULL DEFAULT 0
);
-- For the count at open and the expiry sweep. On mac, not last_seen_at: every PXE contact that
-- writes changes last_seen_at, and would rewrite this index too.
CREATE INDEX machines_unclaimed ON machines(mac) WHERE unclaimed = 1;
CREATE TABLE machine_labels (
    mac TEXT NOT NULL REFERENCES machines(mac) ON DELETE CASCADE,
    label TEXT NOT NULL,
    PRIMARY KEY (mac, label)
);
CREATE TABLE catalog_entries (
    bty_image_ref TEXT PRIMARY KEY,
    src TEXT NOT NULL UNIQUE,
    disk_image_sha TEXT,
    name TEXT NOT NULL,
    format TEXT NOT NULL,
    size_bytes INTEGER,
    sha_url TEXT,
    description TEXT,
    added_at TEXT NOT NULL
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject_id TEXT,
    message TEXT NOT NULL,
    details TEXT,
    acknowledged INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX events_kind ON events(kind, id);
CREATE INDEX events_subject ON events(subject_id, id);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    progress_bytes INTEGER NOT NULL DEFAULT 0,
    total_bytes INTEGER,
    error TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
";

/// Brings a `bty-rs-1` database written before the `unclaimed` column to this shape: a
/// discovered row that looks never saved since (still in the discovery's mode, no image,
/// `updated_at` still its creation time) counts as unclaimed. Additive: every row is kept.
const ADD_UNCLAIMED: &str = "
ALTER TABLE machines ADD COLUMN unclaimed INTEGER NOT NULL DEFAULT 0;
UPDATE machines SET unclaimed = 1
    WHERE discovered_at IS NOT NULL AND boot_mode = 'bty-inventory' AND bty_image_ref IS NULL
    AND updated_at = created_at;
CREATE INDEX machines_unclaimed ON machines(mac) WHERE unclaimed = 1;
";

/// Readers kept open for concurrent GETs; more requests wait for one.
const READERS: usize = 4;

/// The state database.
pub struct Db {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Signalled when a reader goes back to the pool.
    reader_back: Condvar,
    /// Bumped after every use of the writer, so views built from reads can be cached until the
    /// next write.
    generation: AtomicU64,
    /// Machines discovered by PXE and never saved by the operator, kept by every write that
    /// changes it while holding the writer, so the cap costs no COUNT(*) per contact.
    unclaimed: AtomicU64,
    /// Bytes of stored lshw blobs, kept the same way.
    lshw_bytes: AtomicU64,
    /// `[pxe] max_discovered` and `max_lshw_total_mib` in bytes; u64::MAX for no cap.
    max_unclaimed: AtomicU64,
    max_lshw_bytes: AtomicU64,
}

/// Which growth cap kept something out of the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capped {
    /// An unknown MAC while `[pxe] max_discovered` unclaimed machines exist.
    MaxDiscovered,
    /// An unknown MAC from an address over `[pxe] discoveries_per_minute`.
    Rate,
    /// An lshw blob that would take the stored total over `[pxe] max_lshw_total_mib`.
    LshwTotal,
}

impl Drop for Db {
    fn drop(&mut self) {
        self.checkpoint_truncate();
    }
}

/// The writer connection, held exclusively; dropping it bumps the generation.
pub struct Writer<'a> {
    conn: MutexGuard<'a, Connection>,
    generation: &'a AtomicU64,
}

/// A write transaction that takes SQLite's write lock at BEGIN (IMMEDIATE): one that began as
/// a reader could fail half-way with SQLITE_BUSY on its first write.
pub(super) fn immediate(conn: &mut rusqlite::Connection) -> Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .context("starting a transaction")
}

impl std::ops::Deref for Writer<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        // After the statement or transaction is done: a reader that saw the old generation
        // before this write will not keep its view.
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl Db {
    /// Opens (or creates) `<state_dir>/state.db`. A database of another schema version (ours
    /// or the reference server's `bty_version`), or one with tables and no marker at all, is
    /// renamed aside as `state.db.<from>.<UTC>.bak` and replaced by a fresh one. A file that is
    /// not an SQLite database, or a damaged one, is refused and left as it is.
    pub fn open(state_dir: &Path) -> Result<Db> {
        let path = state_dir.join("state.db");
        let mut reset = None;
        if path.exists() {
            if let Found::Other(from) = inspect(&path)? {
                let at = now_iso8601();
                let bak = archive_name(state_dir, &from, &at);
                std::fs::rename(&path, &bak).with_context(|| {
                    format!("setting aside {} (schema {from}) as {}", path.display(), bak.display())
                })?;
                // The WAL was folded into the file by `inspect`; what is left refers to the
                // renamed file by its old name and would be replayed into the fresh one.
                for ext in ["-wal", "-shm", "-journal"] {
                    let side = state_dir.join(format!("state.db{ext}"));
                    let _ = std::fs::remove_file(&side);
                }
                crate::warn!(
                    "{} had schema {from}, this build uses {SCHEMA_VERSION}: kept it as {}, starting fresh",
                    path.display(),
                    bak.display()
                );
                reset = Some((from, bak));
            }
        }
        let writer = connect(&path, true)?;
        let fresh: bool = writer
            .query_row("SELECT count(*) = 0 FROM sqlite_master WHERE name = 'meta'", [], |r| {
                r.get(0)
            })
            .with_context(|| format!("reading {}", path.display()))?;
        if fresh {
            writer
                .execute_batch(&format!(
                    "BEGIN; {SCHEMA} INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'); COMMIT;"
                ))
                .with_context(|| format!("creating the schema in {}", path.display()))?;
        } else {
            let has_column: bool = writer
                .query_row(
                    "SELECT count(*) > 0 FROM pragma_table_info('machines') WHERE name = 'unclaimed'",
                    [],
                    |r| r.get(0),
                )
                .with_context(|| format!("reading the schema of {}", path.display()))?;
            if !has_column {
                writer.execute_batch(&format!("BEGIN; {ADD_UNCLAIMED} COMMIT;")).with_context(
                    || format!("adding the unclaimed column to {}", path.display()),
                )?;
            }
        }
        let (unclaimed, lshw_bytes) = growth(&writer)
            .with_context(|| format!("counting discovered machines in {}", path.display()))?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(connect(&path, false)?);
        }
        let db = Db {
            path,
            writer: Mutex::new(writer),
            readers: Mutex::new(readers),
            reader_back: Condvar::new(),
            generation: AtomicU64::new(0),
            unclaimed: AtomicU64::new(unclaimed),
            lshw_bytes: AtomicU64::new(lshw_bytes),
            max_unclaimed: AtomicU64::new(u64::MAX),
            max_lshw_bytes: AtomicU64::new(u64::MAX),
        };
        if let Some((from, bak)) = reset {
            let file =
                bak.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            db.add_event(
                "system.schema.reset",
                None,
                &format!(
                    "state.db had schema {from}, this build uses {SCHEMA_VERSION}: it was kept as \
                     {file} and a fresh one created (bty-web import {file} brings its machines back)"
                ),
                // archived_at is where the old database went, as the reference records it
                // (its tests look for ".bak" in it); the event's own time says when.
                Some(serde_json::json!({
                    "from_version": from, "to_version": SCHEMA_VERSION,
                    "archived_at": bak.display().to_string(),
                })),
            )?;
        }
        Ok(db)
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the growth caps unauthenticated PXE clients meet: unclaimed discovered machines
    /// and total lshw bytes (0: no cap).
    pub fn limit_growth(&self, max_discovered: u64, max_lshw_bytes: u64) {
        let cap = |n: u64| if n == 0 { u64::MAX } else { n };
        self.max_unclaimed.store(cap(max_discovered), Ordering::Relaxed);
        self.max_lshw_bytes.store(cap(max_lshw_bytes), Ordering::Relaxed);
    }

    /// Machines discovered by PXE and not claimed by the operator (cached, no query).
    pub fn unclaimed(&self) -> u64 {
        self.unclaimed.load(Ordering::Relaxed)
    }

    /// Bytes of lshw blobs stored (cached, no query).
    pub fn lshw_bytes(&self) -> u64 {
        self.lshw_bytes.load(Ordering::Relaxed)
    }

    fn discovery_full(&self) -> bool {
        self.unclaimed.load(Ordering::Relaxed) >= self.max_unclaimed.load(Ordering::Relaxed)
    }

    fn write(&self) -> Writer<'_> {
        // A panic while holding the lock leaves SQLite consistent (the transaction rolls back).
        Writer {
            conn: self.writer.lock().unwrap_or_else(|p| p.into_inner()),
            generation: &self.generation,
        }
    }

    /// Copies the whole WAL into the database and empties it, so that the next start has
    /// nothing to replay; for shutdown.
    pub fn checkpoint_truncate(&self) {
        let conn = self.write();
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            crate::warn!("checkpointing {}: {e}", self.path.display());
        }
    }

    /// Changes with every write; equal values mean nothing was written in between.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Runs `f` on a reader connection (WAL readers never block the writer).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = {
            let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(c) = pool.pop() {
                    break c;
                }
                pool = self.reader_back.wait(pool).unwrap_or_else(|p| p.into_inner());
            }
        };
        // Back to the pool on every path, a panic in `f` included.
        struct Lease<'a>(&'a Db, Option<Connection>);
        impl Drop for Lease<'_> {
            fn drop(&mut self) {
                if let Some(c) = self.1.take() {
                    self.0.readers.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                    self.0.reader_back.notify_one();
                }
            }
        }
        let lease = Lease(self, Some(conn));
        let out = match &lease.1 {
            Some(c) => f(c),
            None => unreachable!("the lease holds its connection until dropped"),
        };
        drop(lease);
        out.with_context(|| format!("reading {}", self.path.display()))
    }

    /// Copies the whole database into a new file at `dest` with SQLite's online backup API, in
    /// one step: one read transaction, so the copy is one consistent state while writers go on
    /// in the WAL (a step-wise copy would restart on every write of a busy server).
    pub fn backup_to(&self, dest: &Path) -> Result<()> {
        let src = connect(&self.path, false)?;
        let mut dst =
            Connection::open(dest).with_context(|| format!("creating {}", dest.display()))?;
        let b = rusqlite::backup::Backup::new(&src, &mut dst)
            .with_context(|| format!("starting a backup of {}", self.path.display()))?;
        let step = b
            .step(-1)
            .with_context(|| format!("copying {} to {}", self.path.display(), dest.display()))?;
        crate::ensure!(
            step == rusqlite::backup::StepResult::Done,
            "copying {}: the database was busy ({step:?})",
            self.path.display()
        );
        Ok(())
    }

    /// An operator setting stored from the UI (`settings` table), if set.
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        self.read(|c| {
            c.prepare_cached("SELECT value FROM settings WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()
        })
    }

    /// Stores an operator setting; an empty value removes it (back to the default).
    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        let w = self.write();
        if value.is_empty() {
            w.prepare_cached("DELETE FROM settings WHERE key = ?1")?.execute([key])
        } else {
            w.prepare_cached(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute([key, value])
        }
        .with_context(|| format!("storing setting {key}"))?;
        Ok(())
    }
}

/// Unclaimed discovered machines and stored lshw bytes, counted: at open and after an import,
/// never per contact.
fn growth(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    conn.query_row(
        "SELECT (SELECT count(*) FROM machines WHERE unclaimed = 1), \
         (SELECT coalesce(sum(octet_length(lshw)), 0) FROM machines)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Lowers a cached count, never below zero.
fn sub(counter: &AtomicU64, n: u64) {
    let _ =
        counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
}

/// Opens a connection with the pragmas every connection needs.
fn connect(path: &Path, writer: bool) -> Result<Connection> {
    let flags = if writer {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5)).context("setting the busy timeout")?;
    // WAL: readers do not block the writer; NORMAL: a commit survives a process kill (the WAL
    // is in the OS before the commit returns), and only a power loss can lose the last ones.
    let pragmas = if writer {
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
         PRAGMA journal_size_limit = 16777216;"
    } else {
        "PRAGMA foreign_keys = ON;"
    };
    // Readers get 512 KiB each: a lab's state is a few MiB, and SQLite's default 2 MiB per
    // connection would be most of bty-web's memory. The writer gets 4 MiB: each PXE contact
    // inserts into the events indexes at a position set by its MAC, and with a small cache those
    // leaf pages are read back from the OS on every contact. Pages only cost memory once used.
    let cache = if writer { 4096 } else { 512 };
    let pragmas = format!("{pragmas} PRAGMA cache_size = -{cache};");
    conn.execute_batch(&pragmas).with_context(|| format!("configuring {}", path.display()))?;
    Ok(conn)
}

/// What an existing `state.db` is, by its schema marker.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// Ours, this schema version (or an empty database, made ours in place).
    Current,
    /// Another version: ours, the reference server's `bty_version`, or `pre-versioning` (tables
    /// but no marker at all). Already made safe for a file name.
    Other(String),
}

/// The first bytes of every SQLite 3 database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Reads the schema marker of an existing database file, after checking that it is an SQLite
/// database at all and not damaged (`PRAGMA quick_check`): a file that is not (garbage, a
/// truncated copy) is refused with the reason, and nothing is changed, rather than being
/// renamed aside as if it were merely old. When the file will be set aside, its write-ahead
/// log is folded into it first, so the archive is complete on its own.
///
/// Markers recognised: ours (`meta.schema_version`); the reference server's `bty_version`
/// table (its `version` column, the one row it keeps); and, for other releases of it, a
/// `bty_version` key in a `meta`, `bty_meta` or `settings` key/value table. A database with
/// tables and none of these is `pre-versioning`; one without tables is used as it is.
fn inspect(path: &Path) -> Result<Found> {
    let shown = path.display();
    let refuse = |why: String| -> crate::error::Error {
        crate::error::Error::msg(format!(
            "{shown} {why}: refusing to start over it, and nothing was changed. Move it away \
             (a fresh state.db is then created) or put a backup back (bty-web restore)"
        ))
    };
    let mut head = Vec::with_capacity(SQLITE_HEADER.len());
    {
        use std::io::Read;
        let f = std::fs::File::open(path).with_context(|| format!("opening {shown}"))?;
        f.take(SQLITE_HEADER.len() as u64)
            .read_to_end(&mut head)
            .with_context(|| format!("reading the header of {shown}"))?;
    }
    if head.is_empty() {
        // SQLite's own empty database: nothing in it to keep.
        return Ok(Found::Current);
    }
    if head.as_slice() != SQLITE_HEADER {
        return Err(refuse(
            "is not an SQLite database (it does not start with SQLite's header)".into(),
        ));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| refuse(format!("cannot be opened as an SQLite database ({e})")))?;
    let check: Vec<String> = conn
        .prepare("PRAGMA quick_check(3)")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| refuse(format!("cannot be read as an SQLite database ({e})")))?;
    if check.first().map(String::as_str) != Some("ok") {
        return Err(refuse(format!("is damaged (SQLite's quick_check: {})", check.join("; "))));
    }
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .with_context(|| format!("listing the tables of {shown}"))?;
    let has = |t: &str| tables.iter().any(|n| n.eq_ignore_ascii_case(t));
    let text = |sql: &str| -> Option<String> {
        conn.query_row(sql, [], |r| r.get::<_, Option<String>>(0))
            .optional()
            .ok()
            .flatten()
            .flatten()
    };
    let ours =
        has("meta").then(|| text("SELECT value FROM meta WHERE key = 'schema_version'")).flatten();
    let reference =
        || has("bty_version").then(|| text("SELECT version FROM bty_version LIMIT 1")).flatten();
    let keyed = || {
        ["meta", "bty_meta", "settings"]
            .iter()
            .filter(|t| has(t))
            .find_map(|t| text(&format!("SELECT value FROM {t} WHERE key = 'bty_version'")))
    };
    let found = match ours {
        Some(v) if v == SCHEMA_VERSION => None,
        Some(v) => Some(v),
        None => reference()
            .or_else(keyed)
            .or_else(|| (!tables.is_empty()).then(|| "pre-versioning".to_string())),
    };
    let Some(from) = found else { return Ok(Found::Current) };
    // Fold the WAL into the main file, so the renamed .bak is complete on its own; if that
    // cannot be done, setting the file aside would lose what is only in the WAL.
    let busy: i64 =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).with_context(|| {
            format!("folding the write-ahead log of {shown} into it before setting it aside")
        })?;
    crate::ensure!(
        busy == 0,
        "folding the write-ahead log of {shown} into it before setting it aside: the database is \
         busy (another process has it open?); nothing was changed"
    );
    Ok(Found::Other(file_safe(&from)))
}

/// A version string as it may appear in a file name: letters, digits and `.+-_` kept, anything
/// else `_`, at most 64 characters; `unnamed` when nothing is left.
fn file_safe(v: &str) -> String {
    let s: String =
        v.trim()
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
    if s.is_empty() { "unnamed".into() } else { s }
}

/// `state.db.<from>.<at>.bak` in `dir`, with `-2`, `-3`... when that name is taken (two
/// rotations in one second must not overwrite the first archive).
fn archive_name(dir: &Path, from: &str, at: &str) -> PathBuf {
    let mut n = 1;
    loop {
        let suffix = if n == 1 { String::new() } else { format!("-{n}") };
        let p = dir.join(format!("state.db.{from}.{at}{suffix}.bak"));
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bty-db-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub(super) fn upsert(mode: &str, labels: &[&str]) -> MachineUpsert {
        MachineUpsert {
            boot_mode: mode.parse().expect("a boot mode"),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn another_schema_is_set_aside_with_an_event() {
        let d = tmp("reset");
        {
            let c = Connection::open(d.join("state.db")).unwrap();
            c.execute_batch("CREATE TABLE meta (key TEXT, value TEXT); INSERT INTO meta VALUES ('schema_version', 'old-7'); CREATE TABLE precious (x); INSERT INTO precious VALUES (42);").unwrap();
        }
        let db = Db::open(&d).unwrap();
        let ev = db.events(Some("system.schema.reset"), None, 10, None).unwrap();
        assert_eq!(ev.len(), 1);
        let details = ev[0].details.as_ref().unwrap();
        assert_eq!(details["from_version"], "old-7");
        assert_eq!(details["to_version"], SCHEMA_VERSION);
        let bak: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("state.db.old-7.") && n.ends_with(".bak"))
            .collect();
        assert_eq!(bak.len(), 1, "{bak:?}");
        let old = Connection::open(d.join(&bak[0])).unwrap();
        let x: i64 = old.query_row("SELECT x FROM precious", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 42, "the archived database keeps its rows");
        drop(db);
        // Reopening the fresh one does not reset again.
        let db = Db::open(&d).unwrap();
        assert_eq!(db.events(Some("system.schema.reset"), None, 10, None).unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    fn baks(d: &Path, prefix: &str) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix) && n.ends_with(".bak"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn garbage_and_truncated_files_are_refused_and_left_alone() {
        let d = tmp("garbage");
        let junk = b"this is not sqlite at all, just bytes".to_vec();
        std::fs::write(d.join("state.db"), &junk).unwrap();
        let e = Db::open(&d).err().expect("garbage refused").to_string();
        assert!(
            e.contains("is not an SQLite database") && e.contains("nothing was changed"),
            "{e}"
        );
        assert_eq!(std::fs::read(d.join("state.db")).unwrap(), junk, "the file is untouched");
        assert!(baks(&d, "state.db.").is_empty());

        // A real database of another version, cut short: refused, not archived as if old.
        let d = tmp("truncated");
        {
            let c = Connection::open(d.join("full.db")).unwrap();
            c.execute_batch(
                "CREATE TABLE bty_version (version TEXT); INSERT INTO bty_version VALUES ('0.60.1');
                 CREATE TABLE machines (mac TEXT PRIMARY KEY, blob TEXT);",
            )
            .unwrap();
            for i in 0..200 {
                c.execute(
                    "INSERT INTO machines VALUES (?1, ?2)",
                    (format!("m{i}"), "x".repeat(2000)),
                )
                .unwrap();
            }
        }
        let full = std::fs::read(d.join("full.db")).unwrap();
        for cut in [10, 100, full.len() / 2] {
            std::fs::write(d.join("state.db"), &full[..cut]).unwrap();
            let e = Db::open(&d).err().expect("truncated refused").to_string();
            assert!(e.contains("refusing to start over it"), "cut at {cut}: {e}");
            assert_eq!(std::fs::read(d.join("state.db")).unwrap(), &full[..cut]);
            assert!(baks(&d, "state.db.").is_empty(), "cut at {cut}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_reference_servers_marker_names_the_archive() {
        let d = tmp("reference");
        let make = |d: &Path, sql: &str| {
            let c = Connection::open(d.join("state.db")).unwrap();
            c.execute_batch(sql).unwrap();
        };
        // The reference keeps its release in a one-row `bty_version` table.
        make(
            &d,
            "CREATE TABLE bty_version (version TEXT NOT NULL); INSERT INTO bty_version VALUES ('0.60.1');
             CREATE TABLE machines (mac TEXT PRIMARY KEY); INSERT INTO machines VALUES ('aa:bb:cc:dd:ee:ff');",
        );
        let db = Db::open(&d).unwrap();
        let ev = db.events(Some("system.schema.reset"), None, 10, None).unwrap();
        let details = ev[0].details.as_ref().unwrap();
        assert_eq!(details["from_version"], "0.60.1");
        assert_eq!(details["to_version"], SCHEMA_VERSION);
        let archived_at = details["archived_at"].as_str().unwrap();
        let names = baks(&d, "state.db.0.60.1.");
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(archived_at, d.join(&names[0]).display().to_string());
        drop(db);

        // No marker but tables: pre-versioning. A key/value `bty_version` is read too, and a
        // hostile version string cannot steer the file name.
        for (sql, from) in [
            ("CREATE TABLE machines (mac TEXT PRIMARY KEY);", "pre-versioning"),
            (
                "CREATE TABLE settings (key TEXT, value TEXT); INSERT INTO settings VALUES ('bty_version', '0.30.0');",
                "0.30.0",
            ),
            (
                "CREATE TABLE bty_version (version TEXT); INSERT INTO bty_version VALUES ('../../x y');",
                ".._.._x_y",
            ),
        ] {
            let d = tmp("reference-2");
            make(&d, sql);
            let db = Db::open(&d).unwrap();
            let ev = db.events(Some("system.schema.reset"), None, 10, None).unwrap();
            assert_eq!(ev[0].details.as_ref().unwrap()["from_version"], from, "{sql}");
            assert_eq!(baks(&d, &format!("state.db.{from}.")).len(), 1, "{sql}");
            let _ = std::fs::remove_dir_all(&d);
        }

        // An empty file is SQLite's empty database: used in place, nothing archived.
        let d = tmp("empty");
        std::fs::write(d.join("state.db"), b"").unwrap();
        let db = Db::open(&d).unwrap();
        assert!(db.events(Some("system.schema.reset"), None, 10, None).unwrap().is_empty());
        assert!(baks(&d, "state.db.").is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn archives_in_the_same_second_do_not_overwrite_each_other() {
        let d = tmp("collide");
        let a = archive_name(&d, "0.1", "2026-01-01T00:00:00Z");
        std::fs::write(&a, b"first").unwrap();
        let b = archive_name(&d, "0.1", "2026-01-01T00:00:00Z");
        assert_ne!(a, b);
        assert!(b.to_string_lossy().ends_with("state.db.0.1.2026-01-01T00:00:00Z-2.bak"), "{b:?}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
