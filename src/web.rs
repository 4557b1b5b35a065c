//! bty-web: the lab server. This first cut serves the open health and version routes on the
//! state directory layout of the spec; the machine registry, PXE scripts, catalog and UI are
//! built on it next.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lexopt::prelude::*;

use crate::error::{Context, Result};

const HELP: &str = "\
bty-web: the bty lab server

Usage: bty-web [--listen ADDR] [--state-dir DIR]
       bty-web --version | --help

  --listen ADDR      address to serve on (default 0.0.0.0:8080, env BTY_SERVER_LISTEN)
  --state-dir DIR    state directory (default /var/lib/bty, env BTY_PATHS_STATE_DIR)

The admin password comes from BTY_ADMIN_PASSWORD. The first line on stdout is
\"listening on http://HOST:PORT\" once the socket is bound.

Routes served by this build: GET /healthz, GET /version.
";

/// Entry point of the `bty-web` binary.
pub fn main() -> ExitCode {
    crate::cli::run_main(run)
}

fn run() -> Result<ExitCode> {
    let mut listen = std::env::var("BTY_SERVER_LISTEN").unwrap_or_else(|_| "0.0.0.0:8080".into());
    let mut state_dir = PathBuf::from(
        std::env::var("BTY_PATHS_STATE_DIR").unwrap_or_else(|_| "/var/lib/bty".into()),
    );
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
            Long("listen") => listen = parser.value()?.string()?,
            Long("state-dir") => state_dir = parser.value()?.string()?.into(),
            _ => return Err(arg.unexpected().into()),
        }
    }
    prepare_state_dir(&state_dir)?;
    if std::env::var_os("BTY_ADMIN_PASSWORD").is_none_or(|p| p.is_empty()) {
        crate::warn!(
            "BTY_ADMIN_PASSWORD is not set: the operator UI will be open to anyone who can reach it"
        );
    }
    let server = tiny_http::Server::http(&listen)
        .map_err(|e| crate::error::Error::msg(format!("listening on {listen}: {e}")))?;
    let addr = server.server_addr().to_ip().context("reading the bound address")?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    }
    for rq in server.incoming_requests() {
        let (status, body) = match (rq.method(), rq.url().split('?').next().unwrap_or("")) {
            (tiny_http::Method::Get, "/healthz") => (200, r#"{"status":"ok"}"#.to_string()),
            (tiny_http::Method::Get, "/version") => {
                (200, serde_json::json!({ "version": crate::VERSION }).to_string())
            }
            _ => (404, r#"{"detail":"Not Found"}"#.to_string()),
        };
        crate::info!("{} {} {status}", rq.method(), rq.url());
        let header = tiny_http::Header::from_bytes("Content-Type", "application/json")
            .map_err(|_| crate::error::Error::msg("building a header"))?;
        let resp =
            tiny_http::Response::from_string(body).with_status_code(status).with_header(header);
        if let Err(e) = rq.respond(resp) {
            crate::debug!("answering a request: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates the state directory layout (state dir and `boot/`) and the per-instance session
/// secret (mode 0600) on first start.
fn prepare_state_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir.join("boot"))
        .with_context(|| format!("creating the state directory {}", dir.display()))?;
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
        f.write_all(crate::flash::hex(&bytes).as_bytes())
            .with_context(|| format!("writing {}", secret.display()))?;
    }
    Ok(())
}
