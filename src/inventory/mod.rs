//! The inventory: TOML in, a checked model out.
//!
//! Parsing keeps every value's position so that each refusal names file, line
//! and column. Past [`load`] nothing is a raw string: names, paths and
//! addresses are the newtypes of [`names`].

pub mod names;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::tls::{Digest, KeyAlgorithm, PinKind};
pub use names::{DnsName, HostName, Recipient, RemotePath, SshDestination};

/// A refusal of the inventory, rendered `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InventoryError {
    pub file: PathBuf,
    /// 1-based line and column; `None` when the problem is the file itself.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
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
}

impl Host {
    /// The SMTP next-hop peers use for this host, `[mx]:port`. Transport
    /// entries and TLS policy keys are both rendered from this one value,
    /// because Postfix silently skips a policy whose key differs from the
    /// transport's next-hop.
    pub fn next_hop(&self) -> String {
        format!("[{}]:{}", self.mx, self.smtp_port)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Domain {
    pub name: DnsName,
    pub primary: HostName,
    pub backups: Vec<HostName>,
    /// `None`: the backups accept any address of the domain.
    pub recipients: Option<Vec<Recipient>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Inventory {
    pub file: PathBuf,
    pub settings: Settings,
    /// Sorted by name.
    pub hosts: Vec<Host>,
    /// Sorted by name.
    pub domains: Vec<Domain>,
}

impl Inventory {
    pub fn host(&self, name: &HostName) -> &Host {
        self.hosts
            .iter()
            .find(|h| &h.name == name)
            .expect("validated inventory names only existing hosts")
    }

    /// Domains `host` is a backup for.
    pub fn backed_up_by<'a>(&'a self, host: &'a HostName) -> impl Iterator<Item = &'a Domain> {
        self.domains
            .iter()
            .filter(move |d| d.backups.contains(host))
    }

    /// Things that are allowed but that an admin should hear about.
    pub fn warnings(&self) -> Vec<String> {
        self.domains
            .iter()
            .filter(|d| d.recipients.is_none())
            .map(|d| {
                format!(
                    "domain {}: no recipients listed, so its backups accept mail for any address \
                     of the domain and will bounce what the primary rejects (backscatter)",
                    d.name
                )
            })
            .collect()
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    primary: Spanned<String>,
    backups: Spanned<Vec<Spanned<String>>>,
    recipients: Option<Vec<Spanned<String>>>,
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
        let message = e.message().trim().replace('\n', " ");
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
                    format!("unknown {what} {:?}: expected {names}", s.get_ref()),
                )
            }),
        }
    }

    fn check(&self, raw: RawInventory) -> Result<Inventory, InventoryError> {
        let settings = self.check_settings(&raw.settings)?;

        let mut hosts = Vec::new();
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
            let config_dir = match &h.config_dir {
                None => RemotePath::parse("/etc/postfix").expect("default is valid"),
                Some(d) => self.value(d, RemotePath::parse)?,
            };
            hosts.push(Host {
                ssh: self.value(&h.ssh, SshDestination::parse)?,
                name,
                mx,
                smtp_port,
                config_dir,
                sudo: h.sudo,
            });
        }
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
                            "domain {name}: {role} {:?} is not a host of this inventory",
                            s.get_ref()
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
            let recipients = match &d.recipients {
                None => None,
                Some(list) => {
                    let mut out: Vec<Recipient> = Vec::new();
                    for r in list {
                        let rcpt = self.value(r, |s| Recipient::parse(s, &name))?;
                        if !out.contains(&rcpt) {
                            out.push(rcpt);
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
            });
        }
        if hosts.is_empty() {
            return Err(self.error("no hosts: add a [hosts.NAME] table for each mail host".into()));
        }
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        domains.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Inventory {
            file: self.file.to_path_buf(),
            settings,
            hosts,
            domains,
        })
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
}
