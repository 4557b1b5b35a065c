//! bty-web state: one SQLite file, `state.db`, in WAL mode. All SQL lives here.
//!
//! One writer connection behind a mutex, a few reader connections, short transactions and
//! cached prepared statements, so that one PXE contact costs the same whatever the fleet size.
//! A database written by another schema version is set aside as `state.db.<from>.<UTC>.bak`
//! and a fresh one records a `system.schema.reset` event.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

use crate::error::{Context, Result};
use crate::units::now_iso8601;

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
    /// The last `pxe.offered` event logged per MAC (its reason and when), to log a repeat
    /// within `OFFER_REPEAT` once.
    offers: Mutex<HashMap<u64, (u64, Instant)>>,
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

/// What became of a posted inventory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InventoryStored {
    NoMachine,
    /// The disks, and the lshw blob if one was given.
    All,
    /// The disks; the blob was dropped by the total lshw cap, the previous one is kept.
    WithoutLshw,
}

/// A recorded PXE contact.
#[derive(Debug)]
pub struct Contacted<T> {
    /// The machine as it stands after the contact.
    pub machine: Machine,
    /// Its catalog entry, when it names one that exists.
    pub image: Option<CatalogEntry>,
    /// What the caller's `decide` made of them.
    pub decision: T,
    /// Whether anything was written (the live view then has news).
    pub wrote: bool,
}

/// A PXE contact's outcome, or for an unknown MAC the cap that kept it from being recorded.
pub type Contact<T> = std::result::Result<Contacted<T>, Capped>;

/// A machine offered the same boot again within this long gets no new `pxe.offered` event:
/// firmware in a retry loop would otherwise fill the event log, and every such event costs a
/// write transaction on the PXE path.
const OFFER_REPEAT: Duration = Duration::from_secs(10);
/// MACs remembered for that; beyond it the stale ones are dropped (and if none is, all: a few
/// repeats get logged). About 40 bytes each.
const OFFERS_KEPT: usize = 1 << 16;

/// The key and value of `Db::offers`: a MAC and an offer's reason, hashed (a collision can only
/// drop a repeat that would have been logged).
fn offer_key(mac: &str, reason: &str) -> (u64, u64) {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default();
    (h.hash_one(mac), h.hash_one(reason))
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

/// A machine read from an export.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedMachine {
    pub mac: String,
    pub known_disks: Option<serde_json::Value>,
    pub known_disks_at: Option<String>,
    pub lshw: Option<serde_json::Value>,
}

/// A background job (backup, release fetch) as the API returns it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    /// queued, running, done, failed or cancelled.
    pub state: String,
    pub progress_bytes: u64,
    pub total_bytes: Option<u64>,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// A machine as the API returns it (the spec's `Machine` wire type).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Machine {
    pub mac: String,
    pub bty_image_ref: Option<String>,
    pub labels: Vec<String>,
    pub discovered_at: Option<String>,
    pub last_seen_at: Option<String>,
    pub last_seen_ip: Option<String>,
    pub boot_mode: String,
    pub sanboot_drive: Option<String>,
    pub last_flashed_at: Option<String>,
    pub known_disks: Option<serde_json::Value>,
    pub known_disks_at: Option<String>,
    pub target_disk_serial: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// The live environment booted since the machine was last armed (not part of the wire type).
    #[serde(skip)]
    pub saw_flasher_boot: bool,
    /// The next PXE contact boots the disk once (after an inventory or a flash-always flash).
    #[serde(skip)]
    pub boot_disk_next: bool,
    /// The last status the live environment reported ("done" or "failed: reason").
    pub last_status: Option<String>,
}

/// What an operator sets on a machine (`MachineUpsert`, validated by the caller).
#[derive(Clone, Debug, Default)]
pub struct MachineUpsert {
    pub bty_image_ref: Option<String>,
    pub labels: Vec<String>,
    pub boot_mode: String,
    pub sanboot_drive: Option<String>,
    pub target_disk_serial: Option<String>,
}

/// PXE bookkeeping updates.
#[derive(Clone, Copy, Debug)]
pub enum PxeMark {
    /// The live environment fetched its kernel or initrd.
    FlasherBooted,
    /// The machine was sent to boot its disk once.
    DiskBooted,
    /// The live environment reported a finished flash.
    FlashDone,
}

/// A catalog entry (the spec's `CatalogEntry`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CatalogEntry {
    pub bty_image_ref: String,
    pub src: String,
    pub disk_image_sha: Option<String>,
    pub name: String,
    pub format: String,
    pub size_bytes: Option<i64>,
    pub sha_url: Option<String>,
    pub description: Option<String>,
    pub added_at: String,
}

/// An event row.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Event {
    pub id: i64,
    pub at: String,
    pub kind: String,
    pub subject_id: Option<String>,
    pub message: String,
    pub details: Option<serde_json::Value>,
    pub acknowledged: bool,
}

// The column lists are macros so that every query text is `concat!`ed at compile time: the
// PXE path would otherwise format the same SQL for each request before the statement cache
// looks it up.
macro_rules! machine_columns {
    () => {
        "m.mac, m.bty_image_ref, m.discovered_at, m.last_seen_at, \
    m.last_seen_ip, m.boot_mode, m.sanboot_drive, m.last_flashed_at, m.known_disks, \
    m.known_disks_at, m.target_disk_serial, m.created_at, m.updated_at, m.saw_flasher_boot, \
    m.boot_disk_next, m.last_status, (SELECT group_concat(label, char(10)) FROM \
        (SELECT label FROM machine_labels l WHERE l.mac = m.mac ORDER BY label))"
    };
}

macro_rules! catalog_columns {
    () => {
        "bty_image_ref, src, disk_image_sha, name, format, size_bytes, sha_url, description, \
         added_at"
    };
}

const MACHINE_BY_MAC: &str =
    concat!("SELECT ", machine_columns!(), " FROM machines m WHERE m.mac = ?1");
const MACHINES_ALL: &str =
    concat!("SELECT ", machine_columns!(), " FROM machines m ORDER BY m.mac");
const CATALOG_BY_REF: &str =
    concat!("SELECT ", catalog_columns!(), " FROM catalog_entries WHERE bty_image_ref = ?1");
const CATALOG_ALL: &str =
    concat!("SELECT ", catalog_columns!(), " FROM catalog_entries ORDER BY name, src");

fn catalog_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CatalogEntry> {
    Ok(CatalogEntry {
        bty_image_ref: r.get(0)?,
        src: r.get(1)?,
        disk_image_sha: r.get(2)?,
        name: r.get(3)?,
        format: r.get(4)?,
        size_bytes: r.get(5)?,
        sha_url: r.get(6)?,
        description: r.get(7)?,
        added_at: r.get(8)?,
    })
}

fn machine_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Machine> {
    let labels: Option<String> = r.get(16)?;
    let disks: Option<String> = r.get(8)?;
    Ok(Machine {
        mac: r.get(0)?,
        bty_image_ref: r.get(1)?,
        discovered_at: r.get(2)?,
        last_seen_at: r.get(3)?,
        last_seen_ip: r.get(4)?,
        boot_mode: r.get(5)?,
        sanboot_drive: r.get(6)?,
        last_flashed_at: r.get(7)?,
        known_disks: disks.and_then(|d| serde_json::from_str(&d).ok()),
        known_disks_at: r.get(9)?,
        target_disk_serial: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        saw_flasher_boot: r.get::<_, i64>(13)? != 0,
        boot_disk_next: r.get::<_, i64>(14)? != 0,
        last_status: r.get(15)?,
        labels: labels.map(|l| l.split('\n').map(str::to_string).collect()).unwrap_or_default(),
    })
}

impl Db {
    /// Opens (or creates) `<state_dir>/state.db`. A database of another schema version, or one
    /// without a marker, is renamed aside and replaced by a fresh one.
    pub fn open(state_dir: &Path) -> Result<Db> {
        let path = state_dir.join("state.db");
        let mut reset = None;
        if path.exists() {
            let found = read_marker(&path)?;
            if found.as_deref() != Some(SCHEMA_VERSION) {
                let from = found.unwrap_or_else(|| "unversioned".into());
                let at = now_iso8601();
                let bak = state_dir.join(format!("state.db.{from}.{at}.bak"));
                std::fs::rename(&path, &bak).with_context(|| {
                    format!("setting aside {} (schema {from}) as {}", path.display(), bak.display())
                })?;
                for ext in ["-wal", "-shm"] {
                    let side = state_dir.join(format!("state.db{ext}"));
                    let _ = std::fs::remove_file(&side);
                }
                crate::warn!(
                    "{} had schema {from}, this build uses {SCHEMA_VERSION}: kept it as {}, starting fresh",
                    path.display(),
                    bak.display()
                );
                reset = Some((from, at));
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
            offers: Mutex::default(),
            unclaimed: AtomicU64::new(unclaimed),
            lshw_bytes: AtomicU64::new(lshw_bytes),
            max_unclaimed: AtomicU64::new(u64::MAX),
            max_lshw_bytes: AtomicU64::new(u64::MAX),
        };
        if let Some((from, archived_at)) = reset {
            db.add_event(
                "system.schema.reset",
                None,
                &format!("state.db had schema {from}; it was archived and a fresh one created"),
                Some(serde_json::json!({
                    "from_version": from, "to_version": SCHEMA_VERSION, "archived_at": archived_at,
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

    /// The stored lshw blob of a machine: Ok(None) for no machine, Ok(Some(None)) for no blob.
    pub fn lshw(&self, mac: &str) -> Result<Option<Option<String>>> {
        self.read(|c| {
            c.prepare_cached("SELECT lshw FROM machines WHERE mac = ?1")?
                .query_row([mac], |r| r.get(0))
                .optional()
        })
    }

    /// Machine counts by boot mode (one grouped query, for /metrics).
    pub fn machines_by_mode(&self) -> Result<Vec<(String, u64)>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT boot_mode, count(*) FROM machines GROUP BY boot_mode ORDER BY boot_mode",
            )?;
            st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?.collect()
        })
    }

    /// One machine by normalised MAC.
    pub fn machine(&self, mac: &str) -> Result<Option<Machine>> {
        self.read(|c| {
            c.prepare_cached(MACHINE_BY_MAC)?.query_row([mac], machine_from_row).optional()
        })
    }

    /// Every machine, ordered by MAC, labels included, in one query.
    pub fn machines(&self) -> Result<Vec<Machine>> {
        self.read(|c| {
            let mut st = c.prepare_cached(MACHINES_ALL)?;
            st.query_map([], machine_from_row)?.collect()
        })
    }

    /// Creates or replaces a machine's operator settings. Changing boot mode, image or target
    /// serial re-arms it (clears the live-environment mark, last flash and inventory time);
    /// labels and sanboot drive do not. Returns the stored machine.
    pub fn put_machine(&self, mac: &str, m: &MachineUpsert) -> Result<Machine> {
        let now = now_iso8601();
        {
            let mut conn = self.write();
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .context("starting a transaction")?;
            let old: Option<(Option<String>, String, Option<String>, bool)> = tx
                .prepare_cached(
                    "SELECT bty_image_ref, boot_mode, target_disk_serial, unclaimed FROM machines \
                     WHERE mac = ?1",
                )?
                .query_row([mac], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            let claimed = old.as_ref().is_some_and(|o| o.3);
            match old {
                None => {
                    tx.prepare_cached(
                        "INSERT INTO machines (mac, bty_image_ref, boot_mode, sanboot_drive, \
                         target_disk_serial, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    )?
                    .execute(params![
                        mac,
                        m.bty_image_ref,
                        m.boot_mode,
                        m.sanboot_drive,
                        m.target_disk_serial,
                        now
                    ])?;
                }
                Some((image, mode, serial, _)) => {
                    let rearm = image != m.bty_image_ref
                        || mode != m.boot_mode
                        || serial != m.target_disk_serial;
                    tx.prepare_cached(
                        "UPDATE machines SET bty_image_ref = ?2, boot_mode = ?3, sanboot_drive = ?4, \
                         target_disk_serial = ?5, updated_at = ?6, unclaimed = 0, \
                         saw_flasher_boot = CASE WHEN ?7 THEN 0 ELSE saw_flasher_boot END, \
                         boot_disk_next = CASE WHEN ?7 THEN 0 ELSE boot_disk_next END, \
                         last_flashed_at = CASE WHEN ?7 THEN NULL ELSE last_flashed_at END, \
                         known_disks_at = CASE WHEN ?7 THEN NULL ELSE known_disks_at END \
                         WHERE mac = ?1",
                    )?
                    .execute(params![
                        mac,
                        m.bty_image_ref,
                        m.boot_mode,
                        m.sanboot_drive,
                        m.target_disk_serial,
                        now,
                        rearm
                    ])?;
                }
            }
            tx.prepare_cached("DELETE FROM machine_labels WHERE mac = ?1")?.execute([mac])?;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT OR IGNORE INTO machine_labels (mac, label) VALUES (?1, ?2)",
                )?;
                for l in &m.labels {
                    ins.execute(params![mac, l])?;
                }
            }
            tx.commit().with_context(|| format!("saving machine {mac}"))?;
            if claimed {
                sub(&self.unclaimed, 1);
            }
        }
        self.machine(mac)?.with_context(|| format!("reading back machine {mac}"))
    }

    /// Deletes a machine; false when there was none.
    pub fn delete_machine(&self, mac: &str) -> Result<bool> {
        let w = self.write();
        let gone: Option<(bool, u64)> = w
            .prepare_cached(
                "DELETE FROM machines WHERE mac = ?1 \
                 RETURNING unclaimed, coalesce(octet_length(lshw), 0)",
            )?
            .query_row([mac], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .with_context(|| format!("deleting machine {mac}"))?;
        if let Some((unclaimed, lshw)) = gone {
            sub(&self.unclaimed, u64::from(unclaimed));
            sub(&self.lshw_bytes, lshw);
        }
        Ok(gone.is_some())
    }

    /// Deletes the unclaimed discovered machines not seen for `ttl_days` days, with one event
    /// naming how many; returns that count.
    pub fn expire_discovered(&self, ttl_days: u64) -> Result<u64> {
        let cutoff =
            crate::units::iso8601(crate::units::now_secs().saturating_sub(ttl_days * 86_400));
        let mut conn = self.write();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .context("starting a transaction")?;
        let gone: Vec<u64> = tx
            .prepare_cached(
                "DELETE FROM machines WHERE unclaimed = 1 AND last_seen_at < ?1 \
                 RETURNING coalesce(octet_length(lshw), 0)",
            )?
            .query_map([&cutoff], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()
            .context("deleting stale discovered machines")?;
        let n = gone.len() as u64;
        if n > 0 {
            insert_event(
                &tx,
                "pxe.discovery.expired",
                None,
                &format!(
                    "deleted {n} discovered machine(s) never claimed and not seen for {ttl_days} day(s) ([pxe] discovered_ttl_days)"
                ),
                Some(
                    serde_json::json!({ "count": n, "ttl_days": ttl_days, "not_seen_since": cutoff }),
                ),
            )?;
        }
        tx.commit().context("committing the expiry of discovered machines")?;
        sub(&self.unclaimed, n);
        sub(&self.lshw_bytes, gone.iter().sum());
        Ok(n)
    }

    /// One PXE contact in one short write transaction: records it (an unknown MAC becomes a
    /// discovered machine), reads the machine and its catalog entry, lets `decide` pick the
    /// offer, applies the bookkeeping mark the offer needs and logs the events. The cost does
    /// not depend on the fleet size: a few statements on one row, all prepared once.
    ///
    /// An unknown MAC is recorded only below the `max_discovered` cap and when `may_discover`
    /// (the caller's per-address rate) agrees; otherwise nothing is written and the cap is
    /// returned. Known machines are answered and updated whatever the caps.
    pub fn pxe_contact<T>(
        &self,
        mac: &str,
        ip: Option<&str>,
        may_discover: impl FnOnce() -> bool,
        decide: impl Fn(&Machine, Option<&CatalogEntry>) -> (T, Option<PxeMark>, Option<String>),
    ) -> Result<Contact<T>> {
        let now = now_iso8601();
        // A contact that would write nothing new (a known machine seen in this same second
        // from the same address, no mark, an offer already logged) is answered from a reader,
        // without the writer lock: a retrying firmware or a polling script costs no commit.
        let known = self.read(|c| {
            let Some(m) =
                c.prepare_cached(MACHINE_BY_MAC)?.query_row([mac], machine_from_row).optional()?
            else {
                return Ok(None);
            };
            let image = match &m.bty_image_ref {
                Some(r) => {
                    c.prepare_cached(CATALOG_BY_REF)?.query_row([r], catalog_from_row).optional()?
                }
                None => None,
            };
            Ok(Some((m, image)))
        })?;
        let mut may_discover = Some(may_discover);
        match known {
            Some((m, image)) => {
                if m.last_seen_at.as_deref() == Some(now.as_str())
                    && m.last_seen_ip.as_deref() == ip
                {
                    let (out, mark, offered) = decide(&m, image.as_ref());
                    if mark.is_none()
                        && offered.as_deref().is_none_or(|r| self.offered_lately(mac, r))
                    {
                        return Ok(Ok(Contacted {
                            machine: m,
                            image,
                            decision: out,
                            wrote: false,
                        }));
                    }
                }
            }
            // Refused before the writer lock: a flood of new MACs past a cap costs no write
            // transaction. The cap is checked again under the lock, where the count is exact.
            None if self.discovery_full() => return Ok(Err(Capped::MaxDiscovered)),
            None => {
                if may_discover.take().is_some_and(|f| !f()) {
                    return Ok(Err(Capped::Rate));
                }
            }
        }
        let mut conn = self.write();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .context("starting a transaction")?;
        let n = tx
            .prepare_cached(
                "UPDATE machines SET last_seen_at = ?2, last_seen_ip = ?3 WHERE mac = ?1",
            )?
            .execute(params![mac, now, ip])
            .with_context(|| format!("recording a PXE contact of {mac}"))?;
        if n == 0 {
            if self.discovery_full() {
                return Ok(Err(Capped::MaxDiscovered));
            }
            // Deleted since the reader saw it: a discovery like any other.
            if may_discover.take().is_some_and(|f| !f()) {
                return Ok(Err(Capped::Rate));
            }
            tx.prepare_cached(
                "INSERT INTO machines (mac, boot_mode, discovered_at, last_seen_at, last_seen_ip, \
                 created_at, updated_at, unclaimed) VALUES (?1, 'bty-inventory', ?2, ?2, ?3, ?2, ?2, 1)",
            )?
            .execute(params![mac, now, ip])
            .with_context(|| format!("recording the discovery of {mac}"))?;
            insert_event(
                &tx,
                "machine.discovered",
                Some(mac),
                &format!("{mac} discovered by PXE"),
                None,
            )?;
        }
        let m = tx
            .prepare_cached(MACHINE_BY_MAC)?
            .query_row([mac], machine_from_row)
            .with_context(|| format!("reading back machine {mac}"))?;
        let image = match &m.bty_image_ref {
            Some(r) => tx
                .prepare_cached(CATALOG_BY_REF)?
                .query_row([r], catalog_from_row)
                .optional()
                .with_context(|| format!("reading catalog entry {r}"))?,
            None => None,
        };
        let (out, mark, offered) = decide(&m, image.as_ref());
        if let Some(what) = mark {
            apply_mark(&tx, mac, what, &now)?;
        }
        let logged = match offered {
            Some(reason) if !self.offered_lately(mac, &reason) => {
                insert_event(&tx, "pxe.offered", Some(mac), &reason, None)?;
                Some(reason)
            }
            _ => None,
        };
        tx.commit().with_context(|| format!("committing the PXE contact of {mac}"))?;
        if n == 0 {
            // Still under the writer lock, so the next contact's check sees it.
            self.unclaimed.fetch_add(1, Ordering::Relaxed);
        }
        drop(conn);
        if let Some(reason) = logged {
            let mut offers = self.offers.lock().unwrap_or_else(|p| p.into_inner());
            if offers.len() >= OFFERS_KEPT {
                offers.retain(|_, (_, at)| at.elapsed() < OFFER_REPEAT);
                if offers.len() >= OFFERS_KEPT {
                    offers.clear();
                }
            }
            let (m, r) = offer_key(mac, &reason);
            offers.insert(m, (r, Instant::now()));
        }
        Ok(Ok(Contacted { machine: m, image, decision: out, wrote: true }))
    }

    /// Whether this offer to this MAC was logged within `OFFER_REPEAT`.
    fn offered_lately(&self, mac: &str, reason: &str) -> bool {
        let (m, r) = offer_key(mac, reason);
        let offers = self.offers.lock().unwrap_or_else(|p| p.into_inner());
        offers.get(&m).is_some_and(|(seen, at)| *seen == r && at.elapsed() < OFFER_REPEAT)
    }

    /// Updates PXE bookkeeping columns of one machine; false when there is no such machine.
    pub fn pxe_mark(&self, mac: &str, what: PxeMark) -> Result<bool> {
        apply_mark(&self.write(), mac, what, &now_iso8601())
    }

    /// Records a failed flash reported by the live environment.
    pub fn flash_failed(&self, mac: &str, reason: &str) -> Result<bool> {
        let n = self
            .write()
            .prepare_cached("UPDATE machines SET last_status = ?2 WHERE mac = ?1")?
            .execute(params![mac, format!("failed: {reason}")])
            .with_context(|| format!("updating machine {mac}"))?;
        Ok(n > 0)
    }

    /// Stores a posted inventory (and lshw unless None: an absent or dropped blob keeps the
    /// previous one). In bty-inventory mode the next contact boots the disk.
    ///
    /// A blob that would take the stored total over `max_lshw_total_mib` is dropped and the
    /// disks are stored all the same: they are what the operator claims a machine by (the
    /// target disk), while lshw is background detail; refusing the whole post would lose both.
    /// A blob no bigger than the one it replaces always fits.
    pub fn set_inventory(
        &self,
        mac: &str,
        disks: &serde_json::Value,
        lshw: Option<&serde_json::Value>,
    ) -> Result<InventoryStored> {
        let mut conn = self.write();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .context("starting a transaction")?;
        let Some(old) = tx
            .prepare_cached("SELECT coalesce(octet_length(lshw), 0) FROM machines WHERE mac = ?1")?
            .query_row([mac], |r| r.get::<_, u64>(0))
            .optional()
            .with_context(|| format!("reading the lshw size of {mac}"))?
        else {
            return Ok(InventoryStored::NoMachine);
        };
        let total = self.lshw_bytes.load(Ordering::Relaxed);
        let blob = lshw.map(|l| l.to_string());
        let fits = |b: &String| {
            let new = b.len() as u64;
            new <= old
                || total.saturating_sub(old).saturating_add(new)
                    <= self.max_lshw_bytes.load(Ordering::Relaxed)
        };
        let (blob, stored) = match blob {
            Some(b) if !fits(&b) => (None, InventoryStored::WithoutLshw),
            b => (b, InventoryStored::All),
        };
        tx.prepare_cached(
            "UPDATE machines SET known_disks = ?2, known_disks_at = ?3, lshw = COALESCE(?4, lshw), \
             boot_disk_next = CASE WHEN boot_mode = 'bty-inventory' THEN 1 ELSE boot_disk_next END \
             WHERE mac = ?1",
        )?
        .execute(params![mac, disks.to_string(), now_iso8601(), blob])
        .with_context(|| format!("storing the inventory of {mac}"))?;
        tx.commit().with_context(|| format!("committing the inventory of {mac}"))?;
        if let Some(b) = &blob {
            self.lshw_bytes
                .store(total.saturating_sub(old).saturating_add(b.len() as u64), Ordering::Relaxed);
        }
        Ok(stored)
    }

    /// Every catalog entry, by name.
    pub fn catalog(&self) -> Result<Vec<CatalogEntry>> {
        self.read(|c| {
            let mut st = c.prepare_cached(CATALOG_ALL)?;
            st.query_map([], catalog_from_row)?.collect()
        })
    }

    /// Adds an entry unless one with the same src exists; returns the stored entry and whether
    /// it was created.
    pub fn add_catalog_entry(&self, e: &CatalogEntry) -> Result<(CatalogEntry, bool)> {
        let n = self
            .write()
            .prepare_cached(
                "INSERT OR IGNORE INTO catalog_entries (bty_image_ref, src, disk_image_sha, name, format, \
                 size_bytes, sha_url, description, added_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                e.bty_image_ref,
                e.src,
                e.disk_image_sha,
                e.name,
                e.format,
                e.size_bytes,
                e.sha_url,
                e.description,
                e.added_at
            ])
            .with_context(|| format!("adding {} to the catalog", e.src))?;
        let stored = self
            .catalog_entry(&e.bty_image_ref)?
            .with_context(|| format!("reading back {}", e.src))?;
        Ok((stored, n > 0))
    }

    /// Deletes the entry with this src; false when there is none.
    pub fn delete_catalog_entry(&self, src: &str) -> Result<bool> {
        let n = self
            .write()
            .prepare_cached("DELETE FROM catalog_entries WHERE src = ?1")?
            .execute([src])
            .with_context(|| format!("deleting {src} from the catalog"))?;
        Ok(n > 0)
    }

    /// A catalog entry by its reference.
    pub fn catalog_entry(&self, image_ref: &str) -> Result<Option<CatalogEntry>> {
        self.read(|c| {
            c.prepare_cached(CATALOG_BY_REF)?.query_row([image_ref], catalog_from_row).optional()
        })
    }

    /// Records an event; returns its id.
    pub fn add_event(
        &self,
        kind: &str,
        subject: Option<&str>,
        message: &str,
        details: Option<serde_json::Value>,
    ) -> Result<i64> {
        insert_event(&self.write(), kind, subject, message, details)
    }

    /// Records an event where its failure must not fail the work it describes (an audit line
    /// of a request already answered, a job already done): the failure is logged instead.
    pub fn event(
        &self,
        kind: &str,
        subject: Option<&str>,
        message: &str,
        details: Option<serde_json::Value>,
    ) {
        if let Err(e) = self.add_event(kind, subject, message, details) {
            crate::warn!("recording a {kind} event: {e}");
        }
    }

    /// Creates a queued job of `kind`; None when one of that kind is queued or running already
    /// (one job per kind at a time).
    pub fn job_create(&self, kind: &str) -> Result<Option<i64>> {
        let mut conn = self.write();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .context("starting a transaction")?;
        let busy: bool = tx
            .prepare_cached(
                "SELECT count(*) > 0 FROM jobs WHERE kind = ?1 AND state IN ('queued', 'running')",
            )?
            .query_row([kind], |r| r.get(0))
            .with_context(|| format!("looking for a running {kind} job"))?;
        if busy {
            return Ok(None);
        }
        tx.prepare_cached("INSERT INTO jobs (kind, state, created_at) VALUES (?1, 'queued', ?2)")?
            .execute(params![kind, now_iso8601()])
            .with_context(|| format!("recording a {kind} job"))?;
        let id = tx.last_insert_rowid();
        tx.commit().context("committing a new job")?;
        Ok(Some(id))
    }

    /// Moves a job to `state` (running, done, failed, cancelled), with an error for failures.
    pub fn job_state(&self, id: i64, state: &str, error: Option<&str>) -> Result<()> {
        let now = now_iso8601();
        self.write()
            .prepare_cached(
                "UPDATE jobs SET state = ?2, error = ?3, \
                 started_at = CASE WHEN ?2 = 'running' THEN ?4 ELSE started_at END, \
                 finished_at = CASE WHEN ?2 IN ('done', 'failed', 'cancelled') THEN ?4 ELSE NULL END \
                 WHERE id = ?1",
            )?
            .execute(params![id, state, error, now])
            .with_context(|| format!("updating job {id}"))?;
        Ok(())
    }

    /// Records a job's progress.
    pub fn job_progress(&self, id: i64, bytes: u64, total: Option<u64>) -> Result<()> {
        self.write()
            .prepare_cached("UPDATE jobs SET progress_bytes = ?2, total_bytes = ?3 WHERE id = ?1")?
            .execute(params![id, bytes as i64, total.map(|t| t as i64)])
            .with_context(|| format!("updating job {id}"))?;
        Ok(())
    }

    /// Jobs left queued or running by a previous process become `failed: interrupted`; their
    /// ids, so that each can be logged.
    pub fn jobs_interrupted(&self) -> Result<Vec<(i64, String)>> {
        let mut conn = self.write();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .context("starting a transaction")?;
        let left: Vec<(i64, String)> = tx
            .prepare_cached("SELECT id, kind FROM jobs WHERE state IN ('queued', 'running')")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()
            .context("reading unfinished jobs")?;
        tx.prepare_cached(
            "UPDATE jobs SET state = 'failed', error = 'interrupted', finished_at = ?1 \
             WHERE state IN ('queued', 'running')",
        )?
        .execute([now_iso8601()])
        .context("marking unfinished jobs interrupted")?;
        tx.commit().context("committing interrupted jobs")?;
        Ok(left)
    }

    /// Jobs newest first, of one kind or all, at most `limit`.
    pub fn jobs(&self, kind: Option<&str>, limit: u32) -> Result<Vec<Job>> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT id, kind, state, progress_bytes, total_bytes, error, created_at, \
                 started_at, finished_at FROM jobs WHERE (?1 IS NULL OR kind = ?1) \
                 ORDER BY id DESC LIMIT ?2",
            )?
            .query_map(params![kind, limit], |r| {
                Ok(Job {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    state: r.get(2)?,
                    progress_bytes: r.get::<_, i64>(3)?.max(0) as u64,
                    total_bytes: r.get::<_, Option<i64>>(4)?.map(|t| t.max(0) as u64),
                    error: r.get(5)?,
                    created_at: r.get(6)?,
                    started_at: r.get(7)?,
                    finished_at: r.get(8)?,
                })
            })?
            .collect()
        })
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

    /// Inserts or replaces imported machines, all or none: each as `bty-inventory` with no
    /// image, target disk or labels, and claimed (the operator brought it in).
    pub fn import_machines(&self, machines: &[ImportedMachine]) -> Result<()> {
        let now = now_iso8601();
        let mut conn = self.write();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .context("starting a transaction")?;
        for m in machines {
            tx.prepare_cached("DELETE FROM machine_labels WHERE mac = ?1")?
                .execute([&m.mac])
                .with_context(|| format!("importing {}", m.mac))?;
            tx.prepare_cached(
                "INSERT INTO machines (mac, boot_mode, known_disks, known_disks_at, lshw, \
                 created_at, updated_at) VALUES (?1, 'bty-inventory', ?2, ?3, ?4, ?5, ?5) \
                 ON CONFLICT (mac) DO UPDATE SET boot_mode = 'bty-inventory', \
                 bty_image_ref = NULL, target_disk_serial = NULL, known_disks = excluded.known_disks, \
                 known_disks_at = excluded.known_disks_at, lshw = excluded.lshw, \
                 updated_at = excluded.updated_at, saw_flasher_boot = 0, boot_disk_next = 0, \
                 unclaimed = 0",
            )?
            .execute(params![
                m.mac,
                m.known_disks.as_ref().map(|d| d.to_string()),
                m.known_disks_at,
                m.lshw.as_ref().map(|l| l.to_string()),
                now
            ])
            .with_context(|| format!("importing {}", m.mac))?;
        }
        let (unclaimed, lshw_bytes) = growth(&tx).context("counting machines after the import")?;
        tx.commit().context("committing the import")?;
        self.unclaimed.store(unclaimed, Ordering::Relaxed);
        self.lshw_bytes.store(lshw_bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Events newest first, optionally filtered, at most `limit` (1..=500), older than `before_id`.
    pub fn events(
        &self,
        kind: Option<&str>,
        subject: Option<&str>,
        limit: u32,
        before_id: Option<i64>,
    ) -> Result<Vec<Event>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, at, kind, subject_id, message, details, acknowledged FROM events \
                 WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR subject_id = ?2) \
                 AND (?3 IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?4",
            )?;
            st.query_map(params![kind, subject, before_id, limit.clamp(1, 500)], |r| {
                let details: Option<String> = r.get(5)?;
                Ok(Event {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    kind: r.get(2)?,
                    subject_id: r.get(3)?,
                    message: r.get(4)?,
                    details: details.and_then(|d| serde_json::from_str(&d).ok()),
                    acknowledged: r.get::<_, i64>(6)? != 0,
                })
            })?
            .collect()
        })
    }

    /// Marks an event acknowledged; false when there is no such event.
    pub fn ack_event(&self, id: i64) -> Result<bool> {
        let n = self
            .write()
            .prepare_cached("UPDATE events SET acknowledged = 1 WHERE id = ?1")?
            .execute([id])
            .with_context(|| format!("acknowledging event {id}"))?;
        Ok(n > 0)
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

/// The schema marker of an existing database file, None when it has none (or is not ours).
fn read_marker(path: &Path) -> Result<Option<String>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .with_context(|| format!("opening {}", path.display()))?;
    let has_meta: bool = match conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'meta'",
        [],
        |r| r.get(0),
    ) {
        Ok(b) => b,
        // Not a database at all (garbage, truncated): treat as unversioned, so it is set aside.
        Err(_) => return Ok(None),
    };
    if !has_meta {
        return Ok(None);
    }
    let marker = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .optional()
        .unwrap_or(None);
    // Fold the WAL into the main file, so the renamed .bak is complete on its own.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    Ok(marker)
}

/// Sets PXE bookkeeping columns of one machine; false when there is no such machine. The
/// statements are fixed text, never input.
fn apply_mark(conn: &Connection, mac: &str, what: PxeMark, now: &str) -> Result<bool> {
    let n = match what {
        PxeMark::FlasherBooted => conn
            .prepare_cached("UPDATE machines SET saw_flasher_boot = 1 WHERE mac = ?1")?
            .execute([mac]),
        PxeMark::DiskBooted => conn
            .prepare_cached(
                "UPDATE machines SET boot_disk_next = 0, saw_flasher_boot = 0 WHERE mac = ?1",
            )?
            .execute([mac]),
        PxeMark::FlashDone => conn
            .prepare_cached(
                "UPDATE machines SET last_flashed_at = ?2, last_status = 'done', \
                 boot_disk_next = CASE WHEN boot_mode = 'bty-flash-always' THEN 1 ELSE 0 END \
                 WHERE mac = ?1",
            )?
            .execute(params![mac, now]),
    }
    .with_context(|| format!("updating machine {mac}"))?;
    Ok(n > 0)
}

/// Events kept: older ones are pruned as new ones arrive, so a lab that PXE-boots all day does
/// not grow state.db without bound.
const EVENTS_KEPT: i64 = 100_000;

/// Inserts an event on `conn` (inside the caller's transaction, if any); returns its id.
fn insert_event(
    conn: &Connection,
    kind: &str,
    subject: Option<&str>,
    message: &str,
    details: Option<serde_json::Value>,
) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO events (at, kind, subject_id, message, details) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![now_iso8601(), kind, subject, message, details.map(|d| d.to_string())])
    .with_context(|| format!("recording event {kind}"))?;
    let id = conn.last_insert_rowid();
    // Pruning in batches every 1000 events keeps the per-event cost flat.
    if id % 1000 == 0 {
        conn.prepare_cached("DELETE FROM events WHERE id <= ?1")?
            .execute([id - EVENTS_KEPT])
            .context("pruning old events")?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bty-db-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn upsert(mode: &str, labels: &[&str]) -> MachineUpsert {
        MachineUpsert {
            boot_mode: mode.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_contact_that_changes_nothing_writes_nothing() {
        let d = tmp("repeat");
        let db = Db::open(&d).unwrap();
        let offer = |reason: &'static str| {
            move |_: &Machine, _: Option<&CatalogEntry>| ((), None, Some(reason.to_string()))
        };
        let mac = "aa:bb:cc:dd:ee:01";
        let c = db.pxe_contact(mac, Some("10.0.0.1"), || true, offer("exit")).unwrap().unwrap();
        assert!(c.wrote, "a discovery is written");
        assert_eq!(c.machine.last_seen_ip.as_deref(), Some("10.0.0.1"));
        let offered = |db: &Db| db.events(Some("pxe.offered"), None, 100, None).unwrap().len();
        assert_eq!(offered(&db), 1);
        // Within the same second, from the same address, the same offer: read only (the
        // second may tick over between the calls, then it writes last-seen but no event).
        let generation = db.generation();
        let c = db.pxe_contact(mac, Some("10.0.0.1"), || true, offer("exit")).unwrap().unwrap();
        assert!(!c.wrote || db.generation() != generation);
        assert_eq!(offered(&db), 1, "a repeated offer within 10 s is logged once");
        // Another address or another offer is news.
        let c = db.pxe_contact(mac, Some("10.0.0.2"), || true, offer("exit")).unwrap().unwrap();
        assert!(c.wrote);
        assert_eq!(c.machine.last_seen_ip.as_deref(), Some("10.0.0.2"));
        assert_eq!(offered(&db), 1);
        let c = db.pxe_contact(mac, Some("10.0.0.2"), || true, offer("disk")).unwrap().unwrap();
        assert!(c.wrote);
        assert_eq!(offered(&db), 2);
    }

    #[test]
    fn the_unclaimed_count_follows_discovery_claim_delete_and_reopen() {
        let d = tmp("unclaimed");
        let db = Db::open(&d).unwrap();
        db.limit_growth(2, 0);
        let contact = |db: &Db, mac: &str| {
            db.pxe_contact(mac, Some("10.0.0.1"), || true, |_, _| ((), None, None)).unwrap()
        };
        assert!(contact(&db, "aa:bb:cc:dd:ee:01").is_ok());
        assert!(contact(&db, "aa:bb:cc:dd:ee:02").is_ok());
        assert_eq!(db.unclaimed(), 2);
        assert_eq!(contact(&db, "aa:bb:cc:dd:ee:03").unwrap_err(), Capped::MaxDiscovered);
        assert_eq!(db.machine("aa:bb:cc:dd:ee:03").unwrap(), None, "a refusal writes nothing");
        assert!(contact(&db, "aa:bb:cc:dd:ee:01").is_ok(), "known machines are answered");
        db.put_machine("aa:bb:cc:dd:ee:01", &upsert("ipxe-exit", &[])).unwrap();
        assert_eq!(db.unclaimed(), 1, "a claimed machine no longer counts");
        assert!(contact(&db, "aa:bb:cc:dd:ee:03").is_ok());
        assert!(db.delete_machine("aa:bb:cc:dd:ee:03").unwrap());
        assert_eq!(db.unclaimed(), 1);
        let refused =
            db.pxe_contact("aa:bb:cc:dd:ee:04", None, || false, |_, _| ((), None, None)).unwrap();
        assert_eq!(refused.unwrap_err(), Capped::Rate);
        drop(db);
        // A database from before the column: discovered rows never saved count as unclaimed.
        {
            let c = Connection::open(d.join("state.db")).unwrap();
            c.execute_batch(
                "DROP INDEX machines_unclaimed; ALTER TABLE machines DROP COLUMN unclaimed;",
            )
            .unwrap();
        }
        let db = Db::open(&d).unwrap();
        assert_eq!(db.unclaimed(), 1);
        assert_eq!(db.machines().unwrap().len(), 2, "the migration keeps every row");
        // An import claims what it brings in and recounts the lshw bytes.
        let lshw = serde_json::json!({"id": "x"});
        db.import_machines(&[ImportedMachine {
            mac: "aa:bb:cc:dd:ee:02".into(),
            known_disks: None,
            known_disks_at: None,
            lshw: Some(lshw.clone()),
        }])
        .unwrap();
        assert_eq!(db.unclaimed(), 0);
        assert_eq!(db.lshw_bytes(), lshw.to_string().len() as u64);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn machines_round_trip_with_sorted_labels_and_survive_reopen() {
        let d = tmp("machines");
        let db = Db::open(&d).unwrap();
        let m = db
            .put_machine("aa:bb:cc:dd:ee:ff", &upsert("ipxe-exit", &["rack-3", "a b", "rack-3"]))
            .unwrap();
        assert_eq!(m.labels, vec!["a b", "rack-3"]);
        assert_eq!(m.boot_mode, "ipxe-exit");
        db.put_machine("00:11:22:33:44:55", &upsert("bty-inventory", &[])).unwrap();
        drop(db);
        let db = Db::open(&d).unwrap();
        let all = db.machines().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].mac, "00:11:22:33:44:55");
        assert!(all[0].labels.is_empty());
        assert!(db.delete_machine("00:11:22:33:44:55").unwrap());
        assert!(!db.delete_machine("00:11:22:33:44:55").unwrap());
        assert_eq!(db.machine("00:11:22:33:44:55").unwrap(), None);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn changing_mode_rearms_but_labels_do_not() {
        let d = tmp("rearm");
        let db = Db::open(&d).unwrap();
        let mac = "aa:bb:cc:dd:ee:01";
        db.put_machine(mac, &upsert("bty-flash-once", &[])).unwrap();
        db.write()
            .execute(
                "UPDATE machines SET saw_flasher_boot = 1, last_flashed_at = 'x' WHERE mac = ?1",
                [mac],
            )
            .unwrap();
        let m = db.put_machine(mac, &upsert("bty-flash-once", &["new-label"])).unwrap();
        assert!(m.saw_flasher_boot && m.last_flashed_at.is_some(), "labels alone do not re-arm");
        let m = db.put_machine(mac, &upsert("bty-flash-always", &["new-label"])).unwrap();
        assert!(!m.saw_flasher_boot && m.last_flashed_at.is_none(), "a new mode re-arms");
        let _ = std::fs::remove_dir_all(&d);
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

    #[test]
    fn garbage_file_is_set_aside_as_unversioned() {
        let d = tmp("garbage");
        std::fs::write(d.join("state.db"), b"this is not sqlite at all, just bytes").unwrap();
        let db = Db::open(&d).unwrap();
        let ev = db.events(Some("system.schema.reset"), None, 10, None).unwrap();
        assert_eq!(ev[0].details.as_ref().unwrap()["from_version"], "unversioned");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn events_filter_page_and_acknowledge() {
        let d = tmp("events");
        let db = Db::open(&d).unwrap();
        for i in 0..5 {
            db.add_event(
                if i % 2 == 0 { "pxe.offered" } else { "auth.login.failed" },
                Some("m1"),
                "x",
                None,
            )
            .unwrap();
        }
        let all = db.events(None, None, 50, None).unwrap();
        assert_eq!(all.len(), 5);
        assert!(all[0].id > all[1].id, "newest first");
        assert_eq!(db.events(Some("pxe.offered"), None, 50, None).unwrap().len(), 3);
        assert_eq!(db.events(None, None, 2, None).unwrap().len(), 2);
        assert_eq!(db.events(None, None, 50, Some(all[1].id)).unwrap().len(), 3);
        assert!(db.ack_event(all[0].id).unwrap());
        assert!(!db.ack_event(9999).unwrap());
        assert!(db.events(None, None, 1, None).unwrap()[0].acknowledged);
        let _ = std::fs::remove_dir_all(&d);
    }
}
