//! The checks of `[policies]`: TLS policies for mail to other domains.

use super::raw::{RawInventory, RawPolicy};
use super::{Context, DnsName, Domain, InventoryError, Policy, PolicyLevel, Settings};
use crate::text::shown;
use crate::tls::Fingerprint;

impl Context<'_> {
    pub(super) fn check_policies(
        &self,
        raw: &RawInventory,
        settings: &Settings,
        domains: &[Domain],
    ) -> Result<Vec<Policy>, InventoryError> {
        let mut out: Vec<Policy> = Vec::new();
        for (key, p) in &raw.policies {
            let domain = self.value(key, DnsName::parse)?;
            if domains.iter().any(|d| d.name == domain) {
                return Err(self.at(
                    key,
                    format!(
                        "policy for {domain}: it is a domain of this inventory, whose routes mxpin pins itself"
                    ),
                ));
            }
            let level = match p.get_ref() {
                RawPolicy::Level(l) if PolicyLevel::LEVELS.contains(&l.as_str()) => {
                    PolicyLevel::Level(l.clone())
                }
                RawPolicy::Level(l) => {
                    return Err(self.at(
                        p,
                        format!(
                            "policy for {domain}: unknown level {}: expected one of {} or a list of fingerprints",
                            shown(l),
                            PolicyLevel::LEVELS.join(", ")
                        ),
                    ))
                }
                RawPolicy::Pins(list) if list.is_empty() => {
                    return Err(self.at(
                        p,
                        format!("policy for {domain}: an empty pin list would refuse every server"),
                    ))
                }
                RawPolicy::Pins(list) => {
                    let mut pins = Vec::new();
                    for f in list {
                        // Untagged values lose their spans: point at the list.
                        pins.push(
                            Fingerprint::parse(f, settings.digest)
                                .map_err(|m| self.at(p, format!("policy for {domain}: {m}")))?,
                        );
                    }
                    PolicyLevel::Pins(pins)
                }
            };
            if out.iter().any(|x| x.domain == domain) {
                return Err(self.at(key, format!("policy for {domain} is listed twice")));
            }
            out.push(Policy { domain, level });
        }
        out.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::inventory::testing::{err, parse_str, with};

    #[test]
    fn policies_are_checked() {
        let e = err(&with("[policies]\n\"example.net\" = \"may\"\n"));
        assert!(
            e.contains("policy for example.net: it is a domain of this inventory"),
            "{e}"
        );
        let e = err(&with("[policies]\n\"x.org\" = \"strong\"\n"));
        assert!(e.contains("unknown level \"strong\""), "{e}");
        let e = err(&with("[policies]\n\"x.org\" = []\n"));
        assert!(e.contains("an empty pin list"), "{e}");
        let inv = parse_str(&with("[policies]\n\"x.org\" = \"none\"\n")).unwrap();
        assert!(inv
            .warnings()
            .iter()
            .any(|w| w.contains("policy for x.org")));
    }
}
