//! The uncompressed (on-disk) size of an xz or zstd image, read from container metadata alone.
//!
//! Knowing the size before writing lets us check that the image fits the target disk and show
//! progress as a percentage, without decompressing gigabytes first. xz keeps an index at the end of
//! every stream; zstd frames may declare their content size in the frame header.

use flate2::Crc;

use crate::error::{Context, Result};
use crate::io::ReadAt;

/// What the xz indexes say about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XzInfo {
    /// Sum of the uncompressed sizes of all blocks in all streams.
    pub uncompressed: u64,
    /// Number of concatenated streams.
    pub streams: u64,
    /// Number of blocks over all streams (more than one per stream means it can be decoded in
    /// parallel).
    pub blocks: u64,
}

const XZ_HEADER_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
const XZ_FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];
/// Stream header and stream footer are both 12 bytes.
const XZ_HEADER_SIZE: u64 = 12;
/// Largest value an xz variable-length integer may hold (liblzma's LZMA_VLI_MAX).
const XZ_VLI_MAX: u64 = u64::MAX / 2;
/// Chunk for buffered reads of the index and of stream padding.
const CHUNK: u64 = 64 * 1024;

/// Reads the xz index(es) from the end of the file: stream footer (12 bytes, 'YZ' magic, backward
/// size), index (indicator 0x00, record count varint, (unpadded, uncompressed) varint pairs,
/// padding, CRC32), stream header to step back over the stream (use the index's unpadded sizes to
/// find the stream start), stream padding (multiples of 4 zero bytes) between concatenated streams.
/// Verify CRC32s of footer and index. Errors for a corrupt/truncated tail name what is wrong.
///
/// The stream header's CRC32 is verified too, and its flags must equal the footer's: that is what
/// confirms the index's block sizes are right. Needs the source size (`ReadAt::size`). Stream
/// padding is skipped by reading it, so a file of gigabytes of zero bytes is read in full before
/// it is rejected.
pub fn xz_info(src: &dyn ReadAt) -> Result<XzInfo> {
    let size = src.size().context("reading xz index: the size of the source is unknown")?;
    crate::ensure!(size > 0, "reading xz stream footer: the file is empty");
    // Headers, blocks (padded), indexes, footers and stream padding all come in multiples of 4.
    crate::ensure!(
        size % 4 == 0,
        "reading xz stream footer: file size {size} is not a multiple of four (truncated or not xz)"
    );
    let mut info = XzInfo { uncompressed: 0, streams: 0, blocks: 0 };
    let mut pos = size;
    loop {
        let end = skip_stream_padding(src, pos)?;
        if end == 0 {
            crate::ensure!(
                info.streams > 0,
                "reading xz stream footer: the file is all zero bytes"
            );
            crate::bail!("reading xz stream padding: zero bytes before the first stream");
        }
        let stream = xz_stream(src, end)?;
        info.uncompressed = info
            .uncompressed
            .checked_add(stream.uncompressed)
            .context("reading xz index: the uncompressed sizes add up to more than 2^64")?;
        info.streams += 1;
        info.blocks += stream.blocks;
        pos = stream.start;
        if pos == 0 {
            return Ok(info);
        }
    }
}

/// One stream, read from its end backwards.
struct XzStream {
    start: u64,
    uncompressed: u64,
    blocks: u64,
}

/// Steps back from `pos` over zero bytes, 4 at a time; returns where the data before them ends.
fn skip_stream_padding(src: &dyn ReadAt, mut pos: u64) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK as usize];
    while pos > 0 {
        let n = pos.min(CHUNK);
        let chunk = &mut buf[..n as usize];
        src.read_exact_at(chunk, pos - n)
            .with_context(|| format!("reading xz stream padding at offset {}", pos - n))?;
        match chunk.iter().rposition(|&b| b != 0) {
            // A stream ends 4-aligned, so its last non-zero byte ends the 4-byte group it is in.
            Some(i) => return Ok(pos - n + (i as u64 / 4 + 1) * 4),
            None => pos -= n,
        }
    }
    Ok(0)
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = Crc::new();
    c.update(data);
    c.sum()
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Reads the stream whose footer ends at `end`.
fn xz_stream(src: &dyn ReadAt, end: u64) -> Result<XzStream> {
    crate::ensure!(
        end >= 2 * XZ_HEADER_SIZE,
        "reading xz stream footer at offset {}: only {end} bytes, too short for an xz stream",
        end.saturating_sub(XZ_HEADER_SIZE)
    );
    let foot_at = end - XZ_HEADER_SIZE;
    let mut foot = [0u8; 12];
    src.read_exact_at(&mut foot, foot_at)
        .with_context(|| format!("reading xz stream footer at offset {foot_at}"))?;
    crate::ensure!(
        foot[10..] == XZ_FOOTER_MAGIC,
        "reading xz stream footer at offset {foot_at}: no 'YZ' magic (truncated or not an xz file)"
    );
    crate::ensure!(
        crc32(&foot[4..10]) == le_u32(&foot[..4]),
        "reading xz stream footer at offset {foot_at}: CRC32 mismatch"
    );
    let flags = [foot[8], foot[9]];
    crate::ensure!(
        flags[0] == 0 && flags[1] & 0xF0 == 0,
        "reading xz stream footer at offset {foot_at}: unsupported stream flags {:02x}{:02x}",
        flags[0],
        flags[1]
    );
    let index_size = (u64::from(le_u32(&foot[4..8])) + 1) * 4;
    crate::ensure!(
        foot_at >= index_size + XZ_HEADER_SIZE,
        "reading xz stream footer at offset {foot_at}: index size {index_size} reaches before the start of the file"
    );
    let index_at = foot_at - index_size;
    let index = read_xz_index(src, index_at, index_size)
        .with_context(|| format!("reading xz index at offset {index_at}"))?;
    let start = index_at
        .checked_sub(index.blocks_size)
        .and_then(|p| p.checked_sub(XZ_HEADER_SIZE))
        .with_context(|| {
            format!(
                "reading xz index at offset {index_at}: its {} bytes of blocks reach before the start of the file",
                index.blocks_size
            )
        })?;
    let mut head = [0u8; 12];
    src.read_exact_at(&mut head, start)
        .with_context(|| format!("reading xz stream header at offset {start}"))?;
    crate::ensure!(
        head[..6] == XZ_HEADER_MAGIC,
        "reading xz stream header at offset {start}: no xz magic where the index says the stream starts"
    );
    crate::ensure!(
        crc32(&head[6..8]) == le_u32(&head[8..]),
        "reading xz stream header at offset {start}: CRC32 mismatch"
    );
    crate::ensure!(
        head[6..8] == flags,
        "reading xz stream header at offset {start}: stream flags differ from the footer's"
    );
    Ok(XzStream { start, uncompressed: index.uncompressed, blocks: index.records })
}

struct XzIndex {
    records: u64,
    /// Bytes the stream's blocks occupy (unpadded sizes rounded up to 4).
    blocks_size: u64,
    uncompressed: u64,
}

/// Parses the index of `size` bytes at `at` (CRC32 included), reading it in chunks since a large
/// image with small blocks can have an index of megabytes.
fn read_xz_index(src: &dyn ReadAt, at: u64, size: u64) -> Result<XzIndex> {
    // `size` is a multiple of 4 and at least 4; the last 4 bytes are the CRC32.
    let mut r =
        IndexReader { src, pos: at, end: at + size - 4, buf: Vec::new(), used: 0, crc: Crc::new() };
    crate::ensure!(r.byte()? == 0, "not an index (indicator byte is not 0)");
    let records = r.varint()?;
    let (mut blocks_size, mut uncompressed) = (0u64, 0u64);
    // Each record takes at least two bytes, so running out of index ends this loop on hostile counts.
    for i in 0..records {
        let unpadded = r.varint()?;
        let unc = r.varint()?;
        crate::ensure!(
            (5..=XZ_VLI_MAX - 3).contains(&unpadded),
            "record {i}: unpadded size {unpadded} out of range"
        );
        blocks_size = blocks_size
            .checked_add((unpadded + 3) & !3)
            .filter(|&s| s <= XZ_VLI_MAX)
            .context("block sizes add up past the xz limit")?;
        uncompressed = uncompressed
            .checked_add(unc)
            .filter(|&s| s <= XZ_VLI_MAX)
            .context("uncompressed sizes add up past the xz limit")?;
    }
    let mut consumed = r.consumed(at);
    while consumed & 3 != 0 {
        crate::ensure!(r.byte()? == 0, "non-zero index padding");
        consumed += 1;
    }
    crate::ensure!(
        consumed == size - 4,
        "{records} records take {consumed} bytes but the footer gives the index {} (before its CRC32)",
        size - 4
    );
    let computed = r.crc.sum();
    let mut stored = [0u8; 4];
    src.read_exact_at(&mut stored, at + size - 4).context("reading the index CRC32")?;
    crate::ensure!(computed == u32::from_le_bytes(stored), "CRC32 mismatch");
    Ok(XzIndex { records, blocks_size, uncompressed })
}

/// Buffered sequential bytes of `pos..end`, feeding a CRC32 with every chunk read.
struct IndexReader<'a> {
    src: &'a dyn ReadAt,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    used: usize,
    crc: Crc,
}

impl IndexReader<'_> {
    fn byte(&mut self) -> Result<u8> {
        if self.used == self.buf.len() {
            let n = (self.end - self.pos).min(CHUNK);
            crate::ensure!(n > 0, "records run past the end of the index");
            self.buf.resize(n as usize, 0);
            self.src.read_exact_at(&mut self.buf, self.pos)?;
            self.crc.update(&self.buf);
            self.pos += n;
            self.used = 0;
        }
        let b = self.buf[self.used];
        self.used += 1;
        Ok(b)
    }

    /// An xz variable-length integer: 7 bits a byte, low first, at most 9 bytes, minimal encoding.
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..9 {
            let b = self.byte()?;
            v |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                crate::ensure!(i == 0 || b != 0, "over-long integer encoding");
                return Ok(v);
            }
        }
        crate::bail!("integer longer than 9 bytes")
    }

    /// Bytes consumed since `start`.
    fn consumed(&self, start: u64) -> u64 {
        self.pos - (self.buf.len() - self.used) as u64 - start
    }
}

const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const ZSTD_SKIPPABLE: std::ops::RangeInclusive<u32> = 0x184D_2A50..=0x184D_2A5F;
/// The format's Block_Maximum_Size: no block, compressed or not, decodes to or occupies more.
const ZSTD_MAX_BLOCK: u64 = 128 * 1024;
/// Work bound: a 128 KiB-block file this long is over 100 GiB, far beyond a disk image.
const ZSTD_MAX_BLOCKS: u64 = 1_000_000;

/// Walks zstd frames from the start using only frame headers and 3-byte block headers (seeking over
/// block bodies) and skippable frames (magic 0x184D2A50..=0x184D2A5F, 4-byte size). Returns
/// Some(sum of frame content sizes) when every frame declares its content size, None when any does
/// not (e.g. written from a pipe). Error on a bad magic or a truncated frame. Bound the work: stop
/// and return None after, say, 1,000,000 blocks.
///
/// The walk stops at the first frame without a content size, so frames after it are not checked.
/// A file of only skippable frames decodes to nothing: `Some(0)`. An empty file is an error.
pub fn zstd_content_size(src: &dyn ReadAt) -> Result<Option<u64>> {
    let size = src.size();
    let mut pos = 0u64;
    let mut total = 0u64;
    let mut blocks = 0u64;
    loop {
        let mut magic = [0u8; 4];
        let got = src
            .read_full_at(&mut magic, pos)
            .with_context(|| format!("reading zstd frame at offset {pos}"))?;
        if got == 0 {
            crate::ensure!(pos > 0, "reading zstd frame at offset 0: the file is empty");
            return Ok(Some(total));
        }
        crate::ensure!(got == 4, "reading zstd frame at offset {pos}: truncated magic number");
        let magic = u32::from_le_bytes(magic);
        if ZSTD_SKIPPABLE.contains(&magic) {
            let mut len = [0u8; 4];
            src.read_exact_at(&mut len, pos + 4)
                .with_context(|| format!("reading zstd skippable frame at offset {pos}"))?;
            let end = pos + 8 + u64::from(u32::from_le_bytes(len));
            require(src, size, end)
                .with_context(|| format!("reading zstd skippable frame at offset {pos}"))?;
            pos = end;
            continue;
        }
        crate::ensure!(
            magic == ZSTD_MAGIC,
            "reading zstd frame at offset {pos}: bad magic number 0x{magic:08x} (not zstd, or garbage after the last frame)"
        );
        let frame = pos;
        let (content, header_len, checksum) = zstd_frame_header(src, frame)
            .with_context(|| format!("reading zstd frame header at offset {frame}"))?;
        let Some(content) = content else { return Ok(None) };
        pos += header_len;
        loop {
            if blocks == ZSTD_MAX_BLOCKS {
                return Ok(None);
            }
            blocks += 1;
            let mut h = [0u8; 3];
            src.read_exact_at(&mut h, pos).with_context(|| {
                format!("reading zstd block header at offset {pos} (frame at {frame})")
            })?;
            let h = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
            let (last, kind, bsize) = (h & 1 == 1, (h >> 1) & 3, u64::from(h >> 3));
            crate::ensure!(
                kind != 3,
                "reading zstd block header at offset {pos} (frame at {frame}): reserved block type"
            );
            crate::ensure!(
                bsize <= ZSTD_MAX_BLOCK,
                "reading zstd block header at offset {pos} (frame at {frame}): block size {bsize} over the 128 KiB limit"
            );
            // An RLE block stores its one repeated byte; its size field is the decoded length.
            pos += 3 + if kind == 1 { 1 } else { bsize };
            if last {
                break;
            }
        }
        if checksum {
            pos += 4;
        }
        require(src, size, pos).with_context(|| format!("reading zstd frame at offset {frame}"))?;
        total = total.checked_add(content).with_context(|| {
            format!("reading zstd frame at offset {frame}: content sizes add up to more than 2^64")
        })?;
    }
}

/// Parses a frame header at `at`: (declared content size, header length incl. magic, checksum flag).
fn zstd_frame_header(src: &dyn ReadAt, at: u64) -> Result<(Option<u64>, u64, bool)> {
    let mut fhd = [0u8; 1];
    src.read_exact_at(&mut fhd, at + 4)?;
    let fhd = fhd[0];
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    crate::ensure!(fhd & 0x08 == 0, "reserved bit set in the frame header descriptor");
    let checksum = fhd & 0x04 != 0;
    let window_len = if single_segment { 0 } else { 1 };
    let dict_len = [0, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_len = match fcs_flag {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let mut rest = [0u8; 13];
    let rest = &mut rest[..window_len + dict_len + fcs_len];
    src.read_exact_at(rest, at + 5)?;
    let fcs = &rest[window_len + dict_len..];
    let mut le = [0u8; 8];
    le[..fcs.len()].copy_from_slice(fcs);
    let value = u64::from_le_bytes(le);
    let content = match fcs_len {
        0 => None,
        // The 2-byte form is offset by 256, since smaller sizes fit in one byte.
        2 => Some(value + 256),
        _ => Some(value),
    };
    Ok((content, 5 + rest.len() as u64, checksum))
}

/// Checks that the source holds `end` bytes, from its size when known, else by reading the last one.
fn require(src: &dyn ReadAt, size: Option<u64>, end: u64) -> Result<()> {
    match size {
        Some(size) => {
            crate::ensure!(end <= size, "truncated: it needs {end} bytes, the file has {size}");
        }
        None if end > 0 => {
            let mut b = [0u8; 1];
            crate::ensure!(
                src.read_full_at(&mut b, end - 1)? == 1,
                "truncated: the source ends before offset {end}"
            );
        }
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Write};

    /// Half compressible text, half noise, so that encoders make blocks of every kind.
    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|i| {
                if (i / 4096) % 2 == 0 {
                    b"the quick brown fox "[i % 20]
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }
            })
            .collect()
    }

    /// A source whose size is not known, as a pipe or an HTTP body without length would be.
    struct Unsized(Vec<u8>);

    impl ReadAt for Unsized {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.0.read_at(buf, offset)
        }
        fn size(&self) -> Option<u64> {
            None
        }
    }

    fn zstd_frame(data: &[u8], pledge: bool, checksum: bool) -> Vec<u8> {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_checksum(checksum).unwrap();
        if pledge {
            enc.include_contentsize(true).unwrap();
            enc.set_pledged_src_size(Some(data.len() as u64)).unwrap();
        }
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn zstd_single_frames_of_every_header_size() {
        // 0 and 10 take the 1-byte size field, 300 the 2-byte one (+256), the rest 4 bytes.
        for len in [0, 10, 300, 65_791, 70_000, 3 << 20] {
            let data = sample(len, len as u64);
            for checksum in [false, true] {
                let z = zstd_frame(&data, true, checksum);
                assert_eq!(zstd_content_size(&z).unwrap(), Some(len as u64), "len {len}");
                assert_eq!(zstd_content_size(&Unsized(z.clone())).unwrap(), Some(len as u64));
                assert_eq!(
                    zstd_content_size(&zstd::bulk::compress(&data, 1).unwrap()).unwrap(),
                    Some(len as u64)
                );
            }
        }
    }

    #[test]
    fn zstd_without_content_size_is_none() {
        let data = sample(1 << 20, 7);
        let z = zstd_frame(&data, false, true);
        assert_eq!(zstd_content_size(&z).unwrap(), None);
        // One unknown frame among known ones makes the whole unknown.
        let mut two = zstd_frame(&data, true, false);
        two.extend_from_slice(&z);
        assert_eq!(zstd_content_size(&two).unwrap(), None);
    }

    #[test]
    fn zstd_concatenated_and_skippable_frames() {
        let (a, b) = (sample(200_000, 1), sample(1_234_567, 2));
        let mut file = Vec::new();
        // A skippable frame in front, as some tools write metadata (magic 0x184D2A5A, 5 bytes).
        file.extend_from_slice(&0x184D_2A5Au32.to_le_bytes());
        file.extend_from_slice(&5u32.to_le_bytes());
        file.extend_from_slice(b"hello");
        file.extend_from_slice(&zstd_frame(&a, true, true));
        file.extend_from_slice(&zstd_frame(&b, true, false));
        assert_eq!(zstd::decode_all(&file[..]).unwrap().len(), a.len() + b.len());
        assert_eq!(zstd_content_size(&file).unwrap(), Some((a.len() + b.len()) as u64));
        // Only a skippable frame: decodes to nothing.
        assert_eq!(zstd_content_size(&file[..13].to_vec()).unwrap(), Some(0));
    }

    #[test]
    fn zstd_hand_made_frame_with_8_byte_size_and_rle() {
        let mut f = ZSTD_MAGIC.to_le_bytes().to_vec();
        f.push(0xE0); // 8-byte content size, single segment, no checksum, no dictionary
        f.extend_from_slice(&5_000_000_000u64.to_le_bytes());
        // RLE block of 100000 bytes (type 1): header then the one byte.
        let rle = (100_000u32 << 3) | (1 << 1);
        f.extend_from_slice(&rle.to_le_bytes()[..3]);
        f.push(b'x');
        // Last raw block, 2 bytes.
        let raw = (2u32 << 3) | 1;
        f.extend_from_slice(&raw.to_le_bytes()[..3]);
        f.extend_from_slice(b"ab");
        assert_eq!(zstd_content_size(&f).unwrap(), Some(5_000_000_000));
        // Reserved block type 3.
        let mut bad = f.clone();
        bad[13] |= 3 << 1;
        let err = zstd_content_size(&bad).unwrap_err().to_string();
        assert!(err.contains("reserved block type"), "{err}");
        // Oversized block.
        let mut bad = f.clone();
        bad[15] = 0xff;
        let err = zstd_content_size(&bad).unwrap_err().to_string();
        assert!(err.contains("over the 128 KiB limit"), "{err}");
    }

    #[test]
    fn zstd_damage_is_an_error() {
        let z = zstd_frame(&sample(500_000, 3), true, true);
        for cut in [1, 4, 100, z.len() - 3] {
            let t = &z[..z.len() - cut];
            let err = zstd_content_size(&t.to_vec()).unwrap_err().to_string();
            assert!(err.contains("truncated") || err.contains("source ends"), "cut {cut}: {err}");
            assert!(zstd_content_size(&Unsized(t.to_vec())).is_err(), "cut {cut}, unsized");
        }
        let mut bad = z.clone();
        bad[0] ^= 0xff;
        let err = zstd_content_size(&bad).unwrap_err().to_string();
        assert!(err.starts_with("reading zstd frame at offset 0: bad magic number"), "{err}");
        let mut trailing = z.clone();
        trailing.extend_from_slice(b"junk");
        let err = zstd_content_size(&trailing).unwrap_err().to_string();
        assert!(err.contains(&format!("at offset {}: bad magic", z.len())), "{err}");
        let err = zstd_content_size(&Vec::new()).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn zstd_block_bound_gives_none() {
        // One frame of empty raw blocks: one block over the bound gives None, exactly at it counts.
        let mut f = ZSTD_MAGIC.to_le_bytes().to_vec();
        f.extend_from_slice(&[0x20, 0]); // single segment, 1-byte size 0
        let empty_raw = 0u32.to_le_bytes();
        for _ in 0..ZSTD_MAX_BLOCKS {
            f.extend_from_slice(&empty_raw[..3]);
        }
        f.extend_from_slice(&1u32.to_le_bytes()[..3]);
        assert_eq!(zstd_content_size(&f).unwrap(), None);
        f.truncate(f.len() - 6);
        f.extend_from_slice(&1u32.to_le_bytes()[..3]);
        assert_eq!(zstd_content_size(&f).unwrap(), Some(0));
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn xz_mt(data: &[u8], block_size: u64) -> Vec<u8> {
        let stream = liblzma::stream::MtStreamBuilder::new()
            .threads(2)
            .block_size(block_size)
            .preset(1)
            .check(liblzma::stream::Check::Crc64)
            .encoder()
            .unwrap();
        let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn xz_single_and_empty_streams() {
        let data = sample(1_000_003, 4);
        let x = xz(&data);
        assert_eq!(
            xz_info(&x).unwrap(),
            XzInfo { uncompressed: data.len() as u64, streams: 1, blocks: 1 }
        );
        let e = xz(b"");
        assert_eq!(xz_info(&e).unwrap(), XzInfo { uncompressed: 0, streams: 1, blocks: 0 });
    }

    #[test]
    fn xz_multi_block() {
        let data = sample(1_000_000, 5);
        let x = xz_mt(&data, 64 * 1024);
        let info = xz_info(&x).unwrap();
        assert_eq!(info.uncompressed, 1_000_000);
        assert_eq!(info.streams, 1);
        assert_eq!(info.blocks, 16); // ceil(1_000_000 / 65_536)
    }

    #[test]
    fn xz_concatenated_streams_with_padding() {
        let (a, b, c) = (sample(300_000, 6), sample(0, 7), sample(777_777, 8));
        let mut file = xz_mt(&a, 100_000);
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&xz(&b));
        file.extend_from_slice(&xz(&c));
        file.extend_from_slice(&[0; 4]);
        let mut dec = liblzma::write::XzDecoder::new_multi_decoder(Vec::new());
        dec.write_all(&file).unwrap();
        assert_eq!(dec.finish().unwrap().len(), a.len() + c.len());
        let info = xz_info(&file).unwrap();
        assert_eq!(
            info,
            XzInfo { uncompressed: (a.len() + c.len()) as u64, streams: 3, blocks: 4 }
        );
    }

    #[test]
    fn xz_index_spanning_chunks() {
        // Tiny blocks make an index larger than one 64 KiB read chunk.
        let data = sample(20 << 20, 9);
        let x = xz_mt(&data, 1024);
        let info = xz_info(&x).unwrap();
        assert_eq!(info.uncompressed, 20 << 20);
        assert_eq!(info.blocks, 20 << 10);
    }

    fn xz_err(file: &[u8]) -> String {
        xz_info(&file.to_vec()).unwrap_err().to_string()
    }

    #[test]
    fn xz_damage_is_an_error() {
        let x = xz_mt(&sample(400_000, 10), 50_000);
        let n = x.len();
        assert!(xz_err(&x[..n - 1]).contains("not a multiple of four"));
        assert!(xz_err(&x[..n - 4]).contains("no 'YZ' magic"));
        assert!(xz_err(&x[4..]).contains("before the start of the file"), "{}", xz_err(&x[4..]));
        let index_size = (u64::from(le_u32(&x[n - 8..])) + 1) * 4;
        let index_at = n as u64 - 12 - index_size;
        // Footer CRC, backward size, index record, index CRC, stream header.
        let cases: [(usize, &str); 5] = [
            (n - 12, "reading xz stream footer at offset"),
            (n - 7, "footer at offset"),
            (index_at as usize + 3, &format!("reading xz index at offset {index_at}")),
            (n - 14, &format!("reading xz index at offset {index_at}: CRC32 mismatch")),
            (7, "reading xz stream header at offset 0"),
        ];
        for (off, want) in cases {
            let mut bad = x.clone();
            bad[off] ^= 0x40;
            let err = xz_err(&bad);
            assert!(err.contains(want), "byte {off}: {err}");
        }
        let mut padded_front = vec![0u8; 4];
        padded_front.extend_from_slice(&x);
        assert!(xz_err(&padded_front).contains("zero bytes before the first stream"));
        assert!(xz_err(&[0u8; 64]).contains("all zero bytes"));
        assert!(xz_err(&[]).contains("empty"));
        assert!(
            xz_info(&Unsized(x)).unwrap_err().to_string().contains("size of the source is unknown")
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..2000 {
            let len = (next() % 300) as usize * 4;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = xz_info(&b);
            let _ = zstd_content_size(&b);
            if len >= 8 {
                // Valid magics in front of noise, to get past the first check.
                let magic = if i % 2 == 0 { ZSTD_MAGIC } else { 0x184D_2A50 };
                b[..4].copy_from_slice(&magic.to_le_bytes());
                let _ = zstd_content_size(&b);
                b[len - 2..].copy_from_slice(b"YZ");
                let _ = xz_info(&b);
            }
        }
        // Random single-byte damage anywhere in real files.
        let xzf = xz_mt(&sample(100_000, 11), 10_000);
        let zf = zstd_frame(&sample(300_000, 12), true, true);
        for _ in 0..2000 {
            let mut a = xzf.clone();
            let i = (next() % a.len() as u64) as usize;
            a[i] = next() as u8;
            let _ = xz_info(&a);
            let mut b = zf.clone();
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
            let _ = zstd_content_size(&b);
        }
    }
}
