//! The apply script when something fails or changed under it, run for
//! real against copies of /etc/postfix (root and the Postfix binaries
//! needed): every byte rolled back, no staged file left, a changed main.cf
//! refused untouched; and the lookup check's quoting, with stubbed commands.

use super::*;

/// Sets up a relay that already serves mxpin keys, plans making it a backup
/// under a new name (certificates re-issued, tables created, main.cf
/// edited), sabotages the plan and checks that the failed run restored
/// every byte of the config dir. `after_swap`: the failure comes after files
/// were swapped in, so the script must report a roll-back.
fn assert_failed_apply_restores_everything(
    sabotage: impl FnOnce(&mut HostPlan),
    failing_step: impl Fn(&str) -> bool,
    after_swap: bool,
) {
    let lab = Lab::new();
    let home = new_keys("home.example.net");
    converge(&inventory(&lab.conf, false), &lab, "relay", &home);

    let inv = inventory_with(&lab.conf, &lab.conf, 25, "mx2.relay.example.org", true);
    let mut plan = plan_for(&inv, "relay", &capture(&lab.conf), &home);
    let mut actions: Vec<(String, Action)> = plan
        .changes
        .iter()
        .map(|c| (c.path.rsplit('/').next().unwrap().to_string(), c.action))
        .collect();
    actions.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected: Vec<(String, Action)> = [
        ("current.crt", Action::Modify),
        ("next.crt", Action::Modify),
        ("main.cf", Action::Modify),
        ("main.cf.taken", Action::Modify),
    ]
    .into_iter()
    .map(|(n, a)| (n.to_string(), a))
    .chain(TABLE_NAMES.iter().map(|t| (t.to_string(), Action::Create)))
    .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(actions, expected);

    sabotage(&mut plan);
    let before = snapshot(&lab.root);
    let (result, out) = run_apply(&plan);
    let ApplyResult::Failed {
        step, rolled_back, ..
    } = &result
    else {
        panic!("sabotaged apply succeeded: {out}")
    };
    assert!(failing_step(step), "failed at {step:?}: {out}");
    assert_eq!(*rolled_back, after_swap, "{out}");
    assert_same_tree(&before, &snapshot(&lab.root));
    assert_no_leftovers(&lab.root);
}

fn append_to_planned(plan: &mut HostPlan, file: &str, text: &str) {
    let c = plan
        .changes
        .iter_mut()
        .find(|c| c.path.ends_with(&format!("/{file}")))
        .unwrap();
    let new = format!("{}{text}", c.new.as_ref().unwrap().raw());
    c.new = Some(Content::Text(new));
}

#[test]
fn live_failed_lookup_rolls_back_every_byte() {
    require_root_and_postfix!();
    assert_failed_apply_restores_everything(
        |plan| {
            let crate::mta::Steps::Postfix(steps) = &mut plan.steps else {
                unreachable!()
            };
            let l = steps
                .lookups
                .iter_mut()
                .find(|l| l.table == "tls_policy")
                .unwrap();
            l.expected = "fingerprint match=00:11".into();
        },
        |step| {
            step.starts_with("postmap -q [home.example.net]:25 hash:")
                && step.ends_with("/mxpin/tls_policy")
        },
        true,
    );
}

/// A main.cf Postfix cannot parse (`postconf: fatal: ... missing '='`) is
/// refused after the swap, by the postconf step, and rolled back.
#[test]
fn live_unparsable_main_cf_rolls_back_every_byte() {
    require_root_and_postfix!();
    assert_failed_apply_restores_everything(
        |plan| append_to_planned(plan, "main.cf", "mxpin sabotage without an equals sign\n"),
        |step| step == "postconf warnings",
        true,
    );
}

#[test]
fn live_new_postconf_warning_rolls_back_every_byte() {
    require_root_and_postfix!();
    assert_failed_apply_restores_everything(
        |plan| {
            // As read by a read that asked postconf, which warned of
            // nothing (the lab's relay was read through its memo).
            let crate::mta::Steps::Postfix(steps) = &mut plan.steps else {
                unreachable!()
            };
            steps.warnings_before = Some(String::new());
            append_to_planned(plan, "main.cf", "mxpin_sabotage_unknown_parameter = yes\n")
        },
        |step| step == "postconf warnings",
        true,
    );
}

/// The same when the read took postconf's answer from the memo (it has no
/// warnings to give): the script asks postconf for those from before.
#[test]
fn live_new_postconf_warning_rolls_back_every_byte_when_the_read_had_no_warnings() {
    require_root_and_postfix!();
    assert_failed_apply_restores_everything(
        |plan| {
            let crate::mta::Steps::Postfix(steps) = &mut plan.steps else {
                unreachable!()
            };
            steps.warnings_before = None;
            append_to_planned(plan, "main.cf", "mxpin_sabotage_unknown_parameter = yes\n")
        },
        |step| step == "postconf warnings",
        true,
    );
}

/// postmap refuses the last table after the others were staged and built:
/// nothing was swapped yet, and every staged file and database is removed.
#[test]
fn live_failed_postmap_leaves_no_staged_files() {
    require_root_and_postfix!();
    assert_failed_apply_restores_everything(
        |plan| append_to_planned(plan, "relay_recipients", "a-key-without-a-value\n"),
        |step| step.starts_with("postmap /") && step.ends_with("/mxpin/relay_recipients"),
        false,
    );
}

/// An admin's main.cf with a problem of its own: a parameter defined twice
/// (Postfix, postconf and postmap warn `overriding earlier entry` on every
/// run), below a multi-line value mxpin rewrites, so the warning's line
/// number moves. Plan says so; apply is not blocked, by postconf or by
/// postmap, and converges; the admin's duplicate stays.
#[test]
fn live_duplicate_parameter_of_the_admin_does_not_block_apply() {
    require_root_and_postfix!();
    let lab = Lab::new();
    let main_cf = format!(
        "{}relay_domains =\n    example.org,\n# the old backup domain\n    example.com\n\
         delay_warning_time = 4h\ndelay_warning_time = 2h\n",
        lab.read("main.cf")
    );
    std::fs::write(lab.path("main.cf"), &main_cf).unwrap();
    let warned = sh(&format!("postconf -c {} >/dev/null", quote(&lab.conf)));
    assert!(
        String::from_utf8_lossy(&warned.stderr).contains("overriding earlier entry"),
        "{warned:?}"
    );
    let home = new_keys("home.example.net");
    let plan = plan_for(
        &inventory(&lab.conf, true),
        "relay",
        &capture(&lab.conf),
        &home,
    );
    assert!(
        plan.notes
            .iter()
            .any(|n| n.starts_with("main.cf defines delay_warning_time 2 times (lines ")),
        "{:?}",
        plan.notes
    );
    // The read asked postconf, and gives its warnings as those from before.
    let before = plan.steps.postfix().warnings_before.clone().unwrap();
    assert!(before.contains("overriding earlier entry"), "{before}");
    let (result, out) = run_apply(&plan);
    assert_eq!(result, ApplyResult::Applied, "{out}");
    let after = lab.read("main.cf");
    assert!(
        after.contains("delay_warning_time = 4h\ndelay_warning_time = 2h\n"),
        "{after}"
    );
    let again = plan_for(
        &inventory(&lab.conf, true),
        "relay",
        &capture(&lab.conf),
        &home,
    );
    assert!(again.is_empty(), "converged: {:?}", again.changes);

    // Only a table changes now (home has new keys: relay re-pins them).
    // postmap warns about the admin's duplicate too; the warnings from
    // before are taken then (main.cf does not change), and do not block.
    let table = lab.path("mxpin/tls_policy");
    let postmap = sh(&format!(
        "postmap -c {} -q nothing hash:{}",
        quote(&lab.conf),
        quote(table.to_str().unwrap())
    ));
    assert!(
        String::from_utf8_lossy(&postmap.stderr).contains("overriding earlier entry"),
        "{postmap:?}"
    );
    let repin = plan_for(
        &inventory(&lab.conf, true),
        "relay",
        &capture(&lab.conf),
        &new_keys("home.example.net"),
    );
    assert_eq!(changed_paths(&repin), ["tls_policy"], "{:?}", repin.changes);
    // That read took the memo's answer: no warnings of its own, so the
    // script asks postconf for them when postmap says something.
    if repin.steps.postfix().memo_fresh {
        assert_eq!(repin.steps.postfix().warnings_before, None);
    }
    let (result, out) = run_apply(&repin);
    assert_eq!(result, ApplyResult::Applied, "{out}");
}

#[test]
fn live_main_cf_edited_after_facts_is_refused_untouched() {
    require_root_and_postfix!();
    let lab = Lab::new();
    let plan = plan_for(
        &inventory(&lab.conf, true),
        "relay",
        &capture(&lab.conf),
        &new_keys("home.example.net"),
    );
    let edited = format!("{}# the admin was here\n", lab.read("main.cf"));
    std::fs::write(lab.path("main.cf"), edited).unwrap();
    let before = snapshot(&lab.root);
    let (result, out) = run_apply(&plan);
    let ApplyResult::Failed {
        step,
        message,
        rolled_back,
    } = result
    else {
        panic!("apply over an edited main.cf succeeded: {out}")
    };
    assert_eq!(step, "check files");
    assert!(
        message.ends_with("/main.cf changed since mxpin read it (another run?); plan again"),
        "{message}"
    );
    assert!(!rolled_back, "nothing was swapped");
    assert_same_tree(&before, &snapshot(&lab.root));
    assert!(!lab.path("mxpin").exists());
}

/// The lookup check after apply names the expected value with the one
/// escaper, `shell::quote`: a value with quotes, `$`, backquotes and
/// backslashes is compared and shown literally (it was stripped of those
/// characters in the message before).
#[test]
fn lookup_checks_compare_and_show_the_expected_value_literally() {
    let inv = inventory_with(DIR, DIR, 2526, "relay.example.org", true);
    let home = new_keys("home.example.net");
    let mut plan = plan_for(&inv, "relay", &fixture_facts(FRESH), &home);
    let expected = r#"it's "$HOME" `id` \n $(id)"#;
    match &mut plan.steps {
        crate::mta::Steps::Postfix(s) => {
            s.lookups = vec![Lookup {
                table: "transport".into(),
                key: "example.net".into(),
                expected: expected.into(),
                wrapper: false,
            }];
        }
        _ => unreachable!("a Postfix plan"),
    }
    let script = apply_script(&plan);
    let text = script.text();
    let start = text
        .find("step='postmap -q example.net")
        .expect("lookup step");
    let end = start
        + text[start..]
            .find("expected '$want'\"\n")
            .expect("its check")
        + 18;
    let check = &text[start..end];
    let run = |answer: &str| {
        let stubs = format!(
            "fail() {{ printf '%s\\n' \"$1\"; exit 1; }}\npostmap() {{ printf '%s\\n' {}; }}\n",
            quote(answer)
        );
        let out = Command::new("sh")
            .args(["-c", &format!("{stubs}{check}")])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(run(expected), (true, String::new()), "{check}");
    assert_eq!(
        run("smtp:other"),
        (
            false,
            format!("found 'smtp:other', expected '{expected}'\n")
        ),
        "{check}"
    );
}
