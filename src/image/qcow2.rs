//! Native qcow2 reader: turns a qcow2 v2/v3 image into the guest disk's bytes without qemu-img.
//!
//! Layout (qemu's docs/interop/qcow2.txt): a big-endian header, an L1 table of pointers to L2
//! tables, and L2 tables of pointers to data clusters, which may be zlib- or zstd-compressed.
//! Only self-contained images are read: backing files, encryption, external data files and
//! extended L2 entries are refused with a message that says so.

use std::io::{self, Read};

use flate2::{Decompress, FlushDecompress, Status};
use zstd::stream::raw::{Decoder as ZstdDecoder, Operation};

use crate::error::{Context, Error, Result};
use crate::io::ReadAt;

const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Bytes of the v2 header; v3 adds fields up to `header_length`.
const V2_HEADER_LEN: usize = 72;
/// The v3 header up to and including the compression type byte and its padding.
const V3_HEADER_LEN: usize = 112;
const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;
/// qemu refuses active L1 tables larger than this (QCOW_MAX_L1_SIZE); so do we, which also
/// bounds what a hostile header can make us allocate.
const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu caps backing file names at 1023 bytes; we only read the name for the message.
const MAX_BACKING_NAME: u32 = 1023;
/// The L1 table is read this much at a time.
const L1_CHUNK: usize = 1 << 20;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// Bits 9-55 of L1 and standard L2 entries hold the host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1 << 0;

/// Header extension that names feature bits (lets us name unknown incompatible features).
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;

/// How compressed clusters are compressed (one method per image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Raw deflate (no zlib header), the default and the only choice in v2.
    Zlib,
    /// zstd frames (v3 with incompatible feature bit 3).
    Zstd,
}

/// The parts of a qcow2 header that matter for reading the guest disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size, 9..=21.
    pub cluster_bits: u32,
    /// Size of the guest disk in bytes.
    pub virtual_size: u64,
    /// Method used by compressed clusters.
    pub compression: Compression,
    /// Entries in the L1 table as the header declares them.
    pub l1_size: u32,
    /// Host offset of the L1 table.
    pub l1_table_offset: u64,
    /// Incompatible feature bits (v3; 0 for v2).
    pub incompatible_features: u64,
    /// Compatible feature bits (v3; 0 for v2).
    pub compatible_features: u64,
    /// Autoclear feature bits (v3; 0 for v2).
    pub autoclear_features: u64,
    /// The image was not closed cleanly: refcounts may be stale, but the mapping we read is
    /// written before the guest sees a write complete, so the data is still good.
    pub dirty: bool,
    /// Internal snapshots; they are ignored (we read the active state).
    pub nb_snapshots: u32,
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// L1 entries needed to map the whole virtual size.
    fn l1_entries_needed(&self) -> u64 {
        // Each L2 table is one cluster of 8-byte entries, each mapping one cluster.
        let bytes_per_l2 = 1u64 << (2 * self.cluster_bits - 3);
        self.virtual_size.div_ceil(bytes_per_l2)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Lists set bits as "3, 7" for messages.
fn bit_list(bits: u64) -> String {
    (0..64).filter(|b| bits & (1 << b) != 0).map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
}

/// Parses and validates the header; every refusal is an Err whose message names the reason.
pub fn read_header(src: &dyn ReadAt) -> Result<Header> {
    let mut h = [0u8; V3_HEADER_LEN];
    let got = src.read_full_at(&mut h, 0).context("reading qcow2 header")?;
    crate::ensure!(got >= 4 && &h[..4] == MAGIC, "not a qcow2 image: bad magic");
    let version = be32(&h, 4);
    crate::ensure!(
        version == 2 || version == 3,
        "unsupported qcow2 version {version} (only versions 2 and 3 exist)"
    );
    crate::ensure!(
        got >= V2_HEADER_LEN,
        "qcow2 header is truncated: the file has only {got} bytes"
    );

    let backing_file_offset = be64(&h, 8);
    let backing_file_size = be32(&h, 16);
    let cluster_bits = be32(&h, 20);
    let virtual_size = be64(&h, 24);
    let crypt_method = be32(&h, 32);
    let l1_size = be32(&h, 36);
    let l1_table_offset = be64(&h, 40);
    let nb_snapshots = be32(&h, 60);

    let (mut incompatible, mut compatible, mut autoclear) = (0, 0, 0);
    let mut header_length = V2_HEADER_LEN as u32;
    let mut compression_type = 0u8;
    if version == 3 {
        crate::ensure!(got >= 104, "qcow2 v3 header is truncated: the file has only {got} bytes");
        incompatible = be64(&h, 72);
        compatible = be64(&h, 80);
        autoclear = be64(&h, 88);
        header_length = be32(&h, 100);
        crate::ensure!(
            header_length >= 104,
            "qcow2 v3 header length {header_length} is smaller than the minimum 104"
        );
        if header_length > 104 {
            crate::ensure!(
                got > 104,
                "qcow2 v3 header is truncated: the file has only {got} bytes"
            );
            compression_type = h[104];
        }
    }

    if backing_file_offset != 0 {
        let name = backing_name(src, backing_file_offset, backing_file_size);
        crate::bail!(
            "qcow2 image has a backing file '{name}'; flatten it first with qemu-img convert"
        );
    }
    crate::ensure!(
        crypt_method == 0,
        "qcow2 image is encrypted ({}); decrypt it first with qemu-img convert",
        match crypt_method {
            1 => "AES".to_string(),
            2 => "LUKS".to_string(),
            n => format!("method {n}"),
        }
    );
    crate::ensure!(
        incompatible & INCOMPAT_CORRUPT == 0,
        "qcow2 image is marked corrupt; repair it with qemu-img check -r all first"
    );
    crate::ensure!(
        incompatible & INCOMPAT_DATA_FILE == 0,
        "qcow2 image keeps its data in an external data file, which is not supported; \
         convert it to a self-contained image first with qemu-img convert"
    );
    crate::ensure!(
        incompatible & INCOMPAT_EXTL2 == 0,
        "qcow2 image uses extended L2 entries (subclusters), which are not supported; \
         convert it first with qemu-img convert"
    );
    let unknown = incompatible & !INCOMPAT_KNOWN;
    if unknown != 0 {
        let names = feature_names(src, header_length, cluster_bits, unknown);
        crate::bail!(
            "qcow2 image uses unknown incompatible features (bits {}{names}); cannot read it",
            bit_list(unknown)
        );
    }
    let compression = match compression_type {
        0 => Compression::Zlib,
        1 => Compression::Zstd,
        n => crate::bail!("qcow2 image uses unknown compression type {n}"),
    };
    crate::ensure!(
        (incompatible & INCOMPAT_COMPRESSION != 0) == (compression_type != 0),
        "qcow2 header is inconsistent: compression type {compression_type} with the \
         compression-type feature bit {}",
        if incompatible & INCOMPAT_COMPRESSION != 0 { "set" } else { "clear" }
    );
    crate::ensure!(
        (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits),
        "qcow2 cluster_bits {cluster_bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
    );

    let header = Header {
        version,
        cluster_bits,
        virtual_size,
        compression,
        l1_size,
        l1_table_offset,
        incompatible_features: incompatible,
        compatible_features: compatible,
        autoclear_features: autoclear,
        dirty: incompatible & INCOMPAT_DIRTY != 0,
        nb_snapshots,
    };

    let needed = header.l1_entries_needed();
    crate::ensure!(
        needed.saturating_mul(8) <= MAX_L1_BYTES,
        "qcow2 virtual size {virtual_size} is too large (its L1 table would need {needed} entries)"
    );
    crate::ensure!(
        u64::from(l1_size) >= needed,
        "qcow2 L1 table has {l1_size} entries, too few for a virtual size of {virtual_size} \
         bytes (needs {needed}); the image is corrupt"
    );
    if needed > 0 {
        crate::ensure!(
            l1_table_offset & (header.cluster_size() - 1) == 0,
            "qcow2 L1 table offset {l1_table_offset} is not cluster-aligned; the image is corrupt"
        );
        if let Some(file_size) = src.size() {
            let end = l1_table_offset.saturating_add(needed * 8);
            crate::ensure!(
                end <= file_size,
                "qcow2 L1 table at offset {l1_table_offset} ({} bytes) extends beyond the end of \
                 the file ({file_size} bytes); the image is truncated or corrupt",
                needed * 8
            );
        }
    }
    Ok(header)
}

/// The backing file's name for the refusal message; best effort, since we refuse either way.
fn backing_name(src: &dyn ReadAt, offset: u64, size: u32) -> String {
    let mut buf = vec![0u8; size.min(MAX_BACKING_NAME) as usize];
    match src.read_full_at(&mut buf, offset) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => "?".to_string(),
    }
}

/// Names of `bits` from the feature name table extension, as ` ("a", "b")`, or "" if absent.
fn feature_names(src: &dyn ReadAt, header_length: u32, cluster_bits: u32, bits: u64) -> String {
    // Extensions live in the first cluster; an implausible cluster size just limits the search.
    let limit = 1usize << cluster_bits.clamp(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS);
    let mut buf = vec![0u8; limit];
    let Ok(n) = src.read_full_at(&mut buf, 0) else { return String::new() };
    let buf = &buf[..n];
    let mut at = header_length as usize;
    let mut names = Vec::new();
    while at + 8 <= buf.len() {
        let kind = be32(buf, at);
        let len = be32(buf, at + 4) as usize;
        let data_start = at + 8;
        let Some(data_end) = data_start.checked_add(len).filter(|&e| e <= buf.len()) else {
            break;
        };
        if kind == 0 {
            break;
        }
        if kind == EXT_FEATURE_NAMES {
            for entry in buf[data_start..data_end].chunks_exact(48) {
                // Type 0 is the incompatible feature set.
                if entry[0] == 0 && entry[1] < 64 && bits & (1 << entry[1]) != 0 {
                    let name = &entry[2..];
                    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                    names.push(format!("\"{}\"", String::from_utf8_lossy(&name[..end])));
                }
            }
        }
        at = data_end.div_ceil(8) * 8;
    }
    if names.is_empty() { String::new() } else { format!(": {}", names.join(", ")) }
}

/// Where a run of guest clusters comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// Unallocated or a zero cluster: reads as zeros.
    Zero,
    /// A standard cluster at this host offset.
    Data(u64),
    /// A compressed cluster: its raw L2 entry.
    Compressed(u64),
}

/// Reads the guest disk of a qcow2 image sequentially, as `std::io::Read`.
pub struct Qcow2Reader {
    src: Box<dyn ReadAt>,
    header: Header,
    file_size: Option<u64>,
    cluster_bits: u32,
    cluster_size: u64,
    /// log2 of entries per L2 table.
    l2_bits: u32,
    /// The L1 entries covering the virtual size (a longer declared table is not read).
    l1: Vec<u64>,
    /// The cached L2 table, raw big-endian, and the L1 index it belongs to.
    l2: Vec<u8>,
    l2_index: Option<u64>,
    /// Guest position of the next byte `read` returns.
    pos: u64,
    /// The last decompressed cluster (cluster_size + 1 bytes: the spare byte detects overlong
    /// streams) and its guest cluster index, for callers whose reads split a cluster.
    cluster_buf: Vec<u8>,
    cached_cluster: Option<u64>,
    compressed_buf: Vec<u8>,
    inflate: Option<Decompress>,
    zstd: Option<ZstdDecoder<'static>>,
}

impl Qcow2Reader {
    /// Validates the header and loads the L1 table.
    pub fn open(src: Box<dyn ReadAt>) -> Result<Qcow2Reader> {
        let header = read_header(&*src)?;
        let needed = header.l1_entries_needed();
        // read_header bounded `needed` by MAX_L1_BYTES and by the file's size; a source of
        // unknown size is read in chunks, so a table that is not there fails before the
        // declared size is allocated.
        let total = (needed * 8) as usize;
        let mut raw = Vec::new();
        while raw.len() < total {
            let start = raw.len();
            let n = (total - start).min(L1_CHUNK);
            raw.reserve_exact(n);
            raw.resize(start + n, 0);
            let at = header.l1_table_offset + start as u64;
            src.read_exact_at(&mut raw[start..], at).with_context(|| {
                format!(
                    "reading qcow2 L1 table at offset {} ({total} bytes)",
                    header.l1_table_offset
                )
            })?;
        }
        let l1 = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        let cluster_bits = header.cluster_bits;
        Ok(Qcow2Reader {
            file_size: src.size(),
            src,
            cluster_bits,
            cluster_size: 1 << cluster_bits,
            l2_bits: cluster_bits - 3,
            l1,
            l2: Vec::new(),
            l2_index: None,
            pos: 0,
            cluster_buf: Vec::new(),
            cached_cluster: None,
            compressed_buf: Vec::new(),
            inflate: None,
            zstd: None,
            header,
        })
    }

    /// Size of the guest disk in bytes: exactly what `read` yields in total.
    pub fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Maps guest cluster `c`; returns the mapping and how many clusters from `c` it covers
    /// (more than one only for a whole unallocated L2 range).
    fn map(&mut self, c: u64) -> Result<(Mapping, u64)> {
        let l2_entries = 1u64 << self.l2_bits;
        let l1_index = c >> self.l2_bits;
        let l2_slot = c & (l2_entries - 1);
        let Some(&l1_entry) = self.l1.get(l1_index as usize) else {
            crate::bail!("qcow2 guest cluster {c} is beyond the L1 table");
        };
        let l2_offset = l1_entry & OFFSET_MASK;
        if l2_offset == 0 {
            return Ok((Mapping::Zero, l2_entries - l2_slot));
        }
        if self.l2_index != Some(l1_index) {
            self.load_l2(l1_index, l2_offset)?;
        }
        let entry = be64(&self.l2, (l2_slot * 8) as usize);
        if entry & L2_COMPRESSED != 0 {
            return Ok((Mapping::Compressed(entry), 1));
        }
        // qemu honours the zero flag regardless of version; so do we.
        if entry & L2_ZERO != 0 {
            return Ok((Mapping::Zero, 1));
        }
        let host = entry & OFFSET_MASK;
        if host == 0 {
            return Ok((Mapping::Zero, 1));
        }
        crate::ensure!(
            host & (self.cluster_size - 1) == 0,
            "qcow2 L2 entry for guest cluster {c} points to unaligned host offset {host}; \
             the image is corrupt"
        );
        Ok((Mapping::Data(host), 1))
    }

    fn load_l2(&mut self, l1_index: u64, offset: u64) -> Result<()> {
        let what = || format!("reading qcow2 L2 table at offset {offset} (L1 entry {l1_index})");
        crate::ensure!(
            offset & (self.cluster_size - 1) == 0,
            "{}: offset is not cluster-aligned; the image is corrupt",
            what()
        );
        if let Some(size) = self.file_size {
            crate::ensure!(
                offset.saturating_add(self.cluster_size) <= size,
                "{}: beyond the end of the file ({size} bytes); the image is truncated or corrupt",
                what()
            );
        }
        // Forget the old table first, so a failed read never leaves a stale one marked valid.
        self.l2_index = None;
        self.l2.resize(self.cluster_size as usize, 0);
        self.src.read_exact_at(&mut self.l2, offset).with_context(what)?;
        self.l2_index = Some(l1_index);
        Ok(())
    }

    /// Decompresses guest cluster `c` (L2 entry `entry`) into `cluster_buf`.
    fn decompress(&mut self, c: u64, entry: u64) -> Result<()> {
        if self.cached_cluster == Some(c) {
            return Ok(());
        }
        self.cached_cluster = None;
        let cs = self.cluster_size as usize;
        let shift = 62 - (self.cluster_bits - 8);
        let offset = entry & ((1u64 << shift) - 1);
        let sectors = ((entry >> shift) & ((1u64 << (self.cluster_bits - 8)) - 1)) + 1;
        // The count covers whole 512-byte sectors from the one holding the first byte.
        let csize = (sectors * 512 - (offset & 511)) as usize;
        let what = || format!("reading qcow2 compressed cluster {c} at offset {offset}");
        if let Some(size) = self.file_size {
            crate::ensure!(
                offset < size,
                "{}: beyond the end of the file ({size} bytes); the image is truncated or corrupt",
                what()
            );
        }
        self.compressed_buf.resize(csize, 0);
        // The last sector of the last compressed cluster may be cut short by the end of the file
        // (qemu writes exactly the compressed bytes); whatever is missing, decompression notices.
        let n = self.src.read_full_at(&mut self.compressed_buf, offset).with_context(what)?;
        crate::ensure!(n > 0, "{}: the image is truncated", what());
        let input = &self.compressed_buf[..n];
        self.cluster_buf.resize(cs + 1, 0);
        let out = &mut self.cluster_buf[..];
        let produced = match self.header.compression {
            Compression::Zlib => {
                let d = self.inflate.get_or_insert_with(|| Decompress::new(false));
                inflate_cluster(d, input, out)
            }
            Compression::Zstd => {
                let mut d = match self.zstd.take() {
                    Some(d) => d,
                    None => ZstdDecoder::new().context("creating zstd decoder")?,
                };
                let r = unzstd_cluster(&mut d, input, out);
                self.zstd = Some(d);
                r
            }
        };
        let cut = if n < csize {
            "; the compressed data runs past the end of the file, so the image is truncated"
        } else {
            ""
        };
        let produced = produced
            .with_context(|| format!("decompressing qcow2 cluster {c} at offset {offset}{cut}"))?;
        crate::ensure!(
            produced == cs,
            "decompressing qcow2 cluster {c} at offset {offset}: got {}{produced} bytes, \
             expected exactly {cs}{cut}",
            if produced > cs { "more than " } else { "" }
        );
        self.cached_cluster = Some(c);
        Ok(())
    }

    /// Fills `buf` from the guest position; returns bytes filled, or an error if none were.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let remaining_disk = self.header.virtual_size.saturating_sub(self.pos);
        let want = buf.len().min(usize::try_from(remaining_disk).unwrap_or(usize::MAX));
        let mut filled = 0;
        while filled < want {
            match self.fill_run(&mut buf[filled..want]) {
                Ok(n) => {
                    filled += n;
                    self.pos += n as u64;
                }
                // io::Read promises that an error means nothing was read: hand over what we
                // have, and the next call meets the error again.
                Err(_) if filled > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    /// Fills the start of `buf` with one run from `self.pos`: consecutive zero clusters, host-
    /// contiguous data clusters, or (part of) one compressed cluster. Returns the bytes filled.
    fn fill_run(&mut self, buf: &mut [u8]) -> Result<usize> {
        let g = self.pos;
        let c = g >> self.cluster_bits;
        let in_cluster = g & (self.cluster_size - 1);
        let (first, mut count) = self.map(c)?;
        let space = buf.len() as u64;
        if let Mapping::Compressed(entry) = first {
            self.decompress(c, entry)?;
            let start = in_cluster as usize;
            let n = (self.cluster_size - in_cluster).min(space) as usize;
            buf[..n].copy_from_slice(&self.cluster_buf[start..start + n]);
            return Ok(n);
        }
        // Extend the run while it can be served by the same memset or the same single read.
        while count * self.cluster_size - in_cluster < space {
            let next = c + count;
            let Ok((m, more)) = self.map(next) else { break };
            let joins = match (first, m) {
                (Mapping::Zero, Mapping::Zero) => true,
                (Mapping::Data(h0), Mapping::Data(h)) => h0 + count * self.cluster_size == h,
                _ => false,
            };
            if !joins {
                break;
            }
            count += more;
        }
        let n = (count * self.cluster_size - in_cluster).min(space) as usize;
        if let Mapping::Data(host) = first {
            let at = host + in_cluster;
            self.src.read_exact_at(&mut buf[..n], at).with_context(|| {
                format!(
                    "reading qcow2 data at offset {at} ({n} bytes for guest offset {g}){}",
                    match self.file_size {
                        Some(size) if at + n as u64 > size => "; the image is truncated",
                        _ => "",
                    }
                )
            })?;
        } else {
            // Compressed clusters returned above, so this run is zeros.
            buf[..n].fill(0);
        }
        Ok(n)
    }
}

/// Inflates raw deflate `input` into `out`, returning the bytes produced (at most `out.len()`).
fn inflate_cluster(d: &mut Decompress, input: &[u8], out: &mut [u8]) -> Result<usize> {
    d.reset(false);
    loop {
        let (in_pos, out_pos) = (d.total_in() as usize, d.total_out() as usize);
        let status = d
            .decompress(&input[in_pos..], &mut out[out_pos..], FlushDecompress::Finish)
            .map_err(|e| Error::msg(format!("invalid deflate data: {e}")))?;
        let (new_in, new_out) = (d.total_in() as usize, d.total_out() as usize);
        if status == Status::StreamEnd || new_out == out.len() {
            return Ok(new_out);
        }
        if new_in == in_pos && new_out == out_pos {
            // Out of input before the end of the stream: the data is cut short.
            return Ok(new_out);
        }
    }
}

/// Decodes zstd frames from `input` into `out`, returning the bytes produced; like qemu, stops
/// at the end of a frame once the output is full enough, ignoring the sector padding after it.
fn unzstd_cluster(d: &mut ZstdDecoder<'static>, input: &[u8], out: &mut [u8]) -> Result<usize> {
    d.reinit().context("resetting zstd decoder")?;
    let target = out.len() - 1;
    let (mut in_pos, mut out_pos) = (0, 0);
    loop {
        let st = d
            .run_on_buffers(&input[in_pos..], &mut out[out_pos..])
            .map_err(|e| Error::msg(format!("invalid zstd data: {e}")))?;
        in_pos += st.bytes_read;
        out_pos += st.bytes_written;
        if out_pos > target {
            return Ok(out_pos);
        }
        if st.remaining == 0 && out_pos == target {
            return Ok(out_pos);
        }
        if st.bytes_read == 0 && st.bytes_written == 0 {
            return Ok(out_pos);
        }
        if st.remaining == 0 && in_pos == input.len() {
            return Ok(out_pos);
        }
    }
}

impl Read for Qcow2Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill(buf).map_err(|e| {
            io::Error::new(e.io_kind().unwrap_or(io::ErrorKind::InvalidData), e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::{self, Rng};

    const CB: u32 = 9;
    const CS: usize = 1 << CB;

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    fn put64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }

    /// A small valid image from bytes, 512-byte clusters: header, L1 (2 entries), two L2
    /// tables, and guest clusters that are data, contiguous data, a zero flag, zlib-compressed,
    /// unallocated, and one mapped through the second L2 table.
    fn image(version: u32) -> (Vec<u8>, Vec<u8>) {
        let virtual_size = 2 * 64 * CS as u64;
        let mut guest = vec![0u8; virtual_size as usize];
        let mut f = vec![0u8; 9 * CS];
        put32(&mut f, 0, u32::from_be_bytes(*MAGIC));
        put32(&mut f, 4, version);
        put32(&mut f, 20, CB);
        put64(&mut f, 24, virtual_size);
        put32(&mut f, 36, 2);
        put64(&mut f, 40, CS as u64);
        if version == 3 {
            put32(&mut f, 96, 4);
            put32(&mut f, 100, V3_HEADER_LEN as u32);
        }
        let (l2a, l2b) = (2 * CS, 3 * CS);
        put64(&mut f, CS, l2a as u64 | 1 << 63);
        put64(&mut f, CS + 8, l2b as u64 | 1 << 63);
        let mut data = |f: &mut Vec<u8>, guest_cluster: usize, host: usize, seed: u8| {
            let bytes: Vec<u8> = (0..CS).map(|i| (i as u8).wrapping_mul(seed) ^ seed).collect();
            f[host..host + CS].copy_from_slice(&bytes);
            guest[guest_cluster * CS..][..CS].copy_from_slice(&bytes);
            let l2 = if guest_cluster < 64 { l2a } else { l2b };
            put64(f, l2 + (guest_cluster % 64) * 8, host as u64 | 1 << 63);
        };
        data(&mut f, 0, 4 * CS, 3);
        data(&mut f, 1, 5 * CS, 5);
        data(&mut f, 64, 6 * CS, 7);
        put64(&mut f, l2a + 2 * 8, 1);
        let plain: Vec<u8> = (0..CS).map(|i| (i / 7) as u8).collect();
        let mut z = flate2::Compress::new(flate2::Compression::default(), false);
        let mut packed = Vec::with_capacity(CS);
        z.compress_vec(&plain, &mut packed, flate2::FlushCompress::Finish).unwrap();
        assert!(packed.len() < CS);
        let at = 7 * CS + 100;
        f[at..at + packed.len()].copy_from_slice(&packed);
        let sectors = ((at % 512 + packed.len()).div_ceil(512) - 1) as u64;
        put64(&mut f, l2a + 3 * 8, L2_COMPRESSED | sectors << (62 - (CB - 8)) | at as u64);
        guest[3 * CS..4 * CS].copy_from_slice(&plain);
        (f, guest)
    }

    fn read_all(src: Vec<u8>) -> Result<Vec<u8>> {
        let mut r = Qcow2Reader::open(Box::new(src))?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| Error::msg(e.to_string()))?;
        Ok(out)
    }

    #[test]
    fn images_built_from_bytes_read_back() {
        for version in [2, 3] {
            let (f, guest) = image(version);
            assert!(read_all(f).unwrap() == guest, "v{version}");
        }
    }

    /// A source that records the largest read asked of it (the reader's buffers are sized by
    /// its reads), and may hide its size (as a remote one may): the reader must then bound what
    /// it asks for by its own limits, not by what the header declares.
    struct Watched {
        data: Vec<u8>,
        sized: bool,
        largest: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl ReadAt for Watched {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.largest.fetch_max(buf.len(), std::sync::atomic::Ordering::Relaxed);
            self.data.read_at(buf, offset)
        }
        fn size(&self) -> Option<u64> {
            self.sized.then_some(self.data.len() as u64)
        }
    }

    /// Values that tend to break size arithmetic, for header fields and table entries.
    const NASTY: [u64; 12] = [
        0,
        1,
        511,
        512,
        u32::MAX as u64,
        1 << 31,
        1 << 62,
        (1 << 62) | 0x3fff_ffff_ffff_ffff,
        OFFSET_MASK,
        u64::MAX,
        u64::MAX - 511,
        1 << 40,
    ];

    /// One hostile variant of a valid image: a field or table entry set to a nasty value,
    /// a byte-level mutation of the header or of a table (offsets kept), or of the whole file.
    fn hostile(rng: &mut Rng, f: &[u8]) -> Vec<u8> {
        let mut m = f.to_vec();
        let regions = [(0, V3_HEADER_LEN), (CS, 2 * CS), (2 * CS, 4 * CS)];
        for _ in 0..=rng.below(3) {
            let (start, end) = *rng.pick(&regions);
            match rng.below(4) {
                0 => {
                    let at = start + rng.below((end - start) / 4) * 4;
                    let v = *rng.pick(&NASTY);
                    if at + 8 <= m.len() && rng.chance(2) {
                        put64(&mut m, at, v);
                    } else if at + 4 <= m.len() {
                        put32(&mut m, at, v as u32);
                    }
                }
                1 | 2 => {
                    let end = end.min(m.len());
                    if start < end {
                        let mut part = fuzz::mutate(rng, &m[start..end], end - start);
                        part.resize(end - start, 0);
                        m[start..end].copy_from_slice(&part);
                    }
                }
                _ => m = fuzz::mutate(rng, &m, f.len() + 4096),
            }
        }
        m
    }

    /// Seeded mutations of valid headers and L1/L2 tables through the reader: no panic, every
    /// failure a message, buffers bounded by the format's limits whatever the header declares,
    /// and never more guest bytes than the declared virtual size.
    #[test]
    fn fuzzed_headers_and_tables_fail_cleanly_within_bounded_memory() {
        let seeds = [image(2).0, image(3).0];
        // The largest L1 table the limits allow, declared by a file of a few KiB whose size
        // the source does not tell: refused once the data runs out, not allocated up front.
        let mut big = seeds[1].clone();
        let entries = MAX_L1_BYTES / 8;
        put64(&mut big, 24, entries << (2 * CB - 3));
        put32(&mut big, 36, entries as u32);
        let largest = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let src = Watched { data: big, sized: false, largest: largest.clone() };
        let e = Qcow2Reader::open(Box::new(src)).err().expect("a declared table that is not there");
        assert!(e.to_string().contains("reading qcow2 L1 table"), "{e}");
        assert!(largest.load(std::sync::atomic::Ordering::Relaxed) <= L1_CHUNK);

        let mut rng = Rng::new(fuzz::seed());
        let mut failed = 0;
        let iterations = fuzz::iterations(10_000);
        for i in 0..iterations {
            let seed = rng.pick(&seeds).clone();
            let input = hostile(&mut rng, &seed);
            let file_len = input.len();
            let largest = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let sized = !rng.chance(8);
            let src = Watched { data: input, sized, largest: largest.clone() };
            // Never more than the file, a chunk of the L1 table, or a (compressed) cluster.
            let cluster_max = 1usize << MAX_CLUSTER_BITS;
            let bound = file_len.max(L1_CHUNK).max(2 * cluster_max);
            let asked = || largest.load(std::sync::atomic::Ordering::Relaxed);
            let mut r = match Qcow2Reader::open(Box::new(src)) {
                Ok(r) => r,
                Err(e) => {
                    assert!(!e.to_string().is_empty(), "iteration {i}: an empty error");
                    assert!(asked() <= bound, "iteration {i}: a read of {} bytes", asked());
                    failed += 1;
                    continue;
                }
            };
            assert!(r.l1.len() * 8 <= file_len, "iteration {i}: L1 of {}", r.l1.len());
            // At most 1 MiB of guest bytes, in odd-sized reads: enough to cross every table.
            let mut buf = vec![0u8; 3000];
            let mut total = 0u64;
            for _ in 0..400 {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) => {
                        assert!(!e.to_string().is_empty(), "iteration {i}: an empty error");
                        failed += 1;
                        break;
                    }
                }
                if total >= 1 << 20 {
                    break;
                }
            }
            assert!(total <= r.virtual_size(), "iteration {i}: read past the virtual size");
            assert!(asked() <= bound.max(buf.len()), "iteration {i}: a read of {} bytes", asked());
            assert!(r.l2.capacity() <= cluster_max, "iteration {i}");
            assert!(r.cluster_buf.capacity() <= cluster_max + 1, "iteration {i}");
            assert!(r.compressed_buf.capacity() <= 2 * cluster_max, "iteration {i}");
        }
        assert!(failed > iterations / 10, "the mutations reach the checks ({failed} failed)");
    }
}
