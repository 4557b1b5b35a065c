//! Image formats: detection by magic bytes, cross-checked against the file name, and the
//! streaming decoders for each.

use std::io::{self, BufReader, Read};

use crate::error::{Context, Result};

/// How many leading bytes `sniff` needs to tell every format apart (the ISO 9660 marker sits at 0x8001).
pub const SNIFF_LEN: usize = 0x8006;

pub use crate::suffix::{Format, NameHint, hint_from_name};

/// Identifies the format from the first bytes of a file; anything unrecognised is raw.
pub fn sniff(head: &[u8]) -> Format {
    if head.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Format::Zstd
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Format::Xz
    } else if head.len() >= 4 && head.starts_with(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
        Format::Bzip2
    } else if head.starts_with(b"QFI\xfb") {
        Format::Qcow2
    } else {
        Format::Raw
    }
}

/// Whether raw bytes look like an ISO 9660 file system (for display only).
pub fn is_iso9660(head: &[u8]) -> bool {
    head.len() >= 0x8006 && &head[0x8001..0x8006] == b"CD001"
}

/// Whether a decoded stream starts with a tar header ("ustar" magic at offset 257).
pub fn is_tar(decoded: &[u8]) -> bool {
    decoded.len() >= 262 && &decoded[257..262] == b"ustar"
}

/// Detects the format from the content and refuses when the name disagrees or names a tarball.
pub fn detect(name: &str, head: &[u8]) -> Result<Format> {
    let found = sniff(head);
    match hint_from_name(name) {
        NameHint::Tarball => crate::bail!(
            "{name} is a tar archive by its name: tarballs are not disk images (extract the image first)"
        ),
        NameHint::Format(named) if named != found => crate::bail!(
            "{name} is named like a {named} image but its content is {found}: rename it or check the download"
        ),
        _ => Ok(found),
    }
}

/// Wraps a compressed byte stream in the decoder for `format`. Qcow2 is not a stream format and
/// is read through `image::qcow2` instead.
pub fn stream_decoder(format: Format, input: Box<dyn Read + Send>) -> Result<Box<dyn Read + Send>> {
    // Decoders read in small pieces; a larger buffer keeps the number of calls down.
    const INPUT_BUF: usize = 256 * 1024;
    let input = BufReader::with_capacity(INPUT_BUF, input);
    Ok(match format {
        Format::Raw => Box::new(input),
        // Multi-member files (pigz, concatenated gzip) decode as one stream.
        Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Format::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(input).context("starting the zstd decoder")?,
        ),
        Format::Xz => Box::new(MultiXzDecoder::new(input)?),
        // Block-parallel on several cores (src/image/bzip2_mt.rs), libbz2 alone on one.
        Format::Bzip2 => super::bzip2_mt::decoder(input)?,
        Format::Qcow2 => crate::bail!("qcow2 is not a stream format"),
    })
}

/// An xz decoder for concatenated streams that decodes independent blocks on several threads
/// when the file has them (files written by `xz -T0` do); single-block files decode on one.
/// liblzma's threaded decoder has no "concatenated" flag in the bindings, so streams are chained
/// here: at the end of one, stream padding (zero bytes) is skipped and the next one starts.
///
/// Every stream decodes within [`xz_memlimit`]: an xz header declares its dictionary size, and
/// without a limit a crafted image could make bty allocate up to 4 GiB for it.
struct MultiXzDecoder<R: io::BufRead> {
    inner: Option<liblzma::bufread::XzDecoder<R>>,
    limit: u64,
    /// The dictionary the current stream's first block declares, for the refusal message.
    dict: Option<u64>,
}

impl<R: io::BufRead> MultiXzDecoder<R> {
    fn new(input: R) -> Result<Self> {
        let limit = xz_memlimit()?;
        let mut dec = MultiXzDecoder { inner: None, limit, dict: None };
        dec.start(input)
            .map_err(|e| crate::error::Error::msg(format!("starting the xz decoder: {e}")))?;
        Ok(dec)
    }

    /// Starts decoding the stream at the front of `input`.
    fn start(&mut self, mut input: R) -> io::Result<()> {
        self.dict = xz_dictionary(input.fill_buf()?);
        let stream = xz_stream(self.limit).map_err(|e| io::Error::other(e.to_string()))?;
        self.inner = Some(liblzma::bufread::XzDecoder::new_stream(input, stream));
        Ok(())
    }

    /// Turns liblzma's bare "memory limit reached" into a refusal that names the need.
    fn explain(&self, e: io::Error) -> io::Error {
        let hit = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<liblzma::stream::Error>())
            .is_some_and(|i| matches!(i, liblzma::stream::Error::MemLimit));
        if !hit {
            return e;
        }
        let (need, enough) = match self.dict {
            // The decoder's own state is a few dozen KiB besides the dictionary.
            Some(d) => (
                format!("needs {} ({d} bytes) for its dictionary", crate::units::bytes(d)),
                format!("{}MiB", d.div_ceil(1 << 20) + 1),
            ),
            None => ("needs more memory".to_string(), "4GiB".to_string()),
        };
        io::Error::other(format!(
            "refusing to decode the xz stream: it {need}, more than the decoder's limit of {} \
             ({} bytes; set {XZ_MEMLIMIT_ENV}, e.g. {XZ_MEMLIMIT_ENV}={enough}, to allow more)",
            crate::units::bytes(self.limit),
            self.limit
        ))
    }
}

impl<R: io::BufRead> Read for MultiXzDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(dec) = self.inner.as_mut() else { return Ok(0) };
            let n = match dec.read(buf) {
                Ok(n) => n,
                Err(e) => return Err(self.explain(e)),
            };
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Some(dec) = self.inner.take() else { return Ok(0) };
            let mut input = dec.into_inner();
            loop {
                let avail = input.fill_buf()?;
                if avail.is_empty() {
                    return Ok(0);
                }
                let zeros = avail.iter().take_while(|&&b| b == 0).count();
                if zeros == 0 {
                    break;
                }
                input.consume(zeros);
            }
            self.start(input)?;
        }
    }
}

/// Memory a machine must have available before xz decodes blocks on several threads: the
/// threaded decoder buffers whole blocks (24 MiB each for `xz -6`), about 180 MiB on two cores.
const XZ_THREADED_MIN_MEMORY: u64 = 1 << 30;
/// The xz decoder's memory limit unless the environment says otherwise: 1 GiB, or half the
/// machine's RAM when that is less. `xz -9` needs 65 MiB; only crafted or exotic files need more.
const XZ_MEMLIMIT_DEFAULT: u64 = 1 << 30;
/// Sets the xz decoder's memory limit (bytes, or with a K/M/G or KiB/MiB/GiB suffix).
const XZ_MEMLIMIT_ENV: &str = "BTY_XZ_MEMLIMIT";

/// The memory limit for one xz stream: `BTY_XZ_MEMLIMIT`, else the default.
fn xz_memlimit() -> Result<u64> {
    if let Some(v) = std::env::var_os(XZ_MEMLIMIT_ENV).filter(|v| !v.is_empty()) {
        let v = v.to_string_lossy();
        return parse_memsize(&v).with_context(|| format!("reading {XZ_MEMLIMIT_ENV}={v:?}"));
    }
    let half_ram = crate::sys::total_memory().map_or(u64::MAX, |m| m / 2);
    Ok(XZ_MEMLIMIT_DEFAULT.min(half_ram))
}

/// Parses "1536MiB", "2G", "65536": a byte count with an optional binary suffix.
fn parse_memsize(s: &str) -> Result<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        other => crate::bail!("unknown unit {other:?} (use bytes, KiB, MiB or GiB)"),
    };
    let n: u64 = num.parse().map_err(|_| crate::error::Error::msg("not a size in bytes"))?;
    let bytes =
        n.checked_shl(shift).filter(|b| b >> shift == n).context("the size is too large")?;
    crate::ensure!(bytes > 0, "the limit must be more than 0 bytes");
    Ok(bytes)
}

/// The LZMA2 dictionary size the first block header of an xz stream declares, when `head`
/// holds that far (the memory a decoder needs is about this much).
fn xz_dictionary(head: &[u8]) -> Option<u64> {
    let block = head.get(12..)?;
    let size = (usize::from(*block.first()?) + 1) * 4;
    let header = block.get(..size)?;
    let flags = *header.get(1)?;
    let mut pos = 2;
    let varint = |pos: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for i in 0..9 {
            let b = *header.get(*pos)?;
            *pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    for present in [flags & 0x40 != 0, flags & 0x80 != 0] {
        if present {
            varint(&mut pos)?;
        }
    }
    for _ in 0..=(flags & 3) {
        let id = varint(&mut pos)?;
        let props = usize::try_from(varint(&mut pos)?).ok()?;
        if id == 0x21 && props == 1 {
            let d = u32::from(*header.get(pos)? & 0x3f);
            return match d {
                40 => Some(u64::from(u32::MAX)),
                0..40 => Some(u64::from(2 | (d & 1)) << (d / 2 + 11)),
                _ => None,
            };
        }
        pos = pos.checked_add(props)?;
    }
    None
}

/// A decoder that stays within `limit`: threaded when the machine has the cores and the memory
/// (liblzma falls back to one thread when threading would need more than its threading limit),
/// and failing with a memory-limit error when even one thread would need more than `limit`.
fn xz_stream(limit: u64) -> Result<liblzma::stream::Stream> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8) as u32;
    let roomy = crate::sys::available_memory().is_some_and(|m| m >= XZ_THREADED_MIN_MEMORY);
    if threads < 2 || !roomy {
        // Low memory (a small live environment): the plain decoder needs only its dictionary.
        return liblzma::stream::Stream::new_stream_decoder(limit, 0)
            .context("starting the xz decoder");
    }
    liblzma::stream::MtStreamBuilder::new()
        .threads(threads)
        // Below this liblzma would fall back to one thread for -6 blocks on two cores.
        .memlimit_threading((96 << 20).min(limit))
        .memlimit_stop(limit)
        .decoder()
        .context("starting the xz decoder")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_every_magic() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Format::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Format::Zstd);
        assert_eq!(sniff(b"\xfd7zXZ\x00\x00"), Format::Xz);
        assert_eq!(sniff(b"BZh91AY"), Format::Bzip2);
        assert_eq!(sniff(b"BZhx"), Format::Raw);
        assert_eq!(sniff(b"QFI\xfb\0\0\0\x03"), Format::Qcow2);
        assert_eq!(sniff(&[0u8; 512]), Format::Raw);
        assert_eq!(sniff(&[]), Format::Raw);
    }

    #[test]
    fn name_and_magic_must_agree() {
        assert_eq!(detect("disk.img.gz", &[0x1f, 0x8b]).unwrap(), Format::Gzip);
        assert_eq!(detect("disk", &[0x1f, 0x8b]).unwrap(), Format::Gzip);
        let err = detect("disk.img.zst", &[0x1f, 0x8b]).unwrap_err().to_string();
        assert!(err.contains("named like a zstd image but its content is gzip"), "{err}");
        let err = detect("disk.img", &[0x28, 0xb5, 0x2f, 0xfd]).unwrap_err().to_string();
        assert!(err.contains("named like a raw image"), "{err}");
        let err = detect("rootfs.tar.gz", &[0x1f, 0x8b]).unwrap_err().to_string();
        assert!(err.contains("tar archive"), "{err}");
        assert!(detect("x.tgz", &[0x1f, 0x8b]).is_err());
    }

    #[test]
    fn tar_headers_are_recognised() {
        let mut block = vec![0u8; 512];
        block[257..263].copy_from_slice(b"ustar\0");
        assert!(is_tar(&block));
        assert!(!is_tar(&[0u8; 512]));
        assert!(!is_tar(&[0u8; 100]));
    }

    #[test]
    fn xz_memory_sizes_parse_with_binary_units() {
        assert_eq!(parse_memsize("65536").unwrap(), 65536);
        assert_eq!(parse_memsize("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_memsize("2G").unwrap(), 2 << 30);
        assert_eq!(parse_memsize(" 512 kib ").unwrap(), 512 << 10);
        for bad in ["", "0", "MiB", "1TiB", "-1", "99999999999999999999", "17179869184GiB"] {
            assert!(parse_memsize(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn xz_dictionary_is_read_from_the_first_block_header() {
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
        std::io::Write::write_all(&mut enc, b"some bytes").unwrap();
        let x = enc.finish().unwrap();
        // Preset 1 uses a 1 MiB dictionary; the encoder shrinks none for small input here.
        assert_eq!(xz_dictionary(&x), Some(1 << 20));
        assert_eq!(xz_dictionary(&x[..14]), None, "a header cut short");
        assert_eq!(xz_dictionary(b""), None);
        let mut rng = crate::fuzz::Rng::new(crate::fuzz::seed());
        for _ in 0..crate::fuzz::iterations(2000) {
            let _ = xz_dictionary(&crate::fuzz::mutate(&mut rng, &x, 256));
        }
    }
}
