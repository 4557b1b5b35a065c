//! The event log: what happened, newest first, pruned as it grows.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::Db;
use crate::error::{Context, Result};
use crate::units::now_iso8601;

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

impl Db {
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
}

/// Events kept: older ones are pruned as new ones arrive, so a lab that PXE-boots all day does
/// not grow state.db without bound.
const EVENTS_KEPT: i64 = 100_000;

/// Inserts an event on `conn` (inside the caller's transaction, if any); returns its id.
pub(super) fn insert_event(
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
    use super::super::tests::tmp;
    use super::*;

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
