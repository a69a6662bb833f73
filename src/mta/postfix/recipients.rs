//! The addresses a Postfix primary accepts for a domain, read in its facts
//! (see [`crate::recipients`]): which address class the domain is in
//! (`mydestination`, `virtual_alias_domains`, `virtual_mailbox_domains`, in
//! trivial-rewrite's order), then the keys of the tables that class uses:
//! `local_recipient_maps` (the passwd users with `getent passwd`, and the
//! aliases) plus `virtual_alias_maps` for a local domain;
//! `virtual_mailbox_maps` plus `virtual_alias_maps` for a virtual mailbox
//! domain; `virtual_alias_maps` for a virtual alias domain.
//!
//! Indexed tables (`hash`, `btree`, `lmdb`, `cdb`, `dbm`, `sdbm`) and
//! `texthash` files are listed with `postmap -s`, which reads them as
//! Postfix does; `unix:passwd.byname` with `getent passwd` (names only).
//! Anything else cannot be listed and is refused, naming the parameter and
//! the table.

use std::collections::BTreeMap;

use crate::facts::Sections;
use crate::inventory::{DnsName, Host};
use crate::recipients::{collect, Accepts, Collected, Read};

use super::maincf::split_list;

/// Domain lists, in the order trivial-rewrite tries the address classes.
const CLASSES: [&str; 4] = [
    "mydestination",
    "virtual_alias_domains",
    "virtual_mailbox_domains",
    "relay_domains",
];

/// Tables whose keys are the accepted addresses.
const MAPS: [&str; 3] = [
    "virtual_alias_maps",
    "virtual_mailbox_maps",
    "local_recipient_maps",
];

/// Table types `postmap -s` lists (after an optional `proxy:`).
const LISTABLE: [&str; 7] = ["hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash"];

/// The passwd table, listed with `getent passwd`.
const PASSWD: &str = "unix:passwd.byname";

/// Keys `postalias` adds to every alias database (NIS compatibility):
/// not addresses.
const ALIAS_SIGNATURES: [&str; 3] = ["@", "YP_LAST_MODIFIED", "YP_MASTER_NAME"];

/// Shell for the facts script: reads the recipient tables of the domains
/// `host` is the primary of with `recipients = "primary"` (nothing when
/// there are none). Read-only, like the rest of the facts.
pub fn script(host: &Host) -> String {
    let Some(domains) = crate::recipients::quoted_domains(host) else {
        return String::new();
    };
    let params: Vec<&str> = CLASSES
        .iter()
        .chain(MAPS.iter())
        .chain(["alias_maps"].iter())
        .copied()
        .collect();
    let types = LISTABLE.map(|t| format!("{t}:*")).join("|");
    format!(
        r#"set -f
put rcpt-domains "$(printf '%s\n' {domains})"
if rv=$(postconf -c "$C" -x {params} 2>&1); then put rcpt-params "$rv"; else put rcpt-error "postconf: $rv"; rv=''; fi
rcpt_seen=' '
rcpt_val() {{ printf '%s\n' "$rv" | sed -n "s/^$1 = //p" | tr ',' ' '; }}
for p in {maps}; do
  for t in $(rcpt_val "$p"); do
    case "$rcpt_seen" in *" $t "*) continue ;; esac
    rcpt_seen="$rcpt_seen$t "
    u=${{t#proxy:}}
    case "$u" in
      {PASSWD})
        if o=$(getent passwd); then put "rcpt-map:$t" "$(printf '%s\n' "$o" | cut -d: -f1)"; else put "rcpt-err:$t" "getent passwd failed"; fi ;;
      {types})
        if o=$(postmap -c "$C" -s "$u" 2>/dev/null); then put "rcpt-map:$t" "$o"
        else put "rcpt-err:$t" "$(postmap -c "$C" -s "$u" 2>&1 >/dev/null | tail -n 1)"; fi ;;
    esac
  done
done
for d in {domains}; do
  for p in {classes}; do
    for t in $(rcpt_val "$p"); do
      case "$t" in /*) k="rcpt-file:$t" ;; *:*) k="rcpt-q:$d:$t" ;; *) continue ;; esac
      case "$rcpt_seen" in *" $k "*) continue ;; esac
      rcpt_seen="$rcpt_seen$k "
      case "$t" in
        /*) if [ -r "$t" ]; then set -- "$@" "$k" "$t"; else put "rcpt-err:$t" "cannot read $t"; fi ;;
        *) o=$(postmap -c "$C" -q "$d" "$t" 2>&1 >/dev/null); put "$k" "$? $o" ;;
      esac
    done
  done
done
putfiles '' "$@"
set --
set +f
"#,
        params = params.join(" "),
        maps = MAPS.join(" "),
        classes = CLASSES.join(" "),
    )
}

/// Whether the facts script writes a section of this name.
pub fn known_section(name: &str) -> bool {
    matches!(name, "rcpt-domains" | "rcpt-params" | "rcpt-error")
        || ["rcpt-map:", "rcpt-err:", "rcpt-file:", "rcpt-q:"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// What the primary accepts for each domain its facts read.
pub fn from_sections(s: &Sections) -> Read {
    let Some(domains) = s.get("rcpt-domains") else {
        return Read::new();
    };
    let mut params = BTreeMap::new();
    for line in s.get("rcpt-params").unwrap_or_default().lines() {
        if let Some((k, v)) = line.split_once(" = ") {
            params.insert(k.trim().to_string(), v.trim().to_string());
        } else if let Some(k) = line.strip_suffix(" =") {
            params.insert(k.trim().to_string(), String::new());
        }
    }
    domains
        .split_whitespace()
        .map(|d| {
            let read = match DnsName::parse(d) {
                Ok(dn) => match s.get("rcpt-error") {
                    Some(e) => Err(e.to_string()),
                    None => read_domain(&dn, &params, s),
                },
                Err(e) => Err(e),
            };
            (d.to_string(), read)
        })
        .collect()
}

/// Which address class trivial-rewrite gives the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Local,
    VirtualAlias,
    VirtualMailbox,
}

fn read_domain(
    d: &DnsName,
    params: &BTreeMap<String, String>,
    s: &Sections,
) -> Result<Accepts, String> {
    let list = |p: &str| split_list(params.get(p).map_or("", String::as_str));
    let member = |p: &str| -> Result<bool, String> {
        for t in list(p) {
            if t.eq_ignore_ascii_case(d.as_str()) {
                return Ok(true);
            }
            if t.starts_with('/') {
                if let Some(e) = s.get(&format!("rcpt-err:{t}")) {
                    return Err(format!("{p}: {e}"));
                }
                let text = s.get(&format!("rcpt-file:{t}")).unwrap_or_default();
                let found = text
                    .lines()
                    .map(|l| l.split('#').next().unwrap_or_default())
                    .flat_map(split_list)
                    .any(|x| x.eq_ignore_ascii_case(d.as_str()));
                if found {
                    return Ok(true);
                }
            } else if t.contains(':') {
                let got = s.get(&format!("rcpt-q:{d}:{t}")).unwrap_or_default();
                match got.split_once(' ').unwrap_or((got, "")) {
                    ("0", _) => return Ok(true),
                    ("1", "") => {}
                    (_, e) => {
                        let e = e.lines().last().unwrap_or("no answer");
                        return Err(format!("{p}: cannot look up {d} in {t}: {e}"));
                    }
                }
            }
        }
        Ok(false)
    };
    let class = if member("mydestination")? {
        Class::Local
    } else if member("virtual_alias_domains")? {
        Class::VirtualAlias
    } else if member("virtual_mailbox_domains")? {
        Class::VirtualMailbox
    } else if member("relay_domains")? {
        return Err(format!(
            "{d} is in relay_domains there: it relays the domain on, so its recipients are not there"
        ));
    } else {
        return Err(format!(
            "{d} is not in its mydestination, virtual_alias_domains or virtual_mailbox_domains: \
             it does not accept mail for the domain"
        ));
    };
    let aliases = list("alias_maps");
    let mut c = Collected::default();
    let from = |param: &str, bare_local: bool, c: &mut Collected| -> Result<(), String> {
        for map in list(param) {
            let keys = keys(s, param, &map)?;
            let alias = aliases.contains(&map);
            let keys = keys
                .iter()
                .copied()
                .filter(|k| !(alias && ALIAS_SIGNATURES.contains(k)));
            collect(d, keys, bare_local, &format!("{param} {map}"), c)?;
        }
        Ok(())
    };
    match class {
        Class::Local => {
            // Empty local_recipient_maps: smtpd accepts every local part.
            if list("local_recipient_maps").is_empty() {
                c.catch_all = true;
            }
            from("local_recipient_maps", true, &mut c)?;
            from("virtual_alias_maps", true, &mut c)?;
        }
        Class::VirtualAlias => from("virtual_alias_maps", false, &mut c)?,
        Class::VirtualMailbox => {
            from("virtual_mailbox_maps", false, &mut c)?;
            from("virtual_alias_maps", false, &mut c)?;
        }
    }
    Ok(c.accepts())
}

/// The keys of one table as listed on the host, or why they cannot be.
fn keys<'a>(s: &'a Sections, param: &str, map: &str) -> Result<Vec<&'a str>, String> {
    let inner = map.strip_prefix("proxy:").unwrap_or(map);
    let kind = inner.split_once(':').map_or(inner, |(t, _)| t);
    if inner != PASSWD && !LISTABLE.contains(&kind) {
        return Err(format!(
            "{param} uses {}, which cannot be listed",
            crate::text::shown(map)
        ));
    }
    if let Some(e) = s.get(&format!("rcpt-err:{map}")) {
        let e = if e.trim().is_empty() {
            "no output"
        } else {
            e.trim()
        };
        return Err(format!("{param}: cannot list {map}: {e}"));
    }
    let text = s
        .get(&format!("rcpt-map:{map}"))
        .ok_or_else(|| format!("{param}: {map} was not read"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect())
}

#[cfg(test)]
mod tests;
