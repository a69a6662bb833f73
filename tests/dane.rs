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

/// What sender logs of a delivery to home that DANE verified.
const VERIFIED_HOME: &str = "Verified TLS connection established to home.example.net[127.0.0.2]:25";

/// Sends BODY from the DANE sender once unbound's and sender's caches are
/// flushed, waits until home has it, and returns sender's log.
fn deliver_from_sender(lab: &Lab, body: &str) -> String {
    forget_dns(lab);
    send_via_sender(lab, body);
    assert!(
        wait_for(Duration::from_secs(30), || delivered_count(lab, body) == 1),
        "{}",
        lab.maillog("sender")
    );
    lab.maillog("sender")
}

/// By hand, no mxpin: the TLSA of the key home serves makes sender's
/// delivery Verified; a wrong one makes it defer (dsn 4.7.5), not fall back.
#[test]
fn lab_dane_by_hand_verifies_and_a_wrong_record_defers() {
    let Some(lab) = Lab::up_with(&["--dane"]) else {
        return;
    };
    let key = served_key(&lab, "127.0.0.2", 25);
    nsupdate(&lab, &[format!("update add {OWNER} 5 IN TLSA 3 1 1 {key}")]);
    // The lab's self-check asked for this name before it existed: the
    // negative answer stays cached for the SOA minimum (2 s).
    let want = vec![format!("311{key}")];
    assert!(
        wait_for(Duration::from_secs(20), || resolved_tlsa(&lab, OWNER)
            == (want.clone(), true)),
        "{:?}",
        resolved_tlsa(&lab, OWNER)
    );
    let log = deliver_from_sender(&lab, "dane by hand");
    assert!(log.contains(VERIFIED_HOME), "{log}");

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
            lab.maillog("sender")
                .contains("status=deferred (Server certificate not verified)")
        }),
        "{}",
        lab.maillog("sender")
    );
    let log = lab.maillog("sender");
    assert!(log.contains("no matching DANE TLSA records"), "{log}");
    assert_eq!(delivered_count(&lab, "dane wrong record"), 0);
    assert_eq!(lab.queue_count("sender"), 1, "{}", lab.queue("sender"));
}

const DNS_SECTION: &str = r#"
[dns]
server = "127.0.0.53:53"
zones = [{ name = "example.net" }, { name = "example.org" }]
tsig_key_name = "mxpin"
tsig_algorithm = "hmac-sha256"
tsig_secret_file = "dns/tsig.key"
resolver = "127.0.0.54:53"
ttl = 5
"#;

fn inv(lab: &Lab) -> String {
    lab.inventory().to_str().unwrap().to_string()
}

fn add_dns_section(lab: &Lab) {
    let mut text = std::fs::read_to_string(lab.inventory()).unwrap();
    text.push_str(DNS_SECTION);
    std::fs::write(lab.inventory(), text).unwrap();
}

/// The zone's serial as knot serves it.
fn serial(lab: &Lab, zone: &str) -> String {
    let run = lab.exec(&["kdig", "+short", "@127.0.0.53", zone, "SOA"]);
    let serial = run.stdout.split_whitespace().nth(2).unwrap_or_default();
    assert!(!serial.is_empty(), "{run:?}");
    serial.to_string()
}

/// The TLSA records (`311HEX`) knot serves at `owner`.
fn served_tlsa(lab: &Lab, owner: &str) -> Vec<String> {
    let run = lab.exec(&["kdig", "+short", "@127.0.0.53", owner, "TLSA"]);
    let mut v: Vec<String> = run
        .stdout
        .lines()
        .map(|l| {
            l.split_whitespace()
                .collect::<String>()
                .to_ascii_lowercase()
        })
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// The SPKI SHA-256 of a host's stored key, read as `mxpin tlsa` prints it.
fn tlsa_of(lab: &Lab, host: &str, key: &str) -> String {
    let run = lab.mxpin(&["tlsa", "-i", &inv(lab)]);
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout
        .lines()
        .find(|l| l.ends_with(&format!("; {host} {key}")))
        .and_then(|l| l.split_whitespace().nth(6))
        .unwrap_or_else(|| panic!("no {host} {key} in {run:?}"))
        .to_string()
}

/// plan shows the records apply would add, a rotation's dry run leaves the zone's
/// serial alone, apply publishes current + next for home and relay (each
/// in its own zone) and keeps a record mxpin did not write, plan is then
/// clean, and sender delivers to home Verified by DANE.
#[test]
fn apply_publishes_tlsa_and_the_dane_sender_verifies() {
    let Some(lab) = Lab::up_with(&["--dane"]) else {
        return;
    };
    let inv = inv(&lab);
    let first = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(first.code, 0, "{first:?}");
    add_dns_section(&lab);
    let foreign = format!("311{}", "ab".repeat(32));
    nsupdate(
        &lab,
        &[format!(
            "update add {OWNER} 5 IN TLSA 3 1 1 {}",
            "ab".repeat(32)
        )],
    );

    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "{plan:?}");
    let (cur, next) = (
        tlsa_of(&lab, "home", "current"),
        tlsa_of(&lab, "home", "next"),
    );
    assert!(
        plan.stdout
            .contains("dns zone example.net (127.0.0.53:53):"),
        "{plan:?}"
    );
    assert!(
        plan.stdout.contains(&format!(
            "+ {OWNER} 5 IN TLSA 3 1 1 {cur} ; home current key"
        )),
        "{plan:?}"
    );
    assert!(
        plan.stdout
            .contains(&format!("+ {OWNER} 5 IN TLSA 3 1 1 {next} ; home next key")),
        "{plan:?}"
    );
    assert!(
        plan.stdout
            .contains("dns zone example.org (127.0.0.53:53):"),
        "{plan:?}"
    );
    assert!(
        !plan.stdout.contains("- "),
        "nothing of mxpin's to remove: {plan:?}"
    );
    // The hosts are up to date; the closing line says what is pending.
    assert!(
        plan.stdout
            .ends_with("DNS records would change in 2 zones; 2 hosts up to date.\n"),
        "{plan:?}"
    );
    let json = lab.mxpin(&["plan", "--json", "-i", &inv]);
    assert_eq!(json.code, 2, "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["changes_pending"], true, "{v}");
    let zones = v["dns"].as_array().unwrap();
    assert_eq!(zones.len(), 2, "{v}");
    assert!(
        zones
            .iter()
            .flat_map(|z| z["add"].as_array().unwrap())
            .any(|r| r["data"] == format!("3 1 1 {next}") && r["owner"] == OWNER),
        "{v}"
    );

    let before = serial(&lab, "example.net");
    assert_eq!(served_tlsa(&lab, OWNER), std::slice::from_ref(&foreign));

    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(
        apply
            .stdout
            .contains("dns zone example.net: added 2 records, removed 0"),
        "{apply:?}"
    );
    assert_ne!(serial(&lab, "example.net"), before);
    let mut want = vec![format!("311{cur}"), format!("311{next}"), foreign];
    want.sort();
    assert_eq!(served_tlsa(&lab, OWNER), want, "the foreign record is kept");
    let relay = "_25._tcp.relay.example.org.";
    let mut want_relay = vec![
        format!("311{}", tlsa_of(&lab, "relay", "current")),
        format!("311{}", tlsa_of(&lab, "relay", "next")),
    ];
    want_relay.sort();
    assert_eq!(served_tlsa(&lab, relay), want_relay);

    let again = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(again.code, 0, "{again:?}");

    let log = deliver_from_sender(&lab, "dane after apply");
    assert!(log.contains(VERIFIED_HOME), "{log}");
    assert_eq!(served_key(&lab, "127.0.0.2", 25), cur);

    // A dry run of a rotation shows the DNS change and makes none (it
    // waits, like the rotation, for the records to be visible).
    let published = serial(&lab, "example.net");
    let mut dry = None;
    for _ in 0..30 {
        let r = lab.mxpin(&["rotate", "--dry-run", "-i", &inv, "home"]);
        if r.code != 1 {
            dry = Some(r);
            break;
        }
        assert!(r.stderr.contains("home: rotation refused: wait "), "{r:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let dry = dry.expect("the dry run is allowed within 30 tries");
    assert_eq!(dry.code, 2, "{dry:?}");
    assert!(
        dry.stdout
            .contains(&format!("- {OWNER} IN TLSA 3 1 1 {cur} ; home retired key")),
        "{dry:?}"
    );
    assert!(
        dry.stdout.contains(&format!("+ {OWNER} 5 IN TLSA 3 1 1 ")),
        "{dry:?}"
    );
    assert!(dry.stdout.contains(" ; home next key"), "{dry:?}");
    assert_eq!(
        serial(&lab, "example.net"),
        published,
        "a dry run changes nothing"
    );
    assert_eq!(served_key(&lab, "127.0.0.2", 25), cur);

    let verify = lab.mxpin(&["verify", "-i", &inv]);
    assert_eq!(verify.code, 0, "{verify:?}");
    for owner in [OWNER, relay] {
        assert!(
            verify.stdout.contains(&format!(
                "DANE: {owner} TLSA validated, holds the served and the staged key"
            )),
            "{verify:?}"
        );
    }
    // The staged key's record removed behind mxpin's back: verify says so.
    nsupdate(&lab, &[format!("update delete {OWNER} TLSA 3 1 1 {next}")]);
    forget_dns(&lab);
    let lacking = format!("DANE: {OWNER} TLSA (validated) lacks the next key (3 1 1 {next})");
    let mut last = None;
    let failed = wait_for(Duration::from_secs(20), || {
        let v = lab.mxpin(&["verify", "-i", &inv]);
        let hit = v.code == 1 && v.stdout.contains(&lacking);
        last = Some(v);
        hit
    });
    assert!(failed, "{last:?}");

    // relay moves to port 26: its records move with it, and what mxpin
    // wrote at the old name goes (the DANE sender would find stale keys).
    lab.inventory_add("hosts.relay", "smtp_port = 26");
    let moved = lab.mxpin(&["apply", "--yes", "--no-verify", "-i", &inv]);
    assert_eq!(moved.code, 0, "{moved:?}");
    assert_eq!(served_tlsa(&lab, relay), Vec::<String>::new(), "{moved:?}");
    assert_eq!(
        served_tlsa(&lab, "_26._tcp.relay.example.org."),
        want_relay,
        "{moved:?}"
    );
    let settled = lab.mxpin(&["plan", "-i", &inv]);
    assert!(!settled.stdout.contains("dns zone"), "{settled:?}");
}

/// A rotation before the world can see the next key's record is refused,
/// with the reason; once it can (and the old RRset's TTL has passed),
/// `mxpin rotate home` runs while 40 messages flow from the DANE sender:
/// all 40 delivered Verified, none deferred; the old key's record is gone
/// and the new next key's is published.
#[test]
fn rotation_waits_for_dns_and_defers_nothing() {
    let Some(lab) = Lab::up_with(&["--dane"]) else {
        return;
    };
    let inv = inv(&lab);
    let first = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(first.code, 0, "{first:?}");
    add_dns_section(&lab);
    let (cur, next) = (
        tlsa_of(&lab, "home", "current"),
        tlsa_of(&lab, "home", "next"),
    );

    let early = lab.mxpin(&["rotate", "--yes", "-i", &inv, "home"]);
    assert_eq!(early.code, 1, "{early:?}");
    let reason = format!(
        "home: rotation refused: the resolver 127.0.0.54:53 does not return {OWNER} TLSA 3 1 1 {next} (the next key's record) yet; run `mxpin apply` first"
    );
    assert!(early.stderr.contains(&reason), "{early:?}");
    assert_eq!(
        served_key(&lab, "127.0.0.2", 25),
        cur,
        "home did not switch"
    );

    // That run published the records (as apply does); home may switch
    // once the resolver validates them and the negative answer cached
    // before them has expired.
    let mut want = vec![format!("311{cur}"), format!("311{next}")];
    want.sort();
    assert_eq!(served_tlsa(&lab, OWNER), want);
    forget_dns(&lab);
    let mark = lab.maillog("sender").len();
    send_via_sender(&lab, "load message warmup");
    assert!(wait_for(Duration::from_secs(30), || delivered_count(
        &lab,
        "load message warmup"
    ) == 1));

    std::thread::scope(|scope| {
        let flow = scope.spawn(|| {
            for i in 0..40 {
                send_via_sender(&lab, &format!("load message {i:02}"));
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        std::thread::sleep(Duration::from_secs(2));
        let mut rotated = None;
        for _ in 0..30 {
            let r = lab.mxpin(&["rotate", "--yes", "-i", &inv, "home"]);
            if r.code == 0 {
                rotated = Some(r);
                break;
            }
            assert!(r.stderr.contains("home: rotation refused: wait "), "{r:?}");
            std::thread::sleep(Duration::from_secs(1));
        }
        let rotated = rotated.expect("rotation allowed within 30 tries");
        assert!(
            rotated.stdout.contains("home: serves public key"),
            "{rotated:?}"
        );
        assert!(
            rotated
                .stdout
                .contains("dns zone example.net: added 1 record, removed 1"),
            "{rotated:?}"
        );
        flow.join().unwrap();
    });
    assert!(
        common::all_delivered(&lab, "load message", 40, Duration::from_secs(120)),
        "{}",
        lab.maillog("sender")
    );
    let log = lab.maillog("sender");
    assert_eq!(common::log_count(&log, "status=deferred"), 0, "{log}");
    // From the warm-up on, every TLS session to home was DANE-verified.
    let sessions = common::log_lines(
        &log[mark..],
        &["TLS connection established to home.example.net"],
    );
    assert!(!sessions.is_empty(), "{log}");
    assert!(
        sessions.iter().all(|l| l.contains("Verified TLS")),
        "{sessions:#?}"
    );
    assert_eq!(
        common::log_count(&log[mark..], "relay=home.example.net[127.0.0.2]:25"),
        41,
        "{log}"
    );
    let new_next = tlsa_of(&lab, "home", "next");
    assert_eq!(
        served_key(&lab, "127.0.0.2", 25),
        next,
        "home serves its old next key"
    );
    let mut want = vec![format!("311{next}"), format!("311{new_next}")];
    want.sort();
    assert_eq!(served_tlsa(&lab, OWNER), want, "old key's record removed");
}

/// A TSIG secret group or others may read is refused before anything
/// runs: one line naming the file, exit 1, the secret never shown.
#[test]
fn a_readable_tsig_secret_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("tsig.key");
    std::fs::write(&secret, "c2VjcmV0LXNlY3JldA==\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let inv = dir.path().join("mxpin.toml");
    std::fs::write(
        &inv,
        format!(
            "{}\n[domains.\"example.net\"]\nprimary = \"home\"\nbackups = [\"relay\"]\n{}",
            "[hosts.home]\nssh = \"home\"\nmx = \"home.example.net\"\n\
             [hosts.relay]\nssh = \"relay\"\nmx = \"relay.example.org\"\n",
            DNS_SECTION.replace("dns/tsig.key", "tsig.key")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::mxpin_bin())
        .args(["plan", "-i", inv.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("mxpin.toml:")
            && stderr.contains("group or others may read it (mode 0644)"),
        "{stderr}"
    );
    assert!(!stderr.contains("c2VjcmV0"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// home serves a certificate of the admin's own to its MX name (mxpin's
/// key only to its peers, by SNI): a DANE sender gets the admin's, so
/// mxpin publishes no record of its keys for home, removes those it wrote
/// before, and sender still delivers (no TLSA, no DANE: nothing deferred).
/// relay's records stay; verify warns about home and passes.
#[test]
fn a_host_serving_the_admins_certificate_gets_no_records_of_mxpins_keys() {
    let Some(lab) = Lab::up_with(&["--dane"]) else {
        return;
    };
    let inv = inv(&lab);
    add_dns_section(&lab);
    let first = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(served_tlsa(&lab, OWNER).len(), 2, "{first:?}");

    let own = lab.ssh(
        "home",
        "cd /etc/postfix && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
         -nodes -days 30 -subj /CN=home.example.net -addext subjectAltName=DNS:home.example.net \
         -keyout admin.key -out admin.crt 2>/dev/null && chmod 600 admin.key \
         && postconf -X smtpd_tls_chain_files \
         && postconf -e smtpd_tls_cert_file=/etc/postfix/admin.crt \
            smtpd_tls_key_file=/etc/postfix/admin.key && postfix reload",
    );
    assert_eq!(own.code, 0, "{own:?}");
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert!(
        plan.stdout.contains(&format!(
            "- {OWNER} IN TLSA 3 1 1 {} ; home serves the admin's own certificate",
            tlsa_of(&lab, "home", "current")
        )),
        "{plan:?}"
    );
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert_eq!(served_tlsa(&lab, OWNER), Vec::<String>::new(), "{apply:?}");
    assert_eq!(
        served_tlsa(&lab, "_25._tcp.relay.example.org.").len(),
        2,
        "relay's records stay"
    );

    let log = deliver_from_sender(&lab, "beside the admin's certificate 4715");
    assert_eq!(log.matches("status=deferred").count(), 0, "{log}");

    let verify = lab.mxpin(&["verify", "-i", &inv]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(
        verify.stdout.contains(&format!(
            "DANE: no TLSA records at {OWNER}: home serves the admin's own certificate"
        )),
        "{verify:?}"
    );
    assert_eq!(lab.mxpin(&["plan", "-i", &inv]).code, 0);
}
