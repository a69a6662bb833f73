//! The checks of `[hosts.NAME]`: names, ports, the MTA and its config
//! directory, and the relayhost (an external, or a managed host: never
//! itself, never in a cycle).

use std::collections::BTreeMap;

use toml::Spanned;

use super::externals::CheckedExternal;
use super::raw::RawInventory;
use super::{
    Context, DnsName, Host, HostName, InventoryError, Mta, Protocol, Relayhost, RemotePath,
    SshDestination, RESERVED_RELAY_PORTS,
};
use crate::text::shown;

impl Context<'_> {
    /// Every host, in the file's order, with its relayhost and fetchmail
    /// polls checked against `externals` (whose protocols the uses fix).
    pub(super) fn check_hosts(
        &self,
        raw: &RawInventory,
        externals: &mut [CheckedExternal],
    ) -> Result<Vec<Host>, InventoryError> {
        let mut hosts = Vec::new();
        // (client, relay, where it was named): checked once every host is.
        let mut managed_relays: Vec<(HostName, HostName, &Spanned<String>)> = Vec::new();
        let mut mx_seen: BTreeMap<DnsName, HostName> = BTreeMap::new();
        for (key, h) in &raw.hosts {
            let name = self.value(key, HostName::parse)?;
            let mx = self.value(&h.mx, DnsName::parse)?;
            if let Some(other) = mx_seen.insert(mx.clone(), name.clone()) {
                return Err(self.at(
                    &h.mx,
                    format!("host {name}: mx {mx} is already the mx of host {other}"),
                ));
            }
            let smtp_port = self.port(&h.smtp_port, &name, "smtp_port", 25)?;
            let mta = match h.mta.as_ref().map(|m| (m, m.get_ref().as_str())) {
                None | Some((_, "postfix")) => Mta::Postfix,
                Some((_, "exim")) => Mta::Exim,
                Some((m, other)) => {
                    return Err(self.at(
                        m,
                        format!(
                            "host {name}: unknown mta {}: expected postfix or exim",
                            shown(other)
                        ),
                    ))
                }
            };
            let config_dir = match &h.config_dir {
                None => RemotePath::parse(mta.default_config_dir()).expect("default is valid"),
                Some(d) => self.value(d, RemotePath::parse)?,
            };
            if mta == Mta::Exim {
                if let Some(r) = &h.relayhost {
                    return Err(self.at(
                        r,
                        format!("host {name}: relayhost is supported on Postfix hosts only"),
                    ));
                }
                if let Some(p) = h.fetchmail.first() {
                    return Err(self.at(
                        &p.server,
                        format!("host {name}: fetchmail is supported on Postfix hosts only"),
                    ));
                }
            }
            let relayhost = match &h.relayhost {
                None => None,
                Some(r) if raw.hosts.keys().any(|k| k.get_ref() == r.get_ref()) => {
                    let target = self.value(r, HostName::parse)?;
                    managed_relays.push((name.clone(), target.clone(), r));
                    Some(Relayhost::Host(target))
                }
                Some(r) => {
                    let e = self.external_ref(externals, r, &format!("host {name}: relayhost"))?;
                    let ext = &mut externals[e];
                    if ext.checked.protocol != Protocol::Smtp {
                        return Err(self.at(
                            r,
                            format!(
                                "host {name}: relayhost {} speaks {}, not smtp",
                                ext.checked.name,
                                ext.checked.protocol.as_str()
                            ),
                        ));
                    }
                    // Fixed now: a later fetchmail use cannot make it pop3.
                    ext.protocol_set = true;
                    Some(Relayhost::External(ext.checked.name.clone()))
                }
            };
            let relay_port = self.port(&h.relay_port, &name, "relay_port", 2525)?;
            if let Some(p) = &h.relay_port {
                self.check_relay_port(&name, relay_port, smtp_port, p.span().start)?;
            }
            let fetchmail = self.check_polls(&name, &h.fetchmail, externals)?;
            hosts.push(Host {
                ssh: self.value(&h.ssh, SshDestination::parse)?,
                name,
                mx,
                smtp_port,
                config_dir,
                sudo: h.sudo,
                mta,
                relayhost,
                relay_port,
                fetchmail,
                release: false,
                reads_recipients: Vec::new(),
            });
        }
        self.check_relays(&hosts, &managed_relays)?;
        Ok(hosts)
    }

    /// The port `key` of host `name`: 1 to 65535, or `default` when unset.
    fn port(
        &self,
        p: &Option<Spanned<i64>>,
        name: &HostName,
        key: &str,
        default: u16,
    ) -> Result<u16, InventoryError> {
        match p {
            None => Ok(default),
            Some(p) => u16::try_from(*p.get_ref())
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| self.at(p, format!("host {name}: {key} must be 1 to 65535"))),
        }
    }

    /// A relay listener may not take a port SMTP itself uses.
    fn check_relay_port(
        &self,
        name: &HostName,
        relay_port: u16,
        smtp_port: u16,
        at: usize,
    ) -> Result<(), InventoryError> {
        if relay_port == smtp_port || RESERVED_RELAY_PORTS.contains(&relay_port) {
            return Err(self.error_at(
                at,
                format!(
                    "host {name}: relay_port {relay_port} is taken by SMTP itself \
                     (25, 465, 587 and smtp_port); set relay_port to another, such as 2525"
                ),
            ));
        }
        Ok(())
    }

    /// Relaying through a managed host: never through itself, never in a
    /// cycle (mail would loop), and only between Postfix hosts (the Exim
    /// side of a client-certificate relay is not built yet).
    fn check_relays(
        &self,
        hosts: &[Host],
        relays: &[(HostName, HostName, &Spanned<String>)],
    ) -> Result<(), InventoryError> {
        let host = |n: &HostName| hosts.iter().find(|h| &h.name == n).expect("checked");
        for (client, relay, at) in relays {
            if client == relay {
                return Err(self.at(
                    at,
                    format!("host {client}: relayhost is the host itself; mail would loop"),
                ));
            }
            let r = host(relay);
            // An explicit relay_port was checked where it stands.
            self.check_relay_port(relay, r.relay_port, r.smtp_port, at.span().start)?;
            if r.mta != Mta::Postfix {
                return Err(self.at(
                    at,
                    format!(
                        "host {client}: relayhost {relay} runs Exim; relaying through a managed \
                         host with pinned client certificates is supported between Postfix hosts only"
                    ),
                ));
            }
            // Follow the chain: each host has at most one relayhost, so a
            // walk longer than the host count has met a cycle.
            let mut path = vec![client.clone()];
            let mut at_host = relay.clone();
            for _ in 0..=hosts.len() {
                path.push(at_host.clone());
                if &at_host == client {
                    let names: Vec<&str> = path.iter().map(HostName::as_str).collect();
                    return Err(self.at(
                        at,
                        format!(
                            "host {client}: relayhost makes a cycle ({}); mail would loop",
                            names.join(" -> ")
                        ),
                    ));
                }
                match host(&at_host).relayhost.as_ref().and_then(Relayhost::host) {
                    Some(next) => at_host = next.clone(),
                    None => break,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::inventory::testing::{err, parse_str, with, GOOD};
    use crate::inventory::*;

    #[test]
    fn unsafe_values_never_pass() {
        let e = err(&GOOD.replace("ssh = \"home\"", "ssh = \"home; rm -rf /\""));
        assert!(
            e.starts_with("mxpin.toml:6:7: invalid ssh destination"),
            "{e}"
        );
        let e = err(&GOOD.replace("sudo = true", "sudo = true\nconfig_dir = \"/etc/$(id)\""));
        assert!(e.contains("invalid path"), "{e}");
        let e = err(&GOOD.replace("mx = \"home.example.net\"", "mx = \"home example\""));
        assert!(e.contains("invalid DNS name"), "{e}");
    }

    #[test]
    fn duplicate_mx() {
        let e = err(&GOOD.replace("mx = \"relay.example.org\"", "mx = \"HOME.example.net\""));
        assert!(e.contains("already the mx of host home"), "{e}");
    }

    #[test]
    fn port_range() {
        let e = err(&GOOD.replace("smtp_port = 26", "smtp_port = 70000"));
        assert!(e.contains("smtp_port must be 1 to 65535"), "{e}");
    }

    #[test]
    fn exim_hosts_default_to_etc_exim4_and_pin_their_primaries_certificates() {
        let inv = parse_str(&GOOD.replace("sudo = true", "sudo = true\nmta = \"exim\"")).unwrap();
        let relay = inv
            .hosts
            .iter()
            .find(|h| h.name.as_str() == "relay")
            .unwrap();
        assert_eq!(relay.mta, Mta::Exim);
        assert_eq!(relay.config_dir.as_str(), "/etc/exim4");
        let home = HostName::parse("home").unwrap();
        assert!(
            crate::trust::certificate_pinned(&inv, &crate::trust::edges(&inv), &home),
            "an Exim backup pins certificates"
        );
        assert!(!crate::trust::certificate_pinned(
            &inv,
            &crate::trust::edges(&inv),
            &relay.name
        ));
        let good = parse_str(GOOD).unwrap();
        assert!(!crate::trust::certificate_pinned(
            &good,
            &crate::trust::edges(&good),
            &home
        ));
        let e = err(&GOOD.replace("sudo = true", "sudo = true\nmta = \"sendmail\""));
        assert!(
            e.contains("host relay: unknown mta \"sendmail\": expected postfix or exim"),
            "{e}"
        );
        let e = err(&with(
            "[hosts.vps]\nssh = \"vps\"\nmx = \"vps.example.org\"\nmta = \"exim\"\nrelayhost = \"isp\"\n\
             [external.isp]\naddress = \"a.b:465\"\ntls = \"implicit\"\n",
        ));
        assert!(
            e.contains("host vps: relayhost is supported on Postfix hosts only"),
            "{e}"
        );
    }

    #[test]
    fn relaying_through_a_managed_host_is_checked_before_anything_is_contacted() {
        let pair = |home: &str, vps: &str| {
            format!(
                "[hosts.home]\nssh = \"h\"\nmx = \"home.example.net\"\n{home}\n\
                 [hosts.vps]\nssh = \"v\"\nmx = \"vps.example.org\"\n{vps}\n"
            )
        };
        let inv = parse_str(&pair("relayhost = \"vps\"", "")).unwrap();
        let home = &inv.hosts[0];
        assert_eq!(
            home.relayhost,
            Some(Relayhost::Host(HostName::parse("vps").unwrap()))
        );
        assert_eq!(inv.hosts[1].relay_port, 2525, "the default");
        assert_eq!(inv.hosts[1].relay_next_hop(), "[vps.example.org]:2525");
        let vps = HostName::parse("vps").unwrap();
        assert_eq!(inv.relay_clients(&vps).count(), 1);

        let cases = [
            (
                pair("relayhost = \"home\"", ""),
                "mxpin.toml:4:13: host home: relayhost is the host itself; mail would loop",
            ),
            (
                pair("relayhost = \"vps\"", "relayhost = \"home\""),
                "mxpin.toml:4:13: host home: relayhost makes a cycle (home -> vps -> home); mail would loop",
            ),
            (
                pair("relayhost = \"vps\"", "mta = \"exim\""),
                "mxpin.toml:4:13: host home: relayhost vps runs Exim; relaying through a managed host \
                 with pinned client certificates is supported between Postfix hosts only",
            ),
            (
                pair("relayhost = \"vps\"", "relay_port = 587"),
                "mxpin.toml:8:14: host vps: relay_port 587 is taken by SMTP itself (25, 465, 587 and \
                 smtp_port); set relay_port to another, such as 2525",
            ),
            (
                pair("relayhost = \"vps\"", "smtp_port = 2525"),
                "mxpin.toml:4:13: host vps: relay_port 2525 is taken by SMTP itself (25, 465, 587 and \
                 smtp_port); set relay_port to another, such as 2525",
            ),
            (
                pair("", "relay_port = 0"),
                "mxpin.toml:8:14: host vps: relay_port must be 1 to 65535",
            ),
            (
                pair("relayhost = \"nowhere\"", ""),
                "mxpin.toml:4:13: host home: relayhost: \"nowhere\" is not an [external.NAME] of this inventory",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(err(&text), want, "{text}");
        }
        // A longer cycle is found too, and a chain is fine.
        let three = format!(
            "{}[hosts.c]\nssh = \"c\"\nmx = \"c.example.org\"\nrelayhost = \"home\"\n",
            pair("relayhost = \"vps\"", "relayhost = \"c\"")
        );
        assert!(
            err(&three).contains("cycle (c -> home -> vps -> c)"),
            "{}",
            err(&three)
        );
        let chain = format!(
            "{}[hosts.c]\nssh = \"c\"\nmx = \"c.example.org\"\n",
            pair("relayhost = \"vps\"", "relayhost = \"c\"")
        );
        assert!(parse_str(&chain).is_ok());
    }
}
