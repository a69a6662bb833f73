//! The addresses an Exim primary accepts for a domain, read in its facts
//! (see [`crate::recipients`]). Exim decides, not a re-implementation of
//! its routers: the candidates are the passwd users (`getent passwd`) and
//! the keys of every `lsearch` file the routers name (Debian's
//! system_aliases `/etc/aliases`, a `local_parts = lsearch;FILE` router
//! such as a virtual mailbox list), and `exim -bv` verifies each of them
//! for the domain, as the RCPT ACL's `verify = recipient` does. An address
//! no table holds is verified too, as a probe: if it passes, the domain
//! has a catch-all.
//!
//! Refused, in one line naming the router: a router that may take the
//! domain and decides on local parts with a lookup that cannot be listed
//! (`ldap`, `mysql`, `pgsql`, `dbm`, `wildlsearch`, ...). Refused as well:
//! a domain not in `+local_domains`, and an address Exim cannot decide now.

use crate::facts::Sections;
use crate::inventory::{DnsName, Host};
use crate::recipients::{collect, Accepts, Collected, Read};

/// The local part of the probe: an address no table holds.
pub const PROBE: &str = "mxpin-probe-no-such-user";

/// Lookup types whose keys cannot be listed from the host.
const UNLISTABLE: [&str; 22] = [
    "ldap",
    "ldapdn",
    "ldapm",
    "mysql",
    "pgsql",
    "sqlite",
    "redis",
    "oracle",
    "ibase",
    "nis",
    "nis0",
    "nisplus",
    "dbm",
    "dbmnz",
    "dbmjz",
    "cdb",
    "lmdb",
    "wildlsearch",
    "nwildlsearch",
    "iplsearch",
    "dnsdb",
    "readsock",
];

/// Router options that decide which local parts a router takes.
const DECIDING: [&str; 4] = ["local_parts", "data", "condition", "address_data"];

/// Shell for the facts script (after `X`, the exim binary, is set).
pub fn script(host: &Host) -> String {
    let Some(domains) = crate::recipients::quoted_domains(host) else {
        return String::new();
    };
    format!(
        r#"set -f
put rcpt-domains "$(printf '%s\n' {domains})"
if rr=$("$X" -bP routers 2>&1); then put rcpt-routers "$rr"; else put rcpt-error "exim -bP routers: $rr"; rr=''; fi
rf=$(printf '%s\n' "$rr" | grep -o 'lsearch[;{{]/[^}};:[:space:]]*' | sed 's/^lsearch.//' | sort -u)
for f in $rf; do
  if [ -r "$f" ]; then set -- "$@" "rcpt-file:$f" "$f"; fi
done
putfiles '' "$@"
set --
rc=$({{ for f in $rf; do [ -r "$f" ] && sed -n 's/^"\{{0,1\}}\([^-#":[:space:]][^":[:space:]]*\).*/\1/p' "$f"; done; getent passwd | cut -d: -f1 | grep -v '^-'; }} | sort -u)
for d in {domains}; do
  put "rcpt-local:$d" "$("$X" -be "\${{if match_domain{{$d}}{{+local_domains}}{{yes}}{{no}}}}" 2>&1)"
  put "rcpt-bv:$d" "$(printf '%s\n' $rc {PROBE} | sed "s/\$/@$d/" | tr '\n' '\000' | xargs -0 "$X" -bv 2>&1)"
done
set +f
"#
    )
}

pub fn known_section(name: &str) -> bool {
    matches!(name, "rcpt-domains" | "rcpt-routers" | "rcpt-error")
        || ["rcpt-file:", "rcpt-local:", "rcpt-bv:"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// A router of `exim -bP routers`: its name and its options as printed.
struct Router<'a> {
    name: &'a str,
    options: Vec<(&'a str, &'a str)>,
}

impl Router<'_> {
    fn get(&self, option: &str) -> &str {
        self.options
            .iter()
            .find(|(k, _)| *k == option)
            .map_or("", |(_, v)| v)
    }
    fn flag(&self, option: &str) -> bool {
        self.options
            .iter()
            .any(|(k, v)| *k == option && v.is_empty())
    }
}

fn routers(text: &str) -> Vec<Router<'_>> {
    let mut out: Vec<Router> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_suffix(" router:") {
            out.push(Router {
                name,
                options: Vec::new(),
            });
        } else if let Some(r) = out.last_mut() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            match line.split_once(" = ") {
                Some((k, v)) => r.options.push((k, v.trim())),
                None => r.options.push((line.trim_end_matches(" ="), "")),
            }
        }
    }
    out
}

/// The first lookup type in `value` that cannot be listed: a type name
/// (not part of a longer word) followed by `{`, `;` or a space.
fn unlistable(value: &str) -> Option<&'static str> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    UNLISTABLE.iter().copied().find(|t| {
        value.match_indices(t).any(|(i, _)| {
            let before = value[..i].chars().last();
            let after = value[i + t.len()..].chars().next();
            !before.is_some_and(word) && matches!(after, Some('{' | ';' | ' '))
        })
    })
}

/// Whether a router's `domains` is a plain list of names that leaves
/// `d` out (then the router cannot take it).
fn leaves_out(domains: &str, d: &DnsName) -> bool {
    if domains.is_empty() || domains.contains(['$', ';', '+', '!', '*', '^', '@', '<']) {
        return false;
    }
    !domains
        .split(':')
        .map(str::trim)
        .any(|x| x.eq_ignore_ascii_case(d.as_str()))
}

/// What the primary accepts for each domain its facts read.
pub fn from_sections(s: &Sections) -> Read {
    let Some(domains) = s.get("rcpt-domains") else {
        return Read::new();
    };
    domains
        .split_whitespace()
        .map(|d| {
            let read = match (DnsName::parse(d), s.get("rcpt-error")) {
                (Err(e), _) => Err(e),
                (_, Some(e)) => Err(e.to_string()),
                (Ok(dn), None) => read_domain(&dn, s),
            };
            (d.to_string(), read)
        })
        .collect()
}

fn read_domain(d: &DnsName, s: &Sections) -> Result<Accepts, String> {
    match s.get(&format!("rcpt-local:{d}")).map(str::trim) {
        Some("yes") => {}
        Some("no") => {
            return Err(format!(
                "{d} is not in its +local_domains: it does not accept mail for the domain"
            ))
        }
        other => {
            return Err(format!(
                "cannot tell whether {d} is in +local_domains: {}",
                other.unwrap_or("no answer")
            ))
        }
    }
    for r in routers(s.get("rcpt-routers").unwrap_or_default()) {
        if r.flag("no_verify_recipient") || leaves_out(r.get("domains"), d) {
            continue;
        }
        if matches!(r.get("driver"), "queryprogram" | "iplookup") {
            return Err(format!(
                "router {} ({} driver) decides who exists, which cannot be listed",
                r.name,
                r.get("driver")
            ));
        }
        for option in DECIDING {
            if let Some(t) = unlistable(r.get(option)) {
                return Err(format!(
                    "router {} has {option} with a {t} lookup, which cannot be listed",
                    r.name
                ));
            }
        }
    }
    let bv = s.get(&format!("rcpt-bv:{d}")).unwrap_or_default();
    let suffix = format!("@{d}");
    let mut verified = Vec::new();
    let mut catch_all = false;
    for line in bv.lines() {
        let Some((addr, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some(local) = addr.strip_suffix(suffix.as_str()) else {
            continue;
        };
        if rest == "verified" {
            if local == PROBE {
                catch_all = true;
            } else {
                verified.push(addr);
            }
        } else if !rest.starts_with("failed to verify") {
            return Err(format!(
                "exim -bv cannot decide {addr} now: {}",
                rest.trim()
            ));
        }
    }
    if !bv
        .lines()
        .any(|l| l.starts_with(&format!("{PROBE}{suffix} ")))
    {
        return Err(format!(
            "exim -bv gave no answer for {d}: {}",
            bv.lines().last().unwrap_or("no output")
        ));
    }
    let mut c = Collected {
        catch_all,
        ..Default::default()
    };
    collect(d, verified, false, "exim -bv", &mut c)?;
    Ok(c.accepts())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Recipient;

    fn frames(parts: &[(&str, &str)]) -> Sections {
        crate::facts::parse(&crate::facts::frames(parts)).unwrap()
    }

    /// `exim4 -bP routers` of the lab's Debian-layout home (the options
    /// that matter; the real output lists every option of every router).
    const ROUTERS: &str = "dnslookup router:
domains = ! +local_domains
driver = dnslookup

real_local router:
check_local_user
condition = ${if match_ip{$sender_host_address}{:@[]}{1}{0}}
domains = +local_domains
driver = accept
local_part_prefix = real-
local_parts = 

vmailbox router:
domains = example.net
driver = accept
local_parts = lsearch;/etc/exim4/vmailbox

system_aliases router:
domains = +local_domains
driver = redirect
data = ${lookup{$local_part}lsearch{/etc/aliases}}

userforward router:
check_local_user
domains = +local_domains
driver = redirect
no_verify_recipient

local_user router:
check_local_user
domains = +local_domains
driver = accept
local_parts = ! root
";

    /// `exim4 -bv` of the candidates, as captured on the lab's home.
    const BV: &str = "first.last@example.net verified
nobody@example.net verified
nosuch@example.net failed to verify: Unrouteable address
mxpin-probe-no-such-user@example.net failed to verify: Unrouteable address";

    fn lab(extra: &[(&str, &str)]) -> Sections {
        let mut parts = vec![
            ("rcpt-domains", "example.net"),
            ("rcpt-routers", ROUTERS),
            ("rcpt-local:example.net", "yes"),
            ("rcpt-bv:example.net", BV),
        ];
        parts.extend_from_slice(extra);
        frames(&parts)
    }

    #[test]
    fn verified_candidates_are_the_recipients() {
        let d = DnsName::parse("example.net").unwrap();
        assert_eq!(
            from_sections(&lab(&[]))["example.net"],
            Ok(Accepts::Only(
                ["first.last@example.net", "nobody@example.net"]
                    .iter()
                    .map(|a| Recipient::parse(a, &d).unwrap())
                    .collect()
            ))
        );
    }

    /// The recipient sections of the real facts of the lab's Exim home
    /// with Debian's split configuration (tests/fixtures/recipients).
    #[test]
    fn captured_facts_of_the_lab_exim_home() {
        let out = include_bytes!("../../../tests/fixtures/recipients/exim-debian-home.facts");
        let r = from_sections(&crate::facts::parse(out).unwrap());
        for (d, yes, no) in [
            (
                "example.net",
                ["first.last@", "root@"],
                ["debian-exim@", "mxpin-probe-no-such-user@"],
            ),
            (
                "home.example.net",
                ["postmaster@", "mxpinlab@"],
                ["first.last@", "debian-exim@"],
            ),
        ] {
            let Ok(Accepts::Only(list)) = &r[d] else {
                panic!("{d}: {r:?}")
            };
            let list: Vec<&str> = list.iter().map(|a| a.as_str()).collect();
            for a in yes {
                assert!(list.contains(&format!("{a}{d}").as_str()), "{d}: {list:?}");
            }
            for a in no {
                assert!(!list.contains(&format!("{a}{d}").as_str()), "{d}: {list:?}");
            }
        }
    }

    #[test]
    fn a_verified_probe_is_a_catch_all() {
        let s = frames(&[
            ("rcpt-domains", "example.net"),
            ("rcpt-routers", ROUTERS),
            ("rcpt-local:example.net", "yes"),
            (
                "rcpt-bv:example.net",
                "first.last@example.net verified\nmxpin-probe-no-such-user@example.net verified",
            ),
        ]);
        assert_eq!(from_sections(&s)["example.net"], Ok(Accepts::Any));
    }

    #[test]
    fn an_ldap_router_is_refused_naming_it() {
        let routers = ROUTERS.replace(
            "local_parts = lsearch;/etc/exim4/vmailbox",
            "local_parts = ${lookup ldap{ldap:///o=example?uid?sub?(uid=$local_part)}}",
        );
        let s = frames(&[
            ("rcpt-domains", "example.net"),
            ("rcpt-routers", &routers),
            ("rcpt-local:example.net", "yes"),
            ("rcpt-bv:example.net", BV),
        ]);
        assert_eq!(
            from_sections(&s)["example.net"],
            Err(
                "router vmailbox has local_parts with a ldap lookup, which cannot be listed".into()
            )
        );
        // The same router for another domain only does not matter.
        let other = routers.replace("domains = example.net", "domains = other.example");
        let s = frames(&[
            ("rcpt-domains", "example.net"),
            ("rcpt-routers", &other),
            ("rcpt-local:example.net", "yes"),
            ("rcpt-bv:example.net", BV),
        ]);
        assert!(from_sections(&s)["example.net"].is_ok());
        for (opt, v) in [
            (
                "data",
                "${lookup mysql{select x from y where u='$local_part'}}",
            ),
            (
                "data",
                "${lookup{$local_part}wildlsearch{/etc/exim4/virtual}}",
            ),
            ("local_parts", "dbm;/etc/exim4/users.db"),
        ] {
            let r = ROUTERS.replace(
                "data = ${lookup{$local_part}lsearch{/etc/aliases}}",
                &format!("{opt} = {v}"),
            );
            let s = frames(&[
                ("rcpt-domains", "example.net"),
                ("rcpt-routers", &r),
                ("rcpt-local:example.net", "yes"),
                ("rcpt-bv:example.net", BV),
            ]);
            let e = from_sections(&s)["example.net"].clone().unwrap_err();
            assert!(
                e.starts_with("router system_aliases has ") && e.contains("cannot be listed"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_domain_exim_does_not_take_or_cannot_decide_is_refused() {
        let s = frames(&[
            ("rcpt-domains", "example.net"),
            ("rcpt-routers", ROUTERS),
            ("rcpt-local:example.net", "no"),
        ]);
        let e = from_sections(&s)["example.net"].clone().unwrap_err();
        assert!(e.contains("not in its +local_domains"), "{e}");
        let s = frames(&[
            ("rcpt-domains", "example.net"),
            ("rcpt-routers", ROUTERS),
            ("rcpt-local:example.net", "yes"),
            (
                "rcpt-bv:example.net",
                "a@example.net cannot be resolved at this time: host lookup did not complete\n\
                 mxpin-probe-no-such-user@example.net failed to verify: Unrouteable address",
            ),
        ]);
        let e = from_sections(&s)["example.net"].clone().unwrap_err();
        assert!(e.contains("cannot decide a@example.net"), "{e}");
    }
}
