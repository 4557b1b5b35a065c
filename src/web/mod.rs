//! bty-web: the lab server: configuration, state, auth, the machine registry, the PXE boot
//! policy, the catalog, artifact uploads, live updates and the browser UI (`ui`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use lexopt::prelude::*;

use crate::error::{Context, Result};

pub mod auth;
pub mod boot;
pub mod catalog;
pub mod config;
pub mod db;
pub mod http;
pub mod metrics;
pub mod pxe;
pub mod routes;
pub mod sse;
pub mod ui;
pub mod validate;

use config::Settings;

const HELP: &str = "\
bty-web: the bty lab server

Usage: bty-web [--listen HOST:PORT] [--state-dir DIR]   serve
       bty-web config [--listen ...] [--state-dir ...]  print every setting and its source
       bty-web --version | --help

  --listen HOST:PORT  address to serve on (default 0.0.0.0:8080; [server] host/port)
  --state-dir DIR     state directory (default /var/lib/bty; [paths] state_dir)

Settings come from bty.toml: BTY_CONFIG_FILE, else every *.toml in BTY_CONFIG_DIR,
else the first of /etc/bty/conf.d/*.toml, /etc/bty/bty.toml, <state_dir>/bty.toml.
BTY_<SECTION>_<KEY> environment variables override the files (BTY_SERVER_PORT,
BTY_PATHS_STATE_DIR, BTY_ADMIN_PASSWORD, ...), and flags override both.

The first line on stdout is \"listening on http://HOST:PORT\" once the socket is bound.
Open routes: GET /healthz, /version, /pxe-bootstrap.ipxe, /pxe/MAC, /pxe/MAC/plan,\n/boot/NAME; POST /pxe/MAC/{inventory,done,status,progress}, /ui/login, /ui/logout.\nWith a session cookie: GET/PUT/DELETE /machines[/MAC], GET /machines/MAC/{disks,lshw}.json, GET /events, POST /events/ID/ack,\nGET /events/machines (server-sent machines-update events), GET/POST/DELETE\n/catalog/entries, GET /metrics (Prometheus). Open: GET /images, /catalog.toml.\nBrowser UI: /ui/ (log in at /ui/login), assets under /static/.\nSIGTERM or SIGINT stops it after the requests in flight (at most 5 s).
";

/// Entry point of the `bty-web` binary.
pub fn main() -> ExitCode {
    crate::cli::run_main(run)
}

fn run() -> Result<ExitCode> {
    let mut flags: Vec<(&'static str, &'static str, String, &'static str)> = Vec::new();
    let mut show_config = false;
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            Short('V') | Long("version") => {
                println!("bty-web {}", crate::VERSION);
                return Ok(ExitCode::SUCCESS);
            }
            Long("listen") => {
                let v = parser.value()?.string()?;
                let (host, port) = v.rsplit_once(':').ok_or_else(|| {
                    crate::error::Error::msg(format!("invalid --listen {v:?}: expected HOST:PORT"))
                })?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                flags.push(("server", "host", host.to_string(), "--listen"));
                flags.push(("server", "port", port.to_string(), "--listen"));
            }
            Long("state-dir") => {
                flags.push(("paths", "state_dir", parser.value()?.string()?, "--state-dir"))
            }
            Value(cmd) if cmd == "config" => show_config = true,
            _ => return Err(arg.unexpected().into()),
        }
    }
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let settings = Settings::load(&env, &flags)?;
    for u in &settings.unknown {
        crate::warn!("unknown setting ignored: {u}");
    }
    if show_config {
        print_config(&settings);
        return Ok(ExitCode::SUCCESS);
    }
    serve(&settings)
}

fn print_config(settings: &Settings) {
    let files: Vec<String> = settings.files.iter().map(|f| f.display().to_string()).collect();
    println!(
        "# config files: {}",
        if files.is_empty() { "none found".to_string() } else { files.join(", ") }
    );
    let rows = settings.rows();
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0);
    for (name, value, source, help) in rows {
        println!("{name:<w0$}  {value:<w1$}  {source:<w2$}  # {help}");
    }
}

fn serve(settings: &Settings) -> Result<ExitCode> {
    crate::sys::limit_malloc_arenas(2);
    let state_dir = settings.state_dir();
    let listen = settings.listen();
    prepare_state_dir(&state_dir, &settings.boot_dir())?;
    let db = db::Db::open(&state_dir)?;
    crate::debug!("state in {}", db.path().display());
    if std::env::var_os("BTY_ADMIN_PASSWORD").is_none_or(|p| p.is_empty()) {
        crate::warn!(
            "BTY_ADMIN_PASSWORD is not set: the operator UI will be open to anyone who can reach it"
        );
    }
    crate::sys::catch_cancel_signals().context("installing the SIGTERM/SIGINT handler")?;
    let listener = http::bind(&listen).with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    }
    let auth = auth::Auth::new(settings.get("admin", "password"), &state_dir)?;
    let app = Arc::new(routes::App {
        settings: settings.clone(),
        db,
        auth,
        progress: Default::default(),
        hub: Default::default(),
        metrics: Default::default(),
        machines_json: Default::default(),
    });
    {
        let app = Arc::clone(&app);
        let hub = Arc::clone(&app.hub);
        hub.run_publisher(
            move || match app.snapshot() {
                Ok(s) => Some(s),
                Err(e) => {
                    crate::error!("building the live-update snapshot: {e}");
                    None
                }
            },
            crate::sys::cancel_flag(),
        )
        .context("starting the live-update publisher")?;
    }
    let limits = settings.limits();
    let db_for_close = Arc::clone(&app);
    let handler: Arc<http::Handler> =
        Arc::new(move |req: &http::Req, body: &mut dyn std::io::Read| {
            let started = std::time::Instant::now();
            let resp = routes::route(&app, req, body);
            app.metrics.request(resp.status, started.elapsed());
            resp
        });
    http::serve(listener, handler, routes::body_policy, limits);
    db_for_close.db.checkpoint_truncate();
    crate::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Creates the state directory layout (state dir and boot dir) and the per-instance session
/// secret (mode 0600) on first start.
fn prepare_state_dir(dir: &Path, boot: &Path) -> Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("creating the state directory {}", dir.display()))?;
    fs::create_dir_all(boot)
        .with_context(|| format!("creating the boot directory {}", boot.display()))?;
    let secret = dir.join("session-secret");
    if !secret.exists() {
        let mut bytes = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .context("reading /dev/urandom for the session secret")?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .with_context(|| format!("creating {}", secret.display()))?;
        f.write_all(crate::hex::encode(&bytes).as_bytes())
            .with_context(|| format!("writing {}", secret.display()))?;
    }
    Ok(())
}
