//! An in-place editor for Postfix `main.cf`.
//!
//! Only the logical lines of parameters being changed are touched; every
//! other byte (comments, blank lines, ordering, odd spacing, a missing final
//! newline) stays as it was, so the diff shows exactly the lines that change.
//!
//! Syntax (postconf(5)): a logical line starts with a non-blank character; a
//! line starting with white space continues it; blank lines and lines whose
//! first non-blank character is `#` are ignored, also between continuation
//! lines. The last definition of a parameter wins.

/// One parameter definition: its name and the lines it spans.
#[derive(Debug, Clone)]
struct Definition {
    name: String,
    /// Index of the first line and one past the last continuation line.
    lines: std::ops::Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Make `name = value` the effective definition.
    Set(String, String),
    /// Remove every definition of the parameter.
    Remove(String),
    /// Put the admin's own text of the parameter back (`None`: it had
    /// none): replaces the effective definition in place, comments and
    /// continuation lines included.
    Restore(String, Option<String>),
}

#[derive(Debug, Clone)]
pub struct MainCf {
    lines: Vec<String>,
    defs: Vec<Definition>,
}

fn is_ignored(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

fn starts_blank(line: &str) -> bool {
    line.starts_with([' ', '\t'])
}

impl MainCf {
    pub fn parse(text: &str) -> Self {
        let lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
        let mut defs: Vec<Definition> = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            if is_ignored(line) {
                continue;
            }
            if starts_blank(line) {
                if let Some(last) = defs.last_mut() {
                    // A continuation: extend the open definition over any
                    // comments or blank lines in between.
                    if last.lines.end <= i {
                        last.lines.end = i + 1;
                    }
                }
                continue;
            }
            if let Some((name, _)) = line.split_once('=') {
                let name = name.trim();
                if !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    defs.push(Definition {
                        name: name.to_string(),
                        lines: i..i + 1,
                    });
                    continue;
                }
            }
            // Not a parameter (Postfix would refuse it); close any open
            // definition so we never swallow this line.
            defs.push(Definition {
                name: String::new(),
                lines: i..i + 1,
            });
        }
        defs.retain(|d| !d.name.is_empty());
        MainCf { lines, defs }
    }

    /// Parameters defined more than once (Postfix warns `overriding
    /// earlier entry` and uses the last), with the 1-based line of each
    /// definition, in file order.
    pub fn duplicates(&self) -> Vec<(String, Vec<usize>)> {
        let mut out: Vec<(String, Vec<usize>)> = Vec::new();
        for d in &self.defs {
            match out.iter_mut().find(|(n, _)| *n == d.name) {
                Some((_, lines)) => lines.push(d.lines.start + 1),
                None => out.push((d.name.clone(), vec![d.lines.start + 1])),
            }
        }
        out.retain(|(_, lines)| lines.len() > 1);
        out
    }

    fn last_def(&self, name: &str) -> Option<&Definition> {
        self.defs.iter().rev().find(|d| d.name == name)
    }

    /// The value of the effective definition, with continuation lines joined
    /// by single spaces; `None` when main.cf does not define it.
    pub fn get(&self, name: &str) -> Option<String> {
        let def = self.last_def(name)?;
        let mut parts = Vec::new();
        for (k, line) in self.lines[def.lines.clone()].iter().enumerate() {
            if k == 0 {
                let (_, v) = line.split_once('=').expect("definition has '='");
                parts.push(v.trim().to_string());
            } else if !is_ignored(line) {
                parts.push(line.trim().to_string());
            }
        }
        Some(
            parts
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        )
    }

    /// The lines (indices into the file's lines) the effective definition
    /// spans: its line, its continuation lines and the comments between.
    pub fn def_lines(&self, name: &str) -> Option<std::ops::Range<usize>> {
        self.last_def(name).map(|d| d.lines.clone())
    }

    /// The exact text of the effective definition: its line, its
    /// continuation lines and the comments between them.
    pub fn def_text(&self, name: &str) -> Option<String> {
        let def = self.last_def(name)?;
        Some(self.lines[def.lines.clone()].concat())
    }

    /// The text after `edits`. A `Set` whose value already is the effective
    /// value leaves its lines untouched; new parameters go at the end.
    /// Lines mxpin writes end as the file's own do (CRLF or LF), and a file
    /// without a final newline keeps none, so that a give-back (`Restore`,
    /// `Remove` of an added parameter) returns the admin's bytes.
    pub fn edited(&self, edits: &[Edit]) -> String {
        let text = self.lines.concat();
        let eol = crate::mta::line_ending(&text);
        // Per line: None = keep, Some(text) = replace by text ("" = delete).
        let mut replace: Vec<Option<String>> = vec![None; self.lines.len()];
        let mut appended = String::new();
        for edit in edits {
            match edit {
                Edit::Set(name, value) => {
                    if self.get(name).as_deref() == Some(value.as_str()) {
                        continue;
                    }
                    let new_line = if value.is_empty() {
                        format!("{name} ={eol}")
                    } else {
                        format!("{name} = {value}{eol}")
                    };
                    match self.last_def(name) {
                        Some(def) => {
                            for i in def.lines.clone() {
                                replace[i] = Some(String::new());
                            }
                            replace[def.lines.start] = Some(new_line);
                        }
                        None => appended.push_str(&new_line),
                    }
                }
                Edit::Remove(name) | Edit::Restore(name, None) => {
                    for def in self.defs.iter().filter(|d| &d.name == name) {
                        for i in def.lines.clone() {
                            replace[i] = Some(String::new());
                        }
                    }
                }
                Edit::Restore(name, Some(text)) => match self.last_def(name) {
                    Some(def) => {
                        for i in def.lines.clone() {
                            replace[i] = Some(String::new());
                        }
                        replace[def.lines.start] = Some(text.clone());
                    }
                    None => appended.push_str(text),
                },
            }
        }
        let mut out = String::new();
        for (line, rep) in self.lines.iter().zip(&replace) {
            match rep {
                None => out.push_str(line),
                Some(text) => {
                    out.push_str(text);
                    if !text.is_empty() && !text.ends_with('\n') {
                        out.push_str(eol);
                    }
                }
            }
        }
        if !appended.is_empty() {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push_str(eol);
            }
            out.push_str(&appended);
        }
        crate::mta::keep_final_newline(&text, out)
    }
}

/// Splits a Postfix list value on commas and white space, keeping `{ ... }`
/// groups (inline tables, option lists) whole.
pub fn split_list(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut depth = 0usize;
    for c in value.chars() {
        match c {
            '{' => {
                depth += 1;
                cur.push(c);
            }
            '}' => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            ',' | ' ' | '\t' | '\n' if depth == 0 => {
                if !cur.is_empty() {
                    items.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        items.push(cur);
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = r"# See /usr/share/postfix/main.cf.dist for a commented, more complete version
smtpd_banner = $myhostname ESMTP $mail_name (Debian/GNU)
biff = no

# TLS parameters
smtpd_tls_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem
smtpd_tls_security_level=may
transport_maps = hash:/etc/postfix/transport,
    # the admin's own table
    hash:/etc/postfix/transport2
mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128
";

    fn set(n: &str, v: &str) -> Edit {
        Edit::Set(n.to_string(), v.to_string())
    }

    #[test]
    fn reads_values_with_continuations_and_comments() {
        let m = MainCf::parse(DEBIAN);
        assert_eq!(m.get("biff").as_deref(), Some("no"));
        assert_eq!(m.get("smtpd_tls_security_level").as_deref(), Some("may"));
        assert_eq!(
            m.get("transport_maps").as_deref(),
            Some("hash:/etc/postfix/transport, hash:/etc/postfix/transport2")
        );
        assert_eq!(m.get("relay_domains"), None);
    }

    #[test]
    fn no_edits_is_byte_identical() {
        assert_eq!(MainCf::parse(DEBIAN).edited(&[]), DEBIAN);
        let odd = "a=1\n\n  \n#x\nb = 2"; // no final newline
        assert_eq!(MainCf::parse(odd).edited(&[set("a", "1")]), odd);
    }

    #[test]
    fn set_replaces_only_its_logical_line() {
        let out = MainCf::parse(DEBIAN).edited(&[set("transport_maps", "hash:/x")]);
        let expected = DEBIAN.replace(
            "transport_maps = hash:/etc/postfix/transport,\n    # the admin's own table\n    hash:/etc/postfix/transport2\n",
            "transport_maps = hash:/x\n",
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn set_appends_new_parameters_at_the_end() {
        let out = MainCf::parse("a = 1\n").edited(&[set("b", "2"), set("c", "3")]);
        assert_eq!(out, "a = 1\nb = 2\nc = 3\n");
        // A file without a final newline keeps none, so that removing the
        // added lines gives its bytes back.
        let out = MainCf::parse("a = 1").edited(&[set("b", "2"), set("c", "3")]);
        assert_eq!(out, "a = 1\nb = 2\nc = 3");
        let back =
            MainCf::parse(&out).edited(&[Edit::Remove("b".into()), Edit::Remove("c".into())]);
        assert_eq!(back, "a = 1");
    }

    /// Issue 17: lines mxpin writes into a CRLF file used LF.
    #[test]
    fn lines_written_into_a_crlf_file_end_in_crlf() {
        let text = "a = 1\r\nt = x,\r\n  y\r\n";
        let m = MainCf::parse(text);
        assert_eq!(m.get("t").as_deref(), Some("x, y"));
        assert_eq!(
            m.edited(&[set("t", "z"), set("b", "2")]),
            "a = 1\r\nt = z\r\nb = 2\r\n"
        );
        assert_eq!(
            m.edited(&[set("t", "x, y")]),
            text,
            "unchanged value, untouched"
        );
    }

    /// A multi-line definition on the unterminated last line: replaced, it
    /// stays unterminated, and its text comes back byte for byte.
    #[test]
    fn replacing_a_continued_last_definition_keeps_the_file_unterminated() {
        let text = "a = 1\nt = x,\n  y";
        let m = MainCf::parse(text);
        let out = m.edited(&[set("t", "z")]);
        assert_eq!(out, "a = 1\nt = z");
        let back = MainCf::parse(&out).edited(&[Edit::Restore(
            "t".into(),
            Some(format!("{}\n", m.def_text("t").unwrap())),
        )]);
        assert_eq!(back, text);
    }

    #[test]
    fn last_definition_wins_and_is_the_one_edited() {
        let text = "x = 1\ny = 0\nx = 2\n";
        let m = MainCf::parse(text);
        assert_eq!(m.get("x").as_deref(), Some("2"));
        assert_eq!(m.edited(&[set("x", "3")]), "x = 1\ny = 0\nx = 3\n");
    }

    #[test]
    fn remove_drops_every_definition() {
        let text = "x = 1\ny = 0\nx = 2\n  more\nz = 9\n";
        assert_eq!(
            MainCf::parse(text).edited(&[Edit::Remove("x".into())]),
            "y = 0\nz = 9\n"
        );
    }

    #[test]
    fn unchanged_value_keeps_odd_spacing() {
        let text = "smtpd_tls_security_level=may\n";
        assert_eq!(
            MainCf::parse(text).edited(&[set("smtpd_tls_security_level", "may")]),
            text
        );
    }

    #[test]
    fn replacing_the_unterminated_last_line_keeps_it_unterminated() {
        assert_eq!(
            MainCf::parse("a = 1\nb = 2").edited(&[set("b", "3")]),
            "a = 1\nb = 3"
        );
    }

    #[test]
    fn garbage_line_is_never_swallowed_as_continuation_target() {
        let text = "a = 1\nnot a parameter\n  cont\n";
        let m = MainCf::parse(text);
        assert_eq!(m.get("a").as_deref(), Some("1"));
        assert_eq!(
            m.edited(&[set("a", "2")]),
            "a = 2\nnot a parameter\n  cont\n"
        );
    }

    #[test]
    fn lists_split_on_commas_and_space_keeping_braces() {
        assert_eq!(
            split_list("hash:/a, lmdb:/b  {inline:{x=y, z=w}},pcre:/c"),
            ["hash:/a", "lmdb:/b", "{inline:{x=y, z=w}}", "pcre:/c"]
        );
        assert!(split_list("  ").is_empty());
    }

    #[test]
    fn duplicates_are_found_with_their_lines() {
        let m =
            MainCf::parse("a = 1\nrelay_domains =\n  x,\n# c\n  y\na = 2\nb = 1\n  a = 3\na=4\n");
        assert_eq!(m.duplicates(), vec![("a".to_string(), vec![1, 6, 9])]);
        assert!(MainCf::parse("a = 1\nb = 2\n").duplicates().is_empty());
    }
}
