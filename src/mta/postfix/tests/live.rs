//! The facts and apply scripts run for real by `sh` against temporary
//! copies of /etc/postfix (root and the Postfix binaries needed).

use super::*;

#[test]
fn live_facts_match_the_fixtures() {
    require_root_and_postfix!();
    let write = std::env::var_os("MXPIN_WRITE_FIXTURES").is_some();
    let lab = |name: &str| {
        if write {
            Lab::at(&Path::new(FIXTURE_ROOT).join(name))
        } else {
            Lab::new()
        }
    };
    let (fresh, home, relay) = (lab("fresh"), lab("home"), lab("relay"));
    let fresh_raw = capture_raw(&fresh.conf);

    let inv = inventory_with(&home.conf, &relay.conf, 25, "relay.example.org", true);
    converge(&inv, &home, "home", &StoredKeys::default());
    let home_raw = capture_raw(&home.conf);
    let home_keys = facts_from(&home_raw).unwrap().stored_keys();
    converge(&inv, &relay, "relay", &home_keys);
    let relay_raw = capture_raw(&relay.conf);

    // What the script read is what is on disk, byte for byte.
    for (lab, raw) in [
        (&fresh, &fresh_raw),
        (&home, &home_raw),
        (&relay, &relay_raw),
    ] {
        let f = facts_from(raw).unwrap();
        assert_eq!(f.main_cf, lab.read("main.cf"));
        for (name, file) in &f.files {
            assert_eq!(file.content.raw(), lab.read(&format!("mxpin/{name}")));
            let (mode, uid) = lab.mode(&format!("mxpin/{name}"));
            let perms = if mode == 0o600 {
                "-rw------- "
            } else {
                "-rw-r--r-- "
            };
            assert!(file.ls.starts_with(perms) && uid == 0, "{}", file.ls);
        }
        for (table, found) in &f.fresh {
            let db = lab.path(&format!("mxpin/{table}.db"));
            assert_eq!(found.contains(&"db".to_string()), db.exists(), "{table}");
        }
    }

    if write {
        for (name, bytes) in [
            (FRESH, &fresh_raw),
            (HOME_APPLIED, &home_raw),
            (RELAY_APPLIED, &relay_raw),
        ] {
            std::fs::write(fixture_path(name), bytes).unwrap();
        }
        std::fs::write(fixture_path(FRESH_MAIN_CF), fresh.read("main.cf")).unwrap();
        eprintln!("fixtures written from {FIXTURE_ROOT}");
        return;
    }

    // Same sections, in the same order, as the committed fixtures; same
    // effective values once the lab's path is replaced by the fixture's.
    for (name, lab, raw, fixture_lab) in [
        (FRESH, &fresh, &fresh_raw, "fresh"),
        (HOME_APPLIED, &home, &home_raw, "home"),
        (RELAY_APPLIED, &relay, &relay_raw, "relay"),
    ] {
        // The memo of postconf's answer (which the applied hosts have),
        // and what a read that asks postconf says with it (its warnings,
        // the memo's key), are newer than the fixtures.
        let names = |out: &[u8]| -> Vec<String> {
            frame_ends(out)
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| !["memo", "warnings", "memo_key"].contains(&n.as_str()))
                .collect()
        };
        assert_eq!(names(raw), names(&fixture(name)), "{name}");
        let live = facts_from(raw).unwrap();
        let kept = fixture_facts(name);
        let root = lab.root.to_str().unwrap();
        let fixture_root = format!("{FIXTURE_ROOT}/{fixture_lab}");
        let normalized: BTreeMap<String, String> = live
            .effective
            .iter()
            .map(|(k, v)| (k.clone(), v.replace(root, &fixture_root)))
            .collect();
        assert_eq!(normalized, kept.effective, "{name}");
        assert_eq!(live.db_type, kept.db_type);
        assert_eq!(live.running, kept.running);
    }
}

#[test]
fn live_facts_report_a_missing_main_cf() {
    require_root_and_postfix!();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().to_str().unwrap();
    assert_eq!(
        facts_from(&capture_raw(conf)).unwrap_err(),
        format!("{conf}/main.cf not found")
    );
}

#[test]
fn live_apply_makes_a_backup_and_converges() {
    require_root_and_postfix!();
    let lab = Lab::new();
    let dir = lab.conf.clone();
    let inv = inventory(&dir, true);
    let home = new_keys("home.example.net");
    let facts = capture(&dir);
    assert_eq!(facts.main_cf, lab.read("main.cf"));
    let plan = plan_for(&inv, "relay", &facts, &home);
    assert_eq!(plan.changes.len(), 10);

    let (result, out) = run_apply(&plan);
    assert_eq!(result, ApplyResult::Applied, "{out}");

    // Every file as planned, with its mode, owned by root.
    for c in &plan.changes {
        let rel = c.path.strip_prefix(&format!("{dir}/")).unwrap();
        assert_eq!(lab.read(rel), c.new.as_ref().unwrap().raw(), "{rel}");
        assert_eq!(lab.mode(rel), (c.mode, 0), "{rel}");
    }
    for t in TABLE_NAMES {
        assert_eq!(lab.mode(&format!("mxpin/{t}.db")), (0o644, 0), "{t}.db");
    }
    assert_eq!(lab.mode("mxpin"), (0o755, 0));
    assert_eq!(
        lab.read("main.cf"),
        main_cf_change(&plan).unwrap().1,
        "main.cf as planned"
    );
    assert_no_leftovers(&lab.root);

    // Postfix reads what was meant: the served pair, the tables, the pins.
    assert_eq!(
        lab.postconf("smtpd_tls_chain_files"),
        format!("{dir}/mxpin/current.key, {dir}/mxpin/current.crt")
    );
    assert_eq!(
        lab.postconf("smtp_tls_policy_maps"),
        format!("hash:{dir}/mxpin/tls_policy")
    );
    if let Some(matches) = openssl_pair_matches(
        &lab.path("mxpin/current.key"),
        &lab.path("mxpin/current.crt"),
    ) {
        assert!(matches, "current.key and current.crt are one pair");
    }
    let expected_pins: Vec<String> = [&home.current, &home.next]
        .iter()
        .zip(pins(&home))
        .map(|(slot, ours)| openssl_pin(slot.cert.as_deref().unwrap()).unwrap_or(ours))
        .collect();
    assert_eq!(
        lab.lookup("tls_policy", "[home.example.net]:25").as_deref(),
        Some(
            format!(
                "fingerprint servername=mxpin.invalid match={}",
                expected_pins.join("|")
            )
            .as_str()
        )
    );
    assert_eq!(
        lab.lookup("transport", "example.net").as_deref(),
        Some("smtp:[home.example.net]:25")
    );
    assert_eq!(
        lab.lookup("relay_domains", "example.com").as_deref(),
        Some("OK")
    );
    assert_eq!(
        lab.lookup("relay_recipients", "first.last@example.net")
            .as_deref(),
        Some("OK")
    );
    assert_eq!(
        lab.lookup("relay_recipients", "@example.com").as_deref(),
        Some("OK")
    );
    assert_eq!(lab.lookup("relay_recipients", "nobody@example.net"), None);

    // Read again: nothing left to do.
    assert_converged(&plan_for(&inv, "relay", &capture(&dir), &home));
}

#[test]
fn live_apply_removes_tables_when_the_backup_role_ends() {
    require_root_and_postfix!();
    let lab = Lab::new();
    let home = new_keys("home.example.net");
    converge(&inventory(&lab.conf, true), &lab, "relay", &home);
    let key_before = lab.read("mxpin/current.key");

    let inv = inventory(&lab.conf, false);
    let plan = plan_for(&inv, "relay", &capture(&lab.conf), &home);
    let deletes = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Delete)
        .count();
    assert_eq!(deletes, 4);
    let (result, out) = run_apply(&plan);
    assert_eq!(result, ApplyResult::Applied, "{out}");

    for t in TABLE_NAMES {
        assert!(!lab.path(&format!("mxpin/{t}")).exists(), "{t}");
        assert!(!lab.path(&format!("mxpin/{t}.db")).exists(), "{t}.db");
    }
    for p in [
        "transport_maps",
        "smtp_tls_policy_maps",
        "relay_domains",
        "relay_recipient_maps",
    ] {
        assert_eq!(lab.postconf(p), "", "{p}");
    }
    assert_eq!(lab.read("main.cf"), main_cf_change(&plan).unwrap().1);
    assert_eq!(lab.read("mxpin/current.key"), key_before, "keys stay");
    assert_no_leftovers(&lab.root);
    assert_converged(&plan_for(&inv, "relay", &capture(&lab.conf), &home));
}

#[test]
fn live_stale_database_is_rebuilt_by_apply() {
    require_root_and_postfix!();
    let lab = Lab::new();
    let inv = inventory(&lab.conf, true);
    let home = new_keys("home.example.net");
    converge(&inv, &lab, "relay", &home);
    let source = lab.read("mxpin/tls_policy");
    // The database is older than its source.
    let set_age = |rel: &str, secs: u64| {
        std::fs::File::options()
            .write(true)
            .open(lab.path(rel))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    };
    set_age("mxpin/tls_policy.db", 7200);
    set_age("mxpin/tls_policy", 3600);

    let facts = capture(&lab.conf);
    assert!(facts.fresh["tls_policy"].is_empty());
    let plan = plan_for(&inv, "relay", &facts, &home);
    assert!(plan.changes.is_empty());
    assert_eq!(
        plan.steps.postfix().postmap,
        [format!("{}/mxpin/tls_policy", lab.conf)]
    );
    let (result, out) = run_apply(&plan);
    assert_eq!(result, ApplyResult::Applied, "{out}");

    assert_eq!(lab.read("mxpin/tls_policy"), source);
    let facts = capture(&lab.conf);
    assert_eq!(facts.fresh["tls_policy"], ["db"]);
    assert_converged(&plan_for(&inv, "relay", &facts, &home));
    assert_no_leftovers(&lab.root);
}

/// An admin switches default_database_type from hash to btree. Both keep
/// tables in `.db` files, in different formats: every table is rebuilt, or
/// Postfix could not open them (and apply's lookups would fail).
#[test]
fn live_switch_from_hash_to_btree_rebuilds_tables() {
    require_root_and_postfix!();
    let lab = Lab::new();
    let inv = inventory(&lab.conf, true);
    let home = new_keys("home.example.net");
    converge(&inv, &lab, "relay", &home);
    let hop = "[home.example.net]:25";
    let policy = lab.lookup("tls_policy", hop).unwrap();
    assert_eq!(
        lab.lookup_as("btree", "tls_policy", hop),
        None,
        "hash format"
    );

    let main_cf = format!("{}default_database_type = btree\n", lab.read("main.cf"));
    std::fs::write(lab.path("main.cf"), main_cf).unwrap();
    let facts = capture(&lab.conf);
    assert_eq!(facts.db_type, "btree");
    let plan = plan_for(&inv, "relay", &facts, &home);
    assert_eq!(
        plan.steps.postfix().postmap.len(),
        4,
        "{:?}",
        plan.steps.postfix().postmap
    );
    let (result, out) = run_apply(&plan);
    assert_eq!(result, ApplyResult::Applied, "{out}");

    assert_eq!(
        lab.postconf("transport_maps"),
        format!("btree:{}/mxpin/transport", lab.conf)
    );
    assert_eq!(lab.lookup_as("btree", "tls_policy", hop), Some(policy));
    assert_no_leftovers(&lab.root);
    assert_converged(&plan_for(&inv, "relay", &capture(&lab.conf), &home));
}

/// After a Chmod of a table source, its database must still be fresh.
#[test]
fn live_chmod_of_a_table_keeps_its_database_fresh() {
    require_root_and_postfix!();
    let lab = Lab::new();
    let inv = inventory(&lab.conf, true);
    let home = new_keys("home.example.net");
    converge(&inv, &lab, "relay", &home);
    let out = sh(&format!(
        "chmod 600 {}",
        quote(&format!("{}/mxpin/transport", lab.conf))
    ));
    assert!(out.status.success());

    let plan = plan_for(&inv, "relay", &capture(&lab.conf), &home);
    assert_eq!(summary(&plan).len(), 1);
    assert_eq!(plan.changes[0].action, Action::Chmod);
    let (result, out) = run_apply(&plan);
    assert_eq!(result, ApplyResult::Applied, "{out}");
    assert_eq!(lab.mode("mxpin/transport"), (0o644, 0));

    let facts = capture(&lab.conf);
    assert_eq!(facts.fresh["transport"], ["db"], "transport.db went stale");
    assert_converged(&plan_for(&inv, "relay", &facts, &home));
}

/// The real facts script, run as root without the capabilities that let
/// root read any file, on a directory with a file of mode 000: the files
/// go to one frame each (no bundle), and the answer is refused with an
/// error naming the file, not read as a host without it.
#[test]
fn live_facts_name_an_unreadable_file() {
    require_root_and_postfix!();
    let lab = Lab::new();
    std::fs::create_dir(lab.path("mxpin")).unwrap();
    std::fs::write(lab.path("mxpin/transport"), "example.net smtp:[h]:25\n").unwrap();
    let locked = lab.path("mxpin/tls_policy");
    std::fs::write(&locked, "[h]:25 secure\n").unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let run = |drop_caps: bool| {
        let mut cmd = Command::new("setpriv");
        if drop_caps {
            cmd.args([
                "--inh-caps=-all",
                "--bounding-set=-dac_override,-dac_read_search",
            ]);
        }
        cmd.args(["sh", "-s"]);
        let out = feed(cmd, &facts_script(&host_at(&lab.conf)));
        assert!(out.status.success());
        out.stdout
    };
    let names =
        |out: &[u8]| -> Vec<String> { frame_ends(out).into_iter().map(|(n, _)| n).collect() };

    // With every capability, the files come in one bundle.
    let out = run(false);
    assert!(names(&out).contains(&facts::BUNDLE.to_string()));
    let f = facts_from(&out).unwrap();
    assert_eq!(f.files["tls_policy"].content.raw(), "[h]:25 secure\n");

    let out = run(true);
    let frames = names(&out);
    assert!(!frames.contains(&facts::BUNDLE.to_string()), "{frames:?}");
    for name in ["main.cf", "master.cf", "file:transport", "error"] {
        assert!(frames.contains(&name.to_string()), "{name} in {frames:?}");
    }
    let s = facts::parse(&out).unwrap();
    assert_eq!(s.get("file:transport"), Some("example.net smtp:[h]:25\n"));
    assert_eq!(s.get("file:tls_policy"), None);
    let e = facts_from(&out).unwrap_err();
    let path = locked.display();
    assert!(e.starts_with(&format!("cannot read {path}: ")), "{e}");
    assert!(e.contains("Permission denied"), "{e}");
}
