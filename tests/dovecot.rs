//! External mailboxes on a real Dovecot (`lab.sh up --dovecot relay`:
//! IMAP 143 and POP3 110 with STARTTLS required, 993 and 995 implicit TLS,
//! on relay.example.org = 127.0.0.3): the STARTTLS probe against it, and
//! home's real fetchmail, run with the control file mxpin wrote, fetching
//! the message into home's Postfix through every protocol and TLS mode;
//! then a changed server key that fetchmail refuses and verify names.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_for, Lab};

const ADDR: &str = "127.0.0.3";
const SERVER: &str = "relay.example.org";

fn up() -> Option<Lab> {
    Lab::up_with(&["--dovecot", "relay"])
}

/// openssl's view of a PEM certificate, run through a shell pipeline
/// (`openssl x509 ...` reading FILE), as `XX:YY:..` uppercase.
fn openssl_fp(cert: &std::path::Path, pipeline: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("openssl x509 -in \"$1\" {pipeline}"))
        .arg("openssl-fp")
        .arg(cert)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let fp = text
        .trim()
        .rsplit(['=', ' '])
        .next()
        .unwrap()
        .to_ascii_uppercase();
    assert!(fp.len() >= 47 && fp.contains(':'), "{text}");
    fp
}

/// SHA-256 of the certificate's public key (SPKI), openssl's computation.
fn spki_sha256(cert: &std::path::Path) -> String {
    openssl_fp(
        cert,
        "-noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -c",
    )
}

fn cert_fp(cert: &std::path::Path, digest: &str) -> String {
    openssl_fp(cert, &format!("-noout -fingerprint -{digest}"))
}

#[test]
fn probe_speaks_imap_and_pop3_starttls_to_dovecot() {
    let Some(lab) = up() else { return };
    let cert = lab.dovecot_cert();
    let key = spki_sha256(&cert);
    let sha256 = cert_fp(&cert, "sha256");

    for (port, proto) in [(143, "imap"), (110, "pop3")] {
        let at = format!("{ADDR}:{port}");
        let postfix = lab.mxpin(&[
            "fingerprint",
            "--connect",
            &at,
            "--starttls",
            proto,
            "--format",
            "postfix",
        ]);
        assert_eq!(postfix.code, 0, "{postfix:?}");
        assert_eq!(
            postfix.stdout,
            format!("[{ADDR}]:{port} fingerprint match={key}\n")
        );
        let json = lab.mxpin(&[
            "fingerprint",
            "--connect",
            &at,
            "--starttls",
            proto,
            "--format",
            "json",
        ]);
        assert_eq!(json.code, 0, "{json:?}");
        let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        assert_eq!(v["chain"][0]["certificate"], sha256.as_str(), "{json:?}");
        assert_eq!(v["chain"][0]["key"], "ECDSA P-256", "{json:?}");

        // Without --starttls the probe fails at once with its hint (the
        // server's plain-text greeting is not TLS), in one line.
        let plain = lab.mxpin(&["fingerprint", "--connect", &at]);
        assert_eq!(plain.code, 1, "{plain:?}");
        assert_eq!(plain.stderr.lines().count(), 1, "{plain:?}");
        assert!(
            plain
                .stderr
                .starts_with(&format!("error: {at}: TLS handshake failed"))
                && plain
                    .stderr
                    .contains("if it uses STARTTLS, add --starttls smtp, imap or pop3"),
            "{plain:?}"
        );
    }

    // The other protocol's greeting is named, not mistaken for an answer.
    let crossed = lab.mxpin(&[
        "fingerprint",
        "--connect",
        &format!("{ADDR}:143"),
        "--starttls",
        "pop3",
    ]);
    assert_eq!(crossed.code, 1, "{crossed:?}");
    assert!(
        crossed
            .stderr
            .starts_with(&format!("error: {ADDR}:143: not a POP3 greeting: \"* OK ")),
        "{crossed:?}"
    );
    let smtp = lab.mxpin(&[
        "fingerprint",
        "--connect",
        &format!("{ADDR}:110"),
        "--starttls",
        "smtp",
    ]);
    assert_eq!(smtp.code, 1, "{smtp:?}");
    assert!(
        smtp.stderr
            .starts_with(&format!("error: {ADDR}:110: not an SMTP greeting: \"+OK ")),
        "{smtp:?}"
    );

    // 993 and 995: implicit TLS, the same certificate.
    for port in [993, 995] {
        let implicit = lab.mxpin(&["fingerprint", "--connect", &format!("{ADDR}:{port}")]);
        assert_eq!(implicit.code, 0, "{implicit:?}");
        assert!(
            implicit
                .stdout
                .contains(&format!("  public key:  SHA256 {key}\n")),
            "{implicit:?}"
        );
        assert!(
            implicit
                .stdout
                .contains(&format!("  names:       {SERVER}, relay\n")),
            "{implicit:?}"
        );
    }
}

/// The inventory of the lab with one fetchmail poll on home, from the
/// external NAME (Dovecot on relay.example.org:PORT), delivering to
/// first.last@example.net.
fn with_poll(base: &str, name: &str, protocol: &str, tls: &str, port: u16) -> String {
    format!(
        "{base}\n[[hosts.home.fetchmail]]\nserver = \"{name}\"\nprotocol = \"{protocol}\"\n\
         user = \"me\"\nlocal = \"first.last@example.net\"\n\n\
         [external.{name}]\naddress = \"{SERVER}:{port}\"\ntls = \"{tls}\"\npins = []\n"
    )
}

/// Runs the real fetchmail on home with the control file mxpin wrote, as
/// root, the password in a throwaway HOME's ~/.netrc; stdout and stderr.
fn fetchmail(lab: &Lab) -> (i32, String) {
    let (user, pw) = lab.dovecot_login();
    let script = format!(
        "h=$(mktemp -d) && printf 'machine {SERVER} login {user} password {pw}\\n' > $h/.netrc && \
         chmod 600 $h/.netrc && HOME=$h timeout 60 fetchmail -f /etc/postfix/mxpin/fetchmailrc \
         -v --nosyslog -t 10 --nodetach -d0 2>&1; rc=$?; rm -rf $h; exit $rc"
    );
    let run = lab.ssh("home", &script);
    (run.code, format!("{}{}", run.stdout, run.stderr))
}

#[test]
fn fetchmail_fetches_from_dovecot_over_every_tls_mode_and_refuses_a_changed_key() {
    let Some(lab) = up() else { return };
    let inv = lab.inventory().to_str().unwrap().to_string();
    let base = std::fs::read_to_string(lab.inventory()).unwrap();
    let cert = lab.dovecot_cert();
    let key = spki_sha256(&cert);
    let md5 = cert_fp(&cert, "md5");
    let rc = lab.postfix_dir("home").join("mxpin/fetchmailrc");

    // The lab's message is in the mailbox; every round adds its own.
    assert_eq!(lab.dovecot_messages().len(), 1);
    let variants = [
        ("pop3", "implicit", 995),
        ("imap", "implicit", 993),
        ("pop3", "starttls", 110),
        ("imap", "starttls", 143),
    ];
    let mut last = String::new();
    for (i, (protocol, tls, port)) in variants.into_iter().enumerate() {
        let name = format!("mbox-{protocol}-{tls}");
        let subject = format!("mxpin dovecot round {i} {protocol} {tls}");
        lab.dovecot_add_message(&subject);
        std::fs::write(
            lab.inventory(),
            with_poll(&base, &name, protocol, tls, port),
        )
        .unwrap();

        // Not pinned yet: refused before any host changes.
        let plan = lab.mxpin(&["plan", "-i", &inv]);
        assert_eq!(plan.code, 1, "{plan:?}");
        assert!(
            plan.stderr.contains(&format!("run `mxpin pin {name}`")),
            "{plan:?}"
        );
        let pin = lab.mxpin(&["pin", "-i", &inv, &name]);
        assert_eq!(pin.code, 0, "{name}: {pin:?}");
        assert!(
            pin.stdout
                .contains(&format!("sha256 public-key fingerprint: {key}")),
            "{name}: {pin:?}"
        );
        let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
        assert_eq!(apply.code, 0, "{name}: {apply:?}");

        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&rc).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&rc).unwrap();
        assert!(
            text.contains(&format!(
                "poll \"{SERVER}\" protocol {protocol} port {port}\n    \
                 user \"me\" is \"first.last@example.net\" here\n"
            )),
            "{text}"
        );
        let ssl = if tls == "implicit" { "ssl " } else { "" };
        assert!(
            text.contains(&format!(
                "    {ssl}sslproto \"tls1.2+\" sslcertck sslcertfile \"/etc/postfix/mxpin/fetchmail-{name}.pem\"\n    \
                 sslfingerprint \"{md5}\"\n"
            )),
            "{text}"
        );

        let (code, out) = fetchmail(&lab);
        assert_eq!(code, 0, "{name}: {out}");
        assert!(
            out.contains(&format!("{SERVER} fingerprints match.")),
            "{out}"
        );
        assert!(!out.contains("Missing trust anchor"), "{out}");
        if tls == "starttls" {
            let command = if protocol == "imap" {
                "IMAP> A0001 STARTTLS"
            } else {
                "POP3> STLS"
            };
            assert!(out.contains(command), "{out}");
            assert!(
                out.contains(&format!("{SERVER}: upgrade to TLS succeeded.")),
                "{out}"
            );
        }
        assert!(
            out.contains(&format!("for me at {SERVER}")),
            "{name}: {out}"
        );
        let delivered = wait_for(Duration::from_secs(20), || {
            lab.delivered_to("home", "first.last")
                .iter()
                .any(|m| m.contains(&format!("Subject: {subject}")))
        });
        assert!(delivered, "{name}: not in home's Maildir: {out}");
        assert!(
            lab.dovecot_messages().is_empty(),
            "{name}: fetched messages are deleted on the server"
        );
        let log = lab.maillog("home");
        assert!(
            log.contains("to=<first.last@example.net>, relay=virtual")
                && !log.contains("status=bounced"),
            "{log}"
        );
        let plan = lab.mxpin(&["plan", "-i", &inv]);
        assert_eq!(plan.code, 0, "{name}: converged: {plan:?}");
        last = name;
    }
    // Every round's message, and the lab's own, reached first.last.
    let got = lab.delivered_to("home", "first.last");
    assert_eq!(got.len(), variants.len() + 1, "{got:#?}");
    assert!(got
        .iter()
        .any(|m| m.contains("Subject: mxpin lab mailbox message")));

    // The server changes its key. fetchmail, with the file mxpin wrote for
    // the pinned key, refuses it and fetches nothing.
    lab.dovecot_add_message("must stay on the server");
    let renewed = lab.dovecot_new_cert();
    assert_eq!(renewed.code, 0, "{renewed:?}");
    let new_key = spki_sha256(&cert);
    assert_ne!(new_key, key);
    let served = wait_for(Duration::from_secs(20), || {
        let probe = lab.mxpin(&[
            "fingerprint",
            "--connect",
            &format!("{ADDR}:143"),
            "--starttls",
            "imap",
            "--format",
            "postfix",
        ]);
        probe.stdout.contains(&new_key)
    });
    assert!(served, "Dovecot does not serve its new certificate");
    let (code, out) = fetchmail(&lab);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{SERVER} fingerprints do not match!")),
        "{out}"
    );
    assert!(out.contains("upgrade to TLS failed"), "{out}");
    assert!(
        !out.contains("LOGIN \"me\"") && !out.contains("message for me"),
        "no login to a server that failed: {out}"
    );
    let left = lab.dovecot_messages();
    assert_eq!(left.len(), 1, "{left:#?}");
    assert!(left[0].contains("Subject: must stay on the server"));
    assert!(!lab
        .delivered_to("home", "first.last")
        .iter()
        .any(|m| m.contains("must stay on the server")));

    let verify = lab.mxpin(&["verify", "-i", &inv]);
    assert_eq!(verify.code, 1, "{verify:?}");
    let both = format!("{}{}", verify.stdout, verify.stderr);
    assert!(
        both.contains(&format!(
            "external {last} ({SERVER}:143) changed its key: pinned {key}, now serves {new_key}"
        )),
        "{verify:?}"
    );
}
