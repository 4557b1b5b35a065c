//! bty-web: the lab server: configuration, state, auth, the machine registry, the PXE boot
//! policy, the catalog, artifact uploads, live updates and the browser UI (`ui`).

use std::process::ExitCode;

pub mod app;
pub mod auth;
pub mod backup;
pub mod boot;
pub mod bulk;
pub mod cache;
pub mod catalog;
mod cmd;
pub mod config;
pub mod db;
pub mod deploy;
pub mod dhcp;
pub mod export;
pub mod guard;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod offers;
pub mod pxe;
pub mod ranges;
pub mod release;
pub mod routes;
pub mod serve;
pub mod sse;
pub mod tftp;
pub mod ui;
pub mod validate;

/// Entry point of the `bty-web` binary.
pub fn main() -> ExitCode {
    crate::log::run_main(cmd::run)
}
