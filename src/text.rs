//! Text shown to people: every error is one line of bounded length, and a
//! value from the inventory or from a host is shown escaped and cut, so a
//! newline, an escape sequence or a 100,000-character value can neither
//! split a line, drive the terminal nor flood it.

/// The longest error or warning line mxpin prints, in characters (the final
/// render in `main`; room for a host's own multi-line complaint, escaped).
pub const ERROR_LINE_MAX: usize = 1000;

/// The longest inventory error, in characters, `file:line:column` included.
pub const INVENTORY_ERROR_MAX: usize = 400;

/// The longest value quoted inside a message, in characters.
pub const VALUE_MAX: usize = 80;

/// Whether `c` is shown as an escape: control characters, and the Unicode
/// format characters that reorder or hide text (bidi overrides, zero-width).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
}

/// How `c` is shown: itself, or an escape (`\n`, `\r`, `\t`, `\x1b`,
/// `\u{202e}`). `quoted`: also escape `"` and `\\`.
fn piece(c: char, quoted: bool) -> std::borrow::Cow<'static, str> {
    match c {
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        '"' if quoted => "\\\"".into(),
        '\\' if quoted => "\\\\".into(),
        c if hidden(c) && (c as u32) < 0x80 => format!("\\x{:02x}", c as u32).into(),
        c if hidden(c) => format!("\\u{{{:x}}}", c as u32).into(),
        c => c.to_string().into(),
    }
}

/// The pieces of `s` that fit in `max` characters, and whether all did.
/// When not, the kept pieces leave room for one more character (`…`).
fn fit(s: &str, max: usize, quoted: bool) -> (String, bool) {
    let max = max.max(1);
    let mut out = String::new();
    // (byte offset, characters so far) after each piece.
    let mut ends: Vec<(usize, usize)> = Vec::new();
    let mut n = 0;
    for c in s.chars() {
        let p = piece(c, quoted);
        let len = p.chars().count();
        if n + len > max {
            while n + 1 > max {
                ends.pop();
                (n, out) = match ends.last() {
                    Some(&(at, k)) => (k, out[..at].to_string()),
                    None => (0, String::new()),
                };
            }
            return (out, false);
        }
        out.push_str(&p);
        n += len;
        ends.push((out.len(), n));
    }
    (out, true)
}

/// `s` on one line: control characters escaped (`\n`, `\t`, `\x1b`,
/// `\u{202e}`, ...), cut to at most `max` characters with a final `…`.
pub fn one_line(s: &str, max: usize) -> String {
    match fit(s, max, false) {
        (out, true) => out,
        (out, false) => out + "…",
    }
}

/// A value as it appears inside a message: quoted, with quotes,
/// backslashes and control characters escaped, and cut to [`VALUE_MAX`]
/// characters, the cut saying how long the value was.
pub fn shown(s: &str) -> String {
    match fit(s, VALUE_MAX, true) {
        (out, true) => format!("\"{out}\""),
        (out, false) => format!("\"{out}\"… ({} characters)", s.chars().count()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_characters_are_escaped_and_long_lines_cut() {
        assert_eq!(one_line("a\nb\r\tc\x1b[31m", 100), "a\\nb\\r\\tc\\x1b[31m");
        assert_eq!(one_line("x\u{202e}y", 100), "x\\u{202e}y");
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(one_line("abcd", 4), "abcd");
        assert_eq!(one_line("ab\ncd", 4), "ab…");
        assert_eq!(one_line("héllo wörld", 100), "héllo wörld");
    }

    #[test]
    fn values_are_quoted_escaped_and_cut_with_their_length() {
        assert_eq!(shown("home"), "\"home\"");
        assert_eq!(shown("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        let long = "x".repeat(100_000);
        let s = shown(&long);
        assert_eq!(
            s,
            format!("\"{}\"… (100000 characters)", "x".repeat(VALUE_MAX - 1))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever goes in, one line of at most `max` characters without a
        /// control character comes out, and short printable text is kept.
        #[test]
        fn one_line_is_one_bounded_printable_line(s in any::<String>(), max in 1usize..500) {
            let out = one_line(&s, max);
            prop_assert!(out.chars().count() <= max);
            prop_assert!(!out.chars().any(hidden), "{:?}", out);
            if s.chars().count() <= max && !s.chars().any(hidden) {
                prop_assert_eq!(out, s);
            }
        }

        #[test]
        fn shown_values_are_bounded_and_printable(s in any::<String>()) {
            let out = shown(&s);
            prop_assert!(out.chars().count() <= VALUE_MAX + 30);
            prop_assert!(!out.chars().any(hidden));
        }
    }
}
