//! The decoded size of an image from its metadata alone (qcow2 header, xz index, zstd frame
//! headers), read through positioned reads: for `bty inspect`, the image root's listing and
//! flash planning (`flash::probe`).

use crate::error::{Context, Result};
use crate::image::format::Format;
use crate::image::{qcow2, size};
use crate::io::ReadAt;

/// The decoded size of an image from its metadata alone (qcow2 header, xz index, zstd frame
/// headers, the file size of a raw image), and where it came from or why it is unknown.
/// `display` names the image in errors.
pub fn virtual_size(
    fmt: Format,
    ra: &dyn ReadAt,
    file_size: Option<u64>,
    display: &str,
) -> Result<(Option<u64>, String)> {
    Ok(match fmt {
        Format::Raw => (file_size, "file size".to_string()),
        Format::Qcow2 => {
            let h = qcow2::read_header(ra)
                .with_context(|| format!("reading the qcow2 header of {display}"))?;
            (Some(h.virtual_size), "qcow2 header".into())
        }
        Format::Xz => {
            let info =
                size::xz_info(ra).with_context(|| format!("reading the xz index of {display}"))?;
            (
                Some(info.uncompressed),
                format!("xz index ({} streams, {} blocks)", info.streams, info.blocks),
            )
        }
        Format::Zstd => match size::zstd_content_size(ra)
            .with_context(|| format!("reading the zstd frame headers of {display}"))?
        {
            Some(n) => (Some(n), "zstd frame headers".into()),
            None => (None, "unknown: a zstd frame does not record its content size".into()),
        },
        Format::Gzip => (None, "unknown: gzip does not record it".into()),
        Format::Bzip2 => (None, "unknown: bzip2 does not record it".into()),
    })
}
