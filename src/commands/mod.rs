//! What each command does, from the parsed arguments to its exit status:
//! the library half of `mxpin`. main.rs parses the command line, calls one
//! `run` here and maps the status to the process's; [`crate::render`]
//! prints what these decide.
//!
//! [`read`]: plan, verify and tlsa, which change nothing; [`change`]:
//! apply, rotate and release; [`fingerprint`] and [`pin`] read one
//! certificate.

pub mod change;
pub mod fingerprint;
pub mod pin;
pub mod read;

pub use crate::report::{pending_plans, summarize};

use std::io::IsTerminal as _;
use std::path::PathBuf;

use time::OffsetDateTime;

use crate::dns::ZonePlan;
use crate::engine::{self, FleetPlan, HostState, Rotation};
use crate::external::ExternalState;
use crate::inventory::{self, HostName, Inventory};
use crate::progress::{Lines, Live, Monitor, Silent};
use crate::render::{error, warning};
use crate::templates::Templates;

/// Exit status: an error, a failed host or check, drift.
pub const EXIT_ERROR: u8 = crate::report::EXIT_ERROR;
/// Exit status of plan and dry runs: changes are pending.
pub const EXIT_PENDING: u8 = 2;

/// What a command that reads every host runs with: the global options and
/// its own.
pub struct Common {
    pub inventory: PathBuf,
    pub json: bool,
    pub quiet: bool,
    pub parallel: u16,
    pub templates: Option<PathBuf>,
}

/// Reads every host's facts and probes every external server in use, at
/// the same time.
pub async fn gather(
    inv: &Inventory,
    parallel: usize,
    progress: &dyn Monitor,
    access: engine::Access,
) -> (Vec<HostState>, Vec<ExternalState>) {
    tokio::join!(
        engine::gather(inv, parallel, progress, access),
        crate::external::gather(inv, crate::limits::PROBE_TIMEOUT)
    )
}

/// Progress for one phase of a run: live lines on a terminal, plain lines
/// elsewhere, nothing for --json or --quiet.
pub fn monitor(common: &Common, inv: &Inventory) -> Box<dyn Monitor> {
    if common.json || common.quiet {
        Box::new(Silent)
    } else if std::io::stderr().is_terminal() {
        let names: Vec<HostName> = inv.hosts.iter().map(|h| h.name.clone()).collect();
        Box::new(Live::new(&names))
    } else {
        Box::new(Lines)
    }
}

/// The inventory and templates of a run; the inventory's warnings go out
/// once, here.
pub fn load(common: &Common) -> Result<(Inventory, Templates), String> {
    let inv = inventory::load(&common.inventory).map_err(|e| e.to_string())?;
    let templates = Templates::load(common.templates.as_deref()).map_err(|e| e.to_string())?;
    for w in inv.warnings() {
        warning(w);
    }
    Ok((inv, templates))
}

/// The exit status of a plan, or of a run that stops after its plan (a dry
/// run, or nothing to change): an error wins, then pending changes.
pub fn plan_exit(errors: bool, pending: bool) -> u8 {
    if errors {
        EXIT_ERROR
    } else if pending {
        EXIT_PENDING
    } else {
        0
    }
}

/// The fleet's plan as it stands (no rotation asked for), with no key
/// generated: what plan and verify compare the hosts with.
pub async fn plan_as_is(
    inv: &Inventory,
    states: &[HostState],
    externals: &[ExternalState],
    templates: &Templates,
) -> FleetPlan {
    let now = OffsetDateTime::now_utc();
    let rotation = Rotation::default();
    crate::keys::plan_fleet(
        inv,
        states,
        externals,
        templates,
        now,
        &rotation,
        crate::keys::Use::Show,
    )
    .await
}

/// The DNS part of a plan (`[dns]`): the zones whose records change, or
/// `None` when the zones could not be read (reported here, once).
pub async fn dns_plan(inv: &Inventory, fleet: &FleetPlan) -> Option<Vec<ZonePlan>> {
    match crate::dns::plan_fleet(inv, &fleet.tlsa).await {
        Err(e) => {
            error(format_args!("dns: {e}"));
            None
        }
        Ok(plans) => Some(plans.into_iter().filter(|p| !p.is_empty()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_wins_over_pending_changes() {
        assert_eq!(plan_exit(false, false), 0);
        assert_eq!(plan_exit(false, true), EXIT_PENDING);
        assert_eq!(plan_exit(true, true), EXIT_ERROR);
        assert_eq!(plan_exit(true, false), EXIT_ERROR);
    }
}
