//! The checks of `[external.NAME]` (address, TLS, protocol, pins) and of
//! the fetchmail polls that use them.

use toml::Spanned;

use super::raw::{RawInventory, RawPoll};
use super::{
    Context, DnsName, External, ExternalTls, FetchmailWord, HostName, InventoryError, Poll,
    Protocol, Settings,
};
use crate::text::shown;
use crate::tls::Fingerprint;

/// An external during checking: where it was named, and whether its
/// protocol was given or is still the default.
pub(super) struct CheckedExternal {
    pub(super) span: Spanned<String>,
    pub(super) protocol_set: bool,
    pub(super) checked: External,
}

impl Context<'_> {
    /// The polls of host `name`; the first use of an external without a
    /// protocol fixes it, a later use must agree.
    pub(super) fn check_polls(
        &self,
        name: &HostName,
        polls: &[RawPoll],
        externals: &mut [CheckedExternal],
    ) -> Result<Vec<Poll>, InventoryError> {
        let mut fetchmail = Vec::new();
        for p in polls {
            let what = format!("host {name}: fetchmail");
            let e = self.external_ref(externals, &p.server, &what)?;
            let protocol = match p.protocol.get_ref().as_str() {
                "pop3" => Protocol::Pop3,
                "imap" => Protocol::Imap,
                other => {
                    return Err(self.at(
                        &p.protocol,
                        format!(
                            "{what}: unknown protocol {}: expected pop3 or imap",
                            shown(other)
                        ),
                    ))
                }
            };
            let ext = &mut externals[e];
            if !ext.protocol_set {
                ext.checked.protocol = protocol;
                ext.protocol_set = true;
            } else if ext.checked.protocol != protocol {
                return Err(self.at(
                    &p.protocol,
                    format!(
                        "{what}: server {} is used with {}, not {}",
                        ext.checked.name,
                        ext.checked.protocol.as_str(),
                        protocol.as_str()
                    ),
                ));
            }
            fetchmail.push(Poll {
                server: ext.checked.name.clone(),
                protocol,
                user: self.value(&p.user, FetchmailWord::user)?,
                local: self.value(&p.local, FetchmailWord::local)?,
            });
        }
        Ok(fetchmail)
    }

    /// Index of the external `r` names, or an error naming `what`.
    pub(super) fn external_ref(
        &self,
        externals: &[CheckedExternal],
        r: &Spanned<String>,
        what: &str,
    ) -> Result<usize, InventoryError> {
        externals
            .iter()
            .position(|e| e.checked.name.as_str() == r.get_ref())
            .ok_or_else(|| {
                self.at(
                    r,
                    format!(
                        "{what}: {} is not an [external.NAME] of this inventory",
                        shown(r.get_ref())
                    ),
                )
            })
    }

    pub(super) fn check_externals(
        &self,
        raw: &RawInventory,
        settings: &Settings,
    ) -> Result<Vec<CheckedExternal>, InventoryError> {
        let mut out = Vec::new();
        for (key, e) in &raw.external {
            let name = self.value(key, HostName::parse)?;
            let what = format!("external {name}");
            let (host, port) = self.value(&e.address, |a| {
                let (h, p) = a.rsplit_once(':').ok_or_else(|| {
                    format!("{what}: address {} needs a port, as host:port", shown(a))
                })?;
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("{what}: invalid port {}", shown(p)))?;
                Ok((DnsName::parse(h).map_err(|m| format!("{what}: {m}"))?, port))
            })?;
            let tls = match e.tls.get_ref().as_str() {
                "implicit" => ExternalTls::Implicit,
                "starttls" => ExternalTls::Starttls,
                other => {
                    return Err(self.at(
                        &e.tls,
                        format!(
                            "{what}: unknown tls {}: expected implicit or starttls",
                            shown(other)
                        ),
                    ))
                }
            };
            let protocol = match e.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
                None | Some((_, "smtp")) => Protocol::Smtp,
                Some((_, "imap")) => Protocol::Imap,
                Some((_, "pop3")) => Protocol::Pop3,
                Some((p, other)) => {
                    return Err(self.at(
                        p,
                        format!(
                            "{what}: unknown protocol {}: expected smtp, imap or pop3",
                            shown(other)
                        ),
                    ))
                }
            };
            let mut pins = Vec::new();
            for p in &e.pins {
                let fp = self.value(p, |v| {
                    Fingerprint::parse(v, settings.digest).map_err(|m| format!("{what}: {m}"))
                })?;
                if !pins.contains(&fp) {
                    pins.push(fp);
                }
            }
            out.push(CheckedExternal {
                span: key.clone(),
                protocol_set: e.protocol.is_some(),
                checked: External {
                    name,
                    host,
                    port,
                    tls,
                    protocol,
                    pins,
                },
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::inventory::testing::{err, parse_str, with, PIN};
    use crate::inventory::*;
    use crate::tls::{Digest, Fingerprint};

    #[test]
    fn externals_relayhost_fetchmail_and_policies() {
        let text = with(&format!(
            r#"
[hosts.vps]
ssh = "vps"
mx = "vps.example.org"
relayhost = "isp"

[[hosts.vps.fetchmail]]
server = "gmail-pop"
protocol = "pop3"
user = "me@gmail.com"
local = "first.last"

[external.isp]
address = "Mail.ISP.net:465"
tls = "implicit"
pins = ["{}"]

[external.gmail-pop]
address = "pop.gmail.com:995"
tls = "implicit"

[policies]
"gmail.com" = "secure"
"example.org" = ["{}"]
"#,
            PIN.to_lowercase(),
            PIN.replace(':', "")
        ));
        let inv = parse_str(&text).unwrap();
        let vps = inv.hosts.iter().find(|h| h.name.as_str() == "vps").unwrap();
        let relayhost = vps.relayhost.as_ref().unwrap();
        assert_eq!(
            relayhost,
            &Relayhost::External(HostName::parse("isp").unwrap())
        );
        let isp = inv.external(relayhost.name());
        assert_eq!(isp.next_hop(), "[mail.isp.net]:465");
        assert_eq!(isp.address(), "mail.isp.net:465");
        assert_eq!(isp.tls, ExternalTls::Implicit);
        assert_eq!(isp.protocol, Protocol::Smtp);
        assert_eq!(isp.pins[0].as_str(), PIN);
        assert_eq!(vps.fetchmail[0].user.as_str(), "me@gmail.com");
        let gmail = inv.external(&vps.fetchmail[0].server);
        assert_eq!(gmail.protocol, Protocol::Pop3, "taken from its use");
        assert!(gmail.pins.is_empty());
        assert_eq!(inv.policies.len(), 2);
        assert_eq!(inv.policies[0].domain.as_str(), "example.org");
        assert_eq!(
            inv.policies[0].level,
            PolicyLevel::Pins(vec![Fingerprint::parse(PIN, Digest::Sha256).unwrap()])
        );
        assert_eq!(inv.policies[1].level, PolicyLevel::Level("secure".into()));
        assert!(inv.warnings().iter().all(|w| !w.contains("policy")));
    }

    #[test]
    fn external_mistakes_name_their_place() {
        let e = err(&with(
            "[external.isp]\naddress = \"mail.isp.net\"\ntls = \"implicit\"\n",
        ));
        assert!(
            e.starts_with("mxpin.toml:21:11: external isp: address \"mail.isp.net\" needs a port"),
            "{e}"
        );
        let e = err(&with(
            "[external.isp]\naddress = \"a.b:465\"\ntls = \"wrapped\"\n",
        ));
        assert!(
            e.contains("unknown tls \"wrapped\": expected implicit or starttls"),
            "{e}"
        );
        let e = err(&with(
            "[external.isp]\naddress = \"a.b:465\"\ntls = \"implicit\"\npins = [\"AB:CD\"]\n",
        ));
        assert!(
            e.contains("external isp: invalid sha256 fingerprint \"AB:CD\""),
            "{e}"
        );
        let e = err(&with(
            "[hosts.vps]\nssh = \"vps\"\nmx = \"vps.example.org\"\nrelayhost = \"nope\"\n",
        ));
        assert!(
            e.contains("host vps: relayhost: \"nope\" is not an [external.NAME]"),
            "{e}"
        );
        let e = err(&with(
            "[external.home]\naddress = \"a.b:465\"\ntls = \"implicit\"\n",
        ));
        assert!(e.contains("external home: a host has the same name"), "{e}");
    }

    #[test]
    fn an_external_speaks_one_protocol() {
        let base = "[external.box]\naddress = \"box.example.org:995\"\ntls = \"implicit\"\n";
        let e = err(&with(&format!(
            "[hosts.vps]\nssh = \"vps\"\nmx = \"vps.example.org\"\nrelayhost = \"box\"\n\
             [[hosts.vps.fetchmail]]\nserver = \"box\"\nprotocol = \"pop3\"\nuser = \"u\"\nlocal = \"l\"\n{base}"
        )));
        assert!(e.contains("server box is used with smtp, not pop3"), "{e}");
        let e = err(&with(&format!(
            "[hosts.vps]\nssh = \"vps\"\nmx = \"vps.example.org\"\n\
             [[hosts.vps.fetchmail]]\nserver = \"box\"\nprotocol = \"pop3\"\nuser = \"u\"\nlocal = \"l\"\n\
             [[hosts.vps.fetchmail]]\nserver = \"box\"\nprotocol = \"imap\"\nuser = \"u\"\nlocal = \"l\"\n{base}"
        )));
        assert!(e.contains("server box is used with pop3, not imap"), "{e}");
        let e = err(&with(&format!(
            "[hosts.vps]\nssh = \"vps\"\nmx = \"vps.example.org\"\n\
             [[hosts.vps.fetchmail]]\nserver = \"box\"\nprotocol = \"pop3\"\nuser = \"a\\tb\"\nlocal = \"l\"\n{base}"
        )));
        assert!(
            e.contains("fetchmail user \"a\\tb\" contains the control character '\\t'"),
            "{e}"
        );
    }
}
