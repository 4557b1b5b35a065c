//! bzip2 decoded on every core, block by block, as lbzip2 does.
//!
//! A bzip2 stream is a header (`BZh1`..`BZh9`) and a sequence of independently decodable blocks,
//! each starting with a 48-bit magic, closed by a 48-bit end-of-stream magic and the stream CRC.
//! Blocks are not byte-aligned and have no length field, so a reader thread scans the bits for
//! the magics and cuts the stream into pieces there. Each piece is decoded by a worker with
//! bty's own block decoder ([`super::bzip2_block`]), straight from its bits, which checks the
//! block CRC; a block in bzip2 0.9.0's randomised mode is re-packed into a standalone one-block
//! stream for libbz2 instead. The magic
//! can also occur by chance inside compressed data: such a piece fails to decode (its block is
//! cut short, or starts in the middle of one), and the reader of the output joins it with the
//! next piece and tries again. Output leaves strictly in order; a bounded number of pieces is
//! in flight, so memory does not grow with the file.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use super::bzip2_block::{self, Block, BlockError, CHUNK, Scratch};
use crate::error::{Context, Result};

const BLOCK_MAGIC: u64 = 0x3141_5926_5359;
pub(super) const EOS_MAGIC: u64 = 0x1772_4538_5090;
const MASK48: u64 = (1 << 48) - 1;

/// Workers never exceed this: beyond it the single reader thread and the in-order output become
/// the limit, and each worker adds to the memory in flight.
const MAX_WORKERS: usize = 8;
/// Memory one block in flight can take at worst: a level-9 block of zeros decodes to 46 MiB
/// (bzip2's first run-length stage stores 259 bytes in 5), plus its compressed bits (at most
/// 2.3 MiB) and the decoding worker's tables (6.3 MiB, or libbz2's 3.6 MiB and a re-packed copy
/// of the bits for a randomised block).
const BLOCK_WORST_MEMORY: u64 = 64 << 20;
/// Joins tried after a piece fails before the piece counts as corrupt. Chance magics are rare
/// (one in 2^47 bit positions), so more than one in a block means the data is damaged.
const MAX_JOINS: usize = 16;
/// How much the reader thread asks its input for at a time.
const READ_SIZE: usize = 256 << 10;

/// The workers for this machine: one per core, fewer when the memory available cannot hold the
/// blocks they keep in flight (see [`in_flight`]) twice over, and 0 or 1 meaning "decode on one
/// thread". With 2 workers that is 768 MiB available, and 256 MiB more per further worker.
pub fn workers() -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let available = crate::sys::available_memory().unwrap_or(0);
    let mut n = cores.min(MAX_WORKERS);
    while n >= 2 && 2 * in_flight(n) as u64 * BLOCK_WORST_MEMORY > available {
        n -= 1;
    }
    n
}

/// Blocks that can be in memory at once with `workers` workers: the queue between the reader
/// thread and the output (two per worker keep every core busy while the output drains one), the
/// piece the reader is about to queue and the block being read out.
fn in_flight(workers: usize) -> usize {
    2 * workers + 2
}

/// A decoder for the concatenated bzip2 streams of `input`: block-parallel with [`workers`]
/// threads when there are two or more, else libbz2's own decoder on the calling thread. That
/// fallback stays libbz2 because it streams in a few MiB, where the block-parallel decoder keeps
/// whole blocks in flight: it serves the machines without the memory for those, or one core.
pub fn decoder<R: io::BufRead + Send + 'static>(input: R) -> Result<Box<dyn Read + Send>> {
    let n = workers();
    if n < 2 {
        return Ok(Box::new(bzip2::bufread::MultiBzDecoder::new(input)));
    }
    Ok(Box::new(ParallelBzDecoder::new(input, n).context("starting the bzip2 decoder threads")?))
}

/// The largest piece a block at `level` can compress to, in bits: at most 20 bits for each of
/// the level × 100k symbols, plus tables and selectors (under 64 KiB).
fn max_piece_bits(level: u8) -> u64 {
    (u64::from(level) * 250_000 + 65_536) * 8
}

/// Which two consecutive bytes can be the second and third byte of a magic at any of the eight
/// bit offsets: a byte pair looked up in this table rules out almost every position at once.
static MAGIC_PAIRS: [bool; 65536] = magic_pairs();

const fn magic_pairs() -> [bool; 65536] {
    let mut table = [false; 65536];
    let magics = [BLOCK_MAGIC, EOS_MAGIC];
    let mut m = 0;
    while m < magics.len() {
        let mut shift = 0;
        while shift < 8 {
            let window = magics[m] << (16 - shift);
            table[((window >> 40) & 0xffff) as usize] = true;
            shift += 1;
        }
        m += 1;
    }
    table
}

/// The 64 bits from `buf[i]` on, zeros past the end.
fn window(buf: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    let end = (i + 8).min(buf.len());
    w[..end - i].copy_from_slice(&buf[i..end]);
    u64::from_be_bytes(w)
}

/// The first block or end-of-stream magic at bit `from` or later whose 48 bits lie in `buf`
/// (bits counted from the top bit of `buf[0]`): its bit position and which magic it is.
pub(super) fn find_magic(buf: &[u8], from: u64) -> Option<(u64, u64)> {
    let total = buf.len() as u64 * 8;
    if total < from + 48 {
        return None;
    }
    // A magic starting in byte i ends within byte i + 6, and covers bytes i + 1 and i + 2.
    let last = buf.len() - 6;
    for i in (from / 8) as usize..=last {
        if !MAGIC_PAIRS[(usize::from(buf[i + 1]) << 8) | usize::from(buf[i + 2])] {
            continue;
        }
        let w = window(buf, i);
        for shift in 0..8u64 {
            let p = i as u64 * 8 + shift;
            if p < from || p + 48 > total {
                continue;
            }
            let v = (w >> (16 - shift)) & MASK48;
            if v == BLOCK_MAGIC || v == EOS_MAGIC {
                return Some((p, v));
            }
        }
    }
    None
}

/// `n` (≤ 57) bits of `buf` from bit `at`, as the low bits of the result.
fn bits_at(buf: &[u8], at: u64, n: u32) -> u64 {
    let mut v = 0;
    for k in at..at + u64::from(n) {
        let byte = buf.get((k / 8) as usize).copied().unwrap_or(0);
        v = (v << 1) | u64::from(byte >> (7 - k % 8) & 1);
    }
    v
}

/// A run of bits of the compressed file between two magics (a block, if the first magic is a
/// true one and the second too).
struct Piece {
    /// The bytes holding the bits; the first is bit `skip` (from the top) of `bytes[0]`.
    bytes: Vec<u8>,
    skip: u8,
    bits: u64,
    /// Where the piece starts in the file, in bits from its first byte.
    offset: u64,
    /// The level of the stream it belongs to (its blocks hold at most level × 100k bytes).
    level: u8,
}

impl Piece {
    /// The piece followed by `next`, which starts where this one ends.
    fn join(mut self, next: Piece) -> Piece {
        // The byte where one ends and the next starts is in both, unless that is a byte boundary.
        let end = u64::from(self.skip) + self.bits;
        self.bytes.truncate((end / 8) as usize);
        self.bytes.extend_from_slice(&next.bytes);
        self.bits += next.bits;
        self
    }

    /// The block CRC stored after the block magic.
    fn block_crc(&self) -> u32 {
        bits_at(&self.bytes, u64::from(self.skip) + 48, 32) as u32
    }

    /// A one-block bzip2 stream of the piece: header, the piece's bits, the end-of-stream magic
    /// and the stream CRC, which for one block is that block's CRC.
    fn stream(&self) -> Vec<u8> {
        let mut out = Bits { out: Vec::with_capacity((self.bits / 8) as usize + 16), acc: 0, n: 0 };
        out.out.extend_from_slice(&[b'B', b'Z', b'h', b'0' + self.level]);
        let full = (self.bits / 8) as usize;
        let s = u32::from(self.skip);
        if s == 0 {
            out.out.extend_from_slice(&self.bytes[..full]);
        } else {
            // Bytes holds at least full + 1 bytes when the piece starts mid-byte.
            let shifted = self.bytes.windows(2).take(full).map(|w| w[0] << s | w[1] >> (8 - s));
            out.out.extend(shifted);
        }
        let rest = (self.bits % 8) as u32;
        out.push(bits_at(&self.bytes, u64::from(s) + full as u64 * 8, rest), rest);
        out.push(EOS_MAGIC >> 24, 24);
        out.push(EOS_MAGIC & 0xff_ffff, 24);
        out.push(u64::from(self.block_crc()), 32);
        out.finish()
    }
}

/// A bit writer for the tail of a re-packed stream.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    /// Appends the low `n` (≤ 32) bits of `v`.
    fn push(&mut self, v: u64, n: u32) {
        self.acc = (self.acc << n) | (v & ((1u64 << n) - 1));
        self.n += n;
        while self.n >= 8 {
            self.n -= 8;
            self.out.push((self.acc >> self.n) as u8);
        }
        self.acc &= (1u64 << self.n) - 1;
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push((self.acc << (8 - self.n)) as u8);
        }
        self.out
    }
}

/// Decodes a piece as one block, checking the block CRC; the piece must be exactly one block (a
/// piece holding more, or less, fails). A block in the randomised mode goes to libbz2.
fn decode(piece: &Piece, scratch: &mut Scratch) -> std::result::Result<Block, String> {
    if piece.bits < 80 {
        return Err("shorter than a block header".into());
    }
    match bzip2_block::decode(&piece.bytes, piece.skip, piece.bits, piece.level, scratch) {
        Err(BlockError::Randomised) => decode_libbz2(piece)
            .map_err(|e| format!("in bzip2 0.9.0's randomised mode, decoded by libbz2: {e}")),
        other => other.map_err(|e| e.to_string()),
    }
}

/// Decodes a piece as one block with libbz2, which checks the block CRC.
fn decode_libbz2(piece: &Piece) -> std::result::Result<Block, String> {
    let stream = piece.stream();
    let mut input = &stream[..];
    let mut d = bzip2::Decompress::new(false);
    let mut chunks = Vec::new();
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        let (before_in, before_out) = (d.total_in(), d.total_out());
        let status = d.decompress_vec(input, &mut chunk).map_err(|e| e.to_string())?;
        let used = (d.total_in() - before_in) as usize;
        input = &input[used..];
        match status {
            bzip2::Status::StreamEnd if input.is_empty() => {
                if !chunk.is_empty() {
                    chunks.push(chunk);
                }
                return Ok(Block { chunks, crc: piece.block_crc() });
            }
            bzip2::Status::StreamEnd => return Err("the block ends before the piece does".into()),
            bzip2::Status::Ok => {}
            other => return Err(format!("libbz2 returned {other:?}")),
        }
        if chunk.len() == chunk.capacity() {
            chunks.push(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
        } else if used == 0 && d.total_out() == before_out {
            return Err("the block data ends early".into());
        }
    }
}

/// What a worker sends back: the piece (a failed one may be joined with the next) and the block.
struct Outcome {
    piece: Piece,
    result: std::result::Result<Block, String>,
}

struct Job {
    piece: Piece,
    reply: SyncSender<Outcome>,
}

/// The reader thread's items, in file order.
enum Ticket {
    Block(Receiver<Outcome>),
    /// The end of a stream, with the stream CRC stored there and the magic's bit offset.
    End {
        crc: u32,
        offset: u64,
    },
    /// The input ended cleanly after a stream.
    Finished,
    Failed(String),
}

/// Why the reader thread stopped early.
enum Stop {
    /// The output side was dropped: nobody wants the rest.
    Gone,
    Failed(String),
}

/// The reader thread: cuts the input into pieces at the magics and queues them.
struct Splitter<R> {
    input: R,
    /// The unconsumed input; `buf[0]` is byte `base` of the file.
    buf: Vec<u8>,
    base: u64,
    eof: bool,
    jobs: Sender<Job>,
    tickets: SyncSender<Ticket>,
}

impl<R: Read> Splitter<R> {
    fn more(&mut self) -> std::result::Result<(), Stop> {
        let len = self.buf.len();
        self.buf.resize(len + READ_SIZE, 0);
        loop {
            match self.input.read(&mut self.buf[len..]) {
                Ok(n) => {
                    self.buf.truncate(len + n);
                    self.eof = n == 0;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(Stop::Failed(format!("reading the bzip2 input: {e}")));
                }
            }
        }
    }

    /// Reads until `buf` holds `n` bytes or the input ends.
    fn fill(&mut self, n: usize) -> std::result::Result<(), Stop> {
        while self.buf.len() < n && !self.eof {
            self.more()?;
        }
        Ok(())
    }

    fn send(&self, ticket: Ticket) -> std::result::Result<(), Stop> {
        self.tickets.send(ticket).map_err(|_| Stop::Gone)
    }

    /// Queues bits `start..end` (file offsets) as a piece, and drops the input before `end`.
    fn emit(&mut self, start: u64, end: u64, level: u8) -> std::result::Result<(), Stop> {
        let (s, e) = (start - self.base * 8, end - self.base * 8);
        let bytes = self.buf[(s / 8) as usize..e.div_ceil(8) as usize].to_vec();
        let piece = Piece { bytes, skip: (s % 8) as u8, bits: e - s, offset: start, level };
        let (reply, outcome) = mpsc::sync_channel(1);
        self.jobs.send(Job { piece, reply }).map_err(|_| Stop::Gone)?;
        self.send(Ticket::Block(outcome))?;
        self.consume((e / 8) as usize);
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.base += n as u64;
    }

    /// The next magic at file bit `from` or later, reading more input as needed; None when the
    /// input ends first. Fails when none turns up within a block's size of `start`, the start
    /// of the current piece, which bounds the buffer.
    fn next_magic(
        &mut self,
        mut from: u64,
        start: u64,
        level: u8,
    ) -> std::result::Result<Option<(u64, u64)>, Stop> {
        loop {
            let origin = self.base * 8;
            if let Some((p, magic)) = find_magic(&self.buf, from - origin) {
                return Ok(Some((origin + p, magic)));
            }
            if self.eof {
                return Ok(None);
            }
            // Every position whose 48 bits were all in the buffer has been looked at.
            let end = origin + self.buf.len() as u64 * 8;
            from = from.max(end.saturating_sub(47));
            if end > start + max_piece_bits(level) {
                return Err(Stop::Failed(format!(
                    "no bzip2 block boundary within {} bytes after bit offset {start}: the file is corrupt",
                    max_piece_bits(level) / 8
                )));
            }
            self.more()?;
        }
    }

    /// Whether an end-of-stream magic at file bit `p` is real: its CRC is followed, at the next
    /// byte boundary and after zero padding, by the end of the input or another stream's header.
    /// Returns the stored stream CRC and the file byte where the next stream starts.
    fn stream_end(&mut self, p: u64) -> std::result::Result<Option<(u32, u64)>, Stop> {
        let local = p - self.base * 8;
        let next = (local + 80).div_ceil(8) as usize;
        self.fill(next + 4)?;
        if self.buf.len() < next {
            return Ok(None);
        }
        let pad = (next as u64 * 8 - (local + 80)) as u32;
        if bits_at(&self.buf, local + 80, pad) != 0 {
            return Ok(None);
        }
        let follows = &self.buf[next..];
        let header = follows.len() >= 4
            && follows.starts_with(b"BZh")
            && (b'1'..=b'9').contains(&follows[3]);
        if !(header || follows.is_empty() && self.eof) {
            return Ok(None);
        }
        Ok(Some((bits_at(&self.buf, local + 48, 32) as u32, self.base + next as u64)))
    }

    fn run(&mut self) -> std::result::Result<(), Stop> {
        let mut streams = 0u64;
        loop {
            // A stream header, at a byte boundary: buf[0] is its first byte.
            self.fill(10)?;
            if self.buf.is_empty() && self.eof && streams > 0 {
                return Ok(());
            }
            let level = match self.buf[..] {
                [b'B', b'Z', b'h', l @ b'1'..=b'9', ..] => l - b'0',
                _ => {
                    return Err(Stop::Failed(format!(
                        "byte {}: not a bzip2 stream (no BZh1..BZh9 header)",
                        self.base
                    )));
                }
            };
            streams += 1;
            let first = bits_at(&self.buf, 32, 48);
            if self.buf.len() < 10 || (first != BLOCK_MAGIC && first != EOS_MAGIC) {
                return Err(Stop::Failed(format!(
                    "the bzip2 stream at byte {} has no block or end-of-stream marker after its header",
                    self.base
                )));
            }
            let mut start = self.base * 8 + 32;
            let mut from = start;
            loop {
                let Some((p, magic)) = self.next_magic(from, start, level)? else {
                    return Err(Stop::Failed(format!(
                        "the bzip2 input ends at byte {} inside the block at bit offset {start}, \
                         before its stream's end-of-stream marker: the file is truncated",
                        self.base + self.buf.len() as u64
                    )));
                };
                from = p + 1;
                if p == start {
                    if magic == BLOCK_MAGIC {
                        continue;
                    }
                } else if magic == BLOCK_MAGIC {
                    self.emit(start, p, level)?;
                    start = p;
                    continue;
                }
                let Some((crc, next)) = self.stream_end(p)? else {
                    continue;
                };
                if p > start {
                    self.emit(start, p, level)?;
                }
                self.send(Ticket::End { crc, offset: p })?;
                self.consume((next - self.base) as usize);
                break;
            }
        }
    }
}

/// The decoder: the output side, reading the decoded blocks in file order from the workers.
pub struct ParallelBzDecoder {
    tickets: Receiver<Ticket>,
    /// A ticket taken while looking for a piece to join, to be handled next.
    ahead: Option<Ticket>,
    out: VecDeque<Vec<u8>>,
    /// Bytes of `out[0]` already read.
    pos: usize,
    /// The CRC of the current stream's blocks so far.
    stream_crc: u32,
    /// Blocks decoded so far, to name a failing one.
    blocks: u64,
    done: bool,
    failed: Option<String>,
    /// Tables for decoding joined pieces (on this thread; empty until a piece fails).
    scratch: Scratch,
}

impl ParallelBzDecoder {
    /// Starts the reader thread and `workers` decoding threads on `input`.
    pub fn new<R: Read + Send + 'static>(
        input: R,
        workers: usize,
    ) -> io::Result<ParallelBzDecoder> {
        let (tickets_tx, tickets) = mpsc::sync_channel(2 * workers);
        let (jobs, jobs_rx) = mpsc::channel::<Job>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        for i in 0..workers.max(1) {
            let jobs_rx = Arc::clone(&jobs_rx);
            std::thread::Builder::new().name(format!("bzip2-{i}")).spawn(move || work(&jobs_rx))?;
        }
        let mut splitter =
            Splitter { input, buf: Vec::new(), base: 0, eof: false, jobs, tickets: tickets_tx };
        std::thread::Builder::new().name("bzip2-split".into()).spawn(move || {
            let last = match splitter.run() {
                Ok(()) => Ticket::Finished,
                Err(Stop::Failed(msg)) => Ticket::Failed(msg),
                Err(Stop::Gone) => return,
            };
            let _ = splitter.tickets.send(last);
        })?;
        Ok(Self::from_tickets(tickets))
    }

    fn from_tickets(tickets: Receiver<Ticket>) -> ParallelBzDecoder {
        ParallelBzDecoder {
            tickets,
            ahead: None,
            out: VecDeque::new(),
            pos: 0,
            stream_crc: 0,
            blocks: 0,
            done: false,
            failed: None,
            scratch: Scratch::default(),
        }
    }

    fn take(&mut self) -> std::result::Result<Ticket, String> {
        match self.ahead.take() {
            Some(t) => Ok(t),
            None => self.tickets.recv().map_err(|_| "the bzip2 reader thread stopped".to_string()),
        }
    }

    /// Handles the next ticket: a block's output joins `out`.
    fn step(&mut self) -> std::result::Result<(), String> {
        match self.take()? {
            Ticket::Block(outcome) => {
                let o =
                    outcome.recv().map_err(|_| "a bzip2 decoding thread stopped".to_string())?;
                let block = match o.result {
                    Ok(block) => block,
                    Err(e) => self.rejoin(o.piece, e)?,
                };
                self.blocks += 1;
                self.stream_crc = self.stream_crc.rotate_left(1) ^ block.crc;
                self.out.extend(block.chunks);
            }
            Ticket::End { crc, offset } => {
                if crc != self.stream_crc {
                    return Err(format!(
                        "the bzip2 stream ending at bit offset {offset} stores CRC {crc:08x} but its \
                         blocks combine to {:08x}: the file is corrupt",
                        self.stream_crc
                    ));
                }
                self.stream_crc = 0;
            }
            Ticket::Finished => self.done = true,
            Ticket::Failed(msg) => return Err(msg),
        }
        Ok(())
    }

    /// A piece that failed to decode is a block cut short at a chance magic, or a damaged one:
    /// joined with the pieces after it until the result decodes, within a block's size.
    fn rejoin(&mut self, mut piece: Piece, first: String) -> std::result::Result<Block, String> {
        let failure = format!(
            "decoding bzip2 block {} at bit offset {}: {first}",
            self.blocks + 1,
            piece.offset
        );
        for _ in 0..MAX_JOINS {
            match self.take()? {
                Ticket::Block(outcome) => {
                    let o = outcome
                        .recv()
                        .map_err(|_| "a bzip2 decoding thread stopped".to_string())?;
                    piece = piece.join(o.piece);
                    if piece.bits > max_piece_bits(piece.level) {
                        break;
                    }
                    if let Ok(block) = decode(&piece, &mut self.scratch) {
                        return Ok(block);
                    }
                }
                // The reader's reason (a truncated file) says more than the decoder's.
                Ticket::Failed(msg) => return Err(msg),
                other => {
                    self.ahead = Some(other);
                    break;
                }
            }
        }
        Err(failure)
    }
}

impl Read for ParallelBzDecoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(front) = self.out.front() {
                if self.pos < front.len() {
                    let n = buf.len().min(front.len() - self.pos);
                    buf[..n].copy_from_slice(&front[self.pos..self.pos + n]);
                    self.pos += n;
                    return Ok(n);
                }
                self.out.pop_front();
                self.pos = 0;
                continue;
            }
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            if let Some(msg) = &self.failed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, msg.clone()));
            }
            if let Err(msg) = self.step() {
                self.failed = Some(msg);
            }
        }
    }
}

/// A decoding thread: takes pieces in file order and sends each one's block back.
fn work(jobs: &Mutex<Receiver<Job>>) {
    let mut scratch = Scratch::default();
    loop {
        let job = {
            let Ok(jobs) = jobs.lock() else { return };
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let result = decode(&job.piece, &mut scratch);
        // The output side may have gone (an error, or a flash cancelled): nothing to do then.
        let _ = job.reply.send(Outcome { piece: job.piece, result });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::Rng;
    use std::io::Write;
    use std::process::{Command, Stdio};

    const MIB: usize = 1 << 20;

    fn random(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.next() as u8).collect()
    }

    /// Disk-image-like data: runs of zeros, repeated text and random stretches.
    fn compressible(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let n = 1 + rng.below(64 << 10);
            match rng.below(3) {
                0 => out.resize(out.len() + n, 0),
                1 => out.extend(b"bty writes disk images. ".iter().cycle().take(n)),
                _ => out.extend((0..n).map(|_| rng.next() as u8 & 0x1f)),
            }
        }
        out.truncate(len);
        out
    }

    fn bzip2_crate(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Runs a compressor from the Debian packages of `make deps` on `data`.
    fn tool(cmd: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
        let mut child = Command::new(cmd)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {cmd} (install it: make deps): {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(out.status.success(), "{cmd} {args:?} failed");
        out.stdout
    }

    fn par(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ParallelBzDecoder::new(io::Cursor::new(data.to_vec()), 2)?.read_to_end(&mut out)?;
        Ok(out)
    }

    fn check(what: &str, plain: &[u8], packed: &[u8]) {
        match par(packed) {
            Ok(out) => assert!(
                out == plain,
                "{what}: {} bytes decoded, {} expected",
                out.len(),
                plain.len()
            ),
            Err(e) => panic!("{what}: {e}"),
        }
    }

    #[test]
    fn magics_are_found_at_every_bit_offset() {
        let noise = random(1, 64);
        for magic in [BLOCK_MAGIC, EOS_MAGIC] {
            for at in 0..200u64 {
                let mut buf = vec![0u8; 40];
                buf[..].copy_from_slice(&noise[..40]);
                for k in 0..48 {
                    let (byte, bit) = ((at + k) / 8, 7 - (at + k) % 8);
                    let v = (magic >> (47 - k)) & 1;
                    if let Some(b) = buf.get_mut(byte as usize) {
                        *b = *b & !(1 << bit) | (v as u8) << bit;
                    }
                }
                let found = find_magic(&buf, at);
                if at + 48 <= 320 {
                    assert_eq!(found, Some((at, magic)), "magic {magic:x} at bit {at}");
                } else {
                    assert!(
                        found.is_none_or(|(p, _)| p + 48 <= 320),
                        "a magic past the end at {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn levels_1_and_9_random_and_compressible_round_trip() {
        for level in [1, 9] {
            for (kind, data) in
                [("random", random(2, 3 * MIB)), ("compressible", compressible(3, 3 * MIB))]
            {
                check(&format!("level {level} {kind}"), &data, &bzip2_crate(&data, level));
            }
        }
    }

    #[test]
    fn files_of_bzip2_lbzip2_and_pbzip2_decode() {
        let data = compressible(4, 4 * MIB);
        check("bzip2 -9", &data, &tool("bzip2", &["-9", "-c"], &data));
        check("bzip2 -1", &data, &tool("bzip2", &["-1", "-c"], &data));
        check("lbzip2 -9", &data, &tool("lbzip2", &["-9", "-n", "2", "-c"], &data));
        check("lbzip2 -1", &data, &tool("lbzip2", &["-1", "-n", "2", "-c"], &data));
        // pbzip2 writes one stream per 100k block: a file of some forty streams.
        let multi = tool("pbzip2", &["-1", "-b1", "-p2", "-c"], &data);
        assert!(multi.windows(4).filter(|w| w == b"BZh1").count() > 10, "pbzip2 wrote one stream");
        check("pbzip2 -b1", &data, &multi);
        let random = random(5, 2 * MIB);
        check("lbzip2 random", &random, &tool("lbzip2", &["-n", "2", "-c"], &random));
    }

    #[test]
    fn concatenated_and_empty_streams_decode() {
        let empty = bzip2_crate(b"", 9);
        assert_eq!(par(&empty).unwrap(), b"");
        let (a, b) = (compressible(6, MIB), random(7, 300_000));
        let mut file = bzip2_crate(&a, 1);
        file.extend(&empty);
        file.extend(bzip2_crate(&b, 9));
        file.extend(&empty);
        check("concatenated", &[a, b].concat(), &file);
    }

    /// The pieces and stream ends the reader thread makes of `data`, in order.
    fn split(data: &[u8]) -> Vec<std::result::Result<Piece, (u32, u64)>> {
        let (jobs, jobs_rx) = mpsc::channel();
        let (tickets, tickets_rx) = mpsc::sync_channel(100_000);
        let mut s = Splitter { input: data, buf: Vec::new(), base: 0, eof: false, jobs, tickets };
        assert!(s.run().is_ok());
        drop(s);
        let mut jobs = jobs_rx.iter();
        tickets_rx
            .iter()
            .map(|t| match t {
                Ticket::Block(_) => Ok(jobs.next().unwrap().piece),
                Ticket::End { crc, offset } => Err((crc, offset)),
                _ => unreachable!(),
            })
            .collect()
    }

    /// Cuts a piece in two at its bit `k`, as a chance magic there would.
    fn split_at(p: Piece, k: u64) -> (Piece, Piece) {
        let end = u64::from(p.skip) + k;
        let second = Piece {
            bytes: p.bytes[(end / 8) as usize..].to_vec(),
            skip: (end % 8) as u8,
            bits: p.bits - k,
            offset: p.offset + k,
            level: p.level,
        };
        let first = Piece { bytes: p.bytes[..end.div_ceil(8) as usize].to_vec(), bits: k, ..p };
        (first, second)
    }

    /// The decoder's output for these pieces, each decoded on its own first as a worker would.
    fn collect(items: Vec<std::result::Result<Piece, (u32, u64)>>) -> io::Result<Vec<u8>> {
        let (tx, rx) = mpsc::sync_channel(items.len() + 1);
        let mut scratch = Scratch::default();
        for item in items {
            let ticket = match item {
                Ok(piece) => {
                    let (reply, outcome) = mpsc::sync_channel(1);
                    reply.send(Outcome { result: decode(&piece, &mut scratch), piece }).unwrap();
                    Ticket::Block(outcome)
                }
                Err((crc, offset)) => Ticket::End { crc, offset },
            };
            tx.send(ticket).unwrap();
        }
        tx.send(Ticket::Finished).unwrap();
        let mut out = Vec::new();
        ParallelBzDecoder::from_tickets(rx).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_chance_magic_inside_a_block_is_joined_back() {
        let data = compressible(8, 2 * MIB);
        let file = bzip2_crate(&data, 1);
        let items = split(&file);
        assert!(items.iter().filter(|i| i.is_ok()).count() > 5, "too few blocks to test");
        assert_eq!(collect(split(&file)).unwrap(), data, "unsplit");
        let mut rng = Rng::new(9);
        // Every block cut once or twice at false boundaries (the second part does not start
        // with a magic: as a chance one would, it starts in the middle of the block's code).
        let mut cut = Vec::new();
        for item in items {
            match item {
                Ok(p) if p.bits > 400 => {
                    let (a, rest) = split_at(p, 81 + rng.below(200) as u64);
                    cut.push(Ok(a));
                    if rng.chance(2) {
                        let k = 1 + rng.below(rest.bits as usize - 1) as u64;
                        let (b, c) = split_at(rest, k);
                        cut.extend([Ok(b), Ok(c)]);
                    } else {
                        cut.push(Ok(rest));
                    }
                }
                other => cut.push(other),
            }
        }
        assert_eq!(collect(cut).unwrap(), data, "joined");
    }

    #[test]
    fn truncated_files_fail_without_hanging() {
        let data = compressible(10, MIB);
        let file = bzip2_crate(&data, 1);
        let mut rng = Rng::new(11);
        for _ in 0..40 {
            let cut = rng.below(file.len());
            let e = par(&file[..cut]).expect_err(&format!("cut at {cut} decoded"));
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        }
        let e = par(&file[..file.len() - 20_000]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn flipped_bits_fail_with_the_block_named() {
        let data = compressible(12, MIB);
        let file = bzip2_crate(&data, 1);
        let mut rng = Rng::new(13);
        for _ in 0..40 {
            let mut bad = file.clone();
            // The last bytes are the stream CRC and padding; padding bits are not checked.
            let i = 4 + rng.below(file.len() - 10);
            bad[i] ^= 1 << rng.below(8);
            assert!(par(&bad).is_err(), "a flip in byte {i} decoded");
        }
        let mut bad = file.clone();
        bad[file.len() / 2] ^= 0x10;
        let e = par(&bad).unwrap_err().to_string();
        assert!(e.starts_with("decoding bzip2 block ") && e.contains(" at bit offset "), "{e}");
        // The stream CRC itself: the 32 bits after the last end-of-stream magic.
        let tail = (file.len() as u64 - 11) * 8;
        let (eos, magic) = find_magic(&file, tail).unwrap();
        assert_eq!(magic, EOS_MAGIC);
        let mut bad = file.clone();
        let bit = eos + 60;
        bad[(bit / 8) as usize] ^= 0x80 >> (bit % 8);
        let e = par(&bad).unwrap_err().to_string();
        assert!(e.contains("stores CRC"), "{e}");
    }

    #[test]
    fn a_randomised_block_goes_to_libbz2() {
        let data = compressible(15, 50_000);
        let mut file = bzip2_crate(&data, 1);
        // The randomised bit follows the header (32 bits), the magic (48) and the CRC (32). Set
        // on a block that is not randomised, libbz2's de-randomising breaks its CRC.
        file[14] |= 0x80;
        let mut piece = split(&file).remove(0).ok().unwrap();
        let mut scratch = Scratch::default();
        let e = bzip2_block::decode(&piece.bytes, piece.skip, piece.bits, 1, &mut scratch);
        assert!(matches!(e, Err(BlockError::Randomised)));
        let e = decode(&piece, &mut scratch).err().unwrap();
        assert!(e.contains("randomised mode, decoded by libbz2: "), "{e}");
        piece.bytes[10] &= 0x7f;
        assert_eq!(decode(&piece, &mut scratch).unwrap().chunks.concat(), data);
    }

    #[test]
    fn mutated_files_never_panic_or_hang() {
        let file = bzip2_crate(&compressible(14, 200_000), 1);
        let mut rng = Rng::new(crate::fuzz::seed());
        for _ in 0..crate::fuzz::iterations(60) {
            let input = crate::fuzz::mutate(&mut rng, &file, file.len() + 1024);
            let _ = par(&input);
        }
        assert!(par(b"").is_err());
        assert!(par(b"BZh9").is_err());
        assert!(par(b"BZh0xxxxxxxxx").is_err());
    }
}
