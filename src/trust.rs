//! Trust edges: who pins whose key, and why. Every pin mxpin writes is one
//! edge (pinner, pinned, purpose); the peers of a host, the rotation rule,
//! the apply ordering and the verify checks are all read from these edges,
//! so a new kind of pin is one new purpose, not a new special case.

use crate::inventory::{HostName, Inventory, Mta, Relayhost};
use crate::tls::PinKind;

/// The name a pinning peer asks for by SNI, so that a host can serve its
/// pinned key to its peers and keep the admin's own (CA-signed)
/// certificate for everyone else. Reserved (RFC 2606): no real client
/// ever asks for it.
pub const PIN_SERVER_NAME: &str = "mxpin.invalid";

/// Why a host pins another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// A backup MX delivers a domain to its primary: it pins the key the
    /// primary serves on `smtp_port`.
    BackupRoute,
    /// A host sends all its outgoing mail through a managed relayhost: it
    /// pins the key the relay serves on `relay_port`.
    Smarthost,
    /// The relay accepts mail to relay only from clients presenting a
    /// pinned certificate: it pins the key each client presents.
    ClientCertificate,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::BackupRoute => "backup route",
            Purpose::Smarthost => "smarthost",
            Purpose::ClientCertificate => "client certificate",
        }
    }
}

/// Where on the pinner a pin is kept, so that it can be read back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PinSite {
    /// The TLS policy entry for this next-hop (`[mx]:port`).
    Policy(String),
    /// The table of accepted client certificates.
    ClientCerts,
}

/// One pin relation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub pinner: HostName,
    pub pinned: HostName,
    pub purpose: Purpose,
}

impl Edge {
    /// The SNI name the pinner sends to get the pinned key: backup routes
    /// ask for [`PIN_SERVER_NAME`]; the relay listener serves only its
    /// pinned key, whatever the name.
    pub fn server_name(&self) -> Option<&'static str> {
        match self.purpose {
            Purpose::BackupRoute => Some(PIN_SERVER_NAME),
            Purpose::Smarthost | Purpose::ClientCertificate => None,
        }
    }

    /// Where the pinner keeps this pin.
    pub fn site(&self, inv: &Inventory) -> PinSite {
        match self.purpose {
            Purpose::BackupRoute => PinSite::Policy(inv.host(&self.pinned).next_hop()),
            Purpose::Smarthost => PinSite::Policy(inv.host(&self.pinned).relay_next_hop()),
            Purpose::ClientCertificate => PinSite::ClientCerts,
        }
    }

    /// The SMTP server (`host:port`, STARTTLS) where anyone can see the key
    /// the pinned host presents on this edge; `None` for a client key,
    /// which only the pinner sees.
    pub fn probe_address(&self, inv: &Inventory) -> Option<String> {
        let h = inv.host(&self.pinned);
        match self.purpose {
            Purpose::BackupRoute => Some(format!("{}:{}", h.mx, h.smtp_port)),
            Purpose::Smarthost => Some(format!("{}:{}", h.mx, h.relay_port)),
            Purpose::ClientCertificate => None,
        }
    }
}

/// Every edge of the inventory, sorted, each once.
pub fn edges(inv: &Inventory) -> Vec<Edge> {
    let mut out = Vec::new();
    for d in &inv.domains {
        for b in &d.backups {
            out.push(Edge {
                pinner: b.clone(),
                pinned: d.primary.clone(),
                purpose: Purpose::BackupRoute,
            });
        }
    }
    for h in &inv.hosts {
        if let Some(Relayhost::Host(relay)) = &h.relayhost {
            out.push(Edge {
                pinner: h.name.clone(),
                pinned: relay.clone(),
                purpose: Purpose::Smarthost,
            });
            out.push(Edge {
                pinner: relay.clone(),
                pinned: h.name.clone(),
                purpose: Purpose::ClientCertificate,
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// DANE (RFC 7672): the zone pins a host's key for every sender on the
/// internet, through the TLSA RRset at `_PORT._tcp.MX.`. One edge per host
/// that receives mail on its `smtp_port` (primaries and backups alike: a
/// backup without DANE is a downgrade path), when the inventory has `[dns]`.
/// Like any pinner, it must accept the next key before the host switches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DaneEdge {
    pub pinned: HostName,
    /// The zone that holds the record.
    pub zone: crate::inventory::DnsName,
    /// `_PORT._tcp.MX.`
    pub owner: String,
}

/// Every DANE edge of the inventory, sorted.
pub fn dane_edges(inv: &Inventory) -> Vec<DaneEdge> {
    let Some(dns) = &inv.dns else {
        return Vec::new();
    };
    let mut out: Vec<DaneEdge> = inv
        .hosts
        .iter()
        .filter(|h| {
            inv.domains
                .iter()
                .any(|d| d.primary == h.name || d.backups.contains(&h.name))
        })
        .filter_map(|h| {
            Some(DaneEdge {
                pinned: h.name.clone(),
                zone: dns.zone_of(h.mx.as_str())?.name.clone(),
                owner: format!("_{}._tcp.{}.", h.smtp_port, h.mx.as_str()),
            })
        })
        .collect();
    out.sort();
    out
}

/// The DANE edges on which `host` is pinned.
pub fn dane_pinners_of<'a>(
    edges: &'a [DaneEdge],
    host: &'a HostName,
) -> impl Iterator<Item = &'a DaneEdge> {
    edges.iter().filter(move |e| &e.pinned == host)
}

/// The edges on which `host` is pinned: whom to ask before it may switch
/// to its next key.
pub fn pinners_of<'a>(edges: &'a [Edge], host: &'a HostName) -> impl Iterator<Item = &'a Edge> {
    edges.iter().filter(move |e| &e.pinned == host)
}

/// Whether the peers of `host` pin its certificate rather than its public
/// key: when the inventory says so, or when an Exim host pins it (Exim can
/// only pin certificates). A certificate near expiry is then renewed by
/// rotating to the next key, never re-issued in place.
pub fn certificate_pinned(inv: &Inventory, edges: &[Edge], host: &HostName) -> bool {
    inv.settings.pin == PinKind::Certificate
        || pinners_of(edges, host).any(|e| inv.host(&e.pinner).mta == Mta::Exim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory;
    use std::path::Path;

    fn inv(text: &str) -> Inventory {
        inventory::parse(Path::new("t.toml"), text).unwrap()
    }

    const PAIR: &str = r#"
[hosts.home]
ssh = "home"
mx = "home.example.net"
relayhost = "vps"
[hosts.vps]
ssh = "vps"
mx = "vps.example.org"
relay_port = 2626
[domains."example.net"]
primary = "home"
backups = ["vps"]
[domains."example.com"]
primary = "home"
backups = ["vps"]
"#;

    #[test]
    fn the_pair_pins_both_ways() {
        let inv = inv(PAIR);
        let e = edges(&inv);
        let names: Vec<(String, String, Purpose)> = e
            .iter()
            .map(|e| (e.pinner.to_string(), e.pinned.to_string(), e.purpose))
            .collect();
        assert_eq!(
            names,
            [
                ("home".into(), "vps".into(), Purpose::Smarthost),
                ("vps".into(), "home".into(), Purpose::BackupRoute),
                ("vps".into(), "home".into(), Purpose::ClientCertificate),
            ],
            "two domains, one backup route"
        );
        let home = HostName::parse("home").unwrap();
        let sites: Vec<PinSite> = pinners_of(&e, &home).map(|x| x.site(&inv)).collect();
        assert_eq!(
            sites,
            [
                PinSite::Policy("[home.example.net]:25".into()),
                PinSite::ClientCerts
            ]
        );
        assert_eq!(
            e[0].site(&inv),
            PinSite::Policy("[vps.example.org]:2626".into())
        );
        assert_eq!(
            e[0].probe_address(&inv).as_deref(),
            Some("vps.example.org:2626")
        );
        assert_eq!(e[2].probe_address(&inv), None);
    }

    #[test]
    fn dns_pins_every_host_receiving_mail() {
        assert!(dane_edges(&inv(PAIR)).is_empty(), "no [dns], no DANE edge");
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("tsig.key");
        std::fs::write(&secret, "c2VjcmV0\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "{PAIR}\n[dns]\nserver = \"127.0.0.53:53\"\nzones = [{{ name = \"example.net\" }}, \
             {{ name = \"example.org\", server = \"127.0.0.99\" }}]\ntsig_key_name = \"mxpin\"\n\
             tsig_secret_file = \"{}\"\nresolver = \"127.0.0.54:53\"\n",
            secret.display()
        );
        let inv = inv(&text);
        let e = dane_edges(&inv);
        let got: Vec<(&str, &str, &str)> = e
            .iter()
            .map(|e| (e.pinned.as_str(), e.zone.as_str(), e.owner.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("home", "example.net", "_25._tcp.home.example.net."),
                ("vps", "example.org", "_25._tcp.vps.example.org."),
            ]
        );
        let dns = inv.dns.as_ref().unwrap();
        assert_eq!(
            dns.zone_of("vps.example.org").unwrap().server,
            "127.0.0.99:53"
        );
        let home = HostName::parse("home").unwrap();
        assert_eq!(dane_pinners_of(&e, &home).count(), 1);
    }

    #[test]
    fn exim_pinners_make_certificate_pins() {
        let inv = inv(&format!(
            "{}\n[hosts.mx2]\nssh = \"m\"\nmx = \"mx2.example.org\"\nmta = \"exim\"\n\
             [domains.\"example.org\"]\nprimary = \"vps\"\nbackups = [\"mx2\"]\n",
            PAIR.replace(
                "[domains.\"example.com\"]\nprimary = \"home\"\nbackups = [\"vps\"]\n",
                ""
            )
        ));
        let e = edges(&inv);
        let name = |n: &str| HostName::parse(n).unwrap();
        assert!(certificate_pinned(&inv, &e, &name("vps")));
        assert!(!certificate_pinned(&inv, &e, &name("home")));
        assert!(!certificate_pinned(&inv, &e, &name("mx2")));
    }
}
