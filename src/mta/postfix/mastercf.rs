//! The master.cf services mxpin owns, each written with a comment line
//! above it:
//! - `mxpin-smtps`: an smtp client with `smtp_tls_wrappermode=yes`, the
//!   `default_transport` when a host's external relayhost speaks implicit
//!   TLS (port 465). Wrappermode is client-wide, so it cannot go in main.cf
//!   without breaking every other delivery.
//! - `mxpin-relay`: an smtp client that presents the host's own key as a
//!   client certificate, the `default_transport` of a host that relays
//!   through a managed host. Only this path hands out the certificate.
//! - the relay listener `PORT inet ... smtpd` (marked by its syslog name
//!   `postfix/mxpin-relay`) on a host others relay through: TLS required, a
//!   client certificate asked for, relaying only for pinned client keys and
//!   a temporary refusal for everyone else, so that a client whose key is
//!   not pinned yet queues its mail instead of bouncing it.
//! - the SMTP listener `PORT inet ... smtpd` (marked by its syslog name
//!   `postfix/mxpin-smtp`) on a primary whose `smtp_port` is not 25 and
//!   has no service of the admin's on it: a copy of the admin's port-25
//!   smtpd (its columns and `-o` options), so that the backups' routes to
//!   `smtp_port` reach the same server.
//!
//! Like main.cf, the file is edited in place: only these services' lines
//! (and mxpin's comment right above each) change.

/// The implicit-TLS client, also the `default_transport` value selecting it.
pub const SMTPS: &str = "mxpin-smtps";
/// The client-certificate client, likewise.
pub const RELAY_CLIENT: &str = "mxpin-relay";
/// The relay listener's syslog name: how mxpin knows its own listener
/// (its service name is just the port).
const LISTENER_MARK: &str = "-o syslog_name=postfix/mxpin-relay";
/// The SMTP listener's syslog name, likewise.
const SMTP_MARK: &str = "-o syslog_name=postfix/mxpin-smtp";

/// A service block mxpin wants in master.cf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    name: String,
    kind: &'static str,
    /// Comment line, entry line and continuation lines.
    block: String,
}

impl Service {
    /// The implicit-TLS smtp client for an external relayhost on 465.
    pub fn smtps(chroot: &str) -> Service {
        Service {
            name: SMTPS.into(),
            kind: "unix",
            block: format!(
                "# Managed by mxpin: SMTP over implicit TLS (port 465) to the relayhost.\n\
                 {SMTPS} unix  -       -       {chroot}       -       -       smtp\n  \
                 -o smtp_tls_wrappermode=yes\n"
            ),
        }
    }

    /// The smtp client that presents `key` and `cert` (this host's current
    /// pair) to the managed relayhost. `chain_files`: Postfix 3.4 and later.
    pub fn relay_client(chroot: &str, key: &str, cert: &str, chain_files: bool) -> Service {
        let tls = if chain_files {
            format!("  -o smtp_tls_chain_files={key},{cert}\n")
        } else {
            format!("  -o smtp_tls_cert_file={cert}\n  -o smtp_tls_key_file={key}\n")
        };
        Service {
            name: RELAY_CLIENT.into(),
            kind: "unix",
            block: format!(
                "# Managed by mxpin: SMTP to the relayhost, presenting this host's pinned key.\n\
                 {RELAY_CLIENT} unix  -       -       {chroot}       -       -       smtp\n{tls}"
            ),
        }
    }

    /// The relay listener on `port`: relays only for clients whose
    /// certificate fingerprint (in `digest`) is in `table`. The same table,
    /// through `check_ccert_access`, logs each accepted key with its host
    /// (its values are `INFO` actions, which log and go on).
    /// `key_options`: the `-o` lines that make it serve mxpin's key
    /// ([`server_key`]), whatever main.cf serves to everyone else.
    pub fn relay_listener(
        chroot: &str,
        port: u16,
        digest: &str,
        table: &str,
        key_options: &str,
    ) -> Service {
        Service {
            name: port.to_string(),
            kind: "inet",
            block: format!(
                "# Managed by mxpin: relay for the hosts that send their mail through this one \
                 (pinned client certificates).\n\
                 {port}      inet  n       -       {chroot}       -       -       smtpd\n  \
                 {LISTENER_MARK}\n\
                 {key_options}  \
                 -o smtpd_tls_security_level=encrypt\n  \
                 -o smtpd_tls_ask_ccert=yes\n  \
                 -o smtpd_tls_fingerprint_digest={digest}\n  \
                 -o relay_clientcerts={table}\n  \
                 -o smtpd_client_restrictions=\n  \
                 -o smtpd_helo_restrictions=\n  \
                 -o smtpd_sender_restrictions=\n  \
                 -o smtpd_relay_restrictions=check_ccert_access,{table},permit_tls_clientcerts,defer\n  \
                 -o smtpd_recipient_restrictions=\n  \
                 -o smtpd_sasl_auth_enable=no\n"
            ),
        }
    }

    /// The SMTP listener on `port` (a primary's `smtp_port`): the admin's
    /// port-25 smtpd copied, see [`smtpd_template`].
    pub fn smtp_listener(port: u16, template: &SmtpdTemplate) -> Service {
        let options: String = template
            .options
            .iter()
            .map(|o| format!("  {o}\n"))
            .collect();
        Service {
            name: port.to_string(),
            kind: "inet",
            block: format!(
                "# Managed by mxpin: SMTP on smtp_port {port}, where the backup MX hosts deliver \
                 (the admin's port-25 smtpd copied).\n\
                 {port}      inet  {columns}       smtpd\n  \
                 {SMTP_MARK}\n\
                 {options}",
                columns = template.columns
            ),
        }
    }
}

/// What mxpin copies from the admin's port-25 smtpd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpdTemplate {
    /// The private, unpriv, chroot, wakeup and maxproc columns.
    pub columns: String,
    /// Its continuation lines' words (`-o name=value` pairs kept together),
    /// comments left out.
    pub options: Vec<String>,
}

/// The admin's smtpd that serves port 25: the port-25 `inet` service
/// running `smtpd`, or, when postscreen runs there, the `smtpd pass`
/// service it hands connections to. Its `-o` options and columns, without
/// the arguments that tie it to the pass socket; the Postfix defaults
/// (`n - - - - smtpd`) when master.cf has neither.
pub fn smtpd_template(text: &str) -> SmtpdTemplate {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let command =
        |r: &std::ops::Range<usize>| lines[r.start].split_whitespace().nth(7).unwrap_or_default();
    let all = entries(&lines);
    let admins = all.iter().filter(|r| !is_ours(&lines, r));
    let found = admins
        .clone()
        .find(|r| {
            entry(lines[r.start]).is_some_and(|(n, k)| k == "inet" && inet_port(n) == Some(25))
                && command(r) == "smtpd"
        })
        .or_else(|| {
            admins
                .clone()
                .find(|r| entry(lines[r.start]) == Some(("smtpd", "pass")))
        });
    let Some(r) = found else {
        return SmtpdTemplate {
            columns: "n       -       -       -       -".into(),
            options: Vec::new(),
        };
    };
    let fields: Vec<&str> = lines[r.start].split_whitespace().collect();
    // The entry line's own arguments after the command count as options too.
    let mut words: Vec<&str> = fields.iter().skip(8).copied().collect();
    for l in &lines[r.start + 1..r.end] {
        let l = l.trim();
        if l.starts_with('#') {
            continue;
        }
        words.extend(l.split_whitespace());
    }
    let mut options = Vec::new();
    let mut w = words.into_iter();
    while let Some(word) = w.next() {
        match word {
            "-o" => {
                if let Some(v) = w.next() {
                    // A syslog_name of the admin's would hide mxpin's mark.
                    if !v.starts_with("syslog_name=") {
                        options.push(format!("-o {v}"));
                    }
                }
            }
            other => options.push(other.to_string()),
        }
    }
    let columns = fields
        .get(2..7)
        .map(|c| c.join("       "))
        .unwrap_or_else(|| "n       -       -       -       -".into());
    SmtpdTemplate { columns, options }
}

/// The `-o` lines that make an smtpd service serve `key` and `cert`
/// (`chain_files`: Postfix 3.4 and later). Beside smtpd_tls_chain_files the
/// legacy certificates of main.cf (the admin's own, which port 25 keeps
/// serving) are emptied for this service only: smtpd ignores them there
/// anyway, and warns on every start while they are set.
pub fn server_key(key: &str, cert: &str, chain_files: bool) -> String {
    if chain_files {
        format!(
            "  -o smtpd_tls_chain_files={key},{cert}\n  -o smtpd_tls_cert_file=\n  \
             -o smtpd_tls_eccert_file=\n  -o smtpd_tls_dcert_file=\n"
        )
    } else {
        format!("  -o smtpd_tls_cert_file={cert}\n  -o smtpd_tls_key_file={key}\n")
    }
}

/// Service name and type of a master.cf entry line, if it starts one.
fn entry(line: &str) -> Option<(&str, &str)> {
    if line.starts_with([' ', '\t', '#']) {
        return None;
    }
    let mut f = line.split_whitespace();
    Some((f.next()?, f.next()?))
}

/// The entries of master.cf: each entry line with its continuation lines
/// (starting with white space), comments in between included.
fn entries(lines: &[&str]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if entry(lines[i]).is_none() {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i + 1;
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
        out.push(start..end);
        i = end;
    }
    out
}

/// Whether an entry is one of mxpin's services.
fn is_ours(lines: &[&str], range: &std::ops::Range<usize>) -> bool {
    match entry(lines[range.start]) {
        Some((SMTPS | RELAY_CLIENT, "unix")) => true,
        Some((_, "inet")) => lines[range.clone()]
            .iter()
            .any(|l| l.trim() == LISTENER_MARK || l.trim() == SMTP_MARK),
        _ => false,
    }
}

/// The chroot column (5th) of the admin's `NAME KIND` service, so mxpin's
/// services run like the admin's own; `-` (Postfix's default) otherwise.
pub fn chroot_of(text: &str, name: &str, kind: &str) -> String {
    text.lines()
        .find(|l| entry(l) == Some((name, kind)))
        .and_then(|l| l.split_whitespace().nth(4))
        .filter(|c| ["y", "n", "-"].contains(c))
        .unwrap_or("-")
        .to_string()
}

/// The port an inet service listens on: its name (`[host:]port`), where a
/// name is a port number or one of the SMTP service names.
fn inet_port(name: &str) -> Option<u16> {
    let port = name.rsplit_once(':').map_or(name, |(_, p)| p);
    match port {
        "smtp" => Some(25),
        "smtps" | "submissions" => Some(465),
        "submission" => Some(587),
        p => p.parse().ok(),
    }
}

/// Whether mxpin's relay listener is in master.cf on `port`.
pub fn listener_on(text: &str, port: u16) -> bool {
    ours_on(text, port, LISTENER_MARK)
}

/// Whether mxpin's SMTP listener is in master.cf on `port`.
pub fn smtp_listener_on(text: &str, port: u16) -> bool {
    ours_on(text, port, SMTP_MARK)
}

fn ours_on(text: &str, port: u16, mark: &str) -> bool {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    entries(&lines).into_iter().any(|r| {
        entry(lines[r.start]).is_some_and(|(n, k)| k == "inet" && inet_port(n) == Some(port))
            && lines[r.clone()].iter().any(|l| l.trim() == mark)
    })
}

/// An admin's service already listening on `port`, as its line.
pub fn port_taken(text: &str, port: u16) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    entries(&lines)
        .into_iter()
        .filter(|r| !is_ours(&lines, r))
        .find(|r| {
            entry(lines[r.start]).is_some_and(|(n, k)| k == "inet" && inet_port(n) == Some(port))
        })
        .map(|r| lines[r.start].trim_end().to_string())
}

/// master.cf with exactly mxpin's `wanted` services: each kept in place
/// (rewritten if it differs), appended when missing; mxpin's services not
/// wanted are removed with their comment. Returns the text unchanged when
/// it already is as wanted. mxpin's lines end as the file's own do (CRLF or
/// LF), and a file without a final newline keeps none, so removing the
/// services gives back the admin's bytes.
pub fn edited(text: &str, wanted: &[Service]) -> String {
    let eol = crate::mta::line_ending(text);
    let block = |s: &Service| s.block.replace('\n', eol);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = String::with_capacity(text.len() + 1024);
    let mut placed: Vec<&Service> = Vec::new();
    let mut at = 0;
    for r in entries(&lines) {
        if !is_ours(&lines, &r) {
            continue;
        }
        let (name, kind) = entry(lines[r.start]).expect("an entry");
        // mxpin's comment line just above belongs to the block.
        let start = if r.start > at && lines[r.start - 1].starts_with("# Managed by mxpin") {
            r.start - 1
        } else {
            r.start
        };
        out.push_str(&lines[at..start].concat());
        let want = wanted
            .iter()
            .find(|s| s.kind == kind && s.name == name && !placed.contains(s));
        if let Some(s) = want {
            out.push_str(&block(s));
            placed.push(s);
        }
        at = r.end;
    }
    out.push_str(&lines[at..].concat());
    for s in wanted.iter().filter(|s| !placed.contains(s)) {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(eol);
        }
        out.push_str(&block(s));
    }
    crate::mta::keep_final_newline(text, out)
}

#[cfg(test)]
mod tests;
