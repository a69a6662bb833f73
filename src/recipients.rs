//! `recipients = "primary"`: the backups of a domain accept exactly the
//! addresses its primary accepts, read from the primary in the same facts
//! read as everything else (see [`crate::mta::postfix::recipients`] and
//! [`crate::mta::exim::recipients`]), so the backup never takes mail it
//! would bounce later.
//!
//! What cannot be listed (an LDAP or SQL map, a regular expression) is
//! refused, never guessed; so is a read that finds nobody for a domain
//! whose backups accept somebody today.

use std::collections::BTreeMap;

use crate::desired::HostDesired;
use crate::inventory::{DnsName, HostName, Inventory, Recipient};
use crate::mta::Facts;

/// What a primary accepts for one domain, as read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepts {
    /// A catch-all (`@domain`): any address of the domain.
    Any,
    /// Exactly these, lowercase, sorted, without duplicates.
    Only(Vec<Recipient>),
}

/// Per domain read (lowercase name): what the primary accepts, or why it
/// cannot be known (one line, naming the parameter and the map).
pub type Read = BTreeMap<String, Result<Accepts, String>>;

/// The addresses of `domain` among `keys` (already lowercase): full
/// addresses of the domain, `@domain` as a catch-all, and, when
/// `bare_local` (a local domain), keys without `@` as local parts. Keys of
/// other domains and bare keys elsewhere (domain names in a table that
/// also lists the domains) are not addresses of it. `from` names the
/// table for errors.
pub fn collect<'a>(
    domain: &DnsName,
    keys: impl IntoIterator<Item = &'a str>,
    bare_local: bool,
    from: &str,
    into: &mut Collected,
) -> Result<(), String> {
    for key in keys {
        let key = key.trim();
        if key.is_empty() {
            continue;
        }
        let address = match key.rsplit_once('@') {
            Some(("", d)) if d.eq_ignore_ascii_case(domain.as_str()) => {
                into.catch_all = true;
                continue;
            }
            Some((_, d)) if d.eq_ignore_ascii_case(domain.as_str()) => key.to_ascii_lowercase(),
            Some(_) => continue,
            None if bare_local => format!("{}@{domain}", key.to_ascii_lowercase()),
            None => continue,
        };
        let r = Recipient::parse(&address, domain)
            .map_err(|e| format!("{from}: {e}; mxpin cannot write it into a backup's table"))?;
        into.addresses.push(r);
    }
    Ok(())
}

/// Addresses gathered from the tables of one domain.
#[derive(Debug, Default)]
pub struct Collected {
    pub catch_all: bool,
    pub addresses: Vec<Recipient>,
}

impl Collected {
    pub fn accepts(mut self) -> Accepts {
        if self.catch_all {
            return Accepts::Any;
        }
        self.addresses.sort();
        self.addresses.dedup();
        Accepts::Only(self.addresses)
    }
}

/// The domains `host` reads the recipients of (`recipients = "primary"`),
/// each quoted for the facts script; `None` when there are none.
pub fn quoted_domains(host: &crate::inventory::Host) -> Option<String> {
    if host.reads_recipients.is_empty() {
        return None;
    }
    let domains: Vec<String> = host
        .reads_recipients
        .iter()
        .map(|d| crate::shell::quote(d.as_str()))
        .collect();
    Some(domains.join(" "))
}

/// The two ways out of a refusal, said after it.
pub const ALTERNATIVES: &str =
    "list the recipients in the inventory (recipients = [...]), or set recipients = \"any\" (backups accept any address: backscatter)";

/// What a host's facts say the primary accepts for `domain`.
fn read_of<'a>(facts: &'a Facts, domain: &DnsName) -> Option<&'a Result<Accepts, String>> {
    let read = match facts {
        Facts::Postfix(f) => &f.recipients,
        Facts::Exim(f) => &f.recipients,
    };
    read.get(domain.as_str())
}

/// Whether the backup's relay_recipients, as read, accepts any address of
/// `domain` today (a listed address or the catch-all).
fn accepts_today(facts: &Facts, domain: &DnsName) -> bool {
    let files = match facts {
        Facts::Postfix(f) => &f.files,
        Facts::Exim(f) => &f.files,
    };
    let Some(file) = files.get("relay_recipients") else {
        return false;
    };
    let suffix = format!("@{domain}");
    file.content.raw().lines().any(|l| {
        l.split_whitespace().next().is_some_and(|k| {
            !k.starts_with('#')
                && k.len() >= suffix.len()
                && k[k.len() - suffix.len()..].eq_ignore_ascii_case(&suffix)
        })
    })
}

/// Fills in the recipients of every domain `d` backs up with `recipients =
/// "primary"`, from the primary's facts (`facts_of`); `own` are the
/// backup's facts. Refuses, in one line naming the primary, a domain whose
/// recipients could not be read, and one that would go from somebody to
/// nobody.
pub fn resolve<'a>(
    inv: &Inventory,
    mut d: HostDesired,
    own: &Facts,
    facts_of: impl Fn(&HostName) -> Result<&'a Facts, String>,
) -> Result<HostDesired, String> {
    for relay in &mut d.relays {
        let Some(dom) = inv
            .domains
            .iter()
            .find(|x| x.name == relay.domain && x.recipients_from_primary)
        else {
            continue;
        };
        let name = &dom.name;
        let primary = &dom.primary;
        let facts = facts_of(primary).map_err(|_| {
            format!("not planned: it backs up {name} for {primary}, whose facts could not be read")
        })?;
        let read = read_of(facts, name).ok_or_else(|| {
            format!("not planned: recipients of {name}: {primary}'s facts do not hold them")
        })?;
        match read {
            Err(e) => {
                return Err(format!(
                    "not planned: recipients of {name} on {primary}: {e}; {ALTERNATIVES}"
                ))
            }
            Ok(Accepts::Any) => relay.recipients = None,
            Ok(Accepts::Only(list)) => {
                if list.is_empty() && accepts_today(own, name) {
                    return Err(format!(
                        "not planned: {primary} accepts no address of {name} as read, and this \
                         backup accepts some today: refusing to shrink to nothing; {ALTERNATIVES}"
                    ));
                }
                relay.recipients = Some(list.clone());
            }
        }
    }
    Ok(d)
}

/// `recipients` in the inventory: a word (`"primary"`, `"any"`) or a list
/// of addresses (each with its position, for errors).
#[derive(Debug)]
pub enum RawRecipients {
    Word(String),
    List(Vec<toml::Spanned<String>>),
}

impl<'de> serde::Deserialize<'de> for RawRecipients {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawRecipients;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"primary\", \"any\" or a list of addresses")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawRecipients, E> {
                Ok(RawRecipients::Word(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawRecipients, A::Error> {
                let mut list = Vec::new();
                while let Some(r) = seq.next_element::<toml::Spanned<String>>()? {
                    list.push(r);
                }
                Ok(RawRecipients::List(list))
            }
        }
        de.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory;
    use std::path::Path;

    const INV: &str = r#"
[hosts.home]
ssh = "home"
mx = "home.example.net"
[hosts.relay]
ssh = "relay"
mx = "relay.example.org"
[domains."example.net"]
primary = "home"
backups = ["relay"]
recipients = "primary"
"#;

    #[test]
    fn the_inventory_takes_primary_any_or_a_list() {
        let inv = inventory::parse(Path::new("t.toml"), INV).unwrap();
        let d = &inv.domains[0];
        assert!(d.recipients_from_primary);
        assert_eq!(d.recipients, None);
        let home = inv
            .hosts
            .iter()
            .find(|h| h.name.as_str() == "home")
            .unwrap();
        assert_eq!(home.reads_recipients, std::slice::from_ref(&d.name));
        let relay = inv
            .hosts
            .iter()
            .find(|h| h.name.as_str() == "relay")
            .unwrap();
        assert!(relay.reads_recipients.is_empty());
        // Read from the primary: no backscatter warning.
        assert!(inv.warnings().is_empty(), "{:?}", inv.warnings());

        let any =
            inventory::parse(Path::new("t.toml"), &INV.replace("\"primary\"", "\"any\"")).unwrap();
        assert!(!any.domains[0].recipients_from_primary);
        assert_eq!(any.domains[0].recipients, None);
        assert!(any.warnings()[0].contains("backscatter"));
        assert!(any.hosts.iter().all(|h| h.reads_recipients.is_empty()));

        let list = inventory::parse(
            Path::new("t.toml"),
            &INV.replace("\"primary\"", "[\"a@example.net\"]"),
        )
        .unwrap();
        assert_eq!(list.domains[0].recipients.as_ref().unwrap().len(), 1);
        assert!(!list.domains[0].recipients_from_primary);
    }

    #[test]
    fn the_inventory_refuses_other_words_and_bad_list_items_in_place() {
        let e = inventory::parse(Path::new("t.toml"), &INV.replace("\"primary\"", "\"all\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.toml:11:")
                && e.contains("recipients = \"all\": expected \"primary\", \"any\""),
            "{e}"
        );
        let e = inventory::parse(
            Path::new("t.toml"),
            &INV.replace("\"primary\"", "[\"a@example.net\", \"b@other.net\"]"),
        )
        .unwrap_err()
        .to_string();
        // The position of the bad item itself.
        assert!(e.contains("t.toml:11:32"), "{e}");
        let e = inventory::parse(Path::new("t.toml"), &INV.replace("\"primary\"", "3"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"primary\", \"any\" or a list of addresses"),
            "{e}"
        );
    }

    fn dom() -> DnsName {
        DnsName::parse("example.net").unwrap()
    }

    #[test]
    fn collects_addresses_catch_alls_and_local_parts() {
        let mut c = Collected::default();
        collect(
            &dom(),
            [
                "B@Example.NET",
                "a@example.net",
                "x@other.net",
                "example.net",
                "",
            ],
            false,
            "t",
            &mut c,
        )
        .unwrap();
        collect(&dom(), ["root", "a"], true, "t", &mut c).unwrap();
        assert_eq!(
            c.accepts(),
            Accepts::Only(
                ["a@example.net", "b@example.net", "root@example.net"]
                    .iter()
                    .map(|a| Recipient::parse(a, &dom()).unwrap())
                    .collect()
            )
        );
        let mut c = Collected::default();
        collect(
            &dom(),
            ["a@example.net", "@example.net"],
            false,
            "t",
            &mut c,
        )
        .unwrap();
        assert_eq!(c.accepts(), Accepts::Any);
        // A catch-all of another domain is not one of this domain.
        let mut c = Collected::default();
        collect(&dom(), ["@other.net"], false, "t", &mut c).unwrap();
        assert_eq!(c.accepts(), Accepts::Only(vec![]));
    }

    #[test]
    fn refuses_a_key_a_table_line_cannot_hold() {
        let mut c = Collected::default();
        let e = collect(&dom(), ["\"a b\"@example.net"], false, "hash:/v", &mut c).unwrap_err();
        assert!(e.starts_with("hash:/v: invalid recipient"), "{e}");
    }

    /// Facts output with `extra` frames inserted before its closing frame.
    fn facts_with(base: &[u8], extra: &[u8]) -> Facts {
        let end = b"@@mxpin end 2\nok\n";
        assert!(base.ends_with(end));
        let mut out = base[..base.len() - end.len()].to_vec();
        out.extend_from_slice(extra);
        out.extend_from_slice(end);
        let s = crate::facts::parse(&out).unwrap();
        Facts::Postfix(crate::mta::postfix::PostfixFacts::from_sections(&s).unwrap())
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
    }

    /// The relay's desired state, and the relay's facts (its
    /// relay_recipients lists first.last@example.net today).
    fn relay() -> (Inventory, HostDesired, Facts) {
        let inv = inventory::parse(Path::new("t.toml"), INV).unwrap();
        let now = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        let keys = inv
            .hosts
            .iter()
            .map(|h| {
                crate::desired::resolve_keys(&inv, h, &Default::default(), now)
                    .map_err(|e| e.message)
            })
            .collect();
        let d = crate::desired::desired(&inv, keys, &BTreeMap::new(), &[])
            .remove(1)
            .unwrap();
        assert_eq!(d.host.name.as_str(), "relay");
        let f = facts_with(&fixture("postfix/facts-debian12-relay-applied.out"), b"");
        (inv, d, f)
    }

    /// home's facts with these recipient sections.
    fn home(rcpt: &[u8]) -> Facts {
        facts_with(&fixture("postfix/facts-debian12-fresh.out"), rcpt)
    }

    use crate::facts::frames;

    const PARAMS: &str =
        "mydestination = home.example.net\nvirtual_mailbox_domains = example.net\n\
                          virtual_alias_maps =\nvirtual_mailbox_maps = hash:/etc/postfix/vmailbox";

    fn home_with(vmailbox: &str) -> Facts {
        home(&frames(&[
            ("rcpt-domains", "example.net"),
            ("rcpt-params", PARAMS),
            ("rcpt-map:hash:/etc/postfix/vmailbox", vmailbox),
        ]))
    }

    #[test]
    fn the_backup_gets_what_the_primary_accepts() {
        let (inv, d, relay_facts) = relay();
        assert_eq!(d.relays[0].recipients, None, "not read yet");
        let home = home(&fixture("recipients/postfix-home.facts"));
        let d = resolve(&inv, d, &relay_facts, |_| Ok(&home)).unwrap();
        let got: Vec<&str> = d.relays[0]
            .recipients
            .iter()
            .flatten()
            .map(|r| r.as_str())
            .collect();
        assert_eq!(got, ["first.last@example.net", "second@example.net"]);

        let (inv, d, relay_facts) = relay();
        let home = home_with("@example.net\tcatchall/\nfirst.last@example.net\tx/");
        let d = resolve(&inv, d, &relay_facts, |_| Ok(&home)).unwrap();
        assert_eq!(
            d.relays[0].recipients, None,
            "a catch-all stays a catch-all"
        );
    }

    #[test]
    fn nobody_read_where_somebody_is_accepted_today_is_refused() {
        let (inv, d, relay_facts) = relay();
        let home = home_with("");
        let e = resolve(&inv, d.clone(), &relay_facts, |_| Ok(&home)).unwrap_err();
        assert!(
            e.starts_with("not planned: home accepts no address of example.net as read, and this \
                           backup accepts some today: refusing to shrink to nothing; list the recipients"),
            "{e}"
        );
        // A backup that accepts nobody of the domain today may stay so.
        let empty = facts_with(&fixture("postfix/facts-debian12-fresh.out"), b"");
        let d = resolve(&inv, d, &empty, |_| Ok(&home)).unwrap();
        assert_eq!(d.relays[0].recipients, Some(vec![]));
    }

    #[test]
    fn an_unreadable_primary_or_table_leaves_the_backup_unplanned() {
        let (inv, d, relay_facts) = relay();
        let e = resolve(
            &inv,
            d.clone(),
            &relay_facts,
            |_| Err("ssh: timeout".into()),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "not planned: it backs up example.net for home, whose facts could not be read"
        );
        let home = home(&frames(&[
            ("rcpt-domains", "example.net"),
            (
                "rcpt-params",
                &PARAMS.replace("hash:/etc/postfix/vmailbox", "ldap:/etc/postfix/l.cf"),
            ),
        ]));
        let e = resolve(&inv, d, &relay_facts, |_| Ok(&home)).unwrap_err();
        assert_eq!(
            e,
            format!(
                "not planned: recipients of example.net on home: virtual_mailbox_maps uses \
                 \"ldap:/etc/postfix/l.cf\", which cannot be listed; {ALTERNATIVES}"
            )
        );
    }
}
