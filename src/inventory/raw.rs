//! The inventory file as TOML reads it: every value with its position, so
//! that each refusal names file, line and column. Only [`super`] and its
//! checks see these types.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInventory {
    #[serde(default)]
    pub(super) settings: RawSettings,
    #[serde(default)]
    pub(super) hosts: BTreeMap<Spanned<String>, RawHost>,
    #[serde(default)]
    pub(super) domains: BTreeMap<Spanned<String>, RawDomain>,
    #[serde(default)]
    pub(super) external: BTreeMap<Spanned<String>, RawExternal>,
    #[serde(default)]
    pub(super) policies: BTreeMap<Spanned<String>, Spanned<RawPolicy>>,
    pub(super) dns: Option<Spanned<crate::dns::RawDns>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExternal {
    pub(super) address: Spanned<String>,
    pub(super) tls: Spanned<String>,
    pub(super) protocol: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) pins: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawPolicy {
    Level(String),
    Pins(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPoll {
    pub(super) server: Spanned<String>,
    pub(super) protocol: Spanned<String>,
    pub(super) user: Spanned<String>,
    pub(super) local: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    pub(super) ssh_config: Option<Spanned<String>>,
    pub(super) digest: Option<Spanned<String>>,
    pub(super) pin: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) valid_days: Option<Spanned<i64>>,
    pub(super) renew_days: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    pub(super) ssh: Spanned<String>,
    pub(super) mx: Spanned<String>,
    pub(super) smtp_port: Option<Spanned<i64>>,
    pub(super) config_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) sudo: bool,
    pub(super) mta: Option<Spanned<String>>,
    pub(super) relayhost: Option<Spanned<String>>,
    pub(super) relay_port: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) fetchmail: Vec<RawPoll>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDomain {
    pub(super) primary: Spanned<String>,
    pub(super) backups: Spanned<Vec<Spanned<String>>>,
    pub(super) recipients: Option<Spanned<crate::recipients::RawRecipients>>,
}
