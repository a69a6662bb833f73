//! End to end: the real mxpin binary against real sshd + Postfix hosts.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use common::{wait_for, Lab};

const HIDDEN: &str = "(private key, content hidden)";

fn inv(lab: &Lab) -> String {
    lab.inventory().to_str().unwrap().to_string()
}

fn assert_no_secret(run: &common::Run) {
    assert!(
        !run.stdout.contains("PRIVATE KEY") && !run.stderr.contains("PRIVATE KEY"),
        "a private key reached the output: {run:?}"
    );
}

/// The whole promise of issue 2 on one lab: a dry run that changes nothing,
/// an apply that pins, verified delivery, refusal of unknown recipients,
/// and a second run that has nothing to do.
#[test]
fn plan_apply_and_pinned_delivery() {
    let Some(lab) = Lab::up() else { return };
    let inv = inv(&lab);
    let before = lab.snapshot();

    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "plan with pending changes exits 2: {plan:?}");
    assert!(
        plan.stdout.contains("/etc/postfix/mxpin/current.key"),
        "{plan:?}"
    );
    assert!(plan.stdout.contains(HIDDEN), "{plan:?}");
    assert!(
        plan.stdout.ends_with("2 of 2 hosts would change.\nKeys shown as new are examples generated for this plan; apply generates the ones it installs.\n"),
        "{plan:?}"
    );
    assert!(
        plan.stdout
            .contains("+relay_recipient_maps = hash:/etc/postfix/mxpin/relay_recipients"),
        "{plan:?}"
    );
    assert_no_secret(&plan);
    let json = lab.mxpin(&["plan", "-i", &inv, "--json"]);
    assert_eq!(json.code, 2, "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("plan --json is JSON");
    assert_eq!(v["changes_pending"], true);
    assert_no_secret(&json);
    assert!(
        lab.snapshot() == before,
        "plan must leave every host byte-identical"
    );

    let unconfirmed = lab.mxpin(&["apply", "-i", &inv]);
    assert_eq!(unconfirmed.code, 1, "{unconfirmed:?}");
    assert!(unconfirmed.stderr.contains("pass --yes"), "{unconfirmed:?}");
    assert!(
        lab.snapshot() == before,
        "unconfirmed apply changes nothing"
    );

    let apply = lab.mxpin(&["apply", "--yes", "--json", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert_no_secret(&apply);
    let v: serde_json::Value =
        serde_json::from_str(&apply.stdout).expect("apply --json is one JSON document");
    for host in v["applied"].as_array().unwrap() {
        assert_eq!(host["status"], "applied", "{host}");
        assert_eq!(host["converged"], true, "{host}");
    }
    assert_eq!(v["plan"]["changes_pending"], true);
    let checks = v["checks"].as_array().expect("apply verifies");
    assert!(checks.iter().all(|c| c["ok"] == true), "{checks:?}");
    assert!(
        checks
            .iter()
            .any(|c| c["what"].as_str().unwrap().starts_with(
                "posttls-finger on relay: Verified TLS connection to [home.example.net]:25"
            )),
        "{checks:?}"
    );
    for host in ["home", "relay"] {
        for key in ["current.key", "next.key"] {
            let meta = std::fs::metadata(lab.postfix_dir(host).join("mxpin").join(key)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{host} {key}");
        }
    }

    let again = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(again.code, 0, "second plan has nothing to do: {again:?}");
    assert!(again.stdout.contains("No changes"), "{again:?}");
    let settled = lab.snapshot();
    let apply2 = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply2.code, 0, "{apply2:?}");
    assert!(lab.snapshot() == settled, "second apply changes nothing");

    let sent = lab.send_to_relay("first.last@example.net", "pinned hello 4711");
    assert_eq!(sent.code, 0, "relay accepts a listed recipient: {sent:?}");
    assert!(
        wait_for(Duration::from_secs(30), || lab
            .delivered()
            .iter()
            .any(|m| m.contains("pinned hello 4711"))),
        "message reaches home's mailbox; relay log:\n{}",
        lab.maillog("relay")
    );
    let log = lab.maillog("relay");
    assert!(
        log.contains("Verified TLS connection established to home.example.net[127.0.0.2]:25"),
        "{log}"
    );
    assert!(!log.contains("status=deferred"), "{log}");
    // Neither smtpd warns: Debian's snakeoil lines (copied into the lab)
    // were emptied beside mxpin's smtpd_tls_chain_files.
    for host in ["home", "relay"] {
        let log = lab.maillog(host);
        assert!(!log.contains("parameters will be ignored"), "{host}: {log}");
        let main_cf = std::fs::read_to_string(lab.postfix_dir(host).join("main.cf")).unwrap();
        assert!(
            main_cf.contains("\nsmtpd_tls_cert_file =\n"),
            "{host}: {main_cf}"
        );
    }

    let refused = lab.send_to_relay("nobody@example.net", "unlisted");
    assert_ne!(refused.code, 0, "unlisted recipient refused: {refused:?}");
    assert!(refused.stdout.contains("550"), "{refused:?}");
}

/// A home server presenting a key nobody pinned gets mail deferred (kept in
/// the relay's queue, not delivered and not bounced); apply puts the pinned
/// key back and the queued mail is then delivered, verified.
#[test]
fn unpinned_key_defers_and_apply_recovers() {
    let Some(lab) = Lab::up() else { return };
    let inv = inv(&lab);
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");

    let swap = lab.ssh(
        "home",
        "set -e; cd /etc/postfix; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
           -subj /CN=home.example.net -keyout impostor.key -out impostor.crt 2>/dev/null; \
         chmod 600 impostor.key; \
         printf 'mxpin.invalid /etc/postfix/impostor.key, /etc/postfix/impostor.crt\\n' > impostor-sni; \
         postconf -e 'smtpd_tls_chain_files = /etc/postfix/impostor.key, /etc/postfix/impostor.crt' \
           'tls_server_sni_maps = texthash:/etc/postfix/impostor-sni'; \
         postfix reload 2>/dev/null",
    );
    assert_eq!(swap.code, 0, "{swap:?}");
    // Postfix notices a fresh main.cf after about a second.
    std::thread::sleep(Duration::from_secs(2));

    let sent = lab.send_to_relay("first.last@example.net", "to an impostor 815");
    assert_eq!(sent.code, 0, "{sent:?}");
    assert!(
        wait_for(Duration::from_secs(30), || lab
            .maillog("relay")
            .contains("status=deferred (Server certificate not verified)")),
        "relay defers: {}",
        lab.maillog("relay")
    );
    assert!(
        !lab.delivered()
            .iter()
            .any(|m| m.contains("to an impostor 815")),
        "nothing delivered to an unpinned key"
    );

    let verify = lab.mxpin(&["verify", "-i", &inv]);
    assert_eq!(verify.code, 1, "{verify:?}");
    assert!(
        verify
            .stderr
            .contains("error: verification failed on: home, relay"),
        "{verify:?}"
    );
    assert!(
        verify
            .stdout
            .contains("which relay does not pin (seen from the controller)"),
        "{verify:?}"
    );
    assert!(
        verify
            .stdout
            .contains("posttls-finger on relay: posttls-finger: Untrusted TLS connection"),
        "{verify:?}"
    );
    // The same, for a monitoring system: typed checks, the failing ones
    // named, and the overall status.
    let json = lab.mxpin(&["verify", "--json", "-i", &inv]);
    assert_eq!(json.code, 1, "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("verify --json is JSON");
    assert_eq!(v["status"], "fail", "{v:#}");
    let checks = v["checks"].as_array().expect("checks");
    let served = checks
        .iter()
        .find(|c| c["kind"] == "served" && c["host"] == "relay")
        .unwrap_or_else(|| panic!("a served check of relay: {v:#}"));
    assert_eq!(served["status"], "fail", "{served:#}");
    assert_eq!(served["peer"], "home", "{served:#}");
    assert_eq!(served["route"], "[home.example.net]:25", "{served:#}");
    assert!(
        served["what"]
            .as_str()
            .unwrap()
            .contains("which relay does not pin"),
        "{served:#}"
    );
    let handshake = checks
        .iter()
        .find(|c| c["kind"] == "handshake" && c["host"] == "relay")
        .unwrap_or_else(|| panic!("a handshake check of relay: {v:#}"));
    assert_eq!(handshake["status"], "fail", "{handshake:#}");

    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "plan sees home's main.cf drift: {plan:?}");
    // The impostor's certificate in smtpd_tls_chain_files is kept as the
    // one everyone gets (mxpin cannot tell it from an admin's own); the
    // map that claims mxpin's SNI name is put behind mxpin's own.
    assert!(
        plan.stdout.contains(
            "+tls_server_sni_maps = texthash:/etc/postfix/mxpin/sni, texthash:/etc/postfix/impostor-sni"
        ),
        "{plan:?}"
    );
    let fix = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(fix.code, 0, "{fix:?}");
    assert!(
        fix.stdout
            .contains("Verified: 1 pinned route and the keys of every host."),
        "{fix:?}"
    );
    let verify = lab.mxpin(&["verify", "-q", "-i", &inv]);
    assert_eq!(verify.code, 0, "{verify:?}");
    let json = lab.mxpin(&["verify", "--json", "-i", &inv]);
    assert_eq!(json.code, 0, "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("verify --json is JSON");
    assert_eq!(v["status"], "ok", "{v:#}");
    let checks = v["checks"].as_array().expect("checks");
    let mut ids = std::collections::BTreeSet::new();
    for c in checks {
        assert_eq!(c["status"], "ok", "{c:#}");
        assert!(
            ids.insert(c["id"].as_str().expect("an id").to_string()),
            "ids are unique: {v:#}"
        );
        assert!(c["kind"].is_string() && c["host"].is_string(), "{c:#}");
    }
    for host in ["home", "relay"] {
        let key = checks
            .iter()
            .find(|c| c["id"] == format!("{host}:key:current"))
            .unwrap_or_else(|| panic!("{host}'s current key: {v:#}"));
        let days = key["days_left"].as_i64().expect("days_left");
        assert!(
            days > 300,
            "a new certificate has most of its life left: {key:#}"
        );
        let not_after = key["not_after"].as_str().expect("not_after");
        assert!(key["what"].as_str().unwrap().contains(not_after), "{key:#}");
    }
    let served = checks
        .iter()
        .find(|c| c["kind"] == "served" && c["host"] == "relay")
        .unwrap_or_else(|| panic!("a served check of relay: {v:#}"));
    assert_eq!(served["route"], "[home.example.net]:25", "{served:#}");
    assert_eq!(served["peer"], "home", "{served:#}");
    assert!(served["days_left"].is_i64(), "{served:#}");
    std::thread::sleep(Duration::from_secs(2));
    let flush = lab.ssh("relay", "postqueue -f");
    assert_eq!(flush.code, 0, "{flush:?}");
    assert!(
        wait_for(Duration::from_secs(30), || lab
            .delivered()
            .iter()
            .any(|m| m.contains("to an impostor 815"))),
        "queued mail delivered after apply: {}",
        lab.maillog("relay")
    );
    assert!(lab
        .maillog("relay")
        .contains("Verified TLS connection established"));
}

/// Remote failures name the host and what failed; healthy hosts are still
/// planned and applied; hosts that depend on a failed host are not.
#[test]
fn remote_failures_are_named_and_change_nothing() {
    let Some(lab) = Lab::up() else { return };
    let text = std::fs::read_to_string(lab.inventory()).unwrap();
    // relay reached as an unprivileged user without sudo; a host that does
    // not resolve.
    let text = text.replace("sudo = true", "sudo = false")
        + "\n[hosts.ghost]\nssh = \"ghost.invalid\"\nmx = \"ghost.example.net\"\n";
    let path = lab.dir.join("broken.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap();
    let before = lab.snapshot();

    let plan = lab.mxpin(&["plan", "-i", path]);
    assert_eq!(plan.code, 1, "{plan:?}");
    // The forgotten `sudo = true`: mxpinlab can read main.cf but not
    // mxpin's keys; the one line names the login and the fix.
    let uid = std::process::Command::new("id")
        .args(["-u", "mxpinlab"])
        .output()
        .unwrap();
    let uid = String::from_utf8_lossy(&uid.stdout).trim().to_string();
    let line = format!(
        "error: relay: connected as mxpinlab (uid {uid}), not root: set sudo = true for this host"
    );
    assert!(plan.stderr.lines().any(|l| l == line), "{line}: {plan:?}");
    assert!(
        plan.stderr.contains("ghost: ssh ghost.invalid:"),
        "{plan:?}"
    );
    assert!(
        plan.stdout.contains("home (6 changes)"),
        "the healthy host is still planned: {plan:?}"
    );
    // --json says at which stage each host failed, and how.
    let json = lab.mxpin(&["plan", "--json", "-i", path]);
    assert_eq!(json.code, 1, "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("plan --json is JSON");
    let host = |name: &str| {
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {v:#}"))
    };
    let relay = host("relay");
    assert_eq!(
        (&relay["status"], &relay["stage"], &relay["kind"]),
        (&"error".into(), &"facts".into(), &"refused".into()),
        "{relay:#}"
    );
    let ghost = host("ghost");
    assert_eq!(
        (&ghost["stage"], &ghost["kind"]),
        (&"connect".into(), &"unreachable".into()),
        "{ghost:#}"
    );
    assert!(host("home")["stage"].is_null(), "{v:#}");

    // Apply goes on with the host it can change: one failing host never
    // stops the others, and the exit status says something failed.
    let apply = lab.mxpin(&["apply", "--yes", "-i", path]);
    assert_eq!(apply.code, 1, "{apply:?}");
    // --yes goes ahead: the plan says what it does, not what it would do.
    assert!(
        apply
            .stdout
            .contains("\nApplying the changes to 1 of 3 hosts.\n")
            && !apply.stdout.contains("would change"),
        "{apply:?}"
    );
    assert!(
        apply.stdout.contains("home: applied 6 changes"),
        "{apply:?}"
    );
    assert!(apply.stderr.lines().any(|l| l == line), "{apply:?}");
    let after = lab.snapshot();
    let changed: Vec<_> = after
        .keys()
        .filter(|p| before.get(*p) != after.get(*p))
        .collect();
    assert!(
        changed
            .iter()
            .all(|p| p.starts_with(lab.postfix_dir("home"))),
        "only home changed: {changed:?}"
    );
    let before = after;

    // A primary that cannot be read leaves its backups unplanned: they must
    // never pin a key mxpin has not seen.
    let text = std::fs::read_to_string(lab.inventory())
        .unwrap()
        .replace("ssh = \"home\"", "ssh = \"mxpinlab@home\"");
    let path = lab.dir.join("unprivileged-home.toml");
    std::fs::write(&path, text).unwrap();
    let plan = lab.mxpin(&["plan", "-i", path.to_str().unwrap()]);
    assert_eq!(plan.code, 1, "{plan:?}");
    assert!(
        plan.stderr
            .contains("relay: not planned: it backs up example.net for home"),
        "{plan:?}"
    );
    assert!(lab.snapshot() == before, "no host changed");
}

/// The `user@host:port` form connects: user and port go to ssh as `-l`
/// and `-p`, never as one destination (the bracketed `[v6]:port` form is
/// split the same way; its parsing has a unit test).
#[test]
fn ssh_user_at_host_colon_port_connects() {
    let Some(lab) = Lab::up() else { return };
    let text = std::fs::read_to_string(lab.inventory())
        .unwrap()
        .replace("ssh = \"home\"", "ssh = \"root@home.example.net:22\"")
        .replace(
            "ssh = \"mxpinlab@relay\"",
            "ssh = \"mxpinlab@relay.example.org:22\"",
        );
    assert!(
        text.contains("root@home.example.net:22") && text.contains("mxpinlab@relay.example.org:22")
    );
    let path = lab.dir.join("ports.toml");
    std::fs::write(&path, text).unwrap();
    let plan = lab.mxpin(&["plan", "-i", path.to_str().unwrap()]);
    assert_eq!(plan.code, 2, "both hosts read, changes pending: {plan:?}");
    assert!(!plan.stderr.contains("error"), "{plan:?}");

    // A host whose key is not in known_hosts: strict checking refuses it,
    // and the one line says what to do.
    let known = lab.dir.join("known_hosts");
    let keys = std::fs::read_to_string(&known).unwrap();
    let without_relay: String = keys
        .lines()
        .filter(|l| {
            !l.split_whitespace()
                .next()
                .unwrap_or_default()
                .contains("relay")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(keys, without_relay, "the lab's known_hosts names relay");
    std::fs::write(&known, without_relay).unwrap();
    let plan = lab.mxpin(&["plan", "-i", path.to_str().unwrap()]);
    assert_eq!(plan.code, 1, "{plan:?}");
    let line = plan
        .stderr
        .lines()
        .find(|l| l.starts_with("error: relay: ssh mxpinlab@relay.example.org:22: "))
        .unwrap_or_else(|| panic!("{plan:?}"));
    assert!(
        line.contains("Host key verification failed")
            && line.ends_with("(ssh to it once, or add its key to known_hosts)"),
        "{line}"
    );
    std::fs::write(&known, keys).unwrap();
}

/// An admin's main.cf with a problem of its own: a parameter defined
/// twice, below a multi-line value mxpin rewrites. Postfix warns about it on
/// every run; plan says so, apply is not blocked, mail through the backup
/// is `Verified`, and the duplicate stays as the admin wrote it.
#[test]
fn a_duplicate_parameter_in_main_cf_does_not_block_apply() {
    let Some(lab) = Lab::up() else { return };
    let inv = lab.inventory().to_str().unwrap().to_string();
    let main_cf = lab.postfix_dir("relay").join("main.cf");
    let admin = format!(
        "{}relay_domains =\n    example.org,\n# retired\n    example.com\n\
         delay_warning_time = 4h\ndelay_warning_time = 2h\n",
        std::fs::read_to_string(&main_cf).unwrap()
    );
    std::fs::write(&main_cf, &admin).unwrap();

    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(
        plan.stdout
            .contains("main.cf defines delay_warning_time 2 times (lines "),
        "{plan:?}"
    );
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let after = std::fs::read_to_string(&main_cf).unwrap();
    assert!(
        after.contains("delay_warning_time = 4h\ndelay_warning_time = 2h\n"),
        "{after}"
    );
    let sent = lab.send_to_relay("first.last@example.net", "despite a duplicate");
    assert_eq!(sent.code, 0, "{sent:?}");
    assert!(wait_for(Duration::from_secs(30), || lab
        .delivered()
        .iter()
        .any(|m| m.contains("despite a duplicate"))));
    assert!(lab
        .maillog("relay")
        .contains("Verified TLS connection established to home.example.net"));
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 0, "{plan:?}");
}

/// Postfix stopped on the primary: verify fails, and the one summary line
/// names home, where the fix is, not the backup whose checks could not
/// reach it.
#[test]
fn a_stopped_primary_is_named_where_the_fix_is() {
    let Some(lab) = Lab::up() else { return };
    let inv = lab.inventory().to_str().unwrap().to_string();
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let stop = lab.ssh("home", "postfix stop");
    assert_eq!(stop.code, 0, "{stop:?}");
    let verify = lab.mxpin(&["verify", "-i", &inv]);
    assert_eq!(verify.code, 1, "{verify:?}");
    assert!(
        verify
            .stderr
            .lines()
            .any(|l| l.ends_with("verification failed on: home")),
        "{verify:?}"
    );
    let start = lab.ssh("home", "postfix start");
    assert_eq!(start.code, 0, "{start:?}");
}
