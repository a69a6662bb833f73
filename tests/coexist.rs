//! The admin's own CA-signed certificate (certbot style: a fullchain file and
//! a private key named by `smtpd_tls_cert_file` / `smtpd_tls_key_file`) stays
//! the default certificate for everyone. mxpin adds
//! `tls_server_sni_maps = texthash:/etc/postfix/mxpin/sni`, which maps the
//! reserved name `mxpin.invalid` to its own key, and every backup asks for
//! that name (`servername=mxpin.invalid` in its tls_policy entry).
//!
//! Everything here is checked as a user would check it: `openssl s_client`
//! from the controller (with and without SNI, against the test CA), the
//! files on the hosts, `postconf -h`, and mail through the backup.

mod common;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{all_delivered, log_count, wait_for, Lab};

/// Where the admin's certificate lives on home (as certbot users copy it).
const FULLCHAIN: &str = "/etc/postfix/le/fullchain.pem";
const PRIVKEY: &str = "/etc/postfix/le/privkey.pem";
const CA_CN: &str = "mxpin Lab Test CA";
const SNI_MAP: &str = "texthash:/etc/postfix/mxpin/sni";
const MXPIN_SNI: &str = "mxpin.invalid";
const VERIFIED_TO_HOME: &str =
    "Verified TLS connection established to home.example.net[127.0.0.2]:25";
/// home's smtpd logs the SNI name a client asked for after "to".
const RELAY_ASKED_FOR_PIN: &str =
    "TLS connection established from relay.example.org[127.0.0.3] to mxpin.invalid";

fn inv(lab: &Lab) -> String {
    lab.inventory().to_str().unwrap().to_string()
}

/// The last lines of both hosts' mail logs, for failure messages.
fn logs(lab: &Lab) -> String {
    let tail = |host: &str| {
        let log = lab.maillog(host);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    };
    format!(
        "\n--- home maillog (last 80 lines)\n{}\n--- relay maillog (last 80 lines)\n{}",
        tail("home"),
        tail("relay")
    )
}

// ------------------------------------------------------------------ openssl

/// Runs openssl on the controller with INPUT on its stdin; its stdout.
fn openssl_in(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs openssl on the controller (file generation), asserting success.
fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lowercase hex without colons: the form every fingerprint is compared in.
fn norm(fp: &str) -> String {
    fp.trim().replace(':', "").to_ascii_lowercase()
}

/// SHA-256 of the certificate (DER), as `openssl x509 -fingerprint -sha256`.
fn cert_fp(pem: &[u8]) -> String {
    let out = openssl_in(&["x509", "-noout", "-fingerprint", "-sha256"], pem);
    let out = String::from_utf8_lossy(&out);
    norm(out.trim().split_once('=').expect("fingerprint line").1)
}

/// SHA-256 of the certificate's public key (SPKI DER): what mxpin pins.
fn spki(pem: &[u8]) -> String {
    let pubkey = openssl_in(&["x509", "-noout", "-pubkey"], pem);
    let der = openssl_in(&["pkey", "-pubin", "-outform", "DER"], &pubkey);
    let hex = openssl_in(&["dgst", "-sha256", "-r"], &der);
    let hex = String::from_utf8_lossy(&hex);
    let hex = hex.split_whitespace().next().unwrap_or_default();
    assert_eq!(hex.len(), 64, "sha256 of the public key: {hex}");
    norm(hex)
}

/// The test CA and the leaves it issues, on the controller (DIR/ca).
struct TestCa {
    dir: PathBuf,
}

/// One CA-signed certificate for home.example.net as certbot writes it.
struct Leaf {
    /// The leaf alone (PEM).
    leaf: Vec<u8>,
    /// Leaf then CA: what smtpd_tls_cert_file names.
    fullchain: PathBuf,
    key: PathBuf,
    /// notAfter as openssl prints it ("Dec 21 10:46:11 2026 GMT").
    not_after: String,
}

impl Leaf {
    fn fp(&self) -> String {
        cert_fp(&self.leaf)
    }

    /// notAfter as openssl prints it and in RFC 3339 ("2026-12-21T10:46:11Z"):
    /// the expiry a note may name, to the second.
    fn not_after_forms(&self) -> Vec<String> {
        // "Dec 21 10:46:11 2026 GMT" (the day may be space-padded).
        let w: Vec<&str> = self.not_after.split_whitespace().collect();
        assert_eq!(w.len(), 5, "notAfter {}", self.not_after);
        let month = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ]
        .iter()
        .position(|m| *m == w[0])
        .unwrap_or_else(|| panic!("month in notAfter {}", self.not_after))
            + 1;
        let day: u32 = w[1].parse().unwrap();
        let rfc3339 = format!("{}-{month:02}-{day:02}T{}Z", w[3], w[2]);
        vec![self.not_after.clone(), rfc3339]
    }
}

impl TestCa {
    /// ECDSA P-256, CN "mxpin Lab Test CA", a proper CA certificate.
    fn new(lab: &Lab) -> TestCa {
        let dir = lab.dir.join("ca");
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa { dir };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            &format!("/CN={CA_CN}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            ca.path("ca.key").to_str().unwrap(),
            "-out",
            ca.path("ca.crt").to_str().unwrap(),
        ]);
        std::fs::write(
            ca.path("leaf.ext"),
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=DNS:home.example.net\n",
        )
        .unwrap();
        ca
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn cert(&self) -> String {
        self.path("ca.crt").to_str().unwrap().to_string()
    }

    /// A new key and a leaf for home.example.net (SAN DNS:home.example.net,
    /// 20 days, as short-lived as ACME certificates), signed by the CA.
    fn issue(&self, name: &str) -> Leaf {
        let p = |ext: &str| self.path(&format!("{name}.{ext}"));
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=home.example.net",
            "-keyout",
            p("key").to_str().unwrap(),
            "-out",
            p("csr").to_str().unwrap(),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            p("csr").to_str().unwrap(),
            "-CA",
            self.path("ca.crt").to_str().unwrap(),
            "-CAkey",
            self.path("ca.key").to_str().unwrap(),
            "-CAserial",
            self.path("ca.srl").to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "20",
            "-extfile",
            self.path("leaf.ext").to_str().unwrap(),
            "-out",
            p("crt").to_str().unwrap(),
        ]);
        let verify = openssl(&[
            "verify",
            "-CAfile",
            self.path("ca.crt").to_str().unwrap(),
            p("crt").to_str().unwrap(),
        ]);
        assert!(verify.trim_end().ends_with(": OK"), "{verify}");
        let leaf = std::fs::read(p("crt")).unwrap();
        let ca = std::fs::read(self.path("ca.crt")).unwrap();
        let fullchain = p("fullchain.pem");
        std::fs::write(&fullchain, [leaf.as_slice(), ca.as_slice()].concat()).unwrap();
        let not_after = openssl(&[
            "x509",
            "-in",
            p("crt").to_str().unwrap(),
            "-noout",
            "-enddate",
        ]);
        let not_after = not_after
            .trim()
            .strip_prefix("notAfter=")
            .expect("notAfter=")
            .to_string();
        Leaf {
            leaf,
            fullchain,
            key: p("key"),
            not_after,
        }
    }
}

// ------------------------------------------------------------------ home

/// What the admin set up on home, recorded before mxpin touches it.
struct AdminSetup {
    /// The `smtpd_tls_cert_file` / `smtpd_tls_key_file` lines of main.cf.
    lines: Vec<String>,
    fullchain: Vec<u8>,
    key: Vec<u8>,
}

/// home's path (on the controller) of a path on home below /etc/postfix.
fn on_home(lab: &Lab, path: &str) -> PathBuf {
    lab.postfix_dir("home")
        .join(path.strip_prefix("/etc/postfix/").unwrap())
}

/// main.cf lines that set the admin's certificate parameters.
fn admin_lines(main_cf: &str) -> Vec<String> {
    main_cf
        .lines()
        .filter(|l| {
            ["smtpd_tls_cert_file", "smtpd_tls_key_file"]
                .iter()
                .any(|p| {
                    l.strip_prefix(p)
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                })
        })
        .map(str::to_string)
        .collect()
}

fn main_cf(lab: &Lab, host: &str) -> String {
    std::fs::read_to_string(lab.postfix_dir(host).join("main.cf")).unwrap()
}

/// `postconf -h NAME...` on a host: one value per name (Postfix's effective
/// values, defaults included).
fn postconf_h(lab: &Lab, host: &str, names: &[&str]) -> Vec<String> {
    let run = lab.ssh(host, &format!("postconf -h {}", names.join(" ")));
    assert_eq!(run.code, 0, "{run:?}");
    let values: Vec<String> = run.stdout.lines().map(str::to_string).collect();
    assert_eq!(values.len(), names.len(), "postconf -h {names:?}: {run:?}");
    values
}

/// Installs LEAF on home as certbot users do: the files under
/// /etc/postfix/le (key 0600), `postconf -e` of the two parameters (which
/// replaces Debian's snakeoil lines the lab copied from this machine) and a
/// reload. Returns what the admin's setup looks like on disk.
fn install_admin_cert(lab: &Lab, ca: &TestCa, leaf: &Leaf) -> AdminSetup {
    let run = lab.ssh(
        "home",
        &format!(
            "set -e; install -d -m 0755 /etc/postfix/le; \
             install -m 0644 '{}' {FULLCHAIN}; install -m 0600 '{}' {PRIVKEY}; \
             postconf -e smtpd_tls_cert_file={FULLCHAIN} smtpd_tls_key_file={PRIVKEY}; \
             postfix reload 2>&1",
            leaf.fullchain.display(),
            leaf.key.display()
        ),
    );
    assert_eq!(run.code, 0, "installing the admin's certificate: {run:?}");
    assert_eq!(
        postconf_h(
            lab,
            "home",
            &[
                "smtpd_tls_cert_file",
                "smtpd_tls_key_file",
                "smtpd_tls_chain_files"
            ]
        ),
        [FULLCHAIN, PRIVKEY, ""],
        "setup: Postfix on home uses the admin's certificate"
    );
    let setup = AdminSetup {
        lines: admin_lines(&main_cf(lab, "home")),
        fullchain: std::fs::read(on_home(lab, FULLCHAIN)).unwrap(),
        key: std::fs::read(on_home(lab, PRIVKEY)).unwrap(),
    };
    assert_eq!(
        setup.lines,
        [
            format!("smtpd_tls_cert_file = {FULLCHAIN}"),
            format!("smtpd_tls_key_file = {PRIVKEY}")
        ],
        "setup: main.cf names the admin's certificate once"
    );
    // The fixture itself works before mxpin: the CA-signed leaf verifies.
    let seen = wait_served(lab, ca, &["-noservername"], &leaf.fp());
    assert_verified(&seen, "setup: without SNI");
    assert_eq!(
        seen.fp(),
        leaf.fp(),
        "setup: home serves the admin's leaf\n{seen:?}"
    );
    setup
}

/// The admin's setup on home is exactly as the admin left it: the same
/// main.cf lines, byte for byte, no smtpd_tls_chain_files (which would
/// override them), the same certificate and key files, key still 0600.
fn assert_admin_setup_kept(lab: &Lab, setup: &AdminSetup, what: &str) {
    let text = main_cf(lab, "home");
    assert_eq!(
        admin_lines(&text),
        setup.lines,
        "{what}: the admin's lines in home's main.cf:\n{text}"
    );
    let chain: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("smtpd_tls_chain_files"))
        .collect();
    assert!(
        chain.is_empty(),
        "{what}: home's main.cf has {chain:?}, which overrides the admin's certificate"
    );
    assert_eq!(
        postconf_h(
            lab,
            "home",
            &[
                "smtpd_tls_cert_file",
                "smtpd_tls_key_file",
                "smtpd_tls_chain_files",
                "tls_server_sni_maps"
            ]
        ),
        [FULLCHAIN, PRIVKEY, "", SNI_MAP],
        "{what}: Postfix's effective values on home"
    );
    assert!(
        std::fs::read(on_home(lab, FULLCHAIN)).unwrap() == setup.fullchain,
        "{what}: {FULLCHAIN} changed"
    );
    assert!(
        std::fs::read(on_home(lab, PRIVKEY)).unwrap() == setup.key,
        "{what}: {PRIVKEY} changed"
    );
    let mode = std::fs::metadata(on_home(lab, PRIVKEY))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{what}: mode of {PRIVKEY}");
}

// ------------------------------------------------------------------ TLS view

/// What `openssl s_client -starttls smtp` sees on home's port 25.
struct Seen {
    args: String,
    output: String,
    /// The certificate the server presented (PEM, the leaf).
    leaf: Vec<u8>,
}

impl Seen {
    fn fp(&self) -> String {
        cert_fp(&self.leaf)
    }

    fn spki(&self) -> String {
        spki(&self.leaf)
    }
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "openssl s_client {}:\n{}", self.args, self.output)
    }
}

/// `openssl s_client -starttls smtp -connect 127.0.0.2:25 -CAfile CA ARGS`
/// from the controller (in the lab's network namespace).
fn s_client(lab: &Lab, ca: &TestCa, args: &[&str]) -> Seen {
    let args = args.join(" ");
    let cmd = format!(
        "echo QUIT | timeout 20 openssl s_client -starttls smtp -connect 127.0.0.2:25 \
         -CAfile '{}' {args} 2>&1",
        ca.cert()
    );
    let run = lab.exec(&["bash", "-c", &cmd]);
    let output = run.stdout;
    let begin = output.find("-----BEGIN CERTIFICATE-----");
    let end = output.find("-----END CERTIFICATE-----");
    let leaf = match (begin, end) {
        (Some(b), Some(e)) if b < e => {
            format!("{}-----END CERTIFICATE-----\n", &output[b..e]).into_bytes()
        }
        _ => panic!(
            "no certificate from 127.0.0.2:25 (s_client {args}):\n{output}{}",
            logs(lab)
        ),
    };
    Seen { args, output, leaf }
}

/// s_client with ARGS until the served leaf has fingerprint FP (bounded:
/// the test's own `postfix reload` takes effect asynchronously); the view
/// either way.
fn wait_served(lab: &Lab, ca: &TestCa, args: &[&str], fp: &str) -> Seen {
    let mut seen = s_client(lab, ca, args);
    wait_for(Duration::from_secs(10), || {
        seen = s_client(lab, ca, args);
        seen.fp() == fp
    });
    seen
}

/// The chain verified against the test CA, and its leaf is the CA-signed
/// certificate for home.example.net.
fn assert_verified(seen: &Seen, what: &str) {
    let codes: Vec<&str> = seen
        .output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Verify return code:"))
        .collect();
    assert!(
        !codes.is_empty() && codes.iter().all(|c| *c == "Verify return code: 0 (ok)"),
        "{what}: verification against the test CA: {codes:?}\n{seen:?}"
    );
    for line in [
        "subject=CN = home.example.net",
        &format!("issuer=CN = {CA_CN}"),
    ] {
        assert!(
            seen.output.lines().any(|l| l.trim() == line),
            "{what}: no '{line}'\n{seen:?}"
        );
    }
}

/// Everyone without mxpin's name sees the admin's leaf, verified: no SNI
/// (like any client connecting by address), and SNI home.example.net with
/// the host name checked (like a client connecting by name).
fn assert_admin_cert_for_everyone(lab: &Lab, ca: &TestCa, leaf: &Leaf, what: &str) {
    for args in [
        &["-noservername"][..],
        &[
            "-servername",
            "home.example.net",
            "-verify_hostname",
            "home.example.net",
        ][..],
    ] {
        let seen = s_client(lab, ca, args);
        assert_verified(&seen, what);
        assert_eq!(
            seen.fp(),
            leaf.fp(),
            "{what}: the served leaf is the admin's ({})\n{seen:?}",
            leaf.fullchain.display()
        );
    }
}

/// What a client asking for mxpin.invalid is served: a certificate other
/// than the admin's leaf, whose key is one the relay pins for home (and the
/// one in home's mxpin/current.crt). Its SPKI sha256.
fn mxpin_served_key(lab: &Lab, ca: &TestCa, admin: &Leaf, what: &str) -> String {
    let seen = s_client(lab, ca, &["-servername", MXPIN_SNI]);
    assert_ne!(
        seen.fp(),
        admin.fp(),
        "{what}: SNI {MXPIN_SNI} must get mxpin's certificate, not the admin's\n{seen:?}{}",
        logs(lab)
    );
    let key = seen.spki();
    let pins = relay_pins_for_home(lab);
    assert!(
        pins.contains(&key),
        "{what}: the key served for {MXPIN_SNI} ({key}) is not one relay pins: {pins:?}\n{seen:?}"
    );
    let current = std::fs::read(lab.postfix_dir("home").join("mxpin/current.crt")).unwrap();
    assert_eq!(
        key,
        spki(&current),
        "{what}: the key served for {MXPIN_SNI} is home's mxpin/current.crt"
    );
    key
}

// ------------------------------------------------------------------ relay

/// relay's tls_policy entry for home, as written on disk.
fn relay_policy_for_home(lab: &Lab) -> String {
    let path = lab.postfix_dir("relay").join("mxpin/tls_policy");
    let policy = std::fs::read_to_string(&path).unwrap_or_default();
    policy
        .lines()
        .find(|l| l.split_whitespace().next() == Some("[home.example.net]:25"))
        .unwrap_or_else(|| panic!("no [home.example.net]:25 in {}:\n{policy}", path.display()))
        .to_string()
}

/// The pins (normalized) of relay's tls_policy entry for home, in order.
fn relay_pins_for_home(lab: &Lab) -> Vec<String> {
    let line = relay_policy_for_home(lab);
    let matches: Vec<&str> = line
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("match="))
        .collect();
    assert!(!matches.is_empty(), "no match= in {line}");
    matches
        .iter()
        .flat_map(|m| m.split('|'))
        .map(norm)
        .collect()
}

/// A message through the relay to home, delivered; relay logs a Verified
/// connection to home, and home logs that relay asked for mxpin.invalid.
fn send_and_expect_verified(lab: &Lab, body: &str) {
    let relay_log = lab.maillog("relay");
    let verified_before = log_count(&relay_log, VERIFIED_TO_HOME);
    let asked_before = log_count(&lab.maillog("home"), RELAY_ASKED_FOR_PIN);
    let sent = lab.send_to_relay("first.last@example.net", body);
    assert_eq!(
        sent.code, 0,
        "relay accepts first.last@example.net: {sent:?}"
    );
    assert!(
        wait_for(Duration::from_secs(30), || lab
            .delivered()
            .iter()
            .any(|m| m.contains(body))),
        "'{body}' reaches home's mailbox{}",
        logs(lab)
    );
    let relay_log = lab.maillog("relay");
    assert!(
        log_count(&relay_log, VERIFIED_TO_HOME) > verified_before,
        "relay logs '{VERIFIED_TO_HOME}' for '{body}'{}",
        logs(lab)
    );
    assert!(
        log_count(&lab.maillog("home"), RELAY_ASKED_FOR_PIN) > asked_before,
        "home logs '{RELAY_ASKED_FOR_PIN}' for '{body}'{}",
        logs(lab)
    );
    assert_nothing_deferred(lab);
}

fn assert_nothing_deferred(lab: &Lab) {
    let log = lab.maillog("relay");
    assert_eq!(log_count(&log, "status=deferred"), 0, "{}", logs(lab));
    assert_eq!(log_count(&log, "status=bounced"), 0, "{}", logs(lab));
}

/// A lab with the admin's CA-signed certificate on home and mxpin applied.
struct Applied {
    lab: Lab,
    ca: TestCa,
    leaf: Leaf,
    setup: AdminSetup,
}

fn set_up_and_apply() -> Option<Applied> {
    let lab = Lab::up()?;
    let ca = TestCa::new(&lab);
    let leaf = ca.issue("leaf1");
    let setup = install_admin_cert(&lab, &ca, &leaf);
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv(&lab)]);
    assert_eq!(apply.code, 0, "{apply:?}{}", logs(&lab));
    Some(Applied {
        lab,
        ca,
        leaf,
        setup,
    })
}

/// One host's part of a plan: from its header line ("home (6 changes)") to
/// the next unindented line.
fn plan_section(stdout: &str, host: &str) -> String {
    let header = format!("{host} (");
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with(&header));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no section {header}...) in the plan:\n{stdout}"));
    let mut out = format!("{first}\n");
    for l in lines.take_while(|l| l.starts_with(' ')) {
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn assert_plan_no_changes(lab: &Lab, what: &str) {
    let plan = lab.mxpin(&["plan", "-i", &inv(lab)]);
    assert_eq!(plan.code, 0, "{what}: plan has nothing to do: {plan:?}");
    assert!(
        plan.stdout.contains("No changes: 2 hosts up to date."),
        "{what}: {plan:?}"
    );
}

// ------------------------------------------------------------------ tests

/// The admin's CA-signed certificate stays what everyone gets; the backup
/// asks for mxpin.invalid and gets mxpin's pinned key; nothing the admin
/// wrote changes.
#[test]
fn admins_ca_certificate_stays_for_everyone_and_peers_get_the_pin() {
    let Some(lab) = Lab::up() else { return };
    let inv = inv(&lab);
    let ca = TestCa::new(&lab);
    let leaf = ca.issue("leaf1");
    let setup = install_admin_cert(&lab, &ca, &leaf);
    let before = lab.snapshot();

    // The plan names the admin's certificate and keeps it.
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "plan with pending changes exits 2: {plan:?}");
    let home_plan = plan_section(&plan.stdout, "home");
    let expiry = leaf.not_after_forms();
    let notes: Vec<&str> = home_plan
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("note:"))
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("CN=home.example.net")
            && n.contains(CA_CN)
            && expiry.iter().any(|e| n.contains(e.as_str()))),
        "a note of home names the admin's certificate (subject CN=home.example.net, issuer \
         {CA_CN}, expiry one of {expiry:?}): {notes:?}\n{plan:?}"
    );
    assert!(
        home_plan.contains(&format!("+tls_server_sni_maps = {SNI_MAP}")),
        "{plan:?}"
    );
    for gone in [
        "+smtpd_tls_chain_files",
        "-smtpd_tls_cert_file",
        "-smtpd_tls_key_file",
        "+smtpd_tls_cert_file",
        "+smtpd_tls_key_file",
    ] {
        assert!(
            !home_plan.lines().any(|l| l.trim_start().starts_with(gone)),
            "home's plan must not touch the admin's certificate ({gone}): {plan:?}"
        );
    }
    assert!(
        lab.snapshot() == before,
        "plan must leave every host byte-identical"
    );

    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}{}", logs(&lab));

    // Everyone else: the admin's leaf, verified against the CA.
    assert_admin_cert_for_everyone(&lab, &ca, &leaf, "after apply");
    // The backup's name: mxpin's key, pinned by relay.
    let policy = relay_policy_for_home(&lab);
    assert!(
        policy
            .split_whitespace()
            .any(|w| w == "servername=mxpin.invalid"),
        "relay's policy for home asks for {MXPIN_SNI}: {policy}"
    );
    mxpin_served_key(&lab, &ca, &leaf, "after apply");
    assert_admin_setup_kept(&lab, &setup, "after apply");

    send_and_expect_verified(&lab, "beside the CA certificate 4242");

    assert_plan_no_changes(&lab, "after apply");
    let verify = lab.mxpin(&["verify", "-i", &inv]);
    assert_eq!(verify.code, 0, "{verify:?}{}", logs(&lab));
}

/// A rotation while mail flows changes mxpin's key only: the admin's
/// certificate is still served to everyone, and nothing is deferred.
#[test]
fn rotation_keeps_the_admins_certificate_and_defers_nothing() {
    let Some(Applied {
        lab,
        ca,
        leaf,
        setup,
    }) = set_up_and_apply()
    else {
        return;
    };
    let inv = inv(&lab);
    let key_before = mxpin_served_key(&lab, &ca, &leaf, "before rotation");
    let pins_before = relay_pins_for_home(&lab);
    assert_eq!(
        pins_before.len(),
        2,
        "relay pins home's current and next key: {pins_before:?}"
    );
    assert_eq!(pins_before[0], key_before, "current pin first");

    std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            for i in 0..40 {
                let sent =
                    lab.send_to_relay("first.last@example.net", &format!("load message {i:02}"));
                assert_eq!(sent.code, 0, "message {i}: {sent:?}");
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        std::thread::sleep(Duration::from_secs(3));
        let rotate = lab.mxpin(&["rotate", "--yes", "-i", &inv]);
        assert_eq!(rotate.code, 0, "{rotate:?}{}", logs(&lab));
        sender.join().unwrap();
    });

    assert!(
        all_delivered(&lab, "load message", 40, Duration::from_secs(60)),
        "all 40 messages delivered{}",
        logs(&lab)
    );
    assert_nothing_deferred(&lab);
    let log = lab.maillog("relay");
    let last_tls = log
        .lines()
        .rfind(|l| l.contains("TLS connection established to home.example.net"))
        .unwrap_or_else(|| panic!("relay never connected to home over TLS{}", logs(&lab)));
    assert!(last_tls.contains("Verified TLS connection"), "{last_tls}");
    let last_delivery = log
        .lines()
        .rfind(|l| l.contains("relay=home.example.net[127.0.0.2]:25"))
        .unwrap();
    assert!(last_delivery.contains("status=sent"), "{last_delivery}");

    assert_admin_cert_for_everyone(&lab, &ca, &leaf, "after rotation");
    let key_after = mxpin_served_key(&lab, &ca, &leaf, "after rotation");
    assert_ne!(
        key_after, key_before,
        "home serves a new key for {MXPIN_SNI}"
    );
    assert_eq!(
        key_after, pins_before[1],
        "home switched to the next key relay already pinned"
    );
    assert_admin_setup_kept(&lab, &setup, "after rotation");
    assert_plan_no_changes(&lab, "after rotation");
}

/// certbot renews the admin's certificate in place (a new key, the same
/// CA, the same files) and reloads Postfix: mxpin has nothing to do,
/// everyone gets the new leaf, the backup still delivers Verified.
#[test]
fn renewing_the_admins_certificate_changes_nothing_mxpin_owns() {
    let Some(Applied {
        lab,
        ca,
        leaf,
        setup,
    }) = set_up_and_apply()
    else {
        return;
    };
    let inv = inv(&lab);
    let key_before = mxpin_served_key(&lab, &ca, &leaf, "before renewal");
    let mxpin_dir = |lab: &Lab| {
        let mut files = lab.snapshot();
        files.retain(|p: &PathBuf, _| p.starts_with(lab.postfix_dir("home").join("mxpin")));
        files
    };
    let owned_before = mxpin_dir(&lab);
    let relay_policy_before = relay_policy_for_home(&lab);

    // The renewal, as certbot's deploy hook would do it.
    let renewed = ca.issue("leaf2");
    assert_ne!(renewed.fp(), leaf.fp());
    let run = lab.ssh(
        "home",
        &format!(
            "set -e; cp '{}' {FULLCHAIN}; cp '{}' {PRIVKEY}; postfix reload 2>&1",
            renewed.fullchain.display(),
            renewed.key.display()
        ),
    );
    assert_eq!(run.code, 0, "renewal: {run:?}");
    assert!(
        std::fs::read(on_home(&lab, FULLCHAIN)).unwrap()
            == std::fs::read(&renewed.fullchain).unwrap(),
        "renewal wrote {FULLCHAIN}"
    );
    let seen = wait_served(&lab, &ca, &["-noservername"], &renewed.fp());
    assert_eq!(
        seen.fp(),
        renewed.fp(),
        "clients without SNI get the renewed leaf after the reload\n{seen:?}{}",
        logs(&lab)
    );

    assert_plan_no_changes(&lab, "after renewal");
    let renewed_setup = AdminSetup {
        lines: setup.lines,
        fullchain: std::fs::read(&renewed.fullchain).unwrap(),
        key: std::fs::read(&renewed.key).unwrap(),
    };
    assert_admin_setup_kept(&lab, &renewed_setup, "after renewal");
    assert_admin_cert_for_everyone(&lab, &ca, &renewed, "after renewal");
    assert_eq!(
        mxpin_served_key(&lab, &ca, &renewed, "after renewal"),
        key_before,
        "mxpin's key for {MXPIN_SNI} did not change"
    );
    assert!(
        mxpin_dir(&lab) == owned_before,
        "home's /etc/postfix/mxpin did not change"
    );
    assert_eq!(relay_policy_for_home(&lab), relay_policy_before);

    send_and_expect_verified(&lab, "after the renewal 777");
    let verify = lab.mxpin(&["verify", "-i", &inv]);
    assert_eq!(verify.code, 0, "{verify:?}{}", logs(&lab));
}

/// An Exim primary with the admin's own certificate in exim4.conf: it
/// stays the one every client gets (tls_certificate is an expansion on
/// $tls_in_sni), and the Postfix backup, which asks for mxpin.invalid,
/// gets mxpin's key and delivers Verified.
#[test]
fn an_exim_primary_keeps_the_admins_certificate_too() {
    let Some(lab) = Lab::up_with(&["--exim", "home"]) else {
        return;
    };
    let ca = TestCa::new(&lab);
    let leaf = ca.issue("exim");
    let etc = lab.dir.join("home/etc/exim4");
    std::fs::create_dir_all(etc.join("le")).unwrap();
    std::fs::copy(&leaf.fullchain, etc.join("le/fullchain.pem")).unwrap();
    std::fs::copy(&leaf.key, etc.join("le/privkey.pem")).unwrap();
    let conf = etc.join("exim4.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    let admin = "tls_advertise_hosts = *\n\
                 tls_certificate = /etc/exim4/le/fullchain.pem\n\
                 tls_privatekey = /etc/exim4/le/privkey.pem\n";
    assert!(
        text.contains("\ntls_advertise_hosts =\n"),
        "the lab's base config"
    );
    std::fs::write(
        &conf,
        text.replace("\ntls_advertise_hosts =\n", &format!("\n{admin}")),
    )
    .unwrap();
    let setup = lab.ssh(
        "home",
        "chown root:Debian-exim /etc/exim4/le/privkey.pem && chmod 640 /etc/exim4/le/privkey.pem \
         && kill -HUP $(cat /run/exim4/exim.pid)",
    );
    assert_eq!(setup.code, 0, "{setup:?}");
    let before = wait_served(&lab, &ca, &["-noservername"], &leaf.fp());
    assert_verified(&before, "the admin's setup before mxpin");

    let inv = inv(&lab);
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 2, "{plan:?}");
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");

    let no_sni = wait_served(&lab, &ca, &["-noservername"], &leaf.fp());
    assert_verified(&no_sni, "no SNI, after apply");
    let public = s_client(
        &lab,
        &ca,
        &[
            "-servername",
            "home.example.net",
            "-verify_hostname",
            "home.example.net",
        ],
    );
    assert_eq!(public.fp(), leaf.fp(), "{public:?}");
    assert_verified(&public, "SNI home.example.net, after apply");
    let pinned = s_client(&lab, &ca, &["-servername", MXPIN_SNI]);
    assert_ne!(pinned.fp(), leaf.fp(), "{pinned:?}");
    let pins = relay_pins_for_home(&lab);
    assert!(
        pins.contains(&pinned.spki()),
        "the relay pins what home serves for {MXPIN_SNI}: {pins:?}"
    );

    let sent = lab.send_to_relay("first.last@example.net", "to an exim home 6061");
    assert_eq!(sent.code, 0, "{sent:?}");
    assert!(
        wait_for(Duration::from_secs(30), || lab
            .delivered()
            .iter()
            .any(|m| m.contains("to an exim home 6061"))),
        "{}",
        logs(&lab)
    );
    assert!(
        lab.maillog("relay").contains(VERIFIED_TO_HOME),
        "{}",
        logs(&lab)
    );
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 0, "{plan:?}");
}
