//! `mxpin release HOST`: a host is given back as it was before mxpin, byte
//! for byte, and only once no peer pins it.

mod common;

use std::time::Duration;

use common::{wait_for, Lab};

#[test]
fn release_gives_back_every_byte_and_waits_for_the_peers() {
    let Some(lab) = Lab::up() else { return };
    let inv = lab.inventory().to_str().unwrap().to_string();
    // The admin's own quirks, in parameters mxpin edits: no STARTTLS on
    // home, and a relay_domains list with a comment between its lines.
    let quirks = lab.ssh(
        "home",
        "postconf -e smtpd_tls_security_level=none && postfix reload",
    );
    assert_eq!(quirks.code, 0, "{quirks:?}");
    let relay_cf = lab.postfix_dir("relay").join("main.cf");
    let mut text = std::fs::read_to_string(&relay_cf).unwrap();
    text.push_str(
        "relay_domains = example.org,\n    # old customers, kept for now\n    example.com\n",
    );
    std::fs::write(&relay_cf, text).unwrap();
    let reload = lab.ssh("relay", "postfix reload");
    assert_eq!(reload.code, 0, "{reload:?}");
    std::thread::sleep(Duration::from_secs(2));
    let before = lab.snapshot();

    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let sent = lab.send_to_relay("first.last@example.net", "before the release 5150");
    assert_eq!(sent.code, 0, "{sent:?}");
    assert!(
        wait_for(Duration::from_secs(30), || lab
            .delivered()
            .iter()
            .any(|m| m.contains("before the release 5150"))),
        "{}",
        lab.maillog("relay")
    );

    // relay still backs up home's domain: both are refused, in one line.
    for host in ["home", "relay"] {
        let refused = lab.mxpin(&["release", host, "--yes", "-i", &inv]);
        assert_eq!(refused.code, 1, "{refused:?}");
        assert_eq!(
            refused.stderr,
            "error: release HOST: relay pins home (backup route); take HOST out of every \
             domain and relayhost first, and apply\n"
                .replace("HOST", host),
            "{refused:?}"
        );
    }

    // Without the domain, nobody pins anybody: release is planned, shown,
    // and a dry run changes nothing.
    let text = std::fs::read_to_string(lab.inventory()).unwrap();
    let cut = text.find("[domains").expect("the lab has a domain");
    std::fs::write(lab.inventory(), &text[..cut]).unwrap();
    let applied = lab.snapshot();
    let dry = lab.mxpin(&["release", "relay", "--dry-run", "-i", &inv]);
    assert_eq!(dry.code, 2, "{dry:?}");
    assert!(
        dry.stdout.contains("+    # old customers, kept for now"),
        "{dry:?}"
    );
    assert!(lab.snapshot() == applied, "a dry run changes nothing");

    for host in ["relay", "home"] {
        let released = lab.mxpin(&["release", host, "--yes", "-i", &inv]);
        assert_eq!(released.code, 0, "{released:?}");
        assert!(
            released.stdout.contains(&format!(
                "{host} is released: remove [hosts.{host}] from {inv}, or the next apply takes it again."
            )),
            "{released:?}"
        );
    }
    let after = lab.snapshot();
    let changed: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .collect();
    assert!(
        changed.is_empty(),
        "the admin's bytes are back: {changed:?}"
    );
    for host in ["home", "relay"] {
        assert!(!lab.postfix_dir(host).join("mxpin").exists(), "{host}");
        let running = lab.ssh(host, "postfix status");
        assert_eq!(running.code, 0, "{host} still runs: {running:?}");
    }
    // home's own setting is back in force: no STARTTLS offered.
    let ehlo = lab.exec(&["swaks", "--server", "127.0.0.2", "--quit-after", "EHLO"]);
    assert!(!ehlo.stdout.contains("STARTTLS"), "{ehlo:?}");
}
