//! Mixed Postfix/Exim pairs on the real lab (Debian's exim4 4.96, GnuTLS):
//! an Exim backup relays to a Postfix primary with `CV=yes`, a Postfix
//! backup relays to an Exim primary `Verified`, an impostor key makes the
//! Exim backup defer (never bounce), and rotation across either pair defers
//! nothing.

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use common::{wait_for, Lab};

fn inv(lab: &Lab) -> String {
    lab.inventory().to_str().unwrap().to_string()
}

fn delivered(lab: &Lab, body: &str) -> bool {
    lab.delivered().iter().any(|m| m.contains(body))
}

/// Exim's group id (the owner group of the served key).
fn exim_gid() -> u32 {
    let out = std::process::Command::new("getent")
        .args(["group", "Debian-exim"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .expect("group Debian-exim (lab/install-deps.sh creates it)")
}

/// Sends one message for first.last@example.net through the relay and
/// waits until it is delivered.
fn send_and_deliver(lab: &Lab, body: &str) {
    let sent = lab.send_to_relay("first.last@example.net", body);
    assert_eq!(sent.code, 0, "{sent:?}");
    assert!(
        wait_for(Duration::from_secs(30), || delivered(lab, body)),
        "{}",
        lab.maillog("relay")
    );
}

/// Sends `n` messages through the relay while `during` runs, then checks
/// they were all delivered.
fn send_during(lab: &Lab, tag: &str, n: usize, during: impl FnOnce() + Send) {
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            for i in 0..n {
                let sent = lab.send_to_relay("first.last@example.net", &format!("{tag} {i:02}"));
                assert_eq!(sent.code, 0, "{tag} {i}: {sent:?}");
                std::thread::sleep(Duration::from_millis(400));
            }
        });
        std::thread::sleep(Duration::from_secs(1));
        during();
        sender.join().unwrap();
    });
    assert!(
        wait_for(Duration::from_secs(90), || (0..n)
            .all(|i| delivered(lab, &format!("{tag} {i:02}")))),
        "all {tag} messages delivered; relay log:\n{}",
        lab.maillog("relay")
    );
}

#[test]
fn exim_backup_pins_a_postfix_primary() {
    let Some(lab) = Lab::up_with(&["--exim", "relay"]) else {
        return;
    };
    let inv = inv(&lab);
    let config = lab.dir.join("relay/etc/exim4/exim4.conf");
    let before = std::fs::read_to_string(&config).unwrap();

    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(
        plan.stdout
            .contains("+.include /etc/exim4/mxpin/routers.conf"),
        "{plan:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        before,
        "plan changes nothing"
    );

    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let verify = lab.mxpin(&["verify", "-i", &inv]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(
        verify.stdout.contains(
            "exim -bt first.last@example.net: mxpin_backup to home.example.net port 25 over mxpin_smtp"
        ),
        "{verify:?}"
    );
    let key = std::fs::metadata(lab.dir.join("relay/etc/exim4/mxpin/current.key")).unwrap();
    assert_eq!(key.mode() & 0o777, 0o640);
    assert_eq!((key.uid(), key.gid()), (0, exim_gid()));
    assert_eq!(lab.mxpin(&["plan", "-i", &inv]).code, 0, "converged");

    // Pinned delivery, and only listed recipients.
    send_and_deliver(&lab, "exim pinned 1");
    let log = lab.maillog("relay");
    let line = log
        .lines()
        .find(|l| l.contains("=> first.last@example.net R=mxpin_backup T=mxpin_smtp"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("CV=yes"), "{line}");
    let refused = lab.send_to_relay("other@example.net", "not listed");
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stdout.contains("550"), "{refused:?}");

    // An impostor key on the primary: the backup defers, bounces nothing,
    // and delivers once apply has put the pinned key back.
    let impostor = lab.ssh(
        "home",
        "cd /etc/postfix && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
         -days 30 -subj /CN=home.example.net -keyout impostor.key -out impostor.crt 2>/dev/null && \
         chmod 600 impostor.key && \
         postconf -e 'smtpd_tls_chain_files = /etc/postfix/impostor.key, /etc/postfix/impostor.crt' && \
         postfix reload",
    );
    assert_eq!(impostor.code, 0, "{impostor:?}");
    std::thread::sleep(Duration::from_millis(1500));
    let sent = lab.send_to_relay("first.last@example.net", "exim impostor 1");
    assert_eq!(sent.code, 0, "{sent:?}");
    assert!(
        wait_for(Duration::from_secs(30), || lab
            .maillog("relay")
            .contains("T=mxpin_smtp defer (-37)")),
        "{}",
        lab.maillog("relay")
    );
    let queue = lab.ssh("relay", "sudo -n exim4 -bpc");
    assert_eq!(queue.stdout.trim(), "1", "{queue:?}");
    assert!(!delivered(&lab, "exim impostor 1"));
    let verify = lab.mxpin(&["verify", "-i", &inv]);
    assert_eq!(verify.code, 1, "{verify:?}");
    assert!(
        verify.stdout.contains("which relay does not pin"),
        "{verify:?}"
    );
    // An OpenSSL build trusts the system CAs besides the trust file; stand
    // in for that by trusting the impostor's certificate in the file: the
    // event_action pin alone must still refuse it.
    let peer = lab
        .dir
        .join("relay/etc/exim4/mxpin/peer-home.example.net.pem");
    let mut trusted = std::fs::read_to_string(&peer).unwrap();
    trusted
        .push_str(&std::fs::read_to_string(lab.postfix_dir("home").join("impostor.crt")).unwrap());
    std::fs::write(&peer, trusted).unwrap();
    let flush = lab.ssh("relay", "sudo -n exim4 -qff");
    assert_eq!(flush.code, 0, "{flush:?}");
    assert!(
        wait_for(Duration::from_secs(30), || lab.maillog("relay").contains(
            "SSL verify denied by event-action: depth=0: certificate not pinned"
        )),
        "{}",
        lab.maillog("relay")
    );
    assert!(!delivered(&lab, "exim impostor 1"));

    // A failing apply names the host and the step and changes nothing: an
    // obstacle where apply stages the trust file it must rewrite.
    let before = std::fs::read(&peer).unwrap();
    let obstacle = lab
        .dir
        .join("relay/etc/exim4/mxpin/.mxpin-new/peer-home.example.net.pem");
    std::fs::create_dir_all(&obstacle).unwrap();
    let failed = lab.mxpin(&["apply", "--yes", "--no-verify", "-i", &inv]);
    assert_eq!(failed.code, 1, "{failed:?}");
    assert!(
        failed
            .stderr
            .contains("relay: at step 'stage /etc/exim4/mxpin/peer-home.example.net.pem'"),
        "{failed:?}"
    );
    assert_eq!(std::fs::read(&peer).unwrap(), before, "nothing changed");
    std::fs::remove_dir(&obstacle).unwrap();

    let fix = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(fix.code, 0, "{fix:?}");
    let flush = lab.ssh("relay", "sudo -n exim4 -qff");
    assert_eq!(flush.code, 0, "{flush:?}");
    assert!(
        wait_for(Duration::from_secs(30), || delivered(
            &lab,
            "exim impostor 1"
        )),
        "{}",
        lab.maillog("relay")
    );
    let log = lab.maillog("relay");
    assert!(!log.contains("**"), "nothing bounced: {log}");

    // Rotation of both hosts while mail flows: nothing deferred.
    let defers = log.matches(" defer (").count();
    send_during(&lab, "exim rotation", 12, || {
        let rotate = lab.mxpin(&["rotate", "--yes", "-i", &inv]);
        assert_eq!(rotate.code, 0, "{rotate:?}");
    });
    let log = lab.maillog("relay");
    assert_eq!(log.matches(" defer (").count(), defers, "{log}");
    let last = log
        .lines()
        .rfind(|l| l.contains("R=mxpin_backup T=mxpin_smtp") && l.contains("=>"))
        .unwrap();
    assert!(last.contains("CV=yes"), "{last}");
    assert_eq!(lab.mxpin(&["plan", "-i", &inv]).code, 0);
}

#[test]
fn postfix_backup_pins_an_exim_primary() {
    let Some(lab) = Lab::up_with(&["--exim", "home"]) else {
        return;
    };
    let inv = inv(&lab);
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert_eq!(lab.mxpin(&["plan", "-i", &inv]).code, 0, "converged");
    let key = std::fs::metadata(lab.dir.join("home/etc/exim4/mxpin/current.key")).unwrap();
    assert_eq!((key.mode() & 0o777, key.gid()), (0o640, exim_gid()));

    send_and_deliver(&lab, "postfix to exim 1");
    let log = lab.maillog("relay");
    assert!(
        log.contains("Verified TLS connection established to home.example.net[127.0.0.2]:25"),
        "{log}"
    );

    // A key rotation never signals Exim's daemon: its SIGHUP re-executes
    // it, and a connection in that moment is refused (the relay deferred
    // a message so). apply waits instead until the new key is served.
    let mainlog = lab.dir.join("home/log/mainlog");
    let sighups = || {
        std::fs::read_to_string(&mainlog)
            .unwrap_or_default()
            .matches("SIGHUP received")
            .count()
    };
    // The first apply wrote Exim's configuration: that one was signalled.
    let before = sighups();
    assert!(before > 0, "the first apply reloaded Exim");
    send_during(&lab, "exim primary rotation", 12, || {
        let rotate = lab.mxpin(&["rotate", "--yes", "-i", &inv]);
        assert_eq!(rotate.code, 0, "{rotate:?}");
    });
    assert_eq!(sighups(), before, "no SIGHUP during the rotation");
    assert!(mainlog.exists());
    let log = lab.maillog("relay");
    assert_eq!(log.matches("status=deferred").count(), 0, "{log}");
    let last = log
        .lines()
        .rfind(|l| l.contains("TLS connection established to home.example.net"))
        .unwrap();
    assert!(last.contains("Verified TLS connection"), "{last}");
    assert_eq!(lab.mxpin(&["plan", "-i", &inv]).code, 0);
}

#[test]
fn debian_split_configuration_is_fitted_through_conf_d() {
    let Some(lab) = Lab::up_with(&["--exim-debian", "relay"]) else {
        return;
    };
    let inv = inv(&lab);
    let etc = lab.dir.join("relay/etc/exim4");
    let update_conf = std::fs::read_to_string(etc.join("update-exim4.conf.conf")).unwrap();
    assert!(update_conf.contains("dc_relay_domains=''"), "{update_conf}");

    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(
        apply
            .stdout
            .contains("Verified: 1 pinned route and the keys of every host."),
        "{apply:?}"
    );
    let update_conf = std::fs::read_to_string(etc.join("update-exim4.conf.conf")).unwrap();
    assert!(
        update_conf.contains("dc_relay_domains='example.net'"),
        "{update_conf}"
    );
    assert!(
        !etc.join("exim4.conf").exists(),
        "no single-file configuration appears"
    );
    let macros = std::fs::read_to_string(etc.join("conf.d/main/00_mxpin_macros")).unwrap();
    assert!(
        macros.contains(".include /etc/exim4/mxpin/main.conf"),
        "{macros}"
    );
    let routers = lab.ssh("relay", "sudo -n exim4 -bP router_list");
    assert!(
        routers.stdout.trim_start().starts_with("mxpin_backup"),
        "mxpin's router first: {routers:?}"
    );
    assert_eq!(lab.mxpin(&["plan", "-i", &inv]).code, 0, "converged");

    send_and_deliver(&lab, "debian pinned 1");
    let log = lab.maillog("relay");
    let line = log
        .lines()
        .find(|l| l.contains("=> first.last@example.net R=mxpin_backup T=mxpin_smtp"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("CV=yes"), "{line}");
    // An outside client (not in Debian's relay_from_hosts) may only send to
    // listed recipients.
    let bh = lab.ssh(
        "relay",
        "printf 'HELO x\\r\\nMAIL FROM:<a@b.example>\\r\\nRCPT TO:<other@example.net>\\r\\nRCPT TO:<first.last@example.net>\\r\\nQUIT\\r\\n' \
         | sudo -n exim4 -bh 192.0.2.9 2>/dev/null",
    );
    assert!(
        bh.stdout.contains("550-5.1.1 <other@example.net>"),
        "{bh:?}"
    );
    assert!(bh.stdout.contains("250 Accepted"), "{bh:?}");
}

/// An Exim primary with `smtp_port = 26` (an ISP that blocks 25): apply
/// adds 26 to its daemon_smtp_ports before the Postfix backup routes there,
/// mail goes through `Verified` on 26, and back on 25 the admin's
/// exim4.conf is theirs again, byte for byte.
#[test]
fn an_exim_primary_on_port_26_listens_there_and_gives_the_line_back() {
    let Some(lab) = Lab::up_with(&["--exim", "home"]) else {
        return;
    };
    let inv = inv(&lab);
    let config = lab.dir.join("home/etc/exim4/exim4.conf");
    let before = std::fs::read_to_string(&config).unwrap();
    lab.inventory_add("hosts.home", "smtp_port = 26");

    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(
        plan.stdout.contains(
            "note: nothing listens on smtp_port 26: mxpin adds it to daemon_smtp_ports before \
             the backup MX hosts route to it"
        ),
        "{plan:?}"
    );
    assert!(
        plan.stdout.contains("+# mxpin: daemon_smtp_ports = 25"),
        "{plan:?}"
    );
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let home = apply.stdout.find("home: applied").expect("home applied");
    let relay = apply.stdout.find("relay: applied").expect("relay applied");
    assert!(home < relay, "the primary opens 26 first: {apply:?}");
    assert_eq!(lab.mxpin(&["plan", "-i", &inv]).code, 0, "converged");

    send_and_deliver(&lab, "exim on 26 hello 4713");
    let log = lab.maillog("relay");
    assert!(
        log.contains("Verified TLS connection established to home.example.net[127.0.0.2]:26"),
        "{log}"
    );
    assert_eq!(log.matches("status=deferred").count(), 0, "{log}");

    // Back on 25: the admin's line returns, nothing of mxpin's port stays.
    let text = std::fs::read_to_string(lab.inventory()).unwrap();
    std::fs::write(lab.inventory(), text.replace("smtp_port = 26\n", "")).unwrap();
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let after = std::fs::read_to_string(&config).unwrap();
    // What mxpin keeps while it manages the host (its includes, the TLS
    // options it sets itself) taken out: the rest is the admin's.
    let mxpin_lines = |t: &str| -> String {
        t.lines()
            .filter(|l| !l.starts_with(".include /etc/exim4/mxpin/"))
            .map(|l| {
                l.strip_prefix("# mxpin: ")
                    .filter(|r| r.starts_with("tls_"))
                    .unwrap_or(l)
                    .replace(" +mxpin_relay_domains", "")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(after.contains("\ndaemon_smtp_ports = 25\n"), "{after}");
    assert_eq!(mxpin_lines(&after), mxpin_lines(&before));
    send_and_deliver(&lab, "exim back on 25 hello 4714");
    let log = lab.maillog("relay");
    assert!(
        log.contains("Verified TLS connection established to home.example.net[127.0.0.2]:25"),
        "{log}"
    );
    assert_eq!(lab.mxpin(&["plan", "-i", &inv]).code, 0);
}
