//! DANE on the real lab (`lab.sh up --dane`): knot signs example.net and
//! takes TSIG-signed updates, unbound validates it, and a third Postfix
//! host, sender, delivers to home by DANE (`smtp_tls_security_level =
//! dane`). A message counts as DANE-authenticated only when sender logs
//! `Verified TLS connection established`.

mod common;

use std::time::Duration;

use common::{served_key, wait_for, Lab};

const OWNER: &str = "_25._tcp.home.example.net.";

fn dns_dir(lab: &Lab) -> std::path::PathBuf {
    lab.dir.join("dns")
}

/// Sends an RFC 2136 update to knot with knsupdate (TSIG from the lab),
/// independently of mxpin.
fn nsupdate(lab: &Lab, lines: &[String]) {
    let secret = std::fs::read_to_string(dns_dir(lab).join("tsig.key")).unwrap();
    let script = format!(
        "server 127.0.0.53 53\nzone example.net\n{}\nsend\n",
        lines.join("\n")
    );
    let file = lab.dir.join("nsupdate.txt");
    std::fs::write(&file, script).unwrap();
    let run = lab.exec(&[
        "knsupdate",
        "-y",
        &format!("hmac-sha256:mxpin:{}", secret.trim()),
        file.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "knsupdate: {run:?}");
}

/// The TLSA records of `owner` that the validating resolver returns, and
/// whether the answer carried AD.
fn resolved_tlsa(lab: &Lab, owner: &str) -> (Vec<String>, bool) {
    let run = lab.exec(&["kdig", "+dnssec", "@127.0.0.54", owner, "TLSA"]);
    let ad = run.stdout.contains("Flags: qr rd ra ad;");
    let records = run
        .stdout
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && f[3] == "TLSA").then(|| f[4..].concat().to_ascii_lowercase())
        })
        .collect();
    (records, ad)
}

/// Forgets cached answers: unbound's cache and sender's smtp processes
/// (which keep TLSA answers in memory until they exit).
fn forget_dns(lab: &Lab) {
    let conf = dns_dir(lab).join("unbound.conf");
    let run = lab.exec(&[
        "unbound-control",
        "-c",
        conf.to_str().unwrap(),
        "flush_zone",
        "example.net",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let reload = lab.ssh("sender", "postfix reload");
    assert_eq!(reload.code, 0, "{reload:?}");
}

/// Sends one message from the controller through sender to home.
fn send_via_sender(lab: &Lab, body: &str) {
    let run = lab.send(
        "127.0.0.6",
        "first.last@example.net",
        "alice@sender.example.com",
        body,
    );
    assert_eq!(run.code, 0, "{run:?}");
}

fn delivered_count(lab: &Lab, body: &str) -> usize {
    lab.delivered().iter().filter(|m| m.contains(body)).count()
}

/// By hand, no mxpin: the TLSA of the key home serves makes sender's
/// delivery Verified; a wrong one makes it defer (dsn 4.7.5), not fall back.
#[test]
fn lab_dane_by_hand_verifies_and_a_wrong_record_defers() {
    let Some(lab) = Lab::up_with(&["--dane"]) else {
        return;
    };
    let key = served_key(&lab, "127.0.0.2", 25);
    nsupdate(
        &lab,
        &[format!("update add {OWNER} 5 IN TLSA 3 1 1 {key}")],
    );
    // The lab's self-check asked for this name before it existed: the
    // negative answer stays cached for the SOA minimum (2 s).
    let want = vec![format!("311{key}")];
    assert!(
        wait_for(Duration::from_secs(20), || resolved_tlsa(&lab, OWNER)
            == (want.clone(), true)),
        "{:?}",
        resolved_tlsa(&lab, OWNER)
    );
    forget_dns(&lab);
    send_via_sender(&lab, "dane by hand");
    assert!(
        wait_for(Duration::from_secs(30), || delivered_count(&lab, "dane by hand") == 1),
        "{}",
        lab.maillog("sender")
    );
    let log = lab.maillog("sender");
    assert!(
        log.contains("Verified TLS connection established to home.example.net[127.0.0.2]:25"),
        "{log}"
    );

    let wrong = "00".repeat(32);
    nsupdate(
        &lab,
        &[
            format!("update delete {OWNER} TLSA"),
            format!("update add {OWNER} 5 IN TLSA 3 1 1 {wrong}"),
        ],
    );
    forget_dns(&lab);
    send_via_sender(&lab, "dane wrong record");
    assert!(
        wait_for(Duration::from_secs(30), || {
            lab.maillog("sender").contains("status=deferred (Server certificate not verified)")
        }),
        "{}",
        lab.maillog("sender")
    );
    let log = lab.maillog("sender");
    assert!(log.contains("no matching DANE TLSA records"), "{log}");
    assert_eq!(delivered_count(&lab, "dane wrong record"), 0);
    assert_eq!(lab.queue_count("sender"), 1, "{}", lab.queue("sender"));
}
