//! Rendering for people and for --json: what the commands print on stdout
//! and stderr. Nothing here decides what a run does; [`crate::commands`]
//! does, and hands over what to show.

use std::io::Write as _;

use owo_colors::OwoColorize as _;

use crate::commands::{pending_plans, summarize};
use crate::dns::ZonePlan;
use crate::engine::{self, ApplyStatus, FleetPlan};
use crate::error::Stage;
use crate::inventory::{HostName, Inventory};
use crate::plan::{self, HostOutcome};
use crate::report::ReadBack;
use crate::tls::PinKind;
use crate::trust::Purpose;
use crate::verify::{self, Check, Status};
use crate::words::count;

/// Every error and warning goes out here: one line, control characters
/// escaped, at most `text::ERROR_LINE_MAX` characters.
pub fn error(msg: impl std::fmt::Display) {
    let msg = crate::text::one_line(&msg.to_string(), crate::text::ERROR_LINE_MAX);
    let _ = writeln!(anstream::stderr(), "{}: {msg}", "error".red().bold());
}

/// A warning, on one line as [`error`].
pub fn warning(msg: impl std::fmt::Display) {
    let msg = crate::text::one_line(&msg.to_string(), crate::text::ERROR_LINE_MAX);
    let _ = writeln!(anstream::stderr(), "{}: {msg}", "warning".yellow().bold());
}

/// Errors of a plan, on stderr.
pub fn report_errors(fleet: &FleetPlan) {
    for o in &fleet.outcomes {
        if let HostOutcome::Failed(e) = o {
            error(e);
        }
    }
    for e in &fleet.refused {
        error(e);
    }
}

/// What the closing line of a plan says: what would change (plan, dry
/// runs, apply before its confirmation) or what is being done (--yes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    WouldChange,
    Changing,
}

/// Prints a plan for people: a diff per changed host, the DNS records
/// that change (`[dns]`), the order in which hosts would be changed when it
/// matters, one closing line.
pub fn show_plan(fleet: &FleetPlan, zones: &[ZonePlan], closing: Closing) {
    let mut out = anstream::stdout();
    let pending = pending_plans(&fleet.outcomes);
    for p in &pending {
        let _ = write!(out, "{}", plan::render_host(p, fleet.pin_style));
    }
    for z in zones {
        let _ = write!(out, "{}", z.render(&fleet.placeholders));
    }
    for r in &fleet.rotated {
        let _ = writeln!(
            out,
            "{}: {} to its next key {} (now {}); new next key {}",
            r.host, r.reason, r.new_current, r.old_current, r.new_next
        );
    }
    let waves = engine::waves(&pending);
    if waves.iter().any(|&w| w > 0) {
        let _ = writeln!(out, "Order (a peer pins a new key only once it is served):");
        for w in 0..=waves.iter().copied().max().unwrap_or(0) {
            let hosts: Vec<&str> = pending
                .iter()
                .zip(&waves)
                .filter(|(_, &x)| x == w)
                .map(|(p, _)| p.host.as_str())
                .collect();
            let _ = writeln!(out, "  {}. {}", w + 1, hosts.join(", "));
        }
    }
    let (errors, _) = summarize(fleet);
    let total = fleet.outcomes.len();
    let dns = count(zones.len(), "zone", "zones");
    if pending.is_empty() && zones.is_empty() && !errors {
        let _ = writeln!(
            out,
            "No changes: {} up to date.",
            count(total, "host", "hosts")
        );
    } else if !pending.is_empty() {
        let hosts = format!("{} of {}", pending.len(), count(total, "host", "hosts"));
        let also = if zones.is_empty() {
            String::new()
        } else {
            format!(", and DNS records in {dns}")
        };
        let _ = match closing {
            Closing::WouldChange => writeln!(out, "{hosts} would change{also}."),
            Closing::Changing => writeln!(out, "Applying the changes to {hosts}{also}."),
        };
    } else if !zones.is_empty() {
        let _ = match closing {
            Closing::WouldChange => writeln!(
                out,
                "DNS records would change in {dns}; {} up to date.",
                count(total, "host", "hosts")
            ),
            Closing::Changing => writeln!(out, "Applying the DNS records of {dns}."),
        };
    }
}

/// The plan as --json shows it: hosts, DNS records, rotations, refusals.
pub fn fleet_json(fleet: &FleetPlan, zones: &[ZonePlan]) -> serde_json::Value {
    let mut v = plan::to_json(&fleet.outcomes, fleet.pin_style);
    v["dns"] = zones
        .iter()
        .map(|z| z.to_json(&fleet.placeholders))
        .collect();
    if !zones.is_empty() {
        v["changes_pending"] = true.into();
    }
    v["rotated"] = fleet
        .rotated
        .iter()
        .map(|r| {
            serde_json::json!({"host": r.host, "reason": r.reason, "old_current": r.old_current,
                               "new_current": r.new_current, "new_next": r.new_next})
        })
        .collect();
    v["refused"] = fleet
        .refused
        .iter()
        .map(crate::error::HostError::to_json)
        .collect();
    v
}

/// Prints verification results: every check, or only failures and
/// warnings when `quiet_success`; returns whether all passed.
pub fn show_checks(checks: &[Check], quiet_success: bool) -> bool {
    let mut out = anstream::stdout();
    let mut hosts: Vec<&HostName> = Vec::new();
    for c in checks {
        if !hosts.contains(&&c.host) {
            hosts.push(&c.host);
        }
    }
    for host in &hosts {
        let mine: Vec<_> = checks
            .iter()
            .filter(|c| &c.host == *host && (!quiet_success || c.status != Status::Ok))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{}", host.as_str().bold());
        for c in mine {
            let status = match c.status {
                Status::Fail => "FAIL".red().bold().to_string(),
                Status::Warn => "warn".yellow().to_string(),
                Status::Ok => "ok  ".green().to_string(),
            };
            let route = c
                .route
                .as_deref()
                .map(|r| format!("{r}  "))
                .unwrap_or_default();
            let _ = writeln!(out, "  {status}  {route}{}", c.what);
        }
    }
    let failed: Vec<&str> = verify::fix_on(checks).iter().map(|h| h.as_str()).collect();
    if failed.is_empty() {
        let _ = writeln!(
            out,
            "Verified: {} and the keys of every host.",
            count(verify::routes_seen(checks), "pinned route", "pinned routes")
        );
        true
    } else {
        error(format_args!(
            "verification failed on: {}",
            failed.join(", ")
        ));
        false
    }
}

/// What apply did on each host: a line per changed host; the errors of
/// apply itself (those of planning were reported with the plan).
pub fn show_applied(results: &[(HostName, ApplyStatus)], json: bool) {
    let mut out = anstream::stdout();
    for (host, status) in results {
        match status {
            ApplyStatus::Unchanged => {}
            ApplyStatus::Applied { changes } => {
                if !json {
                    let _ = writeln!(
                        out,
                        "{host}: applied {}",
                        count(*changes, "change", "changes")
                    );
                }
            }
            // Planning errors were reported above.
            ApplyStatus::Failed(e) | ApplyStatus::Skipped(e) if e.stage == Stage::Apply => error(e),
            ApplyStatus::Failed(_) | ApplyStatus::Skipped(_) => {}
        }
    }
}

/// What a rotation left behind, read from the hosts: printed for people
/// (in the inventory's pin kind, as the peers' pins), returned for --json.
pub fn show_read_back(
    inv: &Inventory,
    read_back: &[ReadBack<'_>],
    json: bool,
) -> Vec<serde_json::Value> {
    let mut out = anstream::stdout();
    let mut rotated = Vec::new();
    for ReadBack { rotated: r, peers } in read_back {
        if !json {
            let kind = match inv.settings.pin {
                PinKind::PublicKey => "public key",
                PinKind::Certificate => "certificate",
            };
            let _ = writeln!(
                out,
                "{}: serves {kind} {} (was {}); next {}",
                r.host, r.new_current, r.old_current, r.new_next
            );
            for (peer, purpose, pins) in peers {
                let why = match purpose {
                    Purpose::BackupRoute => String::new(),
                    other => format!(" ({})", other.as_str()),
                };
                let _ = writeln!(out, "  {peer} pins {}{why}: {}", r.host, pins.join("|"));
            }
        }
        rotated.push(serde_json::json!({"host": r.host, "peers": peers.iter()
            .map(|(p, purpose, pins)| serde_json::json!({"peer": p, "purpose": purpose, "pins": pins}))
            .collect::<Vec<_>>()}));
    }
    rotated
}

/// Each host's apply status for --json, and whether it converged.
pub fn applied_json(
    results: &[(HostName, ApplyStatus)],
    drift: &[HostName],
) -> Vec<serde_json::Value> {
    results
        .iter()
        .map(|(h, s)| {
            let (status, detail) = match s {
                ApplyStatus::Unchanged => ("unchanged", None),
                ApplyStatus::Applied { .. } => ("applied", None),
                ApplyStatus::Failed(e) => ("failed", Some(e)),
                ApplyStatus::Skipped(e) => ("skipped", Some(e)),
            };
            serde_json::json!({"host": h, "status": status,
                               "error": detail.map(|e| &e.message),
                               "stage": detail.map(|e| e.stage),
                               "kind": detail.map(|e| e.kind),
                               "converged": !drift.contains(h)})
        })
        .collect()
}
