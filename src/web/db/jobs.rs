//! Background jobs' rows: one per backup or release fetch, one queued or running per kind.

use rusqlite::params;
use serde::Serialize;

use super::Db;
use crate::error::{Context, Result};
use crate::units::now_iso8601;

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

impl Db {
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
}
