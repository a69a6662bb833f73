//! Tests of the exim4.conf editor: examples of every layout it meets, and
//! property tests that an edit changes only what it says and comes back.

use super::*;

const DIR: &str = "/etc/exim4/mxpin";
/// The base configuration of a lab relay (lab/lab.sh up ... --exim relay).
const LAB: &str = include_str!("../../../../tests/fixtures/exim/exim4.conf");
/// An admin's variant: continuation lines, TLS options, relay domains.
const ADMIN: &str = include_str!("../../../../tests/fixtures/exim/exim4-admin.conf");

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
    assert!(
        t.contains("ignore_bounce_errors_after = \\\n  2d\n.include /etc/exim4/mxpin/main.conf\n")
    );
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
    assert!(texts.contains(
        &"domainlist relay_to_domains = a.example : b.example : c.example : +mxpin_relay_domains"
            .to_string()
    ));
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
    let text =
        "begin acl\nr2:\n  accept\n  message = r:\nr:\n  accept\nbegin routers\nbegin transports\n";
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
    assert!(err("r:\nbegin routers\nbegin transports\n", "r").contains("RCPT ACL r is not defined"));
    // A name line in the main section or the routers does not count.
    assert!(err("begin acl\nbegin routers\nr:\nbegin transports\n", "r").contains("not defined"));
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
