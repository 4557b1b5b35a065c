//! Progress reporting: a one-line bar on a TTY, a log line every few seconds, or JSON lines.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::flash::{Report, Snapshot};
use crate::units;

/// What a flash is doing, as a [`Snapshot`] says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading, decoding and writing the image.
    Write,
    /// Reading the target back against the hashes of what was written (`--verify`).
    Verify,
    /// Finished: the image is on the target.
    Done,
}

impl Phase {
    /// The name shown on the progress line, in `--progress json` and in the agent's progress
    /// posts to bty-web (`phase`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Write => "write",
            Phase::Verify => "verify",
            Phase::Done => "done",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `bar` on a TTY, `log` otherwise.
    Auto,
    /// A redrawn line on stderr.
    Bar,
    /// A plain line on stderr every few seconds.
    Log,
    /// One JSON object per line on stdout.
    Json,
    /// Nothing but errors.
    Quiet,
}

impl Mode {
    /// Parses a `--progress` value.
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "auto" => Mode::Auto,
            "bar" => Mode::Bar,
            "log" => Mode::Log,
            "json" => Mode::Json,
            "none" | "quiet" => Mode::Quiet,
            _ => return None,
        })
    }

    /// Resolves `Auto` by looking at stderr.
    pub fn resolve(self) -> Mode {
        match self {
            Mode::Auto if crate::sys::isatty(2) => Mode::Bar,
            Mode::Auto => Mode::Log,
            m => m,
        }
    }
}

/// Renders progress snapshots in one mode, rate-limited.
pub struct Reporter {
    mode: Mode,
    last: Option<Instant>,
    drew_bar: bool,
}

impl Reporter {
    /// A reporter for a resolved mode.
    pub fn new(mode: Mode) -> Reporter {
        Reporter { mode: mode.resolve(), last: None, drew_bar: false }
    }

    fn every(&self) -> Duration {
        match self.mode {
            Mode::Bar => Duration::from_millis(200),
            Mode::Json => Duration::from_secs(1),
            _ => Duration::from_secs(5),
        }
    }

    /// Shows a snapshot if enough time has passed since the last one.
    pub fn update(&mut self, s: &Snapshot<'_>) {
        let now = Instant::now();
        if self.mode == Mode::Quiet || self.last.is_some_and(|t| now - t < self.every()) {
            return;
        }
        if self.last.is_none() && self.mode == Mode::Log {
            // Skip the line at t=0; the first useful one comes after an interval.
            self.last = Some(now);
            return;
        }
        self.last = Some(now);
        let c = s.counters;
        let decoded = c.decoded.load(Ordering::Relaxed);
        let read = c.read.load(Ordering::Relaxed);
        let zeroed = c.zeroed.load(Ordering::Relaxed);
        let written = c.written.load(Ordering::Relaxed);
        let verified = c.verified.load(Ordering::Relaxed);
        let secs = s.elapsed.as_secs_f64().max(1e-3);
        let (done, total) = if s.phase == Phase::Verify {
            (verified, s.image_total.or(Some(decoded)))
        } else {
            (decoded, s.image_total)
        };
        // Fraction done: from the image size when known, else from the compressed bytes read.
        let frac = match (total, s.source_total) {
            (Some(t), _) if t > 0 => Some(done as f64 / t as f64),
            (_, Some(st)) if st > 0 && s.phase != Phase::Verify => Some(read as f64 / st as f64),
            _ => None,
        }
        .map(|f| f.clamp(0.0, 1.0));
        let rate = done as f64 / secs;
        let eta = frac.filter(|f| *f > 0.0).map(|f| Duration::from_secs_f64(secs / f - secs));
        match self.mode {
            Mode::Json => {
                let line = serde_json::json!({
                    "event": "progress", "phase": s.phase.as_str(), "read_bytes": read,
                    "decoded_bytes": decoded, "written_bytes": written, "zeroed_bytes": zeroed,
                    "verified_bytes": verified, "total_bytes": s.image_total,
                    "source_bytes": s.source_total, "fraction": frac,
                    "rate_bytes_per_s": rate as u64, "eta_s": eta.map(|d| d.as_secs()),
                    "elapsed_s": secs,
                });
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Mode::Bar => {
                let pct =
                    frac.map(|f| format!("{:3.0}%", f * 100.0)).unwrap_or_else(|| " ?? ".into());
                let width = 20usize;
                let fill = frac.map(|f| (f * width as f64) as usize).unwrap_or(0).min(width);
                let bar: String = "#".repeat(fill) + &"-".repeat(width - fill);
                let total_s = total.map(|t| format!(" / {}", units::bytes(t))).unwrap_or_default();
                let eta_s = eta.map(|d| format!(" ETA {}", units::duration(d))).unwrap_or_default();
                let line = format!(
                    "{} [{bar}] {pct} {}{total_s} {}{eta_s} zeros {}",
                    s.phase,
                    units::bytes(done),
                    units::rate(done, s.elapsed),
                    units::bytes(zeroed)
                );
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{line:<79.79}");
                let _ = err.flush();
                self.drew_bar = true;
            }
            Mode::Log => {
                let pct = frac.map(|f| format!(" ({:.0}%)", f * 100.0)).unwrap_or_default();
                let total_s = total.map(|t| format!(" of {}", units::bytes(t))).unwrap_or_default();
                let eta_s =
                    eta.map(|d| format!(", ETA {}", units::duration(d))).unwrap_or_default();
                crate::info!(
                    "{}: {}{total_s}{pct}, {}{eta_s}, {} written, {} skipped as zeros, {} read",
                    s.phase,
                    units::bytes(done),
                    units::rate(done, s.elapsed),
                    units::bytes(written),
                    units::bytes(zeroed),
                    units::bytes(read)
                );
            }
            Mode::Auto | Mode::Quiet => {}
        }
    }

    /// Ends the bar line and prints the summary of a finished flash.
    pub fn finish(&mut self, target: &str, r: &Report) {
        self.end_line();
        match self.mode {
            Mode::Json => {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("event".into(), "done".into());
                    o.insert("target".into(), target.into());
                }
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{v}");
                let _ = out.flush();
            }
            _ => {
                let secs = Duration::from_secs_f64(r.seconds);
                crate::info!(
                    "wrote {} to {target} in {} ({}): {} as data, {} skipped as zeros{}{}",
                    units::bytes(r.image_bytes),
                    units::duration(secs),
                    units::rate(r.image_bytes, secs),
                    units::bytes(r.written_bytes),
                    units::bytes(r.zeroed_bytes),
                    if r.verified { ", verified" } else { "" },
                    r.sha256.as_ref().map(|h| format!(", source sha256 {h}")).unwrap_or_default()
                );
            }
        }
    }

    /// Reports a failure (JSON mode emits an error event; others end the bar line).
    pub fn fail(&mut self, message: &str) {
        self.end_line();
        if self.mode == Mode::Json {
            let line = serde_json::json!({"event": "error", "message": message});
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    fn end_line(&mut self) {
        if self.drew_bar {
            eprintln!();
            self.drew_bar = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Phase;
    use crate::flash::write::ZeroMode;

    /// The names progress lines, `--progress json` and bty-web's progress page show.
    #[test]
    fn phases_and_zero_modes_keep_their_names() {
        let phases = [Phase::Write, Phase::Verify, Phase::Done];
        assert_eq!(phases.map(Phase::as_str), ["write", "verify", "done"]);
        assert_eq!(Phase::Verify.to_string(), "verify");
        // A flash report's zero_mode was the variant's Debug form: the same names.
        for z in [ZeroMode::ZeroOut, ZeroMode::PunchHole, ZeroMode::Write] {
            assert_eq!(z.as_str(), format!("{z:?}"));
        }
    }
}
