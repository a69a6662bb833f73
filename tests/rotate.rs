//! Key rotation on the real lab: no message deferred, ever.

mod common;

use std::time::Duration;

use common::{all_delivered, served_key, wait_for, Lab};

fn inv(lab: &Lab) -> String {
    lab.inventory().to_str().unwrap().to_string()
}

/// The fingerprints a host's tls_policy pins for home, as written on disk.
fn relay_pins_for_home(lab: &Lab) -> String {
    let policy =
        std::fs::read_to_string(lab.postfix_dir("relay").join("mxpin/tls_policy")).unwrap();
    policy
        .lines()
        .find(|l| l.starts_with("[home.example.net]:25"))
        .and_then(|l| l.split("match=").nth(1))
        .unwrap_or_default()
        .to_string()
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// 40 messages over about 10 s through the backup while every host rotates:
/// all delivered, none deferred, each host serves a new key afterwards and
/// the relay's last delivery is still verified.
#[test]
fn rotation_under_load_defers_nothing() {
    let Some(lab) = Lab::up() else { return };
    let inv = inv(&lab);
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let before = (
        served_key(&lab, "127.0.0.2", 25),
        served_key(&lab, "127.0.0.3", 25),
    );

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
        assert_eq!(rotate.code, 0, "{rotate:?}");
        assert!(
            rotate.stdout.contains("home: serves public key"),
            "{rotate:?}"
        );
        assert!(rotate.stdout.contains("relay pins home: "), "{rotate:?}");
        // One digest everywhere: the key home serves now is one of the
        // pins relay holds for it, written the same way.
        let served = rotate
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("home: serves public key "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("{rotate:?}"));
        let pins = rotate
            .stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("relay pins home: "))
            .unwrap_or_else(|| panic!("{rotate:?}"));
        assert!(pins.split('|').any(|p| p == served), "{rotate:?}");
        sender.join().unwrap();
    });

    assert!(
        all_delivered(&lab, "load message", 40, Duration::from_secs(60)),
        "all 40 messages delivered; relay log:\n{}",
        lab.maillog("relay")
    );
    let log = lab.maillog("relay");
    assert_eq!(count(&log, "status=deferred"), 0, "{log}");
    let last_tls = log
        .lines()
        .rfind(|l| l.contains("TLS connection established to home.example.net"))
        .unwrap();
    assert!(last_tls.contains("Verified TLS connection"), "{last_tls}");
    let after = (
        served_key(&lab, "127.0.0.2", 25),
        served_key(&lab, "127.0.0.3", 25),
    );
    assert_ne!(before.0, after.0, "home serves a new key");
    assert_ne!(before.1, after.1, "relay serves a new key");
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 0, "{plan:?}");
}

/// A rotation cut short after the host switched but before its peer took
/// the new pins: mail keeps flowing (the peer already pinned the key now
/// served), a further rotation of that host is refused because the peer
/// does not pin its new next key, and apply converges. Then an emergency
/// rotation removes the old key from the peer's pins in one run.
#[test]
fn interrupted_rotation_converges_and_compromised_key_is_dropped() {
    let Some(lab) = Lab::up() else { return };
    let inv = inv(&lab);
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let pins_before = relay_pins_for_home(&lab);

    // A dry run shows home's certificate as one line, in the inventory's
    // digest: the pin it serves now, then the next key's, as the relay pins.
    let dry = lab.mxpin(&["rotate", "home", "--dry-run", "-i", &inv]);
    assert_eq!(dry.code, 2, "{dry:?}");
    let (old, next) = pins_before.split_once('|').unwrap();
    let short = |fp: &str| format!("{}…", &fp[..23]);
    let line = dry
        .stdout
        .lines()
        .find(|l| l.contains("/etc/postfix/mxpin/current.crt (modify): "))
        .unwrap_or_else(|| panic!("current.crt summarised: {dry:?}"));
    assert!(
        line.contains("CN=home.example.net, ECDSA P-256, until ")
            && line.ends_with(&format!("pin {} → {}", short(old), short(next))),
        "{line}"
    );
    assert!(!dry.stdout.contains("BEGIN CERTIFICATE"), "{dry:?}");

    // The relay cannot stage its new tls_policy: its part of the rotation
    // fails (and changes nothing there) after home switched.
    let obstacle = lab.postfix_dir("relay").join("mxpin/.mxpin-new/tls_policy");
    std::fs::create_dir_all(&obstacle).unwrap();
    let rotate = lab.mxpin(&["rotate", "home", "--yes", "-i", &inv]);
    assert_eq!(rotate.code, 1, "{rotate:?}");
    assert!(rotate.stdout.contains("home: applied"), "{rotate:?}");
    assert!(
        rotate
            .stderr
            .contains("relay: at step 'stage /etc/postfix/mxpin/tls_policy'"),
        "{rotate:?}"
    );
    assert_eq!(
        relay_pins_for_home(&lab),
        pins_before,
        "relay still pins old|next"
    );
    let served_now = pins_before.split('|').nth(1).unwrap().to_string();

    // Half-way: mail is still verified and delivered.
    let sent = lab.send_to_relay("first.last@example.net", "half-way 1");
    assert_eq!(sent.code, 0, "{sent:?}");
    assert!(wait_for(Duration::from_secs(30), || lab
        .delivered()
        .iter()
        .any(|m| m.contains("half-way 1"))));

    // Rotating home again now would switch to a key the relay does not pin.
    let refused = lab.mxpin(&["rotate", "home", "--yes", "-i", &inv]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("home: rotation refused: peer relay does not pin home's next key yet"),
        "{refused:?}"
    );

    std::fs::remove_dir(&obstacle).unwrap();
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(
        plan.code, 2,
        "the unfinished rotation shows as pending: {plan:?}"
    );
    let converge = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(converge.code, 0, "{converge:?}");
    let pins = relay_pins_for_home(&lab);
    assert!(
        pins.starts_with(&served_now),
        "relay pins the served key first: {pins}"
    );
    assert!(
        !pins.contains(pins_before.split('|').next().unwrap()),
        "old key dropped"
    );
    assert_eq!(lab.mxpin(&["plan", "-i", &inv]).code, 0);

    // A dry run of a rotation says what plan says: changes pending (2),
    // and nothing changed.
    let before = lab.snapshot();
    let dry = lab.mxpin(&["rotate", "home", "--compromised", "--dry-run", "-i", &inv]);
    assert_eq!(dry.code, 2, "{dry:?}");
    assert!(dry.stdout.contains("would change."), "{dry:?}");
    assert!(lab.snapshot() == before, "a dry run changes nothing");

    // Emergency: the key home serves must stop being trusted now.
    let compromised = pins.split('|').next().unwrap().to_string();
    let emergency = lab.mxpin(&["rotate", "home", "--compromised", "--yes", "-i", &inv]);
    assert_eq!(emergency.code, 0, "{emergency:?}");
    let pins = relay_pins_for_home(&lab);
    assert!(
        !pins.contains(&compromised),
        "compromised key no longer pinned: {pins}"
    );
    let sent = lab.send_to_relay("first.last@example.net", "after emergency");
    assert_eq!(sent.code, 0, "{sent:?}");
    assert!(wait_for(Duration::from_secs(30), || lab
        .delivered()
        .iter()
        .any(|m| m.contains("after emergency"))));
    let log = lab.maillog("relay");
    assert_eq!(count(&log, "status=deferred"), 0, "{log}");
    assert_eq!(lab.mxpin(&["plan", "-i", &inv]).code, 0);
}

/// Bad rotate arguments are refused before any host is contacted.
#[test]
fn rotate_arguments_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mxpin.toml");
    std::fs::write(
        &path,
        "[hosts.home]\nssh = \"home.invalid\"\nmx = \"home.example.net\"\n",
    )
    .unwrap();
    for (args, expected) in [
        (vec!["rotate", "nohost"], "error: rotate: no host nohost in"),
        (
            vec!["rotate", "--compromised"],
            "error: --compromised needs the names of the compromised hosts",
        ),
    ] {
        let out = std::process::Command::new(common::mxpin_bin())
            .args(&args)
            .arg("-i")
            .arg(&path)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
    }
}
