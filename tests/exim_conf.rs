//! The real Exim (Debian's exim4 4.96 in an Exim lab host) accepts what
//! `mta::exim::conf` and `mta::exim::render` write: the edited exim4.conf
//! with its fragments passes `exim4 -bV -C`, routes backed-up domains with
//! `mxpin_backup`/`mxpin_smtp`, and the RCPT ACL accepts exactly the listed
//! recipients (`*@domain` = any); a broken fragment fails `-bV`.
//!
//! Everything runs in a staged copy (`exim4 -C FILE`), never the lab host's
//! live configuration, and inside the lab host: exim4 run on this machine
//! would create /var/spool/exim4 and may write /var/log/exim4/paniclog.

mod common;

use std::path::Path;

use common::{repo, Lab};
use mxpin::mta::exim::{conf, render};
use mxpin::templates::Templates;

struct Run {
    code: i32,
    out: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n{}", self.code, self.out)
    }
}

/// A two-host lab whose relay runs Exim (`lab.sh up DIR NAME --exim relay`).
struct EximLab(Lab);

impl EximLab {
    fn up() -> Option<Self> {
        Lab::up_with(&["--exim", "relay"]).map(EximLab)
    }

    /// A shell command on the Exim host, stdout and stderr together.
    fn relay(&self, cmd: &str) -> Run {
        let run = self.0.ssh("relay", &format!("{cmd} 2>&1"));
        Run {
            code: run.code,
            out: run.stdout + &run.stderr,
        }
    }

    /// The relay's /etc/exim4, seen from here.
    fn etc(&self) -> std::path::PathBuf {
        self.0.dir.join("relay/etc/exim4")
    }
}

const SHA: &str = "B3EE0C5F39C8D51632622E23FEF005FCEC7CD8BFD81E2039314FD64EF0DB67AD";

/// example.net (one listed recipient) and example.com (any address), both
/// backed up for home (127.0.0.2 in the lab's /etc/hosts).
fn backup() -> (Vec<render::Route>, Vec<render::Peer>, Vec<render::Relay>) {
    let route = |domain: &str, port| render::Route {
        domain: domain.into(),
        mx: "home.example.net".into(),
        port,
    };
    (
        vec![route("example.net", 25), route("example.com", 2525)],
        vec![render::Peer {
            mx: "home.example.net".into(),
            cert_sha256: vec![SHA.into()],
        }],
        vec![
            render::Relay {
                domain: "example.net".into(),
                recipients: Some(vec!["first.last@example.net".into()]),
            },
            render::Relay {
                domain: "example.com".into(),
                recipients: None,
            },
        ],
    )
}

/// Writes the fragments as `NAME{suffix}` into `host_dir`.
fn write_fragments(host_dir: &Path, f: &render::Fragments, suffix: &str) {
    std::fs::create_dir_all(host_dir).unwrap();
    for (name, text) in [
        ("main.conf", &f.main),
        ("acl_rcpt.conf", &f.acl_rcpt),
        ("routers.conf", &f.routers),
        ("transports.conf", &f.transports),
        ("relay_recipients", &f.relay_recipients),
        ("pins", &f.pins),
    ] {
        std::fs::write(host_dir.join(format!("{name}{suffix}")), text).unwrap();
    }
}

/// `exim4 -bh` from an outside client: one SMTP reply per RCPT.
fn rcpt_replies(lab: &EximLab, conf: &str, rcpts: &[&str]) -> Vec<String> {
    let mut script = String::from("EHLO client.example\r\nMAIL FROM:<s@elsewhere.example>\r\n");
    for r in rcpts {
        script.push_str(&format!("RCPT TO:<{r}>\r\n"));
    }
    script.push_str("QUIT\r\n");
    std::fs::write(lab.etc().join("smtp-test.txt"), script).unwrap();
    let run = lab.relay(&format!(
        "exim4 -C {conf} -bh 192.0.2.9 < /etc/exim4/smtp-test.txt"
    ));
    assert_eq!(run.code, 0, "{run:?}");
    // Replies after "250 OK" (MAIL) up to the 221 of QUIT; a multi-line
    // reply joined.
    let lines: Vec<&str> = run.out.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == "250 OK")
        .expect("MAIL accepted")
        + 1;
    let mut replies = Vec::new();
    let mut cur = String::new();
    for l in &lines[start..] {
        if l.starts_with("221 ") {
            break;
        }
        if !l.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        cur.push_str(l);
        if l.as_bytes().get(3) == Some(&b' ') {
            replies.push(std::mem::take(&mut cur));
        }
    }
    assert_eq!(replies.len(), rcpts.len(), "{run:?}");
    replies
}

#[test]
fn real_exim_accepts_the_edited_config_and_fragments() {
    let Some(lab) = EximLab::up() else {
        return;
    };
    let t = Templates::load(None).unwrap();
    let (routes, peers, relays) = backup();
    let lab_conf = std::fs::read_to_string(lab.etc().join("exim4.conf")).unwrap();
    let admin_conf =
        std::fs::read_to_string(repo().join("tests/fixtures/exim/exim4-admin.conf")).unwrap();

    for (n, (what, original)) in [("lab base", &lab_conf), ("admin variant", &admin_conf)]
        .into_iter()
        .enumerate()
    {
        let dir = format!("/etc/exim4/mxpin{n}");
        let conf_file = format!("/etc/exim4/staged{n}.conf");
        let edited = conf::edited(original, &dir, "acl_check_rcpt").unwrap();
        assert_eq!(
            conf::edited(&edited.text, &dir, "acl_check_rcpt").unwrap(),
            edited,
            "{what}: idempotent"
        );
        let f = render::render(&dir, &routes, &peers, &relays, &edited, &t).unwrap();
        // The admin's own certificate stays for clients that do not ask
        // for mxpin's name: Exim's own expansion says so.
        if let Some((cert, _)) = &edited.admin_cert {
            let line = f
                .main
                .lines()
                .find_map(|l| l.strip_prefix("tls_certificate = "))
                .expect("main.conf sets tls_certificate");
            let be = lab.relay(&format!("exim4 -be '{line}'"));
            assert_eq!(be.out.trim(), cert.as_str(), "{what}: {be:?}");
        }
        let host_dir = lab.etc().join(format!("mxpin{n}"));
        write_fragments(&host_dir, &f, "");
        std::fs::write(lab.etc().join(format!("staged{n}.conf")), &edited.text).unwrap();

        let v = lab.relay(&format!("exim4 -bV -C {conf_file}"));
        assert_eq!(v.code, 0, "{what}: -bV\n{v:?}");
        assert!(
            v.out
                .contains(&format!("Configuration file is {conf_file}")),
            "{v:?}"
        );

        // Only after -bV passed: -bt (a broken config would hit the paniclog).
        let bt = lab.relay(&format!("exim4 -C {conf_file} -bt first.last@example.net"));
        assert_eq!(bt.code, 0, "{what}: -bt\n{bt:?}");
        assert!(
            bt.out
                .contains("router = mxpin_backup, transport = mxpin_smtp"),
            "{bt:?}"
        );
        assert!(
            bt.out.contains("host home.example.net [127.0.0.2] port=25"),
            "{bt:?}"
        );
        let bt = lab.relay(&format!("exim4 -C {conf_file} -bt anyone@example.com"));
        assert_eq!(bt.code, 0, "{what}: -bt\n{bt:?}");
        assert!(
            bt.out
                .contains("router = mxpin_backup, transport = mxpin_smtp"),
            "{bt:?}"
        );
        assert!(bt.out.contains("port=2525"), "{bt:?}");
        // The options main.conf sets are Exim's now; an admin's own
        // certificate stays for everyone but mxpin's peers (SNI).
        let p = lab.relay(&format!(
            "exim4 -C {conf_file} -bP tls_certificate tls_privatekey tls_advertise_hosts +relay_to_domains +mxpin_relay_domains"
        ));
        assert_eq!(p.code, 0, "{p:?}");
        let (cert, key) = match &edited.admin_cert {
            Some((c, k)) => (
                format!("${{if eq{{$tls_in_sni}}{{mxpin.invalid}}{{{dir}/current.crt}}{{{c}}}}}"),
                format!("${{if eq{{$tls_in_sni}}{{mxpin.invalid}}{{{dir}/current.key}}{{{k}}}}}"),
            ),
            None => (format!("{dir}/current.crt"), format!("{dir}/current.key")),
        };
        assert_eq!(n == 1, edited.admin_cert.is_some(), "{what}");
        assert!(
            p.out.contains(&format!("tls_certificate = {cert}\n")),
            "{p:?}"
        );
        assert!(
            p.out.contains(&format!("tls_privatekey = {key}\n")),
            "{p:?}"
        );
        assert!(p.out.contains("tls_advertise_hosts = *\n"), "{p:?}");
        assert!(
            p.out
                .contains("domainlist mxpin_relay_domains = example.net : example.com\n"),
            "{p:?}"
        );
        let admin_relays = if n == 0 {
            ""
        } else {
            "a.example : b.example : c.example : "
        };
        assert!(
            p.out.contains(&format!(
                "domainlist relay_to_domains = {admin_relays}+mxpin_relay_domains\n"
            )),
            "{p:?}"
        );
        // The transport as EXIM.md verified it.
        let p = lab.relay(&format!("exim4 -C {conf_file} -bP transport mxpin_smtp"));
        assert!(
            p.out
                .contains(&format!("tls_verify_certificates = {dir}/peer-$host.pem")),
            "{p:?}"
        );
        assert!(p.out.contains("hosts_require_tls = *"), "{p:?}");
        assert!(p.out.contains("connection_max_messages = 1"), "{p:?}");

        // RCPT from an outside client: listed, unlisted, any, not backed up.
        let replies = rcpt_replies(
            &lab,
            &conf_file,
            &[
                "first.last@example.net",
                "other@example.net",
                "anyone@example.com",
                "x@third.example",
            ],
        );
        assert!(replies[0].starts_with("250 "), "{what}: {replies:?}");
        assert!(
            replies[1].starts_with("550-5.1.1 <other@example.net>: unknown user"),
            "{what}: {replies:?}"
        );
        assert!(replies[2].starts_with("250 "), "{what}: {replies:?}");
        assert_eq!(replies[3], "550 relay not permitted", "{what}: {replies:?}");
    }

    // Staged: the new fragments as *.new, checked before any rename.
    let dir = "/etc/exim4/mxpin0";
    let edited = conf::edited(&lab_conf, dir, "acl_check_rcpt").unwrap();
    let (routes1, peers1, mut relays1) = backup();
    relays1[0].recipients = Some(vec!["new.one@example.net".into()]);
    let f = render::render(dir, &routes1, &peers1, &relays1, &edited, &t).unwrap();
    write_fragments(&lab.etc().join("mxpin0"), &f, ".new");
    let staged: Vec<(String, String)> = [
        "main.conf",
        "acl_rcpt.conf",
        "routers.conf",
        "transports.conf",
    ]
    .iter()
    .map(|n| (format!("{dir}/{n}"), format!("{dir}/{n}.new")))
    .collect();
    let check = conf::with_staged_includes(&edited.text, &staged);
    std::fs::write(lab.etc().join("check.conf"), &check).unwrap();
    let v = lab.relay("exim4 -bV -C /etc/exim4/check.conf");
    assert_eq!(v.code, 0, "staged: {v:?}");
    let p = lab.relay("exim4 -C /etc/exim4/check.conf -bP config");
    assert!(
        p.out.contains(&format!("# 1 \"{dir}/routers.conf.new\"")),
        "{p:?}"
    );
    assert!(!p.out.contains(&format!("\"{dir}/routers.conf\"")), "{p:?}");

    // Negative: a broken staged fragment, or a staged file that is missing,
    // fails -bV with the file named.
    let broken = f
        .routers
        .replace("driver = manualroute", "driver = manualrout");
    std::fs::write(lab.etc().join("mxpin0/routers.conf.new"), broken).unwrap();
    let v = lab.relay("exim4 -bV -C /etc/exim4/check.conf");
    assert_eq!(v.code, 1, "broken router: {v:?}");
    assert!(
        v.out.contains("cannot find router driver \"manualrout\""),
        "{v:?}"
    );
    assert!(v.out.contains(&format!("{dir}/routers.conf.new")), "{v:?}");
    std::fs::write(lab.etc().join("mxpin0/routers.conf.new"), &f.routers).unwrap();
    let broken = f
        .transports
        .replace("hosts_require_tls", "hosts_require_tlss");
    std::fs::write(lab.etc().join("mxpin0/transports.conf.new"), broken).unwrap();
    let v = lab.relay("exim4 -bV -C /etc/exim4/check.conf");
    assert_eq!(v.code, 1, "broken transport: {v:?}");
    assert!(v.out.contains("hosts_require_tlss"), "{v:?}");
    std::fs::remove_file(lab.etc().join("mxpin0/transports.conf.new")).unwrap();
    let v = lab.relay("exim4 -bV -C /etc/exim4/check.conf");
    assert_eq!(v.code, 1, "missing fragment: {v:?}");
    assert!(
        v.out.contains("failed to open included configuration file"),
        "{v:?}"
    );
    // An admin option main.conf also sets, left in: refused (why conf
    // comments them out).
    let twice = edited
        .text
        .replace("# mxpin: tls_advertise_hosts =", "tls_advertise_hosts =");
    std::fs::write(lab.etc().join("twice.conf"), twice).unwrap();
    let v = lab.relay("exim4 -bV -C /etc/exim4/twice.conf");
    assert_eq!(v.code, 1, "{v:?}");
    assert!(
        v.out
            .contains("\"tls_advertise_hosts\" option set for the second time"),
        "{v:?}"
    );
}
