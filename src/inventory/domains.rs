//! The checks of `[domains."NAME"]`: a primary and backups of this
//! inventory, and the recipients the backups accept.

use std::collections::BTreeSet;

use toml::Spanned;

use super::raw::RawInventory;
use super::{Context, DnsName, Domain, HostName, InventoryError, Recipient};
use crate::text::shown;

impl Context<'_> {
    /// Every domain, in the file's order.
    pub(super) fn check_domains(&self, raw: &RawInventory) -> Result<Vec<Domain>, InventoryError> {
        let known: BTreeSet<&str> = raw.hosts.keys().map(|k| k.get_ref().as_str()).collect();

        let mut domains = Vec::new();
        for (key, d) in &raw.domains {
            let name = self.value(key, DnsName::parse)?;
            let host_ref = |s: &Spanned<String>, role: &str| {
                if known.contains(s.get_ref().as_str()) {
                    self.value(s, HostName::parse)
                } else {
                    Err(self.at(
                        s,
                        format!(
                            "domain {name}: {role} {} is not a host of this inventory",
                            shown(s.get_ref())
                        ),
                    ))
                }
            };
            let primary = host_ref(&d.primary, "primary")?;
            if d.backups.get_ref().is_empty() {
                return Err(self.at(
                    &d.backups,
                    format!("domain {name}: backups is empty; list at least one backup host"),
                ));
            }
            let mut backups = Vec::new();
            for b in d.backups.get_ref() {
                let b_name = host_ref(b, "backup")?;
                if b_name == primary {
                    return Err(self.at(
                        b,
                        format!("domain {name}: host {b_name} cannot be both primary and backup"),
                    ));
                }
                if backups.contains(&b_name) {
                    return Err(
                        self.at(b, format!("domain {name}: backup {b_name} is listed twice"))
                    );
                }
                backups.push(b_name);
            }
            use crate::recipients::RawRecipients;
            let (list, recipients_from_primary) =
                match d.recipients.as_ref().map(|r| (r, r.get_ref())) {
                    None => (None, false),
                    Some((_, RawRecipients::List(list))) => (Some(list), false),
                    Some((r, RawRecipients::Word(w))) => match w.as_str() {
                        "primary" => (None, true),
                        "any" => (None, false),
                        _ => {
                            return Err(self.at(
                                r,
                                format!(
                                "domain {name}: recipients = {}: expected \"primary\", \"any\" \
                                 or a list of addresses",
                                shown(w)
                            ),
                            ))
                        }
                    },
                };
            let recipients = match list {
                None => None,
                Some(list) => {
                    let mut out: Vec<Recipient> = Vec::new();
                    for r in list {
                        let rcpt = self.value(r, |s| Recipient::parse(s, &name))?;
                        // Postfix tables fold case: two spellings are one key.
                        match out
                            .iter()
                            .find(|x| x.as_str().eq_ignore_ascii_case(rcpt.as_str()))
                        {
                            None => out.push(rcpt),
                            Some(x) if x == &rcpt => {}
                            Some(x) => {
                                return Err(self.at(
                                    r,
                                    format!(
                                        "domain {name}: recipient {rcpt} is listed already as {x} \
                                         (Postfix tables ignore case)"
                                    ),
                                ))
                            }
                        }
                    }
                    Some(out)
                }
            };
            if domains.iter().any(|x: &Domain| x.name == name) {
                return Err(self.at(key, format!("domain {name} is listed twice")));
            }
            domains.push(Domain {
                name,
                primary,
                backups,
                recipients,
                recipients_from_primary,
            });
        }
        Ok(domains)
    }
}

#[cfg(test)]
mod tests {
    use crate::inventory::testing::{err, parse_str, GOOD};

    #[test]
    fn unknown_host_in_domain() {
        let e = err(&GOOD.replace("backups = [\"relay\"]", "backups = [\"relya\"]"));
        assert_eq!(
            e,
            "mxpin.toml:17:12: domain example.net: backup \"relya\" is not a host of this inventory"
        );
    }

    #[test]
    fn primary_and_backup_at_once() {
        let e = err(&GOOD.replace("backups = [\"relay\"]", "backups = [\"relay\", \"home\"]"));
        assert!(e.contains("cannot be both primary and backup"), "{e}");
        assert!(e.starts_with("mxpin.toml:17:21:"), "{e}");
    }

    #[test]
    fn recipient_outside_domain() {
        let e = err(&GOOD.replace("first.last@example.net", "first.last@example.org"));
        assert!(e.contains("is not in domain example.net"), "{e}");
    }

    #[test]
    fn recipients_postfix_would_misread_are_refused() {
        let with = |list: &str| {
            format!(
                "[hosts.home]\nssh = \"h\"\nmx = \"home.example.net\"\n\
                 [hosts.relay]\nssh = \"r\"\nmx = \"relay.example.org\"\n\
                 [domains.\"example.net\"]\nprimary = \"home\"\nbackups = [\"relay\"]\n\
                 recipients = [{list}]\n"
            )
        };
        assert_eq!(
            err(&with("\"#x@example.net\"")),
            "mxpin.toml:10:15: invalid recipient \"#x@example.net\": unsupported local part"
        );
        assert_eq!(
            err(&with("\"Bob@example.net\", \"bob@example.net\"")),
            "mxpin.toml:10:34: domain example.net: recipient bob@example.net is listed already as \
             Bob@example.net (Postfix tables ignore case)"
        );
        let inv = parse_str(&with("\"a@example.net\", \"a@example.net\"")).unwrap();
        assert_eq!(inv.domains[0].recipients.as_ref().unwrap().len(), 1);
    }
}
