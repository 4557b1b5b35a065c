//! Background jobs' rows: one per backup or release fetch, one queued or running per kind.

use std::fmt;

use rusqlite::params;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Serialize, Serializer};

use super::{Db, immediate};
use crate::error::{Context, Result};
use crate::units::now_iso8601;

/// A background job (backup, release fetch) as the API returns it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Job {
    pub id: i64,
    pub kind: JobKind,
    pub state: JobState,
    pub progress_bytes: u64,
    pub total_bytes: Option<u64>,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// What a job does. Stored, sent and named in events (`backup.failed`) as its lower-case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// A backup of the state (web/backup.rs).
    Backup,
    /// A netboot release fetch (web/release.rs).
    Release,
}

impl JobKind {
    const ALL: [JobKind; 2] = [JobKind::Backup, JobKind::Release];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Release => "release",
        }
    }
}

/// Where a job stands: queued, then running, then done, failed or cancelled. Stored and sent
/// as its lower-case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended (its `finished_at` is set).
    pub fn finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Cancelled)
    }
}

// Both are text in the jobs table and in the JSON, by `as_str`: the one spelling of each.
macro_rules! text_enum {
    ($t:ty, $what:literal) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl FromSql for $t {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                let s = v.as_str()?;
                <$t>::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| {
                    FromSqlError::Other(
                        format!("{} {s:?} is not one this build knows", $what).into(),
                    )
                })
            }
        }
    };
}

text_enum!(JobKind, "job kind");
text_enum!(JobState, "job state");

impl Db {
    /// Creates a queued job of `kind`; None when one of that kind is queued or running already
    /// (one job per kind at a time).
    pub fn job_create(&self, kind: JobKind) -> Result<Option<i64>> {
        let mut conn = self.write();
        let tx = immediate(&mut conn)?;
        let busy: bool = tx
            .prepare_cached("SELECT count(*) > 0 FROM jobs WHERE kind = ?1 AND state IN (?2, ?3)")?
            .query_row(params![kind, JobState::Queued, JobState::Running], |r| r.get(0))
            .with_context(|| format!("looking for a running {kind} job"))?;
        if busy {
            return Ok(None);
        }
        tx.prepare_cached("INSERT INTO jobs (kind, state, created_at) VALUES (?1, ?2, ?3)")?
            .execute(params![kind, JobState::Queued, now_iso8601()])
            .with_context(|| format!("recording a {kind} job"))?;
        let id = tx.last_insert_rowid();
        tx.commit().context("committing a new job")?;
        Ok(Some(id))
    }

    /// Moves a job to `state`, with an error for failures.
    pub fn job_state(&self, id: i64, state: JobState, error: Option<&str>) -> Result<()> {
        let now = now_iso8601();
        self.write()
            .prepare_cached(
                "UPDATE jobs SET state = ?2, error = ?3, \
                 started_at = CASE WHEN ?5 THEN ?4 ELSE started_at END, \
                 finished_at = CASE WHEN ?6 THEN ?4 ELSE NULL END \
                 WHERE id = ?1",
            )?
            .execute(params![id, state, error, now, state == JobState::Running, state.finished()])
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
    pub fn jobs_interrupted(&self) -> Result<Vec<(i64, JobKind)>> {
        let mut conn = self.write();
        let tx = immediate(&mut conn)?;
        let unfinished = params![JobState::Queued, JobState::Running];
        let left: Vec<(i64, JobKind)> = tx
            .prepare_cached("SELECT id, kind FROM jobs WHERE state IN (?1, ?2)")?
            .query_map(unfinished, |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()
            .context("reading unfinished jobs")?;
        tx.prepare_cached(
            "UPDATE jobs SET state = ?3, error = 'interrupted', finished_at = ?4 \
             WHERE state IN (?1, ?2)",
        )?
        .execute(params![JobState::Queued, JobState::Running, JobState::Failed, now_iso8601()])
        .context("marking unfinished jobs interrupted")?;
        tx.commit().context("committing interrupted jobs")?;
        Ok(left)
    }

    /// Jobs newest first, of one kind or all, at most `limit`. A kind or state this build does
    /// not know fails the read, naming the value.
    pub fn jobs(&self, kind: Option<JobKind>, limit: u32) -> Result<Vec<Job>> {
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

#[cfg(test)]
mod tests {
    use super::super::tests::tmp;
    use super::*;

    #[test]
    fn a_job_goes_from_queued_to_an_end_one_per_kind_at_a_time() {
        let d = tmp("jobs");
        let db = Db::open(&d).unwrap();
        let id = db.job_create(JobKind::Backup).unwrap().unwrap();
        assert_eq!(db.job_create(JobKind::Backup).unwrap(), None, "one backup at a time");
        let other = db.job_create(JobKind::Release).unwrap().unwrap();
        db.job_state(id, JobState::Running, None).unwrap();
        let job = &db.jobs(Some(JobKind::Backup), 10).unwrap()[0];
        assert_eq!((job.kind, job.state), (JobKind::Backup, JobState::Running));
        assert!(job.started_at.is_some() && job.finished_at.is_none());
        db.job_state(id, JobState::Failed, Some("disk full")).unwrap();
        let job = &db.jobs(Some(JobKind::Backup), 10).unwrap()[0];
        assert_eq!(job.state, JobState::Failed);
        assert!(job.finished_at.is_some());
        let json = serde_json::to_value(job).unwrap();
        assert_eq!((&json["kind"], &json["state"]), (&"backup".into(), &"failed".into()));
        let again = db.job_create(JobKind::Backup).unwrap();
        let again = again.expect("a failed job is over: another may start");
        let mut left = db.jobs_interrupted().unwrap();
        left.sort_unstable_by_key(|(id, _)| *id);
        assert_eq!(left, [(other, JobKind::Release), (again, JobKind::Backup)]);
        assert!(db.jobs(None, 10).unwrap().iter().all(|j| j.state == JobState::Failed));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn every_name_parses_back_and_an_unknown_one_is_named() {
        for s in JobState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        let d = tmp("jobs-unknown");
        let db = Db::open(&d).unwrap();
        let id = db.job_create(JobKind::Release).unwrap().unwrap();
        for s in JobState::ALL {
            db.job_state(id, s, None).unwrap();
            assert_eq!(db.jobs(None, 1).unwrap()[0].state, s);
        }
        db.write().execute("UPDATE jobs SET state = 'paused'", []).unwrap();
        let e = db.jobs(None, 1).unwrap_err().to_string();
        assert!(e.contains("job state \"paused\""), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
