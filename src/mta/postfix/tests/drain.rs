//! The domains whose deferred mail apply retries right after the reload
//! (`postqueue -s`): decided by the pure planner, run by the script only
//! after a successful reload.

use super::*;

/// `f`, with Postfix running (only then is anything reloaded or flushed).
fn running(mut f: PostfixFacts) -> PostfixFacts {
    f.running = true;
    f
}

/// Writes an executable shell script `name` into `dir`.
fn fake_bin(dir: &std::path::Path, name: &str, script: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{script}")).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// Points the queue directory's master pid file (Postfix's format: the pid
/// right-aligned in ten columns) at `pid`.
fn master_pid(queue: &std::path::Path, pid: u32) {
    std::fs::create_dir_all(queue.join("pid")).unwrap();
    std::fs::write(queue.join("pid/master.pid"), format!("{pid:>10}\n")).unwrap();
}

/// Runs `body` after the apply script's `running` and `reload_postfix`,
/// with `bin` first on the PATH and `Q` the queue directory.
fn with_running(
    bin: &std::path::Path,
    queue: &std::path::Path,
    body: &str,
) -> std::process::Output {
    sh(&format!(
        "PATH={}:$PATH; C=/etc/postfix; Q={}\n{}{}{body}",
        quote(bin.to_str().unwrap()),
        quote(queue.to_str().unwrap()),
        crate::facts::DAEMON_PID,
        crate::mta::postfix::script::RUNNING,
    ))
}

fn flush_of(plan: &HostPlan) -> Vec<String> {
    let mut v = plan.steps.postfix().flush.clone();
    v.sort();
    v
}

fn postqueue_commands(plan: &HostPlan) -> Vec<&str> {
    plan.commands
        .iter()
        .map(String::as_str)
        .filter(|c| c.starts_with("postqueue"))
        .collect()
}

/// relay backs up example.net for home and example.com for `other`
/// (another primary), each host with its own keys.
fn two_primaries(recipients: &str) -> Inventory {
    let text = format!(
        r#"
[hosts.home]
ssh = "home"
mx = "home.example.net"

[hosts.other]
ssh = "other"
mx = "mx.example.com"

[hosts.relay]
ssh = "relay"
mx = "relay.example.org"

[domains."example.net"]
primary = "home"
backups = ["relay"]
recipients = [{recipients}]

[domains."example.com"]
primary = "other"
backups = ["relay"]
"#
    );
    inventory::parse(Path::new("mxpin.toml"), &text).unwrap()
}

/// Plans `target` with `facts`, every other host with its own stored keys.
fn plan_with(
    inv: &Inventory,
    target: &str,
    facts: &PostfixFacts,
    keys: &BTreeMap<&str, StoredKeys>,
) -> HostPlan {
    try_plan_keyed(inv, target, facts, &|h| keys[h].clone()).unwrap()
}

#[test]
fn a_new_backup_role_flushes_its_domains_after_the_reload() {
    let inv = inventory(DIR, true);
    let f = running(fixture_facts(FRESH));
    let plan = plan_for(&inv, "relay", &f, &new_keys("home.example.net"));
    assert_eq!(flush_of(&plan), ["example.com", "example.net"]);
    let reload = plan
        .commands
        .iter()
        .position(|c| c == &reload_line(&f))
        .unwrap();
    let first = plan
        .commands
        .iter()
        .position(|c| c.starts_with("postqueue"))
        .unwrap();
    assert!(reload < first, "{:?}", plan.commands);
    let mut shown = postqueue_commands(&plan);
    shown.sort();
    assert_eq!(
        shown,
        [
            "postqueue -c /etc/postfix -s example.com",
            "postqueue -c /etc/postfix -s example.net"
        ]
    );
    assert!(render_host(&plan, crate::plan::PinStyle::SHA256_KEY)
        .contains("    postqueue -c /etc/postfix -s example.net\n"));

    // Not running: neither reloaded nor flushed.
    let plan = plan_for(
        &inv,
        "relay",
        &fixture_facts(FRESH),
        &new_keys("home.example.net"),
    );
    assert!(flush_of(&plan).is_empty());
    assert!(postqueue_commands(&plan).is_empty(), "{:?}", plan.commands);
    assert!(!apply_script(&plan).text().contains("postqueue"));
}

#[test]
fn a_pin_change_flushes_the_domain_and_an_unrelated_change_does_not() {
    let keys = BTreeMap::from([
        ("home", new_keys("home.example.net")),
        ("other", new_keys("mx.example.com")),
    ]);
    let inv = two_primaries(r#""first.last@example.net""#);
    let f = running(fixture_facts(FRESH));
    let first = plan_with(&inv, "relay", &f, &keys);
    assert_eq!(flush_of(&first), ["example.com", "example.net"]);
    let f = simulate_apply(&f, &first);
    assert_converged(&plan_with(&inv, "relay", &f, &keys));

    // home's key changes: only example.net is re-pinned, and flushed; the
    // mail relay holds for example.com keeps its retry schedule.
    let mut rekeyed = keys.clone();
    rekeyed.insert("home", new_keys("home.example.net"));
    let plan = plan_with(&inv, "relay", &f, &rekeyed);
    expect_changes(
        &plan,
        &[(owned(DIR, "tls_policy"), Action::Modify, 0o644, false)],
    );
    assert_eq!(flush_of(&plan), ["example.net"]);
    assert_eq!(
        postqueue_commands(&plan),
        ["postqueue -c /etc/postfix -s example.net"]
    );

    // A recipient added changes what relay accepts, not where it sends.
    let more = two_primaries(r#""first.last@example.net", "second@example.net""#);
    let plan = plan_with(&more, "relay", &f, &keys);
    expect_changes(
        &plan,
        &[(owned(DIR, "relay_recipients"), Action::Modify, 0o644, false)],
    );
    assert!(flush_of(&plan).is_empty());
    assert!(plan.commands.contains(&reload_line(&f)));
    assert!(postqueue_commands(&plan).is_empty(), "{:?}", plan.commands);
    assert!(!apply_script(&plan).text().contains("postqueue"));

    // A domain moving to another primary is flushed (its route changes);
    // the other keeps its route.
    let mut m = two_primaries(r#""first.last@example.net""#);
    let other = m
        .hosts
        .iter()
        .position(|h| h.name.as_str() == "other")
        .unwrap();
    m.hosts[other].smtp_port = 2525;
    let plan = plan_with(&m, "relay", &f, &keys);
    assert_eq!(flush_of(&plan), ["example.com"]);
}

#[test]
fn a_backup_role_that_ends_flushes_its_old_domains() {
    let (home_dir, dir) = (fixture_dir("home"), fixture_dir("relay"));
    let f = running(fixture_facts(RELAY_APPLIED));
    let inv = inventory_with(&home_dir, &dir, 25, "relay.example.org", false);
    let plan = plan_for(&inv, "relay", &f, &StoredKeys::default());
    assert_eq!(flush_of(&plan), ["example.com", "example.net"]);
}

#[test]
fn a_stale_policy_database_counts_as_a_pin_change() {
    let inv = inventory_with(
        &fixture_dir("home"),
        &fixture_dir("relay"),
        25,
        "relay.example.org",
        true,
    );
    let home = fixture_facts(HOME_APPLIED);
    let relay = running(fixture_facts(RELAY_APPLIED));
    assert_converged(&plan_for(&inv, "relay", &relay, &home.stored_keys()));
    // Postfix reads an older database than the table says.
    let mut stale = relay.clone();
    stale.fresh.insert("tls_policy".into(), vec![]);
    let plan = plan_for(&inv, "relay", &stale, &home.stored_keys());
    assert!(plan.changes.is_empty());
    assert_eq!(flush_of(&plan), ["example.com", "example.net"]);
    // A stale recipient table does not.
    let mut stale = relay.clone();
    stale.fresh.insert("relay_recipients".into(), vec![]);
    let plan = plan_for(&inv, "relay", &stale, &home.stored_keys());
    assert!(!plan.steps.postfix().postmap.is_empty());
    assert!(flush_of(&plan).is_empty());
}

#[test]
fn the_script_flushes_only_after_the_reload_and_never_on_rollback() {
    let inv = inventory(DIR, true);
    let f = running(fixture_facts(FRESH));
    let plan = plan_for(&inv, "relay", &f, &new_keys("home.example.net"));
    let script = apply_script(&plan);
    let text = script.text();
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the script"))
    };
    let reload = at("out=$(reload_postfix 2>&1) || fail \"$out\"");
    let ok = at("printf '@@mxpin-ok\\n'");
    let flush = at("flush_domain 'example.net' ");
    assert!(
        reload < ok && ok < flush,
        "flush after the reload and the verdict"
    );
    assert_eq!(text.matches("postqueue -c \"$C\" -s \"$1\"").count(), 1);
    assert!(!text.contains("postqueue -f") && !text.contains("postqueue -c \"$C\" -f"));
    // Everything the flush runs sits after the verdict: no `fail` (which
    // would roll back) there.
    assert!(!text[ok..].contains("fail "), "{}", &text[ok..]);
    let rollback = at("reload_after_rollback() {");
    let rollback_end = rollback + text[rollback..].find("\n}\n").unwrap();
    assert!(!text[rollback..rollback_end].contains("postqueue"));
    assert!(text.contains(r#"flush_domain 'example.net' '"address": *"[^"]*@example\.net"'"#));
    assert!(text.ends_with("fi\n}\nmxpin_apply\n"), "{}", &text[ok..]);
    // The whole script parses.
    let out = sh(&format!("printf '%s' {} | sh -n", quote(text)));
    assert!(out.status.success(), "{out:?}");
}

/// The flush itself, with a fake `postqueue` on the PATH and a master pid
/// file naming a live process (no `postfix status`): `-s`
/// when the fast flush service takes the domain; otherwise the deferred
/// messages with a recipient in the domain, by queue ID, reported on a
/// `@@mxpin-note` line; never anything else, and never a failed apply.
#[test]
fn the_flush_falls_back_to_queue_ids_of_the_domain_only() {
    let inv = inventory(DIR, true);
    let f = running(fixture_facts(FRESH));
    let plan = plan_for(&inv, "relay", &f, &new_keys("home.example.net"));
    let text = apply_script(&plan).text().to_string();
    let ok = text.find("printf '@@mxpin-ok\\n'").unwrap();
    let body = &text[ok..text.rfind("}\nmxpin_apply").unwrap()];

    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("calls");
    let json = [
        r#"{"queue_name": "deferred", "queue_id": "AAA1", "recipients": [{"address": "first.last@example.net", "delay_reason": "x"}]}"#,
        r#"{"queue_name": "deferred", "queue_id": "BBB2", "recipients": [{"address": "someone@down.example", "delay_reason": "x"}]}"#,
        r#"{"queue_name": "deferred", "queue_id": "CCC3", "recipients": [{"address": "a@example.network", "delay_reason": "x"}]}"#,
        r#"{"queue_name": "hold", "queue_id": "DDD4", "recipients": [{"address": "b@example.net", "delay_reason": "x"}]}"#,
        r#"{"queue_name": "deferred", "queue_id": "EEE5", "recipients": [{"address": "c@EXAMPLE.COM", "delay_reason": "x"}]}"#,
    ]
    .join("\n");
    fake_bin(
        bin.path(),
        "postqueue",
        &format!(
            "echo \"$*\" >> {log}\ncase \"$3\" in\n\
             -s) if [ \"$4\" = example.com ]; then exit 0; fi\n\
                 echo 'postqueue: fatal: Flush service is not configured for destination \"'$4'\"' >&2; exit 69 ;;\n\
             -j) cat <<'EOF'\n{json}\nEOF\n ;;\nesac\nexit 0\n",
            log = quote(log.to_str().unwrap()),
        ),
    );
    // Postfix runs: its master's pid file names a live process (this one).
    let queue = tempfile::tempdir().unwrap();
    master_pid(queue.path(), std::process::id());
    let out = with_running(bin.path(), queue.path(), body);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut calls: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    calls.sort();
    assert_eq!(
        calls,
        [
            "-c /etc/postfix -i AAA1",
            "-c /etc/postfix -j",
            "-c /etc/postfix -s example.com",
            "-c /etc/postfix -s example.net",
        ]
    );
    assert_eq!(
        stdout,
        "@@mxpin-ok\n@@mxpin-note flush example.net: postqueue -s failed (postqueue: fatal: \
         Flush service is not configured for destination \"example.net\"); 1 deferred \
         message retried by queue ID\n"
    );
    assert_eq!(parse_result(&stdout), Some(ApplyResult::Applied));
}

/// With nothing deferred there is nothing to retry: no `postqueue` runs
/// (nor the flush daemon it would start). Postfix's empty hash directories
/// do not count; a queue file in one does, and so does anything else in
/// the deferred queue, or a queue without a deferred directory.
#[test]
fn the_flush_runs_only_when_the_deferred_queue_holds_mail() {
    let inv = inventory(DIR, true);
    let f = running(fixture_facts(FRESH));
    let plan = plan_for(&inv, "relay", &f, &new_keys("home.example.net"));
    let text = apply_script(&plan).text().to_string();
    let ok = text.find("printf '@@mxpin-ok\\n'").unwrap();
    let body = &text[ok..text.rfind("}\nmxpin_apply").unwrap()];
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("calls");
    fake_bin(
        bin.path(),
        "postqueue",
        &format!("echo \"$*\" >> {}\nexit 0\n", quote(log.to_str().unwrap())),
    );
    let queue = tempfile::tempdir().unwrap();
    master_pid(queue.path(), std::process::id());
    let calls = || {
        let out = with_running(bin.path(), queue.path(), body);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "@@mxpin-ok\n");
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        calls.lines().count()
    };
    let deferred = queue.path().join("deferred");
    // No deferred directory: not a queue this knows, so it flushes.
    assert_eq!(calls(), 2);
    for d in ["0", "A", "F"] {
        std::fs::create_dir_all(deferred.join(d)).unwrap();
    }
    assert_eq!(calls(), 0, "empty hash directories");
    std::fs::write(deferred.join("A/4FD1C2B0A7"), "").unwrap();
    assert_eq!(calls(), 2, "a deferred message");
    std::fs::remove_file(deferred.join("A/4FD1C2B0A7")).unwrap();
    std::fs::create_dir_all(deferred.join("A/B")).unwrap();
    assert_eq!(calls(), 2, "a deeper hash level");
    std::fs::remove_dir(deferred.join("A/B")).unwrap();
    std::fs::write(deferred.join("4FD1C2B0A7"), "").unwrap();
    assert_eq!(calls(), 2, "no hashing");
    std::fs::remove_file(deferred.join("4FD1C2B0A7")).unwrap();
    assert_eq!(calls(), 0);
}

/// The reload signals Postfix's master and nothing else: SIGHUP to the pid
/// in `$Q/pid/master.pid` when that process is named `master`; `postfix
/// reload` (a fake here, which logs its call) when it has another name; and
/// nothing when the pid file names no live process.
#[test]
fn the_reload_signals_only_a_process_named_master() {
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("calls");
    fake_bin(
        bin.path(),
        "postfix",
        &format!("echo \"$*\" >> {}\n", quote(log.to_str().unwrap())),
    );
    // A process named `master`: a copy of sleep, whose default action on
    // SIGHUP is to end.
    let master = bin.path().join("master");
    std::fs::copy("/bin/sleep", &master).unwrap();
    let queue = tempfile::tempdir().unwrap();
    let reload = |pid: u32| {
        master_pid(queue.path(), pid);
        let out = with_running(
            bin.path(),
            queue.path(),
            "if running; then reload_postfix; echo reloaded; fi",
        );
        assert!(out.status.success(), "{out:?}");
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        (String::from_utf8(out.stdout).unwrap(), calls)
    };
    let mut named_master = std::process::Command::new(&master)
        .arg("30")
        .spawn()
        .unwrap();
    let (said, calls) = reload(named_master.id());
    assert_eq!((said.as_str(), calls.as_str()), ("reloaded\n", ""));
    let status = named_master.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(1),
        "SIGHUP ends it: {status:?}"
    );

    // A live process with another name (a pid file left behind, its pid
    // reused): never signalled; `postfix reload` decides.
    let mut stranger = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let (said, calls) = reload(stranger.id());
    assert_eq!(
        (said.as_str(), calls.as_str()),
        ("reloaded\n", "-c /etc/postfix reload\n")
    );
    assert!(stranger.try_wait().unwrap().is_none(), "left alone");
    stranger.kill().unwrap();
    let gone = stranger.id();
    stranger.wait().unwrap();

    // No live process: Postfix does not run; nothing is reloaded.
    assert_eq!(reload(gone), (String::new(), String::new()));
}
