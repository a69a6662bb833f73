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
    assert!(plan.commands.is_empty(), "{:?}", plan.commands);
    assert!(plan.notes.iter().any(|n| n.contains("not running")));

    // A running Postfix is reloaded.
    let mut running = f.clone();
    running.running = true;
    let plan = plan_for(&inv, "home", &running, &new_keys("relay.example.org"));
    assert_eq!(plan.commands, [reload_line(&running)]);
    assert!(plan.steps.postfix().running);
    // Facts without a queue directory (never from a real read): the plan
    // says `postfix reload`, which the script then runs.
    running.effective.remove("queue_directory");
    let plan = plan_for(&inv, "home", &running, &new_keys("relay.example.org"));
    assert_eq!(plan.commands, [format!("postfix -c {DIR} reload")]);
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
