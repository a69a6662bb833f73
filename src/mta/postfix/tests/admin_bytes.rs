//! The admin's bytes survive (issue 17): generated main.cf and master.cf
//! files with comments, blank lines, continuation lines with comments
//! between them, duplicate parameters, trailing white space, CRLF line
//! endings and no final newline go through the real plan (a host becomes
//! a backup, or a relay client) and back (it is released, or the relayhost
//! goes): every byte comes back, lines outside what mxpin owns never change
//! in between, and the lines mxpin writes end as the file's own.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::super::maincf::MainCf;
use super::super::mastercf;
use super::*;

/// Parameters a generated main.cf defines: the ones mxpin edits on a
/// backup, and others it must leave alone.
const PARAMS: [&str; 12] = [
    "transport_maps",
    "relay_domains",
    "relay_recipient_maps",
    "smtp_tls_policy_maps",
    "smtpd_tls_security_level",
    "smtp_tls_loglevel",
    "smtp_tls_fingerprint_digest",
    "tls_server_sni_maps",
    "mynetworks",
    "biff",
    "smtpd_banner",
    "relayhost",
];

/// Value items, lists included.
const ITEMS: [&str; 12] = [
    "hash:/etc/postfix/transport",
    "lmdb:/etc/postfix/a",
    "hash:/etc/postfix/b",
    "inline:{x=y, z=w}",
    "may",
    "none",
    "encrypt",
    "0",
    "2",
    "sha1",
    "$myhostname ESMTP",
    "[::1]/128",
];

#[derive(Debug, Clone)]
enum Chunk {
    Comment(&'static str),
    /// Empty or white space only.
    Blank(&'static str),
    /// Not a parameter (Postfix would refuse it; mxpin must keep it).
    Garbage,
    Def {
        name: usize,
        sep: &'static str,
        /// Each item and what goes before it: 0 same line, 1 a
        /// continuation line, 2 a comment line then a continuation line,
        /// 3 a blank line then a continuation line.
        items: Vec<(usize, u8)>,
        /// Trailing white space on the definition's first line.
        trailing: &'static str,
    },
}

fn chunk() -> impl Strategy<Value = Chunk> {
    prop_oneof![
        1 => prop::sample::select(vec!["# a comment", "#", "  # indented comment", "#x = 1"])
            .prop_map(Chunk::Comment),
        1 => prop::sample::select(vec!["", "  ", "\t"]).prop_map(Chunk::Blank),
        1 => Just(Chunk::Garbage),
        5 => (
            0..PARAMS.len(),
            prop::sample::select(vec!["=", " = ", "  =\t", " ="]),
            prop::collection::vec((0..ITEMS.len(), 0u8..4), 0..4),
            prop::sample::select(vec!["", " ", "\t "]),
        )
            .prop_map(|(name, sep, items, trailing)| Chunk::Def {
                name,
                sep,
                items,
                trailing,
            }),
    ]
}

/// An admin's file: its chunks, CRLF or LF, with or without a final newline.
fn admin_file() -> impl Strategy<Value = (Vec<Chunk>, bool, bool)> {
    (
        prop::collection::vec(chunk(), 0..14),
        any::<bool>(),
        prop::bool::weighted(0.8),
    )
}

fn render((chunks, crlf, final_newline): &(Vec<Chunk>, bool, bool)) -> String {
    let mut lines: Vec<String> = Vec::new();
    for c in chunks {
        match c {
            Chunk::Comment(t) => lines.push(t.to_string()),
            Chunk::Blank(t) => lines.push(t.to_string()),
            Chunk::Garbage => lines.push("not a parameter".into()),
            Chunk::Def {
                name,
                sep,
                items,
                trailing,
            } => {
                let mut line = format!("{}{sep}", PARAMS[*name]);
                for (k, (item, how)) in items.iter().enumerate() {
                    let item = ITEMS[*item];
                    if k == 0 || *how == 0 {
                        if k > 0 {
                            line.push_str(", ");
                        }
                        line.push_str(item);
                        continue;
                    }
                    lines.push(std::mem::take(&mut line));
                    match how {
                        2 => lines.push("    # between continuation lines".into()),
                        3 => lines.push(String::new()),
                        _ => {}
                    }
                    line = format!("{}{item}", if k % 2 == 0 { "\t" } else { "    " });
                }
                line.push_str(trailing);
                lines.push(line);
            }
        }
    }
    let eol = if *crlf { "\r\n" } else { "\n" };
    let mut text = lines.join(eol);
    if *final_newline && !lines.is_empty() {
        text.push_str(eol);
    }
    text
}

/// The text of `text`'s lines outside the effective definitions of `names`.
fn outside(text: &str, names: &[&str]) -> String {
    let m = MainCf::parse(text);
    let owned: Vec<std::ops::Range<usize>> = names.iter().filter_map(|n| m.def_lines(n)).collect();
    text.split_inclusive('\n')
        .enumerate()
        .filter(|(i, _)| !owned.iter().any(|r| r.contains(i)))
        .map(|(_, l)| l)
        .collect()
}

/// In a file that is CRLF throughout, every line still is after an edit.
fn crlf_throughout(original: &str, edited: &str) -> bool {
    let all_crlf = |t: &str| !t.replace("\r\n", "").contains('\n');
    !(all_crlf(original) && original.contains('\n')) || all_crlf(edited)
}

fn new_text(plan: &HostPlan, path: &str) -> Option<String> {
    plan.changes
        .iter()
        .find(|c| c.path == path)
        .map(|c| c.new.as_ref().unwrap().raw().to_string())
}

/// main.cf through the real plan: relay becomes a backup, then is released.
#[test]
fn main_cf_taken_and_given_back_byte_for_byte() {
    let home = new_keys("home.example.net");
    let fresh = fixture_facts(FRESH);
    let backup = inventory(DIR, true);
    let alone = inventory(DIR, false);
    let release = alone
        .for_release(&inventory::HostName::parse("relay").unwrap())
        .unwrap();
    let main_cf = format!("{DIR}/main.cf");
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&admin_file(), |file| {
        let text = render(&file);
        let mut f = fresh.clone();
        f.main_cf = text.clone();
        let plan = try_plan(&backup, "relay", &f, &home).map_err(TestCaseError::fail)?;
        let taken = new_text(&plan, &main_cf).unwrap_or_else(|| text.clone());
        // Lines outside the parameters mxpin changed are untouched.
        let before = MainCf::parse(&text);
        let after = MainCf::parse(&taken);
        let changed: Vec<&str> = [
            "transport_maps",
            "relay_domains",
            "relay_recipient_maps",
            "smtp_tls_policy_maps",
            "smtpd_tls_security_level",
            "smtp_tls_loglevel",
            "smtp_tls_fingerprint_digest",
            "smtpd_tls_chain_files",
            // Emptied when they are Debian's snakeoil.
            "smtpd_tls_cert_file",
            "smtpd_tls_key_file",
        ]
        .into_iter()
        .filter(|p| before.get(p) != after.get(p))
        .collect();
        let (kept_before, kept_after) = (outside(&text, &changed), outside(&taken, &changed));
        let eol = crate::mta::line_ending(&text);
        prop_assert!(
            kept_after == kept_before
                || (!text.ends_with('\n') && kept_after == format!("{kept_before}{eol}")),
            "lines mxpin does not own changed:\n{:?}\n{:?}",
            kept_before,
            kept_after
        );
        prop_assert!(
            crlf_throughout(&text, &taken),
            "LF written into CRLF: {:?}",
            taken
        );
        let transport = after.get("transport_maps").unwrap_or_default();
        prop_assert_eq!(
            transport.split(", ").next(),
            Some("hash:/etc/postfix/mxpin/transport")
        );

        // Applied, the same plan again leaves main.cf alone.
        let applied = simulate_apply(&f, &plan);
        let again = try_plan(&backup, "relay", &applied, &home).map_err(TestCaseError::fail)?;
        prop_assert_eq!(new_text(&again, &main_cf), None, "not converged");

        // Released, every byte comes back.
        let plan = try_plan(&release, "relay", &applied, &home).map_err(TestCaseError::fail)?;
        let back = new_text(&plan, &main_cf).unwrap_or_else(|| taken.clone());
        prop_assert_eq!(&back, &text, "released, main.cf is not the admin's");

        // Out of its domains but still managed: the four tables and the
        // pinning parameters come back as the admin wrote them.
        let plan = try_plan(&alone, "relay", &applied, &home).map_err(TestCaseError::fail)?;
        let left = new_text(&plan, &main_cf).unwrap_or_else(|| taken.clone());
        for p in [
            "transport_maps",
            "relay_domains",
            "relay_recipient_maps",
            "smtp_tls_policy_maps",
            "smtp_tls_fingerprint_digest",
            "smtp_tls_loglevel",
        ] {
            let (a, b) = (before.def_text(p), MainCf::parse(&left).def_text(p));
            // The file's last line may have gained the newline that
            // separates it from a line mxpin still adds after it.
            let same = a == b
                || a.as_ref()
                    .zip(b.as_ref())
                    .is_some_and(|(a, b)| format!("{a}{eol}") == *b);
            prop_assert!(same, "{} not given back: {:?} -> {:?}", p, a, b);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// master.cf lines for the generated file: services, continuation lines,
/// comments between them, commented-out services, blank lines.
fn master_line() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "smtp      inet  n       -       y       -       -       smtpd",
        "smtp      unix  -       -       n       -       -       smtp",
        "relay     unix  -       -       y       -       -       smtp",
        "        -o syslog_name=postfix/$service_name",
        "  -o smtp_helo_timeout=5 ",
        "#       -o smtp_helo_timeout=5 -o smtp_connect_timeout=5",
        "#submission inet n       -       y       -       -       smtpd",
        "# Managed elsewhere",
        "",
        "   ",
        "showq     unix  n       -       y       -       -       showq",
        "2526      inet  n       -       y       -       -       smtpd",
    ])
}

/// master.cf through the services the plan would add: the implicit-TLS
/// client, the client-certificate client and the relay listener, then none.
#[test]
fn master_cf_services_come_and_go_leaving_the_admins_bytes() {
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(master_line(), 0..12),
        any::<bool>(),
        any::<bool>(),
        prop::sample::subsequence(vec![0usize, 1, 2], 1..=3),
    );
    let result = runner.run(&strategy, |(lines, crlf, final_newline, which)| {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut text = lines.join(eol);
        if final_newline && !lines.is_empty() {
            text.push_str(eol);
        }
        let key = mastercf::server_key("/e/mxpin/current.key", "/e/mxpin/current.crt", true);
        let all = [
            mastercf::Service::smtps(&mastercf::chroot_of(&text, "smtp", "unix")),
            mastercf::Service::relay_client(
                &mastercf::chroot_of(&text, "smtp", "unix"),
                "/e/mxpin/current.key",
                "/e/mxpin/current.crt",
                true,
            ),
            mastercf::Service::relay_listener(
                &mastercf::chroot_of(&text, "smtp", "inet"),
                2525,
                "sha256",
                "hash:/e/mxpin/relay_clientcerts",
                &key,
            ),
        ];
        let wanted: Vec<mastercf::Service> = which.iter().map(|&i| all[i].clone()).collect();
        let added = mastercf::edited(&text, &wanted);
        // The file's own line ending (one unterminated line has none: LF).
        let eol = crate::mta::line_ending(&text);
        // The admin's lines first, untouched (the last one may gain the
        // newline before mxpin's block).
        let head = if text.ends_with('\n') || text.is_empty() {
            text.clone()
        } else {
            format!("{text}{eol}")
        };
        prop_assert!(added.starts_with(&head), "{:?}", added);
        prop_assert!(
            crlf_throughout(&text, &added),
            "LF written into CRLF: {:?}",
            added
        );
        prop_assert_eq!(
            mastercf::edited(&added, &wanted),
            added.clone(),
            "not idempotent"
        );
        prop_assert!(mastercf::listener_on(&added, 2525) == which.contains(&2));
        prop_assert_eq!(
            mastercf::edited(&added, &[]),
            text.clone(),
            "not given back"
        );
        // Taking one service away leaves the others and the admin's lines.
        let fewer = &wanted[1..];
        let less = mastercf::edited(&added, fewer);
        prop_assert_eq!(mastercf::edited(&less, &[]), text);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
