//! Issue 15: an apply that swaps only keys or tables skips `postfix check`
//! (its configuration is unchanged); one that edits main.cf or master.cf
//! runs it.

use super::*;

fn has_postfix_check(plan: &HostPlan) -> bool {
    apply_script(plan).text().contains("step='postfix check'")
}

#[test]
fn postfix_check_runs_only_when_the_configuration_changes() {
    let (inv, states) = fleet(Ok(fixture_facts(RELAY_APPLIED)));
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
        assert!(!has_postfix_check(p), "{}", p.host);
        // Still validated: postconf warnings, and the lookups.
        assert!(apply_script(p).text().contains("step='postconf warnings'"));
    }
    assert!(apply_script(relay).text().contains("postmap -q"));

    // A fresh host: main.cf gets mxpin's lines.
    let fresh = plan_for(
        &inv,
        "home",
        &fixture_facts(FRESH),
        &new_keys("relay.example.org"),
    );
    assert!(changed_paths(&fresh).contains(&"main.cf".to_string()));
    assert!(has_postfix_check(&fresh));
}
