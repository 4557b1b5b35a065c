//! The crate's error type: a message with a chain of causes, and `Context` to add "what we were doing".

use std::fmt;

/// An error with a human message and an optional underlying cause.
///
/// Deliberately not `std::error::Error`, so that the blanket `From<E>` below lets `?` convert any
/// standard error (the anyhow trick, without the dependency).
pub struct Error {
    msg: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Result with our `Error` as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error that is only a message.
    pub fn msg(msg: impl Into<String>) -> Error {
        Error { msg: msg.into(), source: None }
    }

    /// The `io::ErrorKind` of the first I/O error in the chain, if any.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = match &self.source {
            Some(s) => Some(s.as_ref()),
            None => None,
        };
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return Some(io.kind());
            }
            cur = e.source();
        }
        None
    }

    /// Prefixes the message with what was being done.
    pub fn wrap(self, outer: String) -> Error {
        let msg = if self.msg.is_empty() { outer } else { format!("{outer}: {}", self.msg) };
        Error { msg, source: self.source }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Error {
    fn from(err: E) -> Error {
        Error { msg: String::new(), source: Some(Box::new(err)) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if !self.msg.is_empty() {
            f.write_str(&self.msg)?;
            sep = ": ";
        }
        let mut cur: Option<&(dyn std::error::Error + 'static)> = match &self.source {
            Some(s) => Some(s.as_ref()),
            None => None,
        };
        while let Some(e) = cur {
            write!(f, "{sep}{e}")?;
            sep = ": ";
            cur = e.source();
        }
        Ok(())
    }
}

// Printed when an error is returned from main or unwrapped in a test: read it like Display.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Adds "what we were doing" to an error on its way up.
pub trait Context<T> {
    /// Prefix the error with `msg`.
    fn context(self, msg: impl Into<String>) -> Result<T>;
    /// Prefix the error with the message `f` builds (only on the error path).
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, msg: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::from(e).wrap(msg.into()))
    }
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::from(e).wrap(f().into()))
    }
}

impl<T> Context<T> for Result<T> {
    fn context(self, msg: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.wrap(msg.into()))
    }
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| e.wrap(f().into()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, msg: impl Into<String>) -> Result<T> {
        self.ok_or_else(|| Error::msg(msg))
    }
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| Error::msg(f()))
    }
}

/// Return early with an error built from a format string.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::Error::msg(format!($($arg)*))) };
}

/// Return early with an error unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => { if !$cond { $crate::bail!($($arg)*) } };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_chains_read_outer_first() {
        let io: std::result::Result<(), _> =
            Err(std::io::Error::new(std::io::ErrorKind::NotFound, "gone"));
        let err = io.context("opening /x").context("flashing").unwrap_err();
        assert_eq!(err.to_string(), "flashing: opening /x: gone");
        assert_eq!(err.io_kind(), Some(std::io::ErrorKind::NotFound));
    }

    #[test]
    fn option_context_gives_message() {
        let none: Option<u8> = None;
        assert_eq!(none.context("no value").unwrap_err().to_string(), "no value");
    }
}
