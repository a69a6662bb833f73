//! Runs the flow across hosts: connect and read facts (in parallel,
//! bounded), plan (pure), apply (the only place with side effects), then
//! read facts again to prove every host converged.
//!
//! - [`connect`]: connections, the run's lock on each host, facts;
//! - [`plan`]: the fleet's plan, rotation and its safety rule;
//! - [`apply`]: ordering, the apply scripts, the second round, read-back.

mod apply;
mod connect;
mod plan;

pub use apply::{apply_all, finish_transition, waves, ApplyStatus};
pub use connect::gather;
pub use plan::{peer_pins, plan_all, plan_all_with, FleetPlan, Rotated, Rotation};

use apply::converged;
use time::OffsetDateTime;

use crate::error::HostError;
use crate::external::ExternalState;
use crate::inventory::{Host, Inventory};
use crate::mta::Facts;
use crate::plan::HostOutcome;
use crate::progress::{Monitor, Phase};
use crate::ssh::{Held, SshHost};
use crate::templates::Templates;

/// A host as seen this run: its open connection (if any), the run's hold
/// on its lock, and its facts.
pub struct HostState {
    pub host: Host,
    pub conn: Option<SshHost>,
    pub lock: Option<Box<Held>>,
    pub facts: Result<Facts, HostError>,
    /// The facts no longer say what is on the host: an apply script ran
    /// there and did not read it back. Read again before planning.
    pub stale: bool,
    /// The controller's probes of the host's SMTP servers that an edge
    /// pins, taken right after the first read while the run held the
    /// host's lock (`verify`, and `apply` unless `--no-verify`): empty
    /// otherwise, and emptied when an apply script runs on the host.
    pub probes: Vec<crate::verify::Probed>,
}

/// What a run does to its hosts, which decides the lock it holds on each:
/// shared for reading (plan, verify, tlsa), exclusive for changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    /// Shared, as `Read`; the first read also runs the checks of the
    /// routes each host's own tables pin ([`crate::mta::hold_checks`]), so
    /// a converged host needs no second read for them.
    Verify,
    Change,
    /// Exclusive, as `Change`; the first read also runs the checks, as
    /// `Verify`. For `apply`, where most hosts usually change nothing: a
    /// host that changes nothing, and routes to none that changes, then
    /// needs no second command for its checks. (Not for rotate, where
    /// every host changes and the checks would run twice.)
    ChangeAndVerify,
}

impl Access {
    /// Whether the run holds its hosts exclusively.
    pub fn exclusive(self) -> bool {
        matches!(self, Access::Change | Access::ChangeAndVerify)
    }

    /// Whether the first read runs the checks of the host's own tables.
    pub fn checks(self) -> bool {
        matches!(self, Access::Verify | Access::ChangeAndVerify)
    }

    /// When each host's ssh master starts: with the first read for runs
    /// that change hosts (their apply scripts, read-backs and re-reads
    /// share it); only when needed for runs that read, which send most
    /// hosts one command (a host that is busy, or that verify reads again,
    /// starts its master then).
    pub fn master(self) -> crate::ssh::Master {
        match self.exclusive() {
            true => crate::ssh::Master::First,
            false => crate::ssh::Master::OnDemand,
        }
    }
}

/// Tells the monitor how planning ended for each host: `settled` for hosts
/// with nothing to change, the change count otherwise.
pub fn report_planned(outcomes: &[HostOutcome], monitor: &dyn Monitor, settled: Phase) {
    for o in outcomes {
        match o {
            HostOutcome::Failed(e) => monitor.event(&e.host, Phase::Failed("see below".into())),
            HostOutcome::Planned(p) if p.is_empty() => monitor.event(&p.host, settled.clone()),
            HostOutcome::Planned(p) => {
                monitor.event(&p.host, Phase::Planned(p.changes.len().max(1)))
            }
        }
    }
}

/// How a run goes through the hosts: how many at once, and who hears of it.
#[derive(Clone, Copy)]
pub struct Progress<'a> {
    pub parallel: usize,
    pub monitor: &'a dyn Monitor,
}

/// The end of every changing run (and of `verify`): read again the hosts
/// whose facts are stale or lack the verification checks they need (an
/// applied host reads itself back in its apply script), plan again to
/// prove convergence, and, when `verify`, check the pinned routes live.
pub async fn settle(
    inv: &Inventory,
    states: &mut [HostState],
    externals: &[ExternalState],
    intended: &[HostOutcome],
    templates: &Templates,
    run: Progress<'_>,
    verify: bool,
) -> (Vec<HostOutcome>, Vec<crate::verify::Check>) {
    let Progress { monitor, .. } = run;
    // The controller's probes run while the hosts are read again; those
    // the first read took of hosts that did not change since are kept.
    let known: Vec<crate::verify::Probed> = states
        .iter_mut()
        .flat_map(|s| std::mem::take(&mut s.probes))
        .collect();
    let (after, probes) = futures::join!(
        converged(inv, states, externals, intended, templates, run, verify),
        async {
            match verify {
                true => Some(crate::verify::probe(inv, known).await),
                false => None,
            }
        }
    );
    monitor.finish();
    let checks = match probes {
        Some(p) => crate::verify::checks(
            inv,
            states,
            externals,
            intended,
            &p,
            OffsetDateTime::now_utc(),
        ),
        None => Vec::new(),
    };
    (after, checks)
}

/// Runs `body` on the hosts of a run, then lets go of every lock and
/// connection, whatever `body` returned: the one owner of the
/// connections, so no early return leaves one open.
pub async fn with_hosts<T>(
    mut states: Vec<HostState>,
    body: impl AsyncFnOnce(&mut [HostState]) -> T,
) -> T {
    let out = body(&mut states).await;
    close(states).await;
    out
}

/// Ends the run on every host: lets go of its lock, then closes the
/// connection, all hosts at once.
pub async fn close(states: Vec<HostState>) {
    futures::future::join_all(states.into_iter().map(|s| async move {
        if let Some(l) = s.lock {
            l.release().await;
        }
        if let Some(c) = s.conn {
            c.close().await;
        }
    }))
    .await;
}
