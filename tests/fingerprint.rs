//! `mxpin fingerprint` and `mxpin tlsa` against openssl, on files and on
//! the lab's live servers (STARTTLS on 25 and implicit TLS on 465).

mod common;

use std::process::Command;

use common::Lab;

fn openssl_pubkey_sha256(pem: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg("openssl x509 -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(pem.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim().rsplit(' ').next().unwrap().to_ascii_uppercase()
}

#[test]
fn file_fingerprints_equal_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let (key, crt) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=mail.isp.example",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(made.status.success());
    let pem = std::fs::read_to_string(&crt).unwrap();
    for (digest, flag) in [
        ("md5", "-md5"),
        ("sha1", "-sha1"),
        ("sha256", "-sha256"),
        ("sha512", "-sha512"),
    ] {
        let ours = Command::new(common::mxpin_bin())
            .args(["fingerprint", "--format", "json", "--digest", digest])
            .arg(&crt)
            .output()
            .unwrap();
        assert!(ours.status.success());
        let v: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
        let theirs = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", flag, "-in"])
            .arg(&crt)
            .output()
            .unwrap();
        let theirs = String::from_utf8(theirs.stdout).unwrap();
        assert_eq!(
            v["chain"][0]["certificate"],
            theirs.trim().rsplit('=').next().unwrap(),
            "{digest}"
        );
        assert_eq!(v["chain"][0]["key"], "RSA 2048");
    }
    let postfix = Command::new(common::mxpin_bin())
        .args(["fingerprint", "--format", "postfix"])
        .arg(&crt)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(postfix.stdout).unwrap(),
        format!("match={}\n", openssl_pubkey_sha256(&pem))
    );
    let missing = Command::new(common::mxpin_bin())
        .args(["fingerprint", "/nonexistent.pem"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr)
        .starts_with("error: /nonexistent.pem: cannot read:"));
}

#[test]
fn live_probe_and_tlsa_match_what_the_lab_serves() {
    let Some(lab) = Lab::up() else { return };
    let inv = lab.inventory().to_str().unwrap().to_string();
    let apply = lab.mxpin(&["apply", "--yes", "-q", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let served =
        std::fs::read_to_string(lab.postfix_dir("home").join("mxpin/current.crt")).unwrap();
    let expected = openssl_pubkey_sha256(&served);

    let starttls = lab.mxpin(&[
        "fingerprint",
        "--connect",
        "127.0.0.2:25",
        "--starttls",
        "smtp",
        "--format",
        "postfix",
    ]);
    assert_eq!(starttls.code, 0, "{starttls:?}");
    assert_eq!(
        starttls.stdout,
        format!("[127.0.0.2]:25 fingerprint match={expected}\n")
    );

    // An implicit-TLS service (as on 465) on home.
    let smtps = lab.ssh(
        "home",
        "postconf -M '465/inet=465 inet n - n - - smtpd' && \
         postconf -P '465/inet/smtpd_tls_wrappermode=yes' && sleep 1.2 && postfix reload 2>/dev/null",
    );
    assert_eq!(smtps.code, 0, "{smtps:?}");
    assert!(common::wait_for(std::time::Duration::from_secs(15), || {
        lab.mxpin(&["fingerprint", "--connect", "127.0.0.2:465"])
            .code
            == 0
    }));
    let implicit = lab.mxpin(&["fingerprint", "--connect", "127.0.0.2:465"]);
    assert!(
        implicit
            .stdout
            .contains(&format!("  public key:  SHA256 {expected}\n")),
        "{implicit:?}"
    );
    assert!(
        implicit
            .stdout
            .contains("  names:       home.example.net\n"),
        "{implicit:?}"
    );

    let wrong = lab.mxpin(&["fingerprint", "--connect", "127.0.0.2:25"]);
    assert_eq!(wrong.code, 1);
    assert!(wrong.stderr.contains("add --starttls smtp"), "{wrong:?}");
    let refused = lab.mxpin(&[
        "fingerprint",
        "--connect",
        "127.0.0.2:26",
        "--starttls",
        "smtp",
    ]);
    assert_eq!(refused.code, 1);
    assert!(
        refused
            .stderr
            .starts_with("error: 127.0.0.2:26: Connection refused"),
        "{refused:?}"
    );

    let tlsa = lab.mxpin(&["tlsa", "-q", "-i", &inv]);
    assert_eq!(tlsa.code, 0, "{tlsa:?}");
    let hex = expected.replace(':', "").to_ascii_lowercase();
    assert!(
        tlsa.stdout.contains(&format!(
            "_25._tcp.home.example.net. IN TLSA 3 1 1 {hex} ; home current\n"
        )),
        "{tlsa:?}"
    );
    assert_eq!(
        tlsa.stdout.lines().count(),
        4,
        "current and next of both hosts: {tlsa:?}"
    );
}
