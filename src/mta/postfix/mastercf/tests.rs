//! Tests of the master.cf services mxpin writes and gives back.

use super::*;

const DEBIAN: &str = "\
# Postfix master process configuration file.
smtp      inet  n       -       y       -       -       smtpd
#submission inet n       -       y       -       -       smtpd
pickup    unix  n       -       y       60      1       pickup
smtp      unix  -       -       y       -       -       smtp
relay     unix  -       -       y       -       -       smtp
        -o syslog_name=postfix/$service_name
#       -o smtp_helo_timeout=5 -o smtp_connect_timeout=5
showq     unix  n       -       y       -       -       showq
";

fn smtps(text: &str) -> Vec<Service> {
    vec![Service::smtps(&chroot_of(text, "smtp", "unix"))]
}

#[test]
fn adds_once_with_the_admins_chroot_and_removes_cleanly() {
    let added = edited(DEBIAN, &smtps(DEBIAN));
    assert!(added.starts_with(DEBIAN), "nothing else changes");
    assert!(added.ends_with(
            "# Managed by mxpin: SMTP over implicit TLS (port 465) to the relayhost.\n\
             mxpin-smtps unix  -       -       y       -       -       smtp\n  -o smtp_tls_wrappermode=yes\n"
        ));
    assert_eq!(edited(&added, &smtps(DEBIAN)), added, "idempotent");
    assert_eq!(edited(&added, &[]), DEBIAN);
    assert_eq!(edited(DEBIAN, &[]), DEBIAN);
}

#[test]
fn chroot_follows_the_smtp_client_and_a_changed_block_is_rewritten() {
    let no_chroot = DEBIAN.replace(
        "smtp      unix  -       -       y",
        "smtp      unix  -       -       n",
    );
    assert_eq!(chroot_of(&no_chroot, "smtp", "unix"), "n");
    assert_eq!(chroot_of("x unix - - y - - x\n", "smtp", "unix"), "-");
    let added = edited(&no_chroot, &smtps(&no_chroot));
    assert!(added.contains("mxpin-smtps unix  -       -       n "));
    // An admin edit inside the block (or a block in the middle) is
    // replaced in place, and what follows stays.
    let middle = DEBIAN.replacen(
        "showq",
        "mxpin-smtps unix - - y - - smtp\n  -o smtp_tls_wrappermode=no\nshowq",
        1,
    );
    let fixed = edited(&middle, &smtps(DEBIAN));
    assert!(
        fixed.contains("  -o smtp_tls_wrappermode=yes\nshowq"),
        "{fixed}"
    );
    assert!(!fixed.contains("wrappermode=no"));
    assert_eq!(edited(&middle, &[]), DEBIAN);
}

#[test]
fn missing_final_newline() {
    let text = "smtp unix - - n - - smtp";
    let out = edited(text, &smtps(""));
    assert!(out.starts_with("smtp unix - - n - - smtp\n# Managed by mxpin"));
    assert!(out.ends_with("-o smtp_tls_wrappermode=yes"), "{out:?}");
    assert_eq!(edited(&out, &smtps("")), out, "idempotent");
    // Found by the property test: the newline added before the block
    // stayed when the block went.
    assert_eq!(edited(&out, &[]), text);
}

/// Issue 17: lines mxpin writes into a CRLF file used LF.
#[test]
fn services_written_into_a_crlf_file_end_in_crlf() {
    let text = DEBIAN.replace('\n', "\r\n");
    let out = edited(&text, &smtps(&text));
    assert!(out.starts_with(&text));
    assert!(!out.replace("\r\n", "").contains('\n'), "{out:?}");
    assert_eq!(edited(&out, &smtps(&text)), out);
    assert_eq!(edited(&out, &[]), text);
}

#[test]
fn the_relay_pair_services_come_and_go_and_a_port_change_moves_the_listener() {
    let client = Service::relay_client("y", "/e/mxpin/current.key", "/e/mxpin/current.crt", true);
    let key = server_key("/e/mxpin/current.key", "/e/mxpin/current.crt", true);
    let listener =
        Service::relay_listener("y", 2525, "sha256", "hash:/e/mxpin/relay_clientcerts", &key);
    let both = edited(DEBIAN, &[client.clone(), listener.clone()]);
    assert!(both.starts_with(DEBIAN));
    assert!(both.contains(
        "mxpin-relay unix  -       -       y       -       -       smtp\n  \
             -o smtp_tls_chain_files=/e/mxpin/current.key,/e/mxpin/current.crt\n"
    ));
    assert!(both.contains(
        "2525      inet  n       -       y       -       -       smtpd\n  \
             -o syslog_name=postfix/mxpin-relay\n  \
             -o smtpd_tls_chain_files=/e/mxpin/current.key,/e/mxpin/current.crt\n"
    ));
    assert!(both.contains(
        "-o smtpd_relay_restrictions=check_ccert_access,hash:/e/mxpin/relay_clientcerts,\
             permit_tls_clientcerts,defer\n"
    ));
    assert_eq!(edited(&both, &[client.clone(), listener.clone()]), both);
    // Its own listener is not "another service" on the port.
    assert_eq!(port_taken(&both, 2525), None);
    assert!(listener_on(&both, 2525) && !listener_on(&both, 2626));
    assert!(!listener_on(DEBIAN, 25), "the admin's smtpd is not mxpin's");
    let moved =
        Service::relay_listener("y", 2626, "sha256", "hash:/e/mxpin/relay_clientcerts", &key);
    let after = edited(&both, &[client.clone(), moved]);
    assert!(!after.contains("2525      inet"));
    assert!(after.contains("2626      inet"));
    assert_eq!(after.matches("# Managed by mxpin").count(), 2);
    assert_eq!(edited(&after, &[]), DEBIAN, "the admin's bytes back");
    let old = Service::relay_client("y", "/k", "/c", false);
    assert!(old
        .block
        .contains("-o smtp_tls_cert_file=/c\n  -o smtp_tls_key_file=/k\n"));
}

#[test]
fn ports_the_admin_already_uses_are_found() {
    assert!(port_taken(DEBIAN, 25)
        .unwrap()
        .starts_with("smtp      inet"));
    assert_eq!(port_taken(DEBIAN, 587), None, "commented out");
    let text =
        format!("{DEBIAN}127.0.0.1:2525 inet n - n - - smtpd\nsubmission inet n - y - - smtpd\n");
    assert!(port_taken(&text, 2525)
        .unwrap()
        .starts_with("127.0.0.1:2525"));
    assert!(port_taken(&text, 587).unwrap().starts_with("submission"));
    assert_eq!(port_taken(&text, 2626), None);
}

/// Issue 16: the primary's smtp_port listener copies the admin's
/// port-25 smtpd and goes away leaving the admin's bytes.
#[test]
fn the_smtp_listener_copies_the_admins_smtpd_and_comes_and_goes() {
    let admin = DEBIAN.replace(
        "smtp      inet  n       -       y       -       -       smtpd\n",
        "smtp      inet  n       -       y       -       10      smtpd -v\n  \
             -o smtpd_helo_required=yes\n#  -o smtpd_sasl_auth_enable=yes\n  \
             -o syslog_name=postfix/inbound -o smtpd_milters=inet:localhost:11332\n",
    );
    let t = smtpd_template(&admin);
    assert_eq!(t.columns, "n       -       y       -       10");
    assert_eq!(
        t.options,
        [
            "-v",
            "-o smtpd_helo_required=yes",
            "-o smtpd_milters=inet:localhost:11332"
        ]
    );
    let added = edited(&admin, &[Service::smtp_listener(26, &t)]);
    assert!(added.starts_with(&admin), "nothing else changes");
    assert!(
        added.ends_with(
            "26      inet  n       -       y       -       10       smtpd\n  \
                 -o syslog_name=postfix/mxpin-smtp\n  -v\n  -o smtpd_helo_required=yes\n  \
                 -o smtpd_milters=inet:localhost:11332\n"
        ),
        "{added}"
    );
    assert!(smtp_listener_on(&added, 26) && !smtp_listener_on(&admin, 26));
    assert!(!listener_on(&added, 26), "not the relay listener");
    assert_eq!(port_taken(&added, 26), None, "mxpin's own");
    assert_eq!(edited(&added, &[Service::smtp_listener(26, &t)]), added);
    assert_eq!(edited(&added, &[]), admin, "the admin's bytes back");
    // A port change moves it.
    let moved = edited(&added, &[Service::smtp_listener(2526, &t)]);
    assert!(smtp_listener_on(&moved, 2526) && !smtp_listener_on(&moved, 26));
    assert_eq!(edited(&moved, &[]), admin);
}

#[test]
fn behind_postscreen_the_smtpd_pass_service_is_copied() {
    let admin = DEBIAN.replace(
        "smtp      inet  n       -       y       -       -       smtpd\n",
        "smtp      inet  n       -       y       -       1       postscreen\n\
             smtpd     pass  -       -       y       -       -       smtpd\n  \
             -o smtpd_tls_security_level=may\n",
    );
    let t = smtpd_template(&admin);
    assert_eq!(t.columns, "-       -       y       -       -");
    assert_eq!(t.options, ["-o smtpd_tls_security_level=may"]);
    // No smtpd at all: Postfix's defaults.
    let none = smtpd_template("pickup unix n - y 60 1 pickup\n");
    assert_eq!(none.columns, "n       -       -       -       -");
    assert!(none.options.is_empty());
}
