//! The checks a verify runs on a Postfix host, with the facts.

use std::fmt::Write as _;

use super::{ApplySteps, PostfixFacts, CLIENT_CERTS, OWNED_DIR};
use crate::inventory::HostName;
use crate::mta::RouteCheck;
use crate::shell::quote;
use crate::verify::Kind;

/// Shell that checks, on a backup, the routes it pins: a live handshake with
/// `posttls-finger` using exactly the pins of its tls_policy lookup, and
/// the transport and policy lookups themselves. `lookup` is the host's
/// `smtp_host_lookup`, so the check resolves names as deliveries do.
pub fn verify_snippet(steps: &ApplySteps, digest: &str, lookup: &str) -> String {
    let table = |name: &str| format!("{}:{}/{OWNED_DIR}/{name}", steps.db_type, steps.config_dir);
    let mut s = String::new();
    s.push_str("if command -v posttls-finger >/dev/null 2>&1; then ptf=yes; else ptf=no; fi\n");
    for l in &steps.lookups {
        let _ = writeln!(
            s,
            "put {} \"$(postmap -c \"$C\" -q {} {} 2>/dev/null)\"",
            quote(&format!("q:{}:{}", l.table, l.key)),
            quote(&l.key),
            quote(&table(&l.table))
        );
        if l.table != "tls_policy" {
            continue;
        }
        let pins: Vec<String> = crate::pins::in_policy(&l.expected)
            .iter()
            .map(|p| quote(p))
            .collect();
        // The SNI name the policy asks for, as deliveries do.
        let sni = l
            .expected
            .split_whitespace()
            .find_map(|a| a.strip_prefix("servername="))
            .map(|n| format!("-s {} ", quote(n)))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "if [ $ptf = yes ]; then put {} \"$(posttls-finger -c {}{sni}-l fingerprint -d {} -h {} {} {} 2>&1)\"; \
             else put {} 'posttls-finger not found'; fi",
            quote(&format!("ptf:{}", l.key)),
            if l.wrapper { "-w " } else { "" },
            quote(digest),
            quote(lookup),
            quote(&l.key),
            pins.join(" "),
            quote(&format!("ptf:{}", l.key)),
        );
    }
    s
}

/// Reads the results of [`verify_snippet`] from the facts: each lookup
/// gives what it should, and each pinned next-hop answers `posttls-finger`
/// with a verified connection.
pub fn route_checks(host: &HostName, steps: &ApplySteps, f: &PostfixFacts) -> Vec<RouteCheck> {
    let mut checks = Vec::new();
    for l in &steps.lookups {
        let got = f
            .checks
            .get(&format!("q:{}:{}", l.table, l.key))
            .map(|v| v.trim().to_string());
        let ok = got.as_deref() == Some(l.expected.as_str());
        checks.push(RouteCheck {
            id: format!("lookup:{}:{}", l.table, l.key),
            kind: Kind::Lookup,
            route: if l.table == CLIENT_CERTS {
                "client certificates".into()
            } else {
                l.key.clone()
            },
            ok,
            peer_down: false,
            what: if ok {
                format!("{} lookup of {} is {}", l.table, l.key, l.expected)
            } else {
                format!(
                    "{} lookup of {}: found {:?}, expected {:?}",
                    l.table,
                    l.key,
                    got.unwrap_or_default(),
                    l.expected
                )
            },
        });
        if l.table != "tls_policy" {
            continue;
        }
        let ptf = f
            .checks
            .get(&format!("ptf:{}", l.key))
            .cloned()
            .unwrap_or_default();
        let verified = ptf
            .lines()
            .find(|x| x.contains("TLS connection established"));
        let ok = verified.is_some_and(|x| x.contains("Verified TLS connection established"));
        checks.push(RouteCheck {
            id: format!("handshake:{}", l.key),
            kind: Kind::Handshake,
            route: l.key.clone(),
            ok,
            // No TLS connection at all: the peer did not answer.
            peer_down: verified.is_none(),
            what: match verified {
                Some(_) if ok => format!(
                    "posttls-finger on {host}: Verified TLS connection to {}",
                    l.key
                ),
                Some(line) => format!("posttls-finger on {host}: {}", line.trim()),
                None => format!(
                    "posttls-finger on {host}: no TLS connection to {}: {}",
                    l.key,
                    ptf.lines().last().unwrap_or("no output").trim()
                ),
            },
        });
    }
    checks
}
