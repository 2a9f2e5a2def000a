//! Error text is data: the one place where what a handler (or a database) says becomes text
//! the outbox stores and logs (the relay's stored errors, the dispatcher's log lines).
//!
//! A handler's error can say anything: a NUL byte (PostgreSQL's `text` refuses it), 200 KB
//! (more than a MariaDB `TEXT` holds), a chain of a hundred causes. Stored as is, such an
//! error made the outcome write fail, and the message ran again and again past its retry
//! policy. Every error text the relay writes is an [`ErrorText`], which only [`ErrorText::new`]
//! and [`ErrorText::chain`] make: NUL bytes replaced, at most [`MAX_ERROR_BYTES`] bytes, every
//! cause of the chain kept (each shortened as much as needed, the shortest whole).

use std::fmt;

/// The most bytes of error text stored per message or delivery (8 KiB): far below what every
/// backend's column holds (MariaDB's `TEXT`: 65535 bytes), enough for any useful message.
pub const MAX_ERROR_BYTES: usize = 8 * 1024;

/// What replaces a NUL byte.
const REPLACEMENT: char = '\u{FFFD}';

/// Causes kept at most; the rest are counted.
const MAX_CAUSES: usize = 32;

const SEPARATOR: &str = ": ";

/// Error text fit to store: no NUL, at most [`MAX_ERROR_BYTES`] bytes of UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorText(String);

impl ErrorText {
    /// `text` made fit to store.
    pub fn new(text: &str) -> Self {
        Self::chain([text])
    }

    /// The error and its causes, joined by `": "`, made fit to store.
    pub fn from_error(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut parts = vec![e.to_string()];
        let mut source = e.source();
        while let Some(s) = source {
            parts.push(s.to_string());
            source = s.source();
        }
        Self::chain(parts.iter().map(String::as_str))
    }

    /// A chain of messages (the error first, then its causes), joined by `": "`: when the
    /// whole is too long, each part gets an equal share of the room left by the shorter ones
    /// and is cut at a character boundary, with a mark saying how much was cut.
    pub fn chain<'a>(parts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut parts: Vec<String> = parts.into_iter().map(clean).collect();
        if parts.len() > MAX_CAUSES {
            let more = parts.len() - MAX_CAUSES + 1;
            parts.truncate(MAX_CAUSES - 1);
            parts.push(format!("... ({more} more causes)"));
        }
        let seps = SEPARATOR.len() * parts.len().saturating_sub(1);
        let total: usize = parts.iter().map(String::len).sum::<usize>() + seps;
        if total <= MAX_ERROR_BYTES {
            return Self(parts.join(SEPARATOR));
        }
        // Fair shares, shortest first: a short cause is kept whole, the long ones share the rest.
        let mut room = MAX_ERROR_BYTES - seps;
        let mut order: Vec<usize> = (0..parts.len()).collect();
        order.sort_by_key(|&i| parts[i].len());
        let mut left = parts.len();
        for i in order {
            let share = room / left;
            left -= 1;
            if parts[i].len() > share {
                parts[i] = cut(&parts[i], share);
            }
            room -= parts[i].len();
        }
        Self(parts.join(SEPARATOR))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ErrorText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn clean(s: &str) -> String {
    s.replace('\0', &REPLACEMENT.to_string())
}

/// `s` in at most `max` bytes, ending with a mark of how many bytes were cut.
fn cut(s: &str, max: usize) -> String {
    let mark = |n: usize| format!("...[{n} bytes cut]");
    // The mark's own length depends on the number it holds; the longest it can be is enough.
    let room = max.saturating_sub(mark(s.len()).len());
    let mut end = room.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = s[..end].to_owned();
    let m = mark(s.len() - end);
    if out.len() + m.len() <= max {
        out.push_str(&m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_bytes_are_replaced_and_short_text_is_kept() {
        assert_eq!(ErrorText::new("a\0b").as_str(), "a\u{FFFD}b");
        assert_eq!(ErrorText::chain(["top", "cause"]).as_str(), "top: cause");
    }

    #[test]
    fn long_text_is_capped_at_a_char_boundary_and_every_cause_is_kept() {
        let big = "é".repeat(100_000);
        let t = ErrorText::chain([big.as_str(), "the real cause", &"x".repeat(50_000)]);
        assert!(t.as_str().len() <= MAX_ERROR_BYTES, "{}", t.as_str().len());
        assert!(t.as_str().len() > MAX_ERROR_BYTES - 64);
        assert!(
            t.as_str().contains(": the real cause: xxx"),
            "short cause whole"
        );
        assert!(t.as_str().contains("bytes cut]"));
        let one = ErrorText::new(&big);
        assert!(one.as_str().len() <= MAX_ERROR_BYTES);
    }

    #[test]
    fn a_very_long_chain_is_counted_not_listed() {
        let parts: Vec<String> = (0..1000).map(|i| format!("cause {i}")).collect();
        let t = ErrorText::chain(parts.iter().map(String::as_str));
        assert!(t.as_str().ends_with("(969 more causes)"), "{}", t.as_str());
        let huge: Vec<String> = (0..40).map(|_| "y".repeat(10_000)).collect();
        let t = ErrorText::chain(huge.iter().map(String::as_str));
        assert!(t.as_str().len() <= MAX_ERROR_BYTES);
    }
}
