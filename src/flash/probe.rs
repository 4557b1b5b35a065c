//! What an image source is, found without decoding it all: format, sizes, and the partition
//! table of its decoded first MiB. Shared by `bty inspect` and flash planning. Here, not in
//! `image`, because it opens a `Source`: image and source do not import each other.

use std::io::Read;

use serde::Serialize;

use crate::error::{Context, Result};
use crate::image::format::{self, Format};
use crate::image::partitions::{self, PartitionTable};
use crate::image::probe::virtual_size;
use crate::image::qcow2;
use crate::source::Source;

/// How much of the decoded image the probe reads: the first MiB holds MBR/GPT and boot code.
pub const HEAD_LEN: usize = 1 << 20;

/// The result of probing an image source.
#[derive(Debug, Serialize)]
pub struct ImageInfo {
    /// The source as given.
    pub source: String,
    /// Detected format.
    pub format: Format,
    /// Raw bytes that are an ISO 9660 file system (hybrid ISOs are flashable as raw).
    pub iso9660: bool,
    /// Size of the source file (compressed size for compressed formats).
    pub compressed_size: Option<u64>,
    /// Size of the disk image once decoded, when the container says so.
    pub virtual_size: Option<u64>,
    /// Where `virtual_size` came from, or why it is unknown.
    pub virtual_size_source: String,
    /// Partition table found in the decoded first MiB.
    pub partition_table: PartitionTable,
    /// The decoded first MiB (or less for a smaller image).
    #[serde(skip)]
    pub head: Vec<u8>,
}

/// Probes a source: detects the format (refusing name/content disagreements and tarballs),
/// reads the virtual size from metadata, and decodes the first MiB (so a corrupt or tar
/// archive is refused before anything is written).
pub fn probe(src: &Source) -> Result<ImageInfo> {
    let (magic, _) = src.peek(format::SNIFF_LEN)?;
    crate::ensure!(!magic.is_empty(), "reading {}: the source is empty", src.display);
    let fmt = format::detect(&src.name, &magic)?;
    // A remote qcow2 is read by offset through Range requests; everything else remote is
    // probed from the start of its stream, like a pipe (walking zstd frames or an xz index over
    // the network would cost a request per frame).
    let remote_qcow2 = src.is_remote() && fmt == Format::Qcow2;
    if !src.is_seekable() && !remote_qcow2 {
        crate::ensure!(
            fmt != Format::Qcow2,
            "{} is qcow2 from a stream: qcow2 needs random access (save it to a file first)",
            src.display
        );
        let head = decode_head(src, fmt)?;
        crate::ensure!(
            !format::is_tar(&head),
            "{} decodes to a tar archive, not a disk image: extract the image from it first",
            src.display
        );
        return Ok(ImageInfo {
            source: src.display.clone(),
            format: fmt,
            iso9660: fmt == Format::Raw && format::is_iso9660(&magic),
            compressed_size: src.size(),
            virtual_size: None,
            virtual_size_source: if src.is_remote() {
                "unknown: not read ahead from a remote source".into()
            } else {
                "unknown: the source is a stream".into()
            },
            partition_table: partitions::parse(&head),
            head,
        });
    }
    let ra = src.random_access()?;

    let (virtual_size, how) = virtual_size(fmt, ra.as_ref(), src.size(), &src.display)?;

    let head = decode_head(src, fmt)?;
    crate::ensure!(
        !format::is_tar(&head),
        "{} decodes to a tar archive, not a disk image: extract the image from it first",
        src.display
    );
    Ok(ImageInfo {
        source: src.display.clone(),
        format: fmt,
        iso9660: fmt == Format::Raw && format::is_iso9660(&magic),
        compressed_size: src.size(),
        virtual_size,
        virtual_size_source: how,
        partition_table: partitions::parse(&head),
        head,
    })
}

/// How much of a stream the probe buffers to decode the head from (replayed to the flash).
const STREAM_PROBE: usize = 4 << 20;

/// Decodes the first `HEAD_LEN` bytes of the image.
fn decode_head(src: &Source, fmt: Format) -> Result<Vec<u8>> {
    let mut head = vec![0u8; HEAD_LEN];
    let n = if fmt == Format::Qcow2 {
        let mut r = qcow2::Qcow2Reader::open(src.random_access()?)
            .with_context(|| format!("opening {} as qcow2", src.display))?;
        crate::io::read_full(&mut r, &mut head)
    } else if src.is_seekable() {
        let mut r = format::stream_decoder(fmt, src.reader()?)?;
        crate::io::read_full(r.as_mut(), &mut head)
    } else {
        // A stream is probed from a buffered prefix. When the prefix is not the whole stream, a
        // decoder running out of input is expected: keep what it produced; the flash itself
        // decodes everything and catches real corruption.
        let (prefix, whole) = src.peek(STREAM_PROBE)?;
        let mut r = format::stream_decoder(fmt, Box::new(std::io::Cursor::new(prefix)))?;
        let mut n = 0;
        while n < head.len() {
            match r.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(_) if !whole => break,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("decoding the first MiB of {} as {fmt}", src.display)
                    });
                }
            }
        }
        Ok(n)
    }
    .with_context(|| format!("decoding the first MiB of {} as {fmt}", src.display))?;
    head.truncate(n);
    Ok(head)
}
