//! What mxpin wrote into DNS, kept on the controller: for each owner name,
//! the records it added, when, and how long the world may have cached the
//! RRset from before (`$XDG_STATE_HOME/mxpin/dns.json`, else
//! `~/.local/state/mxpin/dns.json`). Without it (another controller) mxpin
//! still removes only records of keys it knows, and counts the wait from
//! the first time it sees a record.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::TlsaData;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// owner -> record text (`3 1 1 HEX`) -> (added at, unix seconds; wait, seconds)
    owners: BTreeMap<String, BTreeMap<String, (u64, u32)>>,
}

fn path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("mxpin").join("dns.json"))
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The state on disk; empty when there is none or it does not parse.
pub fn load() -> State {
    path()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

impl State {
    pub fn wrote(&self, owner: &str, r: &TlsaData) -> bool {
        self.since(owner, r).is_some()
    }

    pub fn since(&self, owner: &str, r: &TlsaData) -> Option<(u64, u32)> {
        self.owners.get(owner)?.get(&r.text()).copied()
    }

    /// Every owner name mxpin wrote records at.
    pub fn owners(&self) -> impl Iterator<Item = &str> {
        self.owners.keys().map(String::as_str)
    }

    pub fn record(&mut self, owner: &str, r: &TlsaData, at: u64, wait: u32) {
        self.owners
            .entry(owner.to_string())
            .or_default()
            .insert(r.text(), (at, wait));
    }

    pub fn forget(&mut self, owner: &str, r: &TlsaData) {
        if let Some(m) = self.owners.get_mut(owner) {
            m.remove(&r.text());
            if m.is_empty() {
                self.owners.remove(owner);
            }
        }
    }

    /// Writes the state (a new file renamed over the old one).
    pub fn save(&self) -> Result<(), String> {
        let Some(p) = path() else {
            return Err("no HOME or XDG_STATE_HOME: cannot keep the DNS state".into());
        };
        let dir = p.parent().expect("a file in a directory");
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tmp = p.with_extension(format!("json.{}", std::process::id()));
        let text = serde_json::to_vec_pretty(self).expect("state serializes");
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &p).map_err(|e| format!("{}: {e}", p.display()))
    }
}
