//! The domains whose deferred mail apply retries right after the reload
//! (`exim -Rrf`): decided by the pure planner, run by the script only after
//! a successful reload, in the background.

use std::collections::BTreeMap;

use super::*;
use crate::mta::FoundFile;

/// relay (Exim) backs up example.net for home and example.com for other.
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
mta = "exim"
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

fn new_keys(mx: &str) -> StoredKeys {
    crate::mta::testing::new_keys(mx, now())
}

/// Plans relay with `f`, every other host with its own stored keys.
fn plan_with(inv: &Inventory, f: &EximFacts, keys: &BTreeMap<&str, StoredKeys>) -> HostPlan {
    plan_relay_keyed(inv, f, &|h| keys[h].clone()).unwrap()
}

/// An `ls -ln` line for a file of `mode`, root and group `gid`.
fn ls(mode: u32, gid: u32, name: &str) -> String {
    let bit = |m: u32, c: char| if mode & m != 0 { c } else { '-' };
    let perms: String = [
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        '-',
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        '-',
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        '-',
    ]
    .iter()
    .collect();
    format!("-{perms} 1 0 {gid} 512 Nov 22 12:00 {name}")
}

/// Facts as they would read after `plan` was applied (single layout).
pub(super) fn simulate_apply(f: &EximFacts, plan: &HostPlan) -> EximFacts {
    let mut f = f.clone();
    for c in &plan.changes {
        if c.path == f.config_file {
            f.config = c.new.as_ref().map(|n| n.raw().to_string());
            continue;
        }
        let name = c.path.rsplit('/').next().unwrap().to_string();
        match &c.new {
            None => {
                f.files.remove(&name);
            }
            Some(content) => {
                let ls = ls(c.mode, c.group, &name);
                f.files.insert(
                    name,
                    FoundFile {
                        content: content.clone(),
                        ls,
                    },
                );
            }
        }
    }
    f
}

fn steps(plan: &HostPlan) -> &super::super::ApplySteps {
    match &plan.steps {
        crate::mta::Steps::Exim(s) => s,
        _ => panic!("not an Exim plan"),
    }
}

fn flush_of(plan: &HostPlan) -> Vec<String> {
    let mut v = steps(plan).flush.clone();
    v.sort();
    v
}

fn queue_runs(plan: &HostPlan) -> Vec<&str> {
    plan.commands
        .iter()
        .map(String::as_str)
        .filter(|c| c.contains(" -R"))
        .collect()
}

#[test]
fn a_new_backup_role_flushes_its_domain_after_the_reload() {
    let inv = lab();
    let f = exim("facts-relay-fresh.out").unwrap();
    assert!(f.running);
    let plan = plan_relay(&inv, &f).unwrap();
    assert_eq!(flush_of(&plan), ["example.net"]);
    let hup = plan
        .commands
        .iter()
        .position(|c| c.starts_with("kill -HUP"))
        .unwrap();
    assert_eq!(
        plan.commands[hup + 1..],
        [r"/usr/sbin/exim4 -Rrf '@(example\.net)$' (in the background)"]
    );

    // A stopped Exim is neither signalled nor made to deliver.
    let mut stopped = f.clone();
    stopped.running = false;
    let plan = plan_relay(&inv, &stopped).unwrap();
    assert!(flush_of(&plan).is_empty() && queue_runs(&plan).is_empty());
    assert!(!super::super::script::apply_script(&plan)
        .text()
        .contains("-Rrf"));
}

#[test]
fn a_pin_change_flushes_the_domain_and_an_unrelated_change_does_not() {
    let keys = BTreeMap::from([
        ("home", new_keys("home.example.net")),
        ("other", new_keys("mx.example.com")),
    ]);
    let inv = two_primaries(r#""first.last@example.net""#);
    let f = exim("facts-relay-fresh.out").unwrap();
    let first = plan_with(&inv, &f, &keys);
    assert_eq!(flush_of(&first), ["example.com", "example.net"]);
    assert_eq!(
        queue_runs(&first),
        [r"/usr/sbin/exim4 -Rrf '@(example\.com|example\.net)$' (in the background)"]
    );
    let f = simulate_apply(&f, &first);
    let again = plan_with(&inv, &f, &keys);
    assert!(again.is_empty(), "{:?}", again.changes);
    assert!(flush_of(&again).is_empty() && again.commands.is_empty());

    // home's keys change: its trust file and pins change, example.net is
    // flushed; mail for example.com keeps its retry schedule.
    let mut rekeyed = keys.clone();
    rekeyed.insert("home", new_keys("home.example.net"));
    let plan = plan_with(&inv, &f, &rekeyed);
    let mut changed: Vec<&str> = plan.changes.iter().map(|c| c.path.as_str()).collect();
    changed.sort();
    assert_eq!(
        changed,
        [
            "/etc/exim4/mxpin/peer-home.example.net.pem",
            "/etc/exim4/mxpin/pins"
        ]
    );
    assert_eq!(flush_of(&plan), ["example.net"]);
    assert_eq!(
        queue_runs(&plan),
        [r"/usr/sbin/exim4 -Rrf '@(example\.net)$' (in the background)"]
    );
    // Pins and trust files are read on each delivery: no SIGHUP.
    assert!(!plan.steps.exim().reload, "{:?}", plan.commands);
    let text = super::super::script::apply_script(&plan).text().to_string();
    assert!(!text.contains("step=reload"), "{text}");
    assert!(text.contains("reload_after_rollback() { :; }"));

    // A recipient added changes what relay accepts, not where it sends.
    let more = two_primaries(r#""first.last@example.net", "second@example.net""#);
    let plan = plan_with(&more, &f, &keys);
    let changed: Vec<&str> = plan.changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(changed, ["/etc/exim4/mxpin/relay_recipients"]);
    assert!(flush_of(&plan).is_empty());
    // Read on each lookup: the daemon is not signalled (a SIGHUP would
    // close its port while it re-executes itself).
    assert!(!plan.commands.iter().any(|c| c.starts_with("kill -HUP")));
    assert!(!plan.steps.exim().reload);
    assert!(queue_runs(&plan).is_empty(), "{:?}", plan.commands);

    // A primary on another port: only its domain's route changes.
    let mut moved = two_primaries(r#""first.last@example.net""#);
    let other = moved
        .hosts
        .iter()
        .position(|h| h.name.as_str() == "other")
        .unwrap();
    moved.hosts[other].smtp_port = 2525;
    let plan = plan_with(&moved, &f, &keys);
    assert_eq!(flush_of(&plan), ["example.com"]);

    // relay stops backing up example.com: its mail is retried (it now
    // goes where Exim's other routers send it).
    let text = r#"
[hosts.home]
ssh = "home"
mx = "home.example.net"

[hosts.other]
ssh = "other"
mx = "mx.example.com"

[hosts.relay]
mta = "exim"
ssh = "relay"
mx = "relay.example.org"

[domains."example.net"]
primary = "home"
backups = ["relay"]
recipients = ["first.last@example.net"]
"#;
    let fewer = inventory::parse(Path::new("mxpin.toml"), text).unwrap();
    let plan = plan_with(&fewer, &f, &keys);
    assert_eq!(flush_of(&plan), ["example.com"]);
}

#[test]
fn the_script_starts_the_queue_run_only_after_the_reload() {
    let inv = lab();
    let f = exim("facts-relay-fresh.out").unwrap();
    let plan = plan_relay(&inv, &f).unwrap();
    let script = super::super::script::apply_script(&plan);
    let text = script.text();
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the script"))
    };
    let reload = at("reload_exim || fail");
    let ok = at("printf '@@mxpin-ok\\n'");
    // Detached, and without the lock descriptor (fd 9): a long queue run
    // must not hold the host's lock.
    let run = at(
        r#"$S sh -c '"$1" -Rrf "$2"; sleep 2; "$1" -Rrf "$2"' flush "$X" '@(example\.net)$' </dev/null >/dev/null 2>&1 9<&- &"#,
    );
    assert!(reload < ok && ok < run);
    assert!(!text[ok..].contains("fail "), "{}", &text[ok..]);
    assert!(!text.contains("-Rff") && !text.contains("-qff"));
    // Only while the daemon runs.
    assert!(
        text[ok..run].contains("if daemon_pid '/run/exim4/exim.pid'; then"),
        "{}",
        &text[ok..]
    );
    let rollback = at("reload_after_rollback() {");
    let rollback_end = rollback + text[rollback..].find('}').unwrap();
    assert!(!text[rollback..rollback_end].contains("-R"));
    assert!(text.ends_with("fi\n}\nmxpin_apply\n"), "{}", &text[ok..]);
    let out = std::process::Command::new("sh")
        .args(["-n", "-c", text])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn the_selection_is_anchored_on_the_whole_domain() {
    let re = super::super::drain::select_regex(&["example.net".into(), "b-c.example".into()]);
    assert_eq!(re, r"@(example\.net|b-c\.example)$");
}
