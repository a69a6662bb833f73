//! End to end: `recipients = "primary"` (issue 12). The backup accepts
//! exactly the addresses the primary accepts, read from the primary's own
//! tables in the same facts read, and follows the primary when a user is
//! added there; a table that cannot be listed is refused and nothing
//! changes.

mod common;

use std::time::Duration;

use common::{wait_for, Lab};

fn inv(lab: &Lab) -> String {
    lab.inventory().to_str().unwrap().to_string()
}

/// The lab's domain takes its recipients from its primary, not the list.
fn recipients_from_primary(lab: &Lab) {
    let path = lab.inventory();
    let text = std::fs::read_to_string(&path).unwrap();
    let listed = "recipients = [\"first.last@example.net\"]";
    assert!(text.contains(listed), "{text}");
    std::fs::write(&path, text.replace(listed, "recipients = \"primary\"")).unwrap();
}

/// home's virtual mailboxes in a hash table (one of Postfix's own indexed
/// formats), as an admin would set it up.
fn hash_mailboxes(lab: &Lab, users: &[&str]) {
    let lines: String = users
        .iter()
        .map(|u| format!("{u}@example.net {u}/\n"))
        .collect();
    let run = lab.ssh(
        "home",
        &format!(
            "printf '{lines}' > /etc/postfix/vmailbox && postmap hash:/etc/postfix/vmailbox && \
             postconf -e virtual_mailbox_maps=hash:/etc/postfix/vmailbox && postfix reload"
        ),
    );
    assert_eq!(run.code, 0, "{run:?}");
}

/// The inventory's example.net reads its recipients from home, and so does
/// home's local domain home.example.net (its passwd users and aliases).
fn read_from_primary(lab: &Lab) {
    let path = lab.inventory();
    let text = std::fs::read_to_string(&path).unwrap();
    let old = "recipients = [\"first.last@example.net\"]";
    assert!(text.contains(old), "{text}");
    let text = text.replace(
        old,
        "recipients = \"primary\"\n\n[domains.\"home.example.net\"]\nprimary = \"home\"\n\
         backups = [\"relay\"]\nrecipients = \"primary\"",
    );
    std::fs::write(&path, text).unwrap();
}

/// The changed lines of a plan's diffs (`+x` / `-x`, not the `+++`/`---`
/// headers), as printed.
fn changed_lines(plan: &str) -> Vec<&str> {
    plan.lines()
        .map(str::trim_start)
        .filter(|l| {
            (l.starts_with('+') && !l.starts_with("+++"))
                || (l.starts_with('-') && !l.starts_with("---"))
        })
        .collect()
}

#[test]
fn the_backup_accepts_exactly_what_the_primary_accepts() {
    let Some(lab) = Lab::up() else { return };
    let inv = inv(&lab);
    hash_mailboxes(&lab, &["first.last", "second"]);
    read_from_primary(&lab);

    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(
        !apply.stderr.contains("backscatter"),
        "read from the primary: no warning: {apply:?}"
    );

    // The virtual mailboxes of the hash table, and a local user of home
    // (passwd) and an alias (/etc/aliases): accepted by the backup.
    for rcpt in [
        "first.last@example.net",
        "second@example.net",
        "root@home.example.net",
        "postmaster@home.example.net",
    ] {
        let sent = lab.send_to_relay(rcpt, "for a user home has");
        assert_eq!(sent.code, 0, "relay accepts {rcpt}: {sent:?}");
    }
    let sent = lab.send_to_relay("first.last@example.net", "recipients from home 4711");
    assert_eq!(sent.code, 0, "{sent:?}");
    assert!(
        wait_for(Duration::from_secs(30), || lab
            .delivered()
            .iter()
            .any(|m| m.contains("recipients from home 4711"))),
        "message reaches home's mailbox; relay log:\n{}",
        lab.maillog("relay")
    );
    // Anybody else: refused at RCPT with 550, not accepted and bounced.
    for rcpt in [
        "nobody@example.net",
        "new.user@example.net",
        "nosuchuser@home.example.net",
    ] {
        let refused = lab.send_to_relay(rcpt, "for nobody");
        assert_ne!(refused.code, 0, "relay refuses {rcpt}: {refused:?}");
        assert!(
            refused.stdout.contains("<** 550"),
            "{rcpt} refused with 550: {refused:?}"
        );
    }

    // A user added on the primary: one added line in the backup's
    // relay_recipients, nothing else.
    hash_mailboxes(&lab, &["first.last", "second", "new.user"]);
    let before = lab.snapshot();
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert_eq!(
        changed_lines(&plan.stdout),
        ["+new.user@example.net\tOK"],
        "{plan:?}"
    );
    assert!(
        plan.stdout.contains("relay_recipients")
            && plan.stdout.contains("1 of 2 hosts would change."),
        "{plan:?}"
    );
    assert!(lab.snapshot() == before, "plan changes nothing");

    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let sent = lab.send_to_relay("new.user@example.net", "for the new user");
    assert_eq!(sent.code, 0, "relay accepts the new user: {sent:?}");
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 0, "converged: {plan:?}");

    // Every mailbox gone on the primary (a table emptied by mistake): the
    // backup is not shrunk to nobody...
    hash_mailboxes(&lab, &[]);
    let before = lab.snapshot();
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 1, "{apply:?}");
    assert!(
        apply.stderr.contains(
            "relay: not planned: home accepts no address of example.net as read, and this backup \
             accepts some today: refusing to shrink to nothing"
        ),
        "{apply:?}"
    );
    assert!(lab.snapshot() == before, "nothing changes");
    let sent = lab.send_to_relay("first.last@example.net", "still accepted");
    assert_eq!(sent.code, 0, "{sent:?}");
    // ... unless the inventory says any address will do.
    let path = lab.inventory();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("recipients = \"primary\"", "recipients = \"any\"", 1),
    )
    .unwrap();
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(plan.stdout.contains("+@example.net\tOK"), "{plan:?}");
    assert!(plan.stderr.contains("backscatter"), "{plan:?}");
}

/// Runs mxpin with `args`, which must fail (exit 1), and returns its
/// lines refusing recipients that cannot be listed.
fn refused_as_unlistable(lab: &Lab, args: &[&str]) -> Vec<String> {
    let run = lab.mxpin(args);
    assert_eq!(run.code, 1, "{run:?}");
    run.stderr
        .lines()
        .filter(|l| l.contains("cannot be listed"))
        .map(String::from)
        .collect()
}

#[test]
fn an_ldap_map_is_refused_and_nothing_changes() {
    let Some(lab) = Lab::up() else { return };
    let inv = inv(&lab);
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");

    let run = lab.ssh(
        "home",
        "postconf -e virtual_mailbox_maps=ldap:/etc/postfix/ldap-users.cf",
    );
    assert_eq!(run.code, 0, "{run:?}");
    read_from_primary(&lab);
    let before = lab.snapshot();

    for args in [vec!["plan", "-i", &inv], vec!["apply", "--yes", "-i", &inv]] {
        let lines = refused_as_unlistable(&lab, &args);
        assert_eq!(lines.len(), 1, "one refusal: {lines:?}");
        let line = &lines[0];
        assert!(
            line.starts_with("error: relay: not planned: ")
                && line.contains("on home")
                && line.contains("virtual_mailbox_maps")
                && line.contains("ldap:/etc/postfix/ldap-users.cf")
                && line.contains("recipients = \"any\""),
            "names host, parameter and map, and the ways out: {line}"
        );
        assert!(
            lab.snapshot() == before,
            "{} leaves every host byte-identical",
            args[0]
        );
    }
}

/// An Exim primary (Debian's split configuration): its virtual mailbox
/// router's lsearch file and its local users, as Exim verifies them.
#[test]
fn an_exim_primary_is_read_as_exim_verifies() {
    let Some(lab) = Lab::up_with(&["--exim-debian", "home"]) else {
        return;
    };
    let inv = inv(&lab);
    recipients_from_primary(&lab);

    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    // In /etc/exim4/vmailbox, and a passwd user (Debian's local_user
    // router takes every local domain).
    for rcpt in ["first.last@example.net", "mxpinlab@example.net"] {
        let sent = lab.send_to_relay(rcpt, "for a user home has");
        assert_eq!(sent.code, 0, "relay accepts {rcpt}: {sent:?}");
    }
    let refused = lab.send_to_relay("new.user@example.net", "not yet");
    assert!(refused.stdout.contains("<** 550"), "{refused:?}");

    let add = lab.ssh("home", "echo 'new.user: new.user' >> /etc/exim4/vmailbox");
    assert_eq!(add.code, 0, "{add:?}");
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert_eq!(
        changed_lines(&plan.stdout),
        ["+new.user@example.net\tOK"],
        "{plan:?}"
    );
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let sent = lab.send_to_relay("new.user@example.net", "for the new user");
    assert_eq!(sent.code, 0, "relay accepts the new user: {sent:?}");
}

/// Every file under `dir`, by path.
fn files_under(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if p.is_file() {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
}

/// An Exim router deciding on local parts with a lookup that cannot be
/// listed (`wildlsearch`: patterns, not addresses): one-line refusal
/// naming the host and the router; nothing changes on either host.
#[test]
fn an_exim_router_that_cannot_be_listed_is_refused() {
    let Some(lab) = Lab::up_with(&["--exim", "home"]) else {
        return;
    };
    let inv = inv(&lab);
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let edit = lab.ssh(
        "home",
        "sed -i 's|local_parts = lsearch;/etc/exim4/vmailbox|local_parts = wildlsearch;/etc/exim4/vmailbox|' \
         /etc/exim4/exim4.conf && grep -q wildlsearch /etc/exim4/exim4.conf && exim4 -bV >/dev/null",
    );
    assert_eq!(edit.code, 0, "{edit:?}");
    recipients_from_primary(&lab);
    let snapshot = || {
        let mut files = Vec::new();
        files_under(&lab.dir.join("home/etc/exim4"), &mut files);
        files_under(&lab.postfix_dir("relay"), &mut files);
        files
    };
    let before = snapshot();
    for args in [vec!["plan", "-i", &inv], vec!["apply", "--yes", "-i", &inv]] {
        let lines = refused_as_unlistable(&lab, &args);
        assert_eq!(
            lines,
            [format!(
                "error: relay: not planned: recipients of example.net on home: router vmailbox \
                 has local_parts with a wildlsearch lookup, which cannot be listed; {}",
                "list the recipients in the inventory (recipients = [...]), or set recipients = \
                 \"any\" (backups accept any address: backscatter)"
            )],
            "{lines:?}"
        );
        assert!(snapshot() == before, "{} changes nothing", args[0]);
    }
}
