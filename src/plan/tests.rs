//! Tests of plans: rendering, masking of private keys, JSON, ordering.

use super::show::summary_line;
use super::*;
use crate::tls::{Digest, PinKind, HIDDEN};

fn change(action: Action, old: Option<Content>, new: Option<Content>) -> FileChange {
    FileChange {
        path: "/etc/postfix/mxpin/x".into(),
        action,
        old,
        new,
        mode: 0o644,
        group: 0,
    }
}

#[test]
fn diffs_show_changed_lines_only() {
    let old: String = (1..=20).map(|i| format!("line {i}\n")).collect();
    let new = old.replace("line 10\n", "line ten\n");
    let c = change(
        Action::Modify,
        Some(Content::Text(old)),
        Some(Content::Text(new)),
    );
    let d = c.diff().unwrap();
    assert!(d.contains("-line 10\n+line ten\n"), "{d}");
    assert!(!d.contains("line 1\n"), "context is limited: {d}");
    assert!(d.starts_with("--- /etc/postfix/mxpin/x\n+++ /etc/postfix/mxpin/x\n"));
}

#[test]
fn new_file_is_shown_in_full_against_dev_null() {
    let c = change(Action::Create, None, Some(Content::Text("a\nb\n".into())));
    assert_eq!(
        c.diff().unwrap(),
        "--- /dev/null\n+++ /etc/postfix/mxpin/x\n@@ -0,0 +1,2 @@\n+a\n+b\n"
    );
}

#[test]
fn secrets_never_rendered() {
    let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    let c = change(
        Action::Create,
        None,
        Some(Content::Secret(SecretPem::new(key.into()))),
    );
    assert!(c.diff().is_none());
    let plan = HostPlan {
        host: HostName::parse("h").unwrap(),
        changes: vec![c],
        commands: vec![],
        notes: vec![],
        switches_key: true,
        generates_keys: false,
        opens_listener: false,
        pinned: vec![],
        transitional: false,
        steps: crate::mta::Steps::Postfix(Default::default()),
    };
    let text = render_host(&plan, PinStyle::SHA256_KEY);
    assert!(
        text.contains(HIDDEN) && !text.contains("PRIVATE KEY"),
        "{text}"
    );
    let json = to_json(
        &[HostOutcome::Planned(Box::new(plan))],
        PinStyle::SHA256_KEY,
    )
    .to_string();
    assert!(
        !json.contains("PRIVATE KEY") && json.contains("\"secret\":true"),
        "{json}"
    );
    assert!(json.contains("\"changes_pending\":true"));
}

fn cert(mx: &str, days: u32) -> crate::tls::Identity {
    let now = time::macros::datetime!(2026-12-01 00:00 UTC);
    crate::tls::generate(crate::tls::KeyAlgorithm::EcdsaP256, mx, days, now).unwrap()
}

#[test]
fn certificates_are_one_line_in_the_inventory_digest() {
    let (a, b) = (cert("home.example.net", 30), cert("home.example.net", 60));
    let c = change(
        Action::Modify,
        Some(Content::Text(a.cert.pem().to_string())),
        Some(Content::Text(b.cert.pem().to_string())),
    );
    let plan = HostPlan {
        host: HostName::parse("h").unwrap(),
        changes: vec![c],
        commands: vec![],
        notes: vec![],
        switches_key: true,
        opens_listener: false,
        pinned: vec![],
        transitional: false,
        generates_keys: false,
        steps: crate::mta::Steps::Postfix(Default::default()),
    };
    let style = PinStyle {
        digest: Digest::Md5,
        kind: PinKind::Certificate,
    };
    let text = render_host(&plan, style);
    let short = |id: &crate::tls::Identity| {
        let fp = id.cert.fingerprint(Digest::Md5, PinKind::Certificate);
        format!("{}…", &fp.as_str()[..23])
    };
    let want = format!(
        "  ~ /etc/postfix/mxpin/x (modify): CN=home.example.net, ECDSA P-256, \
             until 2026-12-31 → 2027-01-30, pin {} → {}\n",
        short(&a),
        short(&b)
    );
    let plain =
        String::from_utf8(anstream::adapter::strip_bytes(text.as_bytes()).into_vec()).unwrap();
    assert!(plain.ends_with(&want), "{plain}");
    assert!(!plain.contains("BEGIN") && !plain.contains("@@"), "{plain}");
    // JSON keeps the diff and adds the summaries.
    let json = to_json(&[HostOutcome::Planned(Box::new(plan))], style);
    let change = &json["hosts"][0]["changes"][0];
    assert!(change["diff"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert_eq!(change["certificate"]["new"]["until"], "2027-01-30");
    assert_eq!(change["certificate"]["old"]["key"], "ECDSA P-256");
}

#[test]
fn a_new_chain_is_one_line_and_anything_else_in_the_file_is_a_diff() {
    let (a, b) = (cert("a.example.net", 30), cert("b.example.net", 30));
    let chain = format!("{}{}", a.cert.pem(), b.cert.pem());
    let c = change(Action::Create, None, Some(Content::Text(chain)));
    let (old, new) = c.certificates(PinStyle::SHA256_KEY).unwrap();
    assert!(old.is_none());
    let line = summary_line(None, new.as_ref());
    assert!(
        line.starts_with("CN=a.example.net (+1 in chain), ECDSA P-256, until 2026-12-31, pin "),
        "{line}"
    );
    // A dry run's new certificate, not known before apply.
    let c = change(
        Action::Modify,
        Some(Content::Text(a.cert.pem().to_string())),
        Some(Content::Text(format!(
            "{}\n",
            crate::keys::CERTIFICATE_AFTER_APPLY
        ))),
    );
    let (old, new) = c.certificates(PinStyle::SHA256_KEY).unwrap();
    let line = summary_line(old.as_ref(), new.as_ref());
    assert!(
        line.starts_with("CN=a.example.net, ECDSA P-256, until 2026-12-31, pin ")
            && line.ends_with("… → (new certificate: known after apply)"),
        "{line}"
    );
    // A comment beside the certificate: the reader sees the whole file.
    let commented = format!("# mine\n{}", a.cert.pem());
    let c = change(Action::Create, None, Some(Content::Text(commented)));
    assert!(c.certificates(PinStyle::SHA256_KEY).is_none());
    // A certificate replaced by text: shown as a diff as well.
    let c = change(
        Action::Modify,
        Some(Content::Text(a.cert.pem().to_string())),
        Some(Content::Text("not a certificate\n".into())),
    );
    assert!(c.certificates(PinStyle::SHA256_KEY).is_none());
}
