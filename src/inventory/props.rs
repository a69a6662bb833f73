//! Property test of the loader (issue 17): valid inventories, mutated the
//! way a hostile user or a sloppy admin would (values and keys replaced by
//! arbitrary strings: control characters, newlines, `#`, quotes, `$`,
//! backticks, unicode, 100,000 characters, empty; keys dropped, renamed or
//! written twice; types changed; a recipient repeated in another case),
//! are either refused with one line of at most
//! [`INVENTORY_ERROR_MAX`](crate::text::INVENTORY_ERROR_MAX) characters
//! that names `file:line:column`, or accepted with values that all work on
//! the host: each survives the place it is written to unchanged in meaning.
//!
//! Over 500 lines, as one piece: the seeds, the mutations and the property
//! that checks every accepted value are read together.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use toml::{Table, Value};

use super::*;
use crate::text::INVENTORY_ERROR_MAX;

/// Valid inventories to start from: the README's shapes (a backup with
/// recipients, externals with a relayhost, fetchmail and policies, the pair
/// relaying through its own backup, an Exim backup).
const BASES: [&str; 4] = [
    r#"
[settings]
digest = "sha256"

[hosts.home]
ssh = "home"
mx = "home.example.net"

[hosts.relay]
ssh = "admin@relay.example.org:2222"
mx = "relay.example.org"
smtp_port = 26
sudo = true
config_dir = "/usr/local/etc/postfix"

[domains."example.net"]
primary = "home"
backups = ["relay"]
recipients = ["first.last@example.net", "postmaster@example.net", "a+b@example.net"]
"#,
    r#"
[hosts.vps]
ssh = "[::1]:22"
mx = "vps.example.org"
relayhost = "isp"

[[hosts.vps.fetchmail]]
server = "gmail-pop"
protocol = "pop3"
user = "me@gmail.com"
local = "first.last"

[external.isp]
address = "mail.isp.net:465"
tls = "implicit"
pins = ["AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"]

[external.gmail-pop]
address = "pop.gmail.com:995"
tls = "implicit"

[policies]
"gmail.com" = "secure"
"example.org" = ["ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789"]
"#,
    r#"
[settings]
key = "rsa-2048"
valid_days = 365
renew_days = 20

[hosts.home]
ssh = "root@home.example.net"
mx = "home.example.net"
relayhost = "vps"

[hosts.vps]
ssh = "vps"
mx = "vps.example.org"
relay_port = 2626

[domains."example.net"]
primary = "home"
backups = ["vps"]
"#,
    r#"
[hosts.home]
ssh = "home"
mx = "home.example.net"

[hosts.relay]
mta = "exim"
ssh = "u@relay"
mx = "relay.example.org"
config_dir = "/etc/exim4"

[domains."example.net"]
primary = "home"
backups = ["relay"]
recipients = ["x@example.net"]
"#,
];

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Every place in the tree: tables, arrays and values alike.
fn paths(v: &Value, at: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::Table(t) => {
            for (k, child) in t {
                at.push(Seg::Key(k.clone()));
                out.push(at.clone());
                paths(child, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                at.push(Seg::Index(i));
                out.push(at.clone());
                paths(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

/// The container of the last segment of `path`.
fn parent<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut v = v;
    for seg in &path[..path.len() - 1] {
        v = match (v, seg) {
            (Value::Table(t), Seg::Key(k)) => t.get_mut(k)?,
            (Value::Array(a), Seg::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

fn at<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    match (parent(v, path)?, path.last()?) {
        (Value::Table(t), Seg::Key(k)) => t.get_mut(k),
        (Value::Array(a), Seg::Index(i)) => a.get_mut(*i),
        _ => None,
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the value at a place (index into its paths) by another.
    Replace(prop::sample::Index, Value),
    /// Put a character into a string value (at a char index, or first).
    Insert(prop::sample::Index, char, prop::sample::Index),
    /// Rename a key.
    Rename(prop::sample::Index, String),
    /// Drop a key or an array element.
    Remove(prop::sample::Index),
    /// Append to an array a copy of its first string with its case flipped
    /// (or the same string): a recipient listed twice.
    CaseTwin(prop::sample::Index, bool),
    /// In the text: write a line twice (a key defined twice).
    DuplicateLine(prop::sample::Index),
    /// In the text: insert raw characters.
    Raw(prop::sample::Index, String),
}

/// Strings a hostile user or a sloppy admin would write.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[#\"'$`\\\\\n\r\t\u{1b}\u{0} @:\\[\\]%/.,;|&*a-zA-Z0-9_-]{0,24}",
        2 => any::<String>(),
        1 => Just("x".repeat(100_000)),
        1 => Just("#x@example.net".to_string()),
        1 => Just("*@example.net".to_string()),
        1 => Just("first.last@example.net\n".to_string()),
        1 => Just(String::new()),
        1 => Just("-oProxyCommand=id".to_string()),
        1 => Just("$(id)`id`".to_string()),
        1 => Just("h\u{202e}ome".to_string()),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => nasty().prop_map(Value::String),
        1 => any::<i64>().prop_map(Value::Integer),
        1 => prop_oneof![Just(0i64), Just(1), Just(25), Just(65535), Just(65536), Just(-1)]
            .prop_map(Value::Integer),
        1 => any::<bool>().prop_map(Value::Boolean),
        1 => Just(Value::Array(vec![])),
        1 => nasty().prop_map(|s| Value::Array(vec![Value::String(s)])),
        1 => Just(Value::Table(Table::new())),
        1 => Just(Value::Float(1.5)),
    ]
}

fn special_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            '\n', '\r', '\t', '\u{1b}', '\0', '#', '"', '\'', '$', '`', '\\', ' ', '@', ':', '[',
            ']', '%', '-', '.', '/', ',', 'É', '\u{202e}', '\u{fffd}',
        ]),
        any::<char>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    use prop::sample::Index;
    prop_oneof![
        4 => (any::<Index>(), value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        4 => (any::<Index>(), special_char(), any::<Index>())
            .prop_map(|(i, c, p)| Mutation::Insert(i, c, p)),
        2 => (any::<Index>(), nasty()).prop_map(|(i, k)| Mutation::Rename(i, k)),
        2 => any::<Index>().prop_map(Mutation::Remove),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(i, f)| Mutation::CaseTwin(i, f)),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
        1 => (any::<Index>(), nasty()).prop_map(|(i, s)| Mutation::Raw(i, s)),
    ]
}

/// The base, mutated, as inventory text.
fn mutated(base: &str, mutations: &[Mutation]) -> String {
    let mut doc = Value::Table(toml::from_str::<Table>(base).expect("a valid base"));
    let mut text_mutations = Vec::new();
    for m in mutations {
        let mut all = Vec::new();
        paths(&doc, &mut Vec::new(), &mut all);
        if all.is_empty() {
            break;
        }
        let pick = |i: &prop::sample::Index| all[i.index(all.len())].clone();
        match m {
            Mutation::Replace(i, v) => {
                if let Some(slot) = at(&mut doc, &pick(i)) {
                    *slot = v.clone();
                }
            }
            Mutation::Insert(i, c, p) => {
                if let Some(Value::String(s)) = at(&mut doc, &pick(i)) {
                    let n = s.chars().count();
                    let k = p.index(n + 1);
                    let byte = s.char_indices().nth(k).map_or(s.len(), |(b, _)| b);
                    s.insert(byte, *c);
                }
            }
            Mutation::Rename(i, key) => {
                let path = pick(i);
                if let (Some(Value::Table(t)), Some(Seg::Key(k))) =
                    (parent(&mut doc, &path), path.last())
                {
                    if let Some(v) = t.remove(k) {
                        t.insert(key.clone(), v);
                    }
                }
            }
            Mutation::Remove(i) => {
                let path = pick(i);
                match (parent(&mut doc, &path), path.last()) {
                    (Some(Value::Table(t)), Some(Seg::Key(k))) => {
                        t.remove(k);
                    }
                    (Some(Value::Array(a)), Some(Seg::Index(i))) => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
            Mutation::CaseTwin(i, flip) => {
                if let Some(Value::Array(a)) = at(&mut doc, &pick(i)) {
                    if let Some(Value::String(s)) = a.first() {
                        let twin = if *flip {
                            s.chars()
                                .map(|c| {
                                    if c.is_ascii_lowercase() {
                                        c.to_ascii_uppercase()
                                    } else {
                                        c.to_ascii_lowercase()
                                    }
                                })
                                .collect()
                        } else {
                            s.clone()
                        };
                        a.push(Value::String(twin));
                    }
                }
            }
            m => text_mutations.push(m.clone()),
        }
    }
    let Value::Table(t) = doc else { unreachable!() };
    let mut text = toml::to_string(&t).expect("a tree serializes");
    for m in text_mutations {
        match m {
            Mutation::DuplicateLine(i) => {
                let lines: Vec<&str> = text.split_inclusive('\n').collect();
                if !lines.is_empty() {
                    let k = i.index(lines.len());
                    let mut out: Vec<&str> = lines.clone();
                    out.insert(k, lines[k]);
                    text = out.concat();
                }
            }
            Mutation::Raw(i, s) => {
                let k = i.index(text.chars().count() + 1);
                let byte = text.char_indices().nth(k).map_or(text.len(), |(b, _)| b);
                text.insert_str(byte, &s);
            }
            _ => unreachable!(),
        }
    }
    text
}

/// No character a terminal would act on or hide.
fn printable(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() || ('\u{2028}'..='\u{202e}').contains(&c))
}

/// What sh makes of each value single-quoted by `shell::quote`.
fn through_sh(values: &[String]) -> Vec<String> {
    let words: Vec<String> = values.iter().map(|v| crate::shell::quote(v)).collect();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf '%s\\n' {}", words.join(" ")))
        .output()
        .expect("sh runs");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every accepted value works where mxpin writes it.
fn check_accepted(inv: &Inventory) -> Result<(), TestCaseError> {
    let mut shell_words = Vec::new();
    for h in &inv.hosts {
        // ssh: user, host and port go to ssh as -l, the destination and -p;
        // joined again they are the same destination.
        let d = &h.ssh;
        let host = d.host();
        prop_assert!(!host.is_empty() && !host.starts_with('-'), "{:?}", d);
        prop_assert!(d.user().is_none_or(|u| !u.is_empty()), "{:?}", d);
        let joined = format!(
            "{}{}{}",
            d.user().map(|u| format!("{u}@")).unwrap_or_default(),
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_string()
            },
            d.port().map(|p| format!(":{p}")).unwrap_or_default()
        );
        let again = SshDestination::parse(&joined).map_err(TestCaseError::fail)?;
        prop_assert_eq!(
            (again.user(), again.host(), again.port()),
            (d.user(), d.host(), d.port())
        );
        prop_assert!(d.as_str().contains(':') == (d.port().is_some() || host.contains(':')));
        // The mx: certificate name and next-hop, one lowercase DNS word.
        let mx = h.mx.as_str();
        prop_assert!(
            !mx.is_empty()
                && mx
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
            "{:?}",
            mx
        );
        prop_assert!(h.smtp_port > 0 && h.relay_port > 0);
        for p in &h.fetchmail {
            // What a fetchmailrc string holds (crate::fetchmail quotes `"`
            // and `\`); a local `*` would make the poll multidrop.
            for w in [p.user.as_str(), p.local.as_str()] {
                prop_assert!(
                    !w.is_empty()
                        && w.len() <= names::FETCHMAIL_WORD_MAX
                        && w.chars().all(|c| c.is_ascii() && !c.is_ascii_control()),
                    "fetchmail word {:?}",
                    w
                );
            }
            prop_assert!(p.local.as_str() != "*");
        }
        shell_words.push(h.name.to_string());
        shell_words.push(h.config_dir.to_string());
        shell_words.push(h.config_dir.join("mxpin"));
        shell_words.push(d.host().to_string());
        shell_words.extend(d.user().map(str::to_string));
    }
    for dom in &inv.domains {
        let mut seen: Vec<String> = Vec::new();
        for r in dom.recipients.iter().flatten() {
            // Its relay_recipients line parses back as exactly this key.
            let line = format!("{r}\tOK");
            let key = line.split_whitespace().next().unwrap_or_default();
            prop_assert_eq!(key, r.as_str());
            prop_assert!(!key.starts_with('#') && printable(key), "{:?}", key);
            // Exim's relay_recipients is an lsearch*@ file: `*` is a wildcard.
            prop_assert!(!key.starts_with("*@"), "{:?}", key);
            prop_assert!(key.ends_with(&format!("@{}", dom.name)), "{:?}", key);
            // Postfix folds case: no two keys are one.
            let folded = key.to_ascii_lowercase();
            prop_assert!(!seen.contains(&folded), "{} listed twice", key);
            seen.push(folded);
        }
    }
    for e in &inv.externals {
        prop_assert!(!e.address().contains(char::is_whitespace));
        for p in &e.pins {
            prop_assert!(p
                .as_str()
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':'));
        }
    }
    // Names and paths that go into remote scripts mean the same after sh.
    prop_assert_eq!(through_sh(&shell_words), shell_words);
    Ok(())
}

/// A refusal: one printable line, bounded, naming its place in the file.
fn check_refused(text: &str, e: &InventoryError) -> Result<(), TestCaseError> {
    let shown = e.to_string();
    prop_assert!(
        !shown.contains(['\n', '\r']) && printable(&shown),
        "{:?}",
        shown
    );
    prop_assert!(
        shown.chars().count() <= INVENTORY_ERROR_MAX,
        "{} characters",
        shown.chars().count()
    );
    match e.position {
        Some((line, col)) => {
            let place = format!("mxpin.toml:{line}:{col}: ");
            prop_assert!(shown.starts_with(&place), "{:?}", shown);
            prop_assert!(line >= 1 && line <= text.split('\n').count(), "{:?}", e);
            prop_assert!(col >= 1);
        }
        // The one refusal of the file as a whole.
        None => prop_assert!(
            e.message.starts_with("no hosts"),
            "no position: {:?}",
            shown
        ),
    }
    Ok(())
}

#[test]
fn mutated_inventories_are_refused_in_one_line_or_work_on_the_host() {
    for base in BASES {
        parse(Path::new("mxpin.toml"), base).expect("the bases are valid");
    }
    let mut runner = TestRunner::new(Config {
        cases: 384,
        failure_persistence: None,
        ..Config::default()
    });
    let counts = std::cell::Cell::new((0usize, 0usize));
    let strategy = (0..BASES.len(), prop::collection::vec(mutation(), 1..4));
    let result = runner.run(&strategy, |(base, mutations)| {
        let text = mutated(BASES[base], &mutations);
        let (ok, err) = counts.get();
        match parse(Path::new("mxpin.toml"), &text) {
            Ok(inv) => {
                counts.set((ok + 1, err));
                check_accepted(&inv)
            }
            Err(e) => {
                counts.set((ok, err + 1));
                check_refused(&text, &e)
            }
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Both sides of the property were exercised.
    let (ok, err) = counts.get();
    assert!(ok >= 20 && err >= 100, "accepted {ok}, refused {err}");
}

/// Found by the property test: values echoed whole (100,000 characters)
/// and raw (a newline split the error in two).
#[test]
fn echoed_values_are_escaped_and_cut() {
    let long = "x".repeat(100_000);
    let text = BASES[0].replace("ssh = \"home\"", &format!("ssh = \"{long}\""));
    let e = parse(Path::new("mxpin.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(e.len() < 300, "{e}");
    assert!(e.starts_with(&format!(
        "mxpin.toml:6:7: invalid ssh destination \"{}\"… (100000 characters)",
        "x".repeat(79)
    )));
    let text = BASES[0].replace("ssh = \"home\"", "ssh = \"ho\\nme\\u001b[2J\"");
    let e = parse(Path::new("mxpin.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("mxpin.toml:6:7: invalid ssh destination \"ho\\nme\\x1b[2J\""),
        "{e}"
    );
}
