//! Issue 16, "Port 26": a primary whose `smtp_port` is not 25 gets an
//! smtpd there before its backups route to it (real binary, real lab).

mod common;

use std::time::Duration;

use common::{wait_for, Lab};

#[test]
fn a_primary_on_port_26_listens_there_before_the_backup_routes_to_it() {
    let Some(lab) = Lab::up() else { return };
    let inv = lab.inventory().to_str().unwrap().to_string();
    let master_cf = lab.postfix_dir("home").join("master.cf");
    let admin = std::fs::read(&master_cf).unwrap();

    // Settled on port 25 first: then only the port changes, no key.
    let first = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(
        std::fs::read(&master_cf).unwrap(),
        admin,
        "25 needs nothing"
    );

    lab.inventory_add("hosts.home", "smtp_port = 26");
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(
        plan.stdout.contains(
            "nothing listens on smtp_port 26: mxpin adds an smtpd there (a copy of the port-25 \
             one) before the backup MX hosts route to it"
        ),
        "{plan:?}"
    );
    assert!(
        plan.stdout.contains("+  -o syslog_name=postfix/mxpin-smtp"),
        "{plan:?}"
    );

    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    // Home's listener is open before the relay starts routing to it.
    let at = |line: &str| {
        apply
            .stderr
            .find(line)
            .unwrap_or_else(|| panic!("no {line:?} in {apply:?}"))
    };
    assert!(at("home: applied") < at("relay: applying"), "{apply:?}");
    let verify = lab.mxpin(&["verify", "--json", "-i", &inv]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(
        verify
            .stdout
            .contains("posttls-finger on relay: Verified TLS connection to [home.example.net]:26"),
        "{verify:?}"
    );
    let text = String::from_utf8(std::fs::read(&master_cf).unwrap()).unwrap();
    assert!(
        text.starts_with(std::str::from_utf8(&admin).unwrap()),
        "{text}"
    );
    // The admin's port-25 smtpd, copied: its columns, mxpin's mark.
    let smtp = std::str::from_utf8(&admin)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("smtp ") && l.split_whitespace().nth(1) == Some("inet"))
        .expect("the admin's smtp inet service")
        .split_whitespace()
        .collect::<Vec<_>>();
    let want = format!(
        "\n26      inet  {}       smtpd\n  -o syslog_name=postfix/mxpin-smtp\n",
        smtp[2..7].join("       ")
    );
    assert!(text.contains(&want), "{want:?} in {text}");

    let again = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(again.code, 0, "nothing left to do: {again:?}");

    let sent = lab.send_to_relay("first.last@example.net", "port 26 hello 4712");
    assert_eq!(sent.code, 0, "{sent:?}");
    assert!(
        wait_for(Duration::from_secs(30), || lab
            .delivered()
            .iter()
            .any(|m| m.contains("port 26 hello 4712"))),
        "delivered to home; relay log:\n{}",
        lab.maillog("relay")
    );
    let log = lab.maillog("relay");
    assert!(
        log.contains("Verified TLS connection established to home.example.net[127.0.0.2]:26"),
        "{log}"
    );
    assert!(!log.contains("status=deferred"), "{log}");
    assert!(!log.contains("Connection refused"), "{log}");
    assert!(
        lab.maillog("home").contains("postfix/mxpin-smtp/smtpd"),
        "home received it on its port-26 service"
    );

    // Back to 25: the admin's master.cf byte for byte.
    let toml = std::fs::read_to_string(lab.inventory()).unwrap();
    std::fs::write(lab.inventory(), toml.replace("smtp_port = 26\n", "")).unwrap();
    let back = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(std::fs::read(&master_cf).unwrap(), admin);
    let settled = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(settled.code, 0, "{settled:?}");
}
