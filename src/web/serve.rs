//! Starting the server: the state directory and its lock, the database, auth, cache, workers,
//! TFTP and the HTTP listener, wired together; and stopping it on SIGTERM or SIGINT.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::error::{Context, Result};
use crate::web::cmd::tftp_files;
use crate::web::config::Settings;
use crate::web::*;

/// An exclusive lock on the state dir, held by a serving bty-web for its whole life: restore
/// and import refuse to run beside it instead of swapping a database under its feet.
pub fn lock_state_dir(state: &Path) -> Result<std::fs::File> {
    fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    let path = state.join("state.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let got = crate::sys::try_lock_exclusive(&f)
        .with_context(|| format!("locking {}", path.display()))?;
    crate::ensure!(got, "a bty-web is running on {} (stop it first)", state.display());
    Ok(f)
}

pub(super) fn serve(settings: &Settings) -> Result<ExitCode> {
    crate::sys::limit_malloc_arenas(2);
    let state_dir = settings.state_dir();
    let listen = settings.listen();
    // Before anything is written: a refused start leaves the state dir as it was.
    let password_line = auth::password_policy(settings)?;
    prepare_state_dir(&state_dir, &settings.boot_dir())?;
    let _lock = lock_state_dir(&state_dir)?;
    let db = db::Db::open(&state_dir)?;
    crate::debug!("state in {}", db.path().display());
    db.limit_growth(
        settings.pxe_limit("max_discovered"),
        settings.pxe_limit("max_lshw_total_mib") << 20,
    );
    pxe::expire_discovered(&db, settings);
    if settings.default_password() {
        crate::warn!("{password_line}");
    } else {
        crate::info!("{password_line}");
    }
    crate::sys::catch_cancel_signals().context("installing the SIGTERM/SIGINT handler")?;
    let listener = http::bind(&listen).with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // Bound before the address line, so a port clash stops the start instead of a later warning.
    let tftp_sock =
        if settings.tftp_enabled() { Some(tftp::bind(settings.tftp_listen())?) } else { None };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        if let Some(t) = tftp_sock.as_ref().and_then(|s| s.local_addr().ok()) {
            let _ = writeln!(out, "tftp listening on udp://{t}");
        }
        let _ = out.flush();
    }
    let tftp_thread = match tftp_sock {
        Some(sock) => {
            let files = tftp_files(settings, addr.port());
            let t = std::thread::Builder::new()
                .name("tftp-listen".into())
                .spawn(move || tftp::serve(sock, files, crate::sys::cancel_flag()))
                .context("starting the TFTP server thread")?;
            Some(t)
        }
        None => None,
    };
    let app = Arc::new(app(settings, db)?);
    start_workers(&app)?;
    serve_http(&app, listener, settings.limits());
    app.db.checkpoint_truncate();
    if let Some(t) = tftp_thread {
        // The cancel flag that stopped HTTP stops it within its poll interval.
        let _ = t.join();
    }
    crate::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The shared state every route reaches: the database, auth (its session epoch from the
/// database), the image cache.
fn app(settings: &Settings, db: db::Db) -> Result<app::App> {
    let state_dir = settings.state_dir();
    let epoch = match db.setting(auth::EPOCH_SETTING)? {
        Some(v) => v.parse().map_err(|_| {
            crate::error::Error::msg(format!(
                "reading the session epoch in {}: {v:?} is not a number",
                db.path().display()
            ))
        })?,
        None => 0,
    };
    let secure = settings.public_url().is_some_and(|u| u.starts_with("https://"));
    let auth = auth::Auth::new(settings.get("admin", "password"), &state_dir, epoch, secure)?;
    let cache = match settings.cache_dir() {
        Some(dir) => Some(Arc::new(
            cache::Cache::open(&dir, settings.cache_max_bytes(), true)
                .with_context(|| format!("opening the image cache {}", dir.display()))?
                .with_upstreams(settings.cache_upstreams()),
        )),
        None => None,
    };
    let discovery = pxe::Discovery::new(settings.pxe_limit("discoveries_per_minute"));
    Ok(app::App::new(settings.clone(), db, auth, cache, discovery))
}

/// The background work: jobs a killed server left, the backup scheduler, the live-update
/// publisher.
fn start_workers(app: &Arc<app::App>) -> Result<()> {
    jobs::Jobs::recover(app)?;
    backup::remove_leftovers(&app.settings().state_dir());
    backup::run_scheduler(Arc::clone(app)).context("starting the backup scheduler")?;
    let publisher = Arc::clone(app);
    let changes = Arc::clone(app);
    Arc::clone(&app.hub)
        .run_publisher(
            move |macs| match changes.live_rows(macs) {
                Ok(r) => Some(r),
                Err(e) => {
                    crate::error!("reading the changed machines for the live updates: {e}");
                    None
                }
            },
            move || match publisher.snapshot() {
                Ok(s) => Some(s),
                Err(e) => {
                    crate::error!("building the live-update snapshot: {e}");
                    None
                }
            },
            crate::sys::cancel_flag(),
        )
        .context("starting the live-update publisher")?;
    Ok(())
}

/// Serves HTTP until SIGTERM or SIGINT: the route table admits (from the head) and answers.
fn serve_http(app: &Arc<app::App>, listener: std::net::TcpListener, limits: http::Limits) {
    let handler_app = Arc::clone(app);
    let handler: Arc<http::Handler> =
        Arc::new(move |req: &http::Req, body: &mut dyn std::io::Read| {
            let started = std::time::Instant::now();
            let resp = routes::route(&handler_app, req, body);
            handler_app.metrics.request(resp.status, started.elapsed());
            resp
        });
    let admit_app = Arc::clone(app);
    // A request refused on its head never reaches the handler; /metrics still counts it.
    let admit: Arc<http::Admit> = Arc::new(move |req: &http::Req| {
        let admitted = routes::admit(&admit_app, req);
        if let Err(r) = &admitted {
            admit_app.metrics.request(r.status, std::time::Duration::ZERO);
        }
        admitted
    });
    http::serve(listener, handler, admit, limits);
}

/// Creates the state directory layout (state dir and boot dir) and the per-instance session
/// secret (mode 0600) on first start.
fn prepare_state_dir(dir: &Path, boot: &Path) -> Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("creating the state directory {}", dir.display()))?;
    fs::create_dir_all(boot)
        .with_context(|| format!("creating the boot directory {}", boot.display()))?;
    if !dir.join("session-secret").exists() {
        auth::new_secret(dir)?;
    }
    Ok(())
}
