//! The inventory: TOML in, a checked model out.
//!
//! Parsing keeps every value's position so that each refusal names file, line
//! and column. Past [`load`] nothing is a raw string: names, paths and
//! addresses are the newtypes of [`names`].

pub mod edit;
pub mod names;
#[cfg(test)]
mod props;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::text::{one_line, shown, INVENTORY_ERROR_MAX};
use crate::tls::{Digest, Fingerprint, KeyAlgorithm, PinKind};
pub use names::{DnsName, HostName, Recipient, RemotePath, SshDestination};

/// A refusal of the inventory, rendered `file:line:column: message` on one
/// line of at most [`INVENTORY_ERROR_MAX`] characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InventoryError {
    pub file: PathBuf,
    /// 1-based line and column; `None` when the problem is the file itself.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, at most INVENTORY_ERROR_MAX characters, whatever the
        // file or the values in the message hold.
        let line = match self.position {
            Some((line, col)) => format!("{}:{line}:{col}: {}", self.file.display(), self.message),
            None => format!("{}: {}", self.file.display(), self.message),
        };
        f.write_str(&one_line(&line, INVENTORY_ERROR_MAX))
    }
}

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
    fn default_config_dir(self) -> &'static str {
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
    pub user: String,
    pub local: String,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    settings: RawSettings,
    #[serde(default)]
    hosts: BTreeMap<Spanned<String>, RawHost>,
    #[serde(default)]
    domains: BTreeMap<Spanned<String>, RawDomain>,
    #[serde(default)]
    external: BTreeMap<Spanned<String>, RawExternal>,
    #[serde(default)]
    policies: BTreeMap<Spanned<String>, Spanned<RawPolicy>>,
    dns: Option<Spanned<crate::dns::RawDns>>,
}

/// An external during checking: where it was named, and whether its
/// protocol was given or is still the default.
struct CheckedExternal {
    span: Spanned<String>,
    protocol_set: bool,
    checked: External,
}

/// A user name or local recipient for a fetchmailrc: printable, no space,
/// quote or backslash, so it reads the same wherever it is written.
fn fetchmail_word(what: &str, v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 255
        && v.chars()
            .all(|c| c.is_ascii_graphic() && !"\"'\\`$".contains(c));
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!(
            "invalid fetchmail {what} {}: printable ASCII without spaces, quotes, backslash, ` or $",
            shown(v)
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExternal {
    address: Spanned<String>,
    tls: Spanned<String>,
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    pins: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPolicy {
    Level(String),
    Pins(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoll {
    server: Spanned<String>,
    protocol: Spanned<String>,
    user: Spanned<String>,
    local: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    ssh_config: Option<Spanned<String>>,
    digest: Option<Spanned<String>>,
    pin: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    valid_days: Option<Spanned<i64>>,
    renew_days: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    ssh: Spanned<String>,
    mx: Spanned<String>,
    smtp_port: Option<Spanned<i64>>,
    config_dir: Option<Spanned<String>>,
    #[serde(default)]
    sudo: bool,
    mta: Option<Spanned<String>>,
    relayhost: Option<Spanned<String>>,
    relay_port: Option<Spanned<i64>>,
    #[serde(default)]
    fetchmail: Vec<RawPoll>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    primary: Spanned<String>,
    backups: Spanned<Vec<Spanned<String>>>,
    recipients: Option<Spanned<crate::recipients::RawRecipients>>,
}

/// Reads and checks an inventory file.
pub fn load(file: &Path) -> Result<Inventory, InventoryError> {
    let text = std::fs::read_to_string(file).map_err(|e| InventoryError {
        file: file.to_path_buf(),
        position: None,
        message: format!("cannot read inventory: {e}"),
    })?;
    parse(file, &text)
}

/// Checks an inventory given as text; `file` locates errors and relative paths.
pub fn parse(file: &Path, text: &str) -> Result<Inventory, InventoryError> {
    let cx = Context { file, text };
    let raw: RawInventory = toml::from_str(text).map_err(|e| {
        let mut message = e.message().trim().replace('\n', " ");
        if message.contains("untagged enum RawPolicy") {
            message =
                "a policy is a level name (\"secure\", \"encrypt\", ...) or a list of fingerprints"
                    .into();
        }
        match e.span() {
            Some(span) => cx.error_at(span.start, message),
            None => cx.error(message),
        }
    })?;
    cx.check(raw)
}

struct Context<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Context<'_> {
    fn error(&self, message: String) -> InventoryError {
        InventoryError {
            file: self.file.to_path_buf(),
            position: None,
            message,
        }
    }

    fn error_at(&self, offset: usize, message: String) -> InventoryError {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        InventoryError {
            file: self.file.to_path_buf(),
            position: Some((line, col)),
            message,
        }
    }

    fn at<T>(&self, s: &Spanned<T>, message: String) -> InventoryError {
        self.error_at(s.span().start, message)
    }

    fn value<T>(
        &self,
        s: &Spanned<String>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, InventoryError> {
        parse(s.get_ref()).map_err(|m| self.at(s, m))
    }

    fn choice<T: std::str::FromStr>(
        &self,
        s: &Option<Spanned<String>>,
        what: &str,
        names: &str,
        default: T,
    ) -> Result<T, InventoryError> {
        match s {
            None => Ok(default),
            Some(s) => s.get_ref().parse().map_err(|_| {
                self.at(
                    s,
                    format!("unknown {what} {}: expected {names}", shown(s.get_ref())),
                )
            }),
        }
    }

    fn check(&self, raw: RawInventory) -> Result<Inventory, InventoryError> {
        let settings = self.check_settings(&raw.settings)?;
        let mut externals = self.check_externals(&raw, &settings)?;

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
            let smtp_port = match &h.smtp_port {
                None => 25,
                Some(p) => u16::try_from(*p.get_ref())
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        self.at(p, format!("host {name}: smtp_port must be 1 to 65535"))
                    })?,
            };
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
                    let e = self.external_ref(&externals, r, &format!("host {name}: relayhost"))?;
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
            let relay_port = match &h.relay_port {
                None => 2525,
                Some(p) => u16::try_from(*p.get_ref())
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        self.at(p, format!("host {name}: relay_port must be 1 to 65535"))
                    })?,
            };
            if let Some(p) = &h.relay_port {
                self.check_relay_port(&name, relay_port, smtp_port, p.span().start)?;
            }
            let mut fetchmail = Vec::new();
            for p in &h.fetchmail {
                let what = format!("host {name}: fetchmail");
                let e = self.external_ref(&externals, &p.server, &what)?;
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
                    user: self.value(&p.user, |v| fetchmail_word("user", v))?,
                    local: self.value(&p.local, |v| fetchmail_word("local", v))?,
                });
            }
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
        if hosts.is_empty() {
            return Err(self.error("no hosts: add a [hosts.NAME] table for each mail host".into()));
        }
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        domains.sort_by(|a, b| a.name.cmp(&b.name));
        for d in domains.iter().filter(|d| d.recipients_from_primary) {
            if let Some(h) = hosts.iter_mut().find(|h| h.name == d.primary) {
                h.reads_recipients.push(d.name.clone());
            }
        }
        for e in &externals {
            if raw
                .hosts
                .keys()
                .any(|k| k.get_ref() == e.checked.name.as_str())
            {
                return Err(self.at(
                    &e.span,
                    format!("external {}: a host has the same name", e.checked.name),
                ));
            }
        }
        let policies = self.check_policies(&raw, &settings, &domains)?;
        let dns = match &raw.dns {
            None => None,
            Some(d) => Some(crate::dns::check(
                d,
                &|offset, message| self.error_at(offset, message),
                self.file.parent().unwrap_or(Path::new(".")),
                &hosts,
                &domains,
            )?),
        };
        Ok(Inventory {
            file: self.file.to_path_buf(),
            settings,
            hosts,
            domains,
            externals: externals.into_iter().map(|e| e.checked).collect(),
            policies,
            dns,
        })
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

    /// Index of the external `r` names, or an error naming `what`.
    fn external_ref(
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

    fn check_externals(
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

    fn check_policies(
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

    fn check_settings(&self, s: &RawSettings) -> Result<Settings, InventoryError> {
        let ssh_config = match &s.ssh_config {
            None => None,
            Some(p) => {
                let base = self.file.parent().unwrap_or(Path::new("."));
                let path = base.join(p.get_ref());
                if !path.is_file() {
                    return Err(self.at(p, format!("ssh_config {}: no such file", path.display())));
                }
                Some(path)
            }
        };
        let valid_days = match &s.valid_days {
            None => 825,
            Some(v) => u32::try_from(*v.get_ref())
                .ok()
                .filter(|d| (1..=36_500).contains(d))
                .ok_or_else(|| self.at(v, "valid_days must be 1 to 36500".to_string()))?,
        };
        let renew_days = match &s.renew_days {
            None => 30.min(valid_days / 2),
            Some(v) => u32::try_from(*v.get_ref())
                .ok()
                .filter(|d| *d < valid_days)
                .ok_or_else(|| {
                    self.at(
                        v,
                        format!(
                            "renew_days must be 0 to {} (less than valid_days)",
                            valid_days - 1
                        ),
                    )
                })?,
        };
        Ok(Settings {
            ssh_config,
            renew_days,
            digest: self.choice(&s.digest, "digest", Digest::NAMES, Digest::Sha256)?,
            pin: self.choice(&s.pin, "pin", PinKind::NAMES, PinKind::PublicKey)?,
            key: self.choice(
                &s.key,
                "key type",
                KeyAlgorithm::NAMES,
                KeyAlgorithm::EcdsaP256,
            )?,
            valid_days,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[settings]
digest = "sha256"

[hosts.home]
ssh = "home"
mx = "home.example.net"

[hosts.relay]
ssh = "admin@relay.example.org"
mx = "relay.example.org"
smtp_port = 26
sudo = true

[domains."example.net"]
primary = "home"
backups = ["relay"]
recipients = ["first.last@example.net"]
"#;

    fn parse_str(text: &str) -> Result<Inventory, InventoryError> {
        parse(Path::new("mxpin.toml"), text)
    }

    fn err(text: &str) -> String {
        parse_str(text).unwrap_err().to_string()
    }

    #[test]
    fn good_inventory_has_defaults() {
        let inv = parse_str(GOOD).unwrap();
        assert_eq!(inv.hosts.len(), 2);
        let home = &inv.hosts[0];
        assert_eq!(home.name.as_str(), "home");
        assert_eq!(home.config_dir.as_str(), "/etc/postfix");
        assert_eq!(home.next_hop(), "[home.example.net]:25");
        assert_eq!(inv.hosts[1].next_hop(), "[relay.example.org]:26");
        assert!(inv.hosts[1].sudo);
        assert_eq!(inv.settings.key, KeyAlgorithm::EcdsaP256);
        assert_eq!(inv.settings.pin, PinKind::PublicKey);
        assert_eq!(inv.settings.valid_days, 825);
        assert_eq!(inv.settings.renew_days, 30);
        assert!(inv.warnings().is_empty());
        let relay = HostName::parse("relay").unwrap();
        assert_eq!(inv.backed_up_by(&relay).count(), 1);
    }

    #[test]
    fn missing_recipients_warn_about_backscatter() {
        let inv =
            parse_str(&GOOD.replace("recipients = [\"first.last@example.net\"]", "")).unwrap();
        assert!(inv.warnings()[0].contains("backscatter"));
    }

    #[test]
    fn invalid_toml_names_line_and_column() {
        assert!(err("[hosts.home\nssh = 1").starts_with("mxpin.toml:1:"));
    }

    #[test]
    fn unknown_key_is_refused_with_position() {
        let e = err(&GOOD.replace("sudo = true", "sudo = true\nshh = \"x\""));
        assert!(e.starts_with("mxpin.toml:14:1: "), "{e}");
        assert!(e.contains("shh"), "{e}");
    }

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
    fn duplicate_mx() {
        let e = err(&GOOD.replace("mx = \"relay.example.org\"", "mx = \"HOME.example.net\""));
        assert!(e.contains("already the mx of host home"), "{e}");
    }

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
    fn unknown_key_type_and_digest() {
        let e = err(&GOOD.replace("digest = \"sha256\"", "key = \"dsa\""));
        assert_eq!(
            e,
            "mxpin.toml:3:7: unknown key type \"dsa\": expected ecdsa-p256, rsa-2048, rsa-3072 or rsa-4096"
        );
        let e = err(&GOOD.replace("digest = \"sha256\"", "digest = \"crc32\""));
        assert!(e.contains("unknown digest"), "{e}");
    }

    #[test]
    fn renew_days_must_be_shorter_than_validity() {
        let e = err(&GOOD.replace("digest = \"sha256\"", "valid_days = 30\nrenew_days = 30"));
        assert_eq!(
            e,
            "mxpin.toml:4:14: renew_days must be 0 to 29 (less than valid_days)"
        );
        let inv = parse_str(&GOOD.replace("digest = \"sha256\"", "valid_days = 10")).unwrap();
        assert_eq!(
            inv.settings.renew_days, 5,
            "default never reaches valid_days"
        );
    }

    #[test]
    fn port_range() {
        let e = err(&GOOD.replace("smtp_port = 26", "smtp_port = 70000"));
        assert!(e.contains("smtp_port must be 1 to 65535"), "{e}");
    }

    #[test]
    fn recipient_outside_domain() {
        let e = err(&GOOD.replace("first.last@example.net", "first.last@example.org"));
        assert!(e.contains("is not in domain example.net"), "{e}");
    }

    #[test]
    fn missing_ssh_config_file() {
        let e = err(&GOOD.replace("digest = \"sha256\"", "ssh_config = \"nope-ssh-config\""));
        assert!(e.contains("nope-ssh-config: no such file"), "{e}");
    }

    #[test]
    fn empty_inventory_is_refused() {
        assert_eq!(
            err(""),
            "mxpin.toml: no hosts: add a [hosts.NAME] table for each mail host"
        );
    }

    #[test]
    fn missing_file_names_it() {
        let e = load(Path::new("/nonexistent/mxpin.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/mxpin.toml: cannot read inventory"),
            "{e}"
        );
    }

    const PIN: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

    fn with(extra: &str) -> String {
        // Host tables must come before [domains] in GOOD's order, so extra
        // host keys go in a fresh [hosts.X] table.
        format!("{GOOD}\n{extra}")
    }

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
        assert_eq!(vps.fetchmail[0].user, "me@gmail.com");
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
             [[hosts.vps.fetchmail]]\nserver = \"box\"\nprotocol = \"pop3\"\nuser = \"a b\"\nlocal = \"l\"\n{base}"
        )));
        assert!(e.contains("invalid fetchmail user \"a b\""), "{e}");
    }

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
