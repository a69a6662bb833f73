//! Exim facts parsing and planning, from outputs of the real facts script
//! captured in the lab (`lab.sh up --exim relay`: relay runs Exim 4.96,
//! home Postfix) before and after `mxpin apply`. `facts-relay-applied.out`
//! was re-framed since with its files in one bundle, as the script writes
//! them now; the others are as captured, a frame per file (still valid
//! input). One file of about 550 lines: every test here plans from those
//! captures with the same inventory; topics of their own (drain) live in
//! `tests/`.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::{plan_host, EximFacts, RouteTest};
use crate::desired::{self, StoredKeys};
use crate::facts;
use crate::inventory::{self, Inventory};
use crate::mta::postfix::PostfixFacts;
use crate::plan::{Action, Content, HostPlan};
use crate::templates::Templates;
use crate::tls::{Certificate, Digest, PinKind};

const LAB: &str = r#"
[hosts.home]
ssh = "home"
mx = "home.example.net"

[hosts.relay]
mta = "exim"
ssh = "mxpinlab@relay"
mx = "relay.example.org"
sudo = true

[domains."example.net"]
primary = "home"
backups = ["relay"]
recipients = ["first.last@example.net"]
"#;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/exim")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn exim(name: &str) -> Result<EximFacts, String> {
    let sections = facts::parse(&fixture(name)).map_err(|e| e.to_string())?;
    EximFacts::from_sections(&sections)
}

fn home_keys() -> StoredKeys {
    let sections = facts::parse(&fixture("facts-home-postfix-applied.out")).unwrap();
    PostfixFacts::from_sections(&sections)
        .unwrap()
        .stored_keys()
}

fn lab() -> Inventory {
    inventory::parse(Path::new("mxpin.toml"), LAB).unwrap()
}

fn now() -> OffsetDateTime {
    // Within the validity of the captured certificates (made 2026-11-22).
    OffsetDateTime::from_unix_timestamp(1_795_400_000).unwrap()
}

fn plan_relay(inv: &Inventory, f: &EximFacts) -> Result<HostPlan, String> {
    plan_relay_keyed(inv, f, &|_| home_keys())
}

/// Plans relay with `f`, every other host with `peer_keys(name)`.
fn plan_relay_keyed(
    inv: &Inventory,
    f: &EximFacts,
    peer_keys: &dyn Fn(&str) -> StoredKeys,
) -> Result<HostPlan, String> {
    let keys = inv
        .hosts
        .iter()
        .map(|h| {
            let stored = match h.name.as_str() {
                "relay" => f.stored_keys(),
                name => peer_keys(name),
            };
            desired::resolve_keys(inv, h, &stored, now()).map_err(|e| e.to_string())
        })
        .collect();
    let i = inv
        .hosts
        .iter()
        .position(|h| h.name.as_str() == "relay")
        .unwrap();
    let d = desired::desired(inv, keys, &Default::default(), &[]).swap_remove(i)?;
    plan_host(&d, f, inv, &Templates::load(None).unwrap())
}

#[test]
fn fresh_facts_read_as_debian_exim_without_mxpin() {
    let f = exim("facts-relay-fresh.out").unwrap();
    assert_eq!(f.version, "4.96");
    assert_eq!(f.tls_library, "GnuTLS");
    assert_eq!(f.config_file, "/etc/exim4/exim4.conf");
    assert!(f.config.as_deref().unwrap().contains("begin routers"));
    assert_eq!(f.pid_file, "/run/exim4/exim.pid");
    assert_eq!(f.rcpt_acl, "acl_check_rcpt");
    assert!(f.running);
    assert!(f.gid > 0);
    assert!(f.files.is_empty());
    let keys = f.stored_keys();
    assert!(keys.current.key.is_none() && keys.next.cert.is_none());
}

#[test]
fn applied_facts_hold_secret_keys_and_the_pins_of_the_primary() {
    let f = exim("facts-relay-applied.out").unwrap();
    assert!(matches!(f.files["current.key"].content, Content::Secret(_)));
    assert!(f.files["current.key"].mode_is(0o640, f.gid));
    assert!(f.files["next.key"].mode_is(0o600, 0));
    let inv = lab();
    // What relay pins for home, in the inventory's form, is what home has.
    let home = home_keys();
    let want: Vec<String> = [&home.current, &home.next]
        .iter()
        .map(|p| {
            Certificate::from_pem(p.cert.as_deref().unwrap())
                .unwrap()
                .fingerprint(Digest::Sha256, PinKind::PublicKey)
                .to_string()
        })
        .collect();
    assert_eq!(f.pins_for("[home.example.net]:25", &inv.settings), want);
    assert!(f
        .pins_for("[home.example.net]:26", &inv.settings)
        .is_empty());
    assert!(f.pins_for("[other.example]:25", &inv.settings).is_empty());
}

#[test]
fn truncated_or_failing_facts_are_refused() {
    let out = fixture("facts-relay-applied.out");
    let cut = out.len() - 20;
    assert!(facts::parse(&out[..cut]).is_err() || exim_from(&out[..cut]).is_err());
    let s =
        facts::parse(b"@@mxpin error 24\nexim4 not found: is Exim\n@@mxpin end 2\nok\n").unwrap();
    assert_eq!(
        EximFacts::from_sections(&s).unwrap_err(),
        "exim4 not found: is Exim"
    );
}

/// Every captured answer, cut at every byte, flipped, with a frame sent
/// twice or the frames reordered, is refused or reads the same
/// (`mta::garbled::check`). The name of a peer certificate's section
/// carries the primary's mx, so a flip there reads as another peer's file:
/// the one thing framing cannot tell.
#[test]
fn garbled_facts_are_never_read_as_a_host() {
    for name in ["facts-relay-fresh.out", "facts-relay-applied.out"] {
        crate::mta::garbled::check(&fixture(name), &exim_from, &|n| n.starts_with("file:peer-"));
    }
}

fn exim_from(out: &[u8]) -> Result<EximFacts, String> {
    let s = facts::parse(out).map_err(|e| e.to_string())?;
    EximFacts::from_sections(&s)
}

#[test]
fn fresh_exim_backup_gets_fragments_includes_and_a_group_readable_key() {
    let inv = lab();
    let f = exim("facts-relay-fresh.out").unwrap();
    let plan = plan_relay(&inv, &f).unwrap();
    let find = |name: &str| {
        plan.changes
            .iter()
            .find(|c| c.path == format!("/etc/exim4/mxpin/{name}"))
            .unwrap_or_else(|| panic!("no change for {name}"))
    };
    let key = find("current.key");
    assert_eq!(
        (key.action, key.mode, key.group),
        (Action::Create, 0o640, f.gid)
    );
    assert_eq!(find("next.key").mode, 0o600);
    let home = home_keys();
    let peer = find("peer-home.example.net.pem")
        .new
        .as_ref()
        .unwrap()
        .raw()
        .to_string();
    assert_eq!(
        peer,
        format!(
            "{}{}",
            home.current.cert.as_deref().unwrap(),
            home.next.cert.as_deref().unwrap()
        ),
        "the trust file holds exactly home's current and next certificates"
    );
    let pins = find("pins").new.as_ref().unwrap().raw().to_string();
    let sha = Certificate::from_pem(home.current.cert.as_deref().unwrap())
        .unwrap()
        .fingerprint(Digest::Sha256, PinKind::Certificate)
        .as_str()
        .replace(':', "");
    assert!(
        pins.contains(&format!("home.example.net: {sha} : ")),
        "{pins}"
    );
    let config = plan
        .changes
        .iter()
        .find(|c| c.path == "/etc/exim4/exim4.conf")
        .unwrap();
    let new = config.new.as_ref().unwrap().raw();
    for include in [
        "main.conf",
        "acl_rcpt.conf",
        "routers.conf",
        "transports.conf",
    ] {
        assert!(
            new.contains(&format!(".include /etc/exim4/mxpin/{include}\n")),
            "{new}"
        );
    }
    assert!(plan.switches_key, "the host starts serving mxpin's key");
    assert_eq!(plan.pinned.len(), 1);
    let crate::mta::Steps::Exim(steps) = &plan.steps else {
        panic!("not an Exim plan")
    };
    assert_eq!(
        steps.route_tests,
        [RouteTest {
            address: "first.last@example.net".into(),
            mx: "home.example.net".into(),
            port: 25
        }]
    );
    assert!(plan.commands.iter().any(|c| c.starts_with("kill -HUP")));
}

#[test]
fn applied_exim_backup_plans_nothing() {
    let inv = lab();
    let f = exim("facts-relay-applied.out").unwrap();
    let plan = plan_relay(&inv, &f).unwrap();
    assert!(
        plan.is_empty(),
        "{:#?}",
        plan.changes
            .iter()
            .map(|c| (&c.path, c.action))
            .collect::<Vec<_>>()
    );
    assert!(plan.commands.is_empty() && plan.notes.is_empty());
}

#[test]
fn unknown_layouts_are_refused_by_name() {
    let inv = lab();
    let mut f = exim("facts-relay-fresh.out").unwrap();
    f.config_file = "/usr/local/etc/exim/configure".into();
    let e = plan_relay(&inv, &f).unwrap_err();
    assert_eq!(
        e,
        "Exim reads /usr/local/etc/exim/configure: mxpin fits a single /etc/exim4/exim4.conf \
         or Debian's split configuration"
    );
    // Debian's non-split template would need edits of a dpkg conffile.
    f.config_file = super::AUTOGENERATED.into();
    f.update_conf =
        Some("dc_eximconfig_configtype='internet'\ndc_use_split_config='false'\n".into());
    let e = plan_relay(&inv, &f).unwrap_err();
    assert!(e.contains("dc_use_split_config is not 'true'"), "{e}");
}

#[test]
fn debian_split_layout_writes_conf_d_hooks_and_relay_domains() {
    let inv = lab();
    let mut f = exim("facts-relay-fresh.out").unwrap();
    f.config_file = super::AUTOGENERATED.into();
    f.update_conf = Some(
        "dc_eximconfig_configtype='internet'\ndc_relay_domains='admin.example;other.example'\n\
         dc_use_split_config='true'\n"
            .into(),
    );
    let plan = plan_relay(&inv, &f).unwrap();
    let text = |path: &str| {
        plan.changes
            .iter()
            .find(|c| c.path == path)
            .unwrap_or_else(|| panic!("no change for {path}"))
            .new
            .as_ref()
            .unwrap()
            .raw()
            .to_string()
    };
    assert_eq!(
        text("/etc/exim4/update-exim4.conf.conf"),
        "dc_eximconfig_configtype='internet'\n\
         dc_relay_domains='admin.example;other.example;example.net'\ndc_use_split_config='true'\n"
    );
    assert!(text("/etc/exim4/conf.d/router/050_mxpin_backup")
        .ends_with(".include /etc/exim4/mxpin/routers.conf\n"));
    let main = text("/etc/exim4/mxpin/main.conf");
    assert!(
        main.contains("MAIN_TLS_CERTIFICATE = /etc/exim4/mxpin/current.crt"),
        "{main}"
    );
    assert!(main.contains("CHECK_RCPT_LOCAL_ACL_FILE = /etc/exim4/mxpin/acl_rcpt.conf"));
    assert!(
        !main.contains("tls_certificate ="),
        "options come from Debian's macros"
    );
    assert!(plan.changes.iter().all(|c| !c.path.ends_with("exim4.conf")));

    // A domain mxpin no longer backs up leaves dc_relay_domains; the
    // admin's own stay.
    let mut later = f.clone();
    later.update_conf = Some(text("/etc/exim4/update-exim4.conf.conf"));
    later.files.insert(
        "main.conf".into(),
        crate::mta::FoundFile {
            content: Content::Text(main.replace("= example.net", "= example.net : gone.example")),
            ls: String::new(),
        },
    );
    let conf = later
        .update_conf
        .clone()
        .unwrap()
        .replace("example.net'", "example.net;gone.example'");
    later.update_conf = Some(conf);
    let plan = plan_relay(&inv, &later).unwrap();
    let update = plan
        .changes
        .iter()
        .find(|c| c.path == "/etc/exim4/update-exim4.conf.conf")
        .unwrap();
    assert!(update
        .new
        .as_ref()
        .unwrap()
        .raw()
        .contains("dc_relay_domains='admin.example;other.example;example.net'\n"));

    // An admin's own definition of a macro mxpin sets is refused up front.
    f.macros.insert(
        "MAIN_TLS_CERTIFICATE".into(),
        "MAIN_TLS_CERTIFICATE=/etc/exim4/exim.crt".into(),
    );
    let e = plan_relay(&inv, &f).unwrap_err();
    assert!(
        e.starts_with("the configuration already defines MAIN_TLS_CERTIFICATE"),
        "{e}"
    );
}

#[test]
fn route_test_reads_exim_bt_output() {
    let t = RouteTest {
        address: "first.last@example.net".into(),
        mx: "home.example.net".into(),
        port: 25,
    };
    let good = "first.last@example.net\n  router = mxpin_backup, transport = mxpin_smtp\n  host home.example.net [127.0.0.2] \n";
    assert!(t.passes(good));
    assert!(!t.passes(&good.replace("mxpin_backup", "dnslookup")));
    assert!(!t.passes(&good.replace("home.example.net [", "other.example [")));
    let t2525 = RouteTest { port: 2525, ..t };
    assert!(!t2525.passes(good));
    assert!(t2525.passes(&good.replace("] \n", "] port=2525\n")));
}

/// Deferred mail after a fix: which domains apply flushes, and how.
mod drain;

/// Issue 16: Exim's listening ports, from `daemon_smtp_ports` and
/// `local_interfaces`.
#[test]
fn listening_ports_are_read_from_exims_lists() {
    use super::listen_ports;
    assert_eq!(listen_ports("smtp", ""), [25]);
    assert_eq!(listen_ports("smtp : 26 : submission", ""), [25, 26, 587]);
    assert_eq!(listen_ports("<; 25 ; 465", "<; 127.0.0.1 ; ::1"), [25, 465]);
    assert_eq!(
        listen_ports("smtp", "<; 127.0.0.1.26 ; [::1]:2626 ; ::1"),
        [25, 26, 2626]
    );
    assert_eq!(listen_ports("smtp", "0.0.0.0.26 : ::::1.27"), [25, 26, 27]);
    // The lab's fixture: Debian's defaults.
    assert_eq!(exim("facts-relay-fresh.out").unwrap().listen_ports, [25]);
}

/// Issue 14: [policies] on an Exim host are refused at plan in one line,
/// not silently ignored; without them the host plans.
#[test]
fn policies_on_an_exim_host_are_refused() {
    let text = format!("{LAB}\n[policies]\n\"example.org\" = \"secure\"\n");
    let inv = inventory::parse(Path::new("mxpin.toml"), &text).unwrap();
    let f = exim("facts-relay-fresh.out").unwrap();
    assert_eq!(
        plan_relay(&inv, &f).unwrap_err(),
        "[policies] (example.org) are supported on Postfix hosts only: this Exim host would not enforce them"
    );
    let inv = inventory::parse(Path::new("mxpin.toml"), LAB).unwrap();
    assert!(plan_relay(&inv, &f).is_ok());
}

/// An Exim primary on a port it does not listen on: in a single
/// exim4.conf, mxpin adds the port to the admin's daemon_smtp_ports (their
/// line commented out, given back when the port goes back to 25), and the
/// plan opens the listener before the backups route to it; interfaces with
/// their own ports, and Debian's generated configuration, are refused in
/// one line.
#[test]
fn an_exim_primary_listens_on_its_smtp_port() {
    let text = LAB
        .replace(
            "mx = \"relay.example.org\"\n",
            "mx = \"relay.example.org\"\nsmtp_port = 26\n",
        )
        .replace(
            "primary = \"home\"\nbackups = [\"relay\"]",
            "primary = \"relay\"\nbackups = [\"home\"]",
        );
    let inv = inventory::parse(Path::new("mxpin.toml"), &text).unwrap();
    let fresh = exim("facts-relay-fresh.out").unwrap();
    let plan = plan_relay(&inv, &fresh).unwrap();
    assert!(plan.opens_listener);
    assert!(plan.notes.iter().any(|n| n
        == "nothing listens on smtp_port 26: mxpin adds it to daemon_smtp_ports before the \
            backup MX hosts route to it"));
    let text_of = |plan: &HostPlan, path: &str| {
        plan.changes
            .iter()
            .find(|c| c.path == path)
            .and_then(|c| c.new.as_ref())
            .map(|c| c.raw().to_string())
    };
    let main = text_of(&plan, "/etc/exim4/mxpin/main.conf").unwrap();
    assert!(main.ends_with("daemon_smtp_ports = 25 : 26\n"), "{main}");
    let conf = text_of(&plan, "/etc/exim4/exim4.conf").unwrap();
    assert!(
        conf.contains("\n# mxpin: daemon_smtp_ports = 25\n"),
        "{conf}"
    );

    // Applied, the daemon listens on both: nothing more to do.
    let mut applied = drain::simulate_apply(&fresh, &plan);
    applied.listen_ports = vec![25, 26];
    let again = plan_relay(&inv, &applied).unwrap();
    assert!(
        again.is_empty() && !again.opens_listener,
        "{:?}",
        again.changes
    );

    // Back on port 25: the admin's line comes back, mxpin's goes.
    let back = LAB.replace(
        "primary = \"home\"\nbackups = [\"relay\"]",
        "primary = \"relay\"\nbackups = [\"home\"]",
    );
    let inv25 = inventory::parse(Path::new("mxpin.toml"), &back).unwrap();
    let plan = plan_relay(&inv25, &applied).unwrap();
    assert!(!plan.opens_listener);
    assert_eq!(
        text_of(&plan, "/etc/exim4/exim4.conf").unwrap(),
        text_of(
            &plan_relay(&inv25, &fresh).unwrap(),
            "/etc/exim4/exim4.conf"
        )
        .unwrap(),
        "the same as if mxpin had never added the port"
    );
    let main = text_of(&plan, "/etc/exim4/mxpin/main.conf").unwrap();
    assert!(!main.contains("daemon_smtp_ports"), "{main}");

    // The admin's list already names it: nothing is edited.
    let mut listening = fresh.clone();
    listening.config = fresh.config.as_ref().map(|c| {
        c.replace(
            "daemon_smtp_ports = 25\n",
            "daemon_smtp_ports = <; 25 ; 26\n",
        )
    });
    listening.listen_ports = vec![25, 26];
    let plan = plan_relay(&inv, &listening).unwrap();
    assert!(!plan.opens_listener);
    let conf = text_of(&plan, "/etc/exim4/exim4.conf").unwrap();
    assert!(
        conf.contains("\ndaemon_smtp_ports = <; 25 ; 26\n"),
        "{conf}"
    );

    // Interfaces with their own ports: the admin's to change.
    let mut ported = fresh.clone();
    ported.interface_ports = true;
    assert_eq!(
        plan_relay(&inv, &ported).unwrap_err(),
        "smtp_port 26 on an Exim primary whose local_interfaces names ports: add 26 there"
    );

    // A backup on port 26 is no primary: nothing to open.
    let backup = LAB.replace(
        "mx = \"relay.example.org\"\n",
        "mx = \"relay.example.org\"\nsmtp_port = 26\n",
    );
    let inv = inventory::parse(Path::new("mxpin.toml"), &backup).unwrap();
    let plan = plan_relay(&inv, &fresh).unwrap();
    assert!(!plan.opens_listener);
    assert!(!text_of(&plan, "/etc/exim4/mxpin/main.conf")
        .unwrap()
        .contains("daemon_smtp_ports"));
}

/// The configuration's path reaches the apply script quoted, in commands
/// and in messages: a failing check shows it literally and runs nothing.
/// (`id`, `chown` and `flock` are stubbed so the script runs as any user.)
#[test]
fn apply_script_quotes_the_configuration_path_in_its_messages() {
    let inv = lab();
    let f = exim("facts-relay-fresh.out").unwrap();
    let mut plan = plan_relay(&inv, &f).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mark = tmp.path().join("ran");
    let dir = format!(
        "{}/a b'c\"d`touch {m}`$(touch {m})",
        tmp.path().display(),
        m = mark.display()
    );
    let config = format!("{dir}/exim4.conf");
    match &mut plan.steps {
        crate::mta::Steps::Exim(s) => {
            s.config_dir = dir.clone();
            s.config_file = config.clone();
        }
        _ => unreachable!("an Exim plan"),
    }
    let script = crate::mta::apply_script(&plan);
    let stubs = "id() { echo 0; }\nchown() { :; }\nflock() { :; }\n";
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("{stubs}{}", script.text())])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "@@mxpin-failed check files: {config} changed since mxpin read it (another run?); plan again\n"
        )),
        "{stdout}"
    );
    assert!(!mark.exists());
}
