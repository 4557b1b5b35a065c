//! The writer: owns the target fd, writes decoded blocks with O_DIRECT, turns aligned zero runs
//! into write-zeroes requests or holes, holds the first MiB back until the end, and can blank the
//! target's first and last MiB so a failed flash never looks like a bootable disk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};

use crate::disks::{Target, TargetKind};
use crate::error::{Context, Result};
use crate::flash::Counters;
use crate::sys::{self, AlignedBuf};

/// The first MiB holds the partition table and boot code: it is written last.
pub const HEAD: u64 = 1 << 20;
/// Unit of zero detection. Small enough to find the holes between files in a file system,
/// large enough that write-zeroes requests stay few.
pub const GRANULE: usize = 64 << 10;
/// Unit of the hashes kept for `--verify`.
pub const VERIFY_CHUNK: usize = 1 << 20;

/// How all-zero runs reach the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroMode {
    /// BLKZEROOUT: the device's queue advertises write-zeroes, so it is cheap and exact.
    ZeroOut,
    /// fallocate(PUNCH_HOLE) on a regular file: the range becomes a hole that reads as zeros.
    PunchHole,
    /// Plain writes of the zeros (zero skip off, or the target cannot do better).
    Write,
}

impl ZeroMode {
    /// The name in a flash report (`"zero_mode": "ZeroOut"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ZeroMode::ZeroOut => "ZeroOut",
            ZeroMode::PunchHole => "PunchHole",
            ZeroMode::Write => "Write",
        }
    }
}

/// The open target and everything the writer tracks about it.
pub struct Writer {
    file: File,
    path: String,
    direct: bool,
    /// The unit O_DIRECT writes and reads must be whole multiples of, at aligned offsets: the
    /// device's logical block size (4096 on a 4Kn disk), 512 for a regular file (a file
    /// system that needs more answers EINVAL, and the writer goes on buffered).
    sector: usize,
    is_block: bool,
    capacity: Option<u64>,
    zero_mode: ZeroMode,
    /// Next byte offset of the decoded stream.
    offset: u64,
    head: AlignedBuf,
    head_len: usize,
    pending_zero: Option<(u64, u64)>,
    zero_block: AlignedBuf,
    /// Truncated sha256 of each VERIFY_CHUNK of the stream, when verifying.
    hashes: Option<Vec<[u8; 16]>>,
    chunk_hasher: Sha256,
    chunk_fill: usize,
}

impl Writer {
    /// Opens the target for writing: exclusively with O_DIRECT for a block device; for a regular
    /// file O_DIRECT where the file system takes it, buffered otherwise (tmpfs), saying why.
    pub fn open(target: &Target, zero_skip: bool, verify: bool) -> Result<Writer> {
        let path = target.resolved.display().to_string();
        let is_block = matches!(target.kind, TargetKind::Block(_));
        let sector = match &target.kind {
            TargetKind::Block(b) => b.logical_block_size as usize,
            TargetKind::File => 512,
        };
        // Our buffers are aligned to IO_ALIGN; a block size beyond that (or a nonsense one
        // from sysfs) gets buffered writes rather than writes the device would refuse.
        let direct_ok = sector.is_power_of_two() && (512..=sys::IO_ALIGN).contains(&sector);
        let opened = if direct_ok {
            sys::open_direct(&target.resolved, is_block, !is_block)
        } else {
            Err(std::io::Error::from_raw_os_error(sys::EINVAL))
        };
        let (file, direct) = match opened {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(sys::EBUSY) => crate::bail!(
                "refusing {path}: the device is busy (mounted, held by RAID/LVM/device-mapper, or open exclusively by another program)"
            ),
            Err(e) if e.raw_os_error() == Some(sys::EROFS) => {
                crate::bail!("refusing {path}: the device is read-only")
            }
            Err(e) if e.raw_os_error() == Some(sys::EINVAL) => {
                crate::info!(
                    "{path}: O_DIRECT is not supported here ({e}); using buffered writes and fsync"
                );
                let f = sys::open_buffered(&target.resolved, is_block, !is_block)
                    .with_context(|| format!("opening {path} for writing"))?;
                (f, false)
            }
            Err(e) => return Err(e).with_context(|| format!("opening {path} for writing")),
        };
        let zero_mode = match &target.kind {
            _ if !zero_skip => ZeroMode::Write,
            TargetKind::Block(b) if b.write_zeroes => ZeroMode::ZeroOut,
            TargetKind::Block(_) => ZeroMode::Write,
            TargetKind::File => ZeroMode::PunchHole,
        };
        crate::debug!("{path}: direct={direct} zero mode {zero_mode:?}");
        let capacity = match target.kind {
            TargetKind::Block(_) => Some(
                sys::block_device_size(&file)
                    .with_context(|| format!("reading the size of {path}"))?,
            ),
            TargetKind::File => None,
        };
        if is_block && sys::block_device_read_only(&file).unwrap_or(false) {
            crate::bail!("refusing {path}: the device is read-only");
        }
        Ok(Writer {
            file,
            path,
            direct,
            sector: if direct_ok { sector } else { 512 },
            is_block,
            capacity,
            zero_mode,
            offset: 0,
            head: AlignedBuf::new(HEAD as usize),
            head_len: 0,
            pending_zero: None,
            zero_block: AlignedBuf::new(1 << 20),
            hashes: verify.then(Vec::new),
            chunk_hasher: Sha256::new(),
            chunk_fill: 0,
        })
    }

    /// How zeros are written to this target.
    pub fn zero_mode(&self) -> ZeroMode {
        self.zero_mode
    }

    /// Whether O_DIRECT is in use.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Appends a block of the decoded stream. `buf` starts at an `IO_ALIGN`-aligned address;
    /// every block but the last is a multiple of `GRANULE` long.
    pub fn push(&mut self, buf: &[u8], counters: &Counters) -> Result<()> {
        let off = self.offset;
        let n = buf.len() as u64;
        if let Some(cap) = self.capacity {
            crate::ensure!(
                off + n <= cap,
                "writing {}: the image is larger than the target ({} bytes): stopped at the target's end after {} bytes",
                self.path,
                cap,
                cap.max(off).min(off + n)
            );
        }
        if self.hashes.is_some() {
            self.hash_for_verify(buf);
        }
        self.offset += n;
        // The first MiB goes to the held-back head buffer.
        let mut start = 0usize;
        if off < HEAD {
            let k = (HEAD - off).min(n) as usize;
            self.head[off as usize..off as usize + k].copy_from_slice(&buf[..k]);
            self.head_len = self.head_len.max(off as usize + k);
            start = k;
            counters.written.fetch_add(k as u64, Ordering::Relaxed);
        }
        let mut pos = start;
        while pos < buf.len() {
            let zero = self.zero_mode != ZeroMode::Write;
            // Find the run of granules of the same kind starting at pos.
            let first_is_zero = zero && self.is_zero_granule(&buf[pos..]);
            let mut end = pos;
            while end < buf.len() {
                let g = &buf[end..(end + GRANULE).min(buf.len())];
                let z = zero && self.is_zero_granule(&buf[end..]);
                if z != first_is_zero {
                    break;
                }
                end += g.len();
            }
            let at = off + pos as u64;
            let len = (end - pos) as u64;
            if first_is_zero {
                self.add_zero(at, len)?;
                counters.zeroed.fetch_add(len, Ordering::Relaxed);
            } else {
                self.flush_zero()?;
                self.write_run(&buf[pos..end], at)?;
                counters.written.fetch_add(len, Ordering::Relaxed);
            }
            pos = end;
        }
        Ok(())
    }

    /// Whether the granule at the start of `rest` is all zeros and may be skipped. A short final
    /// granule whose length is not a whole sector is written instead, through the tail path.
    fn is_zero_granule(&self, rest: &[u8]) -> bool {
        let g = &rest[..GRANULE.min(rest.len())];
        (g.len() % self.sector == 0) && is_all_zero(g)
    }

    fn add_zero(&mut self, at: u64, len: u64) -> Result<()> {
        match self.pending_zero {
            Some((s, l)) if s + l == at => self.pending_zero = Some((s, l + len)),
            _ => {
                self.flush_zero()?;
                self.pending_zero = Some((at, len));
            }
        }
        Ok(())
    }

    fn flush_zero(&mut self) -> Result<()> {
        let Some((at, len)) = self.pending_zero.take() else { return Ok(()) };
        let res = match self.zero_mode {
            ZeroMode::ZeroOut => sys::zero_out(&self.file, at, len),
            ZeroMode::PunchHole => sys::punch_hole(&self.file, at, len),
            ZeroMode::Write => return self.write_zeros(at, len),
        };
        match res {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(sys::EOPNOTSUPP) | Some(sys::EINVAL) | Some(sys::ENOTTY)
                ) =>
            {
                crate::info!(
                    "{}: the target cannot zero ranges ({e}); writing zeros instead",
                    self.path
                );
                self.zero_mode = ZeroMode::Write;
                self.write_zeros(at, len)
            }
            Err(e) => Err(e)
                .with_context(|| format!("zeroing {} bytes at offset {at} of {}", len, self.path)),
        }
    }

    fn write_zeros(&mut self, mut at: u64, len: u64) -> Result<()> {
        let end = at + len;
        while at < end {
            let k = (end - at).min(self.zero_block.len() as u64) as usize;
            let zeros = std::mem::replace(&mut self.zero_block, AlignedBuf::new(1));
            let res = self.write_run(&zeros[..k], at);
            self.zero_block = zeros;
            res?;
            at += k as u64;
        }
        Ok(())
    }

    /// Writes `data` at `at`: the sector-aligned part directly, an unaligned tail buffered.
    fn write_run(&mut self, data: &[u8], at: u64) -> Result<()> {
        let aligned = if self.direct { data.len() / self.sector * self.sector } else { data.len() };
        if aligned > 0 {
            match self.file.write_all_at(&data[..aligned], at) {
                // A file system whose direct I/O unit is larger than we assumed: the same
                // positional write again through the page cache, and buffered from here on.
                Err(e) if self.direct && e.raw_os_error() == Some(sys::EINVAL) => {
                    crate::info!(
                        "{}: O_DIRECT refused a write at offset {at} ({e}); using buffered writes",
                        self.path
                    );
                    self.buffered()?;
                    return self.write_run(data, at);
                }
                Err(e) => return Err(self.write_error(e, at)),
                Ok(()) => {}
            }
        }
        if aligned < data.len() {
            // The image ends mid-sector: O_DIRECT cannot write that, the page cache can.
            self.buffered()?;
            let tail_at = at + aligned as u64;
            self.file
                .write_all_at(&data[aligned..], tail_at)
                .map_err(|e| self.write_error(e, tail_at))?;
        }
        Ok(())
    }

    fn buffered(&mut self) -> Result<()> {
        sys::set_direct(&self.file, false)
            .with_context(|| format!("switching {} to buffered writes", self.path))?;
        self.direct = false;
        Ok(())
    }

    fn write_error(&self, e: std::io::Error, at: u64) -> crate::error::Error {
        let hint = match e.raw_os_error() {
            Some(sys::ENOSPC) => ": no space left (the target is full)",
            Some(sys::EIO) => ": I/O error (failing device or medium removed?)",
            _ => "",
        };
        crate::error::Error::from(e).wrap(format!("writing {} at offset {at}{hint}", self.path))
    }

    fn hash_for_verify(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            let k = (VERIFY_CHUNK - self.chunk_fill).min(buf.len());
            self.chunk_hasher.update(&buf[..k]);
            self.chunk_fill += k;
            buf = &buf[k..];
            if self.chunk_fill == VERIFY_CHUNK {
                self.end_chunk();
            }
        }
    }

    fn end_chunk(&mut self) {
        let digest = std::mem::take(&mut self.chunk_hasher).finalize();
        let mut short = [0u8; 16];
        short.copy_from_slice(&digest[..16]);
        if let Some(h) = self.hashes.as_mut() {
            h.push(short);
        }
        self.chunk_fill = 0;
    }

    /// Ends the body: pending zeros, file length, and a flush to stable storage. The head is
    /// still held back.
    pub fn finish_body(&mut self) -> Result<u64> {
        self.flush_zero()?;
        if self.chunk_fill > 0 {
            self.end_chunk();
        }
        if !self.is_block {
            let len = self.file.metadata().with_context(|| format!("reading {}", self.path))?.len();
            if len < self.offset {
                // Trailing zeros that were skipped as a hole past the old end of the file.
                self.file
                    .set_len(self.offset)
                    .with_context(|| format!("extending {} to {} bytes", self.path, self.offset))?;
            }
        }
        self.file
            .sync_data()
            .with_context(|| format!("flushing {} to stable storage", self.path))?;
        Ok(self.offset)
    }

    /// Writes the held-back first MiB and flushes it: the last step of a successful flash.
    pub fn write_head(&mut self) -> Result<()> {
        let head = std::mem::replace(&mut self.head, AlignedBuf::new(1));
        let res = self.write_run(&head[..self.head_len], 0);
        self.head = head;
        res?;
        self.file.sync_data().with_context(|| format!("flushing {} to stable storage", self.path))
    }

    /// Blanks the first and last MiB of the target (MBR, primary and backup GPT) and flushes,
    /// so the disk reads as empty. Used before writing and after any failure.
    pub fn blank_headers(&mut self) -> Result<()> {
        let len = match self.capacity {
            Some(c) => c,
            None => self.file.metadata().with_context(|| format!("reading {}", self.path))?.len(),
        };
        if len == 0 {
            return Ok(());
        }
        let first = len.min(HEAD);
        let last_start = len.saturating_sub(HEAD).max(first);
        for (at, n) in [(0, first), (last_start, len - last_start)] {
            if n > 0 {
                self.write_zeros(at, n)?;
            }
        }
        self.file.sync_data().with_context(|| format!("flushing {} to stable storage", self.path))
    }

    /// Reads back the written image and compares it with the hashes kept while writing.
    /// Returns the offset of the first mismatching MiB, if any.
    pub fn verify(
        &mut self,
        counters: &Counters,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<Option<u64>> {
        let Some(hashes) = self.hashes.take() else { return Ok(None) };
        if self.direct || sys::set_direct(&self.file, true).is_ok() {
            self.direct = true;
        } else {
            // No O_DIRECT: make sure the reads come from the device, not from the page cache.
            let _ = sys::drop_cache(&self.file, 0, self.offset);
        }
        let mut buf = AlignedBuf::new(VERIFY_CHUNK);
        for (i, want) in hashes.iter().enumerate() {
            crate::ensure!(!cancel.load(Ordering::Relaxed), "verification cancelled");
            let at = (i * VERIFY_CHUNK) as u64;
            let len = (self.offset - at).min(VERIFY_CHUNK as u64) as usize;
            let read_len = if self.direct { len.div_ceil(self.sector) * self.sector } else { len };
            let mut got = 0;
            while got < read_len {
                let n = self.file.read_at(&mut buf[got..read_len], at + got as u64).with_context(
                    || format!("reading back {} at offset {}", self.path, at + got as u64),
                )?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            if got < len {
                return Ok(Some(at + got as u64));
            }
            let d = Sha256::digest(&buf[..len]);
            if d[..16] != want[..] {
                return Ok(Some(at));
            }
            counters.verified.fetch_add(len as u64, Ordering::Relaxed);
        }
        Ok(None)
    }

    /// Asks the kernel to re-read the partition table of a whole disk (best effort).
    pub fn reread_partitions(&self) {
        if self.is_block {
            if let Err(e) = sys::reread_partitions(&self.file) {
                crate::debug!("re-reading the partition table of {}: {e}", self.path);
            }
        }
    }
}

/// Whether every byte is zero. Works a KiB at a time with an OR-reduction the compiler
/// vectorises, and stops at the first KiB holding data (most data granules stop at once).
pub fn is_all_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(1024);
    for block in &mut blocks {
        let mut acc = 0u128;
        for w in block.chunks_exact(16) {
            let mut word = [0u8; 16];
            word.copy_from_slice(w);
            acc |= u128::from_ne_bytes(word);
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    const K: usize = 1 << 10;
    const G: usize = GRANULE;
    const M: usize = HEAD as usize;

    /// One stretch of the decoded stream.
    #[derive(Clone, Copy, Debug)]
    enum Run {
        /// Bytes that are never zero, so no sector of them can be taken for a zero run.
        Data(usize),
        Zero(usize),
        /// Zeros but for the last byte.
        LastByte(usize),
    }
    use Run::{Data, LastByte, Zero};

    /// One way through the writer, and what it must leave on a regular file.
    struct Case {
        what: &'static str,
        stream: &'static [Run],
        /// Bytes per push; every push but the last is whole granules, as the pipeline sends them.
        block: usize,
        zero_skip: bool,
        /// The target file exists beforehand, full of other bytes, as long as the stream
        /// (a reused image file); otherwise the writer creates it.
        prefill: bool,
        /// Byte ranges that hold data afterwards (SEEK_DATA/SEEK_HOLE); the rest are holes.
        data: &'static [(usize, usize)],
        /// Counters: bytes written as data (the head included), bytes skipped as zeros.
        written: usize,
        zeroed: usize,
        /// O_DIRECT still on at the end: an image that ends mid-sector turns it off for the tail.
        direct: bool,
    }

    const B: usize = crate::flash::BLOCK;

    const CASES: &[Case] = &[
        Case {
            what: "shorter than the head, not whole sectors: the head's tail goes buffered",
            stream: &[Data(1000)],
            block: B,
            zero_skip: true,
            prefill: false,
            data: &[(0, 1000)],
            written: 1000,
            zeroed: 0,
            direct: false,
        },
        Case {
            what: "shorter than the head, whole sectors: O_DIRECT throughout",
            stream: &[Data(5 * 512)],
            block: B,
            zero_skip: true,
            prefill: false,
            data: &[(0, 5 * 512)],
            written: 5 * 512,
            zeroed: 0,
            direct: true,
        },
        Case {
            what: "zeros in the head are written as data: the head is held back and written whole",
            stream: &[Zero(M), Data(G)],
            block: B,
            zero_skip: true,
            prefill: false,
            data: &[(0, M + G)],
            written: M + G,
            zeroed: 0,
            direct: true,
        },
        Case {
            what: "one push larger than the head buffer: 1 MiB held back, 2 MiB written at once",
            stream: &[Data(3 * M)],
            block: B,
            zero_skip: true,
            prefill: true,
            data: &[(0, 3 * M)],
            written: 3 * M,
            zeroed: 0,
            direct: true,
        },
        Case {
            what: "zero granules become holes over old bytes, data granules are written",
            stream: &[Data(M), Zero(2 * G), Data(G), Zero(3 * G), Data(G)],
            block: B,
            zero_skip: true,
            prefill: true,
            data: &[(0, M), (M + 2 * G, M + 3 * G), (M + 6 * G, M + 7 * G)],
            written: M + 2 * G,
            zeroed: 5 * G,
            direct: true,
        },
        Case {
            what: "the same into a new file: zero granules are never written",
            stream: &[Data(M), Zero(2 * G), Data(G), Zero(3 * G), Data(G)],
            block: B,
            zero_skip: true,
            prefill: false,
            data: &[(0, M), (M + 2 * G, M + 3 * G), (M + 6 * G, M + 7 * G)],
            written: M + 2 * G,
            zeroed: 5 * G,
            direct: true,
        },
        Case {
            what: "a granule whose only non-zero byte is its last is data",
            stream: &[Data(M), LastByte(G), Zero(G), Data(G)],
            block: B,
            zero_skip: true,
            prefill: true,
            data: &[(0, M + G), (M + 2 * G, M + 3 * G)],
            written: M + 2 * G,
            zeroed: G,
            direct: true,
        },
        Case {
            what: "zero runs off granule boundaries: only whole zero granules are skipped",
            stream: &[Data(M), Zero(G + 512), Data(G - 512), Zero(G), Data(G)],
            block: B,
            zero_skip: true,
            prefill: true,
            data: &[(0, M), (M + G, M + 2 * G), (M + 3 * G, M + 4 * G)],
            written: M + 2 * G,
            zeroed: 2 * G,
            direct: true,
        },
        Case {
            what: "pushes of 3 granules: the head's end and a zero run cross push boundaries",
            stream: &[Data(M + G), Zero(M + 2 * G), Data(G + 4 * K)],
            block: 3 * G,
            zero_skip: true,
            prefill: true,
            data: &[(0, M + G), (2 * M + 3 * G, 2 * M + 4 * G + 4 * K)],
            written: M + 2 * G + 4 * K,
            zeroed: M + 2 * G,
            direct: true,
        },
        Case {
            what: "zero skip off: zeros are written as data, 3 MiB of them in one push",
            stream: &[Data(M), Zero(3 * M), Data(G)],
            block: B,
            zero_skip: false,
            prefill: true,
            data: &[(0, 4 * M + G)],
            written: 4 * M + G,
            zeroed: 0,
            direct: true,
        },
        Case {
            what: "ends in a short data granule of whole sectors: O_DIRECT to the end",
            stream: &[Data(M), Data(G), Data(3 * 512)],
            block: B,
            zero_skip: true,
            prefill: false,
            data: &[(0, M + G + 3 * 512)],
            written: M + G + 3 * 512,
            zeroed: 0,
            direct: true,
        },
        Case {
            what: "ends mid-sector: whole sectors direct, the last 188 bytes buffered",
            stream: &[Data(M), Data(G), Data(700)],
            block: B,
            zero_skip: true,
            prefill: true,
            data: &[(0, M + G + 700)],
            written: M + G + 700,
            zeroed: 0,
            direct: false,
        },
        Case {
            what: "ends in a short zero granule of whole sectors: a hole, the file set to length",
            stream: &[Data(M), Data(G), Zero(2 * 512)],
            block: B,
            zero_skip: true,
            prefill: false,
            data: &[(0, M + G)],
            written: M + G,
            zeroed: 2 * 512,
            direct: true,
        },
        Case {
            what: "ends in whole zero blocks over old bytes: punched",
            stream: &[Data(M), Data(G), Zero(8 * K)],
            block: B,
            zero_skip: true,
            prefill: true,
            data: &[(0, M + G)],
            written: M + G,
            zeroed: 8 * K,
            direct: true,
        },
        Case {
            what: "ends in zeros that are not whole sectors: written as data, buffered",
            stream: &[Data(M), Data(G), Zero(100)],
            block: B,
            zero_skip: true,
            prefill: true,
            data: &[(0, M + G + 100)],
            written: M + G + 100,
            zeroed: 0,
            direct: false,
        },
        Case {
            what: "all zeros: only the head is data, the file still gets its length",
            stream: &[Zero(M + 4 * G)],
            block: B,
            zero_skip: true,
            prefill: false,
            data: &[(0, M)],
            written: M,
            zeroed: 4 * G,
            direct: true,
        },
    ];

    fn stream_bytes(runs: &[Run], seed: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut x = seed | 1;
        for run in runs {
            match *run {
                Data(n) => out.extend((0..n).map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x as u8) | 1
                })),
                Zero(n) => out.resize(out.len() + n, 0),
                LastByte(n) => {
                    out.resize(out.len() + n - 1, 0);
                    out.push(0xa5);
                }
            }
        }
        out
    }

    /// The data ranges of `file` below `len`, or None where the file system cannot tell.
    fn data_ranges(file: &File, len: u64) -> Option<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < len {
            let start = match sys::seek_data(file, at) {
                Ok(Some(s)) if s < len => s,
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Unsupported => return None,
                Err(e) => panic!("SEEK_DATA: {e}"),
            };
            let end = sys::seek_hole(file, start).expect("SEEK_HOLE").min(len);
            out.push((start, end));
            at = end;
        }
        Some(out)
    }

    /// A directory of its own under the temp dir, removed on drop.
    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Every case of CASES through the writer as `flash` drives it (push per block,
    /// finish_body, write_head) onto a real file in the temp dir: the bytes, the length, the
    /// held-back head, the counters, O_DIRECT and the map of data and holes (offsets assume a
    /// file system with 4 KiB blocks or smaller; where it cannot report holes, or does not take
    /// O_DIRECT, those two checks adapt). Not covered here: BLKZEROOUT (block devices only,
    /// the loop-device tests of tests/it/flash.rs), the fallback to writing zeros when a range
    /// cannot be zeroed, and blank_headers.
    #[test]
    fn alignment_cases_leave_the_stream_on_a_regular_file() {
        let dir = Dir(std::env::temp_dir().join(format!("bty-write-cases-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        for (i, case) in CASES.iter().enumerate() {
            let what = case.what;
            let want = stream_bytes(case.stream, i as u64 + 1);
            let len = want.len() as u64;
            let path = dir.0.join(format!("case-{i}"));
            let before = if case.prefill {
                let old: Vec<u8> = stream_bytes(&[Data(want.len())], 0xdead_beef);
                std::fs::write(&path, &old).unwrap();
                old
            } else {
                vec![0; want.len()]
            };
            let target =
                Target { path: path.clone(), resolved: path.clone(), kind: TargetKind::File };
            let mut w = Writer::open(&target, case.zero_skip, false).unwrap();
            let mode = if case.zero_skip { ZeroMode::PunchHole } else { ZeroMode::Write };
            assert_eq!(w.zero_mode(), mode, "{what}");
            // O_DIRECT where the temp dir's file system takes it (not tmpfs before Linux 6.6).
            let direct = w.direct();

            let counters = Counters::default();
            let mut buf = AlignedBuf::new(case.block);
            for block in want.chunks(case.block) {
                buf[..block.len()].copy_from_slice(block);
                w.push(&buf[..block.len()], &counters).unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            assert_eq!(w.finish_body().unwrap(), len, "{what}");
            // The first MiB is still what the target held: it is written last.
            let head = len.min(HEAD) as usize;
            let now = read(&path);
            assert!(
                now.get(..head) == Some(&before[..head]),
                "{what}: before write_head the first {head} bytes must still be the old ones"
            );
            w.write_head().unwrap_or_else(|e| panic!("{what}: {e}"));

            let got = read(&path);
            assert_eq!(got.len(), want.len(), "{what}: file length");
            if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!("{what}: the file differs from the stream first at byte {at}");
            }
            let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            assert_eq!(c(&counters.written), case.written as u64, "{what}: bytes written");
            assert_eq!(c(&counters.zeroed), case.zeroed as u64, "{what}: bytes zeroed");
            assert_eq!(w.direct(), direct && case.direct, "{what}: O_DIRECT at the end");
            assert_eq!(w.zero_mode(), mode, "{what}: no fallback to writing zeros");
            let want_data: Vec<(u64, u64)> =
                case.data.iter().map(|&(s, e)| (s as u64, e as u64)).collect();
            let f = File::open(&path).unwrap();
            if let Some(data) = data_ranges(&f, len) {
                assert_eq!(data, want_data, "{what}: data and holes");
            }
            drop(w);
            std::fs::remove_file(&path).unwrap();
        }
    }

    fn read(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    #[test]
    fn zero_detection() {
        assert!(is_all_zero(&[]));
        assert!(is_all_zero(&[0u8; 100]));
        let mut v = vec![0u8; 4097];
        assert!(is_all_zero(&v));
        v[4096] = 1;
        assert!(!is_all_zero(&v));
        v[4096] = 0;
        v[7] = 1;
        assert!(!is_all_zero(&v));
    }
}
