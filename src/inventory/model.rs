//! The checked inventory: what the rest of mxpin reads. Nothing here is a
//! raw string from the file; [`super::parse`] builds these types.

use std::path::PathBuf;

use super::names::{DnsName, FetchmailWord, HostName, Recipient, RemotePath, SshDestination};
use crate::tls::{Digest, Fingerprint, KeyAlgorithm, PinKind};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    pub ssh_config: Option<PathBuf>,
    pub digest: Digest,
    pub pin: PinKind,
    pub key: KeyAlgorithm,
    pub valid_days: u32,
    /// Certificates expiring within this many days are renewed.
    pub renew_days: u32,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Host {
    pub name: HostName,
    pub ssh: SshDestination,
    pub mx: DnsName,
    pub smtp_port: u16,
    pub config_dir: RemotePath,
    pub sudo: bool,
    pub mta: Mta,
    /// Smarthost for all this host's outgoing mail.
    pub relayhost: Option<Relayhost>,
    /// Where this host relays mail for the hosts that name it as their
    /// relayhost (a dedicated listener; default 2525).
    pub relay_port: u16,
    /// Mailboxes this host polls with fetchmail.
    pub fetchmail: Vec<Poll>,
    /// Set by `mxpin release` (never by the inventory file): plan to give
    /// the host back as it was before mxpin.
    #[serde(skip)]
    pub release: bool,
    /// Domains this host is the primary of with `recipients = "primary"`:
    /// its facts read what it accepts for them (see [`crate::recipients`]).
    #[serde(skip)]
    pub reads_recipients: Vec<DnsName>,
}

/// Where a host sends all its outgoing mail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Relayhost {
    /// An `[external.NAME]`, pinned like ssh's known hosts.
    External(HostName),
    /// A host of this inventory: pinned both ways (it pins this host's
    /// client certificate, this host pins its key).
    Host(HostName),
}

impl Relayhost {
    pub fn name(&self) -> &HostName {
        match self {
            Relayhost::External(n) | Relayhost::Host(n) => n,
        }
    }

    /// The external this names, if it is one.
    pub fn external(&self) -> Option<&HostName> {
        match self {
            Relayhost::External(n) => Some(n),
            Relayhost::Host(_) => None,
        }
    }

    /// The managed host this names, if it is one.
    pub fn host(&self) -> Option<&HostName> {
        match self {
            Relayhost::Host(n) => Some(n),
            Relayhost::External(_) => None,
        }
    }
}

/// Ports a relay listener may not take: the admin's own SMTP services.
pub const RESERVED_RELAY_PORTS: [u16; 3] = [25, 465, 587];

/// The MTA a host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mta {
    Postfix,
    Exim,
}

impl Mta {
    pub(super) fn default_config_dir(self) -> &'static str {
        match self {
            Mta::Postfix => "/etc/postfix",
            Mta::Exim => "/etc/exim4",
        }
    }
}

/// What an external server speaks: SMTP (a smarthost) or a mailbox
/// protocol (polled by fetchmail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Smtp,
    Imap,
    Pop3,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
        }
    }
}

/// How TLS starts with an external server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExternalTls {
    /// TLS from the first byte (465, 993, 995).
    Implicit,
    /// The protocol's STARTTLS (587 or 25, 143, 110).
    Starttls,
}

/// A server mxpin does not manage but pins, like ssh's known hosts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct External {
    pub name: HostName,
    pub host: DnsName,
    pub port: u16,
    pub tls: ExternalTls,
    pub protocol: Protocol,
    /// Fingerprints in the inventory's digest and pin kind; empty until
    /// `mxpin pin NAME`.
    pub pins: Vec<Fingerprint>,
}

impl External {
    /// `host:port`, as the probe connects.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The Postfix next-hop, `[host]:port` (no MX lookup).
    pub fn next_hop(&self) -> String {
        format!("[{}]:{}", self.host, self.port)
    }
}

/// One mailbox a host polls from an external server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Poll {
    pub server: HostName,
    pub protocol: Protocol,
    pub user: FetchmailWord,
    pub local: FetchmailWord,
}

/// A TLS policy for mail to another domain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum PolicyLevel {
    /// A Postfix security level by name.
    Level(String),
    /// `fingerprint` with these pins.
    Pins(Vec<Fingerprint>),
}

impl PolicyLevel {
    /// Postfix levels by strength, weakest first (fingerprint, dane-only,
    /// verify and secure all authenticate the server).
    pub const LEVELS: [&'static str; 7] = [
        "none",
        "may",
        "encrypt",
        "dane",
        "dane-only",
        "verify",
        "secure",
    ];

    pub fn strength(&self) -> usize {
        match self {
            PolicyLevel::Pins(_) => 4,
            PolicyLevel::Level(l) => match l.as_str() {
                "none" => 0,
                "may" => 1,
                "encrypt" => 2,
                "dane" => 3,
                _ => 4,
            },
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Policy {
    pub domain: DnsName,
    pub level: PolicyLevel,
}

impl Host {
    /// The SMTP next-hop peers use for this host, `[mx]:port`. Transport
    /// entries and TLS policy keys are both rendered from this one value,
    /// because Postfix silently skips a policy whose key differs from the
    /// transport's next-hop.
    pub fn next_hop(&self) -> String {
        format!("[{}]:{}", self.mx, self.smtp_port)
    }

    /// The next-hop of this host's relay listener, `[mx]:relay_port`, for
    /// the hosts that relay through it.
    pub fn relay_next_hop(&self) -> String {
        format!("[{}]:{}", self.mx, self.relay_port)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Domain {
    pub name: DnsName,
    pub primary: HostName,
    pub backups: Vec<HostName>,
    /// `None`: the backups accept any address of the domain (unless
    /// `recipients_from_primary`).
    pub recipients: Option<Vec<Recipient>>,
    /// `recipients = "primary"`: the backups accept what the primary
    /// accepts, read from it on every run ([`crate::recipients`]).
    pub recipients_from_primary: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Inventory {
    pub file: PathBuf,
    pub settings: Settings,
    /// Sorted by name.
    pub hosts: Vec<Host>,
    /// Sorted by name.
    pub domains: Vec<Domain>,
    /// Sorted by name.
    pub externals: Vec<External>,
    /// Sorted by domain.
    pub policies: Vec<Policy>,
    /// `[dns]`: DANE TLSA records to publish (see [`crate::dns`]).
    pub dns: Option<crate::dns::DnsConfig>,
}

impl Inventory {
    pub fn host(&self, name: &HostName) -> &Host {
        self.hosts
            .iter()
            .find(|h| &h.name == name)
            .expect("validated inventory names only existing hosts")
    }

    pub fn external(&self, name: &HostName) -> &External {
        self.externals
            .iter()
            .find(|e| &e.name == name)
            .expect("validated inventory names only existing externals")
    }

    /// Hosts that send all their outgoing mail through `host`.
    pub fn relay_clients<'a>(&'a self, host: &'a HostName) -> impl Iterator<Item = &'a Host> {
        self.hosts
            .iter()
            .filter(move |h| h.relayhost.as_ref().and_then(Relayhost::host) == Some(host))
    }

    /// Domains `host` is a backup for.
    pub fn backed_up_by<'a>(&'a self, host: &'a HostName) -> impl Iterator<Item = &'a Domain> {
        self.domains
            .iter()
            .filter(move |d| d.backups.contains(host))
    }

    /// The inventory reduced to `name`, marked for release: no domains, no
    /// policies, no relayhost or fetchmail, so that its plan takes back
    /// everything mxpin wrote there. Refused while a trust edge touches the
    /// host: a peer would lose its route, or the host its pins.
    pub fn for_release(&self, name: &HostName) -> Result<Inventory, String> {
        let edges = crate::trust::edges(self);
        let touching: Vec<String> = edges
            .iter()
            .filter(|e| &e.pinner == name || &e.pinned == name)
            .map(|e| format!("{} pins {} ({})", e.pinner, e.pinned, e.purpose.as_str()))
            .collect();
        if !touching.is_empty() {
            return Err(format!(
                "release {name}: {}; take {name} out of every domain and relayhost first, and apply",
                touching.join(", ")
            ));
        }
        let mut host = self
            .hosts
            .iter()
            .find(|h| &h.name == name)
            .cloned()
            .ok_or_else(|| format!("release {name}: no such host in {}", self.file.display()))?;
        if host.mta != Mta::Postfix {
            return Err(format!(
                "release {name}: release is built for Postfix hosts only; on an Exim host, \
                 take out mxpin's .include lines and {} by hand",
                host.config_dir.join("mxpin")
            ));
        }
        host.release = true;
        host.reads_recipients.clear();
        host.relayhost = None;
        host.fetchmail.clear();
        Ok(Inventory {
            file: self.file.clone(),
            settings: self.settings.clone(),
            hosts: vec![host],
            domains: Vec::new(),
            externals: Vec::new(),
            policies: Vec::new(),
            dns: None,
        })
    }

    /// Things that are allowed but that an admin should hear about.
    pub fn warnings(&self) -> Vec<String> {
        let mut w: Vec<String> = self
            .domains
            .iter()
            .filter(|d| d.recipients.is_none() && !d.recipients_from_primary)
            .map(|d| {
                format!(
                    "domain {}: no recipients listed, so its backups accept mail for any address \
                     of the domain and will bounce what the primary rejects (backscatter)",
                    d.name
                )
            })
            .collect();
        for p in &self.policies {
            if p.level.strength() < 2 {
                w.push(format!(
                    "policy for {}: {:?} lets mail to it go unencrypted (readable on the way)",
                    p.domain,
                    match &p.level {
                        PolicyLevel::Level(l) => l.as_str(),
                        PolicyLevel::Pins(_) => "fingerprint",
                    }
                ));
            }
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use crate::inventory::testing::{parse_str, GOOD};
    use crate::inventory::*;

    #[test]
    fn missing_recipients_warn_about_backscatter() {
        let inv =
            parse_str(&GOOD.replace("recipients = [\"first.last@example.net\"]", "")).unwrap();
        assert!(inv.warnings()[0].contains("backscatter"));
    }

    #[test]
    fn release_is_refused_while_an_edge_touches_the_host_and_on_exim() {
        let inv = parse_str(GOOD).unwrap();
        let home = HostName::parse("home").unwrap();
        let e = inv.for_release(&home).unwrap_err();
        assert!(
            e.starts_with("release home: relay pins home (backup route)"),
            "{e}"
        );
        let alone = parse_str(
            "[hosts.home]\nssh = \"h\"\nmx = \"home.example.net\"\nrelayhost = \"isp\"\n\
             [hosts.mx2]\nssh = \"m\"\nmx = \"mx2.example.net\"\nmta = \"exim\"\n\
             [external.isp]\naddress = \"mail.isp.example:587\"\ntls = \"starttls\"\n",
        )
        .unwrap();
        let released = alone.for_release(&home).unwrap();
        assert_eq!(released.hosts.len(), 1);
        assert!(released.hosts[0].release && released.hosts[0].relayhost.is_none());
        let e = alone
            .for_release(&HostName::parse("mx2").unwrap())
            .unwrap_err();
        assert!(e.contains("Postfix hosts only"), "{e}");
        let e = alone
            .for_release(&HostName::parse("nope").unwrap())
            .unwrap_err();
        assert!(e.contains("no such host"), "{e}");
    }
}
