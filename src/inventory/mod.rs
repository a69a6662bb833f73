//! The inventory: TOML in, a checked model out.
//!
//! Parsing keeps every value's position so that each refusal names file, line
//! and column. Past [`load`] nothing is a raw string: names, paths and
//! addresses are the newtypes of [`names`].
//!
//! [`raw`] is the file as TOML reads it, [`model`] the checked inventory;
//! the checks go section by section: [`settings`], [`externals`] (with the
//! fetchmail polls), [`hosts`], [`domains`], [`policies`]. [`error`] is the
//! one error they give.

mod domains;
pub mod edit;
mod error;
mod externals;
mod hosts;
mod model;
pub mod names;
mod policies;
#[cfg(test)]
mod props;
mod raw;
mod settings;

use std::path::Path;

use toml::Spanned;

pub use error::InventoryError;
pub use model::{
    Domain, External, ExternalTls, Host, Inventory, Mta, Policy, PolicyLevel, Poll, Protocol,
    Relayhost, Settings, RESERVED_RELAY_PORTS,
};
pub use names::{DnsName, FetchmailWord, HostName, Recipient, RemotePath, SshDestination};
use raw::RawInventory;

use crate::text::shown;

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

/// What every check refers to: the file (for errors and relative paths)
/// and its text (for line and column).
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
        let mut hosts = self.check_hosts(&raw, &mut externals)?;
        let mut domains = self.check_domains(&raw)?;
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
}

#[cfg(test)]
/// What the tests of every check share: a good inventory and its parse.
mod testing {
    use super::*;

    pub(super) const GOOD: &str = r#"
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

    pub(super) fn parse_str(text: &str) -> Result<Inventory, InventoryError> {
        parse(Path::new("mxpin.toml"), text)
    }

    pub(super) fn err(text: &str) -> String {
        parse_str(text).unwrap_err().to_string()
    }

    pub(super) const PIN: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

    pub(super) fn with(extra: &str) -> String {
        // Host tables must come before [domains] in GOOD's order, so extra
        // host keys go in a fresh [hosts.X] table.
        format!("{GOOD}\n{extra}")
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{err, parse_str, GOOD};
    use super::*;
    use crate::tls::{KeyAlgorithm, PinKind};

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
