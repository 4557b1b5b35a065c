//! A PXE contact in one short transaction, and the bookkeeping marks it and the live
//! environment set.

use std::sync::atomic::Ordering;

use rusqlite::{Connection, OptionalExtension, params};

use super::catalog::{CATALOG_BY_REF, catalog_from_row};
use super::events::insert_event;
use super::machines::{MACHINE_BY_MAC, machine_from_row};
use super::{Capped, CatalogEntry, Db, Machine, immediate};
use crate::error::{Context, Result};
use crate::units::now_iso8601;
use crate::web::offers::Offers;

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

/// What the caller's `decide` makes of a contact.
#[derive(Debug)]
pub struct Decided<T> {
    /// The caller's own decision, handed back as `Contacted::decision`.
    pub decision: T,
    /// The bookkeeping mark the offer needs, applied in the contact's transaction.
    pub mark: Option<PxeMark>,
    /// The offer's reason, logged as a `pxe.offered` event unless `offers` logged it lately.
    pub offered: Option<String>,
}

/// A PXE contact's outcome, or for an unknown MAC the cap that kept it from being recorded.
pub type Contact<T> = std::result::Result<Contacted<T>, Capped>;

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

impl Db {
    /// One PXE contact in one short write transaction: records it (an unknown MAC becomes a
    /// discovered machine), reads the machine and its catalog entry, lets `decide` pick the
    /// offer, applies the bookkeeping mark the offer needs and logs the events. The cost does
    /// not depend on the fleet size: a few statements on one row, all prepared once.
    ///
    /// An offer `offers` logged for this MAC a few seconds ago is not logged again; one logged
    /// now is remembered there.
    ///
    /// An unknown MAC is recorded only below the `max_discovered` cap and when `may_discover`
    /// (the caller's per-address rate) agrees; otherwise nothing is written and the cap is
    /// returned. Known machines are answered and updated whatever the caps.
    pub fn pxe_contact<T>(
        &self,
        mac: &str,
        ip: Option<&str>,
        offers: &Offers,
        may_discover: impl FnOnce() -> bool,
        decide: impl Fn(&Machine, Option<&CatalogEntry>) -> Decided<T>,
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
                    let Decided { decision: out, mark, offered } = decide(&m, image.as_ref());
                    if mark.is_none() && offered.as_deref().is_none_or(|r| offers.lately(mac, r)) {
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
        let tx = immediate(&mut conn)?;
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
        let Decided { decision: out, mark, offered } = decide(&m, image.as_ref());
        if let Some(what) = mark {
            apply_mark(&tx, mac, what, &now)?;
        }
        let logged = match offered {
            Some(reason) if !offers.lately(mac, &reason) => {
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
            offers.logged(mac, &reason);
        }
        Ok(Ok(Contacted { machine: m, image, decision: out, wrote: true }))
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

#[cfg(test)]
mod tests {
    use super::super::tests::{tmp, upsert};
    use super::super::{ImportedMachine, Machine};
    use super::*;

    #[test]
    fn a_contact_that_changes_nothing_writes_nothing() {
        let d = tmp("repeat");
        let db = Db::open(&d).unwrap();
        let offers = Offers::default();
        let offer = |reason: &'static str| {
            move |_: &Machine, _: Option<&CatalogEntry>| Decided {
                decision: (),
                mark: None,
                offered: Some(reason.to_string()),
            }
        };
        let mac = "aa:bb:cc:dd:ee:01";
        let c = db
            .pxe_contact(mac, Some("10.0.0.1"), &offers, || true, offer("exit"))
            .unwrap()
            .unwrap();
        assert!(c.wrote, "a discovery is written");
        assert_eq!(c.machine.last_seen_ip.as_deref(), Some("10.0.0.1"));
        let offered = |db: &Db| db.events(Some("pxe.offered"), None, 100, None).unwrap().len();
        assert_eq!(offered(&db), 1);
        // Within the same second, from the same address, the same offer: read only (the
        // second may tick over between the calls, then it writes last-seen but no event).
        let generation = db.generation();
        let c = db
            .pxe_contact(mac, Some("10.0.0.1"), &offers, || true, offer("exit"))
            .unwrap()
            .unwrap();
        assert!(!c.wrote || db.generation() != generation);
        assert_eq!(offered(&db), 1, "a repeated offer within 10 s is logged once");
        // Another address or another offer is news.
        let c = db
            .pxe_contact(mac, Some("10.0.0.2"), &offers, || true, offer("exit"))
            .unwrap()
            .unwrap();
        assert!(c.wrote);
        assert_eq!(c.machine.last_seen_ip.as_deref(), Some("10.0.0.2"));
        assert_eq!(offered(&db), 1);
        let c = db
            .pxe_contact(mac, Some("10.0.0.2"), &offers, || true, offer("disk"))
            .unwrap()
            .unwrap();
        assert!(c.wrote);
        assert_eq!(offered(&db), 2);
    }

    #[test]
    fn the_unclaimed_count_follows_discovery_claim_delete_and_reopen() {
        let d = tmp("unclaimed");
        let db = Db::open(&d).unwrap();
        db.limit_growth(2, 0);
        let contact = |db: &Db, mac: &str| {
            db.pxe_contact(
                mac,
                Some("10.0.0.1"),
                &Offers::default(),
                || true,
                |_, _| Decided { decision: (), mark: None, offered: None },
            )
            .unwrap()
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
        let refused = db
            .pxe_contact(
                "aa:bb:cc:dd:ee:04",
                None,
                &Offers::default(),
                || false,
                |_, _| Decided { decision: (), mark: None, offered: None },
            )
            .unwrap();
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
            labels: Vec::new(),
        }])
        .unwrap();
        assert_eq!(db.unclaimed(), 0);
        assert_eq!(db.lshw_bytes(), lshw.to_string().len() as u64);
        let _ = std::fs::remove_dir_all(&d);
    }
}
