//! The report of a run, decided here and rendered by [`crate::render`]: did
//! anything fail, which hosts still differ from the inventory (drift),
//! what the peers pin after a rotation (read back from them), and the
//! exit status.

use crate::engine::{ApplyStatus, FleetPlan, HostState, Rotated};
use crate::inventory::{HostName, Inventory};
use crate::plan::{HostOutcome, HostPlan};
use crate::trust::Purpose;

/// The exit status of a run that failed or left drift.
pub const EXIT_ERROR: u8 = 1;

/// Whether some host failed to apply or was skipped.
pub fn apply_failed(results: &[(HostName, ApplyStatus)]) -> bool {
    results
        .iter()
        .any(|(_, s)| matches!(s, ApplyStatus::Failed(_) | ApplyStatus::Skipped(_)))
}

/// The hosts that, read again after apply, still differ from the
/// inventory or could not be planned.
pub fn drift(after: &[HostOutcome]) -> Vec<HostName> {
    after
        .iter()
        .filter_map(|o| match o {
            HostOutcome::Planned(p) if !p.is_empty() => Some(p.host.clone()),
            HostOutcome::Failed(e) => Some(e.host.clone()),
            HostOutcome::Planned(_) => None,
        })
        .collect()
}

/// 0 when nothing failed and every host converged.
pub fn exit_code(failed: bool, drift: &[HostName]) -> u8 {
    if failed || !drift.is_empty() {
        EXIT_ERROR
    } else {
        0
    }
}

/// The hosts with changes to apply.
pub fn pending_plans(outcomes: &[HostOutcome]) -> Vec<&HostPlan> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            HostOutcome::Planned(p) if !p.is_empty() => Some(p.as_ref()),
            _ => None,
        })
        .collect()
}

/// Whether anything failed (a host or a rotation), and whether any host has
/// changes.
pub fn summarize(fleet: &FleetPlan) -> (bool, bool) {
    let errors = !fleet.refused.is_empty()
        || fleet
            .outcomes
            .iter()
            .any(|o| matches!(o, HostOutcome::Failed(_)));
    (errors, !pending_plans(&fleet.outcomes).is_empty())
}

/// A rotated host and what each of its pinners pins for it now.
pub struct ReadBack<'a> {
    pub rotated: &'a Rotated,
    pub peers: Vec<(HostName, Purpose, Vec<String>)>,
}

/// What the rotations of `fleet` left behind, read from the hosts (the
/// facts of the run's last read).
pub fn rotation_read_back<'a>(
    inv: &Inventory,
    states: &[HostState],
    fleet: &'a FleetPlan,
) -> Vec<ReadBack<'a>> {
    fleet
        .rotated
        .iter()
        .map(|r| ReadBack {
            rotated: r,
            peers: crate::engine::peer_pins(inv, states, &r.host),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorKind, HostError, Stage};

    fn name(h: &str) -> HostName {
        HostName::parse(h).unwrap()
    }

    fn plan(host: &str, changed: bool) -> HostOutcome {
        let mut p = crate::plan::HostPlan {
            host: name(host),
            changes: vec![],
            commands: vec![],
            notes: vec![],
            switches_key: false,
            generates_keys: false,
            opens_listener: false,
            pinned: vec![],
            transitional: false,
            steps: crate::mta::Steps::Postfix(Default::default()),
        };
        if changed {
            // A stale table database: work even without a file change.
            p.steps = crate::mta::Steps::Postfix(crate::mta::postfix::ApplySteps {
                postmap: vec!["/etc/postfix/mxpin/transport".into()],
                ..Default::default()
            });
        }
        HostOutcome::Planned(Box::new(p))
    }

    #[test]
    fn drift_is_every_host_not_settled() {
        let failed = HostError::new(&name("c"), Stage::Facts, ErrorKind::Unreachable, "down");
        let after = [
            plan("a", false),
            plan("b", true),
            HostOutcome::Failed(failed),
        ];
        let d = drift(&after);
        assert_eq!(d, [name("b"), name("c")]);
        assert_eq!(exit_code(false, &d), EXIT_ERROR);
        assert_eq!(exit_code(false, &drift(&after[..1])), 0);
        assert_eq!(exit_code(true, &[]), EXIT_ERROR);
    }

    #[test]
    fn a_skipped_host_is_a_failure() {
        let skipped = HostError::new(&name("b"), Stage::Apply, ErrorKind::Skipped, "not applied");
        let mut results = vec![
            (name("a"), ApplyStatus::Applied { changes: 2 }),
            (name("c"), ApplyStatus::Unchanged),
        ];
        assert!(!apply_failed(&results));
        results.push((name("b"), ApplyStatus::Skipped(skipped)));
        assert!(apply_failed(&results));
    }

    #[test]
    fn a_plan_sums_up_as_errors_and_pending_changes() {
        let fleet = |outcomes: Vec<HostOutcome>, refused: Vec<HostError>| FleetPlan {
            outcomes,
            rotated: vec![],
            refused,
            pin_style: crate::plan::PinStyle::SHA256_KEY,
            tlsa: vec![],
            placeholders: vec![],
        };
        let down = HostError::new(&name("c"), Stage::Facts, ErrorKind::Unreachable, "down");
        let fp = fleet(vec![plan("a", false), plan("b", true)], vec![]);
        assert_eq!(summarize(&fp), (false, true));
        let hosts: Vec<&str> = pending_plans(&fp.outcomes)
            .iter()
            .map(|p| p.host.as_str())
            .collect();
        assert_eq!(hosts, ["b"]);
        assert_eq!(
            summarize(&fleet(vec![plan("a", false)], vec![])),
            (false, false)
        );
        let failed = fleet(
            vec![plan("a", false), HostOutcome::Failed(down.clone())],
            vec![],
        );
        assert_eq!(summarize(&failed), (true, false));
        let refused = fleet(vec![plan("b", true)], vec![down]);
        assert_eq!(
            summarize(&refused),
            (true, true),
            "a refused rotation is an error"
        );
    }
}
