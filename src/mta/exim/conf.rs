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
mod tests;
