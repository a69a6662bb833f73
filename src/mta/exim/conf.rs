//! An in-place editor for a single-file `exim4.conf` (a hand-written
//! configuration, not Debian's generated one).
//!
//! mxpin's own settings live in fragment files (see [`super::render`]) that
//! the admin's configuration pulls in with four `.include` lines; besides
//! those, only the lines Exim would otherwise refuse as duplicates change:
//! the admin's `relay_to_domains` list gains `+mxpin_relay_domains`, and the
//! admin's main-section `tls_advertise_hosts`, `tls_certificate` and
//! `tls_privatekey` are commented out (mxpin's `main.conf` sets them).
//! Every other byte stays as it was, and an edited file comes back unchanged.
//!
//! Syntax (Exim spec, chapter 6, checked against Exim 4.96): a line whose
//! first non-blank character is `#` is a comment and never continues; a
//! blank line is empty; any other line ending in `\` (trailing white space
//! after it ignored) continues on the next line, whose leading white space
//! is dropped; comment lines may sit between continuation lines and are
//! skipped; a blank line after a `\` ends the logical line. `begin NAME`
//! starts a section; everything before the first `begin` is the main
//! section.

/// The name of mxpin's domain list, defined in its `main.conf`.
pub const RELAY_LIST: &str = "+mxpin_relay_domains";

/// Options of the main section that mxpin's `main.conf` sets; the admin's
/// own definitions are commented out (Exim refuses an option set twice).
const TLS_OPTIONS: &[&str] = &["tls_advertise_hosts", "tls_certificate", "tls_privatekey"];

/// What a commented-out line starts with.
const COMMENT_PREFIX: &str = "# mxpin: ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    pub text: String,
    /// main.conf must define relay_to_domains itself (the admin's config has
    /// none).
    pub define_relay_to_domains: bool,
    /// The admin's own `tls_certificate` and `tls_privatekey` (as written,
    /// or as mxpin commented them out): main.conf keeps serving them to
    /// everyone and serves mxpin's key to its peers by SNI.
    pub admin_cert: Option<(String, String)>,
    /// The `daemon_smtp_ports` main.conf sets: the admin's ports and the
    /// primary's `smtp_port`, when the admin's do not name it (their own
    /// line is then commented out).
    pub daemon_smtp_ports: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Blank,
    Comment,
    Content,
}

/// One logical line: physical lines `lines` (continuations and the comment
/// lines between them included) and, for content, the joined text.
#[derive(Debug, Clone)]
struct Logical {
    lines: std::ops::Range<usize>,
    kind: Kind,
    text: String,
}

fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

fn parse(lines: &[&str]) -> Vec<Logical> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if is_blank(line) {
            out.push(Logical {
                lines: i..i + 1,
                kind: Kind::Blank,
                text: String::new(),
            });
            i += 1;
            continue;
        }
        if is_comment(line) {
            out.push(Logical {
                lines: i..i + 1,
                kind: Kind::Comment,
                text: String::new(),
            });
            i += 1;
            continue;
        }
        let mut text = line.trim().to_string();
        let mut j = i + 1;
        while text.ends_with('\\') {
            text.pop();
            while j < lines.len() && is_comment(lines[j]) {
                j += 1;
            }
            if j == lines.len() {
                break;
            }
            text.push_str(lines[j].trim());
            j += 1;
        }
        out.push(Logical {
            lines: i..j,
            kind: Kind::Content,
            text,
        });
        i = j;
    }
    out
}

/// The section a `begin` line starts.
fn begin_name(text: &str) -> Option<&str> {
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("begin"), Some(name), None) => Some(name),
        _ => None,
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `NAME = value` (after an optional `hide`): the name and the value.
fn option(text: &str) -> Option<(&str, &str)> {
    let text = text
        .strip_prefix("hide")
        .filter(|r| r.starts_with([' ', '\t']))
        .map_or(text, str::trim_start);
    let end = text.find(|c| !is_name_char(c)).unwrap_or(text.len());
    let (name, rest) = text.split_at(end);
    let value = rest.trim_start().strip_prefix('=')?;
    (!name.is_empty()).then_some((name, value.trim()))
}

/// `domainlist NAME = value`: the name and the value.
fn domainlist(text: &str) -> Option<(&str, &str)> {
    let rest = text
        .strip_prefix("domainlist_cache")
        .or_else(|| text.strip_prefix("domainlist"))?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    option(rest.trim_start())
}

/// An ACL's name line: `NAME:`.
fn acl_name(text: &str) -> Option<&str> {
    let name = text.strip_suffix(':')?.trim_end();
    (!name.is_empty()
        && name
            .chars()
            .all(|c| is_name_char(c) || c == '-' || c == '.'))
    .then_some(name)
}

/// The path of an `.include` (or `.include_if_exists`) line.
fn include_path(text: &str) -> Option<&str> {
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(".include" | ".include_if_exists"), Some(path), None) => Some(path),
        _ => None,
    }
}

/// The items of an Exim list value (`a : b`, or `<; a ; b`) and its separator.
fn list_items(value: &str) -> (char, Vec<&str>) {
    let mut sep = ':';
    let mut rest = value;
    if let Some(r) = value.strip_prefix('<') {
        if let Some(c) = r
            .chars()
            .next()
            .filter(|c| !c.is_alphanumeric() && !c.is_whitespace())
        {
            sep = c;
            rest = &r[c.len_utf8()..];
        }
    }
    let items = rest
        .split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    (sep, items)
}

/// Byte offset in `line` just after its last character of content: before
/// the line ending, trailing white space and a continuation backslash.
fn content_end(line: &str) -> usize {
    let t = line.trim_end();
    let t = t.strip_suffix('\\').unwrap_or(t);
    t.len()
}

/// Edits a single-file exim4.conf so it includes mxpin's fragments from
/// `dir` (e.g. "/etc/exim4/mxpin"):
/// - `.include DIR/main.conf` as the last line of the main section (after
///   its last non-comment line, so it stays above the comments that head
///   the next section; if the file has no `begin` at all, after its last
///   non-comment line);
/// - `.include DIR/acl_rcpt.conf` right after the line `NAME:` (NAME =
///   `rcpt_acl`, the value of acl_smtp_rcpt) inside the `begin acl` section;
/// - `.include DIR/routers.conf` right after `begin routers`, and
///   `.include DIR/transports.conf` right after `begin transports`;
/// - `domainlist relay_to_domains = X` becomes `X : +mxpin_relay_domains`
///   (or just `+mxpin_relay_domains` when X is empty); without a
///   relay_to_domains definition `define_relay_to_domains` is set;
/// - the admin's main-section `tls_advertise_hosts`, `tls_certificate`,
///   `tls_privatekey` lines are commented out as `# mxpin: <original line>`.
///
/// An include already present (in the main section, in the RCPT ACL, in the
/// routers or transports section) is not added again, so an edited file
/// comes back byte-identical. Every other byte is kept.
pub fn edited(text: &str, dir: &str, rcpt_acl: &str) -> Result<Edited, String> {
    edited_listening(text, dir, rcpt_acl, None)
}

/// [`edited`], for a host that must also listen on `listen` (a primary's
/// `smtp_port`): when the admin's `daemon_smtp_ports` (or Exim's default,
/// `smtp`) does not name it, their line is commented out and
/// [`Edited::daemon_smtp_ports`] is their list with the port added. Without
/// `listen`, or once the admin's list names it, a line mxpin commented out
/// comes back as the admin wrote it.
pub fn edited_listening(
    text: &str,
    dir: &str,
    rcpt_acl: &str,
    listen: Option<u16>,
) -> Result<Edited, String> {
    if rcpt_acl.is_empty()
        || !rcpt_acl
            .chars()
            .all(|c| is_name_char(c) || c == '-' || c == '.')
    {
        return Err(format!(
            "acl_smtp_rcpt is {rcpt_acl:?}, not the name of an ACL"
        ));
    }
    let eol = crate::mta::line_ending(text);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let logical = parse(&lines);

    // Sections: (name, index in `logical` of the begin line).
    let begins: Vec<(&str, usize)> = logical
        .iter()
        .enumerate()
        .filter(|(_, l)| l.kind == Kind::Content)
        .filter_map(|(k, l)| begin_name(&l.text).map(|n| (n, k)))
        .collect();
    let main_end = begins.first().map_or(logical.len(), |b| b.1);
    let section = |name: &str| -> Option<std::ops::Range<usize>> {
        let pos = begins.iter().position(|b| b.0 == name)?;
        let start = begins[pos].1;
        let end = begins.get(pos + 1).map_or(logical.len(), |b| b.1);
        Some(start..end)
    };
    let content = |range: std::ops::Range<usize>| {
        logical[range]
            .iter()
            .filter(|l| l.kind == Kind::Content)
            .collect::<Vec<_>>()
    };
    let has_include = |range: std::ops::Range<usize>, path: &str| {
        content(range)
            .iter()
            .any(|l| include_path(&l.text) == Some(path))
    };

    // Per physical line: a replacement; per physical position: lines to
    // insert before it (position lines.len() = the end of the file).
    let mut replace: Vec<Option<String>> = vec![None; lines.len()];
    let mut insert: std::collections::BTreeMap<usize, Vec<String>> = Default::default();

    // Main section: the include, relay_to_domains and the TLS options.
    let main_conf = format!("{dir}/main.conf");
    if !has_include(0..main_end, &main_conf) {
        let at = match content(0..main_end).last() {
            Some(l) => l.lines.end,
            None => logical.get(main_end).map_or(lines.len(), |l| l.lines.start),
        };
        insert
            .entry(at)
            .or_default()
            .push(format!(".include {main_conf}{eol}"));
    }
    let mut define_relay_to_domains = true;
    let mut admin: std::collections::BTreeMap<&str, String> = Default::default();
    // Lines an earlier run commented out, continuation lines joined as
    // Exim joins them (comments between them skipped).
    let main_lines = &lines[..logical.get(main_end).map_or(lines.len(), |l| l.lines.start)];
    // Each with the physical lines it spans.
    let mut joined: Option<(String, Vec<usize>)> = None;
    let mut commented: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, line) in main_lines.iter().enumerate() {
        let Some(orig) = line.strip_prefix(COMMENT_PREFIX) else {
            if joined.is_some() && is_comment(line) {
                continue;
            }
            commented.extend(joined.take());
            continue;
        };
        let text = orig.trim_end();
        let (part, more) = match text.strip_suffix('\\') {
            Some(p) => (p, true),
            None => (text, false),
        };
        let (acc, at) = joined.get_or_insert_with(Default::default);
        acc.push_str(if acc.is_empty() {
            part
        } else {
            part.trim_start()
        });
        at.push(i);
        if !more {
            commented.extend(joined.take());
        }
    }
    commented.extend(joined.take());
    // daemon_smtp_ports: the admin's own value (a live line wins over one
    // mxpin commented out), and whether it names `listen`.
    let ports_option = |text: &str| {
        option(text.trim())
            .filter(|(name, _)| *name == "daemon_smtp_ports")
            .map(|(_, v)| v.to_string())
    };
    let live_ports = content(0..main_end)
        .iter()
        .rev()
        .find_map(|l| ports_option(&l.text).map(|v| (v, l.lines.clone())));
    let admin_ports = live_ports
        .as_ref()
        .map(|(v, _)| v.clone())
        .or_else(|| commented.iter().rev().find_map(|(t, _)| ports_option(t)));
    let daemon_smtp_ports = listen
        .filter(|p| !super::listen_ports(admin_ports.as_deref().unwrap_or("smtp"), "").contains(p))
        .map(|p| match &admin_ports {
            Some(v) => {
                let (sep, items) = list_items(v);
                if items.is_empty() {
                    p.to_string()
                } else {
                    format!("{v} {sep} {p}")
                }
            }
            None => format!("smtp : {p}"),
        });
    match (&daemon_smtp_ports, &live_ports) {
        (Some(_), Some((_, range))) => {
            for i in range.clone() {
                if !is_blank(lines[i]) && !is_comment(lines[i]) {
                    replace[i] = Some(format!("{COMMENT_PREFIX}{}", lines[i]));
                }
            }
        }
        // Not needed (any more): the admin's line comes back.
        (None, _) => {
            for (_, at) in commented.iter().filter(|(t, _)| ports_option(t).is_some()) {
                for &i in at {
                    replace[i] = Some(lines[i][COMMENT_PREFIX.len()..].to_string());
                }
            }
        }
        (Some(_), None) => {}
    }
    for (text, _) in &commented {
        if let Some((name @ ("tls_certificate" | "tls_privatekey"), value)) = option(text.trim()) {
            admin.insert(name, value.to_string());
        }
    }
    for l in content(0..main_end) {
        if let Some((name @ ("tls_certificate" | "tls_privatekey"), value)) = option(&l.text) {
            admin.insert(name, value.to_string());
        }
        if let Some(("relay_to_domains", value)) = domainlist(&l.text) {
            define_relay_to_domains = false;
            let (sep, items) = list_items(value);
            if items.contains(&RELAY_LIST) {
                continue;
            }
            let added = if items.is_empty() {
                format!(" {RELAY_LIST}")
            } else {
                format!(" {sep} {RELAY_LIST}")
            };
            let last = l
                .lines
                .clone()
                .rev()
                .find(|&i| !is_blank(lines[i]) && !is_comment(lines[i]))
                .expect("a content line has a non-blank line");
            let line = lines[last];
            let at = content_end(line);
            replace[last] = Some(format!("{}{added}{}", &line[..at], &line[at..]));
        } else if option(&l.text).is_some_and(|(name, _)| TLS_OPTIONS.contains(&name)) {
            for i in l.lines.clone() {
                if !is_blank(lines[i]) && !is_comment(lines[i]) {
                    replace[i] = Some(format!("{COMMENT_PREFIX}{}", lines[i]));
                }
            }
        }
    }

    // The RCPT ACL.
    let acl_conf = format!("{dir}/acl_rcpt.conf");
    let not_defined = || {
        format!(
            "the RCPT ACL {rcpt_acl} is not defined (no line \"{rcpt_acl}:\" after \"begin acl\")"
        )
    };
    let acls = section("acl").ok_or_else(not_defined)?;
    let start = (acls.start + 1..acls.end)
        .find(|&k| logical[k].kind == Kind::Content && acl_name(&logical[k].text) == Some(rcpt_acl))
        .ok_or_else(not_defined)?;
    let end = (start + 1..acls.end)
        .find(|&k| logical[k].kind == Kind::Content && acl_name(&logical[k].text).is_some())
        .unwrap_or(acls.end);
    if !has_include(start..end, &acl_conf) {
        insert
            .entry(logical[start].lines.end)
            .or_default()
            .push(format!(".include {acl_conf}{eol}"));
    }

    // Routers and transports: first in their section.
    for name in ["routers", "transports"] {
        let range = section(name).ok_or_else(|| format!("no \"begin {name}\" section"))?;
        let path = format!("{dir}/{name}.conf");
        if !has_include(range.clone(), &path) {
            insert
                .entry(logical[range.start].lines.end)
                .or_default()
                .push(format!(".include {path}{eol}"));
        }
    }

    let mut out = String::with_capacity(text.len() + 256);
    let emit_inserts = |out: &mut String, at: usize| {
        for text in insert.get(&at).into_iter().flatten() {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push_str(eol);
            }
            out.push_str(text);
        }
    };
    for (i, line) in lines.iter().enumerate() {
        emit_inserts(&mut out, i);
        out.push_str(replace[i].as_deref().unwrap_or(line));
    }
    emit_inserts(&mut out, lines.len());
    // A file without a final newline keeps none.
    let out = crate::mta::keep_final_newline(text, out);
    let admin_cert = match (admin.get("tls_certificate"), admin.get("tls_privatekey")) {
        (Some(c), Some(k)) if !c.starts_with(dir) => Some((c.clone(), k.clone())),
        _ => None,
    };
    Ok(Edited {
        text: out,
        define_relay_to_domains,
        admin_cert,
        daemon_smtp_ports,
    })
}

/// The config text with each `.include PATH` whose PATH is a key of `staged`
/// replaced by the staged path: apply validates the new configuration with
/// `exim4 -bV -C CHECKFILE` before anything is swapped in.
pub fn with_staged_includes(text: &str, staged: &[(String, String)]) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = String::with_capacity(text.len() + 64);
    let logical = parse(&lines);
    let mut replaced: Vec<Option<String>> = vec![None; lines.len()];
    for l in logical.iter().filter(|l| l.kind == Kind::Content) {
        // Only an include on one physical line (mxpin writes no other).
        if l.lines.len() != 1 {
            continue;
        }
        let Some(path) = include_path(&l.text) else {
            continue;
        };
        let Some((_, to)) = staged.iter().find(|(from, _)| from == path) else {
            continue;
        };
        let line = lines[l.lines.start];
        let at = line.find(path).expect("the path is in its line");
        replaced[l.lines.start] = Some(format!("{}{to}{}", &line[..at], &line[at + path.len()..]));
    }
    for (line, rep) in lines.iter().zip(replaced) {
        out.push_str(rep.as_deref().unwrap_or(line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = "/etc/exim4/mxpin";
    /// The base configuration of a lab relay (lab/lab.sh up ... --exim relay).
    const LAB: &str = include_str!("../../../tests/fixtures/exim/exim4.conf");
    /// An admin's variant: continuation lines, TLS options, relay domains.
    const ADMIN: &str = include_str!("../../../tests/fixtures/exim/exim4-admin.conf");

    fn edit(text: &str) -> Edited {
        edited(text, DIR, "acl_check_rcpt").unwrap()
    }

    /// The lines removed from `a` and added in `b`, in order.
    fn diff(a: &str, b: &str) -> (Vec<String>, Vec<String>) {
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        for c in similar::TextDiff::from_lines(a, b).iter_all_changes() {
            let line = c.value().trim_end_matches('\n').to_string();
            match c.tag() {
                similar::ChangeTag::Delete => removed.push(line),
                similar::ChangeTag::Insert => added.push(line),
                similar::ChangeTag::Equal => {}
            }
        }
        (removed, added)
    }

    #[test]
    fn lab_config_gets_four_includes_and_two_edited_lines() {
        let e = edit(LAB);
        assert!(!e.define_relay_to_domains);
        let (removed, added) = diff(LAB, &e.text);
        assert_eq!(
            removed,
            ["domainlist relay_to_domains =", "tls_advertise_hosts ="]
        );
        assert_eq!(
            added,
            [
                "domainlist relay_to_domains = +mxpin_relay_domains",
                "# mxpin: tls_advertise_hosts =",
                ".include /etc/exim4/mxpin/main.conf",
                ".include /etc/exim4/mxpin/acl_rcpt.conf",
                ".include /etc/exim4/mxpin/routers.conf",
                ".include /etc/exim4/mxpin/transports.conf",
            ]
        );
        // Placement: main.conf after the main section's last option, above
        // the ACL banner; the others right after their anchors.
        assert!(e.text.contains(
            "log_selector = +smtp_protocol_error +smtp_syntax_error +tls_peerdn\n\
             .include /etc/exim4/mxpin/main.conf\n\n####"
        ));
        assert!(e
            .text
            .contains("\nacl_check_rcpt:\n.include /etc/exim4/mxpin/acl_rcpt.conf\n  # Local"));
        assert!(e
            .text
            .contains("\nbegin routers\n.include /etc/exim4/mxpin/routers.conf\n\n"));
        assert!(e
            .text
            .contains("\nbegin transports\n.include /etc/exim4/mxpin/transports.conf\n\n"));
        assert_eq!(edit(&e.text), e, "idempotent");
    }

    #[test]
    fn continuation_lines_are_commented_and_extended_as_a_whole() {
        let e = edit(ADMIN);
        assert!(!e.define_relay_to_domains);
        let t = &e.text;
        // Every physical line of the TLS options, comments between left alone.
        assert!(t.contains(
            "# mxpin: tls_certificate = /etc/ssl/certs/\\\n\
             # mxpin:     mail.example.org.pem\n"
        ));
        assert!(t.contains(
            "# mxpin: hide tls_privatekey = /etc/ssl/private/\\\n\
             \x20 # the key\n\
             # mxpin:   mail.key\n"
        ));
        assert!(t.contains("# mxpin:   tls_advertise_hosts = *\n"));
        // relay_to_domains over continuation lines: extended on its last line.
        assert!(t.contains(
            "domainlist relay_to_domains = a.example : \\\n\
             \x20 # partners\n\
             \x20 b.example : c.example : +mxpin_relay_domains\n"
        ));
        // Not the router's or transport's tls_certificate, not the macro.
        assert!(t.contains("\n  tls_certificate = /etc/exim4/client.crt\n"));
        assert!(t.contains("\nMY_TLS_CERTIFICATE = /etc/exim4/x.crt\n"));
        // main.conf after the continued last option of the main section.
        assert!(t.contains(
            "ignore_bounce_errors_after = \\\n  2d\n.include /etc/exim4/mxpin/main.conf\n"
        ));
        assert!(t.contains("\nacl_check_rcpt:\n.include /etc/exim4/mxpin/acl_rcpt.conf\n"));
        assert_eq!(edit(t), e, "idempotent");
        // Exim's view of the edited main section: the options are gone.
        let lines: Vec<&str> = t.split_inclusive('\n').collect();
        let texts: Vec<String> = parse(&lines)
            .into_iter()
            .filter(|l| l.kind == Kind::Content)
            .map(|l| l.text)
            .collect();
        assert!(!texts.iter().any(|t| t.contains("mail.example.org.pem")));
        assert!(!texts.iter().any(|t| t.contains("private/mail.key")));
        assert!(texts.contains(&"domainlist relay_to_domains = a.example : b.example : c.example : +mxpin_relay_domains".to_string()));
    }

    #[test]
    fn relay_to_domains_variants() {
        let base = "begin acl\nr:\n  accept\nbegin routers\nbegin transports\n";
        let run = |main: &str| edited(&format!("{main}{base}"), DIR, "r").unwrap();
        let first_line = |e: &Edited| e.text.lines().next().unwrap().to_string();
        for (main, want) in [
            (
                "domainlist relay_to_domains =\n",
                "domainlist relay_to_domains = +mxpin_relay_domains",
            ),
            (
                "domainlist relay_to_domains =   \n",
                "domainlist relay_to_domains = +mxpin_relay_domains   ",
            ),
            (
                "domainlist relay_to_domains = a.example\n",
                "domainlist relay_to_domains = a.example : +mxpin_relay_domains",
            ),
            (
                "domainlist relay_to_domains=a.example\n",
                "domainlist relay_to_domains=a.example : +mxpin_relay_domains",
            ),
            (
                "domainlist  relay_to_domains = <; a.example ; b\n",
                "domainlist  relay_to_domains = <; a.example ; b ; +mxpin_relay_domains",
            ),
            (
                "domainlist relay_to_domains = <;\n",
                "domainlist relay_to_domains = <; +mxpin_relay_domains",
            ),
            (
                "domainlist_cache relay_to_domains = X\n",
                "domainlist_cache relay_to_domains = X : +mxpin_relay_domains",
            ),
            (
                "domainlist relay_to_domains = a : +mxpin_relay_domains\n",
                "domainlist relay_to_domains = a : +mxpin_relay_domains",
            ),
        ] {
            let e = run(main);
            assert_eq!(first_line(&e), want, "{main:?}");
            assert!(!e.define_relay_to_domains);
        }
        // No definition (or another list, or only a comment): main.conf defines it.
        for main in [
            "",
            "domainlist relay_to_domains_x = a\n",
            "# domainlist relay_to_domains = a\n",
            "hostlist relay_to_domains = a\n",
        ] {
            let e = run(main);
            assert!(e.define_relay_to_domains, "{main:?}");
            assert!(e.text.starts_with(main));
        }
    }

    #[test]
    fn includes_are_placed_on_odd_layouts() {
        // No main-section content: main.conf goes right before "begin acl";
        // no final newline on the last line.
        let text = "# only comments\n\nbegin acl\n  r :\n  accept\nbegin routers\nbegin transports";
        let e = edited(text, DIR, "r").unwrap();
        assert!(e.define_relay_to_domains);
        assert_eq!(
            e.text,
            "# only comments\n\n.include /etc/exim4/mxpin/main.conf\nbegin acl\n  r :\n\
             .include /etc/exim4/mxpin/acl_rcpt.conf\n  accept\nbegin routers\n\
             .include /etc/exim4/mxpin/routers.conf\nbegin transports\n\
             .include /etc/exim4/mxpin/transports.conf"
        );
        assert_eq!(edited(&e.text, DIR, "r").unwrap(), e);
        // A last main option continued over a blank line: after the blank.
        let text = "x = a\\\n\nbegin acl\nr:\nbegin routers\nbegin transports\n";
        let e = edited(text, DIR, "r").unwrap();
        assert!(e
            .text
            .starts_with("x = a\\\n\n.include /etc/exim4/mxpin/main.conf\nbegin acl\n"));
        // The right ACL, not a similarly named one or a condition.
        let text = "begin acl\nr2:\n  accept\n  message = r:\nr:\n  accept\nbegin routers\nbegin transports\n";
        let e = edited(text, DIR, "r").unwrap();
        assert!(e
            .text
            .contains("\nr:\n.include /etc/exim4/mxpin/acl_rcpt.conf\n  accept\n"));
        assert_eq!(e.text.matches("acl_rcpt.conf").count(), 1);
        // An include the admin moved further down its section stays there.
        let text = "begin acl\nr:\n  accept\n.include /etc/exim4/mxpin/acl_rcpt.conf\nbegin routers\n\
                    x:\n  driver = accept\n.include /etc/exim4/mxpin/routers.conf\nbegin transports\n";
        let e = edited(text, DIR, "r").unwrap();
        assert_eq!(e.text.matches("acl_rcpt.conf").count(), 1);
        assert_eq!(e.text.matches("routers.conf").count(), 1);
    }

    #[test]
    fn only_main_section_tls_options_are_commented() {
        let text = "tls_certificate = /a\n  hide   tls_privatekey=/b\ntls_require_ciphers = X\n\
                    TLS_CERT = /c\nbegin acl\nr:\n  accept\nbegin routers\nbegin transports\n\
                    t:\n  driver = smtp\n  tls_certificate = /d\n  tls_privatekey = /e\n";
        let e = edited(text, DIR, "r").unwrap();
        assert!(e.text.starts_with(
            "# mxpin: tls_certificate = /a\n# mxpin:   hide   tls_privatekey=/b\n\
             tls_require_ciphers = X\nTLS_CERT = /c\n"
        ));
        assert!(e
            .text
            .ends_with("  tls_certificate = /d\n  tls_privatekey = /e\n"));
    }

    #[test]
    fn errors_name_what_is_missing() {
        let err = |text: &str, acl: &str| edited(text, DIR, acl).unwrap_err();
        let full = "begin acl\nr:\n  accept\nbegin routers\nbegin transports\n";
        assert_eq!(
            err(full, "acl_check_rcpt"),
            "the RCPT ACL acl_check_rcpt is not defined (no line \"acl_check_rcpt:\" after \"begin acl\")"
        );
        assert!(
            err("r:\nbegin routers\nbegin transports\n", "r").contains("RCPT ACL r is not defined")
        );
        // A name line in the main section or the routers does not count.
        assert!(
            err("begin acl\nbegin routers\nr:\nbegin transports\n", "r").contains("not defined")
        );
        assert_eq!(
            err("begin acl\nr:\nbegin transports\n", "r"),
            "no \"begin routers\" section"
        );
        assert_eq!(
            err("begin acl\nr:\nbegin routers\n", "r"),
            "no \"begin transports\" section"
        );
        for acl in ["", "/etc/exim4/acl", "${if x}", "a b"] {
            assert!(err(full, acl).contains("not the name of an ACL"), "{acl:?}");
        }
        // A "begin routers" swallowed by a continuation is no section.
        assert!(err(
            "begin acl\nr:\n x = a\\\nbegin routers\nbegin transports\n",
            "r"
        )
        .contains("no \"begin routers\""));
    }

    #[test]
    fn staged_includes_are_swapped_and_nothing_else() {
        let e = edit(LAB);
        let staged = vec![
            (format!("{DIR}/main.conf"), format!("{DIR}/main.conf.new")),
            (
                format!("{DIR}/routers.conf"),
                "/tmp/s/routers.conf".to_string(),
            ),
            ("/not/included".to_string(), "/x".to_string()),
        ];
        let s = with_staged_includes(&e.text, &staged);
        let (removed, added) = diff(&e.text, &s);
        assert_eq!(
            removed,
            [
                ".include /etc/exim4/mxpin/main.conf",
                ".include /etc/exim4/mxpin/routers.conf"
            ]
        );
        assert_eq!(
            added,
            [
                ".include /etc/exim4/mxpin/main.conf.new",
                ".include /tmp/s/routers.conf"
            ]
        );
        assert_eq!(with_staged_includes(&e.text, &[]), e.text);
        // Spacing and the line ending are kept; comments and other lines too.
        let text = "  .include_if_exists   /a  \n# .include /a\nx = /a\n.include /a";
        assert_eq!(
            with_staged_includes(text, &[("/a".into(), "/b".into())]),
            "  .include_if_exists   /b  \n# .include /a\nx = /a\n.include /b"
        );
    }

    /// Issue 17: lines mxpin writes into a CRLF file used LF.
    #[test]
    fn includes_written_into_a_crlf_file_end_in_crlf() {
        let text = LAB.replace('\n', "\r\n");
        let e = edit(&text);
        assert!(!e.text.replace("\r\n", "").contains('\n'));
        assert!(e
            .text
            .contains("\r\n.include /etc/exim4/mxpin/main.conf\r\n"));
        assert_eq!(edit(&e.text), e, "idempotent");
    }

    /// What releasing the edit would take out again: mxpin's include lines,
    /// the `# mxpin: ` of the lines it commented out, and its entry in
    /// relay_to_domains.
    #[test]
    fn daemon_smtp_ports_gains_the_port_and_gets_it_back() {
        let listen = |text: &str, port: Option<u16>| {
            edited_listening(text, DIR, "acl_check_rcpt", port).unwrap()
        };
        // No line of the admin's: Exim's default, smtp, and the port.
        let none = LAB.replace("daemon_smtp_ports = 25\n", "");
        let e = listen(&none, Some(26));
        assert_eq!(e.daemon_smtp_ports.as_deref(), Some("smtp : 26"));
        assert_eq!(unedited(&none, &e.text), none);
        // A list with its own separator, over continuation lines.
        let admin = LAB.replace(
            "daemon_smtp_ports = 25\n",
            "daemon_smtp_ports = <; 25 ; \\\n    # submission too\n    587\n",
        );
        let e = listen(&admin, Some(26));
        assert_eq!(e.daemon_smtp_ports.as_deref(), Some("<; 25 ; 587 ; 26"));
        assert!(e.text.contains(
            "# mxpin: daemon_smtp_ports = <; 25 ; \\\n    # submission too\n# mxpin:     587\n"
        ));
        // Idempotent, and without the port (or with 25) every byte is back.
        assert_eq!(listen(&e.text, Some(26)), e);
        assert_eq!(listen(&e.text, None).text, listen(&admin, None).text);
        assert_eq!(listen(&e.text, Some(25)).text, listen(&admin, None).text);
        assert_eq!(unedited(&admin, &e.text), admin);
        // Named already (a service name counts): nothing to add.
        let named = LAB.replace(
            "daemon_smtp_ports = 25\n",
            "daemon_smtp_ports = smtp : 26\n",
        );
        let e = listen(&named, Some(26));
        assert_eq!(e.daemon_smtp_ports, None);
        assert!(e.text.contains("\ndaemon_smtp_ports = smtp : 26\n"));
    }

    fn unedited(original: &str, text: &str) -> String {
        let includes: Vec<String> = ["main", "acl_rcpt", "routers", "transports"]
            .iter()
            .map(|f| format!(".include {DIR}/{f}.conf"))
            .collect();
        let mut out = String::new();
        for line in text.split_inclusive('\n') {
            if includes.iter().any(|i| line.trim_end() == i) {
                continue;
            }
            let line = line.strip_prefix(COMMENT_PREFIX).unwrap_or(line);
            let mut line = line.to_string();
            for added in [
                " : +mxpin_relay_domains",
                " ; +mxpin_relay_domains",
                " +mxpin_relay_domains",
            ] {
                if line.contains(added) {
                    line = line.replacen(added, "", 1);
                    break;
                }
            }
            out.push_str(&line);
        }
        crate::mta::keep_final_newline(original, out)
    }

    fn exim_line(section: u8) -> impl proptest::strategy::Strategy<Value = &'static str> {
        let lines: Vec<&'static str> = match section {
            0 => vec![
                "primary_hostname = mail.example.org",
                "domainlist local_domains = @ : localhost",
                "domainlist relay_to_domains = a.example : \\",
                "domainlist relay_to_domains = <; a.example ; b",
                "domainlist relay_to_domains =",
                "  # partners",
                "  b.example",
                "tls_certificate = /etc/ssl/certs/\\",
                "    mail.pem",
                "hide tls_privatekey = /etc/ssl/private/mail.key  ",
                "tls_advertise_hosts = *",
                "ignore_bounce_errors_after = \\",
                "  2d",
                "# a comment \\",
                "",
                "  ",
                "MY_MACRO = /x",
            ],
            1 => vec![
                "acl_check_rcpt:",
                "  accept hosts = :",
                "  # Local",
                "  deny message = r:",
                "acl_check_data:",
                "  accept",
                "",
            ],
            2 => vec![
                "dnslookup:",
                "  driver = dnslookup",
                "  domains = ! +local_domains \\",
                "  # between",
                "    : ! +relay_to_domains",
                "# comment",
                "",
            ],
            _ => vec![
                "remote_smtp:",
                "  driver = smtp",
                "  tls_certificate = /etc/exim4/client.crt",
                "",
                "# end",
            ],
        };
        proptest::sample::select(lines)
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 256, ..Default::default() })]

        /// Issue 17: on generated configurations (continuation lines,
        /// comments between them, TLS options, relay_to_domains variants,
        /// CRLF, no final newline) the edit is idempotent, writes the file's
        /// own line ending, and taking mxpin's lines out gives back every
        /// byte: nothing else changed.
        #[test]
        fn edits_are_idempotent_and_reversible(
            main in proptest::collection::vec(exim_line(0), 0..10),
            acl in proptest::collection::vec(exim_line(1), 0..5),
            routers in proptest::collection::vec(exim_line(2), 0..5),
            transports in proptest::collection::vec(exim_line(3), 0..5),
            crlf: bool,
            final_newline: bool,
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut lines: Vec<&str> = main;
            lines.push("begin acl");
            lines.push("acl_check_rcpt:");
            lines.extend(acl);
            lines.push("begin routers");
            lines.extend(routers);
            lines.push("begin transports");
            lines.extend(transports);
            let mut text = lines.join(eol);
            if final_newline {
                text.push_str(eol);
            }
            let e = match edited(&text, DIR, "acl_check_rcpt") {
                Ok(e) => e,
                // A continuation swallowing a `begin` or the ACL's name:
                // refused, and nothing is written.
                Err(why) => {
                    proptest::prop_assert!(why.contains("not defined") || why.contains("no \"begin"), "{}", why);
                    return Ok(());
                }
            };
            proptest::prop_assert_eq!(&edited(&e.text, DIR, "acl_check_rcpt").unwrap(), &e);
            if crlf {
                proptest::prop_assert!(!e.text.replace("\r\n", "").contains('\n'), "{:?}", e.text);
            }
            proptest::prop_assert_eq!(unedited(&text, &e.text), text);
        }
    }

    #[test]
    fn logical_lines_follow_exim() {
        let text = "a = 1\\   \n  # c\n   2\nb = x\\\n\nc = 3\n# d \\\ne = 4\n";
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let l: Vec<(std::ops::Range<usize>, String)> = parse(&lines)
            .into_iter()
            .filter(|l| l.kind == Kind::Content)
            .map(|l| (l.lines, l.text))
            .collect();
        assert_eq!(
            l,
            [
                (0..3, "a = 12".to_string()),
                (3..5, "b = x".to_string()),
                (5..6, "c = 3".to_string()),
                (7..8, "e = 4".to_string()),
            ]
        );
    }
}
