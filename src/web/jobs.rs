//! Background jobs (backups, netboot release fetches): a thread per running job, a row in the
//! `jobs` table for each, one job per kind at a time, cancel honoured at the job's next check
//! (they check at least every second), and every state change recorded as an event and pushed
//! to live-update clients as `jobs-update`. Jobs a killed process left behind are marked
//! `failed: interrupted` at start, never silently lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Context, Result};
use crate::web::app::App;
use crate::web::db::{JobKind, JobState};
use crate::web::sse;

/// How often a job's progress is recorded and sent at most: a local fetch reads hundreds of
/// blocks a second, and a live-update client whose queue fills with them is dropped.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// The running jobs' kinds and cancel flags.
#[derive(Default)]
pub struct Jobs {
    cancel: Mutex<HashMap<i64, (JobKind, Arc<AtomicBool>)>>,
}

/// What a job's work sees: its id, its cancel flag, and how to report progress.
pub struct Ctx {
    pub id: i64,
    pub app: Arc<App>,
    cancel: Arc<AtomicBool>,
    /// When progress was last recorded.
    reported: std::cell::Cell<Option<Instant>>,
}

impl Ctx {
    /// Whether the operator asked to stop: the work returns `Err` soon after.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Records progress (not an event: progress is frequent), at most every `PROGRESS_EVERY`
    /// but always the last step, so a finished job shows all its bytes.
    pub fn progress(&self, bytes: u64, total: Option<u64>) {
        let last = total.is_some_and(|t| bytes >= t);
        if !last && self.reported.get().is_some_and(|at| at.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.reported.set(Some(Instant::now()));
        if let Err(e) = self.app.db.job_progress(self.id, bytes, total) {
            crate::warn!("{e}");
        }
        publish(&self.app);
    }
}

impl Jobs {
    /// At start: what a killed process left running is failed as interrupted.
    pub fn recover(app: &App) -> Result<()> {
        for (id, kind) in app.db.jobs_interrupted()? {
            crate::warn!("{kind} job {id} was interrupted by a restart");
            app.db.event(
                &format!("{kind}.failed"),
                Some(&id.to_string()),
                &format!("{kind} job {id} failed: interrupted (bty-web stopped while it ran)"),
                Some(serde_json::json!({ "job": id, "kind": kind, "error": "interrupted" })),
            );
        }
        Ok(())
    }

    /// Starts `work` as a job of `kind` on a thread of its own; None when one of that kind is
    /// already queued or running. `work` returns a summary for the done event.
    pub fn start(
        app: &Arc<App>,
        kind: JobKind,
        work: impl FnOnce(&Ctx) -> Result<String> + Send + 'static,
    ) -> Result<Option<i64>> {
        let Some(id) = app.db.job_create(kind)? else { return Ok(None) };
        let cancel = Arc::new(AtomicBool::new(false));
        app.jobs.lock().insert(id, (kind, Arc::clone(&cancel)));
        let ctx = Ctx { id, app: Arc::clone(app), cancel, reported: Default::default() };
        let spawned = std::thread::Builder::new().name(format!("job-{kind}")).spawn(move || {
            let app = Arc::clone(&ctx.app);
            change(&app, id, kind, JobState::Running, None, None);
            let outcome = work(&ctx);
            app.jobs.lock().remove(&id);
            match outcome {
                Ok(summary) => change(&app, id, kind, JobState::Done, None, Some(summary)),
                Err(_) if ctx.cancelled() => {
                    change(&app, id, kind, JobState::Cancelled, None, None)
                }
                Err(e) => change(&app, id, kind, JobState::Failed, Some(e.to_string()), None),
            }
        });
        if let Err(e) = spawned {
            app.jobs.lock().remove(&id);
            let msg = format!("starting a thread for {kind} job {id}: {e}");
            change(app, id, kind, JobState::Failed, Some(msg.clone()), None);
            return Err(crate::error::Error::msg(msg));
        }
        Ok(Some(id))
    }

    /// Asks a running job of `kind` to stop; false when no such job is running (a job of
    /// another kind is not stopped: each kind's cancel route stops only its own).
    pub fn cancel(&self, id: i64, kind: JobKind) -> bool {
        match self.lock().get(&id) {
            Some((k, flag)) if *k == kind => {
                flag.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// The ids of running jobs.
    pub fn running(&self) -> Vec<i64> {
        self.lock().keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, (JobKind, Arc<AtomicBool>)>> {
        self.cancel.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Records a state change: the row, an event, a live update.
fn change(
    app: &App,
    id: i64,
    kind: JobKind,
    state: JobState,
    error: Option<String>,
    summary: Option<String>,
) {
    if let Err(e) = app.db.job_state(id, state, error.as_deref()) {
        crate::error!("{e}");
    }
    let message = match (&error, &summary) {
        (Some(e), _) => format!("{kind} job {id} {state}: {e}"),
        (None, Some(s)) => format!("{kind} job {id} {state}: {s}"),
        (None, None) => format!("{kind} job {id} {state}"),
    };
    if state == JobState::Failed {
        crate::error!("{message}");
    } else {
        crate::info!("{message}");
    }
    app.db.event(
        &format!("job.{state}"),
        Some(&id.to_string()),
        &message,
        Some(serde_json::json!({ "job": id, "kind": kind, "error": error })),
    );
    publish(app);
}

/// Sends the recent jobs to live-update clients.
fn publish(app: &App) {
    match snapshot(app) {
        Ok(json) => app.hub.publish(sse::event("jobs-update", &json)),
        Err(e) => crate::warn!("{e}"),
    }
}

/// The recent jobs of every kind as JSON: the data of a `jobs-update` event.
pub fn snapshot(app: &App) -> Result<String> {
    let jobs = app.db.jobs(None, 20)?;
    serde_json::to_string(&jobs).context("encoding the recent jobs")
}

/// A job id from a path: a positive decimal number, or a message saying what it got.
pub fn parse_id(id: &str) -> std::result::Result<i64, String> {
    match id.parse::<i64>() {
        // `parse` takes a leading '+'; a job id in a path is plain digits.
        Ok(n) if n > 0 && id.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => {
            let shown: String = id.chars().take(40).collect();
            Err(format!("job id: expected a positive number, got {shown:?}"))
        }
    }
}

/// Temporary files of a job, removed when the job ends, however it ends (those already renamed
/// into place are simply gone).
pub struct TempFiles(pub Vec<std::path::PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Fails the job with a message when its work should stop (cancel).
pub fn check_cancel(ctx: &Ctx) -> Result<()> {
    if ctx.cancelled() {
        return Err(crate::error::Error::msg("cancelled")).context("job stopped by the operator");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_plain_positive_numbers() {
        assert_eq!(parse_id("42"), Ok(42));
        for bad in ["", "0", "-1", "+1", " 1", "1.0", "1e3", "0x10", "99999999999999999999"] {
            let e = parse_id(bad).unwrap_err();
            assert!(e.starts_with("job id: expected a positive number, got "), "{bad}: {e}");
        }
        let e = parse_id(&"9".repeat(500)).unwrap_err();
        assert!(e.len() < 100, "the echo is clipped: {e}");
    }

    #[test]
    fn a_cancel_stops_only_a_running_job_of_its_kind() {
        let jobs = Jobs::default();
        let flag = Arc::new(AtomicBool::new(false));
        jobs.lock().insert(7, (JobKind::Release, Arc::clone(&flag)));
        assert!(!jobs.cancel(7, JobKind::Backup), "a backup cancel does not stop a fetch");
        assert!(!flag.load(Ordering::Relaxed));
        assert!(!jobs.cancel(8, JobKind::Release), "no job 8");
        assert!(jobs.cancel(7, JobKind::Release));
        assert!(flag.load(Ordering::Relaxed));
    }
}
