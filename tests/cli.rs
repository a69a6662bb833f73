//! The binary's handling of bad input: one clear line naming file, line and
//! column, exit status 1, and no host contacted (the hosts below do not
//! exist; an attempt to reach them would produce an ssh error instead).

mod common;

use std::process::Command;

fn mxpin_with(inventory: &str, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mxpin.toml");
    std::fs::write(&path, inventory).unwrap();
    // Should anything try to connect, ssh runs `false` instead of opening a
    // socket: these tests send no traffic at all.
    std::fs::write(
        dir.path().join("ssh_config"),
        "Host *\n  ProxyCommand false\n",
    )
    .unwrap();
    let out = Command::new(common::mxpin_bin())
        .args(args)
        .arg("-i")
        .arg(&path)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "FILE");
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

const GOOD: &str = r#"[settings]
ssh_config = "ssh_config"

[hosts.home]
ssh = "home.invalid"
mx = "home.example.net"

[hosts.relay]
ssh = "relay.invalid"
mx = "relay.example.org"

[domains."example.net"]
primary = "home"
backups = ["relay"]
"#;

fn refused(inventory: &str, expected: &str) {
    for cmd in ["plan", "apply"] {
        let (code, stdout, stderr) = mxpin_with(
            inventory,
            &[cmd, "--yes"][..if cmd == "plan" { 1 } else { 2 }],
        );
        assert_eq!(code, 1, "{cmd}: {stderr}");
        assert!(stdout.is_empty(), "{cmd}: {stdout}");
        assert_eq!(stderr, format!("error: {expected}\n"), "{cmd}");
    }
}

#[test]
fn invalid_toml() {
    refused(
        &GOOD.replace("[hosts.relay]", "[hosts.relay"),
        "FILE:8:13: unclosed table, expected `]`",
    );
}

#[test]
fn unknown_key() {
    refused(
        &GOOD.replace("mx = \"home.example.net\"", "mx = \"home.example.net\"\nport = 26"),
        "FILE:7:1: unknown field `port`, expected one of `ssh`, `mx`, `smtp_port`, `config_dir`, `sudo`, `mta`, `relayhost`, `relay_port`, `fetchmail`",
    );
}

#[test]
fn domain_names_a_missing_host() {
    refused(
        &GOOD.replace("backups = [\"relay\"]", "backups = [\"relya\"]"),
        "FILE:14:12: domain example.net: backup \"relya\" is not a host of this inventory",
    );
}

#[test]
fn shell_metacharacters_never_pass() {
    refused(
        &GOOD.replace("ssh = \"home.invalid\"", "ssh = \"home.invalid;reboot\""),
        "FILE:5:7: invalid ssh destination \"home.invalid;reboot\": expected alias, host, user@host or user@host:port",
    );
}

#[test]
fn missing_inventory_file() {
    let out = Command::new(common::mxpin_bin())
        .args(["plan", "-i", "/nonexistent/mxpin.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: /nonexistent/mxpin.toml: cannot read inventory:")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn broken_template_override_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("postfix")).unwrap();
    std::fs::write(
        dir.path().join("postfix/transport.tera"),
        "{% for r in routes %}",
    )
    .unwrap();
    let (code, _, stderr) =
        mxpin_with(GOOD, &["plan", "--templates", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: template postfix/transport.tera:"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn missing_recipients_warn_about_backscatter_but_unreachable_hosts_fail() {
    let (code, _, stderr) = mxpin_with(GOOD, &["plan", "--parallel", "2"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("warning: domain example.net: no recipients listed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: home: ssh home.invalid:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: relay: ssh relay.invalid:"),
        "{stderr}"
    );
}

/// Relaying through a managed host: a loop, a cycle and an Exim relay are
/// refused before any host is contacted (the `.invalid` hosts would fail).
#[test]
fn relay_loops_and_exim_relays_are_refused_before_connecting() {
    let with_relay = |home: &str, relay: &str| {
        GOOD.replace(
            "mx = \"home.example.net\"\n",
            &format!("mx = \"home.example.net\"\n{home}"),
        )
        .replace(
            "mx = \"relay.example.org\"\n",
            &format!("mx = \"relay.example.org\"\n{relay}"),
        )
    };
    refused(
        &with_relay("relayhost = \"home\"\n", ""),
        "FILE:7:13: host home: relayhost is the host itself; mail would loop",
    );
    refused(
        &with_relay("relayhost = \"relay\"\n", "relayhost = \"home\"\n"),
        "FILE:7:13: host home: relayhost makes a cycle (home -> relay -> home); mail would loop",
    );
    refused(
        &with_relay("relayhost = \"relay\"\n", "mta = \"exim\"\n"),
        "FILE:7:13: host home: relayhost relay runs Exim; relaying through a managed host with \
         pinned client certificates is supported between Postfix hosts only",
    );
    refused(
        &with_relay("", "mta = \"exim\"\nrelayhost = \"home\"\n"),
        "FILE:12:13: host relay: relayhost is supported on Postfix hosts only",
    );
}

/// A usage error is an error (1), not "changes pending" (2); help is 0.
#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    for args in [&["plan", "--jsn"][..], &["nonsense"], &[]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxpin"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    for args in [&["--help"][..], &["plan", "--help"], &["--version"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxpin"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
    }
}
