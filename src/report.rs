//! The report of a changing run, decided here and rendered by main: did
//! anything fail, which hosts still differ from the inventory (drift),
//! what the peers pin after a rotation (read back from them), and the
//! exit status.

use crate::engine::{ApplyStatus, FleetPlan, HostState, Rotated};
use crate::inventory::{HostName, Inventory};
use crate::plan::HostOutcome;
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
}
