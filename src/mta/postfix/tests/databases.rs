//! Planning (pure) for what the host is built with and what it holds:
//! Postfix versions, database types, modes and owners, stale databases,
//! and plans that show no private key and converge.

use super::*;

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
    // Built as lmdb where it is staged, swapped in before its source.
    assert!(script
        .text()
        .contains(&format!("'lmdb:{DIR}/mxpin/.mxpin-new/tls_policy'")));
    assert!(script.text().contains(" 'tls_policy.lmdb' 'tls_policy'"));
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
        // Not running: nothing to reload, and `postfix check` is never run.
        assert!(plan.commands.is_empty(), "{:?}", plan.commands);
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
            [format!("postmap -c {dir} hash:{dir}/mxpin/tls_policy")]
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
