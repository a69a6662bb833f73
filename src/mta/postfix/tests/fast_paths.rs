//! Issue 15: the apply script does only the work its changes need. It never
//! runs `postfix check` (it checks the installation, not what mxpin
//! writes); it compares `postconf` warnings only when main.cf or master.cf
//! changes (postmap's output is compared too, so tables take the warnings
//! from before); and it asks the master's pid file whether Postfix runs,
//! not `postfix status`.

use super::*;

fn script(plan: &HostPlan) -> String {
    apply_script(plan).text().to_string()
}

#[test]
fn the_apply_script_does_only_what_its_changes_need() {
    let (inv, mut states) = fleet(Ok(fixture_facts(RELAY_APPLIED)));
    set_memo(&mut states, true);
    let t = Templates::load(None).unwrap();
    let f = engine::plan_all(&inv, &states, &[], &t, now(), &rotate_home(false));
    let (home, relay) = (planned(&f, "home"), planned(&f, "relay"));
    // A rotation: home swaps key files, relay its tls_policy.
    for p in [home, relay] {
        assert!(!p.changes.is_empty(), "{}", p.host);
        assert!(
            !p.changes
                .iter()
                .any(|c| c.path.ends_with("/main.cf") || c.path.ends_with("/master.cf")),
            "{:?}",
            changed_paths(p)
        );
        let s = script(p);
        assert!(!s.contains("postfix -c \"$C\" check"), "{}", p.host);
        assert!(!s.contains("step='postconf warnings'"), "{}", p.host);
        // The queue directory as read: the pid file, not `postfix status`.
        assert!(s.contains("\nQ='/"), "{}", p.host);
        assert!(s.contains("\nif running; then\n"), "{}", p.host);
    }
    // Keys only: no postconf at all, and the memo of its answer is kept.
    assert!(!script(home).contains("postconf -c"));
    assert!(!script(relay).contains(WRITES_MEMO));
    // A table: postmap's warnings are compared with those from before, and
    // its lookups are checked.
    let s = script(relay);
    assert!(s.contains("before=$(warnings "));
    assert!(s.contains("postmap -q"));

    // A fresh host: main.cf gets mxpin's lines, and postconf validates them.
    let fresh = plan_for(
        &inv,
        "home",
        &fixture_facts(FRESH),
        &new_keys("relay.example.org"),
    );
    assert!(changed_paths(&fresh).contains(&"main.cf".to_string()));
    let s = script(&fresh);
    assert!(s.contains("step='postconf warnings'"));
    assert!(!s.contains("postfix -c \"$C\" check"));
    // ... and the memo of postconf's answer is written anew.
    assert!(s.contains(WRITES_MEMO));
}

/// What an apply script writes the memo of postconf's answer with.
const WRITES_MEMO: &str = "\npc_write\n";

fn set_memo(states: &mut [engine::HostState], memo: bool) {
    for s in states {
        if let Ok(crate::mta::Facts::Postfix(f)) = &mut s.facts {
            f.memo = memo;
        }
    }
}

/// An apply refreshes the memo of postconf's answer on a host where it did
/// not hold, even when main.cf and master.cf stay; a release removes it
/// with mxpin's directory and writes none.
#[test]
fn an_apply_refreshes_a_memo_that_did_not_hold() {
    let (inv, mut states) = fleet(Ok(fixture_facts(RELAY_APPLIED)));
    set_memo(&mut states, false);
    let t = Templates::load(None).unwrap();
    let f = engine::plan_all(&inv, &states, &[], &t, now(), &rotate_home(false));
    for host in ["home", "relay"] {
        let s = script(planned(&f, host));
        assert!(s.contains(WRITES_MEMO), "{host}");
        // Its key is listed before postconf is asked.
        let (ls, ask) = (
            s.find("pf_ls=$(ls -lnc").unwrap(),
            s.rfind("\npc_ask \"${pc_bin:-postconf}\"\n").unwrap(),
        );
        assert!(ls < ask, "{host}");
    }
    // A read that asked postconf gave the key it asked under: the memo is
    // written from that read's key and answer, with no `ls` or postconf.
    for s in &mut states {
        if let Ok(crate::mta::Facts::Postfix(f)) = &mut s.facts {
            f.memo_key = Some("mxpin postconf memo 1: the key".into());
        }
    }
    let f = engine::plan_all(&inv, &states, &[], &t, now(), &rotate_home(false));
    for host in ["home", "relay"] {
        let p = planned(&f, host);
        let s = script(p);
        let answer = &p.steps.postfix().postconf_before;
        assert!(
            s.contains(&format!(
                "\npk='mxpin postconf memo 1: the key'\npc={}\nM=\"$C/mxpin\"{WRITES_MEMO}",
                quote(answer)
            )),
            "{host}: {s}"
        );
        assert!(!s.contains("pf_ls=$(ls -lnc"), "{host}");
        assert!(!s.contains("\npc_ask "), "{host}");
    }
    let mut released = fixture_facts(HOME_APPLIED);
    released.memo = false;
    let (inv, _) = fleet(Ok(released.clone()));
    let mut inv = inv;
    for h in &mut inv.hosts {
        h.release = true;
    }
    let p = plan_for(&inv, "home", &released, &StoredKeys::default());
    let s = script(&p);
    assert!(!s.contains(WRITES_MEMO));
    assert!(s.contains("rm -f \"$C/mxpin/postconf.memo\"\nrmdir \"$C/mxpin\""));
}

/// The read-back of an apply that leaves main.cf and master.cf as they
/// were runs no `postconf`: it is given the first read's answer. One that
/// changes either asks postconf again.
#[test]
fn the_read_back_asks_postconf_only_when_main_cf_or_master_cf_changes() {
    let (inv, states) = fleet(Ok(fixture_facts(RELAY_APPLIED)));
    let t = Templates::load(None).unwrap();
    let f = engine::plan_all(&inv, &states, &[], &t, now(), &rotate_home(false));
    let asks = "\n  pc_ask postconf\n";
    let host = |name: &str| inv.hosts.iter().find(|h| h.name.as_str() == name).unwrap();
    for (name, fixture) in [("home", HOME_APPLIED), ("relay", RELAY_APPLIED)] {
        let s = crate::mta::read_back_script(planned(&f, name), host(name), "");
        assert!(!s.contains(asks), "{name}");
        let answer = quote(&fixture_facts(fixture).postconf);
        assert!(s.contains(&format!("\npc={answer}\n")), "{name}");
    }
    let fresh = plan_for(
        &inv,
        "home",
        &fixture_facts(FRESH),
        &new_keys("relay.example.org"),
    );
    let s = crate::mta::read_back_script(&fresh, host("home"), "");
    assert!(s.contains(asks));
}

/// Given the first read's answer, the facts script reads exactly what it
/// reads when it asks postconf, byte for byte, but for what only asking
/// says: postconf's warnings and the memo's key it asked under.
#[test]
fn live_facts_given_postconf_answer_read_as_when_asking_it() {
    require_root_and_postfix!();
    let lab = Lab::new();
    let raw = capture_raw(&lab.conf);
    let f = facts_from(&raw).unwrap();
    let host = host_at(&lab.conf);
    let out = run_sh_s(&super::super::facts_script_known(&host, "", &f.postconf));
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&without_frames(&raw, &["warnings", "memo_key"]))
    );
    assert!(f.warnings.is_some());
}
