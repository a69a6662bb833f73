//! Tests of reading a Postfix primary's recipients, from captured facts
//! and from the facts script run against stub Postfix tools.

use super::*;
use crate::inventory::Recipient;

fn frames(parts: &[(&str, &str)]) -> Sections {
    crate::facts::parse(&crate::facts::frames(parts)).unwrap()
}

fn only(list: &[&str]) -> Accepts {
    let d = DnsName::parse(list[0].rsplit_once('@').unwrap().1).unwrap();
    Accepts::Only(
        list.iter()
            .map(|a| Recipient::parse(a, &d).unwrap())
            .collect(),
    )
}

/// `postconf -x` of a Debian 12 Postfix with one virtual mailbox domain
/// in a hash table (captured from the lab's home).
const LAB_PARAMS: &str = "mydestination = home.example.net, localhost.example.net, localhost
virtual_alias_domains =
virtual_mailbox_domains = example.net
relay_domains =
virtual_alias_maps =
virtual_mailbox_maps = hash:/etc/postfix/vmailbox
local_recipient_maps = proxy:unix:passwd.byname hash:/etc/aliases
alias_maps = hash:/etc/aliases";

/// `postmap -s hash:/etc/postfix/vmailbox` (hash order).
const VMAILBOX: &str = "second@example.net\tsecond/\nfirst.last@example.net\tfirst.last/";

/// `postmap -s hash:/etc/aliases` of Debian's /etc/aliases, with the
/// keys postalias adds.
const ALIASES: &str =
    "@\t@\nYP_LAST_MODIFIED\t1796137540\nYP_MASTER_NAME\taliases\npostmaster\troot";

fn lab(domains: &str) -> Sections {
    frames(&[
        ("rcpt-domains", domains),
        ("rcpt-params", LAB_PARAMS),
        ("rcpt-map:hash:/etc/postfix/vmailbox", VMAILBOX),
        (
            "rcpt-map:proxy:unix:passwd.byname",
            "root\ndaemon\nmxpinlab",
        ),
        ("rcpt-map:hash:/etc/aliases", ALIASES),
    ])
}

#[test]
fn a_virtual_mailbox_domain_is_its_mailbox_keys() {
    let r = from_sections(&lab("example.net"));
    assert_eq!(
        r["example.net"],
        Ok(only(&["first.last@example.net", "second@example.net"]))
    );
}

#[test]
fn a_local_domain_is_the_passwd_users_and_the_aliases() {
    let r = from_sections(&lab("home.example.net"));
    assert_eq!(
        r["home.example.net"],
        Ok(only(&[
            "daemon@home.example.net",
            "mxpinlab@home.example.net",
            "postmaster@home.example.net",
            "root@home.example.net"
        ]))
    );
}

#[test]
fn a_catch_all_stays_a_catch_all() {
    let s = frames(&[
        ("rcpt-domains", "example.net"),
        (
            "rcpt-params",
            &LAB_PARAMS.replace(
                "virtual_alias_maps =",
                "virtual_alias_maps = texthash:/etc/postfix/virtual",
            ),
        ),
        ("rcpt-map:hash:/etc/postfix/vmailbox", VMAILBOX),
        (
            "rcpt-map:texthash:/etc/postfix/virtual",
            "@example.net\tfirst.last@example.net\n@other.example\tx",
        ),
    ]);
    assert_eq!(from_sections(&s)["example.net"], Ok(Accepts::Any));
}

#[test]
fn an_ldap_map_is_refused_naming_parameter_and_map() {
    let s = frames(&[
        ("rcpt-domains", "example.net"),
        (
            "rcpt-params",
            &LAB_PARAMS.replace(
                "hash:/etc/postfix/vmailbox",
                "ldap:/etc/postfix/ldap-users.cf",
            ),
        ),
    ]);
    assert_eq!(
        from_sections(&s)["example.net"],
        Err(
            "virtual_mailbox_maps uses \"ldap:/etc/postfix/ldap-users.cf\", which cannot be listed"
                .into()
        )
    );
    for map in [
        "mysql:/m.cf",
        "pgsql:/p.cf",
        "regexp:/r",
        "pcre:/p",
        "proxy:ldap:/l.cf",
        "tcp:localhost:1",
        "socketmap:inet:localhost:1:x",
        "inline:{a@example.net=x}",
    ] {
        let s = frames(&[
            ("rcpt-domains", "example.net"),
            (
                "rcpt-params",
                &LAB_PARAMS.replace("hash:/etc/postfix/vmailbox", map),
            ),
        ]);
        let e = from_sections(&s)["example.net"].clone().unwrap_err();
        assert!(e.contains(map) && e.contains("cannot be listed"), "{e}");
    }
}

#[test]
fn an_unlistable_map_of_another_class_does_not_matter() {
    // The local domain's tables are listable; virtual_mailbox_maps is
    // not used for it.
    let s = frames(&[
        ("rcpt-domains", "home.example.net"),
        (
            "rcpt-params",
            &LAB_PARAMS.replace("hash:/etc/postfix/vmailbox", "ldap:/l.cf"),
        ),
        ("rcpt-map:proxy:unix:passwd.byname", "root"),
        ("rcpt-map:hash:/etc/aliases", ALIASES),
    ]);
    assert!(from_sections(&s)["home.example.net"].is_ok());
}

#[test]
fn a_table_postmap_cannot_read_is_refused_with_its_error() {
    let s = frames(&[
        ("rcpt-domains", "example.net"),
        ("rcpt-params", LAB_PARAMS),
        (
            "rcpt-err:hash:/etc/postfix/vmailbox",
            "postmap: fatal: open database /etc/postfix/vmailbox.db: No such file or directory",
        ),
    ]);
    assert_eq!(
        from_sections(&s)["example.net"],
        Err(
            "virtual_mailbox_maps: cannot list hash:/etc/postfix/vmailbox: postmap: fatal: \
                 open database /etc/postfix/vmailbox.db: No such file or directory"
                .into()
        )
    );
}

#[test]
fn domains_in_tables_and_files_are_found_by_lookup() {
    let params = LAB_PARAMS
        .replace(
            "virtual_mailbox_domains = example.net",
            "virtual_mailbox_domains = /etc/postfix/vdomains, hash:/etc/postfix/vmailbox",
        )
        .replace(
            "virtual_alias_domains =",
            "virtual_alias_domains = hash:/etc/postfix/valias_domains",
        );
    let base = [
        ("rcpt-domains", "example.net"),
        ("rcpt-params", params.as_str()),
        ("rcpt-map:hash:/etc/postfix/vmailbox", VMAILBOX),
        ("rcpt-q:example.net:hash:/etc/postfix/valias_domains", "1 "),
    ];
    // In the file: a virtual mailbox domain.
    let mut s = base.to_vec();
    s.push((
        "rcpt-file:/etc/postfix/vdomains",
        "# mine\nother.example\n example.net\n",
    ));
    s.push(("rcpt-q:example.net:hash:/etc/postfix/vmailbox", "1 "));
    assert!(matches!(
        from_sections(&frames(&s))["example.net"],
        Ok(Accepts::Only(_))
    ));
    // In neither: refused.
    let mut s = base.to_vec();
    s.push(("rcpt-file:/etc/postfix/vdomains", "other.example\n"));
    s.push(("rcpt-q:example.net:hash:/etc/postfix/vmailbox", "1 "));
    let e = from_sections(&frames(&s))["example.net"]
        .clone()
        .unwrap_err();
    assert!(e.contains("does not accept mail for the domain"), "{e}");
    // Found by `postmap -q` in the table.
    let mut s = base.to_vec();
    s.push(("rcpt-file:/etc/postfix/vdomains", ""));
    s.push(("rcpt-q:example.net:hash:/etc/postfix/vmailbox", "0 "));
    assert!(from_sections(&frames(&s))["example.net"].is_ok());
    // A lookup that fails is not a "no".
    let mut s = base.to_vec();
    s.push(("rcpt-file:/etc/postfix/vdomains", ""));
    s.push((
        "rcpt-q:example.net:hash:/etc/postfix/vmailbox",
        "1 postmap: fatal: open database /etc/postfix/vmailbox.db: Permission denied",
    ));
    let e = from_sections(&frames(&s))["example.net"]
        .clone()
        .unwrap_err();
    assert!(
        e.contains("cannot look up example.net in hash:/etc/postfix/vmailbox"),
        "{e}"
    );
}

#[test]
fn a_relay_domain_is_refused() {
    let s = frames(&[
        ("rcpt-domains", "example.net"),
        (
            "rcpt-params",
            &LAB_PARAMS
                .replace(
                    "virtual_mailbox_domains = example.net",
                    "virtual_mailbox_domains =",
                )
                .replace("relay_domains =", "relay_domains = example.net"),
        ),
    ]);
    let e = from_sections(&s)["example.net"].clone().unwrap_err();
    assert!(e.contains("relay_domains"), "{e}");
}

/// The recipient sections of the real facts of the lab's home, with
/// its vmailbox in a hash table (tests/fixtures/recipients).
#[test]
fn captured_facts_of_the_lab_home() {
    let out = include_bytes!("../../../../tests/fixtures/recipients/postfix-home.facts");
    let r = from_sections(&crate::facts::parse(out).unwrap());
    assert_eq!(
        r["example.net"],
        Ok(only(&["first.last@example.net", "second@example.net"]))
    );
    let Ok(Accepts::Only(local)) = &r["home.example.net"] else {
        panic!("{r:?}")
    };
    let local: Vec<&str> = local.iter().map(|a| a.as_str()).collect();
    for a in ["root@", "mxpinlab@", "postmaster@", "nobody@"] {
        assert!(
            local.contains(&format!("{a}home.example.net").as_str()),
            "{local:?}"
        );
    }
    assert!(
        local
            .iter()
            .all(|a| !a.starts_with("yp_") && !a.starts_with('@')),
        "{local:?}"
    );
}

#[test]
fn no_domains_asked_none_read() {
    assert!(from_sections(&frames(&[("uid", "0")])).is_empty());
}

/// The script itself, run by a real /bin/sh against a fake postconf,
/// postmap and getent, writes the sections the parser reads.
#[test]
fn script_round_trip_with_fake_tools() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let tool = |name: &str, body: &str| {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    tool("postconf", &format!("cat <<'EOF'\n{LAB_PARAMS}\nEOF"));
    tool(
        "postmap",
        r#"case "$3 $4" in
  "-s hash:/etc/postfix/vmailbox") printf 'second@example.net\tsecond/\nfirst.last@example.net\tfirst.last/\n' ;;
  "-s hash:/etc/aliases") printf '@\t@\npostmaster\troot\n' ;;
  *) exit 1 ;;
esac"#,
    );
    tool(
        "getent",
        "printf 'root:x:0:0::/root:/bin/sh\\nalice:x:1000:1000::/home/alice:/bin/sh\\n'",
    );
    let inv = crate::inventory::parse(
        std::path::Path::new("t.toml"),
        r#"
[hosts.home]
ssh = "home"
mx = "home.example.net"
[hosts.relay]
ssh = "relay"
mx = "relay.example.org"
[domains."example.net"]
primary = "home"
backups = ["relay"]
recipients = "primary"
[domains."home.example.net"]
primary = "home"
backups = ["relay"]
recipients = "primary"
"#,
    )
    .unwrap();
    let home = inv
        .hosts
        .iter()
        .find(|h| h.name.as_str() == "home")
        .unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "LC_ALL=C; export LC_ALL\nPATH={}:$PATH\n{}C=/etc/postfix\n{}",
            bin.display(),
            crate::facts::SHELL_HELPERS,
            script(home)
        ))
        .output()
        .unwrap();
    let s = crate::facts::parse(&out.stdout).unwrap();
    assert!(
        s.names().all(known_section),
        "{:?}",
        s.names().collect::<Vec<_>>()
    );
    let r = from_sections(&s);
    assert_eq!(
        r["example.net"],
        Ok(only(&["first.last@example.net", "second@example.net"]))
    );
    assert_eq!(
        r["home.example.net"],
        Ok(only(&[
            "alice@home.example.net",
            "postmaster@home.example.net",
            "root@home.example.net"
        ]))
    );
}
