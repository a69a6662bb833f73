//! Round trips: apply's main.cf that Postfix reads at once, the read-back
//! in the apply script, and verify's checks in the first read (issue 15).
//! Run for real by `sh` against temporary copies of /etc/postfix.

use super::*;

/// Postfix re-reads a main.cf written less than about 2 s ago, dozing
/// 300 ms each time; apply swaps in a main.cf that is already older than
/// that (written completely, then back-dated before the rename), so the
/// validation, the reload and the next read never wait for it.
#[test]
fn live_apply_swaps_in_a_main_cf_postfix_reads_at_once() {
    require_root_and_postfix!();
    let lab = Lab::new();
    let inv = inventory(&lab.conf, true);
    let home = new_keys("home.example.net");
    let started = SystemTime::now();
    let plan = converge(&inv, &lab, "relay", &home);
    assert!(
        main_cf_change(&plan).is_some(),
        "the apply rewrites main.cf"
    );
    let mtime = std::fs::metadata(lab.path("main.cf"))
        .unwrap()
        .modified()
        .unwrap();
    // Written by this apply (the lab's main.cf was an hour old)...
    assert!(mtime > started - Duration::from_secs(60), "{mtime:?}");
    // ...and already cool for Postfix's dict_load_file.
    assert!(
        mtime <= SystemTime::now() - Duration::from_secs(2),
        "{mtime:?}"
    );
}

/// The relay's plan to become home's backup, from a read of the lab's
/// configuration, with the verify checks apply's read-back runs.
fn backup_plan_and_checks(lab: &Lab) -> (HostPlan, Host, String) {
    let inv = inventory(&lab.conf, true);
    let before = capture(&lab.conf);
    let plan = plan_for(&inv, "relay", &before, &new_keys("home.example.net"));
    let extra = crate::mta::verify_snippet(&plan, &crate::mta::Facts::Postfix(before), &inv);
    (plan, host_at(&lab.conf), extra)
}

/// Apply reads the host back in the same remote command: what it reads,
/// with the checks, is what a separate read finds; a failed apply reads
/// nothing back.
#[test]
fn live_apply_reads_the_host_back_in_the_same_command() {
    require_root_and_postfix!();
    let lab = Lab::new();
    let (plan, host, extra) = backup_plan_and_checks(&lab);
    let out = run_sh_s(crate::mta::apply_and_read_script(&plan, &host, &extra).text());
    let (verdict, back) = crate::mta::split_read_back(&out.stdout);
    assert_eq!(
        parse_result(std::str::from_utf8(verdict).unwrap()),
        Some(ApplyResult::Applied)
    );
    let back = facts_from(back.expect("read back")).unwrap();
    let again = capture(&lab.conf);
    assert_eq!(back.main_cf, again.main_cf);
    let ls = |f: &PostfixFacts| -> Vec<(String, String)> {
        f.files
            .iter()
            .map(|(k, v)| (k.clone(), v.ls.clone()))
            .collect()
    };
    assert_eq!(ls(&back), ls(&again));
    assert_eq!(back.fresh, again.fresh);
    let back = crate::mta::Facts::Postfix(back);
    assert!(crate::mta::checks_ran(&plan, &back), "the checks ran");
    assert!(!crate::mta::checks_ran(
        &plan,
        &crate::mta::Facts::Postfix(again)
    ));
    let checks = crate::mta::route_checks(&plan, &back);
    assert!(
        checks
            .iter()
            .filter(|c| c.kind == crate::verify::Kind::Lookup)
            .all(|c| c.ok),
        "{checks:?}"
    );

    // The lab's main.cf changed since this plan was made: refused, no facts.
    let (verdict, back) = {
        let out = run_sh_s(crate::mta::apply_and_read_script(&plan, &host, &extra).text());
        let (v, b) = crate::mta::split_read_back(&out.stdout);
        (v.to_vec(), b.map(<[u8]>::to_vec))
    };
    assert!(matches!(
        parse_result(std::str::from_utf8(&verdict).unwrap()),
        Some(ApplyResult::Failed { .. })
    ));
    assert_eq!(back, None);
}

/// verify's first read runs, from the host's own tables, the checks the
/// plan's snippet would run: same names, same lookups, so a converged
/// backup needs no second read.
#[test]
fn live_first_read_of_verify_runs_the_checks_of_the_converged_plan() {
    require_root_and_postfix!();
    let lab = Lab::new();
    let inv = inventory(&lab.conf, true);
    let home = new_keys("home.example.net");
    converge(&inv, &lab, "relay", &home);
    let host = host_at(&lab.conf);
    let digest = inv.settings.digest.as_str();
    let out = run_sh_s(&crate::mta::postfix::facts_script_with(
        &host,
        &crate::mta::postfix::hold_checks(digest),
    ));
    let first = facts_from(&out.stdout).unwrap();
    let plan = plan_for(&inv, "relay", &first, &home);
    assert_converged(&plan);
    let first = crate::mta::Facts::Postfix(first);
    assert!(
        crate::mta::checks_ran(&plan, &first),
        "no second read needed"
    );
    let snippet = crate::mta::verify_snippet(&plan, &first, &inv);
    let second =
        facts_from(&run_sh_s(&crate::mta::postfix::facts_script_with(&host, &snippet)).stdout)
            .unwrap();
    let crate::mta::Facts::Postfix(first) = first else {
        unreachable!()
    };
    let lookups = |f: &PostfixFacts| -> Vec<(String, String)> {
        f.checks
            .iter()
            .filter(|(k, _)| k.starts_with("q:"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(lookups(&first), lookups(&second));
    assert_eq!(
        first.checks.keys().collect::<Vec<_>>(),
        second.checks.keys().collect::<Vec<_>>()
    );
}

/// The read-back takes the lookups the apply script checked moments
/// before, in the same shell (`validated`), instead of running the same
/// `postmap -q` again; no other read takes them, not even from the host's
/// environment.
#[test]
fn live_read_back_takes_the_lookups_the_apply_checked_and_no_other_read_does() {
    require_root_and_postfix!();
    let lab = Lab::new();
    let (plan, host, extra) = backup_plan_and_checks(&lab);
    let crate::mta::Steps::Postfix(steps) = &plan.steps else {
        unreachable!()
    };
    let lookup = steps
        .lookups
        .iter()
        .find(|l| l.table == "transport")
        .expect("a backup route");
    let name = format!("q:transport:{}", lookup.key);
    let script = crate::mta::apply_and_read_script(&plan, &host, &extra)
        .text()
        .to_string();
    let call = "mxpin_apply; printf '%s\\n' @@mxpin-read-back; mxpin_facts\n";
    assert!(script.ends_with(call));
    // One answer the apply recorded, replaced after it ran: the read-back
    // reports the replacement, so it did not ask postmap.
    let forged = script.replace(
        call,
        &format!(
            "mxpin_apply; validated=\"$NL\"{}\"$validated\"; printf '%s\\n' @@mxpin-read-back; mxpin_facts\n",
            crate::shell::quote(&format!("{name}\tforged"))
        ),
    );
    let out = run_sh_s(&forged);
    let (verdict, back) = crate::mta::split_read_back(&out.stdout);
    assert_eq!(
        parse_result(std::str::from_utf8(verdict).unwrap()),
        Some(ApplyResult::Applied)
    );
    let back = facts_from(back.expect("read back")).unwrap();
    assert_eq!(back.checks.get(&name).map(String::as_str), Some("forged"));

    // A read that follows no apply asks postmap, whatever its environment
    // holds.
    let mut cmd = Command::new("sh");
    cmd.arg("-s")
        .env("validated", format!("\n{name}\tforged"))
        .env("NL", "\n");
    let out = feed(cmd, &crate::mta::postfix::facts_script_with(&host, &extra));
    let read = facts_from(&out.stdout).unwrap();
    assert_eq!(
        read.checks.get(&name).map(String::as_str),
        Some(lookup.expected.as_str())
    );
}
