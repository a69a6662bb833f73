//! home relays its outgoing mail through its VPS, each side pinning the
//! other (`[hosts.home] relayhost = "vps"`), on the pair lab
//! (`lab/lab.sh up DIR NAME --pair`, see lab/README.md):
//!
//! - home 127.0.0.2 (home.example.net): final destination of example.net
//! - vps 127.0.0.3 (vps.example.org): home's relay on port 2525 (mxpin's
//!   listener) and the backup MX of example.net on port 25
//! - world 127.0.0.4 (world.test): somebody else's server, bob@world.test
//! - stranger 127.0.0.5 (stranger.example.com): relays through
//!   [vps.example.org]:2525 with a client certificate nobody pinned
//!
//! world and stranger are not in mxpin.toml.

mod common;

use std::time::Duration;

use common::{log_count, log_lines, served_key, wait_for, Lab, Run};

const HOME: &str = "127.0.0.2";
const VPS: &str = "127.0.0.3";
const STRANGER: &str = "127.0.0.5";
const PAIR_HOSTS: [&str; 4] = ["home", "vps", "world", "stranger"];

/// What home's log says of every connection to its relay.
const HOME_TO_VPS: &str = "TLS connection established to vps.example.org[127.0.0.3]:2525";
const HOME_TO_VPS_VERIFIED: &str =
    "Verified TLS connection established to vps.example.org[127.0.0.3]:2525";
/// What vps's log says when it hands backup-MX mail to home.
const VPS_TO_HOME_VERIFIED: &str =
    "Verified TLS connection established to home.example.net[127.0.0.2]:25";

fn inv(lab: &Lab) -> String {
    lab.inventory().to_str().unwrap().to_string()
}

/// A pair lab whose inventory says home relays through vps (the default
/// relay_port, 2525), not applied yet.
fn pair_lab() -> Option<Lab> {
    let lab = Lab::up_with(&["--pair"])?;
    lab.inventory_add("hosts.home", "relayhost = \"vps\"");
    Some(lab)
}

/// A pair lab with the relay applied.
fn applied_pair_lab() -> Option<Lab> {
    let lab = pair_lab()?;
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv(&lab)]);
    assert_eq!(apply.code, 0, "{apply:?}");
    Some(lab)
}

/// Messages in bob@world.test's Maildir that contain MARK.
fn at_world(lab: &Lab, mark: &str) -> usize {
    lab.delivered_to("world", "bob")
        .iter()
        .filter(|m| m.contains(mark))
        .count()
}

/// Messages in first.last@example.net's Maildir (at home) that contain MARK.
fn at_home(lab: &Lab, mark: &str) -> usize {
    lab.delivered().iter().filter(|m| m.contains(mark)).count()
}

/// Outgoing mail: submitted on home for bob@world.test.
fn send_out(lab: &Lab, body: &str) -> Run {
    lab.send(HOME, "bob@world.test", "first.last@example.net", body)
}

/// Inbound mail: submitted to vps's port 25 (the backup MX) for
/// first.last@example.net.
fn send_in(lab: &Lab, body: &str) -> Run {
    lab.send(
        VPS,
        "first.last@example.net",
        "sender@elsewhere.example",
        body,
    )
}

/// The queue id the receiving side reported for the delivery logged in
/// LINE ("... status=sent (250 2.0.0 Ok: queued as 3695598C3A1)").
fn queued_as(line: &str) -> Option<&str> {
    let rest = line.split("queued as ").nth(1)?;
    Some(rest.trim_end_matches(')').trim())
}

/// The server's reply (swaks `<-`, `<**`, `<~`, `<~*` lines) to the first
/// client command starting with COMMAND (e.g. "RCPT TO"), as "<~* 450 ...".
fn reply_to<'a>(swaks: &'a Run, command: &str) -> Option<&'a str> {
    let mut lines = swaks.stdout.lines();
    lines.find(|l| {
        let l = l.trim_start();
        (l.starts_with("-> ") || l.starts_with("~> ")) && l[3..].starts_with(command)
    })?;
    lines.find(|l| l.starts_with('<'))
}

/// The SMTP code of a swaks reply line ("<~* 450 4.3.2 ..." -> "450").
fn code(reply: &str) -> &str {
    reply.split_whitespace().nth(1).unwrap_or_default()
}

fn logs(lab: &Lab) -> String {
    PAIR_HOSTS
        .iter()
        .map(|h| format!("--- {h} maillog:\n{}\n", lab.maillog(h)))
        .collect()
}

/// No message was deferred or bounced by home or vps, ever.
fn assert_nothing_deferred(lab: &Lab) {
    for host in ["home", "vps"] {
        let log = lab.maillog(host);
        assert_eq!(log_count(&log, "status=deferred"), 0, "{host}:\n{log}");
        assert_eq!(log_count(&log, "status=bounced"), 0, "{host}:\n{log}");
    }
}

/// The whole promise: home's outgoing mail goes through vps only, over TLS
/// with vps's key pinned and home's client certificate presented; vps
/// relays it to the world; inbound backup-MX mail still reaches home
/// pinned; plan has nothing left to do and verify passes.
#[test]
fn home_relays_through_vps_both_sides_pinned() {
    let Some(lab) = applied_pair_lab() else {
        return;
    };
    let inv = inv(&lab);

    // What mxpin wrote, as a user would look at it.
    let relayhost = lab.ssh("home", "postconf -h relayhost");
    assert_eq!(
        relayhost.stdout.trim(),
        "[vps.example.org]:2525",
        "{relayhost:?}"
    );
    let listener = lab.ssh("vps", "postconf -M 2525/inet");
    assert!(
        listener.stdout.starts_with("2525") && listener.stdout.contains("smtpd"),
        "vps has a 2525 inet smtpd listener: {listener:?}"
    );

    let sent = send_out(&lab, "outbound 4711");
    assert_eq!(sent.code, 0, "home accepts outgoing mail: {sent:?}");
    assert!(
        wait_for(Duration::from_secs(30), || at_world(&lab, "outbound 4711")
            == 1),
        "the message reaches bob@world.test:\n{}",
        logs(&lab)
    );

    let home = lab.maillog("home");
    assert!(home.contains(HOME_TO_VPS_VERIFIED), "{home}");
    let handed = log_lines(
        &home,
        &[
            "to=<bob@world.test>",
            "relay=vps.example.org[127.0.0.3]:2525",
            "status=sent",
        ],
    );
    assert_eq!(handed.len(), 1, "home hands it to vps:2525 once:\n{home}");
    assert!(
        !home.contains("relay=world.test"),
        "home never delivers to world directly:\n{home}"
    );
    let qid = queued_as(handed[0]).expect("vps's queue id in home's log");

    // On vps: the message home handed over (same queue id) came from home
    // and went to world.
    let vps = lab.maillog("vps");
    assert_eq!(
        log_lines(
            &vps,
            &[&format!("{qid}: client=home.example.net[127.0.0.2]")]
        )
        .len(),
        1,
        "vps received {qid} from home:\n{vps}"
    );
    assert_eq!(
        log_lines(
            &vps,
            &[
                &format!("{qid}: to=<bob@world.test>"),
                "relay=world.test[127.0.0.4]:25",
                "status=sent",
            ]
        )
        .len(),
        1,
        "vps relayed {qid} to world:\n{vps}"
    );
    // home presented a client certificate (with none, Postfix logs
    // "Anonymous TLS connection").
    let from_home = log_lines(
        &vps,
        &["TLS connection established from home.example.net[127.0.0.2]"],
    );
    assert!(!from_home.is_empty(), "{vps}");
    assert!(
        from_home.iter().all(|l| !l.contains("Anonymous TLS")),
        "home presents its certificate to vps:\n{vps}"
    );
    // ... and vps relayed because it pins that certificate's key.
    assert_eq!(
        log_lines(
            &vps,
            &[
                "info: RCPT from home.example.net[127.0.0.2]: pinned client key of home (mxpin)",
                "to=<bob@world.test>"
            ]
        )
        .len(),
        1,
        "vps logs the accepted client key:\n{vps}"
    );

    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 0, "nothing left to do: {plan:?}");
    assert!(plan.stdout.contains("No changes"), "{plan:?}");
    let verify = lab.mxpin(&["verify", "-i", &inv]);
    assert_eq!(verify.code, 0, "{verify:?}");

    // Inbound: vps is still example.net's backup MX, pinned to home.
    let sent = send_in(&lab, "inbound 4712");
    assert_eq!(sent.code, 0, "vps accepts mail for example.net: {sent:?}");
    assert!(
        wait_for(Duration::from_secs(30), || at_home(&lab, "inbound 4712")
            == 1),
        "inbound mail reaches home:\n{}",
        logs(&lab)
    );
    let vps = lab.maillog("vps");
    assert!(vps.contains(VPS_TO_HOME_VERIFIED), "{vps}");
    assert_nothing_deferred(&lab);
}

/// vps relays for home only: a server with a certificate nobody pinned is
/// told to try again later (450 at RCPT: its mail stays queued there, it is
/// never bounced nor relayed), so is a client with no certificate; a client
/// without TLS is told to STARTTLS first. Port 25 relays for nobody.
#[test]
fn vps_refuses_whoever_it_does_not_pin() {
    let Some(lab) = applied_pair_lab() else {
        return;
    };

    let sent = lab.send(
        STRANGER,
        "bob@world.test",
        "alice@stranger.example.com",
        "stranger 4713",
    );
    assert_eq!(sent.code, 0, "stranger queues its own mail: {sent:?}");
    let refused_by_vps = |log: &str| {
        log_lines(
            log,
            &[
                "to=<bob@world.test>",
                "relay=vps.example.org[127.0.0.3]:2525",
                "status=deferred",
                "(in reply to RCPT TO command)",
            ],
        )
        .len()
    };
    assert!(
        wait_for(Duration::from_secs(30), || refused_by_vps(
            &lab.maillog("stranger")
        ) >= 1),
        "stranger's attempt is refused at RCPT:\n{}",
        logs(&lab)
    );
    let stranger = lab.maillog("stranger");
    let deferred = log_lines(&stranger, &["to=<bob@world.test>", "status=deferred"]);
    assert!(
        deferred
            .iter()
            .all(|l| l.contains("said: 450 ") && l.contains("(in reply to RCPT TO command)")),
        "{stranger}"
    );
    let vps = lab.maillog("vps");
    assert!(
        !log_lines(
            &vps,
            &["NOQUEUE: reject: RCPT from stranger.example.com[127.0.0.5]: 450 "]
        )
        .is_empty(),
        "{vps}"
    );

    // Retried: refused again, still queued, never bounced, never relayed.
    let flush = lab.flush("stranger");
    assert_eq!(flush.code, 0, "{flush:?}");
    assert!(
        wait_for(Duration::from_secs(30), || refused_by_vps(
            &lab.maillog("stranger")
        ) >= 2),
        "stranger retries and is refused again:\n{}",
        logs(&lab)
    );
    let stranger = lab.maillog("stranger");
    assert_eq!(log_count(&stranger, "status=bounced"), 0, "{stranger}");
    assert_eq!(log_count(&stranger, "status=sent"), 0, "{stranger}");
    assert_eq!(lab.queue_count("stranger"), 1, "{}", lab.queue("stranger"));
    let vps = lab.maillog("vps");
    assert!(
        !vps.contains("client=stranger.example.com"),
        "vps never takes stranger's mail:\n{vps}"
    );
    assert_eq!(at_world(&lab, "stranger 4713"), 0, "{}", logs(&lab));

    // TLS, no client certificate: 4xx at RCPT.
    let anonymous = lab.exec(&[
        "swaks",
        "--server",
        VPS,
        "--port",
        "2525",
        "-tls",
        "--to",
        "bob@world.test",
        "--from",
        "anonymous@elsewhere.example",
        "--quit-after",
        "RCPT",
        "--timeout",
        "20",
    ]);
    let rcpt = reply_to(&anonymous, "RCPT TO").unwrap_or_default();
    assert!(
        code(rcpt).starts_with('4'),
        "no certificate: 4xx at RCPT: {anonymous:?}"
    );
    assert_ne!(anonymous.code, 0, "{anonymous:?}");

    // No TLS at all: 530 (Must issue a STARTTLS command first).
    let plain = lab.exec(&[
        "swaks",
        "--server",
        VPS,
        "--port",
        "2525",
        "--to",
        "bob@world.test",
        "--from",
        "plain@elsewhere.example",
        "--quit-after",
        "RCPT",
        "--timeout",
        "20",
    ]);
    let mail = reply_to(&plain, "MAIL FROM").unwrap_or_default();
    assert_eq!(code(mail), "530", "no TLS: {plain:?}");
    assert_ne!(plain.code, 0, "{plain:?}");

    // Port 25 is the backup MX: no relaying for anyone to the world.
    let open_relay = lab.exec(&[
        "swaks",
        "--server",
        VPS,
        "--to",
        "bob@world.test",
        "--from",
        "someone@elsewhere.example",
        "--quit-after",
        "RCPT",
        "--timeout",
        "20",
    ]);
    let rcpt = reply_to(&open_relay, "RCPT TO").unwrap_or_default();
    assert!(
        code(rcpt).starts_with('4') || code(rcpt).starts_with('5'),
        "vps:25 does not relay to world.test: {open_relay:?}"
    );
}

/// Rotates (`mxpin rotate ARGS --yes`) while 40 outgoing messages (home ->
/// bob@world.test) are submitted over about 10 s and 20 inbound ones flow
/// through vps's port 25; all arrive, and `plan` has nothing to do.
fn rotate_under_load(lab: &Lab, args: &[&str], tag: &str) {
    let inv = inv(lab);
    std::thread::scope(|scope| {
        let outbound = scope.spawn(|| {
            for i in 0..40 {
                let sent = send_out(lab, &format!("[{tag} out {i:02}]"));
                assert_eq!(sent.code, 0, "{tag} out {i}: {sent:?}");
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        let inbound = scope.spawn(|| {
            for i in 0..20 {
                let sent = send_in(lab, &format!("[{tag} in {i:02}]"));
                assert_eq!(sent.code, 0, "{tag} in {i}: {sent:?}");
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        std::thread::sleep(Duration::from_secs(3));
        let mut cmd = vec!["rotate"];
        cmd.extend_from_slice(args);
        cmd.extend_from_slice(&["--yes", "-i", &inv]);
        let rotate = lab.mxpin(&cmd);
        assert_eq!(rotate.code, 0, "{tag}: {rotate:?}");
        outbound.join().unwrap();
        inbound.join().unwrap();
    });
    let all_there = || {
        (0..40).all(|i| at_world(lab, &format!("[{tag} out {i:02}]")) == 1)
            && (0..20).all(|i| at_home(lab, &format!("[{tag} in {i:02}]")) == 1)
    };
    assert!(
        wait_for(Duration::from_secs(90), all_there),
        "{tag}: 40 messages at world, 20 at home:\n{}",
        logs(lab)
    );
    assert_nothing_deferred(lab);
    let home = lab.maillog("home");
    let last = home.lines().rfind(|l| l.contains(HOME_TO_VPS)).unwrap();
    assert!(last.contains(HOME_TO_VPS_VERIFIED), "{tag}: {last}");
    let vps = lab.maillog("vps");
    let last = vps
        .lines()
        .rfind(|l| l.contains("TLS connection established to home.example.net"))
        .unwrap();
    assert!(last.contains(VPS_TO_HOME_VERIFIED), "{tag}: {last}");
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 0, "{tag}: {plan:?}");
}

/// Both hosts rotate at once under load: nothing deferred, and vps serves
/// new keys on both its ports.
#[test]
fn rotation_of_both_under_load_defers_nothing() {
    let Some(lab) = applied_pair_lab() else {
        return;
    };
    let before = (served_key(&lab, VPS, 25), served_key(&lab, VPS, 2525));
    rotate_under_load(&lab, &[], "both");
    let after = (served_key(&lab, VPS, 25), served_key(&lab, VPS, 2525));
    assert_ne!(before.0, after.0, "vps serves a new key on 25");
    assert_ne!(before.1, after.1, "vps serves a new key on 2525");
}

/// home alone, then vps alone, each with mail flowing both ways.
#[test]
fn rotation_of_home_then_vps_under_load_defers_nothing() {
    let Some(lab) = applied_pair_lab() else {
        return;
    };
    let vps_before = served_key(&lab, VPS, 2525);
    rotate_under_load(&lab, &["home"], "home");
    assert_eq!(
        served_key(&lab, VPS, 2525),
        vps_before,
        "rotating home leaves vps's key"
    );
    rotate_under_load(&lab, &["vps"], "vps");
    assert_ne!(served_key(&lab, VPS, 2525), vps_before, "vps rotated");
}

/// A dry run on a lab never applied: changes pending (exit 2), the relay
/// among them, and every host, managed or not, byte-identical.
#[test]
fn plan_on_unapplied_pair_lab_changes_nothing() {
    let Some(lab) = pair_lab() else { return };
    let inv = inv(&lab);
    let before = lab.snapshot_hosts(&PAIR_HOSTS);
    let inventory = std::fs::read(lab.inventory()).unwrap();

    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "changes pending: {plan:?}");
    assert!(
        plan.stdout.contains("[vps.example.org]:2525"),
        "the plan shows home's relayhost: {plan:?}"
    );
    let json = lab.mxpin(&["plan", "-i", &inv, "--json"]);
    assert_eq!(json.code, 2, "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("plan --json is JSON");
    assert_eq!(v["changes_pending"], true, "{json:?}");

    assert!(
        lab.snapshot_hosts(&PAIR_HOSTS) == before,
        "plan leaves every host byte-identical"
    );
    assert_eq!(std::fs::read(lab.inventory()).unwrap(), inventory);
    // Nothing listens on 2525 yet: stranger's path is still closed.
    let listening = lab.exec(&["ss", "-Hltn"]);
    let local: Vec<&str> = listening
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert!(local.contains(&"127.0.0.3:25"), "{listening:?}");
    assert!(!local.iter().any(|a| a.ends_with(":2525")), "{listening:?}");
}

/// A relay_port that one of the admin's own services already listens on is
/// refused in one line naming the service: vps is left exactly as it was,
/// and home, which could be applied, does not send its mail there.
#[test]
fn a_relay_port_the_admin_already_uses_is_refused() {
    let Some(lab) = pair_lab() else { return };
    let inv = inv(&lab);
    let add = lab.ssh(
        "vps",
        "printf '2525 inet n - n - - smtpd\\n' >> /etc/postfix/master.cf && postfix reload",
    );
    assert_eq!(add.code, 0, "{add:?}");
    let vps_before = lab.snapshot_hosts(&["vps"]);
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 1, "{apply:?}");
    let refusal: Vec<&str> = apply
        .stderr
        .lines()
        .filter(|l| l.contains("relay_port"))
        .collect();
    assert_eq!(
        refusal,
        ["error: vps: relay_port 2525 is already used by master.cf's `2525 inet n - n - - smtpd`; \
          set relay_port to a free port"],
        "{apply:?}"
    );
    assert!(
        lab.snapshot_hosts(&["vps"]) == vps_before,
        "vps is untouched"
    );
    let relayhost = lab.ssh("home", "postconf -h relayhost");
    assert_eq!(relayhost.stdout.trim(), "", "{relayhost:?}");
}

/// vps serves a certificate of the admin's own on port 25 (named by
/// `smtpd_tls_cert_file`, as certbot writes it): it stays the one port 25
/// serves, the relay port serves mxpin's pinned key, and neither listener
/// warns that legacy certificates are ignored.
#[test]
fn the_relay_port_serves_the_pinned_key_beside_the_admins_certificate() {
    let Some(lab) = pair_lab() else { return };
    let own = lab.ssh(
        "vps",
        "cd /etc/postfix && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
         -nodes -days 30 -subj /CN=vps.example.org -keyout admin.key -out admin.crt 2>/dev/null \
         && chmod 600 admin.key \
         && postconf -e smtpd_tls_cert_file=/etc/postfix/admin.crt \
            smtpd_tls_key_file=/etc/postfix/admin.key && postfix reload",
    );
    assert_eq!(own.code, 0, "{own:?}");
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv(&lab)]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let cert = lab.ssh("vps", "postconf -h smtpd_tls_cert_file");
    assert_eq!(cert.stdout.trim(), "/etc/postfix/admin.crt", "{cert:?}");

    let sent = send_out(&lab, "beside the admin's certificate 2604");
    assert_eq!(sent.code, 0, "{sent:?}");
    assert!(
        wait_for(Duration::from_secs(30), || at_world(
            &lab,
            "beside the admin's certificate 2604"
        ) == 1),
        "{}",
        logs(&lab)
    );
    let home = lab.maillog("home");
    assert!(home.contains(HOME_TO_VPS_VERIFIED), "{home}");
    assert_nothing_deferred(&lab);
    for host in ["home", "vps"] {
        let log = lab.maillog(host);
        assert!(
            !log.contains("parameters will be ignored"),
            "{host}:\n{log}"
        );
    }
    assert_eq!(lab.mxpin(&["plan", "-i", &inv(&lab)]).code, 0);
}
