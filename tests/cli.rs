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

fn run(args: &[&str], dir: Option<&std::path::Path>) -> (i32, String, String) {
    let mut cmd = Command::new(common::mxpin_bin());
    cmd.args(args).env("NO_COLOR", "1");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const COMMANDS: [&str; 10] = [
    "plan",
    "apply",
    "verify",
    "rotate",
    "release",
    "fingerprint",
    "tlsa",
    "pin",
    "completions",
    "man",
];

/// `-i`, `--json` and `-q` go before or after the command, the way admins
/// type them: the same inventory error either way (which proves `-i` was
/// read), and `--json`/`-q` parse in both places.
#[test]
fn global_options_before_or_after_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inv.toml");
    std::fs::write(&path, GOOD.replace("[hosts.relay]", "[hosts.relay")).unwrap();
    let p = path.to_str().unwrap();
    let expected = format!("error: {p}:8:13: unclosed table, expected `]`\n");
    for args in [
        &["-i", p, "plan"][..],
        &["plan", "-i", p],
        &["--json", "-q", "-i", p, "plan"],
        &["-q", "plan", "--json", "--inventory", p],
        &["--inventory", p, "apply", "--yes", "-q"],
        &["-i", p, "--json", "verify"],
        &["tlsa", "-q", "--json", "-i", p],
        &["-i", p, "rotate", "--dry-run"],
        &["-i", p, "pin", "isp"],
    ] {
        let (code, stdout, stderr) = run(args, None);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(stderr, expected, "{args:?}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
}

/// Without `-i`, mxpin reads ./mxpin.toml; when there is none it says how
/// to name the inventory.
#[test]
fn no_inventory_in_the_current_folder_suggests_dash_i() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        "plan", "apply", "verify", "tlsa", "rotate", "release", "pin",
    ] {
        let args: &[&str] = match cmd {
            "release" => &["release", "home"],
            "pin" => &["pin", "isp"],
            _ => &[cmd],
        };
        let (code, stdout, stderr) = run(args, Some(dir.path()));
        assert_eq!(code, 1, "{cmd}: {stderr}");
        assert!(stdout.is_empty(), "{cmd}: {stdout}");
        assert_eq!(
            stderr,
            "error: no mxpin.toml in the current folder: run mxpin where it is, or give the \
             inventory with -i FILE\n",
            "{cmd}"
        );
    }
}

/// Every command's --help states its exit codes, as main.rs maps them.
#[test]
fn every_help_documents_the_exit_status() {
    let (code, top, _) = run(&["--help"], None);
    assert_eq!(code, 0);
    assert!(
        top.contains("Exit status: 0 done") && top.contains("2 changes pending"),
        "{top}"
    );
    for cmd in COMMANDS {
        let (code, help, stderr) = run(&[cmd, "--help"], None);
        assert_eq!(code, 0, "{cmd}: {stderr}");
        let exit = help
            .lines()
            .find(|l| l.starts_with("Exit status: "))
            .unwrap_or_else(|| panic!("{cmd} --help has no exit status:\n{help}"));
        assert!(exit.contains("0 ") && exit.contains("1 "), "{cmd}: {exit}");
        let pending = matches!(cmd, "plan" | "rotate" | "release");
        assert_eq!(exit.contains("2 changes pending"), pending, "{cmd}: {help}");
        // The global options are listed by every command.
        assert!(
            help.contains("--inventory <FILE>") && help.contains("--json"),
            "{cmd}"
        );
    }
}

/// `completions bash` is a script bash accepts and that completes every
/// command; zsh and fish scripts name every command too.
#[test]
fn completions_for_bash_zsh_and_fish() {
    let (code, bash, stderr) = run(&["completions", "bash"], None);
    assert_eq!(code, 0, "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mxpin.bash");
    std::fs::write(&file, &bash).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(check.status.success(), "bash -n: {check:?}");
    // Sourced into a real bash, it registers the completion function.
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p mxpin", file.display()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&loaded.stdout).contains("-F _mxpin"),
        "{loaded:?}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, stderr) = run(&["completions", shell], None);
        assert_eq!(code, 0, "{shell}: {stderr}");
        for cmd in COMMANDS {
            assert!(script.contains(cmd), "{shell} completion lacks {cmd}");
        }
        assert!(script.contains("inventory"), "{shell}");
    }
    let (code, _, stderr) = run(&["completions", "tcsh"], None);
    assert_eq!(code, 1, "{stderr}");
    let (code, _, stderr) = run(&["completions", "bash", "--json"], None);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "error: completions: there is no JSON form; drop --json\n"
    );
}

/// `man` prints a roff manual page: the title first, every command with
/// its options and exit status.
#[test]
fn man_page_is_roff_naming_every_command() {
    let (code, roff, stderr) = run(&["man"], None);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        roff.starts_with(".TH mxpin 1 "),
        "{}",
        &roff[..80.min(roff.len())]
    );
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH OPTIONS",
        ".SH COMMANDS",
        ".SH \"EXIT STATUS\"",
    ] {
        assert!(roff.contains(section), "{section}");
    }
    for cmd in COMMANDS {
        assert!(roff.contains(&format!(".SS \"mxpin {cmd}\"")), "{cmd}");
    }
    assert!(roff.contains("\\-\\-dry\\-run"), "options are listed");
    assert!(roff.contains("2 changes pending"));
    // Every line is a request or text; no line starts a request by accident.
    for line in roff.lines() {
        assert!(!line.starts_with('\''), "{line}");
    }
}

/// `fingerprint --json` is `--format json`; asking for two formats is an
/// error.
#[test]
fn fingerprint_json_is_format_json() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("c.pem");
    let key = dir.path().join("k.pem");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-subj",
            "/CN=test.example",
            "-days",
            "2",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&pem)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let p = pem.to_str().unwrap();
    let (code, a, _) = run(&["--json", "fingerprint", p], None);
    assert_eq!(code, 0);
    let (_, b, _) = run(&["fingerprint", p, "--format", "json"], None);
    assert_eq!(a, b);
    assert!(serde_json::from_str::<serde_json::Value>(&a).is_ok(), "{a}");
    let (code, _, stderr) = run(&["fingerprint", p, "--json", "--format", "postfix"], None);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "error: fingerprint: --json is --format json; give one of them\n"
    );
}
