//! What an unattended flash tells the world: console markers (`bty: write 25%`) for whoever
//! watches the serial line, and progress posts to bty-web for whoever watches the browser.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::agent::Client;
use crate::flash::{Phase, Snapshot};
use crate::wire::Progress;

/// Time between two progress posts.
const POST_EVERY: Duration = Duration::from_secs(2);

fn same_device_as_stderr(console: &std::fs::File) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (Ok(c), Ok(e)) = (console.metadata(), std::fs::metadata("/proc/self/fd/2")) else {
        return false;
    };
    c.file_type().is_char_device() && e.file_type().is_char_device() && c.rdev() == e.rdev()
}

/// Lines on stderr and, where it can be opened, /dev/console.
pub struct Markers {
    console: Option<std::fs::File>,
    /// Quarters announced so far (0..=4).
    quarters: u8,
}

impl Markers {
    pub fn new() -> Markers {
        // The live env runs bty with stderr on /dev/console already: one copy of each line.
        let console = crate::sys::open_console().filter(|c| !same_device_as_stderr(c));
        Markers { console, quarters: 0 }
    }

    /// Prints `bty: <what>` on both.
    pub fn say(&mut self, what: &str) {
        let line = format!("bty: {what}\n");
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
        // The serial console of a netbooted machine: best effort, a full buffer drops the line.
        if let Some(c) = &mut self.console {
            let _ = c.write_all(line.as_bytes());
        }
    }

    /// Announces each quarter of the write the first time the flash passes it.
    pub fn progress(&mut self, s: &Snapshot<'_>) {
        if s.phase != Phase::Write {
            return;
        }
        let Some(frac) = fraction(s) else { return };
        // 100% is said by `complete`, once the image is really on the disk.
        while self.quarters < 3 && frac >= f64::from(self.quarters + 1) / 4.0 {
            self.quarters += 1;
            self.say(&format!("write {}%", u32::from(self.quarters) * 25));
        }
    }

    /// Announces the quarters not yet said, up to 100%.
    pub fn complete(&mut self) {
        while self.quarters < 4 {
            self.quarters += 1;
            self.say(&format!("write {}%", u32::from(self.quarters) * 25));
        }
    }
}

impl Default for Markers {
    fn default() -> Markers {
        Markers::new()
    }
}

/// Fraction written: decoded bytes of the image size when known, else source bytes read of the
/// source size.
fn fraction(s: &Snapshot<'_>) -> Option<f64> {
    let decoded = s.counters.decoded.load(Ordering::Relaxed) as f64;
    let read = s.counters.read.load(Ordering::Relaxed) as f64;
    match (s.image_total, s.source_total) {
        (Some(t), _) if t > 0 => Some(decoded / t as f64),
        (_, Some(t)) if t > 0 => Some(read / t as f64),
        _ => None,
    }
}

/// The body of `POST /pxe/{mac}/progress` for a snapshot.
pub fn progress_body(s: &Snapshot<'_>) -> Progress {
    let decoded = s.counters.decoded.load(Ordering::Relaxed);
    let secs = s.elapsed.as_secs_f64();
    let rate = if secs > 0.0 { Some((decoded as f64 / secs) as u64) } else { None };
    // A stream that does not record its decoded size (most zstd and xz images) has a total
    // only once it ended.
    let total = s.image_total.or((s.phase == Phase::Done).then_some(decoded));
    // written_bytes counts image bytes through the writer, zero runs skipped cheaply included:
    // what the operator compares with the image size.
    Progress {
        phase: s.phase.as_str().to_string(),
        written_bytes: decoded,
        total_bytes: total,
        rate_bytes_per_s: rate,
    }
}

/// A side thread that posts the latest snapshot every two seconds. The flash only swaps a
/// value under a lock the poster holds for a clone; the network wait is the poster's alone.
pub struct Poster {
    latest: Arc<Mutex<Option<Progress>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Poster {
    pub fn start(client: Client) -> Poster {
        let latest: Arc<Mutex<Option<Progress>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (l, st) = (Arc::clone(&latest), Arc::clone(&stop));
        let thread = thread::Builder::new()
            .name("progress-post".into())
            .spawn(move || post_loop(&client, &l, &st))
            .map_err(|e| crate::warn!("starting the progress poster: {e}; no live progress"))
            .ok();
        Poster { latest, stop, thread }
    }

    /// Records the snapshot to post next.
    pub fn update(&self, s: &Snapshot<'_>) {
        // try_lock: should the poster hold the lock, this snapshot is skipped, never waited for.
        if let Ok(mut l) = self.latest.try_lock() {
            *l = Some(progress_body(s));
        }
    }

    /// Posts the last snapshot and stops the thread (waiting at most one post's timeout).
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn post_loop(client: &Client, latest: &Mutex<Option<Progress>>, stop: &AtomicBool) {
    let mut last_sent: Option<Progress> = None;
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        while started.elapsed() < POST_EVERY && !stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
        let body = latest.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(body) = body.filter(|b| last_sent.as_ref() != Some(b)) {
            match client.post("progress", &body) {
                Ok(()) => failures = 0,
                Err(e) => {
                    // One line per run of failures, not one every two seconds.
                    if failures == 0 {
                        crate::warn!("{e} (the flash goes on)");
                    }
                    failures += 1;
                }
            }
            last_sent = Some(body);
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
    }
}
