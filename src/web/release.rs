//! Netboot release fetch (`POST /boot/releases`): the live environment's kernel and initrd and
//! their sha256 manifest, from the project's GitHub release (`[boot] release_repo` and
//! `release_tag`) or from `[boot] release_url`, a base URL or a local directory that an
//! air-gapped lab mirrors the files into. Every file is checked against the manifest while it
//! streams into a hidden temp file in the boot dir; only when all are good are they renamed
//! into place, so a failure leaves the previous artifacts as they were.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Context, Result};
use crate::web::app::App;
use crate::web::db::JobKind;
use crate::web::jobs::{self, Ctx, Jobs};

/// Largest manifest accepted.
const MANIFEST_MAX: u64 = 1 << 20;

/// Starts a fetch job; None when one is running already.
pub fn start(app: &Arc<App>) -> Result<Option<i64>> {
    Jobs::start(app, JobKind::Release, fetch)
}

/// The artifact names and the manifest's: `<base>.vmlinuz`, `<base>.initrd`, `<base>.sha256`.
pub fn artifacts(app: &App) -> (Vec<String>, String) {
    let s = &app.settings;
    let kernel = s.get("boot", "kernel").to_string();
    let initrd = s.get("boot", "initrd").to_string();
    let manifest = match kernel.strip_suffix(".vmlinuz") {
        Some(base) => format!("{base}.sha256"),
        None => format!("{kernel}.sha256"),
    };
    (vec![kernel, initrd], manifest)
}

/// The release repo and tag: as saved on the settings page, else from the configuration.
pub fn repo_and_tag(app: &App) -> (String, String) {
    let s = &app.settings;
    let saved = |k: &str| app.db.setting(k).ok().flatten().filter(|v| !v.is_empty());
    (
        saved("release_repo").unwrap_or_else(|| s.get("boot", "release_repo").to_string()),
        saved("release_tag").unwrap_or_else(|| s.get("boot", "release_tag").to_string()),
    )
}

/// Where the release's files come from, for people: the base URL or directory, or the GitHub
/// release of `repo` at `tag`.
pub fn origin(app: &App, repo: &str, tag: &str) -> String {
    let base = app.settings.get("boot", "release_url").trim();
    if base.is_empty() { format!("the GitHub release {repo} {tag}") } else { base.to_string() }
}

/// Where a file of the release is: under `release_url`, else the GitHub release download URL.
fn location(app: &App, name: &str) -> String {
    let base = app.settings.get("boot", "release_url").trim();
    if !base.is_empty() {
        return format!("{}/{name}", base.trim_end_matches('/'));
    }
    let (repo, tag) = repo_and_tag(app);
    match tag.as_str() {
        "" | "latest" => format!("https://github.com/{repo}/releases/latest/download/{name}"),
        tag => format!("https://github.com/{repo}/releases/download/{tag}/{name}"),
    }
}

/// The job: manifest first, then each artifact, verified; then all installed together.
fn fetch(ctx: &Ctx) -> Result<String> {
    let app = &ctx.app;
    let boot = app.settings.boot_dir();
    fs::create_dir_all(&boot).with_context(|| format!("creating {}", boot.display()))?;
    let (names, manifest_name) = artifacts(app);
    let manifest_at = location(app, &manifest_name);
    let manifest = crate::source::fetch_document(&manifest_at, MANIFEST_MAX)?;
    let manifest_text = String::from_utf8_lossy(&manifest).into_owned();
    let mut want = Vec::new();
    for n in &names {
        let sum = crate::web::catalog::find_digest(&manifest_text, n)
            .with_context(|| format!("{manifest_at} lists no sha256 for {n}"))?;
        want.push((n.clone(), sum));
    }
    let temps: Vec<PathBuf> =
        names.iter().map(|n| boot.join(format!(".{n}.fetch-{}", ctx.id))).collect();
    let _cleanup = jobs::TempFiles(temps.clone());
    let mut done_bytes = 0u64;
    for ((name, sum), tmp) in want.iter().zip(&temps) {
        let at = location(app, name);
        let src = crate::source::Source::open(&at)?;
        let total = src.size();
        let mut r = src.reader()?;
        let mut f = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut n_file = 0u64;
        loop {
            jobs::check_cancel(ctx)?;
            let n = r.read(&mut buf).with_context(|| format!("downloading {at}"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            f.write_all(&buf[..n]).with_context(|| format!("writing {}", tmp.display()))?;
            n_file += n as u64;
            ctx.progress(done_bytes + n_file, total.map(|t| done_bytes + t));
        }
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        let got = crate::hex::encode(&h.finalize());
        crate::ensure!(
            &got == sum,
            "{at}: sha256 {got} does not match the manifest's {sum}; the installed artifacts are unchanged"
        );
        done_bytes += n_file;
    }
    for ((name, _), tmp) in want.iter().zip(&temps) {
        let dest = boot.join(name);
        fs::rename(tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
    }
    let mpath = boot.join(&manifest_name);
    fs::write(&mpath, &manifest).with_context(|| format!("writing {}", mpath.display()))?;
    if let Err(e) = File::open(&boot).and_then(|d| d.sync_all()) {
        crate::warn!("syncing {}: {e}", boot.display());
    }
    let msg = format!("installed {} from {}", names.join(", "), manifest_at);
    app.db.event(
        "boot.release.installed",
        None,
        &msg,
        Some(serde_json::json!({ "files": names, "from": manifest_at })),
    );
    Ok(msg)
}
