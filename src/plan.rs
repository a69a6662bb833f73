//! Plans: what would change on each host, and how to show it.
//!
//! A plan is data: computing one never touches a host. Rendering masks every
//! private key, in text and in JSON.

mod show;

pub use show::{render_host, to_json, CertSide, CertSummary, PinStyle};

use serde::Serialize;

use crate::inventory::HostName;
use crate::tls::SecretPem;

/// A file's content: private keys are never shown or serialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text(String),
    Secret(SecretPem),
}

impl Content {
    /// The bytes to write, for the apply script only.
    pub fn raw(&self) -> &str {
        match self {
            Content::Text(t) => t,
            Content::Secret(s) => s.expose(),
        }
    }

    pub fn is_secret(&self) -> bool {
        matches!(self, Content::Secret(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Modify,
    /// Same content, wrong mode or owner.
    Chmod,
    Delete,
}

#[derive(Debug, Clone)]
pub struct FileChange {
    pub path: String,
    pub action: Action,
    pub old: Option<Content>,
    pub new: Option<Content>,
    /// Mode the file gets (octal), owner root.
    pub mode: u32,
    /// Group owning the file (owner is always root).
    pub group: u32,
}

impl FileChange {
    pub fn is_secret(&self) -> bool {
        self.old.as_ref().is_some_and(Content::is_secret)
            || self.new.as_ref().is_some_and(Content::is_secret)
    }

    /// Old and new summarised, when every side that exists is a file of
    /// certificates only.
    pub fn certificates(&self, style: PinStyle) -> Option<(Option<CertSide>, Option<CertSide>)> {
        if self.is_secret() {
            return None;
        }
        let summary = |c: &Option<Content>| c.as_ref().map(|c| CertSide::of(c.raw(), style));
        let (old, new) = (summary(&self.old), summary(&self.new));
        match (old, new) {
            (None, None) => None,
            (Some(None), _) | (_, Some(None)) => None,
            (o, n) => Some((o.flatten(), n.flatten())),
        }
    }

    /// Unified diff of old and new, or `None` for private keys.
    pub fn diff(&self) -> Option<String> {
        if self.is_secret() {
            return None;
        }
        let old = self.old.as_ref().map_or("", Content::raw);
        let new = self.new.as_ref().map_or("", Content::raw);
        if old == new {
            return Some(String::new());
        }
        let (a, b) = match self.action {
            Action::Create => ("/dev/null".to_string(), self.path.clone()),
            Action::Delete => (self.path.clone(), "/dev/null".to_string()),
            _ => (self.path.clone(), self.path.clone()),
        };
        Some(
            similar::TextDiff::from_lines(old, new)
                .unified_diff()
                .context_radius(3)
                .header(&a, &b)
                .to_string(),
        )
    }
}

/// Everything that would change on one host.
#[derive(Debug, Clone)]
pub struct HostPlan {
    pub host: HostName,
    pub changes: Vec<FileChange>,
    /// Commands apply would run, for the reader (postmap, reload).
    pub commands: Vec<String>,
    /// Facts worth telling: keys generated, certificates re-issued.
    pub notes: Vec<String>,
    /// The key this host serves changes in this plan.
    pub switches_key: bool,
    /// The plan installs keys it generates: those shown are examples, as
    /// apply generates its own.
    pub generates_keys: bool,
    /// This plan opens the port its backups route to (a primary's new
    /// `smtp_port` listener): they go after it.
    pub opens_listener: bool,
    /// The trust edges this plan pins (this host the pinner), with the
    /// pins it writes.
    pub pinned: Vec<PinnedEdge>,
    /// Some pin is kept only while its key is being replaced in this run:
    /// a second apply drops it (see [`crate::desired::Pinned`]).
    pub transitional: bool,
    /// What the MTA module needs to apply the plan.
    pub steps: crate::mta::Steps,
}

/// A trust edge as a plan pins it: the managed host at the other end, why,
/// where the controller can see the key it presents, and the fingerprints
/// accepted (current first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedEdge {
    pub pinned: HostName,
    pub purpose: crate::trust::Purpose,
    /// The next-hop the pinner connects to (`None` for a client key).
    pub next_hop: Option<String>,
    /// `host:port` where the pinned host serves this key over SMTP.
    pub probe: Option<String>,
    /// The SNI name to ask for there.
    pub server_name: Option<&'static str>,
    pub pins: Vec<String>,
}

impl PinnedEdge {
    /// The edges a host's desired state pins.
    pub fn of(d: &crate::desired::HostDesired, inv: &crate::inventory::Inventory) -> Vec<Self> {
        use crate::trust::PinSite;
        d.pinned
            .iter()
            .map(|p| PinnedEdge {
                pinned: p.edge.pinned.clone(),
                purpose: p.edge.purpose,
                next_hop: match p.edge.site(inv) {
                    PinSite::Policy(hop) => Some(hop),
                    PinSite::ClientCerts => None,
                },
                probe: p.edge.probe_address(inv),
                server_name: p.edge.server_name(),
                pins: p.pins.iter().map(|f| f.to_string()).collect(),
            })
            .collect()
    }
}

/// What an MTA's planner works out for a host; [`HostPlan::new`] adds what
/// every MTA derives the same way from the desired state.
#[derive(Debug, Clone)]
pub struct PlanWork {
    pub changes: Vec<FileChange>,
    pub commands: Vec<String>,
    pub notes: Vec<String>,
    pub switches_key: bool,
    pub opens_listener: bool,
}

impl HostPlan {
    /// Whether apply must wait, after this plan's script, until the
    /// controller sees the new key served, before a pinner re-pins: the key
    /// this host serves changes, and its MTA takes it up by itself, later
    /// ([`crate::mta::Steps::key_served_later`]).
    pub fn awaits_served_key(&self) -> bool {
        self.switches_key && self.steps.key_served_later()
    }

    /// The plan of `d`'s host: `work` and `steps` from its MTA's planner;
    /// the host, the edges it pins, whether its keys are generated here
    /// (never on release) and whether a pin is transitional from `d`.
    pub fn new(
        d: &crate::desired::HostDesired,
        inv: &crate::inventory::Inventory,
        work: PlanWork,
        steps: crate::mta::Steps,
    ) -> Self {
        HostPlan {
            host: d.host.name.clone(),
            changes: work.changes,
            commands: work.commands,
            notes: work.notes,
            switches_key: work.switches_key,
            generates_keys: !d.host.release && d.keys.generates(),
            opens_listener: work.opens_listener,
            pinned: PinnedEdge::of(d, inv),
            transitional: d.transitional,
            steps,
        }
    }

    /// Nothing to write and no other work (a stale table database).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.steps.has_work()
    }

    /// Hosts that pin this one wait for it: it serves a new key, or opens
    /// the port they route to.
    pub fn goes_first(&self) -> bool {
        self.switches_key || self.opens_listener
    }

    /// Hosts whose pins this plan writes.
    pub fn pins_for(&self) -> impl Iterator<Item = &HostName> {
        self.pinned.iter().map(|p| &p.pinned)
    }
}

/// The outcome of planning one host.
#[derive(Debug)]
pub enum HostOutcome {
    Planned(Box<HostPlan>),
    Failed(crate::error::HostError),
}

#[cfg(test)]
mod tests;
