//! Image formats by name: the `Format` enum and what a file name's suffix promises. Below both
//! `image`, which checks a file's content against its name, and `source`, whose `oras://` client
//! picks the layer whose title names an image (see ARCHITECTURE.md).

use serde::Serialize;

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
