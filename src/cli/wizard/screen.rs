//! Drawing the wizard on a plain terminal: ANSI clear and attributes where the terminal takes
//! them, plain text on a dumb one or with `NO_COLOR`; reading one line of input.

use std::io::{BufRead, Write};

/// The steps, in order, as the breadcrumb names them.
pub const STEPS: [&str; 6] = ["Catalog", "Image", "Disk", "Confirm", "Flash", "Done"];

/// What the terminal can do.
#[derive(Clone, Copy, Debug)]
pub struct Screen {
    /// SGR attributes (dim, bold, reverse, red).
    color: bool,
    /// Clear the screen before each step (a dumb terminal or a log gets the steps one after
    /// the other instead).
    clear: bool,
}

impl Screen {
    /// Looks at TERM, NO_COLOR and whether stdout is a terminal.
    pub fn detect() -> Screen {
        let tty = crate::sys::isatty(1);
        let dumb = std::env::var("TERM").map_or(true, |t| t.is_empty() || t == "dumb");
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Screen { color: tty && !dumb && !no_color, clear: tty && !dumb }
    }

    fn sgr(&self, code: &str, s: &str) -> String {
        if self.color { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }

    pub fn bold(&self, s: &str) -> String {
        self.sgr("1", s)
    }

    /// Greyed out: rows that cannot be picked. Without colour the caller marks them in text.
    pub fn dim(&self, s: &str) -> String {
        self.sgr("2", s)
    }

    /// An error or warning line.
    pub fn problem(&self, s: &str) -> String {
        if self.color { format!("\x1b[1;31m! {s}\x1b[0m") } else { format!("! {s}") }
    }

    /// The breadcrumb, the current step marked (reverse video, or [brackets] without colour).
    pub fn breadcrumb(&self, current: usize) -> String {
        let parts: Vec<String> = STEPS
            .iter()
            .enumerate()
            .map(|(i, s)| match (i == current, self.color) {
                (true, true) => format!("\x1b[7m {s} \x1b[0m"),
                (true, false) => format!("[{s}]"),
                (false, _) => s.to_string(),
            })
            .collect();
        parts.join(" > ")
    }

    /// Writes a whole screen at once (after clearing, where that is done).
    pub fn show(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        if self.clear {
            let _ = out.write_all(b"\x1b[H\x1b[2J");
        } else {
            let _ = out.write_all(b"\n");
        }
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// The terminal's height in lines: what it reports, or 24 (an 80x24 console; a serial
    /// console does not know its size).
    pub fn rows(&self) -> u16 {
        crate::sys::terminal_rows(1).unwrap_or(24)
    }

    /// Prints `prompt` and reads one line; None at end of input.
    pub fn ask(&self, prompt: &str) -> Option<String> {
        {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(prompt.as_bytes());
            let _ = out.flush();
        }
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim().to_string()),
        }
    }
}

/// Cuts `s` to `n` characters, marking the cut with "~".
pub fn fit(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

/// What a typed line means on a menu: a row number, a letter key, or nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Row(usize),
    Key(char),
    Empty,
    /// Anything else, as typed (for the error message).
    Other(String),
}

/// Reads a menu answer: numbers are 1-based rows, single letters keys (any case).
pub fn parse_input(line: &str) -> Input {
    let t = line.trim();
    if t.is_empty() {
        return Input::Empty;
    }
    if let Ok(n) = t.parse::<usize>() {
        return Input::Row(n);
    }
    let mut chars = t.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => Input::Key(c.to_ascii_lowercase()),
        _ => Input::Other(t.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn menu_input_is_rows_keys_or_other() {
        assert_eq!(parse_input(" 3 \n"), Input::Row(3));
        assert_eq!(parse_input("B"), Input::Key('b'));
        assert_eq!(parse_input(""), Input::Empty);
        assert_eq!(parse_input("-1"), Input::Other("-1".into()));
        assert_eq!(parse_input("yes"), Input::Other("yes".into()));
        assert_eq!(parse_input("?"), Input::Other("?".into()));
    }

    #[test]
    fn fit_cuts_long_names() {
        assert_eq!(fit("abcdef", 4), "abc~");
        assert_eq!(fit("abc", 4), "abc");
    }

    #[test]
    fn breadcrumb_without_colour_brackets_the_step() {
        let s = Screen { color: false, clear: false };
        assert_eq!(s.breadcrumb(1), "Catalog > [Image] > Disk > Confirm > Flash > Done");
    }
}
