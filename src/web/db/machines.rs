//! Machines: what the operator sets, what an import brings, the posted inventory, and the
//! queries of the machine table.

use std::sync::atomic::Ordering;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::events::insert_event;
use super::{Db, growth, immediate, sub};
use crate::error::{Context, Result};
use crate::units::now_iso8601;
use crate::wire::BootMode;

/// What became of a posted inventory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InventoryStored {
    NoMachine,
    /// The disks, and the lshw blob if one was given.
    All,
    /// The disks; the blob was dropped by the total lshw cap, the previous one is kept.
    WithoutLshw,
}

/// A machine read from an export or a reference state.db, checked by the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedMachine {
    pub mac: String,
    pub known_disks: Option<serde_json::Value>,
    pub known_disks_at: Option<String>,
    pub lshw: Option<serde_json::Value>,
    /// They replace the machine's labels (none from an export).
    pub labels: Vec<String>,
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
    pub boot_mode: BootMode,
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

/// The columns the machines page's text filter reads, for a scan of the whole fleet that skips
/// the rest (an inventory's JSON above all).
#[derive(Clone, Debug)]
pub struct MachineKey {
    pub mac: String,
    pub last_seen_ip: Option<String>,
    pub boot_mode: BootMode,
    pub bty_image_ref: Option<String>,
    pub labels: Vec<String>,
}

/// What an operator sets on a machine (`MachineUpsert`, validated by the caller).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MachineUpsert {
    pub bty_image_ref: Option<String>,
    pub labels: Vec<String>,
    pub boot_mode: BootMode,
    pub sanboot_drive: Option<String>,
    pub target_disk_serial: Option<String>,
}

/// What `put_machine` reads of a stored machine: whether saving it re-arms it (a new image,
/// mode or target serial), and whether saving claims it.
struct Stored {
    image: Option<String>,
    mode: BootMode,
    serial: Option<String>,
    unclaimed: bool,
}

// The column list is a macro so that every query text is `concat!`ed at compile time: the
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

pub(super) const MACHINE_BY_MAC: &str =
    concat!("SELECT ", machine_columns!(), " FROM machines m WHERE m.mac = ?1");
const MACHINES_ALL: &str =
    concat!("SELECT ", machine_columns!(), " FROM machines m ORDER BY m.mac");
// The machines page's label (?1, exact) and state (?2: 1 assigned, 0 discovered) filters, as
// `bulk::Filter::keep` applies them; NULL leaves one out.
macro_rules! page_filter {
    () => {
        " FROM machines m WHERE (?1 IS NULL OR EXISTS (SELECT 1 FROM machine_labels l \
         WHERE l.mac = m.mac AND l.label = ?1)) AND (?2 IS NULL OR (m.bty_image_ref IS NOT NULL) = ?2)"
    };
}
const MACHINES_PAGE: &str =
    concat!("SELECT ", machine_columns!(), page_filter!(), " ORDER BY m.mac LIMIT ?3 OFFSET ?4");
const MACHINES_COUNT: &str = concat!("SELECT count(*)", page_filter!());

/// A stored boot mode; one this build does not know (a database written by another version,
/// or by hand) fails the read with the value named rather than passing as some other mode.
fn boot_mode(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<BootMode> {
    let s: String = r.get(i)?;
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    })
}

pub(super) fn machine_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Machine> {
    let labels: Option<String> = r.get(16)?;
    let disks: Option<String> = r.get(8)?;
    Ok(Machine {
        mac: r.get(0)?,
        bty_image_ref: r.get(1)?,
        discovered_at: r.get(2)?,
        last_seen_at: r.get(3)?,
        last_seen_ip: r.get(4)?,
        boot_mode: boot_mode(r, 5)?,
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

/// One machine of a bulk change: what it held when the change was planned, what it gets, and
/// its `machine.updated` event.
#[derive(Clone, Debug)]
pub struct BulkWrite {
    pub mac: String,
    pub before: MachineUpsert,
    pub after: MachineUpsert,
    pub message: String,
    pub details: serde_json::Value,
}

/// A machine's operator settings as stored (labels sorted as `machine_columns!` reads them).
fn stored_upsert(tx: &rusqlite::Connection, mac: &str) -> Result<Option<MachineUpsert>> {
    let Some(mut m) = tx
        .prepare_cached(
            "SELECT bty_image_ref, boot_mode, sanboot_drive, target_disk_serial FROM machines \
             WHERE mac = ?1",
        )?
        .query_row([mac], |r| {
            Ok(MachineUpsert {
                bty_image_ref: r.get(0)?,
                labels: Vec::new(),
                boot_mode: boot_mode(r, 1)?,
                sanboot_drive: r.get(2)?,
                target_disk_serial: r.get(3)?,
            })
        })
        .optional()?
    else {
        return Ok(None);
    };
    m.labels = tx
        .prepare_cached("SELECT label FROM machine_labels WHERE mac = ?1 ORDER BY label")?
        .query_map([mac], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(m))
}

/// Creates or replaces one machine's operator settings inside the caller's transaction (see
/// `put_machine`); true when this claimed a discovered machine.
fn write_machine(
    tx: &rusqlite::Connection,
    mac: &str,
    m: &MachineUpsert,
    now: &str,
) -> Result<bool> {
    let old: Option<Stored> = tx
        .prepare_cached(
            "SELECT bty_image_ref, boot_mode, target_disk_serial, unclaimed FROM machines \
             WHERE mac = ?1",
        )?
        .query_row([mac], |r| {
            Ok(Stored {
                image: r.get(0)?,
                mode: boot_mode(r, 1)?,
                serial: r.get(2)?,
                unclaimed: r.get(3)?,
            })
        })
        .optional()?;
    let claimed = old.as_ref().is_some_and(|o| o.unclaimed);
    match old {
        None => {
            tx.prepare_cached(
                "INSERT INTO machines (mac, bty_image_ref, boot_mode, sanboot_drive, \
                 target_disk_serial, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            )?
            .execute(params![
                mac,
                m.bty_image_ref,
                m.boot_mode.as_str(),
                m.sanboot_drive,
                m.target_disk_serial,
                now
            ])?;
        }
        Some(old) => {
            let rearm = old.image != m.bty_image_ref
                || old.mode != m.boot_mode
                || old.serial != m.target_disk_serial;
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
                m.boot_mode.as_str(),
                m.sanboot_drive,
                m.target_disk_serial,
                now,
                rearm
            ])?;
        }
    }
    tx.prepare_cached("DELETE FROM machine_labels WHERE mac = ?1")?.execute([mac])?;
    let mut ins =
        tx.prepare_cached("INSERT OR IGNORE INTO machine_labels (mac, label) VALUES (?1, ?2)")?;
    for l in &m.labels {
        ins.execute(params![mac, l])?;
    }
    Ok(claimed)
}

impl Db {
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

    /// The machines page without a text filter: how many machines have `label` (any: None) and
    /// are `assigned` or not (either: None), and `limit` of them from `offset` in MAC order.
    /// A page of a large fleet reads its own rows, not the fleet.
    pub fn machines_page(
        &self,
        label: Option<&str>,
        assigned: Option<bool>,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<Machine>)> {
        self.read(|c| {
            let n: i64 = c
                .prepare_cached(MACHINES_COUNT)?
                .query_row(params![label, assigned], |r| r.get(0))?;
            let rows = c
                .prepare_cached(MACHINES_PAGE)?
                .query_map(
                    params![
                        label,
                        assigned,
                        i64::try_from(limit).unwrap_or(i64::MAX),
                        i64::try_from(offset).unwrap_or(i64::MAX)
                    ],
                    machine_from_row,
                )?
                .collect::<rusqlite::Result<_>>()?;
            Ok((n.max(0) as usize, rows))
        })
    }

    /// Every machine's `MachineKey`, ordered by MAC.
    pub fn machine_keys(&self) -> Result<Vec<MachineKey>> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT m.mac, m.last_seen_ip, m.boot_mode, m.bty_image_ref, \
                 (SELECT group_concat(label, char(10)) FROM \
                    (SELECT label FROM machine_labels l WHERE l.mac = m.mac ORDER BY label)) \
                 FROM machines m ORDER BY m.mac",
            )?
            .query_map([], |r| {
                let labels: Option<String> = r.get(4)?;
                Ok(MachineKey {
                    mac: r.get(0)?,
                    last_seen_ip: r.get(1)?,
                    boot_mode: boot_mode(r, 2)?,
                    bty_image_ref: r.get(3)?,
                    labels: labels
                        .map(|l| l.split('\n').map(str::to_string).collect())
                        .unwrap_or_default(),
                })
            })?
            .collect()
        })
    }

    /// Every label in use, sorted, and how many machines there are.
    pub fn labels_and_count(&self) -> Result<(Vec<String>, usize)> {
        self.read(|c| {
            let labels = c
                .prepare_cached("SELECT DISTINCT label FROM machine_labels ORDER BY label")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let n: i64 =
                c.prepare_cached("SELECT count(*) FROM machines")?.query_row([], |r| r.get(0))?;
            Ok((labels, n.max(0) as usize))
        })
    }

    /// Creates or replaces a machine's operator settings. Changing boot mode, image or target
    /// serial re-arms it (clears the live-environment mark, last flash and inventory time);
    /// labels and sanboot drive do not. Returns the stored machine.
    pub fn put_machine(&self, mac: &str, m: &MachineUpsert) -> Result<Machine> {
        {
            let mut conn = self.write();
            let tx = immediate(&mut conn)?;
            let claimed = write_machine(&tx, mac, m, &now_iso8601())?;
            tx.commit().with_context(|| format!("saving machine {mac}"))?;
            if claimed {
                sub(&self.unclaimed, 1);
            }
        }
        self.machine(mac)?.with_context(|| format!("reading back machine {mac}"))
    }

    /// Saves a bulk change in one transaction, with its events: every write or none. Each
    /// machine must still hold what the change was planned from (`before`), else nothing is
    /// written and the MAC of the first that moved is returned: a PUT between the plan and
    /// this write must not be overwritten unseen.
    pub fn put_machines(&self, writes: &[BulkWrite]) -> Result<Option<String>> {
        let now = now_iso8601();
        let mut conn = self.write();
        let tx = immediate(&mut conn)?;
        let mut claimed = 0;
        for w in writes {
            let current = stored_upsert(&tx, &w.mac)
                .with_context(|| format!("reading machine {} for a bulk change", w.mac))?;
            if current.as_ref() != Some(&w.before) {
                return Ok(Some(w.mac.clone()));
            }
            if write_machine(&tx, &w.mac, &w.after, &now)
                .with_context(|| format!("saving machine {} in a bulk change", w.mac))?
            {
                claimed += 1;
            }
            insert_event(
                &tx,
                "machine.updated",
                Some(&w.mac),
                &w.message,
                Some(w.details.clone()),
            )?;
        }
        tx.commit().context("committing a bulk change of machines")?;
        sub(&self.unclaimed, claimed);
        Ok(None)
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
    /// naming how many; returns their MACs (the live updates announce each removal).
    pub fn expire_discovered(&self, ttl_days: u64) -> Result<Vec<String>> {
        let cutoff =
            crate::units::iso8601(crate::units::now_secs().saturating_sub(ttl_days * 86_400));
        let mut conn = self.write();
        let tx = immediate(&mut conn)?;
        let gone: Vec<(String, u64)> = tx
            .prepare_cached(
                "DELETE FROM machines WHERE unclaimed = 1 AND last_seen_at < ?1 \
                 RETURNING mac, coalesce(octet_length(lshw), 0)",
            )?
            .query_map([&cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?
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
        sub(&self.lshw_bytes, gone.iter().map(|g| g.1).sum());
        Ok(gone.into_iter().map(|g| g.0).collect())
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
        let tx = immediate(&mut conn)?;
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

    /// Inserts or replaces imported machines, all or none: each as `bty-inventory` with no
    /// image or target disk, the labels it brings (checked by the caller), and claimed (the
    /// operator brought it in).
    pub fn import_machines(&self, machines: &[ImportedMachine]) -> Result<()> {
        let now = now_iso8601();
        let mut conn = self.write();
        let tx = immediate(&mut conn)?;
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
            let mut label = tx.prepare_cached(
                "INSERT OR IGNORE INTO machine_labels (mac, label) VALUES (?1, ?2)",
            )?;
            for l in &m.labels {
                label
                    .execute(params![m.mac, l])
                    .with_context(|| format!("importing the labels of {}", m.mac))?;
            }
        }
        let (unclaimed, lshw_bytes) = growth(&tx).context("counting machines after the import")?;
        tx.commit().context("committing the import")?;
        self.unclaimed.store(unclaimed, Ordering::Relaxed);
        self.lshw_bytes.store(lshw_bytes, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{tmp, upsert};
    use super::*;

    #[test]
    fn machines_round_trip_with_sorted_labels_and_survive_reopen() {
        let d = tmp("machines");
        let db = Db::open(&d).unwrap();
        let m = db
            .put_machine("aa:bb:cc:dd:ee:ff", &upsert("ipxe-exit", &["rack-3", "a b", "rack-3"]))
            .unwrap();
        assert_eq!(m.labels, vec!["a b", "rack-3"]);
        assert_eq!(m.boot_mode.as_str(), "ipxe-exit");
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
    fn bulk_writes_all_or_nothing_with_one_event_each() {
        let d = tmp("bulk");
        let db = Db::open(&d).unwrap();
        let (a, b) = ("aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02");
        let before = upsert("ipxe-exit", &["r1"]);
        db.put_machine(a, &before).unwrap();
        db.put_machine(b, &before).unwrap();
        let write = |mac: &str, from: &MachineUpsert| BulkWrite {
            mac: mac.into(),
            before: from.clone(),
            after: upsert("bty-tui", &["r1", "r2"]),
            message: format!("{mac} bulk"),
            details: serde_json::json!({"bulk": true}),
        };
        // b no longer holds what the change was planned from: nothing is written, a included.
        let stale = upsert("bty-inventory", &[]);
        assert_eq!(
            db.put_machines(&[write(a, &before), write(b, &stale)]).unwrap(),
            Some(b.into())
        );
        assert_eq!(db.machine(a).unwrap().unwrap().boot_mode.as_str(), "ipxe-exit");
        assert!(db.events(Some("machine.updated"), None, 10, None).unwrap().is_empty());
        assert_eq!(db.put_machines(&[write(a, &before), write(b, &before)]).unwrap(), None);
        for mac in [a, b] {
            let m = db.machine(mac).unwrap().unwrap();
            assert_eq!(
                (m.boot_mode.as_str(), m.labels.clone()),
                ("bty-tui", vec!["r1".into(), "r2".into()])
            );
            assert_eq!(db.events(Some("machine.updated"), Some(mac), 10, None).unwrap().len(), 1);
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
