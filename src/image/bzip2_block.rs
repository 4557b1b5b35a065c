//! One bzip2 block decoded from its bits: bty's own decoder, used by [`super::bzip2_mt`]'s
//! workers in place of libbz2 because it is faster where the time goes.
//!
//! A block is, after its 48-bit magic: the CRC of its output, a "randomised" bit, the row of the
//! original string in the sorted rotations (`origPtr`), a bitmap of the byte values used, the
//! number of Huffman tables (2 to 6), the selectors (which table codes each group of 50
//! symbols, move-to-front coded), each table's code lengths (delta coded), and the symbols. The
//! symbols are move-to-front indices over the used bytes, with runs of the front byte written
//! in bijective base 2 (RUNA, RUNB), closed by an end-of-block symbol. They give the last column
//! of the Burrows-Wheeler transform, which is inverted and then has bzip2's first run-length
//! stage undone (four equal bytes are followed by a count of 0 to 255 more).
//!
//! Where libbz2 spends its time and this decoder does not: Huffman symbols are looked up in a
//! table indexed by the next [`FAST_BITS`] bits instead of walked bit by bit; the inverse
//! transform walks a table built in place, writing bytes into a flat buffer, and the run-length
//! stage then copies literal stretches and fills runs in bulk; the CRC is table-driven eight
//! bytes at a time; and the 3.6 MiB of tables are kept by each worker between blocks
//! ([`Scratch`]) rather than allocated and faulted in for each one.
//!
//! The input is hostile: every field is checked, every loop is bounded by the block size or a
//! field's width, and nothing is allocated beyond the stream's declared block size.

use std::fmt;

/// Decoded output is handed over in chunks of this size, so a block of zeros that decodes to
/// 46 MiB needs no reallocation and copy as it grows.
pub const CHUNK: usize = 1 << 20;

const BLOCK_MAGIC: u64 = 0x3141_5926_5359;
/// Huffman codes of up to this many bits are decoded by one table lookup; longer ones (rare:
/// bzip2's encoders aim for 17 bits at most, and give short codes to frequent symbols) by a
/// search over the longer lengths.
const FAST_BITS: u32 = 10;
const MAX_CODE_LEN: usize = 20;
/// 256 byte values, RUNA and RUNB, less one (the front byte needs no index), plus end-of-block.
const MAX_ALPHA: usize = 258;
const GROUP: usize = 50;
/// The selectors field is 15 bits. Encoders need at most 18001 (900k symbols in groups of 50);
/// libbz2 since 1.0.8 reads more and ignores the excess, and so does this decoder: a block that
/// needs a selector it does not have fails when it gets there.
const MAX_SELECTORS: usize = (1 << 15) - 1;

/// Why a block did not decode.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockError {
    /// The block uses the randomised mode bzip2 0.9.0 wrote and later versions only read; the
    /// caller hands such a block to libbz2.
    Randomised,
    Corrupt(String),
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::Randomised => f.write_str("the block uses bzip2 0.9.0's randomised mode"),
            BlockError::Corrupt(msg) => f.write_str(msg),
        }
    }
}

type Result<T> = std::result::Result<T, BlockError>;

fn corrupt<T>(msg: impl Into<String>) -> Result<T> {
    Err(BlockError::Corrupt(msg.into()))
}

/// A decoded block: its output in chunks of at most [`CHUNK`] bytes, and its CRC.
pub struct Block {
    pub chunks: Vec<Vec<u8>>,
    pub crc: u32,
}

/// The tables a worker keeps from one block to the next: the transform's vector (one `u32` a
/// byte: the byte in the low 8 bits, the link of the inverse in the high 24) and the bytes in
/// original order before the run-length stage.
#[derive(Default)]
pub struct Scratch {
    tt: Vec<u32>,
    bytes: Vec<u8>,
    /// The output of each of [`walk`]'s chains.
    segs: Vec<Vec<u8>>,
}

/// Reads bits from the top bit of `buf[0]` on; bits past the end of `buf` read as zeros, and
/// the callers check `pos` against `end` wherever reading on could matter.
struct Bits<'a> {
    buf: &'a [u8],
    pos: u64,
    end: u64,
}

impl Bits<'_> {
    /// The next 57 or more bits, left-aligned.
    #[inline(always)]
    fn peek(&self) -> u64 {
        let i = (self.pos >> 3) as usize;
        let w = match self.buf.get(i..i + 8) {
            Some(&[a, b, c, d, e, f, g, h]) => u64::from_be_bytes([a, b, c, d, e, f, g, h]),
            _ => {
                let mut w = [0u8; 8];
                let tail = self.buf.get(i..).unwrap_or(&[]);
                w[..tail.len().min(8)].copy_from_slice(&tail[..tail.len().min(8)]);
                u64::from_be_bytes(w)
            }
        };
        w << (self.pos & 7)
    }

    /// The next `n` (1..=32) bits.
    #[inline(always)]
    fn take(&mut self, n: u32) -> u32 {
        let v = (self.peek() >> (64 - n)) as u32;
        self.pos += u64::from(n);
        v
    }

    fn bit(&mut self) -> bool {
        self.take(1) == 1
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.pos > self.end {
            return corrupt(format!("the block ends inside its {what}"));
        }
        Ok(())
    }
}

/// One Huffman table: canonical codes (shorter first, then by symbol), as bzip2 assigns them.
struct Table {
    /// Indexed by the next FAST_BITS bits: symbol << 5 | code length, or 0 when the code is
    /// longer (or matches no symbol).
    fast: [u16; 1 << FAST_BITS],
    /// For each length: the first code, how many codes, and where their symbols start in
    /// `sorted`.
    first: [u32; MAX_CODE_LEN + 1],
    count: [u32; MAX_CODE_LEN + 1],
    start: [u16; MAX_CODE_LEN + 1],
    sorted: [u16; MAX_ALPHA],
}

impl Table {
    fn new(lens: &[u8], group: usize) -> Result<Table> {
        let mut t = Table {
            fast: [0; 1 << FAST_BITS],
            first: [0; MAX_CODE_LEN + 1],
            count: [0; MAX_CODE_LEN + 1],
            start: [0; MAX_CODE_LEN + 1],
            sorted: [0; MAX_ALPHA],
        };
        for &l in lens {
            t.count[usize::from(l)] += 1;
        }
        // More codes of a length than the shorter ones leave room for cannot all be distinct.
        // Fewer is allowed, as libbz2 allows it: an unassigned code is an error when read.
        let mut room = 1i64;
        let (mut code, mut at) = (0u32, 0u16);
        for len in 1..=MAX_CODE_LEN {
            room = 2 * room - i64::from(t.count[len]);
            if room < 0 {
                return corrupt(format!(
                    "the Huffman code lengths of table {group} claim more codes of {len} bits than fit"
                ));
            }
            t.first[len] = code;
            t.start[len] = at;
            code = (code + t.count[len]) << 1;
            at += t.count[len] as u16;
        }
        let mut next = t.start;
        for (sym, &l) in lens.iter().enumerate() {
            let l = usize::from(l);
            let rank = next[l];
            next[l] += 1;
            t.sorted[usize::from(rank)] = sym as u16;
            if l as u32 <= FAST_BITS {
                let code = t.first[l] + u32::from(rank - t.start[l]);
                let shift = FAST_BITS - l as u32;
                let from = (code << shift) as usize;
                let entry = (sym as u16) << 5 | l as u16;
                t.fast[from..from + (1 << shift)].fill(entry);
            }
        }
        Ok(t)
    }

    #[inline(always)]
    fn decode(&self, bits: &mut Bits) -> Result<u16> {
        let w = bits.peek();
        let e = self.fast[(w >> (64 - FAST_BITS)) as usize];
        if e != 0 {
            bits.pos += u64::from(e & 31);
            return Ok(e >> 5);
        }
        self.decode_long(bits, w)
    }

    #[cold]
    fn decode_long(&self, bits: &mut Bits, w: u64) -> Result<u16> {
        for len in FAST_BITS as usize + 1..=MAX_CODE_LEN {
            let k = ((w >> (64 - len)) as u32).wrapping_sub(self.first[len]);
            if k < self.count[len] {
                bits.pos += len as u64;
                return Ok(self.sorted[usize::from(self.start[len]) + k as usize]);
            }
        }
        corrupt("a Huffman code that matches no symbol")
    }
}

/// Decodes the block whose bits are `bits` bits of `buf` from bit `skip` (from the top of
/// `buf[0]`), starting with the block magic and ending right after the end-of-block symbol, in
/// a stream of `level` (1..=9: blocks of at most level × 100k bytes). Checks the block CRC.
pub fn decode(buf: &[u8], skip: u8, bits: u64, level: u8, scratch: &mut Scratch) -> Result<Block> {
    // Levels above 9 would also let row links outgrow their 20 bits in `tt`.
    if !(1..=9).contains(&level) {
        return corrupt(format!("stream level {level} (bzip2's are 1 to 9)"));
    }
    let max = usize::from(level) * 100_000;
    let mut b = Bits { buf, pos: u64::from(skip), end: u64::from(skip) + bits };
    if u64::from(b.take(24)) << 24 | u64::from(b.take(24)) != BLOCK_MAGIC {
        return corrupt("no block magic");
    }
    let stored_crc = b.take(32);
    if b.bit() {
        return Err(BlockError::Randomised);
    }
    let orig = b.take(24) as usize;

    // The byte values used, as a 16-bit map of 16-bit maps.
    let mut used = [0u8; 256];
    let mut n_used = 0;
    let ranges = b.take(16);
    for i in 0..16 {
        if ranges & (0x8000 >> i) != 0 {
            let m = b.take(16);
            for j in 0..16 {
                if m & (0x8000 >> j) != 0 {
                    used[n_used] = (i * 16 + j) as u8;
                    n_used += 1;
                }
            }
        }
    }
    if n_used == 0 {
        return corrupt("the map of used byte values is empty");
    }
    let alpha = n_used + 2;

    let groups = b.take(3) as usize;
    if !(2..=6).contains(&groups) {
        return corrupt(format!("{groups} Huffman tables (bzip2 has 2 to 6)"));
    }
    let n_sel = b.take(15) as usize;
    if n_sel == 0 {
        return corrupt("no selectors");
    }
    // Each selector is a move-to-front index over the tables, in unary.
    let mut order: [u8; 6] = [0, 1, 2, 3, 4, 5];
    let mut selectors = Vec::with_capacity(n_sel.min(MAX_SELECTORS));
    for s in 0..n_sel {
        let mut j = 0;
        while b.bit() {
            j += 1;
            if j >= groups {
                return corrupt(format!("selector {s} names a table beyond the {groups}"));
            }
        }
        let g = order[j];
        order.copy_within(0..j, 1);
        order[0] = g;
        selectors.push(g);
        if s % 1024 == 0 {
            b.check("selectors")?;
        }
    }
    b.check("selectors")?;

    let mut tables = Vec::with_capacity(groups);
    let mut lens = [0u8; MAX_ALPHA];
    for g in 0..groups {
        let mut len = b.take(5) as i32;
        for (sym, l) in lens[..alpha].iter_mut().enumerate() {
            loop {
                if !(1..=MAX_CODE_LEN as i32).contains(&len) {
                    return corrupt(format!(
                        "the Huffman code lengths of table {g} reach {len} at symbol {sym} (bzip2's are 1 to 20)"
                    ));
                }
                if !b.bit() {
                    break;
                }
                len += if b.bit() { -1 } else { 1 };
            }
            *l = len as u8;
        }
        tables.push(Table::new(&lens[..alpha], g)?);
        b.check("Huffman code lengths")?;
    }

    // The symbols: the last column of the transform into tt's low bytes, counted by value.
    let Scratch { tt, bytes, segs } = scratch;
    tt.resize(max, 0);
    let tt = &mut tt[..max];
    let mut counts = [0u32; 256];
    let mut mtf = [0u8; 256];
    mtf[..n_used].copy_from_slice(&used[..n_used]);
    let eob = (alpha - 1) as u16;
    let mut n = 0usize;
    let (mut run, mut weight) = (0usize, 1usize);
    let mut sel = 0;
    'groups: loop {
        b.check("symbols")?;
        let Some(&g) = selectors.get(sel) else {
            return corrupt(format!("more symbols than its {n_sel} selectors cover"));
        };
        sel += 1;
        let table = &tables[usize::from(g)];
        for _ in 0..GROUP {
            let sym = table.decode(&mut b)?;
            if sym <= 1 {
                // RUNA adds the weight, RUNB twice it; the weight doubles with each digit.
                run += weight << sym;
                weight <<= 1;
                if run > max {
                    return corrupt(format!("a run goes past the block size of {max} bytes"));
                }
                continue;
            }
            if run > 0 {
                let byte = mtf[0];
                let Some(dst) = tt.get_mut(n..n + run) else {
                    return corrupt(format!("a run goes past the block size of {max} bytes"));
                };
                dst.fill(u32::from(byte));
                counts[usize::from(byte)] += run as u32;
                n += run;
                (run, weight) = (0, 1);
            }
            if sym == eob {
                break 'groups;
            }
            let i = usize::from(sym - 1) & 0xff;
            let byte = mtf[i];
            if i < 16 {
                for k in (1..=i).rev() {
                    mtf[k] = mtf[k - 1];
                }
            } else {
                mtf.copy_within(0..i, 1);
            }
            mtf[0] = byte;
            let Some(slot) = tt.get_mut(n) else {
                return corrupt(format!("more than the block size of {max} bytes"));
            };
            *slot = u32::from(byte);
            counts[usize::from(byte)] += 1;
            n += 1;
        }
    }
    if b.pos != b.end {
        return corrupt(if b.pos > b.end {
            "the block ends inside its symbols".to_string()
        } else {
            format!("{} bits follow the end-of-block symbol", b.end - b.pos)
        });
    }
    if orig >= n {
        return corrupt(format!("origPtr {orig} is beyond the block's {n} bytes"));
    }

    // The inverse transform: the rows starting with each byte value follow one another in
    // sorted order, so tt[j] gets the row whose rotation follows row j.
    let tt = &mut tt[..n];
    let mut next = [0u32; 256];
    let mut sum = 0;
    for (c, &k) in next.iter_mut().zip(&counts) {
        *c = sum;
        sum += k;
    }
    for i in 0..n {
        let c = usize::from(tt[i] as u8);
        let j = next[c] as usize;
        next[c] += 1;
        tt[j] |= (i as u32) << 8;
    }
    let start = (tt[orig] >> 8) as usize;
    walk(tt, start, segs, bytes);

    let mut sink = Sink::default();
    unrle(bytes, &mut sink);
    let Block { chunks, crc } = sink.finish();
    if crc != stored_crc {
        return corrupt(format!(
            "the block's output has CRC {crc:08x}, its header says {stored_crc:08x}"
        ));
    }
    Ok(Block { chunks, crc })
}

/// Chains [`walk`] follows at once. Each step is a load from a table too big for the core's
/// cache, which on its own waits for memory; independent chains let eight loads overlap.
const CHAINS: usize = 8;
/// Smaller blocks fit in the cache and are walked as one chain.
const ONE_CHAIN_BELOW: usize = 1 << 16;
/// Marks the rows where a chain starts; row links take 20 bits (bits 8 to 27), so bit 31 is free.
const START: u32 = 1 << 31;

/// Writes the block's bytes in order into `out`: the inverse transform's walk through `tt` from
/// row `start`, each entry giving a byte and the next row, `tt.len()` steps.
fn walk(tt: &mut [u32], start: usize, segs: &mut Vec<Vec<u8>>, out: &mut Vec<u8>) {
    let n = tt.len();
    if n >= ONE_CHAIN_BELOW && chains(tt, start, segs, out) {
        return;
    }
    out.clear();
    out.reserve(n);
    let mut p = start;
    for _ in 0..n {
        let t = tt[p] & !START;
        out.push(t as u8);
        p = (t >> 8) as usize;
    }
}

/// [`walk`] for speed: the links are followed from several rows at once, each chain stopping at
/// the next chain's first row, and the pieces put in order afterwards. That needs the links to
/// form one cycle through every row, as they do unless the block is periodic ("abab...", or a
/// run of one byte: equal rotations link to themselves) or corrupt. Returns false, having
/// stopped every chain within `n` steps in all, when they do not.
fn chains(tt: &mut [u32], start: usize, segs: &mut Vec<Vec<u8>>, out: &mut Vec<u8>) -> bool {
    let n = tt.len();
    let mut starts = [start; CHAINS];
    let mut k = 1;
    for c in 1..CHAINS {
        let s = c * n / CHAINS;
        if !starts[..k].contains(&s) {
            starts[k] = s;
            k += 1;
        }
    }
    for &s in &starts[..k] {
        tt[s] |= START;
    }
    segs.resize_with(k, Vec::new);
    let mut pos = [0usize; CHAINS];
    for (c, seg) in segs.iter_mut().enumerate().take(k) {
        seg.clear();
        seg.reserve(2 * n / k);
        let t = tt[starts[c]];
        seg.push(t as u8);
        pos[c] = ((t & !START) >> 8) as usize;
    }
    // The chains still walking, and which chain's first row each one ran into.
    let mut live: [usize; CHAINS] = std::array::from_fn(|c| c);
    let mut active = k;
    let mut next = [usize::MAX; CHAINS];
    let mut total = k;
    while active > 0 {
        let mut i = 0;
        while i < active {
            let c = live[i];
            let t = tt[pos[c]];
            if t & START != 0 {
                next[c] = starts[..k].iter().position(|&s| s == pos[c]).unwrap_or(usize::MAX);
                active -= 1;
                live[i] = live[active];
                continue;
            }
            segs[c].push(t as u8);
            pos[c] = (t >> 8) as usize;
            i += 1;
        }
        total += active;
        if total > n {
            return false;
        }
    }
    out.clear();
    out.reserve(n);
    let (mut c, mut seen) = (0, 0u32);
    for _ in 0..k {
        let Some(seg) = segs.get(c).filter(|_| seen & 1 << c == 0) else {
            return false;
        };
        seen |= 1 << c;
        out.extend_from_slice(seg);
        c = next[c];
    }
    c == 0 && out.len() == n
}

/// Undoes bzip2's first run-length stage: after four equal bytes comes a count of 0 to 255
/// more. Literal stretches are copied whole; a run of four is found by looking at the last of
/// four bytes first, which skips ahead by up to three when they differ.
fn unrle(bytes: &[u8], sink: &mut Sink) {
    let (mut i, mut lit) = (0, 0);
    while let Some(&[a, b, c, d]) = bytes.get(i..i + 4) {
        if c != d {
            i += 3;
        } else if b != c {
            i += 2;
        } else if a != b {
            i += 1;
        } else {
            // A block may end right after four equal bytes, with no count.
            let more = bytes.get(i + 4).copied().unwrap_or(0);
            sink.put(&bytes[lit..i + 4]);
            sink.fill(a, usize::from(more));
            i += 5;
            lit = i.min(bytes.len());
        }
    }
    sink.put(&bytes[lit..]);
}

/// Output in chunks, with the CRC of what was written.
#[derive(Default)]
struct Sink {
    chunks: Vec<Vec<u8>>,
    cur: Vec<u8>,
    crc: Crc,
}

impl Sink {
    fn room(&mut self) -> usize {
        if self.cur.len() == CHUNK {
            self.flush();
        }
        if self.cur.capacity() == 0 {
            self.cur.reserve_exact(CHUNK);
        }
        CHUNK - self.cur.len()
    }

    fn flush(&mut self) {
        self.crc.update(&self.cur);
        self.chunks.push(std::mem::take(&mut self.cur));
    }

    fn put(&mut self, mut s: &[u8]) {
        while !s.is_empty() {
            let k = self.room().min(s.len());
            self.cur.extend_from_slice(&s[..k]);
            s = &s[k..];
        }
    }

    fn fill(&mut self, byte: u8, mut n: usize) {
        while n > 0 {
            let k = self.room().min(n);
            self.cur.resize(self.cur.len() + k, byte);
            n -= k;
        }
    }

    fn finish(mut self) -> Block {
        if !self.cur.is_empty() {
            self.flush();
        }
        Block { chunks: self.chunks, crc: self.crc.value() }
    }
}

/// bzip2's CRC-32: polynomial 0x04C11DB7, most significant bit first, starting from all ones
/// and inverted at the end.
struct Crc(u32);

impl Default for Crc {
    fn default() -> Crc {
        Crc(!0)
    }
}

/// `CRC_TABLES[k][b]`: the CRC register's change for byte `b` followed by `k` zero bytes, so
/// eight bytes take eight independent lookups.
static CRC_TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut b = 0;
    while b < 256 {
        let mut r = (b as u32) << 24;
        let mut k = 0;
        while k < 8 {
            r = if r & 0x8000_0000 != 0 { (r << 1) ^ 0x04C1_1DB7 } else { r << 1 };
            k += 1;
        }
        t[0][b] = r;
        b += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut b = 0;
        while b < 256 {
            let prev = t[k - 1][b];
            t[k][b] = (prev << 8) ^ t[0][(prev >> 24) as usize];
            b += 1;
        }
        k += 1;
    }
    t
}

impl Crc {
    fn update(&mut self, data: &[u8]) {
        let t = &CRC_TABLES;
        let mut c = self.0;
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let &[b0, b1, b2, b3, b4, b5, b6, b7] = w else { continue };
            let x = c ^ u32::from_be_bytes([b0, b1, b2, b3]);
            c = t[7][(x >> 24) as usize]
                ^ t[6][(x >> 16) as usize & 0xff]
                ^ t[5][(x >> 8) as usize & 0xff]
                ^ t[4][x as usize & 0xff]
                ^ t[3][usize::from(b4)]
                ^ t[2][usize::from(b5)]
                ^ t[1][usize::from(b6)]
                ^ t[0][usize::from(b7)];
        }
        for &byte in words.remainder() {
            c = (c << 8) ^ t[0][((c >> 24) as u8 ^ byte) as usize];
        }
        self.0 = c;
    }

    fn value(&self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::super::bzip2_mt::{EOS_MAGIC, find_magic};
    use super::*;
    use crate::fuzz::Rng;
    use std::io::Write;

    fn random(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.next() as u8).collect()
    }

    fn compress(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// The bit ranges of a one-stream file's blocks.
    fn blocks(file: &[u8]) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = 32;
        while let Some((p, magic)) = find_magic(file, at + 1) {
            if at > 32 || p > 32 || magic == EOS_MAGIC {
                out.push((at, p));
            }
            if magic == EOS_MAGIC {
                break;
            }
            at = p;
        }
        // A file with no blocks has the end-of-stream magic at bit 32.
        out.retain(|&(a, b)| b > a && !(a == 32 && b == 32));
        if find_magic(file, 32).is_some_and(|(p, m)| p == 32 && m == EOS_MAGIC) {
            out.clear();
        }
        out
    }

    fn block(file: &[u8], (a, b): (u64, u64), scratch: &mut Scratch) -> Result<Vec<u8>> {
        let level = file[3] - b'0';
        decode(&file[(a / 8) as usize..], (a % 8) as u8, b - a, level, scratch)
            .map(|b| b.chunks.concat())
    }

    fn round_trip(what: &str, data: &[u8], level: u32) {
        let file = compress(data, level);
        let mut scratch = Scratch::default();
        let mut out = Vec::new();
        for range in blocks(&file) {
            match block(&file, range, &mut scratch) {
                Ok(b) => out.extend(b),
                Err(e) => panic!("{what}, level {level}, block at bit {}: {e}", range.0),
            }
        }
        assert!(out == data, "{what}, level {level}: {} bytes, {} expected", out.len(), data.len());
    }

    #[test]
    fn inputs_round_trip_against_libbz2s_encoder() {
        let mut runs = Vec::new();
        for n in [1, 2, 3, 4, 5, 6, 255, 256, 259, 260, 300, 1000] {
            runs.extend(std::iter::repeat_n(b'x', n));
            runs.push(b'y');
        }
        let all: Vec<u8> = (0..=255u8).collect();
        let text: Vec<u8> =
            b"bty writes disk images. ".iter().cycle().take(300_000).copied().collect();
        let mut mixed = random(1, 50_000);
        mixed.extend(vec![0u8; 200_000]);
        mixed.extend(&text[..70_000]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("one byte", vec![7]),
            ("4 equal", vec![9; 4]),
            ("5 equal", vec![9; 5]),
            ("255 equal", vec![9; 255]),
            ("256 equal", vec![9; 256]),
            ("300 equal", vec![9; 300]),
            ("runs", runs),
            ("all byte values", all.repeat(3)),
            ("random", random(2, 70_000)),
            ("text", text),
            ("mixed", mixed),
            ("zeros", vec![0; 1 << 20]),
            ("periodic", random(8, 1000).repeat(90)),
        ];
        for (what, data) in &cases {
            for level in [1, 9] {
                round_trip(what, data, level);
            }
        }
        for level in [1u32, 9] {
            for extra in [0, 1] {
                let len = level as usize * 100_000 + extra;
                round_trip("block-size random", &random(3, len), level);
            }
        }
        round_trip("multi-block", &random(4, 350_000), 1);
    }

    #[test]
    fn flipped_bits_and_truncations_fail_or_decode_right() {
        let mut data = b"bty writes disk images. ".repeat(400);
        data.extend(random(5, 3000));
        data.extend(vec![0; 5000]);
        let file = compress(&data, 1);
        let range = blocks(&file)[0];
        let mut scratch = Scratch::default();
        assert_eq!(block(&file, range, &mut scratch).unwrap(), data);
        let mut rng = Rng::new(6);
        for _ in 0..1500 {
            let mut bad = file.clone();
            let bit = range.0 + rng.below((range.1 - range.0) as usize) as u64;
            bad[(bit / 8) as usize] ^= 0x80 >> (bit % 8);
            if let Ok(out) = block(&bad, range, &mut scratch) {
                assert_eq!(out, data, "a flip at bit {bit} decoded to other bytes");
            }
        }
        for _ in 0..300 {
            let end = range.0 + rng.below((range.1 - range.0) as usize) as u64;
            if let Ok(out) = block(&file[..end.div_ceil(8) as usize], (range.0, end), &mut scratch)
            {
                assert_eq!(out, data, "cut at bit {end} decoded to other bytes");
            }
        }
        // Random garbage after a block magic.
        for seed in 0..200 {
            let mut junk = vec![0x31, 0x41, 0x59, 0x26, 0x53, 0x59];
            junk.extend(random(seed, 2000));
            let _ = decode(&junk, 0, junk.len() as u64 * 8, 9, &mut scratch);
        }
    }

    #[test]
    fn mutated_blocks_never_panic_or_hang() {
        let mut data = b"bty writes disk images. ".repeat(200);
        data.extend(random(9, 2000));
        let file = compress(&data, 1);
        let mut rng = Rng::new(crate::fuzz::seed());
        let mut scratch = Scratch::default();
        for _ in 0..crate::fuzz::iterations(300) {
            let input = crate::fuzz::mutate(&mut rng, &file, file.len() + 1024);
            // Any cut of the mutated bits, from the first block magic's place on.
            let bits = (input.len() as u64 * 8).saturating_sub(32);
            let cut = rng.below(bits as usize + 1) as u64;
            if let Some(rest) = input.get(4..) {
                let _ = decode(rest, 0, cut, 1 + rng.below(9) as u8, &mut scratch);
            }
        }
    }

    /// A bit writer for crafted blocks.
    #[derive(Default)]
    struct W {
        out: Vec<u8>,
        bits: u64,
    }

    impl W {
        fn put(&mut self, v: u64, n: u32) {
            for k in (0..n).rev() {
                if self.bits % 8 == 0 {
                    self.out.push(0);
                }
                if v >> k & 1 == 1 {
                    *self.out.last_mut().unwrap() |= 0x80 >> (self.bits % 8);
                }
                self.bits += 1;
            }
        }
    }

    /// A block's fields, valid by default: the one byte "a", coded RUNA then end-of-block.
    struct Spec {
        crc: u32,
        randomised: bool,
        orig: u64,
        used: Vec<u8>,
        groups: u64,
        /// Move-to-front indices, written in unary.
        selectors: Vec<u32>,
        /// Each table's code lengths, the first written as the 5-bit start.
        lens: Vec<Vec<u32>>,
        /// (code, length) pairs.
        symbols: Vec<(u64, u32)>,
    }

    impl Default for Spec {
        fn default() -> Spec {
            let mut crc = Crc::default();
            crc.update(b"a");
            Spec {
                crc: crc.value(),
                randomised: false,
                orig: 0,
                used: vec![b'a'],
                groups: 2,
                selectors: vec![0],
                lens: vec![vec![1, 2, 2]; 2],
                symbols: vec![(0, 1), (0b11, 2)],
            }
        }
    }

    const RUNB: (u64, u32) = (0b10, 2);

    fn craft(spec: Spec) -> Result<Vec<u8>> {
        let mut w = W::default();
        w.put(BLOCK_MAGIC, 48);
        w.put(spec.crc.into(), 32);
        w.put(spec.randomised.into(), 1);
        w.put(spec.orig, 24);
        let mut map = [0u16; 16];
        for &b in &spec.used {
            map[usize::from(b / 16)] |= 0x8000 >> (b % 16);
        }
        w.put(map.iter().enumerate().map(|(i, &m)| u64::from(m != 0) << (15 - i)).sum(), 16);
        for m in map.into_iter().filter(|&m| m != 0) {
            w.put(m.into(), 16);
        }
        w.put(spec.groups, 3);
        w.put(spec.selectors.len() as u64, 15);
        for &s in &spec.selectors {
            w.put((1 << (s + 1)) - 2, s + 1);
        }
        for lens in &spec.lens {
            let mut cur = lens[0];
            w.put(cur.into(), 5);
            for &l in lens {
                while cur < l {
                    w.put(0b10, 2);
                    cur += 1;
                }
                while cur > l {
                    w.put(0b11, 2);
                    cur -= 1;
                }
                w.put(0, 1);
            }
        }
        for &(code, len) in &spec.symbols {
            w.put(code, len);
        }
        decode(&w.out, 0, w.bits, 1, &mut Scratch::default()).map(|b| b.chunks.concat())
    }

    fn fails(spec: Spec, expect: &str) {
        match craft(spec) {
            Err(BlockError::Corrupt(msg)) => assert!(msg.contains(expect), "{expect}: {msg}"),
            other => panic!("expected an error with {expect:?}, got {:?}", other.map(|v| v.len())),
        }
    }

    #[test]
    fn crafted_headers_are_refused() {
        assert_eq!(craft(Spec::default()).unwrap(), b"a");
        fails(Spec { orig: 1, ..Spec::default() }, "origPtr 1 is beyond");
        fails(Spec { crc: 1, ..Spec::default() }, "CRC");
        assert_eq!(
            craft(Spec { randomised: true, ..Spec::default() }).unwrap_err(),
            BlockError::Randomised
        );
        fails(Spec { used: vec![], lens: vec![vec![1, 1]; 2], ..Spec::default() }, "used byte");
        for groups in [0, 1, 7] {
            let lens = vec![vec![1, 2, 2]; groups as usize];
            fails(Spec { groups, lens, ..Spec::default() }, "Huffman tables");
        }
        fails(Spec { selectors: vec![], ..Spec::default() }, "no selectors");
        fails(Spec { selectors: vec![2], ..Spec::default() }, "beyond the 2");
        for bad in [0, 21] {
            let lens = vec![vec![bad, 2, 2], vec![1, 2, 2]];
            fails(Spec { lens, ..Spec::default() }, "code lengths of table 0");
        }
        let lens = vec![vec![1, 2, 2], vec![1, 2, 21]];
        fails(Spec { lens, ..Spec::default() }, "code lengths of table 1");
        // Three codes of one bit cannot all be distinct.
        fails(Spec { lens: vec![vec![1, 1, 1]; 2], ..Spec::default() }, "more codes of 1 bits");
        // Twenty RUNBs make a run of 2^21 - 2 bytes, past level 1's 100k.
        let mut symbols = vec![RUNB; 20];
        symbols.push((0b11, 2));
        fails(Spec { symbols, selectors: vec![0], ..Spec::default() }, "past the block size");
        // Fifty-one symbols need two selectors.
        let (used, lens) = (b"ab".to_vec(), vec![vec![2, 2, 2, 2]; 2]);
        let mut symbols = vec![(0b10, 2); 51];
        symbols.push((0b11, 2));
        fails(Spec { used, lens, symbols, ..Spec::default() }, "more symbols than its 1 selectors");
        let mut symbols = Spec::default().symbols;
        symbols.push((0, 3));
        fails(Spec { symbols, ..Spec::default() }, "3 bits follow the end-of-block");
        // End-of-block coded as 0: the zeros read past the end make one, a bit too late.
        let lens = vec![vec![2, 2, 1]; 2];
        fails(
            Spec { lens, symbols: vec![(0b10, 2)], ..Spec::default() },
            "ends inside its symbols",
        );
        // An incomplete code: a code no symbol has is refused when read.
        let lens = vec![vec![2, 2, 2]; 2];
        fails(Spec { lens, symbols: vec![(0b11, 2)], ..Spec::default() }, "matches no symbol");
    }

    #[test]
    fn links_in_several_cycles_are_walked_as_one_chain() {
        let n = ONE_CHAIN_BELOW * 2;
        // Two cycles (as in a periodic block): each row links to the next within its half.
        let half = n / 2;
        let link = |i: usize| (i / half * half + (i + 1) % half) as u32;
        let mut tt: Vec<u32> = (0..n).map(|i| link(i) << 8 | (i % 251) as u32).collect();
        let mut out = Vec::new();
        walk(&mut tt, 3, &mut Vec::new(), &mut out);
        let want: Vec<u8> = (0..n).map(|k| ((3 + k) % half % 251) as u8).collect();
        assert!(out == want);
        // One cycle through every row, whatever rows the chains start at.
        let mut tt: Vec<u32> =
            (0..n).map(|i| (((i + 1) % n) as u32) << 8 | (i % 251) as u32).collect();
        walk(&mut tt, 5, &mut Vec::new(), &mut out);
        let want: Vec<u8> = (0..n).map(|k| ((5 + k) % n % 251) as u8).collect();
        assert!(out == want);
    }

    #[test]
    fn the_crc_matches_bzip2s() {
        // The check value of the CRC-32/BZIP2 parameters.
        let mut c = Crc::default();
        c.update(b"123456789");
        assert_eq!(c.value(), 0xfc89_1918);
        let data = random(7, 1001);
        let mut whole = Crc::default();
        whole.update(&data);
        let mut parts = Crc::default();
        for part in data.chunks(13) {
            parts.update(part);
        }
        assert_eq!(whole.value(), parts.value());
    }
}
