//! Facts parsing, from outputs of the real facts script captured on
//! Debian 12 (Postfix 3.7) and kept in `tests/fixtures/postfix/`.

use super::*;

#[test]
fn fresh_fixture_reads_as_a_stock_debian_12_postfix() {
    let f = fixture_facts(FRESH);
    assert_eq!(f.version, (3, 7));
    assert_eq!(f.version_text, "3.7.11");
    assert_eq!(f.db_type, "hash");
    assert!(!f.running);
    let main_cf = String::from_utf8(fixture(FRESH_MAIN_CF)).unwrap();
    assert_eq!(f.main_cf, main_cf, "main.cf is read byte for byte");
    assert!(f
        .main_cf
        .contains("smtpd_tls_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem\n"));
    assert!(f.files.is_empty());
    assert_eq!(
        f.fresh.keys().map(String::as_str).collect::<Vec<_>>(),
        sorted(&[
            "relay_clientcerts",
            TABLE_NAMES[0],
            TABLE_NAMES[1],
            TABLE_NAMES[2],
            TABLE_NAMES[3]
        ])
    );
    assert!(f.fresh.values().all(Vec::is_empty));
    let effective: BTreeMap<&str, &str> = f
        .effective
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        effective,
        BTreeMap::from([
            ("mail_version", "3.7.11"),
            ("default_database_type", "hash"),
            ("queue_directory", "/tmp/mxpin-fixture/fresh/spool"),
            ("relay_domains", ""),
            ("smtp_host_lookup", "dns"),
            ("relay_recipient_maps", ""),
            ("smtp_tls_loglevel", "0"),
            ("smtp_tls_policy_maps", ""),
            ("smtpd_tls_security_level", "may"),
            ("transport_maps", ""),
            ("relayhost", ""),
            ("default_transport", "smtp"),
            ("smtp_tls_security_level", "may"),
            ("smtpd_tls_chain_files", ""),
            (
                "smtpd_tls_cert_file",
                "/etc/ssl/certs/ssl-cert-snakeoil.pem"
            ),
            ("tls_server_sni_maps", ""),
        ])
    );
    assert!(
        f.served_certs["smtpd_tls_cert_file"].starts_with("-----BEGIN CERTIFICATE-----\n"),
        "the snakeoil certificate, and no key"
    );
    assert!(!f.served_certs.values().any(|c| c.contains("PRIVATE")));
    assert_eq!(
        f.admin_cert("/etc/postfix/mxpin"),
        None,
        "snakeoil is nobody's own"
    );
    let keys = f.stored_keys();
    assert!(keys.current.key.is_none() && keys.current.cert.is_none());
    assert!(keys.next.key.is_none() && keys.next.cert.is_none());
}

#[test]
fn applied_fixture_reads_keys_as_secrets_and_tables_as_fresh() {
    let dir = fixture_dir("relay");
    let f = fixture_facts(RELAY_APPLIED);
    assert_eq!(f.version, (3, 7));
    assert_eq!(
        f.files.keys().map(String::as_str).collect::<Vec<_>>(),
        sorted(&[
            "current.crt",
            "current.key",
            "main.cf.taken",
            "next.crt",
            "next.key",
            "relay_domains",
            "relay_recipients",
            "tls_policy",
            "transport",
        ])
    );
    for (name, file) in &f.files {
        let (secret, perms) = if name.ends_with(".key") {
            (true, "-rw------- 1 0 0 ")
        } else {
            (false, "-rw-r--r-- 1 0 0 ")
        };
        assert_eq!(file.content.is_secret(), secret, "{name}");
        assert!(file.ls.starts_with(perms), "{name}: {}", file.ls);
        assert!(file.ls.ends_with(&format!("/mxpin/{name}")), "{}", file.ls);
    }
    assert!(f.files["current.key"]
        .content
        .raw()
        .starts_with("-----BEGIN PRIVATE KEY-----\n"));
    for table in TABLE_NAMES {
        assert_eq!(f.fresh[table], ["db"], "{table}");
    }
    assert_eq!(
        f.effective["transport_maps"],
        format!("hash:{}", owned(&dir, "transport"))
    );
    assert_eq!(f.effective["smtp_tls_loglevel"], "1");
    assert!(f.main_cf.contains(&format!(
        "\nsmtpd_tls_chain_files = {0}/mxpin/current.key, {0}/mxpin/current.crt\n",
        dir
    )));

    // The stored slots hold matching key pairs for the relay's name.
    let keys = f.stored_keys();
    for slot in [&keys.current, &keys.next] {
        let cert = Certificate::from_pem(slot.cert.as_deref().unwrap()).unwrap();
        assert!(tls::key_matches(slot.key.as_ref().unwrap(), &cert).unwrap());
        assert_eq!(cert.dns_names(), ["relay.example.org"]);
    }

    // The relay pins exactly the keys found on home.
    let home = fixture_facts(HOME_APPLIED).stored_keys();
    let [current, next] = pins(&home);
    assert_eq!(
        table_entries(f.files["tls_policy"].content.raw()),
        pairs(&[(
            "[home.example.net]:25",
            &format!("fingerprint servername=mxpin.invalid match={current}|{next}")
        )])
    );
}

#[test]
fn facts_refuse_a_non_root_login() {
    let out = with_sections(&fixture(FRESH), &[("uid", "1000")]);
    assert_eq!(
        facts_from(&out).unwrap_err(),
        "connected as uid 1000, not root: set sudo = true for this host"
    );
    // What a non-root login really prints: its name, and read errors for
    // the root-only keys, which must not hide the cause.
    let out = with_sections(
        &fixture(FRESH),
        &[
            ("uid", "1001"),
            ("user", "mxpinlab"),
            (
                "error",
                "cannot read /etc/postfix/mxpin/current.key: Permission denied",
            ),
        ],
    );
    assert_eq!(
        facts_from(&out).unwrap_err(),
        "connected as mxpinlab (uid 1001), not root: set sudo = true for this host"
    );
}

#[test]
fn facts_surface_the_error_section() {
    // What the script prints on a host without Postfix.
    let out = frames(&[
        ("uid", "0"),
        ("error", "postconf not found: is Postfix installed?"),
    ]);
    assert_eq!(
        facts_from(&out).unwrap_err(),
        "postconf not found: is Postfix installed?"
    );
    // An error wins over otherwise complete facts (an unreadable file).
    let out = with_sections(
        &fixture(RELAY_APPLIED),
        &[("error", "cannot read /x/mxpin/next.key: Permission denied")],
    );
    assert_eq!(
        facts_from(&out).unwrap_err(),
        "cannot read /x/mxpin/next.key: Permission denied"
    );
}

#[test]
fn facts_missing_or_unreadable_sections_are_refused() {
    let fresh = fixture_frames(FRESH);
    let sections = frame_ends(&fresh);
    // Drop each section in turn: the ones a plan needs are refused by name.
    let mut start = 0;
    for (name, end) in &sections {
        let mut out = fresh[..start].to_vec();
        out.extend_from_slice(&fresh[*end..]);
        start = *end;
        let result = facts_from(&out);
        match name.as_str() {
            "warnings" => assert!(result.is_ok(), "warnings are informational"),
            "ls" => assert!(result.is_ok(), "the listing is read for modes only"),
            "master.cf" => assert!(result.unwrap().master_cf.is_none(), "optional"),
            n if n.starts_with("certs:") => {
                assert!(result.unwrap().served_certs[&n[6..]].is_empty(), "optional")
            }
            "uid" => assert_eq!(result.unwrap_err(), "no uid in facts"),
            "end" => {
                let e = result.unwrap_err();
                assert!(e.contains("facts are incomplete"), "{e}");
            }
            _ => assert_eq!(result.unwrap_err(), format!("facts lack {name}")),
        }
    }
    let out = with_sections(
        &fresh,
        &[(
            "effective",
            "mail_version = unknown\ndefault_database_type = hash",
        )],
    );
    assert_eq!(
        facts_from(&out).unwrap_err(),
        "cannot read Postfix version \"unknown\""
    );
}

#[test]
fn truncated_facts_are_rejected_by_the_framing() {
    for name in [FRESH, RELAY_APPLIED] {
        let out = fixture(name);
        let ends: BTreeSet<usize> = frame_ends(&out).into_iter().map(|(_, e)| e).collect();
        // Every cut inside a frame (the relay fixture: every 7th byte).
        let step = if name == FRESH { 1 } else { 7 };
        for cut in (1..out.len()).step_by(step).filter(|c| !ends.contains(c)) {
            assert!(
                facts::parse(&out[..cut]).is_err(),
                "{name} cut at byte {cut} was accepted"
            );
        }
    }
    // Noise before the frames (a login banner) is not facts either.
    let mut noisy = b"Welcome to home!\n".to_vec();
    noisy.extend(fixture(FRESH));
    assert!(facts::parse(&noisy).is_err());
}

/// A facts script killed part-way (connection lost, OOM, timeout) leaves
/// output that ends between two frames; `run_script` accepts a failed
/// command when it printed something. Such output must not read as a host
/// without keys, or plan would generate new keys over the existing ones.
#[test]
fn facts_cut_at_a_frame_boundary_are_rejected() {
    let out = fixture(RELAY_APPLIED);
    let ends = frame_ends(&out);
    for (name, end) in &ends[..ends.len() - 1] {
        let cut = &out[..*end];
        assert!(
            facts_from(cut).is_err(),
            "output cut after section {name} was accepted as facts with {:?}",
            facts_from(cut).unwrap().files.keys().collect::<Vec<_>>()
        );
    }
}

/// Every captured answer, cut at every byte, flipped, with a frame sent
/// twice or the frames reordered, is refused or reads the same
/// (`mta::garbled::check`).
#[test]
fn garbled_facts_are_never_read_as_a_host() {
    for name in [FRESH, HOME_APPLIED, RELAY_APPLIED] {
        crate::mta::garbled::check(&fixture(name), &facts_from, &|_| false);
    }
}

/// Found by the property test: a flipped section name (`file:next.kez`)
/// read as a host without that file, a frame sent twice silently took the
/// later copy, and frames after the end frame were read.
#[test]
fn garbled_section_names_repeats_and_trailing_frames_are_refused() {
    let out = fixture(RELAY_APPLIED);
    // In a frame of its own, or in the index of a bundle.
    let frames_renamed = String::from_utf8(fixture_frames(RELAY_APPLIED))
        .unwrap()
        .replace("@@mxpin file:next.key ", "@@mxpin file:next.kez ");
    let bundle_renamed = String::from_utf8(out.clone())
        .unwrap()
        .replace(" file:next.key\n", " file:next.kez\n");
    for renamed in [frames_renamed, bundle_renamed] {
        assert!(renamed.contains("file:next.kez"));
        assert_eq!(
            facts_from(renamed.as_bytes()).unwrap_err(),
            "facts hold a section \"file:next.kez\" that no facts script writes: the answer is garbled"
        );
    }
    let mut twice = out.clone();
    twice.extend(frames(&[("uid", "0")]));
    assert!(facts_from(&twice)
        .unwrap_err()
        .contains("after the end frame"));
    let twice = [frames(&[("uid", "0")]), out].concat();
    assert!(facts_from(&twice)
        .unwrap_err()
        .contains("section uid is given twice"));
}
