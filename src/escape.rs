//! Text from a core or a target (process names, command lines, file
//! names, notes) shown to a person: control characters escaped, so that a
//! name cannot move the cursor, retitle the terminal, clear the screen or
//! start a line of its own in coresnap's output.
//!
//! Every human-readable output goes through [`escape`]: `inspect`'s text,
//! summaries, warnings and errors. `--json` and the manifest have JSON's
//! own escaping and keep the exact text.
//!
//! The escapes are those of `ls -b` and C: `\n`, `\t`, `\r`, `\e` (ESC),
//! `\a`, `\b`, `\f`, `\v`, `\xHH` for the other C0 bytes and DEL,
//! `\u{HHHH}` for C1 controls (U+0080-U+009F: some terminals take U+009B as
//! CSI), for the line and paragraph separators (U+2028, U+2029: a line
//! break to some viewers) and for the bidirectional overrides and isolates
//! (U+202A-U+202E, U+2066-U+2069), which reorder what follows them on the
//! line. A backslash is left as it is, unlike `ls -b`: escaping is then
//! idempotent (text escaped twice reads as text escaped once, so a message
//! that already holds escaped text can be escaped again where it is
//! printed). The price is that a name holding a backslash and an `n` reads
//! like one holding a newline; `--json` tells them apart.

use std::borrow::Cow;
use std::fmt;

/// `text` with every control character escaped; borrowed when there was
/// none.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_char(&mut out, c);
    }
    Cow::Owned(out)
}

/// `text` as one field of a tab-separated line: control characters as in
/// [`escape`], and a backslash doubled, so that a reader can undo the
/// escaping exactly and no name can make a tab or a line of its own.
pub fn escape_tsv_field(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else {
            push_char(&mut out, c);
        }
    }
    out
}

/// Displays its text through [`escape`]: for `format!` arguments.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

fn push_char(out: &mut String, c: char) {
    use std::fmt::Write;
    if !needs_escape(c) {
        out.push(c);
        return;
    }
    let short = match c {
        '\n' => "\\n",
        '\t' => "\\t",
        '\r' => "\\r",
        '\u{1b}' => "\\e",
        '\u{07}' => "\\a",
        '\u{08}' => "\\b",
        '\u{0c}' => "\\f",
        '\u{0b}' => "\\v",
        _ => "",
    };
    if !short.is_empty() {
        out.push_str(short);
    } else if (c as u32) < 0x80 {
        let _ = write!(out, "\\x{:02x}", c as u32);
    } else {
        let _ = write!(out, "\\u{{{:04x}}}", c as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_sequences_become_visible_text() {
        assert_eq!(escape("\u{1b}]0;PWN\u{07}\u{1b}[2J"), "\\e]0;PWN\\a\\e[2J");
        assert_eq!(escape("a\nb\tc\rd\0e\u{7f}"), "a\\nb\\tc\\rd\\x00e\\x7f");
        assert_eq!(escape("csi\u{9b}31m"), "csi\\u{009b}31m");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(escape("one\u{2028}two"), "one\\u{2028}two");
    }

    #[test]
    fn plain_text_is_borrowed_and_escaping_is_idempotent() {
        let plain = "/usr/lib/x86_64-linux-gnu/libc.so.6 (deleted) ünï \\n";
        assert!(matches!(escape(plain), Cow::Borrowed(_)));
        let hostile = "x\u{1b}[31m\ny\u{9b}\u{2066}";
        let once = escape(hostile).into_owned();
        assert_eq!(escape(&once), once);
        assert!(!once.chars().any(needs_escape));
    }

    #[test]
    fn tsv_fields_hold_no_separator_and_can_be_undone() {
        let field = escape_tsv_field("a\tb\nc\\nd");
        assert_eq!(field, "a\\tb\\nc\\\\nd");
        assert!(!field.contains(['\t', '\n']));
    }
}
