//! `.fetchmailrc` for hosts that poll mail from pinned external servers.
//!
//! Each [`Poll`] becomes one `poll` stanza that makes fetchmail (6.4, as in
//! Debian 12) refuse any server but the pinned one:
//!
//! - `sslcertck` (the default since 6.4, written anyway) makes fetchmail
//!   verify the chain and the server name, and abort otherwise. A
//!   self-signed server has no chain to the system CAs, so `sslcertfile`
//!   names a PEM file holding the server's own certificate: fetchmail uses
//!   it *instead of* the default CA store, so no public CA can vouch for an
//!   impostor. The certificate must name `server` (fetchmail checks it).
//! - `sslfingerprint` is the MD5 of the certificate DER, the only digest
//!   fetchmail 6.4 knows. Alone it would be weak (MD5) and it would not stop
//!   the name and chain check from failing on a self-signed certificate;
//!   with `sslcertfile` it is a second, independent check that the server
//!   sends exactly the certificate mxpin pinned, not merely one the file
//!   trusts (the file may be edited by hand, or hold a CA).
//! - `sslproto "tls1.2+"` requires TLS 1.2 or newer. For [`Tls::StartTls`]
//!   there is no `ssl`, and fetchmail then *requires* STLS/STARTTLS because
//!   `sslcertck` and `sslfingerprint` are set (its `must_starttls()`;
//!   without them STARTTLS would be opportunistic, and `sslproto ''` would
//!   turn it off). [`Tls::Implicit`] adds `ssl`.
//!
//! Checked against fetchmail 6.4.37 itself: with the default CA store a
//! self-signed server fails `sslcertck` even when the fingerprint matches;
//! with `sslcertfile` holding that certificate it verifies. tests/dovecot.rs
//! runs the rendered file against a real Dovecot (POP3 and IMAP, implicit
//! TLS and STARTTLS): it fetches and delivers, and refuses a changed key.
//!
//! fetchmail refuses an rc file that is not a regular file, is readable or
//! writable by group or others (more than 0700), or is not owned by the
//! effective user running it: write it 0600, owned by that user.
//!
//! Passwords are never written: fetchmail 6.4.37 has no `passwordfile`
//! (a syntax error in its parser), so it takes them from `~/.netrc` of the
//! user it runs as, matching `machine` to the poll name (= `server`) and
//! `login` to `user`; the netrc must be mode 0600.
//!
//! fetchmail's lexer reads `"..."` as everything up to the next `"`, with
//! no escape for the quote itself, then applies C-like escapes (`\\`,
//! `\xHH`, `\NNN`). `quote` writes `"` as `\x22` and `\` as `\\`, so
//! no value can end its string early and add keywords. What must not
//! reach a poll at all is refused by one rule,
//! [`FetchmailWord::check`](crate::inventory::FetchmailWord::check): the
//! user and local of a poll are [`FetchmailWord`]s, checked when the
//! inventory is read (a local `*`, which would make the poll multidrop,
//! included); [`check_poll`] applies the rule to the poll's other strings
//! and adds the values that are legal strings but mean something else to
//! fetchmail: a server named `defaults`.
//!
//! Over 500 lines for its tests: two thirds of the file run fetchmail's
//! own parser (`--configdump`) on what [`render`] writes, hostile values
//! included, and stay beside the quoting they prove.

use std::fmt;
use std::str::FromStr;

use crate::inventory::FetchmailWord;
use crate::templates::Templates;
use crate::tls::Fingerprint;

/// Name of the template, under `templates/` or `--templates DIR`.
pub const TEMPLATE: &str = "fetchmail/fetchmailrc.tera";

/// Lowest TLS version mxpin lets fetchmail accept.
pub const SSLPROTO: &str = "tls1.2+";

/// Bytes in an MD5 digest: what `sslfingerprint` must be.
const MD5_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Pop3,
    Imap,
}

impl Protocol {
    pub const NAMES: &'static str = "pop3 or imap";

    /// The keyword fetchmail's `protocol` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Pop3 => "pop3",
            Protocol::Imap => "imap",
        }
    }

    /// The well-known port for this protocol with `tls`.
    pub fn default_port(self, tls: Tls) -> u16 {
        match (self, tls) {
            (Protocol::Pop3, Tls::Implicit) => 995,
            (Protocol::Pop3, Tls::StartTls) => 110,
            (Protocol::Imap, Tls::Implicit) => 993,
            (Protocol::Imap, Tls::StartTls) => 143,
        }
    }
}

impl FromStr for Protocol {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "pop3" => Ok(Protocol::Pop3),
            "imap" => Ok(Protocol::Imap),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the connection becomes TLS. Either way TLS is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// TLS from the first byte (`ssl`; ports 995, 993).
    Implicit,
    /// Plain connect, then STLS (POP3) or STARTTLS (IMAP); required, see
    /// the module doc.
    StartTls,
}

impl Tls {
    pub const NAMES: &'static str = "implicit or starttls";

    pub fn as_str(self) -> &'static str {
        match self {
            Tls::Implicit => "implicit",
            Tls::StartTls => "starttls",
        }
    }
}

impl FromStr for Tls {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "implicit" => Ok(Tls::Implicit),
            "starttls" => Ok(Tls::StartTls),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where fetchmail finds the password. Only `~/.netrc`: fetchmail 6.4.37
/// rejects `passwordfile` (a SUSE-only patch), and a password in the
/// `.fetchmailrc` would put it in the inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Password {
    /// `machine SERVER login USER password ...` in `~/.netrc` of the user
    /// that runs fetchmail (mode 0600, or fetchmail ignores it).
    Netrc,
}

/// One poll of one mailbox on a pinned external server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    /// External peer name from the inventory, for a comment line.
    pub label: String,
    /// DNS name (the one in its certificate) or IP of the mail server.
    pub server: String,
    pub port: u16,
    pub protocol: Protocol,
    pub tls: Tls,
    /// Remote login.
    pub user: FetchmailWord,
    /// Local recipient (user name or address) for `is ... here`.
    pub local: FetchmailWord,
    /// MD5 of the certificate DER:
    /// `Certificate::fingerprint(Digest::Md5, PinKind::Certificate)`.
    pub md5: Fingerprint,
    /// Absolute path on the host of a PEM file with the server's certificate.
    pub certfile: String,
    pub password: Password,
}

/// Refuses a poll that fetchmail would read differently from what it says.
pub fn check_poll(p: &Poll) -> Result<(), String> {
    // user and local were checked as they were read.
    FetchmailWord::check("fetchmail label", &p.label)?;
    FetchmailWord::check("fetchmail server", &p.server)?;
    FetchmailWord::check("fetchmail certfile", &p.certfile)?;
    if p.server.contains(' ') {
        return Err(format!(
            "fetchmail server \"{}\" contains a space",
            p.server
        ));
    }
    if p.server.eq_ignore_ascii_case("defaults") {
        // fetchmail takes a first `poll defaults` as the defaults for all
        // polls, not as a server.
        return Err("fetchmail server \"defaults\" is a fetchmail keyword".into());
    }
    if !p.certfile.starts_with('/') {
        // fetchmail resolves a relative one against the rc file's directory.
        return Err(format!(
            "fetchmail certfile \"{}\" is not an absolute path",
            p.certfile
        ));
    }
    if p.port == 0 {
        return Err(format!("fetchmail server {}: port 0", p.server));
    }
    let bytes = p.md5.as_str().split(':').count();
    if bytes != MD5_LEN {
        return Err(format!(
            "fetchmail server {}: sslfingerprint has {bytes} bytes, fetchmail takes only MD5 ({MD5_LEN})",
            p.server
        ));
    }
    Ok(())
}

/// `s` as one string token of fetchmail's rc lexer. The lexer ends a
/// string at the first `"` whatever precedes it, then decodes C escapes,
/// so `"` must be `\x22` (exactly two hex digits: a following hex digit is
/// not swallowed) and `\` must be `\\`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str(r"\x22"),
            '\\' => out.push_str(r"\\"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

fn poll_context(p: &Poll) -> serde_json::Value {
    serde_json::json!({
        "label": p.label,
        "server": quote(&p.server),
        "port": p.port,
        "protocol": p.protocol.as_str(),
        "implicit_tls": p.tls == Tls::Implicit,
        "user": quote(p.user.as_str()),
        "local": quote(p.local.as_str()),
        "sslproto": quote(SSLPROTO),
        "certfile": quote(&p.certfile),
        "fingerprint": quote(p.md5.as_str()),
    })
}

/// The whole `.fetchmailrc`: a header, then one `poll` stanza per poll.
pub fn render(polls: &[Poll], templates: &Templates) -> Result<String, String> {
    for p in polls {
        check_poll(p)?;
    }
    let mut ctx = tera::Context::new();
    let polls: Vec<_> = polls.iter().map(poll_context).collect();
    ctx.insert("polls", &polls);
    templates.render(TEMPLATE, &ctx).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Digest;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};

    /// Servers under `.invalid` (RFC 2606) never resolve, so even a
    /// fetchmail that tried to connect could not reach anyone.
    fn poll(server: &str, protocol: Protocol, tls: Tls) -> Poll {
        Poll {
            label: format!("peer-{server}"),
            server: server.into(),
            port: protocol.default_port(tls),
            protocol,
            tls,
            user: FetchmailWord::user("jo").unwrap(),
            local: FetchmailWord::local("jo").unwrap(),
            md5: Fingerprint::of(Digest::Md5, server.as_bytes()),
            certfile: format!("/etc/mxpin/fetchmail/{server}.pem"),
            password: Password::Netrc,
        }
    }

    fn templates() -> Templates {
        Templates::load(None).unwrap()
    }

    fn stanzas(text: &str) -> Vec<&str> {
        text.split("\n\n# ").skip(1).collect()
    }

    #[test]
    fn pop3_implicit_stanza() {
        let p = poll("pop.example.invalid", Protocol::Pop3, Tls::Implicit);
        let out = render(std::slice::from_ref(&p), &templates()).unwrap();
        assert!(out.starts_with("# Managed by mxpin"), "{out}");
        assert!(out.contains("overwritten by `mxpin apply`"), "{out}");
        let expected = format!(
            "# peer-pop.example.invalid\n\
             poll \"pop.example.invalid\" protocol pop3 port 995\n    \
             user \"jo\" is \"jo\" here\n    \
             ssl sslproto \"tls1.2+\" sslcertck sslcertfile \"/etc/mxpin/fetchmail/pop.example.invalid.pem\"\n    \
             sslfingerprint \"{}\"\n",
            p.md5
        );
        assert!(out.ends_with(&expected), "{out}");
        assert_eq!(p.md5.as_str().len(), 47, "16 uppercase bytes with colons");
    }

    #[test]
    fn imap_starttls_stanza_has_no_ssl_keyword() {
        let p = poll("imap.example.invalid", Protocol::Imap, Tls::StartTls);
        let out = render(std::slice::from_ref(&p), &templates()).unwrap();
        assert!(
            out.contains("poll \"imap.example.invalid\" protocol imap port 143\n"),
            "{out}"
        );
        assert!(
            out.contains("\n    sslproto \"tls1.2+\" sslcertck sslcertfile "),
            "{out}"
        );
        assert!(!out.contains(" ssl "), "{out}");
        assert!(!out.contains("\n    ssl "), "{out}");
    }

    #[test]
    fn several_polls_render_in_order() {
        let polls = [
            poll("a.example.invalid", Protocol::Pop3, Tls::Implicit),
            poll("b.example.invalid", Protocol::Imap, Tls::Implicit),
            poll("c.example.invalid", Protocol::Pop3, Tls::StartTls),
        ];
        let out = render(&polls, &templates()).unwrap();
        let s = stanzas(&out);
        assert_eq!(s.len(), 3, "{out}");
        for (stanza, p) in s.iter().zip(&polls) {
            assert!(stanza.starts_with(&p.label), "{stanza}");
            assert!(stanza.contains(&format!("poll \"{}\" ", p.server)));
            assert!(
                stanza.contains(&format!("port {} ", p.port))
                    || stanza.contains(&format!("port {}\n", p.port))
            );
            assert!(stanza.contains(p.md5.as_str()));
        }
        assert_eq!(out.matches("\npoll ").count(), 3);
    }

    #[test]
    fn no_polls_is_just_the_header() {
        let out = render(&[], &templates()).unwrap();
        assert!(out.lines().all(|l| l.starts_with('#')), "{out}");
    }

    #[test]
    fn odd_values_are_quoted_so_nothing_ends_a_string_early() {
        let mut p = poll("pop.example.invalid", Protocol::Pop3, Tls::Implicit);
        p.user = FetchmailWord::user(r#"jo "q" \x41\n"#).unwrap();
        p.local = FetchmailWord::local("local user; is x here").unwrap();
        p.certfile = r#"/etc/mx pin/"a".pem"#.into();
        let out = render(&[p], &templates()).unwrap();
        assert!(
            out.contains(r#"user "jo \x22q\x22 \\x41\\n" is "local user; is x here" here"#),
            "{out}"
        );
        assert!(
            out.contains(r#"sslcertfile "/etc/mx pin/\x22a\x22.pem""#),
            "{out}"
        );
    }

    #[test]
    fn check_poll_refuses_values_fetchmail_reads_otherwise() {
        let ok = poll("pop.example.invalid", Protocol::Pop3, Tls::Implicit);
        check_poll(&ok).unwrap();
        type Change = fn(&mut Poll);
        let cases: Vec<(Change, &str)> = vec![
            (|p| p.server = "defaults".into(), "keyword"),
            (|p| p.server = "Defaults".into(), "keyword"),
            (|p| p.server = "a b".into(), "space"),
            (|p| p.certfile = "peer.pem".into(), "absolute"),
            (|p| p.port = 0, "port 0"),
            (
                |p| p.md5 = Fingerprint::of(Digest::Sha256, b"x"),
                "only MD5",
            ),
            (|p| p.label = "x\npoll evil".into(), "label"),
            (|p| p.certfile = String::new(), "certfile is empty"),
        ];
        for (change, why) in cases {
            let mut p = ok.clone();
            change(&mut p);
            let e = check_poll(&p).unwrap_err();
            assert!(e.contains(why), "{p:?}: {e}");
            assert_eq!(render(&[ok.clone(), p], &templates()).unwrap_err(), e);
        }
    }

    #[test]
    fn names_parse_back() {
        for p in [Protocol::Pop3, Protocol::Imap] {
            assert_eq!(p.as_str().parse::<Protocol>(), Ok(p));
        }
        for t in [Tls::Implicit, Tls::StartTls] {
            assert_eq!(t.as_str().parse::<Tls>(), Ok(t));
        }
        assert!("pop".parse::<Protocol>().is_err());
        assert!("ssl".parse::<Tls>().is_err());
    }

    // ---- fetchmail's own parser ----------------------------------------

    /// The installed fetchmail, or `None` (after saying why) when it is
    /// missing and the lab is not required.
    fn fetchmail() -> Option<PathBuf> {
        let found = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("fetchmail"))
                .find(|p| p.is_file())
        });
        if found.is_none() {
            let msg =
                "fetchmail is not installed (apt-get install fetchmail; lab/install-deps.sh does)";
            if std::env::var("MXPIN_LAB_REQUIRED").as_deref() == Ok("1") {
                panic!("{msg}, and MXPIN_LAB_REQUIRED=1");
            }
            eprintln!("skipping: {msg}");
        }
        found
    }

    fn write_file(path: &Path, text: &str, mode: u32) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// `fetchmail -f RC --configdump`: parses RC and prints it back as a
    /// Python literal, without connecting anywhere. HOME is a fresh
    /// directory so no real ~/.fetchmailrc, ~/.netrc or ~/.fetchids counts.
    fn configdump(bin: &Path, rc: &str, mode: u32, netrc: Option<&str>) -> Output {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join("fetchmailrc");
        write_file(&path, rc, mode);
        if let Some(n) = netrc {
            write_file(&home.path().join(".netrc"), n, 0o600);
        }
        Command::new(bin)
            .arg("-f")
            .arg(&path)
            .arg("--configdump")
            .env("HOME", home.path())
            .env("LC_ALL", "C")
            .env_remove("FETCHMAILHOME")
            .env_remove("HOME_ETC")
            .env_remove("FETCHMAILUSER")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A string as --configdump prints it (for printable ASCII).
    fn dumped(s: &str) -> String {
        format!("\"{}\"", s.replace('\\', r"\\").replace('"', "\\\""))
    }

    fn dump_entries(out: &Output) -> Vec<String> {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "fetchmail refused the file: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .split("# Entry for site `")
            .skip(1)
            .map(str::to_string)
            .collect()
    }

    fn assert_entry(entry: &str, p: &Poll, password: &str) {
        let proto = p.protocol.as_str().to_uppercase();
        let ssl = if p.tls == Tls::Implicit {
            "TRUE"
        } else {
            "FALSE"
        };
        for want in [
            format!("\"pollname\":{},", dumped(&p.server)),
            format!("\"protocol\":\"{proto}\","),
            format!("\"service\":\"{}\",", p.port),
            format!("\"remote\":{},", dumped(p.user.as_str())),
            format!("\"password\":{password},"),
            format!("'localnames':[{}],", dumped(p.local.as_str())),
            format!("'ssl':{ssl},"),
            "\"sslproto\":\"tls1.2+\",".to_string(),
            "'sslcertck':TRUE,".to_string(),
            format!("\"sslcertfile\":{},", dumped(&p.certfile)),
            "\"sslcertpath\":None,".to_string(),
            format!("\"sslfingerprint\":\"{}\",", p.md5),
        ] {
            assert!(entry.contains(&want), "missing {want} in\n{entry}");
        }
    }

    #[test]
    fn fetchmail_parses_what_mxpin_writes() {
        let Some(bin) = fetchmail() else { return };
        let mut odd = poll("imap.example.invalid", Protocol::Imap, Tls::StartTls);
        // Try to inject a password and a second poll through the quoting.
        odd.user = FetchmailWord::user(r#"jo" password "pw" poll "evil.invalid"#).unwrap();
        odd.local = FetchmailWord::local(r#"Jo Q. \"Public\" \x41 \\"#).unwrap();
        odd.certfile = r#"/etc/mx pin/"a";b.pem"#.into();
        let mut netrc_user = poll("pop.example.invalid", Protocol::Pop3, Tls::Implicit);
        netrc_user.user = FetchmailWord::user("jo q@example.org").unwrap();
        let polls = [
            poll("a.example.invalid", Protocol::Pop3, Tls::Implicit),
            odd,
            netrc_user,
            poll("b.example.invalid", Protocol::Imap, Tls::Implicit),
        ];
        let rc = render(&polls, &templates()).unwrap();
        // fetchmail finds the password by poll name and login, in ~/.netrc.
        let netrc = "machine pop.example.invalid login \"jo q@example.org\" password s3cret\n";
        let out = configdump(&bin, &rc, 0o600, Some(netrc));
        let entries = dump_entries(&out);
        assert_eq!(entries.len(), polls.len(), "{rc}\n{entries:#?}");
        for (i, (entry, p)) in entries.iter().zip(&polls).enumerate() {
            let password = if i == 2 { "\"s3cret\"" } else { "None" };
            assert_entry(entry, p, password);
        }
    }

    #[test]
    fn fetchmail_rejects_a_broken_file() {
        let Some(bin) = fetchmail() else { return };
        let p = poll("pop.example.invalid", Protocol::Pop3, Tls::Implicit);
        let good = render(&[p], &templates()).unwrap();
        assert!(configdump(&bin, &good, 0o600, None).status.success());
        let broken = format!("{good}poll \"x.invalid\" protocol pop3 user \"jo\" sslproto\n");
        let out = configdump(&bin, &broken, 0o600, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{broken}");
        assert!(stderr.contains("syntax error"), "{stderr}");
    }

    #[test]
    fn fetchmail_has_no_passwordfile_keyword() {
        let Some(bin) = fetchmail() else { return };
        let rc =
            "poll \"x.invalid\" protocol pop3 user \"jo\" is \"jo\" here passwordfile \"/pw\"\n";
        let out = configdump(&bin, rc, 0o600, None);
        assert!(!out.status.success(), "fetchmail now knows passwordfile");
    }

    #[test]
    fn fetchmail_refuses_a_group_readable_file() {
        let Some(bin) = fetchmail() else { return };
        let p = poll("pop.example.invalid", Protocol::Pop3, Tls::Implicit);
        let rc = render(&[p], &templates()).unwrap();
        let out = configdump(&bin, &rc, 0o640, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("(0700) permissions"), "{stderr}");
    }

    #[test]
    fn fetchmail_has_no_backslash_quote_escape() {
        // Why quote() writes \x22: the lexer ends a string at any `"`.
        let Some(bin) = fetchmail() else { return };
        let naive = "poll \"x.invalid\" protocol pop3 user \"a\\\"b\" is \"jo\" here\n";
        let out = configdump(&bin, naive, 0o600, None);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() || !stdout.contains(r#""remote":"a\"b","#),
            "{stdout}"
        );
        let mut p = poll("x.invalid", Protocol::Pop3, Tls::Implicit);
        p.user = FetchmailWord::user("a\"b").unwrap();
        let rc = render(std::slice::from_ref(&p), &templates()).unwrap();
        assert_entry(
            &dump_entries(&configdump(&bin, &rc, 0o600, None))[0],
            &p,
            "None",
        );
    }

    /// The inventory once refused what fetchmail reads back exactly
    /// (spaces, quotes, backslash, `$`, `` ` ``, `'`), and took a local
    /// `*`, which only the renderer refused (multidrop), late and without
    /// a line number. One rule now: what the inventory takes, fetchmail
    /// parses back as written.
    #[test]
    fn what_the_inventory_takes_fetchmail_reads_back() {
        let parse = |user: &str, local: &str| {
            let text = format!(
                "[hosts.home]\nssh = \"h\"\nmx = \"home.example.net\"\n\n\
                 [[hosts.home.fetchmail]]\nserver = \"box\"\nprotocol = \"imap\"\n\
                 user = {}\nlocal = {}\n\n\
                 [external.box]\naddress = \"imap.example.invalid:993\"\ntls = \"implicit\"\n",
                serde_json::to_string(user).unwrap(),
                serde_json::to_string(local).unwrap()
            );
            crate::inventory::parse(Path::new("mxpin.toml"), &text)
        };
        let e = parse("jo", "*").unwrap_err().to_string();
        assert_eq!(
            e,
            "mxpin.toml:9:9: fetchmail local \"*\" would make the poll multidrop"
        );
        let Some(bin) = fetchmail() else { return };
        let long = "u".repeat(crate::inventory::names::FETCHMAIL_WORD_MAX);
        for (user, local) in [
            (r#"o'neil "q" $HOME `id` a\b"#, "Jo Q. Public"),
            (long.as_str(), "jo"),
        ] {
            let inv = parse(user, local).unwrap();
            let words = &inv.hosts[0].fetchmail[0];
            assert_eq!((words.user.as_str(), words.local.as_str()), (user, local));
            let mut p = poll("imap.example.invalid", Protocol::Imap, Tls::Implicit);
            p.user = words.user.clone();
            p.local = words.local.clone();
            let rc = render(std::slice::from_ref(&p), &templates()).unwrap();
            let entries = dump_entries(&configdump(&bin, &rc, 0o600, None));
            assert_eq!(entries.len(), 1, "{rc}");
            assert_entry(&entries[0], &p, "None");
        }
    }
}
