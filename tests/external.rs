//! External servers on the real lab: a smarthost pinned on first use
//! (`mxpin pin`), mail relayed through it over implicit TLS and `Verified`,
//! and a key change caught by verify with old and new fingerprints.
//! fetchmail against a real POP3/IMAP server: tests/dovecot.rs.

mod common;

use std::time::Duration;

use common::{wait_for, Lab};

fn inv(lab: &Lab) -> String {
    lab.inventory().to_str().unwrap().to_string()
}

/// SHA-256 of the public key `addr` presents over implicit TLS, read with
/// openssl (an independent client), uppercase with colons.
fn served_key(lab: &Lab, addr: &str) -> String {
    let cmd = format!(
        "timeout 20 openssl s_client -connect {addr} </dev/null 2>/dev/null \
         | openssl x509 -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum"
    );
    let run = lab.exec(&["bash", "-c", &cmd]);
    let hex = run.stdout.split_whitespace().next().unwrap_or_default();
    assert_eq!(hex.len(), 64, "no certificate from {addr}: {run:?}");
    let upper = hex.to_ascii_uppercase();
    (0..64)
        .step_by(2)
        .map(|i| &upper[i..i + 2])
        .collect::<Vec<_>>()
        .join(":")
}

/// Adds a line to the `[hosts.NAME]` table of the lab inventory.
fn set_host_key(text: &str, host: &str, line: &str) -> String {
    let header = format!("[hosts.{host}]\n");
    let at = text.find(&header).expect("host table") + header.len();
    format!("{}{line}\n{}", &text[..at], &text[at..])
}

#[test]
fn smarthost_pinned_on_first_use_relays_verified_and_a_key_change_is_caught() {
    let Some(lab) = Lab::up() else { return };
    let inv = inv(&lab);
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");

    // home offers SMTP over implicit TLS on 465, with the key mxpin gave it.
    let smtps = lab.ssh(
        "home",
        "postconf -M '465/inet=465 inet n - n - - smtpd' && \
         postconf -P '465/inet/smtpd_tls_wrappermode=yes' && postfix reload",
    );
    assert_eq!(smtps.code, 0, "{smtps:?}");
    let master_before =
        std::fs::read_to_string(lab.postfix_dir("relay").join("master.cf")).unwrap();
    let main_before = std::fs::read_to_string(lab.postfix_dir("relay").join("main.cf")).unwrap();

    let text = std::fs::read_to_string(lab.inventory()).unwrap();
    let with_smarthost = format!(
        "{}\n# The ISP's smarthost, pinned on first use.\n[external.smarthost]\n\
         address = \"home.example.net:465\"   # implicit TLS\ntls = \"implicit\"\n\
         pins = []                             # filled by `mxpin pin smarthost`\n",
        set_host_key(&text, "relay", "relayhost = \"smarthost\"")
    );
    std::fs::write(lab.inventory(), &with_smarthost).unwrap();

    // No pins yet: nothing may send there, so relay cannot be planned.
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 1, "{plan:?}");
    assert!(
        plan.stderr
            .contains("relayhost smarthost has no pins yet: run `mxpin pin smarthost` first"),
        "{plan:?}"
    );

    // Pinned on first use; comments and layout kept.
    let key = served_key(&lab, "127.0.0.2:465");
    let pin = lab.mxpin(&["pin", "-i", &inv, "smarthost"]);
    assert_eq!(pin.code, 0, "{pin:?}");
    assert!(
        pin.stdout
            .contains(&format!("sha256 public-key fingerprint: {key}")),
        "{pin:?}"
    );
    let pinned = std::fs::read_to_string(lab.inventory()).unwrap();
    assert_eq!(
        pinned,
        with_smarthost.replace(
            "pins = []                             #",
            &format!("pins = [\"{key}\"]                             #")
        ),
        "only the pins value changes"
    );
    let again = lab.mxpin(&["pin", "-i", &inv, "smarthost"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("already pinned"), "{again:?}");
    let json = lab.mxpin(&["--json", "pin", "-i", &inv, "smarthost"]);
    assert_eq!(json.code, 0, "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("pin --json is JSON");
    assert_eq!(v["status"], "already_pinned", "{v}");
    assert_eq!(v["fingerprint"], key.as_str(), "{v}");
    assert_eq!(v["pins"], serde_json::json!([key]), "{v}");

    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(
        apply.stdout.contains("Verified: 2 pinned routes"),
        "{apply:?}"
    );
    let verify = lab.mxpin(&["verify", "-i", &inv]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(
        verify.stdout.contains(&format!(
            "[home.example.net]:465  external smarthost serves its pinned {key} (seen from the controller)"
        )),
        "{verify:?}"
    );
    assert!(
        verify
            .stdout
            .contains("posttls-finger on relay: Verified TLS connection to [home.example.net]:465"),
        "posttls-finger -w on relay: {verify:?}"
    );
    let main_cf = std::fs::read_to_string(lab.postfix_dir("relay").join("main.cf")).unwrap();
    assert!(
        main_cf.contains("\nrelayhost = [home.example.net]:465\n"),
        "{main_cf}"
    );
    assert!(
        main_cf.contains("\ndefault_transport = mxpin-smtps\n"),
        "{main_cf}"
    );
    let policy =
        std::fs::read_to_string(lab.postfix_dir("relay").join("mxpin/tls_policy")).unwrap();
    assert!(
        policy.contains(&format!(
            "[home.example.net]:465\tfingerprint match={key}\n"
        )),
        "{policy}"
    );
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 0, "converged: {plan:?}");

    // Mail that is not for a backed-up domain goes out through the
    // smarthost, over implicit TLS, verified against the pin.
    let sent = lab.send_to_relay("someone@elsewhere.example", "via the smarthost");
    assert_eq!(sent.code, 0, "{sent:?}");
    let relayed = wait_for(Duration::from_secs(30), || {
        let log = lab.maillog("relay");
        log.contains("to=<someone@elsewhere.example>, relay=home.example.net[127.0.0.2]:465")
            && log.contains("status=sent")
    });
    let log = lab.maillog("relay");
    assert!(relayed, "{log}");
    assert!(
        log.contains("Verified TLS connection established to home.example.net[127.0.0.2]:465"),
        "{log}"
    );
    assert!(!log.contains("status=deferred"), "{log}");

    // The smarthost changes its key (home rotates): verify names the
    // external with the pinned and the served fingerprint, and `pin`
    // refuses to trust the new key silently.
    let rotate = lab.mxpin(&["rotate", "home", "--yes", "--no-verify", "-i", &inv]);
    assert_eq!(rotate.code, 0, "{rotate:?}");
    let new_key = served_key(&lab, "127.0.0.2:465");
    assert_ne!(new_key, key);
    let verify = lab.mxpin(&["verify", "-i", &inv]);
    assert_eq!(verify.code, 1, "{verify:?}");
    let both = format!("{}{}", verify.stdout, verify.stderr);
    assert!(
        both.contains(&format!(
            "external smarthost (home.example.net:465) changed its key: pinned {key}, now serves {new_key}"
        )),
        "{verify:?}"
    );
    let refused = lab.mxpin(&["pin", "-i", &inv, "smarthost"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("--replace"), "{refused:?}");
    let replaced = lab.mxpin(&["pin", "--replace", "-i", &inv, "smarthost"]);
    assert_eq!(replaced.code, 0, "{replaced:?}");
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");

    // Without a relayhost in the inventory, mxpin takes back what it wrote:
    // main.cf and master.cf as they were.
    std::fs::write(lab.inventory(), &text).unwrap();
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let read = |f: &str| std::fs::read_to_string(lab.postfix_dir("relay").join(f)).unwrap();
    assert_eq!(read("master.cf"), master_before);
    assert_eq!(read("main.cf"), main_before);
    assert!(!read("mxpin/tls_policy").contains(":465"));
}
