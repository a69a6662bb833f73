//! Deferred mail after a fix, on the real lab: a message the backup deferred
//! because home served a key nobody pinned is delivered within seconds of
//! the `apply` that re-pins it, without a manual flush (Postfix: `postqueue
//! -s`, Exim: `exim -Rrf`), while mail deferred for a domain whose route did
//! not change (a "primary" that is down) keeps its retry schedule.

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime};

use common::{log_count, wait_for, Lab};

/// Within this time after `apply` returns, the deferred message must be in
/// home's Maildir (the issue's bound; Postfix would otherwise retry after
/// 5 minutes, Exim after 15).
const DELIVERED_WITHIN: Duration = Duration::from_secs(10);

/// The recipient whose mail the lab's relay cannot deliver: its domain
/// resolves to an address where nothing listens (connection refused).
const DOWN: &str = "someone@down.example";

fn inv(lab: &Lab) -> String {
    lab.inventory().to_str().unwrap().to_string()
}

/// Makes `down.example` resolve to 127.0.0.9 on every lab host (the hosts
/// file is bind-mounted; appending keeps its inode).
fn add_down_host(lab: &Lab) {
    let mut hosts = std::fs::OpenOptions::new()
        .append(true)
        .open(lab.dir.join("hosts"))
        .unwrap();
    writeln!(hosts, "127.0.0.9 down.example").unwrap();
}

/// Puts a fresh key nobody pins into home's current slot (as a restore from
/// an old backup, or a hand-made key, would), and reloads home's Postfix,
/// which then serves it. The certificate is sound (names home, a year of
/// validity), so mxpin keeps the key, and apply fixes the route by
/// re-pinning it on the relay.
fn unpinned_key_on_home(lab: &Lab) {
    let swap = lab.ssh(
        "home",
        "set -e; cd /etc/postfix/mxpin; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
           -subj /CN=home.example.net -addext subjectAltName=DNS:home.example.net \
           -keyout current.key -out current.crt 2>/dev/null; \
         chmod 600 current.key; chmod 644 current.crt; postfix reload 2>/dev/null",
    );
    assert_eq!(swap.code, 0, "{swap:?}");
    // New smtpd processes serve the new key.
    std::thread::sleep(Duration::from_millis(1500));
}

/// The time a message with `body` landed in home's Maildir.
fn delivered_at(lab: &Lab, body: &str) -> Option<SystemTime> {
    let dir = lab.dir.join("home/mail/first.last/new");
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let text = std::fs::read_to_string(e.path()).ok()?;
        text.contains(body)
            .then(|| e.metadata().ok()?.modified().ok())
            .flatten()
    })
}

/// Seconds from `end` to `at` (negative: before it).
fn seconds_after(at: SystemTime, end: SystemTime) -> f64 {
    match at.duration_since(end) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Sends `body` to first.last@example.net through the relay and waits until
/// the relay logs `deferred` (a line containing `needle`) for it.
fn send_deferred(lab: &Lab, rcpt: &str, body: &str, needle: &str) {
    let before = log_count(&lab.maillog("relay"), needle);
    let sent = lab.send_to_relay(rcpt, body);
    assert_eq!(sent.code, 0, "{sent:?}");
    assert!(
        wait_for(Duration::from_secs(30), || log_count(
            &lab.maillog("relay"),
            needle
        ) > before),
        "relay defers {rcpt}: {}",
        lab.maillog("relay")
    );
}

/// Applies, and checks that the deferred message `body` reaches home within
/// [`DELIVERED_WITHIN`] of apply's end. Returns the seconds from apply's end
/// to the delivery (negative: delivered while apply was still verifying).
fn apply_and_expect_delivery(lab: &Lab, body: &str) -> f64 {
    let started = Instant::now();
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv(lab)]);
    let end = SystemTime::now();
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(
        apply.stdout.contains("relay: applied"),
        "the relay re-pins home: {apply:?}"
    );
    assert!(
        wait_for(DELIVERED_WITHIN, || delivered_at(lab, body).is_some()),
        "{body:?} not delivered within {DELIVERED_WITHIN:?} of apply's end \
         (apply took {:?}); relay log:\n{}",
        started.elapsed(),
        lab.maillog("relay")
    );
    let after = seconds_after(delivered_at(lab, body).unwrap(), end);
    eprintln!(
        "{body}: delivered {after:+.2} s from apply's end (apply took {:.2} s)",
        started.elapsed().as_secs_f64()
    );
    after
}

#[test]
fn postfix_backup_delivers_deferred_mail_right_after_apply() {
    let Some(lab) = Lab::up() else { return };
    let inv = inv(&lab);
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    add_down_host(&lab);

    // Mail for a destination that is down: deferred, and it must stay so
    // (retried on its own schedule only).
    let down_deferred = format!("to=<{DOWN}>");
    send_deferred(
        &lab,
        DOWN,
        "for a host that is down",
        "status=deferred (connect to down.example",
    );
    assert_eq!(log_count(&lab.maillog("relay"), &down_deferred), 1);

    // Home serves a key nobody pinned: the relay defers the message.
    let unverified = "status=deferred (Server certificate not verified)";
    unpinned_key_on_home(&lab);
    send_deferred(
        &lab,
        "first.last@example.net",
        "drain postfix 1",
        unverified,
    );
    assert!(delivered_at(&lab, "drain postfix 1").is_none());

    // Plan says apply will retry example.net's deferred mail, and only it.
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(
        plan.stdout
            .contains("postqueue -c /etc/postfix -s example.net"),
        "{plan:?}"
    );
    assert!(!plan.stdout.contains("postqueue -f"), "{plan:?}");

    apply_and_expect_delivery(&lab, "drain postfix 1");
    let log = lab.maillog("relay");
    let last = log
        .lines()
        .rfind(|l| l.contains("TLS connection established to home.example.net"))
        .unwrap();
    assert!(
        last.contains("Verified TLS connection established"),
        "{last}"
    );
    let sent = log
        .lines()
        .rfind(|l| l.contains("to=<first.last@example.net>"))
        .unwrap();
    assert!(sent.contains("status=sent"), "{sent}");

    // The mail for the host that is down was not retried.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        log_count(&lab.maillog("relay"), &down_deferred),
        1,
        "{}",
        lab.maillog("relay")
    );
    let queue = lab.queue("relay");
    assert!(queue.contains(DOWN), "{queue}");
    assert_eq!(common::queue_count(&queue), 1, "{queue}");

    // Without the fast flush service for the domain, `postqueue -s` is
    // refused: the messages are retried by queue ID instead, and still
    // only those of example.net.
    let off = lab.ssh(
        "relay",
        "postconf -e 'fast_flush_domains =' && postfix reload 2>/dev/null",
    );
    assert_eq!(off.code, 0, "{off:?}");
    std::thread::sleep(Duration::from_millis(1500));
    unpinned_key_on_home(&lab);
    send_deferred(
        &lab,
        "first.last@example.net",
        "drain postfix 2",
        unverified,
    );
    apply_and_expect_delivery(&lab, "drain postfix 2");
    let log = lab.maillog("relay");
    assert!(
        log.contains("fatal: Flush service is not configured for destination \"example.net\""),
        "{log}"
    );
    let last = log
        .lines()
        .rfind(|l| l.contains("TLS connection established to home.example.net"))
        .unwrap();
    assert!(
        last.contains("Verified TLS connection established"),
        "{last}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(log_count(&lab.maillog("relay"), &down_deferred), 1, "{log}");
    assert_eq!(lab.queue_count("relay"), 1);
    assert!(!log.contains("status=bounced"), "{log}");

    // Converged: nothing left to do, nothing to retry.
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(!plan.stdout.contains("postqueue"), "{plan:?}");
}

#[test]
fn exim_backup_delivers_deferred_mail_right_after_apply() {
    let Some(lab) = Lab::up_with(&["--exim", "relay"]) else {
        return;
    };
    let inv = inv(&lab);
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    add_down_host(&lab);

    // A real delivery attempt to the host that is down logs the refused
    // connection (queue runs before its retry time log error -54 instead).
    let down_attempt = format!("== {DOWN} R=dnslookup T=remote_smtp defer (111)");
    send_deferred(&lab, DOWN, "for a host that is down", &down_attempt);

    let unpinned = "== first.last@example.net R=mxpin_backup T=mxpin_smtp defer (-37)";
    unpinned_key_on_home(&lab);
    send_deferred(&lab, "first.last@example.net", "drain exim 1", unpinned);
    assert!(delivered_at(&lab, "drain exim 1").is_none());
    let queue = lab.ssh("relay", "sudo -n exim4 -bpc");
    assert_eq!(queue.stdout.trim(), "2", "{queue:?}");

    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(
        plan.stdout
            .contains(r"/usr/sbin/exim4 -Rrf '@(example\.net)$' (in the background)"),
        "{plan:?}"
    );

    // mxpin's queue runs, per apply that changes the route (the first
    // apply, a new backup role, started them too): one, and a second pass
    // 2 s later for a message the daemon's own queue run held locked.
    let runs = |log: &str| {
        common::log_lines(log, &["Start queue run: pid=", r"-qf -Rr @(example\.net)$"]).len()
    };
    let before = runs(&lab.maillog("relay"));
    apply_and_expect_delivery(&lab, "drain exim 1");
    let log = lab.maillog("relay");
    let after = runs(&log);
    assert!(
        after > before && after <= before + 2,
        "mxpin's queue runs: {before} then {after}: {log}"
    );
    let line = log
        .lines()
        .rfind(|l| l.contains("=> first.last@example.net R=mxpin_backup T=mxpin_smtp"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("CV=yes"), "{line}");

    std::thread::sleep(Duration::from_secs(2));
    let log = lab.maillog("relay");
    assert_eq!(log_count(&log, &down_attempt), 1, "not retried: {log}");
    let queue = lab.ssh("relay", "sudo -n exim4 -bp");
    assert!(queue.stdout.contains(DOWN), "{queue:?}");
    let count = lab.ssh("relay", "sudo -n exim4 -bpc");
    assert_eq!(count.stdout.trim(), "1", "{count:?}");
    assert!(!log.contains(" ** "), "nothing bounced: {log}");

    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 0, "{plan:?}");
}
