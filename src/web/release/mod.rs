//! Netboot release fetch (`POST /boot/releases`): reads the release manifest `release.toml`
//! (see `manifest.rs`) from `[boot] release_url`, a base URL or a local directory that an
//! air-gapped lab mirrors a release into, else from the project's GitHub release
//! (`[boot] release_repo` and `release_tag`, or those saved on the settings page). It installs
//! the x86_64 live kernel and initrd the manifest lists, the arm64 pair when it lists one, and
//! its iPXE binaries when it lists them. Every file is checked against the manifest's size and sha256 while it streams into a
//! hidden temp file in the boot dir; only when all are good are they renamed into place under
//! their release names and recorded as the active pairs ([`active`]), so a failure leaves the
//! previous artifacts and the names the scripts hand out as they were.

pub mod manifest;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Context, Result};
use crate::web::app::App;
use crate::web::config::Source;
use crate::web::db::JobKind;
use crate::web::jobs::{self, Ctx, Jobs};
use manifest::{Asset, Kind, Manifest};

/// The manifest's file name, beside the assets.
pub const MANIFEST: &str = "release.toml";

/// The `settings` row recording the pairs the last successful fetches installed (one row,
/// JSON, so a fetch changes them in one write): `kernel`/`initrd` for x86_64 (the keys from
/// before arm64, so an existing row still reads), `kernel_arm64`/`initrd_arm64` for arm64.
const ACTIVE_SETTING: &str = "release.active";

/// The architectures bty-web boots machines into; each has its live kernel and initrd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    /// The manifest's spelling, and iPXE's `${buildarch}`'s for arm64.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The `[boot]` keys naming the pair, which are also the keys of the recorded row.
    fn keys(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => ("kernel", "initrd"),
            Arch::Arm64 => ("kernel_arm64", "initrd_arm64"),
        }
    }
}

/// Starts a fetch job; None when one is running already.
pub fn start(app: &Arc<App>) -> Result<Option<i64>> {
    Jobs::start(app, JobKind::Release, fetch)
}

/// The live kernel and initrd of `arch` the per-MAC scripts name, the dashboard checks and the
/// Netboot page lists: each as the operator set it (`[boot] kernel` / `initrd`, or
/// `kernel_arm64` / `initrd_arm64`, in a file, the environment or a flag), else as the last
/// successful release fetch that had that architecture recorded, else the default for this
/// version.
pub fn active(app: &App, arch: Arch) -> (String, String) {
    pick(app, arch, recorded(recorded_row(app).as_ref(), arch))
}

/// [`active`] for every architecture, in [`Arch::ALL`]'s order, from one read of the recorded
/// row: what a per-MAC script or a live boot file's request needs for both.
pub fn active_all(app: &App) -> [(String, String); 2] {
    let row = recorded_row(app);
    Arch::ALL.map(|arch| pick(app, arch, recorded(row.as_ref(), arch)))
}

/// The pair of `arch`: each name as the operator set it, else the `fetched` one, else the
/// default.
fn pick(app: &App, arch: Arch, fetched: Option<(String, String)>) -> (String, String) {
    let (kk, ik) = arch.keys();
    let pick = |key: &str, fetched: Option<String>| {
        let s = &app.settings();
        match (s.source("boot", key), fetched) {
            (Source::Default, Some(name)) => name,
            _ => s.get("boot", key).to_string(),
        }
    };
    let (k, i) = fetched.unzip();
    (pick(kk, k), pick(ik, i))
}

/// The recorded row as JSON, when there is one that parses.
fn recorded_row(app: &App) -> Option<serde_json::Value> {
    let raw = match app.db.setting(ACTIVE_SETTING) {
        Ok(v) => v?,
        Err(e) => {
            crate::warn!("reading the active netboot release: {e}");
            return None;
        }
    };
    let v = serde_json::from_str(&raw);
    if v.is_err() {
        crate::warn!("ignoring setting {ACTIVE_SETTING}: {raw:?} is not JSON");
    }
    v.ok()
}

/// The pair of `arch` the last fetch recorded, if it is there and still two plain file names
/// (the row is ours, but the names go into scripts and are joined to the boot dir, so they are
/// checked on the way out as they were on the way in).
fn recorded(row: Option<&serde_json::Value>, arch: Arch) -> Option<(String, String)> {
    let v = row?;
    let (kk, ik) = arch.keys();
    // No arm64 keys: a row from before arm64, or releases without it. Not worth a warning.
    if v.get(kk).is_none() && v.get(ik).is_none() {
        return None;
    }
    let name = |k: &str| {
        let n = v[k].as_str()?;
        crate::web::validate::boot_file_name(n).ok().map(str::to_string)
    };
    let pair = name(kk).zip(name(ik));
    if pair.is_none() {
        crate::warn!(
            "ignoring setting {ACTIVE_SETTING}: {v} does not name a {} kernel and initrd",
            arch.as_str()
        );
    }
    pair
}

/// The release repo and tag: as saved on the settings page, else from the configuration.
pub fn repo_and_tag(app: &App) -> (String, String) {
    let s = &app.settings();
    let saved = |k: &str| app.db.setting(k).ok().flatten().filter(|v| !v.is_empty());
    (
        saved("release_repo").unwrap_or_else(|| s.get("boot", "release_repo").to_string()),
        saved("release_tag").unwrap_or_else(|| s.get("boot", "release_tag").to_string()),
    )
}

/// Where the release's files come from, for people: the base URL or directory, or the GitHub
/// release of `repo` at `tag`.
pub fn origin(app: &App, repo: &str, tag: &str) -> String {
    let settings = app.settings();
    let base = settings.get("boot", "release_url").trim();
    if base.is_empty() { format!("the GitHub release {repo} {tag}") } else { base.to_string() }
}

/// Where a file of the release is: under `release_url` (a URL or a directory: the same join
/// serves both), else the GitHub release download URL.
fn location(app: &App, name: &str) -> Result<String> {
    let settings = app.settings();
    let base = settings.get("boot", "release_url").trim();
    if !base.is_empty() {
        // Source::open would also take oras:// and friends; a release is a directory of
        // files, so only what holds one is accepted, with a message saying so.
        let lower = base.to_ascii_lowercase();
        if let Some((scheme, _)) = lower.split_once("://") {
            crate::ensure!(
                matches!(scheme, "http" | "https" | "file"),
                "[boot] release_url {base:?}: expected an http(s):// base URL or a directory"
            );
        }
        return Ok(format!("{}/{name}", base.trim_end_matches('/')));
    }
    let (repo, tag) = repo_and_tag(app);
    Ok(match tag.as_str() {
        "" | "latest" => format!("https://github.com/{repo}/releases/latest/download/{name}"),
        tag => format!("https://github.com/{repo}/releases/download/{tag}/{name}"),
    })
}

/// One architecture's live kernel and initrd in a release.
struct Pair<'m> {
    arch: Arch,
    kernel: &'m Asset,
    initrd: &'m Asset,
    /// `<kernel base>.sha256`, sha256sum lines for the kernel and the initrd.
    sums_name: String,
}

/// What a fetch installs: the x86_64 pair, the arm64 pair when the release has one, and the
/// iPXE binaries the release has.
struct Choice<'m> {
    /// x86_64 first, then arm64 when listed.
    pairs: Vec<Pair<'m>>,
    /// Every asset to download, the pairs first.
    all: Vec<&'m Asset>,
}

/// Picks the assets to install, or says what the manifest lacks or has too many of.
fn choose<'m>(m: &'m Manifest, at: &str) -> Result<Choice<'m>> {
    let one = |kind: Kind, arches: &[&str], required: bool| -> Result<Option<&'m Asset>> {
        let found = m.find(&kind, arches);
        match found.as_slice() {
            [] if required => crate::bail!(
                "{at} (release {}) lists no {kind} asset for arch {}; nothing was installed",
                m.version,
                arches.join(" or ")
            ),
            [] => Ok(None),
            [a] => Ok(Some(*a)),
            many => crate::bail!(
                "{at} (release {}) lists {} {kind} assets for arch {} ({}); expected one",
                m.version,
                many.len(),
                arches.join(" or "),
                many.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    };
    let sums_name = |kernel: &Asset| match kernel.name.strip_suffix(".vmlinuz") {
        Some(base) => format!("{base}.sha256"),
        None => format!("{}.sha256", kernel.name),
    };
    let mut pairs = Vec::new();
    for arch in Arch::ALL {
        // x86_64 machines are what every lab has; arm64 is installed when the release has it.
        let required = arch == Arch::X86_64;
        let a = arch.as_str();
        let kernel = one(Kind::NetbootKernel, &[a], required)?;
        let initrd = one(Kind::NetbootInitrd, &[a], required)?;
        match (kernel, initrd) {
            (Some(kernel), Some(initrd)) => {
                pairs.push(Pair { arch, kernel, initrd, sums_name: sums_name(kernel) })
            }
            (None, None) => {}
            (Some(only), None) | (None, Some(only)) => crate::bail!(
                "{at} (release {}) lists {} {} for arch {a} but no {} for it; nothing was installed",
                m.version,
                only.kind,
                only.name,
                if only.kind == Kind::NetbootKernel {
                    Kind::NetbootInitrd
                } else {
                    Kind::NetbootKernel
                }
            ),
        }
    }
    let mut all: Vec<&Asset> = pairs.iter().flat_map(|p| [p.kernel, p.initrd]).collect();
    for (kind, arches) in [
        (Kind::IpxeBios, &["x86_64", "any"][..]),
        (Kind::IpxeEfi, &["x86_64", "any"][..]),
        (Kind::IpxeEfi, &["arm64"][..]),
    ] {
        all.extend(one(kind, arches, false)?);
    }
    // The manifest allows '+' and 200 bytes; what is installed is served at /boot/{name} and
    // named in iPXE scripts, whose rule is stricter. Refused here, before a byte is written.
    let sums: Vec<&str> = pairs.iter().map(|p| p.sums_name.as_str()).collect();
    for name in all.iter().map(|a| a.name.as_str()).chain(sums.iter().copied()) {
        if let Err(e) = crate::web::validate::boot_file_name(name) {
            crate::bail!("{at}: {name:?} cannot be installed in the boot dir: {e}");
        }
    }
    for p in &pairs {
        crate::ensure!(
            all.iter().all(|a| a.name != p.sums_name),
            "{at}: asset {:?} has the name of the checksum file bty-web writes for {}",
            p.sums_name,
            p.kernel.name
        );
    }
    // Two files renamed to one name would leave one of them installed under the other's role:
    // the manifest has no name twice, but two kernels of one base would share a checksum file.
    let mut names: Vec<&str> = all.iter().map(|a| a.name.as_str()).chain(sums).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        crate::bail!(
            "{at}: {:?} would be installed twice (two assets or checksum files of that name)",
            w[0]
        );
    }
    Ok(Choice { pairs, all })
}

/// The largest asset a manifest may list at all.
const ANY_ASSET_MAX: u64 = 64 << 30;

/// The job: the manifest first, then each chosen asset, verified; then all installed together
/// and recorded as the active pair.
fn fetch(ctx: &Ctx) -> Result<String> {
    let app = &ctx.app;
    let boot = app.settings().boot_dir();
    let manifest_at = location(app, MANIFEST)?;
    let bytes = crate::source::fetch_document(&manifest_at, manifest::MAX_BYTES)?;
    // Assets bty-web does not download (the USB image, the OCI archive) may be larger than
    // its upload limit; only the ones it installs are held to it.
    let m = manifest::parse(&bytes, ANY_ASSET_MAX)
        .with_context(|| format!("reading the release manifest {manifest_at}"))?;
    let choice = choose(&m, &manifest_at)?;
    let limit = app.settings().max_upload();
    for a in &choice.all {
        crate::ensure!(
            a.size <= limit,
            "{manifest_at}: {} is {} bytes, more than the {limit} allowed ([boot] max_upload_mib)",
            a.name,
            a.size
        );
    }
    fs::create_dir_all(&boot).with_context(|| format!("creating {}", boot.display()))?;
    let temp = |name: &str| boot.join(format!(".{name}.fetch-{}", ctx.id));
    let temps: Vec<PathBuf> = choice.all.iter().map(|a| temp(&a.name)).collect();
    let sums_tmp: Vec<PathBuf> = choice.pairs.iter().map(|p| temp(&p.sums_name)).collect();
    let _cleanup = jobs::TempFiles(temps.iter().chain(&sums_tmp).cloned().collect());
    let total: u64 = choice.all.iter().map(|a| a.size).sum();
    let mut done = 0u64;
    for (a, tmp) in choice.all.iter().zip(&temps) {
        let at = location(app, &a.name)?;
        let src = crate::source::Source::open(&at)?;
        // A size the origin states up front is checked before the download, not after it.
        if let Some(n) = src.size() {
            crate::ensure!(
                n == a.size,
                "{at}: {n} bytes, but {MANIFEST} lists {} for {}; the installed artifacts are unchanged",
                a.size,
                a.name
            );
        }
        let mut r = src.reader()?;
        let mut f = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        copy_verified(&mut r, &mut f, a, &at, tmp, &mut |n| {
            jobs::check_cancel(ctx)?;
            ctx.progress(done + n, Some(total));
            Ok(())
        })?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        done += a.size;
    }
    for (p, tmp) in choice.pairs.iter().zip(&sums_tmp) {
        let sums = format!(
            "{}  {}\n{}  {}\n",
            p.kernel.sha256, p.kernel.name, p.initrd.sha256, p.initrd.name
        );
        write_synced(tmp, sums.as_bytes())?;
    }
    for (a, tmp) in choice.all.iter().zip(&temps) {
        let dest = boot.join(&a.name);
        fs::rename(tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
    }
    for (p, tmp) in choice.pairs.iter().zip(&sums_tmp) {
        let dest = boot.join(&p.sums_name);
        fs::rename(tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
    }
    if let Err(e) = File::open(&boot).and_then(|d| d.sync_all()) {
        crate::warn!("syncing {}: {e}", boot.display());
    }
    // Last: until this row changes, scripts keep naming the previous pairs, which are still
    // there. An architecture this release lacks keeps the pair an earlier fetch recorded: its
    // files are still in the boot dir, and its machines keep booting.
    let mut record = serde_json::json!({ "version": m.version });
    let previous = recorded_row(app);
    for arch in Arch::ALL {
        let (kk, ik) = arch.keys();
        match choice.pairs.iter().find(|p| p.arch == arch) {
            Some(p) => {
                record[kk] = p.kernel.name.as_str().into();
                record[ik] = p.initrd.name.as_str().into();
            }
            None => {
                if let Some(prev) = &previous {
                    for k in [kk, ik] {
                        if let Some(v) = prev.get(k) {
                            record[k] = v.clone();
                        }
                    }
                }
            }
        }
    }
    app.db.set_setting(ACTIVE_SETTING, &record.to_string())?;
    let files: Vec<&str> = choice
        .all
        .iter()
        .map(|a| a.name.as_str())
        .chain(choice.pairs.iter().map(|p| p.sums_name.as_str()))
        .collect();
    let msg = format!("installed release {} ({}) from {manifest_at}", m.version, files.join(", "));
    let mut details = serde_json::json!({
        "version": m.version,
        "revision": m.revision,
        "files": files,
        "source": manifest_at,
    });
    for p in &choice.pairs {
        let (kk, ik) = p.arch.keys();
        details[kk] = p.kernel.name.as_str().into();
        details[ik] = p.initrd.name.as_str().into();
    }
    app.db.event("boot.release.installed", None, &msg, Some(details));
    for p in &choice.pairs {
        let (k, i) = active(app, p.arch);
        if (k.as_str(), i.as_str()) != (p.kernel.name.as_str(), p.initrd.name.as_str()) {
            let (kk, ik) = p.arch.keys();
            crate::warn!(
                "the fetched {} and {} are installed, but scripts keep naming {k} and {i}, set in [boot] {kk}/{ik}",
                p.kernel.name,
                p.initrd.name
            );
        }
    }
    Ok(msg)
}

/// Streams `r` into `w`: fails as soon as more than `a.size` bytes arrive (a hostile or wrong
/// origin cannot fill the disk), when fewer arrive, or when the sha256 differs. `step` is
/// called with the bytes so far after each read (progress, and the cancel check).
fn copy_verified(
    r: &mut dyn Read,
    w: &mut dyn Write,
    a: &Asset,
    at: &str,
    tmp: &Path,
    step: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<()> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0u64;
    loop {
        step(got)?;
        let n = r.read(&mut buf).with_context(|| format!("downloading {at}"))?;
        if n == 0 {
            break;
        }
        got += n as u64;
        crate::ensure!(
            got <= a.size,
            "downloading {at}: more than the {} bytes {MANIFEST} lists for {}; stopped, the installed artifacts are unchanged",
            a.size,
            a.name
        );
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).with_context(|| format!("writing {}", tmp.display()))?;
    }
    crate::ensure!(
        got == a.size,
        "downloading {at}: {got} bytes, fewer than the {} {MANIFEST} lists for {} (cut short?); the installed artifacts are unchanged",
        a.size,
        a.name
    );
    let sum = crate::hex::encode(&h.finalize());
    crate::ensure!(
        sum == a.sha256,
        "{}: sha256 {sum} does not match {MANIFEST}'s {} (from {at}); the installed artifacts are unchanged",
        a.name,
        a.sha256
    );
    Ok(())
}

/// Writes a small file and syncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(data: &[u8]) -> Asset {
        Asset {
            name: "k.vmlinuz".into(),
            kind: Kind::NetbootKernel,
            arch: "x86_64".into(),
            size: data.len() as u64,
            sha256: crate::hex::encode(&Sha256::digest(data)),
        }
    }

    fn copy(served: &[u8], a: &Asset) -> (Result<()>, Vec<u8>, Vec<u64>) {
        let mut out = Vec::new();
        let mut steps = Vec::new();
        let r = copy_verified(
            &mut std::io::Cursor::new(served.to_vec()),
            &mut out,
            a,
            "http://x/k.vmlinuz",
            Path::new("/tmp/.k"),
            &mut |n| {
                steps.push(n);
                Ok(())
            },
        );
        (r, out, steps)
    }

    #[test]
    fn copy_verified_takes_exactly_the_listed_bytes_and_digest() {
        let data = vec![7u8; 600 << 10];
        let a = asset(&data);
        let (r, out, steps) = copy(&data, &a);
        r.unwrap();
        assert_eq!(out, data);
        assert_eq!(steps.last(), Some(&(data.len() as u64)), "progress reaches the end");
        let (r, _, _) = copy(&data[..1000], &a);
        assert!(r.unwrap_err().to_string().contains("1000 bytes, fewer than the 614400"));
        // One byte too many stops at the read that brings it, before writing it.
        let mut more = data.clone();
        more.push(0);
        let (r, out, _) = copy(&more, &a);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("more than the 614400 bytes release.toml lists for k.vmlinuz"), "{e}");
        assert!(out.len() < more.len());
        let mut bad = data.clone();
        bad[5] ^= 1;
        let (r, _, _) = copy(&bad, &a);
        let e = r.unwrap_err().to_string();
        assert!(e.starts_with("k.vmlinuz: sha256 ") && e.contains("does not match"), "{e}");
        // The step's error (a cancel) ends the copy.
        let mut out = Vec::new();
        let r = copy_verified(
            &mut std::io::Cursor::new(data.clone()),
            &mut out,
            &a,
            "x",
            Path::new("/tmp/.k"),
            &mut |_| Err(crate::error::Error::msg("cancelled")),
        );
        assert!(r.is_err() && out.is_empty());
    }

    fn manifest(assets: &[(&str, &str, &str)]) -> Manifest {
        let mut text = String::from("version = \"1.2.3\"\n");
        for (name, kind, arch) in assets {
            text.push_str(&format!(
                "[[assets]]\nname = \"{name}\"\nkind = \"{kind}\"\narch = \"{arch}\"\nsize = 1\nsha256 = \"{}\"\n",
                "0".repeat(64)
            ));
        }
        manifest::parse(text.as_bytes(), 1 << 30).unwrap()
    }

    #[test]
    fn choose_takes_the_x86_64_pair_and_the_ipxe_binaries_and_says_what_is_missing() {
        let m = manifest(&[
            ("k.vmlinuz", "netboot-kernel", "x86_64"),
            ("k.initrd", "netboot-initrd", "x86_64"),
            ("ipxe.efi", "ipxe-efi", "any"),
            ("bty", "bty", "x86_64"),
            ("k.iso", "usb-iso", "x86_64"),
        ]);
        let c = choose(&m, "R").unwrap();
        assert_eq!(c.pairs.len(), 1, "no arm64 pair listed, none installed");
        let p = &c.pairs[0];
        assert_eq!((p.kernel.name.as_str(), p.initrd.name.as_str()), ("k.vmlinuz", "k.initrd"));
        let names: Vec<&str> = c.all.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["k.vmlinuz", "k.initrd", "ipxe.efi"]);
        assert_eq!(p.sums_name, "k.sha256");

        let m = manifest(&[("k.initrd", "netboot-initrd", "x86_64")]);
        let e = choose(&m, "R").err().unwrap().to_string();
        assert!(
            e.contains("R (release 1.2.3) lists no netboot-kernel asset for arch x86_64"),
            "{e}"
        );
        let m = manifest(&[("k.vmlinuz", "netboot-kernel", "x86_64")]);
        let e = choose(&m, "R").err().unwrap().to_string();
        assert!(e.contains("lists no netboot-initrd asset"), "{e}");
        let m = manifest(&[
            ("a.vmlinuz", "netboot-kernel", "x86_64"),
            ("b.vmlinuz", "netboot-kernel", "x86_64"),
            ("k.initrd", "netboot-initrd", "x86_64"),
        ]);
        let e = choose(&m, "R").err().unwrap().to_string();
        assert!(
            e.contains("lists 2 netboot-kernel assets for arch x86_64 (a.vmlinuz, b.vmlinuz)"),
            "{e}"
        );
        // Allowed in a manifest, but not servable at /boot/{name}.
        let m = manifest(&[
            ("k+1.vmlinuz", "netboot-kernel", "x86_64"),
            ("k.initrd", "netboot-initrd", "x86_64"),
        ]);
        let e = choose(&m, "R").err().unwrap().to_string();
        assert!(e.contains("\"k+1.vmlinuz\" cannot be installed in the boot dir"), "{e}");
        let m = manifest(&[
            ("k", "netboot-kernel", "x86_64"),
            ("k.sha256", "netboot-initrd", "x86_64"),
        ]);
        let e = choose(&m, "R").err().unwrap().to_string();
        assert!(e.contains("has the name of the checksum file"), "{e}");
    }

    #[test]
    fn choose_takes_the_arm64_pair_and_its_ipxe_when_listed_and_whole() {
        let x86 = [
            ("k.vmlinuz", "netboot-kernel", "x86_64"),
            ("k.initrd", "netboot-initrd", "x86_64"),
            ("undionly.kpxe", "ipxe-bios", "x86_64"),
            ("ipxe.efi", "ipxe-efi", "x86_64"),
        ];
        let mut both = x86.to_vec();
        both.extend([
            ("a.vmlinuz", "netboot-kernel", "arm64"),
            ("a.initrd", "netboot-initrd", "arm64"),
            ("ipxe-arm64.efi", "ipxe-efi", "arm64"),
        ]);
        let m = manifest(&both);
        let c = choose(&m, "R").unwrap();
        let pairs: Vec<(Arch, &str, &str, &str)> = c
            .pairs
            .iter()
            .map(|p| (p.arch, p.kernel.name.as_str(), p.initrd.name.as_str(), p.sums_name.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                (Arch::X86_64, "k.vmlinuz", "k.initrd", "k.sha256"),
                (Arch::Arm64, "a.vmlinuz", "a.initrd", "a.sha256")
            ]
        );
        let names: Vec<&str> = c.all.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "k.vmlinuz",
                "k.initrd",
                "a.vmlinuz",
                "a.initrd",
                "undionly.kpxe",
                "ipxe.efi",
                "ipxe-arm64.efi"
            ]
        );

        // Half an arm64 pair is an error naming the half that is there and the one that is not.
        let mut half = x86.to_vec();
        half.push(("a.vmlinuz", "netboot-kernel", "arm64"));
        let e = choose(&manifest(&half), "R").err().unwrap().to_string();
        assert!(
            e.contains(
                "lists netboot-kernel a.vmlinuz for arch arm64 but no netboot-initrd for it"
            ),
            "{e}"
        );
        let mut half = x86.to_vec();
        half.push(("a.initrd", "netboot-initrd", "arm64"));
        let e = choose(&manifest(&half), "R").err().unwrap().to_string();
        assert!(e.contains("a.initrd for arch arm64 but no netboot-kernel"), "{e}");
        let mut two = both.clone();
        two.push(("b.vmlinuz", "netboot-kernel", "arm64"));
        let e = choose(&manifest(&two), "R").err().unwrap().to_string();
        assert!(e.contains("lists 2 netboot-kernel assets for arch arm64"), "{e}");
        // An arm64 pair alone is not enough: x86_64 is required.
        let e = choose(&manifest(&both[4..]), "R").err().unwrap().to_string();
        assert!(e.contains("lists no netboot-kernel asset for arch x86_64"), "{e}");
        // The manifest refuses a name twice; two kernels with one base would still make one
        // checksum file for both.
        let mut clash = x86.to_vec();
        clash.extend([("k", "netboot-kernel", "arm64"), ("a.initrd", "netboot-initrd", "arm64")]);
        let e = choose(&manifest(&clash), "R").err().unwrap().to_string();
        assert!(e.contains("\"k.sha256\" would be installed twice"), "{e}");
    }
}
