//! Image formats: detection by magic bytes, cross-checked against the file name, and the
//! streaming decoders for each.

use std::io::{self, BufReader, Read};

use serde::Serialize;

use crate::error::{Context, Result};

/// How many leading bytes `sniff` needs to tell every format apart (the ISO 9660 marker sits at 0x8001).
pub const SNIFF_LEN: usize = 0x8006;

/// An image encoding we can write to a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Gzip,
    Zstd,
    Xz,
    Bzip2,
    Qcow2,
}

impl Format {
    /// Short lower-case name, as in catalogs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
            Format::Xz => "xz",
            Format::Bzip2 => "bzip2",
            Format::Qcow2 => "qcow2",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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

/// What a file name says about its format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameHint {
    Format(Format),
    Tarball,
    Unknown,
}

/// Reads the format a file name promises from its suffix.
pub fn hint_from_name(name: &str) -> NameHint {
    let lower = name.to_ascii_lowercase();
    const TARBALL: [&str; 9] =
        [".tar", ".tgz", ".tbz", ".tbz2", ".txz", ".tzst", ".tar.gz", ".tar.xz", ".tar.zst"];
    if TARBALL.iter().any(|s| lower.ends_with(s)) || lower.contains(".tar.") {
        return NameHint::Tarball;
    }
    let ext = lower.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "gz" | "gzip" => NameHint::Format(Format::Gzip),
        "zst" | "zstd" => NameHint::Format(Format::Zstd),
        "xz" => NameHint::Format(Format::Xz),
        "bz2" | "bzip2" => NameHint::Format(Format::Bzip2),
        "qcow2" | "qcow" => NameHint::Format(Format::Qcow2),
        "img" | "raw" | "iso" | "bin" | "dd" => NameHint::Format(Format::Raw),
        _ => NameHint::Unknown,
    }
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
        Format::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(input)),
        Format::Qcow2 => crate::bail!("qcow2 is not a stream format"),
    })
}

/// An xz decoder for concatenated streams that decodes independent blocks on several threads
/// when the file has them (files written by `xz -T0` do); single-block files decode on one.
/// liblzma's threaded decoder has no "concatenated" flag in the bindings, so streams are chained
/// here: at the end of one, stream padding (zero bytes) is skipped and the next one starts.
struct MultiXzDecoder<R: io::BufRead> {
    inner: Option<liblzma::bufread::XzDecoder<R>>,
}

impl<R: io::BufRead> MultiXzDecoder<R> {
    fn new(input: R) -> Result<Self> {
        Ok(MultiXzDecoder {
            inner: Some(liblzma::bufread::XzDecoder::new_stream(input, xz_stream()?)),
        })
    }
}

impl<R: io::BufRead> Read for MultiXzDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(dec) = self.inner.as_mut() else { return Ok(0) };
            let n = dec.read(buf)?;
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
            let stream = xz_stream().map_err(|e| io::Error::other(e.to_string()))?;
            self.inner = Some(liblzma::bufread::XzDecoder::new_stream(input, stream));
        }
    }
}

/// Memory a machine must have available before xz decodes blocks on several threads: the
/// threaded decoder buffers whole blocks (24 MiB each for `xz -6`), about 180 MiB on two cores.
const XZ_THREADED_MIN_MEMORY: u64 = 1 << 30;

fn xz_stream() -> Result<liblzma::stream::Stream> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8) as u32;
    let roomy = crate::sys::available_memory().is_some_and(|m| m >= XZ_THREADED_MIN_MEMORY);
    if threads < 2 || !roomy {
        // Low memory (a small live environment): the plain decoder needs only its dictionary.
        return liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0)
            .context("starting the xz decoder");
    }
    liblzma::stream::MtStreamBuilder::new()
        .threads(threads)
        // Below this liblzma would fall back to one thread for -6 blocks on two cores.
        .memlimit_threading(96 << 20)
        .memlimit_stop(u64::MAX)
        .decoder()
        .context("starting the xz decoder")
}

/// Reads until `buf` is full or the stream ends; returns the number of bytes read.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
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
}
