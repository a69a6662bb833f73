//! Two runs at once, and runs cut short by a signal, on the real lab: the
//! runs serialize on each host's lock, no pin is ever lost, mail stays
//! `Verified`, and a killed run leaves no ssh master behind.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::Duration;

use common::{mxpin_bin, repo, wait_for, Lab, Run};

fn inv(lab: &Lab) -> String {
    lab.inventory().to_str().unwrap().to_string()
}

/// Runs `args` twice at the same moment; both outcomes.
fn twice_at_once(lab: &Lab, args: &[&str]) -> (Run, Run) {
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let run = || {
            barrier.wait();
            lab.mxpin(args)
        };
        let a = scope.spawn(run);
        let b = scope.spawn(run);
        (a.join().unwrap(), b.join().unwrap())
    })
}

/// What a user checks after the runs: the relay's pin table and its
/// database are in place, main.cf names them, mail through the backup is
/// delivered `Verified`, and the next plan has nothing to do.
fn still_pinned_and_verified(lab: &Lab, inv: &str, body: &str) {
    let relay = lab.postfix_dir("relay");
    let owned: Vec<String> = std::fs::read_dir(relay.join("mxpin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for f in [
        "tls_policy",
        "current.key",
        "current.crt",
        "next.key",
        "next.crt",
    ] {
        assert!(owned.iter().any(|o| o == f), "relay lost {f}: {owned:?}");
    }
    assert!(
        owned.iter().any(|o| o.starts_with("tls_policy.")),
        "relay lost tls_policy's database: {owned:?}"
    );
    assert!(
        !owned
            .iter()
            .any(|o| o.contains("mxpin-new") || o.contains("mxpin-old")),
        "staging left behind: {owned:?}"
    );
    let main_cf = std::fs::read_to_string(relay.join("main.cf")).unwrap();
    assert!(
        main_cf.contains("/etc/postfix/mxpin/tls_policy"),
        "{main_cf}"
    );

    let before = lab
        .maillog("relay")
        .matches("Verified TLS connection")
        .count();
    let sent = lab.send_to_relay("first.last@example.net", body);
    assert_eq!(sent.code, 0, "{sent:?}");
    assert!(
        wait_for(Duration::from_secs(30), || lab
            .delivered()
            .iter()
            .any(|m| m.contains(body))),
        "{}",
        lab.maillog("relay")
    );
    let log = lab.maillog("relay");
    assert!(
        log.matches("Verified TLS connection").count() > before,
        "{log}"
    );
    assert!(!log.contains("status=deferred"), "{log}");
    assert!(!log.contains("status=bounced"), "{log}");

    let plan = lab.mxpin(&["plan", "-i", inv]);
    assert_eq!(plan.code, 0, "converged: {plan:?}");
}

/// The attack of issue 17: a converged pair, home's next key removed, two
/// applies started at the same moment. Both succeed, one after the other:
/// the second reads the hosts only after the first is done, finds nothing
/// to do, and no file is lost on either host.
#[test]
fn two_applies_at_once_serialize_and_lose_nothing() {
    let Some(lab) = Lab::up() else { return };
    let inv = inv(&lab);
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    for f in ["next.key", "next.crt"] {
        std::fs::remove_file(lab.postfix_dir("home").join("mxpin").join(f)).unwrap();
    }

    let (a, b) = twice_at_once(&lab, &["apply", "--yes", "-i", &inv]);
    for r in [&a, &b] {
        assert_eq!(r.code, 0, "{r:?}");
        assert!(!r.stderr.contains("restored"), "{r:?}");
    }
    let applied = [&a, &b]
        .iter()
        .filter(|r| r.stdout.contains("home: applied"))
        .count();
    assert_eq!(applied, 1, "exactly one run changed home: {a:?}\n{b:?}");
    assert!(lab.postfix_dir("home").join("mxpin/next.key").exists());
    still_pinned_and_verified(&lab, &inv, "after two applies");
}

/// Two rotations of every host at the same moment: they happen one after
/// the other (each host ends two keys on), mail is never deferred, and
/// every pin matches.
#[test]
fn two_rotations_at_once_happen_in_turn() {
    let Some(lab) = Lab::up() else { return };
    let inv = inv(&lab);
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let served_before = common::served_key(&lab, "127.0.0.2", 25);

    let (a, b) = twice_at_once(&lab, &["rotate", "--yes", "-i", &inv]);
    for r in [&a, &b] {
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains("home: serves public key"), "{r:?}");
    }
    assert_ne!(common::served_key(&lab, "127.0.0.2", 25), served_before);
    still_pinned_and_verified(&lab, &inv, "after two rotations");
}

/// The ssh masters of the runs that used `state` as XDG_STATE_HOME.
fn masters(state: &Path) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f"])
        .arg(format!("ssh .*{}/mxpin/run-", state.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Starts `mxpin apply --yes` in the lab, reads its progress until a host
/// is being applied, then sends `signal` to mxpin itself. Returns its
/// exit code and everything it wrote on stderr.
fn apply_killed_while_applying(lab: &Lab, state: &Path, signal: &str) -> (Option<i32>, String) {
    let inv = inv(lab);
    let mut child = Command::new(repo().join("lab/lab.sh"))
        .arg("exec")
        .arg(&lab.dir)
        .arg(mxpin_bin())
        .args(["apply", "--yes", "-i", &inv])
        .env("NO_COLOR", "1")
        .env("XDG_STATE_HOME", state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains(": applying") {
            break;
        }
        line.clear();
    }
    assert!(seen.contains(": applying"), "{seen}");
    let pattern = format!("^{} apply --yes -i {inv}$", mxpin_bin().display());
    let kill = Command::new("pkill")
        .args([signal, "-f", &pattern])
        .status()
        .unwrap();
    assert!(kill.success(), "mxpin was running");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    seen.push_str(&rest);
    let status = child.wait().unwrap();
    (status.code(), seen)
}

/// SIGTERM in the middle of an apply: mxpin says so in one line, exits
/// 143, its ssh masters and their directories are gone at once, and the
/// next apply converges. SIGKILL: the masters end by themselves after
/// their idle timeout, and the next run removes what the killed one left.
#[test]
fn killed_apply_leaves_no_ssh_master_and_the_next_apply_converges() {
    let Some(lab) = Lab::up() else { return };
    let inv = inv(&lab);
    let state = tempfile::tempdir().unwrap();
    let runs = state.path().join("mxpin");

    let (code, err) = apply_killed_while_applying(&lab, state.path(), "-TERM");
    assert_eq!(code, Some(143), "{err}");
    assert!(err.contains("interrupted by SIGTERM"), "{err}");
    assert!(
        wait_for(Duration::from_secs(10), || masters(state.path()).is_empty()),
        "{:?}",
        masters(state.path())
    );
    let left: Vec<_> = std::fs::read_dir(&runs).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");

    let fix = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(fix.code, 0, "{fix:?}");
    let plan = lab.mxpin(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 0, "{plan:?}");

    // Something to apply again: home's next key.
    for f in ["next.key", "next.crt"] {
        std::fs::remove_file(lab.postfix_dir("home").join("mxpin").join(f)).unwrap();
    }
    let (code, err) = apply_killed_while_applying(&lab, state.path(), "-KILL");
    assert_eq!(code, Some(128 + 9), "killed: {err}");
    assert!(
        wait_for(Duration::from_secs(60), || masters(state.path()).is_empty()),
        "masters outlived their idle timeout: {:?}",
        masters(state.path())
    );

    let next = Command::new(repo().join("lab/lab.sh"))
        .arg("exec")
        .arg(&lab.dir)
        .arg(mxpin_bin())
        .args(["apply", "--yes", "-i", &inv])
        .env("NO_COLOR", "1")
        .env("XDG_STATE_HOME", state.path())
        .output()
        .unwrap();
    assert!(next.status.success(), "{next:?}");
    let left: Vec<_> = std::fs::read_dir(&runs).unwrap().collect();
    assert!(
        left.is_empty(),
        "the killed run's directory was removed: {left:?}"
    );
    still_pinned_and_verified(&lab, &inv, "after a killed apply");
}

/// A read (here `verify`) that finds a host held by another run waits for
/// it: its first read of that host had no ssh master (a reading run starts
/// none), so the tries after it start one. The host is read once it is
/// free, every check passes, and no master or control directory is left.
#[test]
fn a_read_waits_for_a_busy_host_and_leaves_no_master() {
    let Some(lab) = Lab::up() else { return };
    let inv = inv(&lab);
    let apply = lab.mxpin(&["apply", "--yes", "-i", &inv]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let state = tempfile::tempdir().unwrap();
    let runs = state.path().join("mxpin");

    // Another run's lock on home's configuration directory, for 3 s.
    let cfg = lab.dir.join("ssh_config");
    let mut holder = Command::new(repo().join("lab/lab.sh"))
        .arg("exec")
        .arg(&lab.dir)
        .args(["ssh", "-F", cfg.to_str().unwrap(), "home"])
        .arg("flock -x /etc/postfix -c 'echo held; sleep 3'")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "held\n");

    let started = std::time::Instant::now();
    let out = Command::new(repo().join("lab/lab.sh"))
        .arg("exec")
        .arg(&lab.dir)
        .arg(mxpin_bin())
        .args(["verify", "-i", &inv])
        .env("NO_COLOR", "1")
        .env("XDG_STATE_HOME", state.path())
        .output()
        .unwrap();
    let waited = started.elapsed();
    assert!(holder.wait().unwrap().success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("home: waiting for another mxpin run"),
        "{stderr}"
    );
    assert!(waited >= Duration::from_secs(2), "{waited:?}: {stderr}");
    assert!(stdout.contains("Verified: "), "{stdout}");
    assert!(
        masters(state.path()).is_empty(),
        "{:?}",
        masters(state.path())
    );
    let left: Vec<_> = std::fs::read_dir(&runs).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}
