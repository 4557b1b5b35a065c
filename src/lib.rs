//! bty: put pre-built OS disk images onto disks, fast and safely.
//!
//! The library behind the `bty` flasher and the `bty-web` lab server.
#![deny(unsafe_code)]

pub mod error;
pub mod log;
pub mod sys;

pub mod catalog;
pub mod cli;
pub mod disks;
pub mod flash;
#[doc(hidden)]
pub mod fuzz;
pub mod hex;
pub mod image;
pub mod inventory;
pub mod io;
#[cfg(test)]
mod layers;
pub mod natural;
pub mod source;
pub mod suffix;
pub mod units;
pub mod usb;
pub mod web;
pub mod wire;

/// The version of this build, shared by both binaries.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
