//! The one master.cf service mxpin owns: `mxpin-smtps`, an smtp client with
//! `smtp_tls_wrappermode=yes`, used as `default_transport` when a host's
//! relayhost speaks implicit TLS (port 465). Postfix's wrappermode is a
//! client-wide setting, so it cannot go in main.cf without breaking every
//! other delivery.
//!
//! Like main.cf, the file is edited in place: only the service's own lines
//! (and mxpin's comment right above it) change.

/// The service name, also the `default_transport` value that selects it.
pub const SERVICE: &str = "mxpin-smtps";

const COMMENT: &str = "# Managed by mxpin: SMTP over implicit TLS (port 465) to the relayhost.\n";

/// Service name and type of a master.cf entry line, if it starts one.
fn entry(line: &str) -> Option<(&str, &str)> {
    if line.starts_with([' ', '\t', '#']) {
        return None;
    }
    let mut f = line.split_whitespace();
    Some((f.next()?, f.next()?))
}

/// Line range of the `name`/`kind` entry: its line and its continuation
/// lines (starting with white space), comments in between included.
fn find(lines: &[&str], name: &str, kind: &str) -> Option<std::ops::Range<usize>> {
    let start = lines.iter().position(|l| entry(l) == Some((name, kind)))?;
    let mut end = start + 1;
    let mut k = end;
    while k < lines.len() {
        let l = lines[k];
        if l.starts_with([' ', '\t']) && !l.trim().is_empty() {
            end = k + 1;
        } else if !(l.trim().is_empty() || l.trim_start().starts_with('#')) {
            break;
        }
        k += 1;
    }
    Some(start..end)
}

/// The chroot column (5th) of the admin's `smtp unix` service, so mxpin's
/// client runs like the admin's own; `-` (Postfix's default) otherwise.
pub fn smtp_chroot(text: &str) -> String {
    text.lines()
        .find(|l| entry(l) == Some(("smtp", "unix")))
        .and_then(|l| l.split_whitespace().nth(4))
        .filter(|c| ["y", "n", "-"].contains(c))
        .unwrap_or("-")
        .to_string()
}

/// The service block mxpin writes.
fn block(chroot: &str) -> String {
    format!("{COMMENT}{SERVICE} unix  -       -       {chroot}       -       -       smtp\n  -o smtp_tls_wrappermode=yes\n")
}

/// master.cf with mxpin's service present (`want`) or absent. Returns the
/// text unchanged when it already is as wanted.
pub fn edited(text: &str, want: bool) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let found = find(&lines, SERVICE, "unix");
    let wanted = block(&smtp_chroot(text));
    match (found, want) {
        (None, false) => text.to_string(),
        (None, true) => {
            let mut out = text.to_string();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&wanted);
            out
        }
        (Some(range), _) => {
            // Include mxpin's comment line just above, if there.
            let start = if range.start > 0 && lines[range.start - 1] == COMMENT {
                range.start - 1
            } else {
                range.start
            };
            let current: String = lines[start..range.end].concat();
            if want && current == wanted {
                return text.to_string();
            }
            let mut out: String = lines[..start].concat();
            if want {
                out.push_str(&wanted);
            }
            out.push_str(&lines[range.end..].concat());
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "\
# Postfix master process configuration file.
smtp      inet  n       -       y       -       -       smtpd
pickup    unix  n       -       y       60      1       pickup
smtp      unix  -       -       y       -       -       smtp
relay     unix  -       -       y       -       -       smtp
        -o syslog_name=postfix/$service_name
#       -o smtp_helo_timeout=5 -o smtp_connect_timeout=5
showq     unix  n       -       y       -       -       showq
";

    #[test]
    fn adds_once_with_the_admins_chroot_and_removes_cleanly() {
        let added = edited(DEBIAN, true);
        assert!(added.starts_with(DEBIAN), "nothing else changes");
        assert!(added.ends_with(
            "# Managed by mxpin: SMTP over implicit TLS (port 465) to the relayhost.\n\
             mxpin-smtps unix  -       -       y       -       -       smtp\n  -o smtp_tls_wrappermode=yes\n"
        ));
        assert_eq!(edited(&added, true), added, "idempotent");
        assert_eq!(edited(&added, false), DEBIAN);
        assert_eq!(edited(DEBIAN, false), DEBIAN);
    }

    #[test]
    fn chroot_follows_the_smtp_client_and_a_changed_block_is_rewritten() {
        let no_chroot = DEBIAN.replace(
            "smtp      unix  -       -       y",
            "smtp      unix  -       -       n",
        );
        assert_eq!(smtp_chroot(&no_chroot), "n");
        assert_eq!(smtp_chroot("x unix - - y - - x\n"), "-");
        let added = edited(&no_chroot, true);
        assert!(added.contains("mxpin-smtps unix  -       -       n "));
        // An admin edit inside the block (or a block in the middle) is
        // replaced in place, and what follows stays.
        let middle = DEBIAN.replacen(
            "showq",
            "mxpin-smtps unix - - y - - smtp\n  -o smtp_tls_wrappermode=no\nshowq",
            1,
        );
        let fixed = edited(&middle, true);
        assert!(
            fixed.contains("  -o smtp_tls_wrappermode=yes\nshowq"),
            "{fixed}"
        );
        assert!(!fixed.contains("wrappermode=no"));
        assert_eq!(edited(&middle, false), DEBIAN);
    }

    #[test]
    fn missing_final_newline() {
        let out = edited("smtp unix - - n - - smtp", true);
        assert!(out.starts_with("smtp unix - - n - - smtp\n# Managed by mxpin"));
    }
}
