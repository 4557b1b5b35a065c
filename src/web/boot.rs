//! Netboot artifacts under the boot dir: served at `GET /boot/{name}` with sendfile(2), Range
//! and If-Range (marking that a machine's live environment booted when `?mac=` comes along),
//! and uploaded with `PUT /boot/{name}`,
//! streamed to a temporary file and renamed into place so a reader never sees half a file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::web::app::App;
use crate::web::app::{bad, internal};
use crate::web::db::PxeMark;
use crate::web::http::{Body, Req, Resp};
use crate::web::validate;

/// `GET|HEAD /boot/{name}`.
pub fn serve(app: &App, req: &Req, name: &str) -> Resp {
    let name = match validate::boot_file_name(name) {
        Ok(n) => n,
        Err(e) => return bad(e),
    };
    let path = app.settings().boot_dir().join(name);
    let (file, len) = match open_first(&path, name, &app.settings().ipxe_dir()) {
        Ok(Some(f)) => f,
        // An HTTP-booted ipxe.efi fetches this beside itself; the name the client used for
        // us is one it can reach, so the script chains there (when that name is ours).
        Ok(None) if name == crate::web::pxe::AUTOEXEC => {
            return match crate::web::guard::script_host(app, req) {
                Some(host) => Resp::text(200, crate::web::pxe::autoexec(&format!("http://{host}"))),
                None => Resp::error(400, "invalid Host header"),
            };
        }
        Ok(None) => return Resp::error(404, &format!("no such file: {name}")),
        Err((p, e)) => {
            return internal(crate::error::Error::from(e).wrap(format!("opening {}", p.display())));
        }
    };
    if let Some(mac) = req.param("mac").and_then(|m| validate::normalize_mac(m).ok()) {
        let live = crate::web::release::active_all(app)
            .iter()
            .any(|(kernel, initrd)| name == kernel || name == initrd);
        if live {
            if let Err(e) = app.db.pxe_mark(&mac, PxeMark::FlasherBooted) {
                crate::warn!("{e}");
            }
        }
    }
    let etag = crate::web::ranges::file_etag(&file, len);
    // A boot file may be uploaded again under its name: caches must ask each time.
    crate::web::ranges::answer(req, len, etag, "no-cache", name, |offset, len| {
        if req.method == "GET" {
            app.metrics.boot_bytes.fetch_add(len, Ordering::Relaxed);
        }
        Body::File { file, offset, len, keep: None }
    })
}

/// The regular file `path` of the boot dir, else the iPXE dir's file of that name (not for
/// the generated script, which only the boot dir may override), with its length; None when
/// neither has one. Served over HTTP and TFTP alike.
pub(crate) fn open_first(
    path: &Path,
    name: &str,
    ipxe_dir: &Path,
) -> Result<Option<(File, u64)>, (std::path::PathBuf, io::Error)> {
    let regular = |p: &Path| {
        File::open(p).and_then(|f| {
            let m = f.metadata()?;
            if m.is_file() { Ok((f, m.len())) } else { Err(io::ErrorKind::NotFound.into()) }
        })
    };
    match regular(path) {
        Ok(f) => return Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err((path.to_path_buf(), e)),
    }
    if name == crate::web::pxe::AUTOEXEC {
        return Ok(None);
    }
    let fallback = ipxe_dir.join(name);
    match regular(&fallback) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err((fallback, e)),
    }
}

/// `PUT /boot/{name}`: the body is the file. 200 `{"name", "size_bytes", "path"}`.
pub fn upload(app: &App, req: &Req, name: &str, body: &mut dyn Read) -> Resp {
    let name = match validate::boot_file_name(name) {
        Ok(n) => n,
        Err(e) => return bad(e),
    };
    let max = app.settings().max_upload();
    if req.content_length().is_some_and(|n| n > max) {
        return Resp::error(413, &format!("{name}: larger than the upload limit of {max} bytes"));
    }
    let dir = app.settings().boot_dir();
    let dest = dir.join(name);
    // A leading dot keeps the partial file out of GET /boot (names may not start with one).
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{name}.upload-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = receive(body, &tmp, max).and_then(|size| {
        fs::rename(&tmp, &dest).map_err(|e| Failure::Disk(format!("renaming to {name}: {e}")))?;
        // The rename is durable only once the directory is synced.
        if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
            crate::warn!("syncing {}: {e}", dir.display());
        }
        Ok(size)
    });
    let size = match result {
        Ok(size) => size,
        Err(f) => {
            let _ = fs::remove_file(&tmp);
            crate::warn!("upload of {name} failed: {}", f.detail());
            app.db.event(
                "boot.upload.failed",
                None,
                &format!("upload of {name} failed: {}", f.detail()),
                None,
            );
            return f.response(name, max);
        }
    };
    let msg = format!("uploaded {name} ({})", crate::units::bytes(size));
    crate::info!("{msg}");
    app.db.event(
        "boot.uploaded",
        None,
        &msg,
        Some(serde_json::json!({ "name": name, "size_bytes": size })),
    );
    Resp::json(
        200,
        &serde_json::json!({ "name": name, "size_bytes": size, "path": dest.display().to_string() }),
    )
}

/// Why an upload did not land.
enum Failure {
    /// The body went over the limit.
    TooLarge,
    /// The client's side: dropped connection, stalled, malformed chunks.
    Client(String),
    /// Our side: the boot dir is full or unwritable.
    Full(String),
    Disk(String),
}

impl Failure {
    fn detail(&self) -> String {
        match self {
            Failure::TooLarge => "over the upload limit".into(),
            Failure::Client(m) | Failure::Full(m) | Failure::Disk(m) => m.clone(),
        }
    }

    fn response(&self, name: &str, max: u64) -> Resp {
        match self {
            Failure::TooLarge => {
                Resp::error(413, &format!("{name}: larger than the upload limit of {max} bytes"))
            }
            Failure::Client(m) => Resp::error(400, &format!("{name}: {m}")),
            Failure::Full(m) => Resp::error(507, &format!("{name}: {m}")),
            Failure::Disk(m) => internal(crate::error::Error::msg(format!("{name}: {m}"))),
        }
    }
}

/// Copies the body into a new file at `tmp` and syncs it; the byte count.
fn receive(body: &mut dyn Read, tmp: &Path, max: u64) -> Result<u64, Failure> {
    let disk = |what: &str, e: io::Error| {
        let m = format!("{what} {}: {e}", tmp.display());
        if e.raw_os_error() == Some(crate::sys::ENOSPC) {
            Failure::Full(m)
        } else {
            Failure::Disk(m)
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(tmp)
        .map_err(|e| disk("creating", e))?;
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => return Err(Failure::TooLarge),
            Err(e) => {
                return Err(Failure::Client(format!(
                    "reading the upload after {total} bytes: {e}"
                )));
            }
        };
        total += n as u64;
        if total > max {
            return Err(Failure::TooLarge);
        }
        file.write_all(&buf[..n]).map_err(|e| disk("writing", e))?;
    }
    file.sync_all().map_err(|e| disk("syncing", e))?;
    Ok(total)
}
