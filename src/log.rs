//! Leveled one-line logging to stderr (`bty: warning: ...`), level from `BTY_LOG`.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

/// Message severity, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the level from `BTY_LOG` (error, warn, info, debug); unknown values keep the default.
pub fn init_from_env() {
    if let Ok(v) = std::env::var("BTY_LOG") {
        let level = match v.to_ascii_lowercase().as_str() {
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" | "trace" => Level::Debug,
            _ => return,
        };
        set_level(level);
    }
}

/// Sets the most verbose level that is printed.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether messages of `level` are printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one line under the stderr lock, so threads never interleave mid-line.
pub fn emit(level: Level, args: std::fmt::Arguments<'_>) {
    let tag = match level {
        Level::Error => "error: ",
        Level::Warn => "warning: ",
        Level::Info | Level::Debug => "",
    };
    let prog = program_name();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{prog}: {tag}{args}");
}

fn program_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::env::args_os()
            .next()
            .and_then(|a| {
                std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "bty".into())
    })
}

#[macro_export]
macro_rules! error {
    ($($a:tt)*) => { if $crate::log::enabled($crate::log::Level::Error) { $crate::log::emit($crate::log::Level::Error, format_args!($($a)*)) } };
}
#[macro_export]
macro_rules! warn {
    ($($a:tt)*) => { if $crate::log::enabled($crate::log::Level::Warn) { $crate::log::emit($crate::log::Level::Warn, format_args!($($a)*)) } };
}
#[macro_export]
macro_rules! info {
    ($($a:tt)*) => { if $crate::log::enabled($crate::log::Level::Info) { $crate::log::emit($crate::log::Level::Info, format_args!($($a)*)) } };
}
#[macro_export]
macro_rules! debug {
    ($($a:tt)*) => { if $crate::log::enabled($crate::log::Level::Debug) { $crate::log::emit($crate::log::Level::Debug, format_args!($($a)*)) } };
}
