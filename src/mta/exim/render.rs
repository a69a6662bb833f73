//! The fragment files mxpin keeps in its own directory on an Exim host
//! (`DIR`, e.g. `/etc/exim4/mxpin`), rendered from the `exim/*.tera`
//! templates. The admin's exim4.conf includes the first four ([`super::conf`]);
//! the last two are lsearch files the fragments read:
//!
//! - `main.conf`: the backed-up domains (`mxpin_relay_domains`), and the
//!   host's TLS key and certificate;
//! - `acl_rcpt.conf`: the first statement of the RCPT ACL, refusing
//!   addresses of a backed-up domain that are not listed;
//! - `routers.conf`: the `mxpin_backup` router, backed-up domains to their
//!   primary only;
//! - `transports.conf`: the `mxpin_smtp` transport, TLS required, verified
//!   against `DIR/peer-MX.pem` and pinned by SHA-256 in `event_action`;
//! - `relay_recipients`: the listed addresses (`*@domain` = any);
//! - `pins`: `mx: SHA256 : SHA256` per primary.
//!
//! Every value is checked before it goes into a file Exim parses: the
//! templates are user-overridable, but what mxpin feeds them is not.

use crate::templates::Templates;

/// Mail for `domain` goes to `mx` (port `port`). One per backed-up domain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    pub domain: String,
    pub mx: String,
    pub port: u16,
}

/// A primary MX this host delivers to: the SHA-256 of the certificates it
/// may present (64 uppercase hex digits, no colons). One per distinct mx.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Peer {
    pub mx: String,
    pub cert_sha256: Vec<String>,
}

/// A domain this host accepts as a backup MX.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Relay {
    pub domain: String,
    /// `None`: any address of the domain.
    pub recipients: Option<Vec<String>>,
}

/// The rendered files, named after their file in `DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragments {
    pub main: String,
    pub acl_rcpt: String,
    pub routers: String,
    pub transports: String,
    pub relay_recipients: String,
    pub pins: String,
}

fn dns_name(what: &str, s: &str) -> Result<(), String> {
    crate::inventory::DnsName::parse(s)
        .map(|_| ())
        .map_err(|_| format!("{what} {s:?} is not a DNS name"))
}

/// DIR is used in `lsearch*@;DIR/...` inside an address list (no `:`), in
/// `lsearch{DIR/...}` (no braces) and in paths Exim expands (no `$`).
fn check_dir(dir: &str) -> Result<(), String> {
    let ok = dir.starts_with('/')
        && dir.len() > 1
        && !dir.ends_with('/')
        && dir
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
        && dir[1..]
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "mxpin's Exim directory {dir:?} is not an absolute path of letters, digits and ._-+"
        ))
    }
}

/// A line of relay_recipients: the whole line is the lsearch key, so no
/// white space, `:` (key terminator), `"` (quoting), `;`; a leading `#`
/// would make it a comment, a `*` local part a wildcard (lsearch*@).
fn check_recipient(domain: &str, a: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("recipient {a:?} of {domain}: {why}"));
    if a.is_empty()
        || a.chars()
            .any(|c| c.is_whitespace() || c.is_control() || ":;\"".contains(c))
    {
        return bad("empty, or white space, ':', ';' or '\"' in it");
    }
    let Some((local, dom)) = a.rsplit_once('@') else {
        return bad("no '@'");
    };
    if local.is_empty() || local.starts_with('#') || local == "*" {
        return bad("the local part is empty, '*' or starts with '#'");
    }
    if !dom.eq_ignore_ascii_case(domain) {
        return bad("not an address of that domain");
    }
    Ok(())
}

fn check_sha256(mx: &str, s: &str) -> Result<(), String> {
    if s.len() == 64
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
    {
        Ok(())
    } else {
        Err(format!(
            "pin {s:?} for {mx} is not a SHA-256 in 64 uppercase hex digits"
        ))
    }
}

fn check(dir: &str, routes: &[Route], peers: &[Peer], relays: &[Relay]) -> Result<(), String> {
    check_dir(dir)?;
    for (k, r) in relays.iter().enumerate() {
        dns_name("relay domain", &r.domain)?;
        if relays[..k].iter().any(|o| o.domain == r.domain) {
            return Err(format!("relay domain {} listed twice", r.domain));
        }
        for a in r.recipients.iter().flatten() {
            check_recipient(&r.domain, a)?;
        }
    }
    for (k, r) in routes.iter().enumerate() {
        dns_name("routed domain", &r.domain)?;
        dns_name(&format!("mx of {}", r.domain), &r.mx)?;
        if r.port == 0 {
            return Err(format!("route of {}: port 0", r.domain));
        }
        if routes[..k].iter().any(|o| o.domain == r.domain) {
            return Err(format!("routed domain {} listed twice", r.domain));
        }
        if !relays.iter().any(|x| x.domain == r.domain) {
            return Err(format!(
                "domain {} is routed but not relayed (its route would never be used)",
                r.domain
            ));
        }
        if !peers.iter().any(|p| p.mx == r.mx) {
            return Err(format!(
                "no pinned certificate for {}, the mx of {}",
                r.mx, r.domain
            ));
        }
    }
    if let Some(x) = relays
        .iter()
        .find(|x| !routes.iter().any(|r| r.domain == x.domain))
    {
        return Err(format!(
            "domain {} is relayed but has no route (Exim would find it unrouteable)",
            x.domain
        ));
    }
    for (k, p) in peers.iter().enumerate() {
        dns_name("peer mx", &p.mx)?;
        if peers[..k].iter().any(|o| o.mx == p.mx) {
            return Err(format!("peer {} listed twice", p.mx));
        }
        if p.cert_sha256.is_empty() {
            return Err(format!("no pinned certificate for {}", p.mx));
        }
        for s in &p.cert_sha256 {
            check_sha256(&p.mx, s)?;
        }
    }
    Ok(())
}

/// Renders mxpin's fragments for an Exim host whose fragment directory is
/// `dir`. From the admin's config ([`super::conf::edited`]):
/// `define_relay_to_domains` (it has no relay_to_domains list, so main.conf
/// defines it) and the admin's own certificate, which main.conf keeps
/// serving to everyone but mxpin's peers.
pub fn render(
    dir: &str,
    routes: &[Route],
    peers: &[Peer],
    relays: &[Relay],
    admin: &super::conf::Edited,
    t: &Templates,
) -> Result<Fragments, String> {
    check(dir, routes, peers, relays)?;
    let relay_domains: Vec<&str> = relays.iter().map(|r| r.domain.as_str()).collect();
    let mut ctx = tera::Context::new();
    ctx.insert("dir", dir);
    ctx.insert("relay_domains", &relay_domains);
    ctx.insert("define_relay_to_domains", &admin.define_relay_to_domains);
    ctx.insert("pin_server_name", crate::trust::PIN_SERVER_NAME);
    // Re-expanded by Exim once the client's SNI is known.
    let by_sni = |mine: &str, admins: &str| {
        format!(
            "${{if eq{{$tls_in_sni}}{{{}}}{{{dir}/{mine}}}{{{admins}}}}}",
            crate::trust::PIN_SERVER_NAME
        )
    };
    let (cert, key) = match &admin.admin_cert {
        Some((cert, key)) => (by_sni("current.crt", cert), by_sni("current.key", key)),
        None => (format!("{dir}/current.crt"), format!("{dir}/current.key")),
    };
    ctx.insert("admin_certificate", &admin.admin_cert.is_some());
    ctx.insert("daemon_smtp_ports", &admin.daemon_smtp_ports);
    ctx.insert("tls_certificate", &cert);
    ctx.insert("tls_privatekey", &key);
    ctx.insert("routes", routes);
    ctx.insert("peers", peers);
    ctx.insert("relays", relays);
    let r = |name: &str| {
        t.render(&format!("exim/{name}.tera"), &ctx)
            .map_err(|e| e.to_string())
    };
    Ok(Fragments {
        main: r("main.conf")?,
        acl_rcpt: r("acl_rcpt.conf")?,
        routers: r("routers.conf")?,
        transports: r("transports.conf")?,
        relay_recipients: r("relay_recipients")?,
        pins: r("pins")?,
    })
}

/// main.conf for Debian's generated configuration: the same domain list,
/// and Debian's macros (MAIN_TLS_*, CHECK_RCPT_LOCAL_ACL_FILE) instead of
/// options, which Debian's conf.d sets from them.
pub fn render_debian_main(dir: &str, relays: &[Relay], t: &Templates) -> Result<String, String> {
    check(dir, &[], &[], &[])?;
    let relay_domains: Vec<&str> = relays.iter().map(|r| r.domain.as_str()).collect();
    let mut ctx = tera::Context::new();
    ctx.insert("dir", dir);
    ctx.insert("relay_domains", &relay_domains);
    t.render("exim/debian-main.conf.tera", &ctx)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edited(define_relay_to_domains: bool) -> crate::mta::exim::conf::Edited {
        crate::mta::exim::conf::Edited {
            text: String::new(),
            define_relay_to_domains,
            admin_cert: None,
            daemon_smtp_ports: None,
        }
    }

    const DIR: &str = "/etc/exim4/mxpin";
    const SHA1: &str = "B3EE0C5F39C8D51632622E23FEF005FCEC7CD8BFD81E2039314FD64EF0DB67AD";
    const SHA2: &str = "221E4A3DA94EEABA463A50CF91ED9BF78E3A89FB3757173FA543799AC363EBE3";

    fn templates() -> Templates {
        Templates::load(None).unwrap()
    }

    /// Two backed-up domains, one with listed recipients, one open, two
    /// primaries.
    fn backup() -> (Vec<Route>, Vec<Peer>, Vec<Relay>) {
        let routes = vec![
            Route {
                domain: "example.net".into(),
                mx: "home.example.net".into(),
                port: 25,
            },
            Route {
                domain: "example.com".into(),
                mx: "mail.example.com".into(),
                port: 2525,
            },
        ];
        let peers = vec![
            Peer {
                mx: "home.example.net".into(),
                cert_sha256: vec![SHA1.into(), SHA2.into()],
            },
            Peer {
                mx: "mail.example.com".into(),
                cert_sha256: vec![SHA2.into()],
            },
        ];
        let relays = vec![
            Relay {
                domain: "example.net".into(),
                recipients: Some(vec![
                    "first.last@example.net".into(),
                    "b@example.net".into(),
                ]),
            },
            Relay {
                domain: "example.com".into(),
                recipients: None,
            },
        ];
        (routes, peers, relays)
    }

    /// The lines of `text` that are not comments.
    fn body(text: &str) -> String {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn backup_fragments_say_what_exim_md_verified() {
        let (routes, peers, relays) = backup();
        let f = render(DIR, &routes, &peers, &relays, &edited(false), &templates()).unwrap();
        for text in [
            &f.main,
            &f.acl_rcpt,
            &f.routers,
            &f.transports,
            &f.relay_recipients,
            &f.pins,
        ] {
            assert!(text.starts_with("# Managed by mxpin"), "{text}");
            assert!(text.contains("overwritten by `mxpin apply`"), "{text}");
            assert!(text.ends_with('\n'));
        }
        assert_eq!(
            body(&f.main),
            "domainlist mxpin_relay_domains = example.net : example.com\n\
             tls_advertise_hosts = *\n\
             tls_certificate = /etc/exim4/mxpin/current.crt\n\
             tls_privatekey = /etc/exim4/mxpin/current.key\n"
        );
        assert_eq!(
            body(&f.acl_rcpt),
            "  deny    domains = +mxpin_relay_domains\n\
             \x20         !recipients = lsearch*@;/etc/exim4/mxpin/relay_recipients\n\
             \x20         message = 5.1.1 <$local_part@$domain>: unknown user (not a listed recipient of this backup MX)\n"
        );
        assert_eq!(
            body(&f.routers),
            "mxpin_backup:\n\
             \x20 driver = manualroute\n\
             \x20 domains = +mxpin_relay_domains\n\
             \x20 route_list = example.net home.example.net::25 byname ; example.com mail.example.com::2525 byname\n\
             \x20 transport = mxpin_smtp\n\
             \x20 no_more\n"
        );
        assert_eq!(
            body(&f.transports),
            r"mxpin_smtp:
  driver = smtp
  hosts_require_tls = *
  connection_max_messages = 1
  tls_verify_hosts = *
  tls_verify_certificates = /etc/exim4/mxpin/peer-$host.pem
  tls_verify_cert_hostnames =
  tls_sni = mxpin.invalid
  event_action = ${if and{{eq{$event_name}{tls:cert}}{eq{$event_data}{0}}} \
    {${if inlist{${sha256:$tls_out_peercert}}{${lookup{$host}lsearch{/etc/exim4/mxpin/pins}}} \
      {}{certificate not pinned}}} \
    {}}
"
        );
        assert_eq!(
            body(&f.relay_recipients),
            "first.last@example.net\nb@example.net\n*@example.com\n"
        );
        assert_eq!(
            body(&f.pins),
            format!("home.example.net: {SHA1} : {SHA2}\nmail.example.com: {SHA2}\n")
        );
    }

    #[test]
    fn relay_to_domains_is_defined_only_when_asked() {
        let (routes, peers, relays) = backup();
        let f = render(DIR, &routes, &peers, &relays, &edited(true), &templates()).unwrap();
        assert!(body(&f.main).starts_with(
            "domainlist mxpin_relay_domains = example.net : example.com\n\
             domainlist relay_to_domains = +mxpin_relay_domains\ntls_advertise_hosts = *\n"
        ));
    }

    #[test]
    fn no_backup_leaves_comments_and_an_empty_list() {
        let f = render(DIR, &[], &[], &[], &edited(true), &templates()).unwrap();
        assert_eq!(
            body(&f.main),
            "domainlist mxpin_relay_domains =\n\
             domainlist relay_to_domains = +mxpin_relay_domains\n\
             tls_advertise_hosts = *\n\
             tls_certificate = /etc/exim4/mxpin/current.crt\n\
             tls_privatekey = /etc/exim4/mxpin/current.key\n"
        );
        for text in [
            &f.acl_rcpt,
            &f.routers,
            &f.transports,
            &f.relay_recipients,
            &f.pins,
        ] {
            assert_eq!(body(text), "", "{text}");
            assert!(text.starts_with("# Managed by mxpin"));
        }
    }

    #[test]
    fn bad_inputs_are_refused_with_one_line() {
        let t = templates();
        let (routes, peers, relays) = backup();
        let err = |dir: &str, routes: &[Route], peers: &[Peer], relays: &[Relay]| {
            let e = render(dir, routes, peers, relays, &edited(false), &t).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
            e
        };
        for dir in [
            "", "relative", "/a:b", "/a/", "/a/../b", "/a b", "/${x}", "/",
        ] {
            assert!(
                err(dir, &routes, &peers, &relays).contains("directory"),
                "{dir:?}"
            );
        }
        let mut r = routes.clone();
        r[0].mx = "home.example.net byname ; x".into();
        assert!(err(DIR, &r, &peers, &relays).contains("not a DNS name"));
        let mut r = routes.clone();
        r[1].domain = "example.com:x".into();
        assert!(err(DIR, &r, &peers, &relays).contains("not a DNS name"));
        let mut r = routes.clone();
        r[0].port = 0;
        assert!(err(DIR, &r, &peers, &relays).contains("port 0"));
        let mut r = routes.clone();
        r[1] = r[0].clone();
        assert!(err(DIR, &r, &peers, &relays).contains("listed twice"));
        assert!(err(DIR, &routes[..1], &peers, &relays)
            .contains("example.com is relayed but has no route"));
        assert!(err(DIR, &routes, &peers, &relays[..1])
            .contains("example.com is routed but not relayed"));
        assert!(err(DIR, &routes, &peers[..1], &relays)
            .contains("no pinned certificate for mail.example.com"));
        for bad in [
            "a b@example.net",
            "a:b@example.net",
            "a;b@example.net",
            "a\n@example.net",
            "\"a\"@example.net",
            "#a@example.net",
            "*@example.net",
            "a@example.org",
            "example.net",
            "",
        ] {
            let mut x = relays.clone();
            x[0].recipients = Some(vec![bad.into()]);
            assert!(
                err(DIR, &routes, &peers, &x).starts_with("recipient "),
                "{bad:?}"
            );
        }
        for bad in ["", &SHA1.to_lowercase(), &SHA1[1..], "B3:EE"] {
            let mut p = peers.clone();
            p[0].cert_sha256 = vec![bad.to_string()];
            assert!(
                err(DIR, &routes, &p, &relays).contains("not a SHA-256"),
                "{bad:?}"
            );
        }
        let mut p = peers.clone();
        p[0].cert_sha256.clear();
        assert!(err(DIR, &routes, &p, &relays).contains("no pinned certificate"));
    }
}
