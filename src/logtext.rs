//! Text that others wrote (clients, Redis, the application's callback), made safe for one log
//! line.
//!
//! A line break in a logged value would start a line that looks like one of the server's own
//! (a date, a level, a message), and a terminal control sequence could rewrite what an
//! operator sees. [`Escaped`] writes such text with every control character (CR, LF, ESC, ...)
//! and Unicode line or paragraph separator escaped as Rust does (`\n`, `\u{1b}`), bytes that are
//! not UTF-8 as U+FFFD, and at most [`MAX_CHARS`] characters, followed by how long it was.

use std::fmt;

/// Characters of a value written at most.
pub(crate) const MAX_CHARS: usize = 200;

/// Someone else's text, for a log line: `%Escaped(bytes)` in a `tracing` field.
pub(crate) struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = String::from_utf8_lossy(self.0);
        for (written, c) in text.chars().enumerate() {
            if written == MAX_CHARS {
                return write!(f, "... ({} bytes in all)", self.0.len());
            }
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Channel names for a log line, as `["a", "b"]`, each one [`Escaped`].
pub(crate) struct EscapedList<'a>(pub &'a [std::sync::Arc<str>]);

impl fmt::Display for EscapedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "\"{}\"", escaped(name))?;
        }
        f.write_str("]")
    }
}

/// [`Escaped`] for a string.
pub(crate) fn escaped(text: &str) -> Escaped<'_> {
    Escaped(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_and_control_characters_are_escaped() {
        let out = Escaped(b"a\nb\rc\x1b[31md\xffe\tf").to_string();
        assert_eq!(out, "a\\nb\\rc\\u{1b}[31md\u{fffd}e\\tf");
        assert_eq!(escaped("x\u{2028}y").to_string(), "x\\u{2028}y");
        assert_eq!(escaped("plain text: é").to_string(), "plain text: é");
    }

    #[test]
    fn a_list_of_names_is_escaped_name_by_name() {
        let names: Vec<std::sync::Arc<str>> = vec!["news".into(), "a\nb\u{1b}".into()];
        assert_eq!(
            EscapedList(&names).to_string(),
            "[\"news\", \"a\\nb\\u{1b}\"]"
        );
    }

    #[test]
    fn long_text_is_cut() {
        let long = "x".repeat(MAX_CHARS + 50);
        let out = escaped(&long).to_string();
        assert_eq!(
            out,
            format!("{}... ({} bytes in all)", "x".repeat(MAX_CHARS), long.len())
        );
        assert_eq!(escaped(&"y".repeat(MAX_CHARS)).to_string().len(), MAX_CHARS);
    }
}
