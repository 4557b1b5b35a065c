//! Leveled one-line logging to stderr (`bty: warning: ...`), level from `BTY_LOG`.
//!
//! A message is one line whatever it carries: control characters (and the Unicode line
//! separators and bidi overrides that reorder what a terminal shows) are escaped here, once,
//! so a request path, a header or an event summary from a client cannot forge a log line.

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
    let _ = write!(line, "{}: {tag}", program_name());
    let start = line.len();
    let _ = write!(line, "{args}");
    // Formatted in place, escaped only when needed: the access log writes a line per request.
    if line[start..].chars().any(needs_escape) {
        let raw = line.split_off(start);
        push_escaped(&mut line, &raw);
    }
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Whether a character must not reach a log line as is: it could end the line, rewrite it on
/// a terminal, or make it read in another order than it was written.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Appends `text` with `\n`, `\r`, `\t` and `\u{..}` in place of the characters
/// `needs_escape` names. Non-UTF-8 input never gets here: callers format it lossily, so it
/// shows as U+FFFD.
pub fn push_escaped(out: &mut String, text: &str) {
    if !text.chars().any(needs_escape) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
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

/// Runs a binary's body (`bty`'s and `bty-web`'s): logging from the environment, and any error
/// printed as `<prog>: error: ...` with exit status 2.
pub fn run_main(
    body: fn() -> crate::error::Result<std::process::ExitCode>,
) -> std::process::ExitCode {
    init_from_env();
    match body() {
        Ok(code) => code,
        Err(e) => {
            crate::error!("{e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let esc = |t: &str| {
            let mut s = String::new();
            push_escaped(&mut s, t);
            s
        };
        assert_eq!(esc("GET /x\nbty-web: FORGED"), "GET /x\\nbty-web: FORGED");
        assert_eq!(esc("a\r\tb\x1b[2J\u{7f}\u{85}"), "a\\r\\tb\\u{1b}[2J\\u{7f}\\u{85}");
        assert_eq!(esc("\u{2028}\u{202e}x"), "\\u{2028}\\u{202e}x");
        assert_eq!(esc("Müller \\ \u{fffd} ok"), "Müller \\ \u{fffd} ok");
    }
}
