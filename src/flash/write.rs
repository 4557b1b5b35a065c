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
        let (file, direct) = match sys::open_direct(&target.resolved, is_block, !is_block) {
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
        (g.len() % 512 == 0) && is_all_zero(g)
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
        let aligned = if self.direct { data.len() / 512 * 512 } else { data.len() };
        if aligned > 0 {
            self.file.write_all_at(&data[..aligned], at).map_err(|e| self.write_error(e, at))?;
        }
        if aligned < data.len() {
            // The image ends mid-sector: O_DIRECT cannot write that, the page cache can.
            sys::set_direct(&self.file, false)
                .with_context(|| format!("switching {} to buffered writes", self.path))?;
            self.direct = false;
            let tail_at = at + aligned as u64;
            self.file
                .write_all_at(&data[aligned..], tail_at)
                .map_err(|e| self.write_error(e, tail_at))?;
        }
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
            let read_len = if self.direct { len.div_ceil(512) * 512 } else { len };
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
