//! The flash pipeline: reader thread -> decoder thread -> bounded channel of aligned buffers ->
//! writer thread (O_DIRECT, zero skip, first MiB last), with progress, cancel and verify.

pub mod probe;
pub mod progress;
pub mod stream;
pub mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::disks::{self, Target};
use crate::error::{Context, Error, Result};
use crate::image::format::{self, Format};
use crate::image::qcow2;
use crate::source::Source;
use probe::ImageInfo;
pub use progress::Phase;
use stream::{Block, Pool, Stage, Stop};
use write::Writer;

/// Decoded bytes per buffer: large O_DIRECT writes, few channel hand-offs.
pub const BLOCK: usize = 4 << 20;
/// Buffers queued between decoder and writer. With the one being filled and the one being
/// written that is BLOCK * (QUEUE + 2) = 16 MiB in flight, whatever the image size.
pub const QUEUE: usize = 2;

/// Byte counters the stages update and the progress reporter reads.
#[derive(Default, Debug)]
pub struct Counters {
    /// Source bytes read (compressed).
    pub read: AtomicU64,
    /// Image bytes decoded.
    pub decoded: AtomicU64,
    /// Image bytes written as data.
    pub written: AtomicU64,
    /// Image bytes skipped as zeros (write-zeroes or holes).
    pub zeroed: AtomicU64,
    /// Bytes read back and compared by `--verify`.
    pub verified: AtomicU64,
}

/// How to flash.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Pinned sha256 of the source bytes; the head is written only if it matches.
    pub sha256: Option<[u8; 32]>,
    /// Read back and compare after writing.
    pub verify: bool,
    /// Turn aligned zero runs into write-zeroes requests or holes.
    pub zero_skip: bool,
}

/// A checked plan: the image as probed and the target as found.
pub struct Plan {
    pub source: Source,
    pub image: ImageInfo,
    pub target: Target,
}

impl Plan {
    /// Probes the image and the target and applies every rule that can be checked before
    /// writing: format, tar, target safety, size.
    pub fn new(source: &str, target: &std::path::Path) -> Result<Plan> {
        let source = Source::open(source)?;
        let image = probe::probe(&source)?;
        let target = Target::probe(target)?;
        // Before the other rules: a source on a mounted target is better explained this way.
        if let Some(meta) = source.local_metadata() {
            disks::safety::check_not_source(&meta, &source.display, &target)?;
        }
        disks::check_writable(&target)?;
        if let (Some(need), Some(cap)) = (image.virtual_size, target.capacity()) {
            crate::ensure!(
                need <= cap,
                "refusing {}: the image needs {} ({need} bytes) but the target holds {} ({cap} bytes)",
                target.resolved.display(),
                crate::units::bytes(need),
                crate::units::bytes(cap)
            );
        }
        Ok(Plan { source, image, target })
    }
}

/// What a finished flash did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub source_bytes: u64,
    pub image_bytes: u64,
    pub written_bytes: u64,
    pub zeroed_bytes: u64,
    pub sha256: Option<String>,
    pub verified: bool,
    pub seconds: f64,
    pub direct_io: bool,
    pub zero_mode: &'static str,
}

/// Why a flash did not complete.
#[derive(Debug)]
pub enum FlashError {
    /// Nothing was written: the target is as it was.
    Refused(Error),
    /// Writing began and failed; the target's first and last MiB were blanked.
    Failed(Error),
    /// SIGINT/SIGTERM; the target's first and last MiB were blanked.
    Cancelled,
}

impl std::fmt::Display for FlashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlashError::Refused(e) | FlashError::Failed(e) => write!(f, "{e}"),
            FlashError::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// A progress observation handed to the reporter.
pub struct Snapshot<'a> {
    pub counters: &'a Counters,
    pub image_total: Option<u64>,
    pub source_total: Option<u64>,
    pub elapsed: Duration,
    pub phase: Phase,
}

/// Runs the plan. `tick` is called about ten times a second with the progress so far.
pub fn run(
    plan: &Plan,
    opts: &Options,
    tick: &mut dyn FnMut(&Snapshot<'_>),
    cancel: &'static AtomicBool,
) -> std::result::Result<Report, FlashError> {
    let started = Instant::now();
    // A digest the source promises (an OCI layer digest) is checked like a pinned --sha256.
    let sha256 = match (opts.sha256, plan.source.digest()) {
        (Some(a), Some(b)) if a != b => {
            return Err(FlashError::Refused(Error::msg(format!(
                "--sha256 {} differs from the digest {} promises ({}); nothing was written",
                crate::hex::encode(&a),
                plan.source.display,
                crate::hex::encode(&b)
            ))));
        }
        (a, b) => a.or(b),
    };
    let opts = &Options { sha256, ..opts.clone() };
    let counters = Arc::new(Counters::default());
    let mut writer =
        Writer::open(&plan.target, opts.zero_skip, opts.verify).map_err(FlashError::Refused)?;
    // From here on the target is being changed: blank its headers first, so that even a
    // SIGKILL mid-flash leaves a disk that reads as empty rather than half-written.
    if let Err(e) = writer.blank_headers() {
        return Err(FlashError::Failed(e));
    }
    let snap = |phase| Snapshot {
        counters: &counters,
        image_total: plan.image.virtual_size,
        source_total: plan.image.compressed_size,
        elapsed: started.elapsed(),
        phase,
    };
    let outcome =
        pump(plan, opts, &mut writer, &counters, cancel, &mut || tick(&snap(Phase::Write)));
    let fail = |writer: &mut Writer, e: FlashError| {
        if let Err(w) = writer.blank_headers() {
            crate::error!(
                "blanking the headers of {} after a failure: {w}",
                plan.target.resolved.display()
            );
        }
        e
    };
    let digest = match outcome {
        Ok(d) => d,
        Err(e) => return Err(fail(&mut writer, e)),
    };
    if let Some(want) = opts.sha256 {
        // A pinned digest with nothing computed must fail too, never pass by default.
        let got = digest
            .map(|d| crate::hex::encode(&d))
            .unwrap_or_else(|| "nothing (no digest computed)".into());
        if got != crate::hex::encode(&want) {
            let e = Error::msg(format!(
                "sha256 mismatch for {}: expected {}, got {got}; the image was not activated (first MiB left blank)",
                plan.source.display,
                crate::hex::encode(&want),
            ));
            return Err(fail(&mut writer, FlashError::Failed(e)));
        }
    }
    if let Err(e) = writer.write_head() {
        return Err(fail(&mut writer, FlashError::Failed(e)));
    }
    let image_bytes = counters.decoded.load(Ordering::Relaxed);
    if opts.verify {
        tick(&snap(Phase::Verify));
        maybe_pause_before_verify();
        match writer.verify(&counters, cancel) {
            Ok(None) => {}
            Ok(Some(off)) => {
                let e = Error::msg(format!(
                    "verifying {}: the data read back differs from what was written, first in the MiB at offset {off}",
                    plan.target.resolved.display()
                ));
                return Err(fail(&mut writer, FlashError::Failed(e)));
            }
            Err(_) if cancel.load(Ordering::Relaxed) => {
                return Err(fail(&mut writer, FlashError::Cancelled));
            }
            Err(e) => return Err(fail(&mut writer, FlashError::Failed(e))),
        }
    }
    writer.reread_partitions();
    tick(&snap(Phase::Done));
    Ok(Report {
        source_bytes: counters
            .read
            .load(Ordering::Relaxed)
            .max(plan.image.compressed_size.unwrap_or(0)),
        image_bytes,
        written_bytes: counters.written.load(Ordering::Relaxed),
        zeroed_bytes: counters.zeroed.load(Ordering::Relaxed),
        sha256: digest.map(|d| crate::hex::encode(&d)),
        verified: opts.verify,
        seconds: started.elapsed().as_secs_f64(),
        direct_io: writer.direct(),
        zero_mode: writer.zero_mode().as_str(),
    })
}

/// Test hook (cargo feature `test-hooks`, which no shipped build enables): with
/// BTY_TEST_VERIFY_PAUSE=DIR, create DIR/paused and wait (at most 30 s) for DIR/resume, so a
/// test can change the target behind bty's back before it verifies. Without the feature it does
/// nothing.
fn maybe_pause_before_verify() {
    #[cfg(feature = "test-hooks")]
    if let Some(dir) = std::env::var_os("BTY_TEST_VERIFY_PAUSE") {
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::write(dir.join("paused"), b"");
        for _ in 0..300 {
            if dir.join("resume").exists() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs the reader, decoder and writer threads to the end of the stream. Returns the source
/// digest when one was computed. The head is still held back when this returns.
fn pump(
    plan: &Plan,
    opts: &Options,
    writer: &mut Writer,
    counters: &Arc<Counters>,
    cancel: &'static AtomicBool,
    tick: &mut dyn FnMut(),
) -> std::result::Result<Option<[u8; 32]>, FlashError> {
    let what = plan.source.display.as_str();
    let fmt = plan.image.format;
    let stop = Stop::new(cancel);
    let failed = FlashError::Failed;
    let (block_tx, block_rx) = mpsc::sync_channel::<Block>(QUEUE);
    let (pool_tx, pool_rx) = mpsc::channel();
    let pool = Pool { back: pool_rx, allocated: AtomicUsize::new(0), max: QUEUE + 2, size: BLOCK };

    // Stream formats: the reader feeds the decoder. qcow2: the decoder reads by offset, and the
    // reader only hashes (when a digest is pinned). Stream decoders are built on the decoder
    // thread: some (gzip) read their header as they are made, which needs the reader running.
    // Three ways in. Stream formats: the reader thread feeds and hashes, the decoder decodes.
    // qcow2: the decoder reads by offset; the reader only hashes, when a digest is pinned.
    // A raw file: the decoder reads it directly (holes as zeros, unread) and hashes it itself
    // when a digest is pinned. Stream decoders are built on the decoder thread: some (gzip)
    // read their header as they are made, which needs the reader running.
    let sparse =
        if fmt == Format::Raw { plan.source.sparse_reader().map_err(failed)? } else { None };
    let (feed, input, hash_in_reader, hash_in_decoder) = if fmt == Format::Qcow2 {
        let r = qcow2::Qcow2Reader::open(plan.source.random_access().map_err(failed)?)
            .with_context(|| format!("opening {what} as qcow2"))
            .map_err(failed)?;
        (None, DecoderInput::Ready(Box::new(r)), opts.sha256.is_some(), false)
    } else if let Some(r) = sparse {
        (None, DecoderInput::Ready(r), false, opts.sha256.is_some())
    } else {
        let ((tx, rx), (back_tx, back_rx)) = stream::chunk_channels();
        let input = stream::ChannelReader::new(rx, back_tx, stop.clone());
        (Some((tx, back_rx)), DecoderInput::Stream(Box::new(input)), true, false)
    };
    // The reader is not scoped: it may be stuck in a read of a stalled pipe or network source,
    // and a cancel must not wait for it. It owns what it uses and is left behind in that case.
    let reader = if hash_in_reader {
        let source_reader = plan.source.reader().map_err(failed)?;
        let (what, counters, stop) = (what.to_string(), Arc::clone(counters), stop.clone());
        let spawned = thread::Builder::new().name("read".into()).spawn(move || {
            stop.guard(stream::read_source(source_reader, &what, feed, &counters, &stop))
        });
        Some(spawned.context("starting the reader thread").map_err(failed)?)
    } else {
        None
    };
    let counters: &Counters = counters;
    let stop = &stop;
    thread::scope(|s| {
        let decoder = thread::Builder::new().name("decode".into()).spawn_scoped(s, move || {
            stop.guard((|| {
                let decoder = match input {
                    DecoderInput::Ready(d) => d,
                    DecoderInput::Stream(raw) => format::stream_decoder(fmt, raw)
                        .with_context(|| format!("decoding {what} as {fmt}"))?,
                };
                stream::decode(decoder, what, block_tx, &pool, counters, stop, hash_in_decoder)
            })())
        });
        let writer_thread = thread::Builder::new()
            .name("write".into())
            .spawn_scoped(s, || stop.guard(write_all(writer, block_rx, pool_tx, counters, stop)));
        let (decoder, writer_thread) = match (decoder, writer_thread) {
            (Ok(d), Ok(w)) => (d, w),
            (d, w) => {
                // A thread could not start (out of resources). Those that did stop on abort.
                stop.abort();
                let e = [d.err(), w.err()].into_iter().flatten().next();
                return Err(FlashError::Failed(Error::msg(format!(
                    "starting the flash threads: {}",
                    e.map(|e| e.to_string()).unwrap_or_default()
                ))));
            }
        };
        while !(writer_thread.is_finished()
            && decoder.is_finished()
            && (stop.is_set() || reader.as_ref().is_none_or(|r| r.is_finished())))
        {
            tick();
            thread::sleep(Duration::from_millis(100));
        }
        if stop.cancelled() {
            return Err(FlashError::Cancelled);
        }
        let panicked = || Error::msg("a flash thread panicked");
        let w = writer_thread.join().unwrap_or_else(|_| Err(panicked()));
        let d = decoder.join().unwrap_or_else(|_| Err(panicked()));
        // A reader still stuck in a read is left behind (detached); the others report the cause.
        let r = match reader {
            Some(r) if r.is_finished() => Some(r.join().unwrap_or_else(|_| Err(panicked()))),
            Some(_) => Some(Ok(Stage::PeerGone)),
            None => None,
        };
        // The writer's failure (ENOSPC, EIO, target too small) is what stopped the others; a
        // reader failure (I/O) looks like a truncated stream to the decoder; so that order.
        let w = w.map_err(failed)?;
        let r = r.transpose().map_err(failed)?;
        let d = d.map_err(failed)?;
        let digest = match r {
            Some(Stage::Done(digest)) => Some(digest),
            Some(Stage::PeerGone) => return Err(failed(Error::msg("the decoder stopped early"))),
            None => None,
        };
        match (d, w) {
            (Stage::Done((decoded, own)), Stage::Done(written)) if decoded == written => {
                Ok(digest.or(own))
            }
            (Stage::Done((decoded, _)), Stage::Done(written)) => {
                Err(failed(Error::msg(format!("decoded {decoded} bytes but wrote {written}"))))
            }
            _ => Err(failed(Error::msg("the flash stopped early"))),
        }
    })
}

/// What the decoder thread starts from.
enum DecoderInput {
    /// A decoder built already (qcow2 reads by offset).
    Ready(Box<dyn std::io::Read + Send>),
    /// Compressed bytes from the reader thread, to be wrapped in the format's decoder.
    Stream(Box<dyn std::io::Read + Send>),
}

/// The writer thread: drains the channel into the target and finishes the body.
fn write_all(
    writer: &mut Writer,
    rx: mpsc::Receiver<Block>,
    pool: mpsc::Sender<crate::sys::AlignedBuf>,
    counters: &Counters,
    stop: &Stop,
) -> Result<Stage<u64>> {
    loop {
        if stop.is_set() {
            return Ok(Stage::PeerGone);
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(block) => {
                writer.push(&block.buf[..block.len], counters)?;
                let _ = pool.send(block.buf);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(Stage::Done(writer.finish_body()?))
}

/// Parses a 64-hex-digit sha256 (case-insensitive, an optional "sha256:" prefix).
pub fn parse_sha256(s: &str) -> Result<[u8; 32]> {
    let t = s.trim();
    let t = t.strip_prefix("sha256:").unwrap_or(t);
    crate::hex::decode(t)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .with_context(|| format!("invalid sha256 {s:?}: expected 64 hex digits"))
}
