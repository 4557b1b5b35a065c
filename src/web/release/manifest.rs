//! `release.toml`, the release manifest that `make release` writes beside a release's assets:
//! the release's version, optionally its git revision, and one `[[assets]]` table per file with
//! its name, kind, architecture, size and sha256.
//!
//! ```toml
//! version = "0.1.0"
//! revision = "0123abcd"          # optional
//! [[assets]]
//! name = "bty-netboot-pc-x86_64-v0.1.0.vmlinuz"
//! kind = "netboot-kernel"
//! arch = "x86_64"                # optional, default "any"
//! size = 8247232
//! sha256 = "<64 hex digits>"
//! ```
//!
//! The manifest comes from the network, so it is treated as hostile: its size is capped, every
//! name must be a plain file name (it is joined to the boot dir), sizes are bounded (they bound
//! the downloads), digests are exactly 64 hex digits. Kinds, architectures and keys this version
//! does not know are kept or ignored, so later releases can add them.

use serde::Deserialize;

use crate::error::{Context, Result};

/// Largest manifest accepted, in bytes.
pub const MAX_BYTES: u64 = 1 << 20;

/// Longest asset name, in bytes.
pub const NAME_MAX: usize = 200;

/// Longest version, revision, kind or arch, in bytes.
const WORD_MAX: usize = 64;

/// A parsed and checked release manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub version: String,
    pub revision: Option<String>,
    pub assets: Vec<Asset>,
}

/// One file of the release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asset {
    /// A plain file name (checked: see [`file_name`]).
    pub name: String,
    pub kind: Kind,
    /// `x86_64`, `arm64`, `any`, or a later one; `any` when the manifest gives none.
    pub arch: String,
    /// Exact size in bytes, above 0 and at most the caller's limit.
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// What an asset is. Kinds this version does not know are kept by name, not refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    NetbootKernel,
    NetbootInitrd,
    IpxeBios,
    IpxeEfi,
    UsbIso,
    /// The Raspberry Pi stick, a gzipped raw disk image (live/rpi.sh).
    UsbImage,
    Bty,
    OciImage,
    Checksums,
    Other,
    Unknown(String),
}

impl Kind {
    fn parse(s: &str) -> Kind {
        match s {
            "netboot-kernel" => Kind::NetbootKernel,
            "netboot-initrd" => Kind::NetbootInitrd,
            "ipxe-bios" => Kind::IpxeBios,
            "ipxe-efi" => Kind::IpxeEfi,
            "usb-iso" => Kind::UsbIso,
            "usb-image" => Kind::UsbImage,
            "bty" => Kind::Bty,
            "oci-image" => Kind::OciImage,
            "checksums" => Kind::Checksums,
            "other" => Kind::Other,
            other => Kind::Unknown(other.to_string()),
        }
    }

    /// The manifest's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Kind::NetbootKernel => "netboot-kernel",
            Kind::NetbootInitrd => "netboot-initrd",
            Kind::IpxeBios => "ipxe-bios",
            Kind::IpxeEfi => "ipxe-efi",
            Kind::UsbIso => "usb-iso",
            Kind::UsbImage => "usb-image",
            Kind::Bty => "bty",
            Kind::OciImage => "oci-image",
            Kind::Checksums => "checksums",
            Kind::Other => "other",
            Kind::Unknown(s) => s,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Manifest {
    /// The assets of `kind` whose arch is one of `arches`, in manifest order.
    pub fn find(&self, kind: &Kind, arches: &[&str]) -> Vec<&Asset> {
        self.assets
            .iter()
            .filter(|a| a.kind == *kind && arches.contains(&a.arch.as_str()))
            .collect()
    }
}

// Every key optional here, so a missing one is reported by `parse` with the asset's name rather
// than as serde's "missing field" without it. Unknown keys are ignored (serde's default).
#[derive(Deserialize)]
struct Raw {
    version: Option<String>,
    revision: Option<String>,
    #[serde(default)]
    assets: Vec<RawAsset>,
}

#[derive(Deserialize)]
struct RawAsset {
    name: Option<String>,
    kind: Option<String>,
    arch: Option<String>,
    // Signed, so that a negative size gets our message instead of serde's.
    size: Option<i64>,
    sha256: Option<String>,
}

/// Parses and checks a manifest; `max_size` bounds each asset's size (the boot dir's upload
/// limit). Errors name the asset (`assets[2] "x.initrd"`) and the key.
pub fn parse(bytes: &[u8], max_size: u64) -> Result<Manifest> {
    crate::ensure!(
        bytes.len() as u64 <= MAX_BYTES,
        "the manifest is {} bytes, more than the {MAX_BYTES} allowed",
        bytes.len()
    );
    let text = std::str::from_utf8(bytes).context("the manifest is not UTF-8 text")?;
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let why = crate::catalog::toml_error(text, &e, true);
        crate::error::Error::msg(format!("the manifest is not valid release TOML: {why}"))
    })?;
    let version = raw.version.context("missing required key version")?;
    word(&version).map_err(|e| crate::error::Error::msg(format!("version {version:?}: {e}")))?;
    if let Some(r) = &raw.revision {
        word(r).map_err(|e| crate::error::Error::msg(format!("revision {r:?}: {e}")))?;
    }
    let mut assets: Vec<Asset> = Vec::with_capacity(raw.assets.len());
    for (i, a) in raw.assets.into_iter().enumerate() {
        let asset = check_asset(a, max_size).map_err(|(name, e)| {
            let which = match name {
                Some(n) => format!("assets[{i}] {n:?}"),
                None => format!("assets[{i}]"),
            };
            crate::error::Error::msg(format!("{which}: {e}"))
        })?;
        if let Some(j) = assets.iter().position(|b| b.name == asset.name) {
            crate::bail!("assets[{i}] {:?}: the same name as assets[{j}]", asset.name);
        }
        assets.push(asset);
    }
    Ok(Manifest { version, revision: raw.revision, assets })
}

/// Checks one asset; on error, its name when it has one, and what is wrong.
fn check_asset(a: RawAsset, max_size: u64) -> Result<Asset, (Option<String>, String)> {
    let missing =
        |name: &Option<String>, key: &str| (name.clone(), format!("missing required key {key}"));
    let Some(name) = a.name.clone() else { return Err(missing(&None, "name")) };
    // Shown quoted with escapes (Debug), so a hostile name cannot forge log lines or markup.
    file_name(&name).map_err(|e| (Some(name.clone()), format!("name: {e}")))?;
    let named = Some(name.clone());
    let kind = a.kind.ok_or_else(|| missing(&named, "kind"))?;
    word(&kind).map_err(|e| (named.clone(), format!("kind {kind:?}: {e}")))?;
    let arch = a.arch.unwrap_or_else(|| "any".to_string());
    word(&arch).map_err(|e| (named.clone(), format!("arch {arch:?}: {e}")))?;
    let size = a.size.ok_or_else(|| missing(&named, "size"))?;
    let size = u64::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| (named.clone(), format!("size {size}: must be above 0")))?;
    if size > max_size {
        return Err((
            named,
            format!("size {size}: more than the {max_size} bytes allowed ([boot] max_upload_mib)"),
        ));
    }
    let sha = a.sha256.ok_or_else(|| missing(&named, "sha256"))?;
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err((named, format!("sha256 {sha:?}: expected exactly 64 hex digits")));
    }
    Ok(Asset { name, kind: Kind::parse(&kind), arch, size, sha256: sha.to_ascii_lowercase() })
}

/// A name that is safe to join to a directory and to put in a URL and a script: no path, no
/// hidden file, no control character, only `[A-Za-z0-9._+-]`, at most [`NAME_MAX`] bytes.
pub fn file_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > NAME_MAX {
        return Err(format!("at most {NAME_MAX} bytes (got {})", s.len()));
    }
    if s.contains(['/', '\\']) {
        return Err("must be a plain file name, not a path".into());
    }
    if s.starts_with('.') {
        return Err("must not start with a dot".into());
    }
    if s.contains("..") {
        return Err("must not contain \"..\"".into());
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!("control character {c:?} is not allowed"));
    }
    if let Some(c) = s.chars().find(|&c| !(c.is_ascii_alphanumeric() || "._+-".contains(c))) {
        return Err(format!(
            "character {c:?} is not allowed (letters, digits, '.', '_', '+' and '-' only)"
        ));
    }
    Ok(())
}

/// A version, revision, kind or arch: 1 to [`WORD_MAX`] bytes of `[A-Za-z0-9._+-]`, starting
/// with a letter or digit.
fn word(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > WORD_MAX {
        return Err(format!("at most {WORD_MAX} bytes (got {})", s.len()));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("must start with a letter or digit".into());
    }
    if let Some(c) = s.chars().find(|&c| !(c.is_ascii_alphanumeric() || "._+-".contains(c))) {
        return Err(format!(
            "character {c:?} is not allowed (letters, digits, '.', '_', '+' and '-' only)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1 << 30;

    fn sha(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn asset(name: &str, kind: &str, arch: &str, size: u64) -> String {
        format!(
            "[[assets]]\nname = \"{name}\"\nkind = \"{kind}\"\narch = \"{arch}\"\nsize = {size}\nsha256 = \"{}\"\n",
            sha('a')
        )
    }

    fn err(text: &str) -> String {
        parse(text.as_bytes(), MAX).unwrap_err().to_string()
    }

    #[test]
    fn a_good_manifest_parses_with_unknown_kinds_and_keys_kept_or_ignored() {
        let text = format!(
            "# bty release manifest\nversion = \"0.1.0\"\nrevision = \"0123abcd\"\nbuilt_by = \"ci\"\n\
             {}{}[[assets]]\nname = \"bty-0.1.0-arm64.tar.zst\"\nkind = \"bty-tarball\"\narch = \"riscv64\"\n\
             size = 5\nsha256 = \"{}\"\nsigned = true\n[[assets]]\nname = \"SHA256SUMS\"\nkind = \"checksums\"\n\
             size = 1\nsha256 = \"{}\"\n[future]\nx = 1\n",
            asset("bty-netboot-pc-x86_64-v0.1.0.vmlinuz", "netboot-kernel", "x86_64", 8247232),
            asset("bty-netboot-pc-x86_64-v0.1.0.initrd", "netboot-initrd", "x86_64", 1),
            "AB".repeat(32),
            sha('0'),
        );
        let m = parse(text.as_bytes(), MAX).unwrap();
        assert_eq!(m.version, "0.1.0");
        assert_eq!(m.revision.as_deref(), Some("0123abcd"));
        assert_eq!(m.assets.len(), 4);
        assert_eq!(m.assets[0].kind, Kind::NetbootKernel);
        assert_eq!(m.assets[0].size, 8247232);
        assert_eq!(m.assets[2].kind, Kind::Unknown("bty-tarball".into()));
        assert_eq!(m.assets[2].sha256, "ab".repeat(32), "sha256 is lower-cased");
        assert_eq!(m.assets[3].arch, "any", "arch defaults to any");
        assert_eq!(m.assets[3].kind.to_string(), "checksums");
        assert_eq!(m.find(&Kind::NetbootKernel, &["x86_64"]).len(), 1);
        assert!(m.find(&Kind::NetbootKernel, &["arm64"]).is_empty());
        // No revision, no assets: still a manifest (the fetch says what it lacks).
        let m = parse(b"version = \"v2.0.0-rc.1+g1\"\n", MAX).unwrap();
        assert_eq!((m.revision, m.assets.len()), (None, 0));
    }

    #[test]
    fn missing_required_keys_name_the_asset_and_the_key() {
        assert!(err("[[assets]]\nname = \"a\"\n").contains("missing required key version"));
        let full = asset("k.vmlinuz", "netboot-kernel", "x86_64", 10);
        for key in ["name", "kind", "size", "sha256"] {
            let text: String = format!("version = \"1\"\n{full}")
                .lines()
                .filter(|l| !l.starts_with(&format!("{key} =")))
                .map(|l| format!("{l}\n"))
                .collect();
            let e = err(&text);
            let who = if key == "name" { "assets[0]:" } else { "assets[0] \"k.vmlinuz\":" };
            assert!(
                e.contains(who) && e.contains(&format!("missing required key {key}")),
                "{key}: {e}"
            );
        }
    }

    #[test]
    fn hostile_names_are_refused() {
        for (bad, why) in [
            ("../x", "not a path"),
            ("a/b", "not a path"),
            ("a\\\\b", "not a path"),
            (".hidden", "start with a dot"),
            ("a..b", "\"..\""),
            ("<script>", "character '<'"),
            ("k\\nchain", "control character"),
            ("k\\u0000", "control character"),
            ("", "must not be empty"),
            ("sp ace", "character ' '"),
            ("é", "character 'é'"),
        ] {
            let e = err(&format!("version = \"1\"\n{}", asset(bad, "netboot-kernel", "x86_64", 1)));
            assert!(
                e.contains("assets[0]") && e.contains("name: ") && e.contains(why),
                "{bad}: {e}"
            );
        }
        let long = "a".repeat(NAME_MAX + 1);
        let e = err(&format!("version = \"1\"\n{}", asset(&long, "other", "any", 1)));
        assert!(e.contains("at most 200 bytes"), "{e}");
        assert!(file_name(&"a".repeat(NAME_MAX)).is_ok());
        assert!(file_name("bty_0.1.0+g1-x86_64.tar.zst").is_ok());
    }

    #[test]
    fn bad_sizes_digests_duplicates_and_versions_are_refused() {
        let one = |size: &str, sha: &str| {
            format!(
                "version = \"1\"\n[[assets]]\nname = \"k\"\nkind = \"other\"\nsize = {size}\nsha256 = \"{sha}\"\n"
            )
        };
        let good = sha('f');
        assert!(err(&one("0", &good)).contains("assets[0] \"k\": size 0: must be above 0"));
        assert!(err(&one("-5", &good)).contains("size -5: must be above 0"));
        let e = err(&one(&(MAX + 1).to_string(), &good));
        assert!(
            e.contains("more than the 1073741824 bytes allowed ([boot] max_upload_mib)"),
            "{e}"
        );
        assert!(parse(one(&MAX.to_string(), &good).as_bytes(), MAX).is_ok());
        let e = err(&one("\"12\"", &good));
        assert!(e.contains("not valid release TOML"), "{e}");
        for bad in
            [sha('a')[..63].to_string(), format!("{}0", sha('a')), format!("{}g", &sha('a')[..63])]
        {
            assert!(err(&one("1", &bad)).contains("expected exactly 64 hex digits"), "{bad}");
        }
        let dup = format!(
            "version = \"1\"\n{}{}",
            asset("k", "other", "any", 1),
            asset("k", "bty", "x86_64", 2)
        );
        assert!(err(&dup).contains("assets[1] \"k\": the same name as assets[0]"), "{}", err(&dup));
        for (v, why) in [
            ("", "must not be empty"),
            ("-rf", "start with a letter or digit"),
            ("1.0 <b>", "character ' '"),
            (&"1".repeat(65), "at most 64 bytes"),
        ] {
            let e = err(&format!("version = \"{v}\"\n"));
            assert!(e.contains("version ") && e.contains(why), "{v}: {e}");
        }
        let e = err("version = \"1\"\nrevision = \"abc\\n\"\n");
        assert!(e.contains("revision"), "{e}");
        let e = err(&format!("version = \"1\"\n{}", asset("k", "netboot kernel", "x86_64", 1)));
        assert!(e.contains("kind \"netboot kernel\""), "{e}");
    }

    #[test]
    fn not_toml_too_big_and_not_utf8_are_refused() {
        let e = err("version = \"1\"\n[[assets]\nname = \"k\"\n");
        assert!(e.contains("not valid release TOML: invalid TOML at line 2, column 10"), "{e}");
        assert!(!e.contains('\n'), "one line, for the job's message: {e}");
        assert!(err("version = \n").contains("not valid release TOML"));
        assert!(err("version = 1\n").contains("not valid release TOML"));
        assert!(err("assets = \"x\"\nversion = \"1\"\n").contains("not valid release TOML"));
        let e = parse(b"version = \"\xff\"\n", MAX).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        let mut big = b"version = \"1\"\n".to_vec();
        big.resize(MAX_BYTES as usize + 1, b'\n');
        let e = parse(&big, MAX).unwrap_err().to_string();
        assert!(e.contains("more than the 1048576 allowed"), "{e}");
    }
}
