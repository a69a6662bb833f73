//! The checks a verify runs on a Postfix host, with the facts.

use std::fmt::Write as _;

use super::{ApplySteps, PostfixFacts, CLIENT_CERTS, OWNED_DIR};
use crate::inventory::HostName;
use crate::mta::RouteCheck;
use crate::shell::quote;
use crate::verify::Kind;

/// Shell function `known NAME`: sets `r` to the answer of the lookup NAME
/// (`q:TABLE:KEY`) that the apply script before it, in the same shell,
/// checked after its swap (`validated`, lines `NAME<TAB>ANSWER`; see
/// [`super::script::apply_script`]). The tables do not change between
/// that check and the read-back (the run holds the host's lock), so the
/// read-back does not run the same `postmap -q` twice. Fails, and the
/// snippet asks postmap, in any other read.
const KNOWN: &str = r#"known() {
  case "${validated:-}$NL" in
    *"$NL$1	"*) r=${validated#*"$NL$1	"}; r=${r%%"$NL"*} ;;
    *) return 1 ;;
  esac
}
"#;

/// Shell that checks, on a backup, the routes it pins: a live handshake with
/// `posttls-finger` using exactly the pins of its tls_policy lookup, and
/// the transport and policy lookups themselves. `lookup` is the host's
/// `smtp_host_lookup`, so the check resolves names as deliveries do.
pub fn verify_snippet(steps: &ApplySteps, digest: &str, lookup: &str) -> String {
    let table = |name: &str| format!("{}:{}/{OWNED_DIR}/{name}", steps.db_type, steps.config_dir);
    let mut s = String::new();
    s.push_str("if command -v posttls-finger >/dev/null 2>&1; then ptf=yes; else ptf=no; fi\n");
    s.push_str(KNOWN);
    for l in &steps.lookups {
        let name = quote(&format!("q:{}:{}", l.table, l.key));
        let _ = writeln!(
            s,
            "known {name} || r=$(postmap -c \"$C\" -q {} {} 2>/dev/null)\nput {name} \"$r\"",
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

/// Whether `f` holds the result of every check [`verify_snippet`] runs,
/// each handshake made with the pins the plan expects (the policy lookup
/// found them: [`hold_checks`] uses the pins of the host's own table).
pub fn checks_ran(steps: &ApplySteps, f: &PostfixFacts) -> bool {
    steps.lookups.iter().all(|l| {
        let q = f.checks.get(&format!("q:{}:{}", l.table, l.key));
        q.is_some()
            && (l.table != "tls_policy"
                || (q.map(|v| v.trim()) == Some(l.expected.as_str())
                    && f.checks.contains_key(&format!("ptf:{}", l.key))))
    })
}

/// Shell for the first read of `verify` and `apply` (inside the facts
/// script: `C`, `M`, `put` and `val`, which reads a parameter from the
/// facts' one `postconf -x`, are set): the checks of [`verify_snippet`] for the routes
/// the host's own tables hold, before any plan: `postmap -q` of each
/// domain in mxpin's transport table, of its next-hop in tls_policy (once
/// per next-hop) and of each key in relay_clientcerts, and `posttls-finger`
/// to each next-hop with the pins (and SNI name) its policy lookup found.
/// The results count only where the plan expects exactly those values
/// ([`checks_ran`]); any other host is read again with the plan's checks.
/// A backup route is never implicit TLS (no `-w`); the relayhost's check
/// needs the plan and is left to that second read.
pub fn hold_checks(digest: &str) -> String {
    format!(
        r#"val default_database_type; hc_db=$r
val smtp_host_lookup; hc_lookup=$r
if command -v posttls-finger >/dev/null 2>&1; then ptf=yes; else ptf=no; fi
hc_seen=' '
hc_once() {{ case "$hc_seen" in *" $1 "*) return 1 ;; esac; hc_seen="$hc_seen$1 "; }}
if [ -f "$M/transport" ] && [ -f "$M/tls_policy" ]; then
  while read -r hc_k hc_v hc_rest; do
    case "$hc_k" in ''|'#'*) continue ;; esac
    hc_once "q:transport:$hc_k" || continue
    put "q:transport:$hc_k" "$(postmap -c "$C" -q "$hc_k" "$hc_db:$M/transport" 2>/dev/null </dev/null)"
    hc_hop=${{hc_v#smtp:}}
    hc_once "q:tls_policy:$hc_hop" || continue
    hc_pol=$(postmap -c "$C" -q "$hc_hop" "$hc_db:$M/tls_policy" 2>/dev/null </dev/null)
    put "q:tls_policy:$hc_hop" "$hc_pol"
    hc_pins=''; hc_sni=''
    set -f
    for hc_w in $hc_pol; do
      case "$hc_w" in
        match=*)
          hc_ifs=$IFS; IFS='|'
          for hc_p in ${{hc_w#match=}}; do hc_pins="$hc_pins $hc_p"; done
          IFS=$hc_ifs ;;
        servername=*) hc_sni=${{hc_w#servername=}} ;;
      esac
    done
    if [ $ptf = no ]; then
      put "ptf:$hc_hop" 'posttls-finger not found'
    elif [ -n "$hc_sni" ]; then
      put "ptf:$hc_hop" "$(posttls-finger -c -s "$hc_sni" -l fingerprint -d {d} -h "$hc_lookup" "$hc_hop" $hc_pins 2>&1 </dev/null)"
    else
      put "ptf:$hc_hop" "$(posttls-finger -c -l fingerprint -d {d} -h "$hc_lookup" "$hc_hop" $hc_pins 2>&1 </dev/null)"
    fi
    set +f
  done < "$M/transport"
fi
if [ -f "$M/{CLIENT_CERTS}" ]; then
  while read -r hc_k hc_rest; do
    case "$hc_k" in ''|'#'*) continue ;; esac
    hc_once "q:{CLIENT_CERTS}:$hc_k" || continue
    put "q:{CLIENT_CERTS}:$hc_k" "$(postmap -c "$C" -q "$hc_k" "$hc_db:$M/{CLIENT_CERTS}" 2>/dev/null </dev/null)"
  done < "$M/{CLIENT_CERTS}"
fi
"#,
        d = quote(digest)
    )
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
