//! The reading and decoding stages: a reader thread that hashes source bytes as they pass, a
//! channel-backed `Read` for the decoder, and the decoder loop that fills aligned buffers.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};

use sha2::{Digest, Sha256};

use crate::error::{Context, Result};
use crate::flash::Counters;
use crate::image::format;
use crate::sys::AlignedBuf;

/// Source bytes per read; small enough that the decoder starts early, large enough for few calls.
pub const CHUNK: usize = 256 << 10;
/// Source chunks in flight between reader and decoder.
pub const CHUNK_QUEUE: usize = 4;

/// Why the stages should stop early: a signal (the process-wide cancel flag), or a failure in
/// another stage (this flash's abort flag), so that no stage waits on one that has given up.
#[derive(Clone)]
pub struct Stop {
    cancel: &'static AtomicBool,
    abort: Arc<AtomicBool>,
}

impl Stop {
    pub fn new(cancel: &'static AtomicBool) -> Stop {
        Stop { cancel, abort: Arc::new(AtomicBool::new(false)) }
    }
    /// Whether any stage should stop now.
    pub fn is_set(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.abort.load(Ordering::Relaxed)
    }
    /// Whether the user cancelled (SIGINT/SIGTERM).
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
    /// Tells the other stages that this one failed.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
    }
    /// Runs a stage and raises the abort flag if it fails.
    pub fn guard<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.abort();
        }
        r
    }
}

/// The reader's side of the chunk channels: chunks out to the decoder, spent chunks back.
pub type Feed = (SyncSender<Vec<u8>>, Receiver<Vec<u8>>);

/// Outcome of a stage that may stop because the next stage hung up (it failed or was cancelled);
/// the orchestrator then reports the other stage's error, which is the real cause.
pub enum Stage<T> {
    Done(T),
    PeerGone,
}

/// Reads the whole source, hashing it, and feeds it to the decoder when `tx` is given.
pub fn read_source(
    mut input: Box<dyn Read + Send>,
    what: &str,
    tx: Option<Feed>,
    counters: &Counters,
    stop: &Stop,
) -> Result<Stage<[u8; 32]>> {
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    let mut spare = vec![0u8; CHUNK];
    loop {
        if stop.is_set() {
            return Ok(Stage::PeerGone);
        }
        let mut buf = match &tx {
            Some((_, back)) => back.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]),
            None => std::mem::take(&mut spare),
        };
        buf.resize(CHUNK, 0);
        let n = crate::io::read_full(input.as_mut(), &mut buf)
            .with_context(|| format!("reading {what} at offset {offset}"))?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        hasher.update(&buf);
        offset += n as u64;
        counters.read.fetch_add(n as u64, Ordering::Relaxed);
        match &tx {
            Some((tx, _)) => {
                if tx.send(buf).is_err() {
                    return Ok(Stage::PeerGone);
                }
            }
            None => spare = buf,
        }
    }
    Ok(Stage::Done(hasher.finalize().into()))
}

/// A `Read` over chunks arriving on a channel; returns used chunks for reuse. A closed channel
/// reads as end of file: whether that was a real end is decided by the reader's own result.
/// It gives up on cancel even while the reader is stuck in a read (a stalled pipe or network).
pub struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    back: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    stop: Stop,
}

impl ChannelReader {
    pub fn new(rx: Receiver<Vec<u8>>, back: SyncSender<Vec<u8>>, stop: Stop) -> ChannelReader {
        ChannelReader { rx, back, cur: Vec::new(), pos: 0, stop }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            let next = match self.rx.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(next) => next,
                // Not ErrorKind::Interrupted: readers retry those.
                Err(RecvTimeoutError::Timeout) if self.stop.is_set() => {
                    return Err(io::Error::other("stopped"));
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ok(0),
            };
            let used = std::mem::replace(&mut self.cur, next);
            let _ = self.back.try_send(used);
            self.pos = 0;
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A filled buffer on its way to the writer.
pub struct Block {
    pub buf: AlignedBuf,
    pub len: usize,
}

/// Aligned buffers recycled between decoder and writer, so memory stays flat.
pub struct Pool {
    pub back: Receiver<AlignedBuf>,
    pub allocated: AtomicUsize,
    pub max: usize,
    pub size: usize,
}

impl Pool {
    fn get(&self) -> Option<AlignedBuf> {
        if let Ok(b) = self.back.try_recv() {
            return Some(b);
        }
        if self.allocated.load(Ordering::Relaxed) < self.max {
            self.allocated.fetch_add(1, Ordering::Relaxed);
            return Some(AlignedBuf::new(self.size));
        }
        self.back.recv().ok()
    }
}

/// Decodes the image into aligned buffers and sends them to the writer. Refuses a stream that
/// turns out to be a tar archive before its first block leaves. With `hash` (a raw source read
/// here directly, whose bytes are the image's), returns the sha256 of what it produced.
pub fn decode(
    mut decoder: Box<dyn Read + Send>,
    what: &str,
    tx: SyncSender<Block>,
    pool: &Pool,
    counters: &Counters,
    stop: &Stop,
    hash: bool,
) -> Result<Stage<(u64, Option<[u8; 32]>)>> {
    let mut total = 0u64;
    let mut hasher = hash.then(Sha256::new);
    loop {
        if stop.is_set() {
            return Ok(Stage::PeerGone);
        }
        let Some(mut buf) = pool.get() else { return Ok(Stage::PeerGone) };
        let n = match crate::io::read_full(decoder.as_mut(), &mut buf) {
            Ok(n) => n,
            // Stopped by another stage while waiting for input: that stage reports why.
            Err(_) if stop.is_set() => return Ok(Stage::PeerGone),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("decoding {what} near image offset {total}"));
            }
        };
        if total == 0 && format::is_tar(&buf[..n]) {
            crate::bail!(
                "{what} decodes to a tar archive, not a disk image: extract the image first"
            );
        }
        if n == 0 {
            break;
        }
        total += n as u64;
        counters.decoded.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
            counters.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        let last = n < buf.len();
        if tx.send(Block { buf, len: n }).is_err() {
            return Ok(Stage::PeerGone);
        }
        if last {
            break;
        }
    }
    Ok(Stage::Done((total, hasher.map(|h| h.finalize().into()))))
}

/// The two chunk channels: reader -> decoder, and spent chunks back to the reader.
pub fn chunk_channels() -> (Feed, Feed) {
    (std::sync::mpsc::sync_channel(CHUNK_QUEUE), std::sync::mpsc::sync_channel(CHUNK_QUEUE + 2))
}
