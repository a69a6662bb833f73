//! MTA-specific code lives in one module per MTA ([`postfix`], [`exim`]);
//! this module is the dispatch the engine uses, so the engine never names
//! an MTA, and the scaffolding both share.
//!
//! Every MTA module provides the same pieces: a read-only facts script and
//! its parser, a pure planner from desired state and facts, an apply script
//! that ends with the verdict protocol read by [`parse_result`], and the
//! verification checks run with the facts after apply.

pub mod exim;
pub mod postfix;

mod files;
#[cfg(test)]
pub mod garbled;
mod read;
mod script;
#[cfg(test)]
pub mod testing;

pub use files::*;
pub use read::*;
pub use script::*;

use crate::desired::{HostDesired, StoredKeys};
use crate::facts::Sections;
use crate::inventory::{Host, Inventory, Mta, Settings};
use crate::plan::HostPlan;
use crate::templates::Templates;
use crate::trust::PinSite;

/// What was read from one host.
#[derive(Debug, Clone)]
pub enum Facts {
    Postfix(postfix::PostfixFacts),
    Exim(exim::EximFacts),
}

impl Facts {
    /// Whether the host's smtpd serves a certificate of the admin's own to
    /// every client but mxpin's peers (see "The admin's own certificate"):
    /// a DANE sender, asking for the MX name, gets that one, not mxpin's.
    pub fn serves_admin_certificate(&self, host: &crate::inventory::Host) -> bool {
        let owned = host.config_dir.join(OWNED_DIR);
        match self {
            Facts::Postfix(f) => f.admin_cert(&owned).is_some(),
            Facts::Exim(f) => f
                .config
                .as_deref()
                .and_then(|c| exim::conf::edited(c, &owned, &f.rcpt_acl).ok())
                .is_some_and(|e| e.admin_cert.is_some()),
        }
    }

    /// The keys mxpin finds in its slots on the host.
    pub fn stored_keys(&self) -> StoredKeys {
        match self {
            Facts::Postfix(f) => f.stored_keys(),
            Facts::Exim(f) => f.stored_keys(),
        }
    }

    /// The relayhost the host's outgoing mail goes to now (`[host]:port`).
    pub fn relayhost(&self) -> Option<&str> {
        match self {
            Facts::Postfix(f) => f
                .effective
                .get("relayhost")
                .map(String::as_str)
                .filter(|r| !r.is_empty()),
            Facts::Exim(_) => None,
        }
    }

    /// Whether mxpin's relay listener is configured on `port`.
    pub fn relays_on(&self, port: u16) -> bool {
        match self {
            Facts::Postfix(f) => f
                .master_cf
                .as_deref()
                .is_some_and(|m| postfix::mastercf::listener_on(m, port)),
            Facts::Exim(_) => false,
        }
    }

    /// The fingerprints the host pins at `site`, as its MTA would see
    /// them now (a stale or missing table pins nothing), in the
    /// inventory's digest and pin kind.
    pub fn pins_for(&self, site: &PinSite, settings: &Settings) -> Vec<String> {
        match (self, site) {
            (Facts::Postfix(f), _) => f.pins_for(site),
            (Facts::Exim(f), PinSite::Policy(next_hop)) => f.pins_for(next_hop, settings),
            // The inventory refuses an Exim relay for managed clients.
            (Facts::Exim(_), PinSite::ClientCerts) => Vec::new(),
        }
    }
}

/// What the apply script of a plan needs beyond its file changes.
#[derive(Debug, Clone)]
pub enum Steps {
    Postfix(postfix::ApplySteps),
    Exim(exim::ApplySteps),
}

impl Steps {
    /// Work apply must do even when no file changes (a stale database).
    pub fn has_work(&self) -> bool {
        match self {
            Steps::Postfix(s) => !s.postmap.is_empty(),
            Steps::Exim(_) => false,
        }
    }

    #[cfg(test)]
    pub fn postfix(&self) -> &postfix::ApplySteps {
        match self {
            Steps::Postfix(s) => s,
            Steps::Exim(_) => panic!("not a Postfix plan"),
        }
    }

    #[cfg(test)]
    pub fn exim(&self) -> &exim::ApplySteps {
        match self {
            Steps::Exim(s) => s,
            Steps::Postfix(_) => panic!("not an Exim plan"),
        }
    }

    /// Whether the MTA, running, takes up a new served key by itself, some
    /// time after it is in place, rather than on a reload: Exim's daemon
    /// when its configuration does not change (see `exim::plan`).
    pub fn key_served_later(&self) -> bool {
        match self {
            Steps::Postfix(_) => false,
            Steps::Exim(s) => s.running && !s.reload,
        }
    }
}

/// The one read-only remote command that reads a host's facts, with
/// `extra` shell (verification checks) run before the closing frame.
pub fn facts_script(host: &Host, extra: &str) -> String {
    match host.mta {
        Mta::Postfix => postfix::facts_script_with(host, extra),
        Mta::Exim => exim::facts_script(host, extra),
    }
}

/// The facts script of an apply's read-back ([`apply_and_read_script`]):
/// [`facts_script`], but a Postfix host whose main.cf and master.cf the
/// plan leaves as they were is given postconf's answer of the first read
/// (see [`postfix::facts_script_known`]).
pub fn read_back_script(plan: &HostPlan, host: &Host, extra: &str) -> String {
    match &plan.steps {
        Steps::Postfix(steps) => postfix::read_back_script(plan, steps, host, extra),
        Steps::Exim(_) => facts_script(host, extra),
    }
}

/// Parses the output of [`facts_script`].
pub fn parse_facts(host: &Host, sections: &Sections) -> Result<Facts, String> {
    match host.mta {
        Mta::Postfix => postfix::PostfixFacts::from_sections(sections).map(Facts::Postfix),
        Mta::Exim => exim::EximFacts::from_sections(sections).map(Facts::Exim),
    }
}

/// Plans one host: pure, from its desired state and facts.
pub fn plan_host(
    d: &HostDesired,
    facts: &Facts,
    inv: &Inventory,
    t: &Templates,
) -> Result<HostPlan, String> {
    match facts {
        Facts::Postfix(f) => postfix::plan_host(d, f, inv, t),
        Facts::Exim(f) => exim::plan_host(d, f, inv, t),
    }
}

/// The apply script of a plan.
pub fn apply_script(plan: &HostPlan) -> ApplyScript {
    match &plan.steps {
        Steps::Postfix(_) => postfix::script::apply_script(plan),
        Steps::Exim(_) => exim::script::apply_script(plan),
    }
}

/// Shell run with the facts after apply (or by `verify`) that checks on the
/// host the routes `plan` pins; its results come back in the facts.
pub fn verify_snippet(plan: &HostPlan, facts: &Facts, inv: &Inventory) -> String {
    match (&plan.steps, facts) {
        (Steps::Postfix(steps), Facts::Postfix(f)) => {
            let lookup = f
                .effective
                .get("smtp_host_lookup")
                .map_or("dns", String::as_str);
            postfix::verify_snippet(steps, inv.settings.digest.as_str(), lookup)
        }
        (Steps::Exim(steps), Facts::Exim(_)) => exim::verify_snippet(steps),
        (Steps::Postfix(_), Facts::Exim(_)) | (Steps::Exim(_), Facts::Postfix(_)) => {
            unreachable!("a plan is made from facts of the same MTA")
        }
    }
}

/// Shell run with the first read of `verify`: the checks of the routes the
/// host's own tables pin, as [`verify_snippet`] names them, before the
/// plan is known (Postfix; none for Exim, whose checks need the plan).
pub fn hold_checks(host: &Host, digest: &str) -> String {
    match host.mta {
        Mta::Postfix => postfix::hold_checks(digest),
        Mta::Exim => String::new(),
    }
}

/// Whether `facts` hold the results of every check [`verify_snippet`]
/// runs for `plan` (they were read with its checks): then they need no
/// second read for them.
pub fn checks_ran(plan: &HostPlan, facts: &Facts) -> bool {
    match (&plan.steps, facts) {
        (Steps::Postfix(steps), Facts::Postfix(f)) => postfix::checks_ran(steps, f),
        (Steps::Exim(steps), Facts::Exim(f)) => steps
            .route_tests
            .iter()
            .all(|t| f.checks.contains_key(&format!("bt:{}", t.address))),
        (Steps::Postfix(_), Facts::Exim(_)) | (Steps::Exim(_), Facts::Postfix(_)) => false,
    }
}

/// Forgets the results of the checks read with `facts` (they may be out of
/// date: a peer changed after they ran).
pub fn clear_checks(facts: &mut Facts) {
    match facts {
        Facts::Postfix(f) => f.checks.clear(),
        Facts::Exim(f) => f.checks.clear(),
    }
}

/// A check of one route made on the host itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCheck {
    /// Names the check among the host's checks, the same every run.
    pub id: String,
    pub kind: crate::verify::Kind,
    /// The next-hop (or domain) the check is about.
    pub route: String,
    pub ok: bool,
    /// Failed because the peer did not answer: the fix is there.
    pub peer_down: bool,
    pub what: String,
}

/// The results of [`verify_snippet`]'s checks, read from facts.
pub fn route_checks(plan: &HostPlan, facts: &Facts) -> Vec<RouteCheck> {
    match (&plan.steps, facts) {
        (Steps::Postfix(steps), Facts::Postfix(f)) => postfix::route_checks(&plan.host, steps, f),
        (Steps::Exim(steps), Facts::Exim(f)) => exim::route_checks(steps, f),
        (Steps::Postfix(_), Facts::Exim(_)) | (Steps::Exim(_), Facts::Postfix(_)) => {
            unreachable!("a plan is made from facts of the same MTA")
        }
    }
}

/// mxpin's directory inside the MTA's configuration directory: every file
/// it owns, and the apply lock.
pub const OWNED_DIR: &str = "mxpin";

pub use crate::limits::LOCK_WAIT_SECS;
