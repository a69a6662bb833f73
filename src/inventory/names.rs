//! Validated names and paths. Each type can only be built through its
//! `parse`, so a value that would be unsafe in a remote shell, a Postfix table
//! or an ssh command line cannot exist past the inventory.

use std::fmt;

use crate::text::shown;

/// Why a value was refused; the caller adds file, line and column.
pub type Invalid = String;

macro_rules! string_newtype {
    ($name:ident) => {
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(HostName);
string_newtype!(DnsName);
string_newtype!(SshDestination);
string_newtype!(RemotePath);
string_newtype!(Recipient);
string_newtype!(FetchmailWord);

impl HostName {
    /// An inventory key: letters, digits, `-` and `_`, starting with a letter
    /// or digit.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let s_shown = shown(s);
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(HostName(s.to_string()))
        } else {
            Err(format!(
                "invalid host name {s_shown}: use letters, digits, '-' and '_' (at most 64)"
            ))
        }
    }
}

impl DnsName {
    /// A DNS host or domain name, stored in lowercase (Postfix tables compare
    /// case-insensitively, so one spelling avoids near-duplicate keys).
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let s_shown = shown(s);
        let lower = s.to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if !lower.is_empty() && lower.len() <= 253 && lower.split('.').all(label_ok) {
            Ok(DnsName(lower))
        } else {
            Err(format!("invalid DNS name {s_shown}"))
        }
    }
}

impl SshDestination {
    /// An ssh destination: `alias`, `host`, `user@host`, `user@host:port` or
    /// `[v6]:port`. Never starts with `-`, which ssh would read as an option.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let s_shown = shown(s);
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._-@:[]%".contains(c);
        if s.is_empty() || s.len() > 255 || s.starts_with('-') || !s.chars().all(allowed) {
            return Err(format!(
                "invalid ssh destination {s_shown}: expected alias, host, user@host or user@host:port"
            ));
        }
        if s.matches('@').count() > 1 || s.ends_with('@') || s.starts_with('@') {
            return Err(format!("invalid ssh destination {s_shown}: misplaced '@'"));
        }
        let d = SshDestination(s.to_string());
        let (_, host, port) = d.split();
        let bad_host = host.is_empty()
            || host.starts_with('-')
            || host.contains(['[', ']', '@'])
            || (host.contains(':') && !s.contains('['));
        if bad_host || port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
            return Err(format!(
                "invalid ssh destination {s_shown}: expected alias, host, user@host, user@host:port \
                 or [v6]:port (port 1 to 65535)"
            ));
        }
        Ok(d)
    }

    /// `[user@]host[:port]`, split; an IPv6 address comes without its
    /// brackets. ssh takes the port as `-p`, never inside the destination.
    fn split(&self) -> (Option<&str>, &str, Option<&str>) {
        let (user, rest) = match self.0.split_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, self.0.as_str()),
        };
        if let Some(inner) = rest.strip_prefix('[') {
            return match inner.split_once(']') {
                Some((h, "")) => (user, h, None),
                Some((h, p)) => (user, h, Some(p.strip_prefix(':').unwrap_or("x"))),
                None => (user, "", None),
            };
        }
        match rest.split_once(':') {
            // More than one ':' without brackets: an IPv6 address, refused
            // by parse (the port would be ambiguous).
            Some((h, p)) => (user, h, Some(p)),
            None => (user, rest, None),
        }
    }

    /// The login user, if given.
    pub fn user(&self) -> Option<&str> {
        self.split().0
    }

    /// The host (alias, name or address).
    pub fn host(&self) -> &str {
        self.split().1
    }

    /// The port, if given.
    pub fn port(&self) -> Option<u16> {
        self.split().2.and_then(|p| p.parse().ok())
    }
}

impl RemotePath {
    /// An absolute path without `..`, empty components or characters a shell
    /// or Postfix list would treat specially. A trailing `/` is dropped.
    /// At most 1024 bytes with components of at most 255 (the kernel's
    /// NAME_MAX): mxpin appends its own names below it, and the whole must
    /// stay far below PATH_MAX (4096) and fit one argument to sh.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let s_shown = shown(s);
        let trimmed = if s.len() > 1 {
            s.trim_end_matches('/')
        } else {
            s
        };
        let allowed = |c: char| c.is_ascii_alphanumeric() || "/._-+".contains(c);
        let ok = trimmed.starts_with('/')
            && trimmed.len() > 1
            && trimmed.len() <= 1024
            && trimmed.chars().all(allowed)
            && trimmed[1..]
                .split('/')
                .all(|p| !p.is_empty() && p.len() <= 255 && p != "." && p != "..");
        if ok {
            Ok(RemotePath(trimmed.to_string()))
        } else {
            Err(format!(
                "invalid path {s_shown}: expected an absolute path of letters, digits and ._-+ \
                 (at most 1024 characters, 255 per component)"
            ))
        }
    }

    pub fn join(&self, name: &str) -> String {
        format!("{}/{}", self.0, name)
    }
}

impl Recipient {
    /// `local@domain` where domain is `domain` (a backup accepts addresses of
    /// the domain it backs up, nothing else). The local part is limited to
    /// RFC 5322 atoms and dots: no whitespace or quotes, which would break a
    /// Postfix table line.
    pub fn parse(s: &str, domain: &DnsName) -> Result<Self, Invalid> {
        let s_shown = shown(s);
        let Some((local, dom)) = s.rsplit_once('@') else {
            return Err(format!(
                "invalid recipient {s_shown}: expected local@{domain}"
            ));
        };
        let atom = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-.".contains(c);
        if local.is_empty()
            || local.len() > 64
            // A table line starting with '#' is a comment to Postfix.
            || local.starts_with('#')
            // `*@domain` is a wildcard to Exim's lsearch*@ (the backup
            // would accept every address), and an Exim backup refuses it.
            || local == "*"
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
            || !local.chars().all(atom)
        {
            return Err(format!(
                "invalid recipient {s_shown}: unsupported local part"
            ));
        }
        let dom = DnsName::parse(dom).map_err(|e| format!("invalid recipient {s_shown}: {e}"))?;
        if &dom != domain {
            return Err(format!(
                "recipient {s_shown} is not in domain {domain}: a backup only accepts its domain's addresses"
            ));
        }
        Ok(Recipient(format!("{local}@{dom}")))
    }
}

/// The longest string a fetchmail poll takes from the inventory.
pub const FETCHMAIL_WORD_MAX: usize = 255;

impl FetchmailWord {
    /// The one rule for a string in a fetchmail control file, with a
    /// one-line reason naming `what`. fetchmail's rc lexer takes anything
    /// between quotes once `"` and `\` are escaped (as
    /// [`crate::fetchmail`] writes them), so spaces, quotes, backslashes,
    /// `$` and `` ` `` are fine; what it cannot hold is an empty value,
    /// control characters (newlines) and non-ASCII (fetchmail sends these
    /// bytes to POP3/IMAP/SMTP peers as they are, and cannot even print
    /// them back).
    pub fn check(what: &str, value: &str) -> Result<(), Invalid> {
        if value.is_empty() {
            return Err(format!("{what} is empty"));
        }
        if let Some(c) = value.chars().find(|c| c.is_control()) {
            return Err(format!(
                "{what} \"{}\" contains the control character {c:?}",
                value.escape_debug()
            ));
        }
        if let Some(c) = value.chars().find(|c| !c.is_ascii()) {
            return Err(format!(
                "{what} \"{}\" contains the non-ASCII character {c:?}; fetchmail passes it on unencoded (write domain names in punycode)",
                value.escape_debug()
            ));
        }
        if value.len() > FETCHMAIL_WORD_MAX {
            return Err(format!(
                "{what} {} is longer than {FETCHMAIL_WORD_MAX} characters",
                shown(value)
            ));
        }
        Ok(())
    }

    /// A poll's remote login (`user "..."`).
    pub fn user(s: &str) -> Result<Self, Invalid> {
        Self::check("fetchmail user", s)?;
        Ok(FetchmailWord(s.to_string()))
    }

    /// A poll's local recipient (`is "..." here`): never `*`, which
    /// switches fetchmail to multidrop (any recipient).
    pub fn local(s: &str) -> Result<Self, Invalid> {
        Self::check("fetchmail local", s)?;
        if s == "*" {
            return Err("fetchmail local \"*\" would make the poll multidrop".into());
        }
        Ok(FetchmailWord(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert!(HostName::parse("home").is_ok());
        assert!(HostName::parse("backup-2_x").is_ok());
        for bad in ["", "-x", "a b", "a;rm", "a.b", "ä"] {
            assert!(HostName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_names_are_lowercased_and_checked() {
        assert_eq!(
            DnsName::parse("Home.Example.NET").unwrap().as_str(),
            "home.example.net"
        );
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a b",
            "a;b",
            "x.$(id)",
            &"a".repeat(64),
        ] {
            assert!(DnsName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ssh_destinations() {
        for good in [
            "home",
            "admin@relay.example.org",
            "root@10.0.0.1:2222",
            "[::1]:22",
        ] {
            assert!(SshDestination::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-oProxyCommand=x",
            "a b",
            "a@b@c",
            "host;id",
            "$(id)",
            "a@",
            "host:0",
            "host:99999",
            "host:",
            "::1",
            "[::1",
            "[::1]x",
            "u@-oProxyCommand",
        ] {
            assert!(SshDestination::parse(bad).is_err(), "{bad}");
        }
        let parts = |s: &str| {
            let d = SshDestination::parse(s).unwrap();
            (d.user().map(str::to_string), d.host().to_string(), d.port())
        };
        assert_eq!(parts("home"), (None, "home".into(), None));
        assert_eq!(
            parts("root@10.0.0.1:2222"),
            (Some("root".into()), "10.0.0.1".into(), Some(2222))
        );
        assert_eq!(parts("[::1]:22"), (None, "::1".into(), Some(22)));
        assert_eq!(parts("u@[::1]"), (Some("u".into()), "::1".into(), None));
    }

    #[test]
    fn remote_paths() {
        assert_eq!(
            RemotePath::parse("/etc/postfix/").unwrap().as_str(),
            "/etc/postfix"
        );
        assert_eq!(
            RemotePath::parse("/usr/local/etc/postfix")
                .unwrap()
                .join("main.cf"),
            "/usr/local/etc/postfix/main.cf"
        );
        for bad in [
            "etc/postfix",
            "/",
            "/etc/../x",
            "/etc//x",
            "/etc/post fix",
            "/etc/$x",
            "/a'b",
        ] {
            assert!(RemotePath::parse(bad).is_err(), "{bad}");
        }
        // Found by the property test: a 100,000-character path was accepted
        // and could not even be passed to sh.
        let component = format!("/{}", "x".repeat(255));
        assert!(RemotePath::parse(&component).is_ok());
        assert!(RemotePath::parse(&format!("{component}x")).is_err());
        assert!(RemotePath::parse(&component.repeat(4)).is_ok());
        assert!(RemotePath::parse(&format!("{}/x", component.repeat(4))).is_err());
    }

    #[test]
    fn recipients_belong_to_their_domain() {
        let d = DnsName::parse("example.net").unwrap();
        assert_eq!(
            Recipient::parse("First.Last@Example.net", &d)
                .unwrap()
                .as_str(),
            "First.Last@example.net"
        );
        for bad in [
            "first",
            "a@example.org",
            "a b@example.net",
            "\"x\"@example.net",
            ".a@example.net",
            "@example.net",
            "*@example.net",
        ] {
            assert!(Recipient::parse(bad, &d).is_err(), "{bad}");
        }
    }

    #[test]
    fn fetchmail_words_are_what_a_fetchmailrc_string_holds() {
        for v in [
            "jo",
            "jo@example.org",
            "a b",
            r#"q"uote"#,
            r"back\slash",
            "'",
            "$x `id`",
            "*",
        ] {
            FetchmailWord::check("user", v).unwrap();
            assert_eq!(FetchmailWord::user(v).unwrap().as_str(), v);
        }
        FetchmailWord::user(&"u".repeat(FETCHMAIL_WORD_MAX)).unwrap();
        for (v, why) in [
            ("", "is empty"),
            ("a\nb", "control character '\\n'"),
            ("a\rb", "control character '\\r'"),
            ("a\tb", "control character '\\t'"),
            ("a\0b", "control character '\\0'"),
            ("a\u{7f}", "control character '\\u{7f}'"),
            ("j\u{f6}rg", "non-ASCII"),
            (&"u".repeat(FETCHMAIL_WORD_MAX + 1), "longer than 255"),
        ] {
            let e = FetchmailWord::user(v).unwrap_err();
            assert!(e.starts_with("fetchmail user"), "{e}");
            assert!(e.contains(why), "{v:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
        assert!(FetchmailWord::local("*").unwrap_err().contains("multidrop"));
        assert!(FetchmailWord::local("")
            .unwrap_err()
            .contains("local is empty"));
        assert_eq!(
            FetchmailWord::local("first.last").unwrap().as_str(),
            "first.last"
        );
    }
}
