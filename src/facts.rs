//! What is on a host, read in one remote command.
//!
//! A facts script prints length-framed sections, `@@mxpin NAME LEN\n` then
//! exactly LEN bytes and a newline, so file contents need no escaping and a
//! truncated or garbled answer is detected instead of misread. MTA modules
//! write the scripts (with [`SHELL_HELPERS`]) and interpret the sections.

use std::collections::BTreeMap;

/// Shell functions for facts scripts: `put NAME VALUE` and `putfile NAME PATH`
/// (the latter keeps trailing newlines, which `$(...)` would strip).
/// Requires `LC_ALL=C` so that `${#v}` counts bytes.
pub const SHELL_HELPERS: &str = r#"put() { printf '@@mxpin %s %s\n' "$1" "${#2}"; printf '%s\n' "$2"; }
putfile() {
  if v=$(cat -- "$2" 2>&1; r=$?; echo x; exit $r); then put "$1" "${v%x}"; else put error "cannot read $2: ${v%x}"; fi
}
"#;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable facts from host: {0}")]
pub struct FramingError(String);

/// Whether a section may be given more than once: `error` (every
/// unreadable file adds one) and `fresh:TABLE` (one per database suffix).
/// Any other name given twice is a garbled answer.
fn repeats(name: &str) -> bool {
    name == "error" || name.starts_with("fresh:")
}

/// The frame every complete answer ends with; nothing may follow it.
pub const END: &str = "end";

/// Sections by name. A name given twice (see [`repeats`]) keeps every
/// value, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sections(BTreeMap<String, Vec<String>>);

impl Sections {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.last()).map(String::as_str)
    }

    /// Every section with its last value, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .filter_map(|(k, v)| v.last().map(|v| (k.as_str(), v.as_str())))
    }

    pub fn all(&self, name: &str) -> &[String] {
        self.0.get(name).map_or(&[], Vec::as_slice)
    }

    /// Every section name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// Parses a facts script's output. Anything outside frames is an error: a
/// login banner or shell noise must not be mistaken for file content. So is
/// anything after the [`END`] frame, and a section given twice that does not
/// [`repeat`](repeats): two answers mixed, or a frame sent again.
pub fn parse(output: &[u8]) -> Result<Sections, FramingError> {
    let mut sections = Sections::default();
    let mut rest = output;
    while !rest.is_empty() {
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| FramingError("truncated header".into()))?;
        let header = std::str::from_utf8(&rest[..nl])
            .map_err(|_| FramingError("header is not UTF-8".into()))?;
        let mut words = header.split(' ');
        let (Some("@@mxpin"), Some(name), Some(len), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            let shown: String = header.chars().take(80).collect();
            return Err(FramingError(format!("unexpected line {shown:?}")));
        };
        let len: usize = len
            .parse()
            .map_err(|_| FramingError(format!("bad length in {header:?}")))?;
        let body = &rest[nl + 1..];
        if body.len() < len + 1 || body[len] != b'\n' {
            return Err(FramingError(format!("section {name} is truncated")));
        }
        let value = String::from_utf8(body[..len].to_vec())
            .map_err(|_| FramingError(format!("section {name} is not UTF-8")))?;
        let values = sections.0.entry(name.to_string()).or_default();
        if !values.is_empty() && !repeats(name) {
            return Err(FramingError(format!("section {name} is given twice")));
        }
        values.push(value);
        rest = &body[len + 1..];
        if name == END && !rest.is_empty() {
            return Err(FramingError("output goes on after the end frame".into()));
        }
    }
    Ok(sections)
}

/// Frames as the facts script writes them (`@@mxpin NAME LEN`), for
/// tests built on captured or made-up sections.
#[cfg(test)]
pub fn frames(parts: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in parts {
        out.extend_from_slice(format!("@@mxpin {n} {}\n{v}\n", v.len()).as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_with_embedded_newlines_and_markers() {
        let out = b"@@mxpin fresh:a 3\nx\ny\n@@mxpin file 18\n@@mxpin fake 1\nz\n\n\n@@mxpin fresh:a 0\n\n";
        let s = parse(out).unwrap();
        assert_eq!(s.get("file"), Some("@@mxpin fake 1\nz\n\n"));
        assert_eq!(s.all("fresh:a"), ["x\ny", ""]);
        assert_eq!(s.get("fresh:a"), Some(""));
        assert_eq!(s.get("missing"), None);
    }

    #[test]
    fn rejects_noise_and_truncation() {
        assert!(parse(b"Welcome!\n@@mxpin a 1\nx\n").is_err());
        assert!(parse(b"@@mxpin a 5\nx\n").is_err());
        assert!(parse(b"@@mxpin a 1\nxy").is_err());
        assert!(parse(b"@@mxpin a\n").is_err());
    }

    #[test]
    fn rejects_repeated_sections_and_anything_after_the_end() {
        assert_eq!(
            parse(b"@@mxpin a 1\nx\n@@mxpin a 1\nx\n").unwrap_err(),
            FramingError("section a is given twice".into())
        );
        assert!(parse(b"@@mxpin error 1\nx\n@@mxpin error 1\ny\n").is_ok());
        assert_eq!(
            parse(b"@@mxpin end 2\nok\n@@mxpin a 1\nx\n").unwrap_err(),
            FramingError("output goes on after the end frame".into())
        );
        assert!(parse(b"@@mxpin a 1\nx\n@@mxpin end 2\nok\n").is_ok());
    }

    /// The helpers, run by a real /bin/sh, produce what the parser expects,
    /// including files without a final newline and with trailing blank lines.
    #[test]
    fn shell_helpers_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        let content = "line 1\n\n@@mxpin x 1\n'quoted' $HOME\n\n\n";
        std::fs::write(&f, content).unwrap();
        let g = dir.path().join("g");
        std::fs::write(&g, "no newline").unwrap();
        let script = format!(
            "LC_ALL=C; export LC_ALL\n{SHELL_HELPERS}put v 'héllo'\nputfile f '{}'\nputfile g '{}'\nputfile h '{}/missing'\n",
            f.display(),
            g.display(),
            dir.path().display()
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        let s = parse(&out.stdout).unwrap();
        assert_eq!(s.get("v"), Some("héllo"));
        assert_eq!(s.get("f"), Some(content));
        assert_eq!(s.get("g"), Some("no newline"));
        assert!(s.get("error").unwrap().starts_with("cannot read"));
    }
}
