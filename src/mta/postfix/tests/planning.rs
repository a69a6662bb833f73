//! Planning (pure), from the fixtures' facts or from facts changed field
//! by field.

use super::*;

#[test]
fn fresh_host_gets_keys_and_exactly_one_main_cf_line() {
    let inv = inventory(DIR, true);
    let f = fixture_facts(FRESH);
    let plan = plan_for(&inv, "home", &f, &new_keys("relay.example.org"));

    expect_changes(
        &plan,
        &[
            (owned(DIR, "current.key"), Action::Create, 0o600, true),
            (owned(DIR, "current.crt"), Action::Create, 0o644, false),
            (owned(DIR, "next.key"), Action::Create, 0o600, true),
            (owned(DIR, "next.crt"), Action::Create, 0o644, false),
            (format!("{DIR}/main.cf"), Action::Modify, 0o644, false),
            (owned(DIR, "main.cf.taken"), Action::Create, 0o644, false),
        ],
    );
    // What mxpin took from main.cf is recorded, to be given back.
    let record = change(&plan, &owned(DIR, "main.cf.taken"));
    assert!(record
        .new
        .as_ref()
        .unwrap()
        .raw()
        .contains("@@ smtpd_tls_chain_files\n@base \n@wrote /etc/postfix/mxpin/current.key, /etc/postfix/mxpin/current.crt\n"));
    // Each slot holds a fresh key and a certificate for it naming the mx.
    let mut spkis = Vec::new();
    for slot in ["current", "next"] {
        let key = change(&plan, &owned(DIR, &format!("{slot}.key")));
        let Some(Content::Secret(key)) = &key.new else {
            panic!("{slot}.key is not a secret")
        };
        let crt = change(&plan, &owned(DIR, &format!("{slot}.crt")));
        let cert = Certificate::from_pem(crt.new.as_ref().unwrap().raw()).unwrap();
        assert!(tls::key_matches(key, &cert).unwrap(), "{slot}");
        assert_eq!(cert.dns_names(), ["home.example.net"]);
        spkis.push(cert.spki_der().to_vec());
    }
    assert_ne!(spkis[0], spkis[1], "current and next are different keys");

    // main.cf: one appended line, Debian's snakeoil lines emptied in
    // place (smtpd would warn that they are ignored), every other byte
    // unchanged.
    let line = format!("smtpd_tls_chain_files = {DIR}/mxpin/current.key, {DIR}/mxpin/current.crt");
    let mut added = vec![line.clone()];
    added.extend(SNAKEOIL_EMPTIED.map(String::from));
    added.sort();
    assert_eq!(
        main_cf_diff(&plan),
        (SNAKEOIL_LINES.map(String::from).to_vec(), added)
    );
    let (old, new) = main_cf_change(&plan).unwrap();
    assert_eq!(old, f.main_cf);
    let mut emptied = old.clone();
    for (admin, mxpin) in SNAKEOIL_LINES.iter().zip(SNAKEOIL_EMPTIED) {
        emptied = emptied.replace(&format!("{admin}\n"), &format!("{mxpin}\n"));
    }
    assert_eq!(new, format!("{emptied}{line}\n"));
    assert!(record.new.as_ref().unwrap().raw().contains(&format!(
        "@@ smtpd_tls_cert_file\n@base /etc/ssl/certs/ssl-cert-snakeoil.pem\n@wrote \n{}\n",
        SNAKEOIL_LINES[0]
    )));

    assert!(plan.switches_key);
    assert!(plan.pinned.is_empty());
    assert!(plan.steps.postfix().postmap.is_empty() && plan.steps.postfix().lookups.is_empty());
    assert_eq!(plan.steps.postfix().main_cf_before, f.main_cf);
    assert_eq!(plan.commands, [format!("postfix -c {DIR} check")]);
    assert!(plan.notes.iter().any(|n| n.contains("not running")));

    // A running Postfix is reloaded.
    let mut running = f.clone();
    running.running = true;
    let plan = plan_for(&inv, "home", &running, &new_keys("relay.example.org"));
    assert_eq!(
        plan.commands,
        [
            format!("postfix -c {DIR} check"),
            format!("postfix -c {DIR} reload")
        ]
    );
    assert!(plan.steps.postfix().running);
}

#[test]
fn backup_host_gets_tables_pins_and_list_parameters() {
    let inv = inventory_with(DIR, DIR, 2526, "relay.example.org", true);
    let home = new_keys("home.example.net");
    let [current, next] = pins(&home);
    let f = fixture_facts(FRESH);
    let plan = plan_for(&inv, "relay", &f, &home);

    let mut expected = vec![
        (owned(DIR, "current.key"), Action::Create, 0o600, true),
        (owned(DIR, "current.crt"), Action::Create, 0o644, false),
        (owned(DIR, "next.key"), Action::Create, 0o600, true),
        (owned(DIR, "next.crt"), Action::Create, 0o644, false),
        (format!("{DIR}/main.cf"), Action::Modify, 0o644, false),
        (owned(DIR, "main.cf.taken"), Action::Create, 0o644, false),
    ];
    for t in TABLE_NAMES {
        expected.push((owned(DIR, t), Action::Create, 0o644, false));
    }
    expect_changes(&plan, &expected);

    let hop = "[home.example.net]:2526";
    let transport = table_of(&plan, DIR, "transport");
    assert_eq!(
        transport,
        pairs(&[
            ("example.com", &format!("smtp:{hop}")),
            ("example.net", &format!("smtp:{hop}")),
        ])
    );
    let policy = table_of(&plan, DIR, "tls_policy");
    let want_policy = format!("fingerprint servername=mxpin.invalid match={current}|{next}");
    assert_eq!(
        policy,
        pairs(&[(hop, &want_policy)]),
        "one policy per next-hop"
    );
    // Postfix only applies a policy whose key is the transport's next-hop.
    for (_, t) in &transport {
        assert_eq!(t.strip_prefix("smtp:"), Some(policy[0].0.as_str()));
    }
    assert_eq!(
        table_of(&plan, DIR, "relay_domains"),
        pairs(&[("example.com", "OK"), ("example.net", "OK")])
    );
    assert_eq!(
        table_of(&plan, DIR, "relay_recipients"),
        pairs(&[
            ("@example.com", "OK"),
            ("first.last@example.net", "OK"),
            ("postmaster@example.net", "OK"),
        ])
    );

    let (removed, added) = main_cf_diff(&plan);
    assert_eq!(removed, SNAKEOIL_LINES, "{removed:?}");
    assert_eq!(
        added,
        sorted(&[
            SNAKEOIL_EMPTIED[0],
            SNAKEOIL_EMPTIED[1],
            &format!("smtpd_tls_chain_files = {DIR}/mxpin/current.key, {DIR}/mxpin/current.crt"),
            &format!("transport_maps = hash:{DIR}/mxpin/transport"),
            &format!("smtp_tls_policy_maps = hash:{DIR}/mxpin/tls_policy"),
            &format!("relay_domains = hash:{DIR}/mxpin/relay_domains"),
            &format!("relay_recipient_maps = hash:{DIR}/mxpin/relay_recipients"),
            "smtp_tls_fingerprint_digest = sha256",
            "smtp_tls_loglevel = 1",
        ])
    );

    let mut lookups = plan.steps.postfix().lookups.clone();
    lookups.sort_by(|a, b| (&a.table, &a.key).cmp(&(&b.table, &b.key)));
    let lookup = |table: &str, key: &str, expected: &str| Lookup {
        table: table.into(),
        key: key.into(),
        expected: expected.into(),
        wrapper: false,
    };
    assert_eq!(
        lookups,
        [
            lookup("tls_policy", hop, &want_policy),
            lookup("transport", "example.com", &format!("smtp:{hop}")),
            lookup("transport", "example.net", &format!("smtp:{hop}")),
        ]
    );
    let postmap: BTreeSet<String> = plan.steps.postfix().postmap.iter().cloned().collect();
    let tables: BTreeSet<String> = TABLE_NAMES.iter().map(|t| owned(DIR, t)).collect();
    assert_eq!(postmap, tables);
    for t in TABLE_NAMES {
        let cmd = format!("postmap -c {DIR} hash:{DIR}/mxpin/{t}");
        assert!(plan.commands.contains(&cmd), "{cmd} in {:?}", plan.commands);
    }
    assert_eq!(plan.pinned.len(), 1);
    assert_eq!(plan.pinned[0].pinned.as_str(), "home");
    assert!(plan.switches_key);
}

#[test]
fn tls_loglevel_is_raised_from_zero_and_never_lowered() {
    let inv = inventory(DIR, true);
    let home = new_keys("home.example.net");
    let fresh = fixture_facts(FRESH);
    let loglevel_lines = |f: &PostfixFacts, target: &str| {
        let (removed, added) = main_cf_diff(&plan_for(&inv, target, f, &home));
        let only = |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .filter(|l| l.starts_with("smtp_tls_loglevel"))
                .collect()
        };
        (only(removed), only(added))
    };
    let raised = vec!["smtp_tls_loglevel = 1".to_string()];

    // Unset in main.cf, default 0.
    assert_eq!(loglevel_lines(&fresh, "relay"), (vec![], raised.clone()));
    // Unset and unknown to postconf.
    let mut f = fresh.clone();
    f.effective.remove("smtp_tls_loglevel");
    assert_eq!(loglevel_lines(&f, "relay"), (vec![], raised.clone()));
    // Explicit 0 is replaced in place.
    let mut f = fresh.clone();
    f.main_cf.push_str("smtp_tls_loglevel = 0\n");
    assert_eq!(
        loglevel_lines(&f, "relay"),
        (vec!["smtp_tls_loglevel = 0".to_string()], raised)
    );
    // The admin's 2 (and 1) stay.
    for level in ["1", "2"] {
        let mut f = fresh.clone();
        f.main_cf
            .push_str(&format!("smtp_tls_loglevel = {level}\n"));
        f.effective.insert("smtp_tls_loglevel".into(), level.into());
        assert_eq!(loglevel_lines(&f, "relay"), (vec![], vec![]), "{level}");
    }
    // A host that is no backup does not need it.
    assert_eq!(loglevel_lines(&fresh, "home"), (vec![], vec![]));
}

#[test]
fn admin_list_entries_are_kept_after_mxpin_and_reapply_is_empty() {
    let inv = inventory(DIR, true);
    let home = new_keys("home.example.net");
    let mut f = fixture_facts(FRESH);
    f.main_cf.push_str(
        "transport_maps = hash:/etc/postfix/transport,\n    # the admin's own tables\n    regexp:/etc/postfix/transport.re\n",
    );
    f.main_cf
        .push_str("relay_domains = hash:/etc/postfix/relay_domains\n");
    let plan = plan_for(&inv, "relay", &f, &home);
    let (_, new) = main_cf_change(&plan).unwrap();
    let m = crate::mta::postfix::maincf::MainCf::parse(&new);
    assert_eq!(
        m.get("transport_maps").unwrap(),
        format!("hash:{DIR}/mxpin/transport, hash:/etc/postfix/transport, regexp:/etc/postfix/transport.re")
    );
    assert_eq!(
        m.get("relay_domains").unwrap(),
        format!("hash:{DIR}/mxpin/relay_domains, hash:/etc/postfix/relay_domains")
    );
    let (removed, _) = main_cf_diff(&plan);
    assert_eq!(
        removed,
        sorted(&[
            "transport_maps = hash:/etc/postfix/transport,",
            "    # the admin's own tables",
            "    regexp:/etc/postfix/transport.re",
            "relay_domains = hash:/etc/postfix/relay_domains",
            SNAKEOIL_LINES[0],
            SNAKEOIL_LINES[1],
        ])
    );

    // Facts as read after applying it: nothing left to do.
    let after = simulate_apply(&f, &plan);
    assert_converged(&plan_for(&inv, "relay", &after, &home));
}

#[test]
fn smtpd_security_level_encrypt_is_kept_and_none_becomes_may() {
    let inv = inventory(DIR, false);
    let peers = new_keys("home.example.net");
    let fresh = fixture_facts(FRESH);
    let debian = "smtpd_tls_security_level=may\n";
    assert!(fresh.main_cf.contains(debian));
    let level_lines = |main_cf: String, effective: &str| {
        let mut f = fresh.clone();
        f.main_cf = main_cf;
        f.effective
            .insert("smtpd_tls_security_level".into(), effective.into());
        let (removed, added) = main_cf_diff(&plan_for(&inv, "relay", &f, &peers));
        let only = |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .filter(|l| l.starts_with("smtpd_tls_security_level"))
                .collect()
        };
        (only(removed), only(added))
    };
    let may = "smtpd_tls_security_level = may".to_string();

    for level in ["may", "encrypt"] {
        let main_cf = fresh
            .main_cf
            .replace(debian, &format!("smtpd_tls_security_level={level}\n"));
        assert_eq!(level_lines(main_cf, level), (vec![], vec![]), "{level}");
    }
    let none = fresh
        .main_cf
        .replace(debian, "smtpd_tls_security_level=none\n");
    assert_eq!(
        level_lines(none, "none"),
        (
            vec!["smtpd_tls_security_level=none".into()],
            vec![may.clone()]
        )
    );
    let unset = fresh.main_cf.replace(debian, "");
    assert_eq!(level_lines(unset.clone(), ""), (vec![], vec![may]));
    // postconf's effective value counts when main.cf does not set it.
    assert_eq!(level_lines(unset, "encrypt"), (vec![], vec![]));
}

#[test]
fn host_that_stops_being_a_backup_loses_tables_and_list_entries() {
    // From the real applied relay: tables go, the four list lines go.
    let (home_dir, dir) = (fixture_dir("home"), fixture_dir("relay"));
    let f = fixture_facts(RELAY_APPLIED);
    let inv = inventory_with(&home_dir, &dir, 25, "relay.example.org", false);
    let plan = plan_for(&inv, "relay", &f, &StoredKeys::default());
    let mut expected: Vec<_> = TABLE_NAMES
        .iter()
        .map(|t| (owned(&dir, t), Action::Delete, 0o644, false))
        .collect();
    expected.push((format!("{dir}/main.cf"), Action::Modify, 0o644, false));
    expected.push((owned(&dir, "main.cf.taken"), Action::Modify, 0o644, false));
    expect_changes(&plan, &expected);
    for t in TABLE_NAMES {
        let c = change(&plan, &owned(&dir, t));
        assert_eq!(c.old.as_ref(), Some(&f.files[t].content));
        assert!(c.new.is_none());
    }
    assert_eq!(
        main_cf_diff(&plan),
        (
            sorted(&[
                &format!("transport_maps = hash:{dir}/mxpin/transport"),
                &format!("smtp_tls_policy_maps = hash:{dir}/mxpin/tls_policy"),
                &format!("relay_domains = hash:{dir}/mxpin/relay_domains"),
                &format!("relay_recipient_maps = hash:{dir}/mxpin/relay_recipients"),
                // Given back too: it pins nothing any more.
                "smtp_tls_fingerprint_digest = sha256",
                "smtp_tls_loglevel = 1",
            ]),
            vec![]
        ),
        "the lines mxpin added go"
    );
    assert!(plan.steps.postfix().postmap.is_empty() && plan.steps.postfix().lookups.is_empty());
    assert!(!plan.switches_key && plan.pinned.is_empty());
    assert_converged(&plan_for(
        &inv,
        "relay",
        &simulate_apply(&f, &plan),
        &StoredKeys::default(),
    ));

    // With the admin's own entries: they stay, in order.
    let home = new_keys("home.example.net");
    let mut f = fixture_facts(FRESH);
    f.main_cf.push_str(
        "transport_maps = hash:/etc/postfix/transport\nrelay_recipient_maps = hash:/etc/postfix/a, hash:/etc/postfix/b\n",
    );
    let as_backup = plan_for(&inventory(DIR, true), "relay", &f, &home);
    let f = simulate_apply(&f, &as_backup);
    let plan = plan_for(&inventory(DIR, false), "relay", &f, &home);
    let (_, new) = main_cf_change(&plan).unwrap();
    let m = crate::mta::postfix::maincf::MainCf::parse(&new);
    assert_eq!(
        m.get("transport_maps").as_deref(),
        Some("hash:/etc/postfix/transport")
    );
    assert_eq!(
        m.get("relay_recipient_maps").as_deref(),
        Some("hash:/etc/postfix/a, hash:/etc/postfix/b")
    );
    assert_eq!(m.get("smtp_tls_policy_maps"), None, "emptied list removed");
    assert_eq!(m.get("relay_domains"), None, "emptied list removed");
    assert!(!new.contains("/mxpin/transport") && !new.contains("/mxpin/tls_policy"));
    assert_converged(&plan_for(
        &inventory(DIR, false),
        "relay",
        &simulate_apply(&f, &plan),
        &home,
    ));
}

#[test]
fn postfix_before_3_4_gets_cert_and_key_file_and_before_2_9_is_refused() {
    let inv = inventory(DIR, false);
    let peers = new_keys("home.example.net");
    for (version, text) in [((3, 3), "3.3.0"), ((2, 9), "2.9.4")] {
        let mut f = fixture_facts(FRESH);
        f.version = version;
        f.version_text = text.into();
        let plan = plan_for(&inv, "relay", &f, &peers);
        assert_eq!(
            main_cf_diff(&plan),
            (
                sorted(&[
                    "smtpd_tls_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem",
                    "smtpd_tls_key_file=/etc/ssl/private/ssl-cert-snakeoil.key",
                ]),
                sorted(&[
                    &format!("smtpd_tls_cert_file = {DIR}/mxpin/current.crt"),
                    &format!("smtpd_tls_key_file = {DIR}/mxpin/current.key"),
                ])
            ),
            "{text}"
        );
        assert!(plan.switches_key);
        assert_converged(&plan_for(&inv, "relay", &simulate_apply(&f, &plan), &peers));
    }
    let mut f = fixture_facts(FRESH);
    f.version = (2, 8);
    f.version_text = "2.8.17".into();
    let e = try_plan(&inv, "relay", &f, &peers).unwrap_err();
    assert!(e.contains("Postfix 2.8.17 is too old"), "{e}");
    assert!(e.contains("2.9"), "{e}");
}

#[test]
fn database_type_decides_prefixes_and_unsupported_types_are_refused() {
    let inv = inventory(DIR, true);
    let home = new_keys("home.example.net");
    let mut f = fixture_facts(FRESH);
    f.db_type = "lmdb".into();
    let plan = plan_for(&inv, "relay", &f, &home);
    let (_, added) = main_cf_diff(&plan);
    assert!(added.contains(&format!("transport_maps = lmdb:{DIR}/mxpin/transport")));
    assert!(added.contains(&format!(
        "smtp_tls_policy_maps = lmdb:{DIR}/mxpin/tls_policy"
    )));
    assert!(!added.iter().any(|l| l.contains("hash:")), "{added:?}");
    assert!(plan
        .commands
        .contains(&format!("postmap -c {DIR} lmdb:{DIR}/mxpin/tls_policy")));
    assert_eq!(plan.steps.postfix().db_type, "lmdb");
    let script = apply_script(&plan);
    assert!(script
        .text()
        .contains(&format!("'{DIR}/mxpin/.tls_policy.mxpin-new.lmdb'")));
    assert_converged(&plan_for(&inv, "relay", &simulate_apply(&f, &plan), &home));

    // Switching a hash host to lmdb rebuilds every table and swaps prefixes.
    let (home_dir, dir) = (fixture_dir("home"), fixture_dir("relay"));
    let inv = inventory_with(&home_dir, &dir, 25, "relay.example.org", true);
    let home = fixture_facts(HOME_APPLIED).stored_keys();
    let mut f = fixture_facts(RELAY_APPLIED);
    f.db_type = "lmdb".into();
    let plan = plan_for(&inv, "relay", &f, &home);
    let postmap: BTreeSet<String> = plan.steps.postfix().postmap.iter().cloned().collect();
    let tables: BTreeSet<String> = TABLE_NAMES.iter().map(|t| owned(&dir, t)).collect();
    assert_eq!(postmap, tables);
    let (removed, added) = main_cf_diff(&plan);
    assert_eq!(removed.len(), 4);
    assert_eq!(
        added,
        removed
            .iter()
            .map(|l| l.replace("hash:", "lmdb:"))
            .collect::<Vec<_>>()
    );

    let mut f = fixture_facts(FRESH);
    f.db_type = "dbm".into();
    let e = try_plan(&inventory(DIR, true), "relay", &f, &home).unwrap_err();
    assert!(e.contains("\"dbm\" is not supported"), "{e}");
}

/// `btree` tables are also `.db` files, but not in hash's format: a host
/// whose default_database_type changes from hash to btree keeps hash-format
/// databases while main.cf starts naming them `btree:`.
#[test]
fn switching_hash_to_btree_rebuilds_tables() {
    let (home_dir, dir) = (fixture_dir("home"), fixture_dir("relay"));
    let inv = inventory_with(&home_dir, &dir, 25, "relay.example.org", true);
    let home = fixture_facts(HOME_APPLIED).stored_keys();
    let mut f = fixture_facts(RELAY_APPLIED);
    f.db_type = "btree".into();
    let plan = plan_for(&inv, "relay", &f, &home);
    let (_, added) = main_cf_diff(&plan);
    assert!(added.contains(&format!("transport_maps = btree:{dir}/mxpin/transport")));
    assert_eq!(
        plan.steps.postfix().postmap.len(),
        4,
        "{:?}",
        plan.steps.postfix().postmap
    );
}

#[test]
fn wrong_mode_or_owner_is_fixed_with_chmod() {
    let (home_dir, dir) = (fixture_dir("home"), fixture_dir("relay"));
    let inv = inventory_with(&home_dir, &dir, 25, "relay.example.org", true);
    let home = fixture_facts(HOME_APPLIED).stored_keys();
    let cases = [
        ("current.key", "-rw-r--r-- 1 0 0 241 Sep 21 12:00 x", 0o600),
        ("next.key", "-rw------- 1 1000 0 241 Sep 21 12:00 x", 0o600),
        ("next.crt", "-rw------- 1 0 0 700 Sep 21 12:00 x", 0o644),
        ("tls_policy", "-rwxr-xr-x 1 0 0 300 Sep 21 12:00 x", 0o644),
    ];
    for (name, ls, mode) in cases {
        let mut f = fixture_facts(RELAY_APPLIED);
        f.files.get_mut(name).unwrap().ls = ls.into();
        let plan = plan_for(&inv, "relay", &f, &home);
        expect_changes(
            &plan,
            &[(
                owned(&dir, name),
                Action::Chmod,
                mode,
                name.ends_with(".key"),
            )],
        );
        let c = &plan.changes[0];
        assert_eq!(c.old.as_ref(), Some(&f.files[name].content));
        assert_eq!(c.new, c.old, "content stays");
        assert_eq!(plan.commands, [format!("postfix -c {dir} check")]);
        assert!(plan.steps.postfix().postmap.is_empty());
    }
    // ls markers for ACLs and security contexts do not count as a wrong mode.
    let mut f = fixture_facts(RELAY_APPLIED);
    f.files.get_mut("current.key").unwrap().ls = "-rw-------. 1 0 0 241 Sep 21 12:00 x".into();
    assert_converged(&plan_for(&inv, "relay", &f, &home));
}

/// `switches_key` says the served key changes; a chmod serves the same key.
#[test]
fn chmod_alone_does_not_switch_the_served_key() {
    let (home_dir, dir) = (fixture_dir("home"), fixture_dir("relay"));
    let inv = inventory_with(&home_dir, &dir, 25, "relay.example.org", true);
    let home = fixture_facts(HOME_APPLIED).stored_keys();
    let mut f = fixture_facts(RELAY_APPLIED);
    f.files.get_mut("current.key").unwrap().ls = "-rw-r--r-- 1 0 0 241 Sep 21 12:00 x".into();
    let plan = plan_for(&inv, "relay", &f, &home);
    assert_eq!(plan.changes.len(), 1);
    assert!(!plan.switches_key);
}

#[test]
fn stale_database_is_rebuilt_without_content_change() {
    let (home_dir, dir) = (fixture_dir("home"), fixture_dir("relay"));
    let inv = inventory_with(&home_dir, &dir, 25, "relay.example.org", true);
    let home = fixture_facts(HOME_APPLIED).stored_keys();
    for found in [vec![], vec!["lmdb".to_string()]] {
        let mut f = fixture_facts(RELAY_APPLIED);
        f.fresh.insert("tls_policy".into(), found.clone());
        let plan = plan_for(&inv, "relay", &f, &home);
        assert!(plan.changes.is_empty(), "{:?}", summary(&plan));
        assert_eq!(
            plan.steps.postfix().postmap,
            [owned(&dir, "tls_policy")],
            "{found:?}"
        );
        assert_eq!(
            plan.commands,
            [
                format!("postmap -c {dir} hash:{dir}/mxpin/tls_policy"),
                format!("postfix -c {dir} check"),
            ]
        );
    }
    // A table of a host that is no backup is not rebuilt.
    let inv = inventory_with(&home_dir, &dir, 25, "relay.example.org", false);
    let mut f = fixture_facts(HOME_APPLIED);
    f.fresh.insert("tls_policy".into(), vec![]);
    assert_converged(&plan_for(&inv, "home", &f, &StoredKeys::default()));
}

/// The engine and the CLI apply only plans that are not `is_empty()`, and
/// call a host with an empty plan converged.
#[test]
fn stale_database_alone_is_a_pending_change() {
    let (home_dir, dir) = (fixture_dir("home"), fixture_dir("relay"));
    let inv = inventory_with(&home_dir, &dir, 25, "relay.example.org", true);
    let mut f = fixture_facts(RELAY_APPLIED);
    f.fresh.insert("tls_policy".into(), vec![]);
    let plan = plan_for(
        &inv,
        "relay",
        &f,
        &fixture_facts(HOME_APPLIED).stored_keys(),
    );
    assert!(!plan.steps.postfix().postmap.is_empty());
    assert!(!plan.is_empty(), "a pending postmap must count as a change");
}

#[test]
fn plans_never_show_private_keys() {
    let inv = inventory(DIR, true);
    let home = new_keys("home.example.net");
    let fresh_plan = plan_for(&inv, "relay", &fixture_facts(FRESH), &home);

    let (home_dir, dir) = (fixture_dir("home"), fixture_dir("relay"));
    let inv = inventory_with(&home_dir, &dir, 25, "relay.example.org", true);
    let mut f = fixture_facts(RELAY_APPLIED);
    f.files.get_mut("current.key").unwrap().ls = "-rw-r--r-- 1 0 0 241 Sep 21 12:00 x".into();
    let chmod_plan = plan_for(
        &inv,
        "relay",
        &f,
        &fixture_facts(HOME_APPLIED).stored_keys(),
    );

    for plan in [fresh_plan, chmod_plan] {
        // The plan does carry key material, so its absence below means
        // something: it is masked, not missing.
        let key_body: Vec<String> = plan
            .changes
            .iter()
            .flat_map(|c| [c.old.as_ref(), c.new.as_ref()])
            .flatten()
            .filter(|c| c.is_secret())
            .map(|c| c.raw().lines().nth(1).unwrap().to_string())
            .collect();
        assert!(!key_body.is_empty());
        let text = render_host(&plan, crate::plan::PinStyle::SHA256_KEY);
        let debug = format!("{plan:?}{plan:#?}");
        let script_debug = format!("{:?}", apply_script(&plan));
        let json = to_json(
            &[HostOutcome::Planned(Box::new(plan))],
            crate::plan::PinStyle::SHA256_KEY,
        )
        .to_string();
        for (what, out) in [
            ("render", &text),
            ("json", &json),
            ("debug", &debug),
            ("script debug", &script_debug),
        ] {
            assert!(!out.contains("PRIVATE KEY"), "{what}: {out}");
            for body in &key_body {
                assert!(!out.contains(body.as_str()), "{what} shows key material");
            }
        }
        assert!(text.contains(tls::HIDDEN), "{text}");
        assert!(json.contains("\"secret\":true"), "{json}");
    }
}

#[test]
fn applied_fixtures_plan_to_nothing() {
    let inv = inventory_with(
        &fixture_dir("home"),
        &fixture_dir("relay"),
        25,
        "relay.example.org",
        true,
    );
    let home = fixture_facts(HOME_APPLIED);
    let relay = fixture_facts(RELAY_APPLIED);
    assert_converged(&plan_for(&inv, "home", &home, &relay.stored_keys()));
    assert_converged(&plan_for(&inv, "relay", &relay, &home.stored_keys()));

    // ... until a pin changes: only the policy table (and its database).
    let new_home = new_keys("home.example.net");
    let plan = plan_for(&inv, "relay", &relay, &new_home);
    let dir = fixture_dir("relay");
    expect_changes(
        &plan,
        &[(owned(&dir, "tls_policy"), Action::Modify, 0o644, false)],
    );
    assert_eq!(plan.steps.postfix().postmap, [owned(&dir, "tls_policy")]);
    assert!(!plan.switches_key);
}

#[test]
fn apply_result_is_read_from_the_markers() {
    assert_eq!(
        parse_result("noise\n@@mxpin-ok\n"),
        Some(ApplyResult::Applied)
    );
    assert_eq!(parse_result("partial output\n"), None);
    assert_eq!(
        parse_result("@@mxpin-failed postfix check: bad thing \n@@mxpin-rolled-back\n"),
        Some(ApplyResult::Failed {
            step: "postfix check".into(),
            message: "bad thing".into(),
            rolled_back: true
        })
    );
    assert_eq!(
        parse_result("@@mxpin-failed check main.cf: changed\n"),
        Some(ApplyResult::Failed {
            step: "check main.cf".into(),
            message: "changed".into(),
            rolled_back: false
        })
    );
}
