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

/// Writes one line with one write(2): stderr is unbuffered, so formatting straight into it
/// would cost a system call per piece (18 for an access-log line), each under the stderr lock
/// that every request thread takes. One write of a whole line is also never interleaved with
/// another process's output on the same file.
pub fn emit(level: Level, args: std::fmt::Arguments<'_>) {
    use std::fmt::Write as _;
    let tag = match level {
        Level::Error => "error: ",
        Level::Warn => "warning: ",
        Level::Info | Level::Debug => "",
    };
    let mut line = String::with_capacity(128);
    let _ = writeln!(line, "{}: {tag}{args}", program_name());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
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
