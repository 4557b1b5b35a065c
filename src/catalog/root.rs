//! The image root (the directory of flashable images the bty CLI offers, by default the USB live
//! stick's BTY_IMAGES partition at /var/lib/bty/images) and the list `bty images` shows: the
//! image root first, then a catalog's entries that are not already there.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::{self, Catalog};
use crate::error::{Context, Result};
use crate::image::format::{self, Format, NameHint};
use crate::image::probe;

/// Where the image root is when `BTY_IMAGE_ROOT` is not set.
pub const DEFAULT_IMAGE_ROOT: &str = "/var/lib/bty/images";

/// The image root: `BTY_IMAGE_ROOT` when set and not empty, else `DEFAULT_IMAGE_ROOT`.
pub fn default_image_root() -> PathBuf {
    match std::env::var_os("BTY_IMAGE_ROOT") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_IMAGE_ROOT),
    }
}

/// An image file found in the image root.
#[derive(Clone, Debug)]
pub struct LocalImage {
    /// File name (bytes that are not UTF-8 shown as U+FFFD).
    pub name: String,
    /// Full path.
    pub path: PathBuf,
    /// Format by magic bytes (it agrees with the name, or the file is not listed).
    pub format: Format,
    /// Catalog format from the name ("img.gz", "qcow2", ...).
    pub catalog_format: String,
    /// Size of the file.
    pub file_size: u64,
    /// Size once decoded, when the metadata records it.
    pub virtual_size: Option<u64>,
    /// CPU architecture the name suggests.
    pub arch: Option<&'static str>,
    /// sha256 from a `<name>.sha256` file next to the image, when there is a well-formed one.
    pub sha256: Option<String>,
    /// The file as a file:// URL (percent-encoded, so names that are not UTF-8 survive).
    pub url: String,
    /// `bty_image_ref` of `url`.
    pub image_ref: String,
}

/// What a scan of the image root found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Images, by file name.
    pub images: Vec<LocalImage>,
    /// Files that are named like images but were not listed, and images whose size could not be
    /// read: one message each, naming the file.
    pub warnings: Vec<String>,
}

/// Lists the images directly in `root` (not in subdirectories, as the USB stick's partition
/// holds them). A file is an image when its name ends in .img, .raw, .iso (each optionally
/// followed by .gz, .zst, .xz or .bz2) or .qcow2 and its magic bytes agree with the name.
/// Hidden files are skipped: exFAT sticks written on macOS carry a `._name.img` next to every
/// file, which is metadata, not an image.
pub fn list_images(root: &Path) -> Result<Listing> {
    let shown = root.display();
    // Absolute and free of "..", so every image has a file:// URL and a ref.
    let root =
        std::fs::canonicalize(root).with_context(|| format!("reading image root {shown}"))?;
    let dir = std::fs::read_dir(&root).with_context(|| format!("reading image root {shown}"))?;
    let mut listing = Listing::default();
    // Kept with their paths, so that they come out in the order of the images.
    let mut warnings: Vec<(PathBuf, String)> = Vec::new();
    for item in dir {
        let item = item.with_context(|| format!("reading image root {shown}"))?;
        let file_name = item.file_name();
        let name = file_name.to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = item.path();
        if format::hint_from_name(&name) == NameHint::Tarball {
            let why = "a tar archive, not a disk image (extract the image from it first)";
            warnings.push((path.clone(), format!("skipping {}: {why}", path.display())));
            continue;
        }
        if !named_like_image(&name) {
            continue;
        }
        // Follows symbolic links: a link to an image kept elsewhere is an image.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => continue,
            Err(e) => {
                warnings.push((path.clone(), format!("skipping {}: {e}", path.display())));
                continue;
            }
        }
        match inspect(&path, &file_name) {
            Ok((img, size_problem)) => {
                if let Some(w) = size_problem {
                    warnings.push((path.clone(), w));
                }
                listing.images.push(img);
            }
            Err(e) => warnings.push((path.clone(), format!("skipping {}: {e}", path.display()))),
        }
    }
    // Natural order (img-2 before img-10): a root of numbered images reads as people count.
    let by_path = |a: &Path, b: &Path| {
        crate::natural::cmp(&a.to_string_lossy(), &b.to_string_lossy())
            .then_with(|| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()))
    };
    listing.images.sort_by(|a, b| by_path(&a.path, &b.path));
    warnings.sort_by(|a, b| by_path(&a.0, &b.0));
    listing.warnings = warnings.into_iter().map(|(_, w)| w).collect();
    Ok(listing)
}

/// Whether a file name has one of the image suffixes.
fn named_like_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let stem = ["gz", "zst", "xz", "bz2"]
        .iter()
        .find_map(|c| lower.strip_suffix(&format!(".{c}")))
        .unwrap_or(&lower);
    lower.ends_with(".qcow2") || [".img", ".raw", ".iso"].iter().any(|s| stem.ends_with(s))
}

/// Reads what the listing shows about one file. A size that cannot be read (a truncated xz
/// index, say) is returned as a warning, not a reason to hide the image.
fn inspect(path: &Path, file_name: &OsStr) -> Result<(LocalImage, Option<String>)> {
    let name = file_name.to_string_lossy().into_owned();
    let shown = path.display().to_string();
    let file = File::open(path).context("opening it")?;
    let file_size = file.metadata().context("reading its size")?.len();
    crate::ensure!(file_size > 0, "the file is empty");
    let mut head = vec![0u8; format::SNIFF_LEN];
    let n = crate::io::read_full(&mut &file, &mut head).context("reading its first bytes")?;
    head.truncate(n);
    let fmt = format::detect(&name, &head)?;
    let (virtual_size, size_problem) =
        match probe::virtual_size(fmt, &file, Some(file_size), &shown) {
            Ok((size, _)) => (size, None),
            Err(e) => (None, Some(format!("{e}; its on-disk size is unknown"))),
        };
    let url = file_url(path);
    let image_ref = catalog::image_ref(&url)?;
    let img = LocalImage {
        catalog_format: catalog::format_of(&name),
        arch: arch_hint(&name),
        sha256: sidecar_sha256(path),
        name,
        path: path.to_path_buf(),
        format: fmt,
        file_size,
        virtual_size,
        url,
        image_ref,
    };
    Ok((img, size_problem))
}

/// The digest in `<image>.sha256` (a bare digest, or `sha256sum` output whose first word is it).
fn sidecar_sha256(image: &Path) -> Option<String> {
    use std::io::Read;
    let mut p = image.as_os_str().to_owned();
    p.push(".sha256");
    let mut text = String::new();
    // A sidecar is one line; a few hundred bytes cover "<digest>  <file name>".
    File::open(&p).ok()?.take(4096).read_to_string(&mut text).ok()?;
    let digest = text.split_whitespace().next()?;
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| digest.to_ascii_lowercase())
}

/// A path as a file:// URL: bytes outside the unreserved set are percent-encoded, which keeps
/// names that are not UTF-8 exact.
pub fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~') {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// Spellings of CPU architectures in image names, and the name bty shows for each.
const ARCHES: [(&str, &str); 16] = [
    ("x86_64", "x86_64"),
    ("x86-64", "x86_64"),
    ("amd64", "x86_64"),
    ("x64", "x86_64"),
    ("aarch64", "aarch64"),
    ("arm64", "aarch64"),
    ("riscv64", "riscv64"),
    ("armv7l", "armv7"),
    ("armv7", "armv7"),
    ("armhf", "armv7"),
    ("i686", "i686"),
    ("i386", "i686"),
    ("ppc64le", "ppc64le"),
    ("ppc64el", "ppc64le"),
    ("s390x", "s390x"),
    ("loongarch64", "loongarch64"),
];

/// The CPU architecture a name suggests ("debian-12-arm64.img.xz" gives "aarch64"): the first
/// known spelling that stands as a word of its own (so "amd64" counts, "xamd64" does not).
pub fn arch_hint(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let apart =
        |i: Option<usize>| i.and_then(|i| bytes.get(i)).is_none_or(|c| !c.is_ascii_alphanumeric());
    let mut best: Option<(usize, &'static str)> = None;
    for (spelling, arch) in ARCHES {
        let mut from = 0;
        while let Some(i) = lower[from..].find(spelling) {
            let start = from + i;
            let end = start + spelling.len();
            if apart(start.checked_sub(1)) && apart(Some(end)) {
                if best.is_none_or(|(b, _)| start < b) {
                    best = Some((start, arch));
                }
                break;
            }
            from = start + 1;
        }
    }
    best.map(|(_, arch)| arch)
}

/// Where a listed image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A file in the image root.
    Local,
    /// An entry of the catalog.
    Catalog,
}

/// One row of `bty images`: the spec's `ImageEntry`, plus where it is, its architecture, its
/// decoded size and description.
#[derive(Clone, Debug, Serialize)]
pub struct ImageEntry {
    pub name: String,
    pub format: String,
    /// Size of the file (compressed size for compressed formats).
    pub size_bytes: Option<u64>,
    pub url: String,
    #[serde(rename = "ref")]
    pub image_ref: String,
    /// First 12 hex digits of the known sha256.
    pub sha_short: Option<String>,
    /// The whole known sha256 (the wizard pins the flash to it); not part of `ImageEntry`.
    #[serde(skip)]
    pub sha256: Option<String>,
    /// Whether the bytes are on this machine.
    pub cached: bool,
    pub origin: Origin,
    pub arch: Option<String>,
    /// Size once decoded, when known without decoding.
    pub virtual_size: Option<u64>,
    pub description: Option<String>,
}

/// The image root's images, then the catalog's entries whose ref is not already listed.
pub fn merge(local: &[LocalImage], catalog: Option<&Catalog>) -> Vec<ImageEntry> {
    let short = |s: &Option<String>| s.as_ref().map(|s| s.chars().take(12).collect());
    let mut out: Vec<ImageEntry> = local
        .iter()
        .map(|img| ImageEntry {
            name: img.name.clone(),
            format: img.catalog_format.clone(),
            size_bytes: Some(img.file_size),
            url: img.url.clone(),
            image_ref: img.image_ref.clone(),
            sha_short: short(&img.sha256),
            sha256: img.sha256.clone(),
            cached: true,
            origin: Origin::Local,
            arch: img.arch.map(str::to_string),
            virtual_size: img.virtual_size,
            description: None,
        })
        .collect();
    let mut seen: std::collections::HashSet<String> =
        out.iter().map(|e| e.image_ref.clone()).collect();
    for e in catalog.map_or(&[][..], |c| &c.entries) {
        if !seen.insert(e.image_ref.clone()) {
            continue;
        }
        let arch = e.arch.clone().or_else(|| {
            arch_hint(&e.name)
                .or_else(|| arch_hint(catalog::last_segment(&e.src)))
                .map(str::to_string)
        });
        out.push(ImageEntry {
            name: e.name.clone(),
            format: e.format.clone(),
            size_bytes: e.size_bytes,
            url: e.src.clone(),
            image_ref: e.image_ref.clone(),
            sha_short: short(&e.sha256),
            sha256: e.sha256.clone(),
            cached: false,
            origin: Origin::Catalog,
            arch,
            virtual_size: None,
            description: e.description.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_from_names() {
        let cases = [
            ("debian-12-genericcloud-amd64.qcow2", Some("x86_64")),
            ("ubuntu_x86_64.img.gz", Some("x86_64")),
            ("bty-server-rpi-arm64.img.gz", Some("aarch64")),
            ("Fedora-AARCH64.raw.xz", Some("aarch64")),
            ("alpine-riscv64.img", Some("riscv64")),
            ("raspios-armhf.img.xz", Some("armv7")),
            ("win-x64.iso", Some("x86_64")),
            ("xamd64.img", None),
            ("amd64x.img", None),
            ("plain.img", None),
            ("arm64-then-amd64.img", Some("aarch64")),
        ];
        for (name, want) in cases {
            assert_eq!(arch_hint(name), want, "{name}");
        }
    }

    #[test]
    fn image_names() {
        for yes in ["a.img", "a.IMG.GZ", "a.raw.zst", "a.iso", "a.iso.gz", "a.qcow2", "a.img.bz2"] {
            assert!(named_like_image(yes), "{yes}");
        }
        for no in ["a.gz", "a.txt", "a.img.sha256", "a.qcow2.gz", "img", "a.zip"] {
            assert!(!named_like_image(no), "{no}");
        }
    }

    #[test]
    fn file_urls_are_percent_encoded() {
        let p = Path::new(OsStr::from_bytes(b"/r/a b<\xff>.img"));
        assert_eq!(file_url(p), "file:///r/a%20b%3C%FF%3E.img");
        assert_eq!(
            crate::source::percent_decode(&file_url(Path::new("/r/a b.img")), false),
            "file:///r/a b.img"
        );
    }

    #[test]
    fn merge_puts_local_first_and_drops_catalog_duplicates() {
        let local = LocalImage {
            name: "a.img".into(),
            path: "/r/a.img".into(),
            format: Format::Raw,
            catalog_format: "img".into(),
            file_size: 10,
            virtual_size: Some(10),
            arch: None,
            sha256: Some("ab".repeat(32)),
            url: "file:///r/a.img".into(),
            image_ref: catalog::image_ref("file:///r/a.img").unwrap(),
        };
        let text = "version = 1
[[images]]
name = \"same-file\"
src = \"file:///r//./a.img\"
[[images]]
name = \"debian-arm64.img.gz\"
src = \"https://h/debian.img.gz\"
size_bytes = 5
[[images]]
name = \"same-url\"
src = \"HTTPS://H:443/debian.img.gz\"
[[images]]
name = \"other\"
src = \"https://h/x86_64/other.img?sig=1\"
";
        let c = catalog::load_bytes(text.as_bytes(), "t", catalog::Origin::Local).unwrap();
        let all = merge(std::slice::from_ref(&local), Some(&c));
        let names: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a.img", "debian-arm64.img.gz", "other"]);
        assert_eq!(all[0].origin, Origin::Local);
        assert!(all[0].cached);
        assert_eq!(all[0].sha_short.as_deref(), Some("abababababab"));
        assert_eq!(all[1].origin, Origin::Catalog);
        assert_eq!(all[1].arch.as_deref(), Some("aarch64"));
        assert_eq!(all[1].size_bytes, Some(5));
        assert_eq!(all[2].arch, None, "only the last path segment of a src hints");
        assert_eq!(merge(&[], None).len(), 0);
    }
}
