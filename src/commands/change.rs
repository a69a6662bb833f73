//! The commands that change hosts: apply, rotate and release. One run:
//! read every host, plan, confirm, apply in waves, settle (read again,
//! finish a key transition, verify), publish DNS, report.

use std::io::IsTerminal as _;
use std::io::Write as _;

use time::OffsetDateTime;

use super::{dns_plan, gather, load, monitor, pending_plans, plan_exit, summarize, Common};
use crate::dns::ZonePlan;
use crate::engine::{self, FleetPlan, HostState, Rotation};
use crate::external::ExternalState;
use crate::inventory::{HostName, Inventory};
use crate::progress::{Monitor, Phase};
use crate::render::{
    applied_json, error, fleet_json, report_errors, show_applied, show_checks, show_plan,
    show_read_back, Closing,
};
use crate::report;
use crate::templates::Templates;
use crate::verify::{self, Check};
use crate::words::count;

/// How a changing command behaves.
pub struct Change {
    pub yes: bool,
    pub dry_run: bool,
    /// `rotate HOST... [--compromised]`: the hosts named (all when none).
    pub rotate: Option<(Vec<String>, bool)>,
    pub verify: bool,
    /// Give this host back (`mxpin release`).
    pub release: Option<HostName>,
}

impl Change {
    /// `mxpin apply [--yes] [--no-verify]`.
    pub fn apply(yes: bool, no_verify: bool) -> Change {
        Change {
            yes,
            dry_run: false,
            verify: !no_verify,
            rotate: None,
            release: None,
        }
    }

    /// `mxpin rotate HOST... [--yes] [--dry-run] [--compromised] [--no-verify]`.
    pub fn rotate(
        hosts: Vec<String>,
        compromised: bool,
        yes: bool,
        dry_run: bool,
        no_verify: bool,
    ) -> Change {
        Change {
            yes,
            dry_run,
            verify: !no_verify,
            rotate: Some((hosts, compromised)),
            release: None,
        }
    }

    /// `mxpin release HOST [--yes] [--dry-run]`: no verification (the host
    /// leaves the fleet).
    pub fn release(host: &str, yes: bool, dry_run: bool) -> Result<Change, String> {
        Ok(Change {
            yes,
            dry_run,
            verify: false,
            rotate: None,
            release: Some(HostName::parse(host).map_err(|e| format!("release: {e}"))?),
        })
    }

    /// How the plan closes: only apply --yes goes ahead without a question;
    /// dry runs and a confirmation say what would change.
    pub fn closing(&self) -> Closing {
        if self.yes && !self.dry_run {
            Closing::Changing
        } else {
            Closing::WouldChange
        }
    }
}

fn confirm(hosts: usize) -> Result<bool, String> {
    if !std::io::stdin().is_terminal() {
        return Err(
            "apply needs confirmation but standard input is not a terminal: pass --yes".into(),
        );
    }
    eprint!(
        "Apply these changes to {}? Only 'yes' is accepted: ",
        count(hosts, "host", "hosts")
    );
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| format!("reading answer: {e}"))?;
    Ok(answer.trim() == "yes")
}

/// For --json, prints the one document: the plan plus the fields of
/// `results` (an object).
fn finish(
    common: &Common,
    (fleet, zones): (&FleetPlan, &[ZonePlan]),
    code: u8,
    results: serde_json::Value,
) -> Result<u8, String> {
    if common.json {
        let mut doc = serde_json::json!({ "plan": fleet_json(fleet, zones), "applied": [] });
        if let serde_json::Value::Object(fields) = results {
            for (k, v) in fields {
                doc[k] = v;
            }
        }
        let _ = writeln!(anstream::stdout(), "{doc:#}");
    }
    Ok(code)
}

/// `mxpin apply`, `rotate` and `release`.
pub async fn run_change(common: &Common, change: Change) -> Result<u8, String> {
    let (inv, templates) = load(common)?;
    let inv = match &change.release {
        Some(host) => inv.for_release(host)?,
        None => inv,
    };
    let rotation = match &change.rotate {
        Some((hosts, compromised)) => Rotation::select(&inv, hosts, *compromised)?,
        None => Rotation::default(),
    };
    let parallel = common.parallel.into();
    let progress = monitor(common, &inv);
    // A dry run only reads: it shares the hosts with other readers. An
    // apply that verifies reads the checks with the facts (most hosts
    // change nothing); rotate and release change every host they touch.
    let access = if change.dry_run {
        engine::Access::Read
    } else if change.verify && change.rotate.is_none() && change.release.is_none() {
        engine::Access::ChangeAndVerify
    } else {
        engine::Access::Change
    };
    let (states, externals) = gather(&inv, parallel, &*progress, access).await;
    let run = Run {
        common,
        change: &change,
        inv: &inv,
        templates: &templates,
        externals: &externals,
    };
    engine::with_hosts(states, async |states: &mut [HostState]| {
        change_hosts(run, &rotation, states, &*progress).await
    })
    .await
}

/// What a changing run works with, once the hosts are read.
#[derive(Clone, Copy)]
struct Run<'a> {
    common: &'a Common,
    change: &'a Change,
    inv: &'a Inventory,
    templates: &'a Templates,
    externals: &'a [ExternalState],
}

/// Plans, confirms, applies, settles and reports a changing run on the
/// hosts read.
async fn change_hosts(
    run: Run<'_>,
    rotation: &Rotation,
    states: &mut [HostState],
    progress: &dyn Monitor,
) -> Result<u8, String> {
    let Run {
        common,
        change,
        inv,
        templates,
        externals,
    } = run;
    let parallel = common.parallel.into();
    let now = OffsetDateTime::now_utc();
    // DNS pins like a peer: no switch before the world sees the next key.
    let rotation = crate::dns::gate_rotation(inv, states, rotation, now).await;
    // A dry run generates no key; apply generates those it uses, in parallel.
    let usage = if change.dry_run {
        crate::keys::Use::Show
    } else {
        crate::keys::Use::Apply
    };
    let fleet =
        crate::keys::plan_fleet(inv, states, externals, templates, now, &rotation, usage).await;
    engine::report_planned(&fleet.outcomes, progress, Phase::Planned(0));
    progress.finish();
    let (plan_errors, pending) = summarize(&fleet);
    report_errors(&fleet);
    let zones = dns_plan(inv, &fleet).await;
    let (dns_failed, dns_pending) = (
        zones.is_none(),
        zones.as_ref().is_some_and(|z| !z.is_empty()),
    );
    let zones = zones.unwrap_or_default();
    let (plan_errors, pending) = (plan_errors || dns_failed, pending || dns_pending);
    if !common.json {
        // Only apply --yes goes ahead without a question; dry runs and a
        // confirmation say what would change.
        let closing = change.closing();
        show_plan(&fleet, &zones, closing);
    }
    if change.dry_run || !pending {
        // A dry run says what plan says: 2 when changes are pending.
        let code = plan_exit(plan_errors, change.dry_run && pending);
        return finish(common, (&fleet, &zones), code, serde_json::json!({}));
    }
    let hosts = pending_plans(&fleet.outcomes).len();
    // Off the async threads: a signal must be able to end the wait.
    let confirmed = change.yes
        || tokio::task::spawn_blocking(move || confirm(hosts))
            .await
            .map_err(|e| format!("reading answer: {e}"))??;
    if !confirmed {
        return Err("cancelled; nothing changed".into());
    }
    let progress = monitor(common, inv);
    let results = engine::apply_all(inv, states, &fleet.outcomes, parallel, &*progress).await;
    let run = engine::Progress {
        parallel,
        monitor: &*progress,
    };
    let (results, second) = engine::finish_transition(
        inv,
        states,
        externals,
        templates,
        run,
        &fleet.outcomes,
        results,
    )
    .await;
    let intended = second.as_deref().unwrap_or(&fleet.outcomes);
    let (after, checks) = engine::settle(
        inv,
        states,
        externals,
        intended,
        templates,
        engine::Progress {
            parallel,
            monitor: &*progress,
        },
        change.verify,
    )
    .await;
    let mut out = anstream::stdout();
    let dns_failed = match crate::dns::publish(inv, states, &fleet.tlsa).await {
        Ok(lines) => {
            if !common.json {
                for l in &lines {
                    let _ = writeln!(out, "{l}");
                }
            }
            false
        }
        Err(e) => {
            error(format_args!("dns: {e}"));
            true
        }
    };
    show_applied(&results, common.json);
    let failed = plan_errors || dns_failed || report::apply_failed(&results);
    let drift = report::drift(&after);
    if !failed && !drift.is_empty() {
        let names: Vec<&str> = drift.iter().map(HostName::as_str).collect();
        error(format_args!(
            "hosts still differ from the inventory after apply: {}",
            names.join(", ")
        ));
    }
    // What a rotation left behind, read from the hosts.
    let read_back = report::rotation_read_back(inv, states, &fleet);
    let rotated = show_read_back(inv, &read_back, common.json);
    let applied = applied_json(&results, &drift);
    let verified = checks.is_empty() || common.json || show_checks(&checks, true);
    let failed =
        failed || (!common.json && !verified) || (common.json && !checks.iter().all(Check::ok));
    let code = report::exit_code(failed, &drift);
    let mut applied = serde_json::json!({ "applied": applied });
    if !rotated.is_empty() {
        applied["pins_after_rotation"] = rotated.into();
    }
    if !checks.is_empty() {
        applied["checks"] = verify::to_json(&checks)["checks"].take();
    }
    if let (Some(host), 0, false) = (&change.release, code, common.json) {
        let _ = writeln!(
            out,
            "{host} is released: remove [hosts.{host}] from {}, or the next apply takes it again.",
            inv.file.display()
        );
    }
    finish(common, (&fleet, &zones), code, applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_apply_yes_says_it_is_changing() {
        assert!(Change::apply(true, false).closing() == Closing::Changing);
        assert!(Change::apply(false, false).closing() == Closing::WouldChange);
        let dry = Change::rotate(vec![], false, true, true, false);
        assert!(
            dry.closing() == Closing::WouldChange,
            "a dry run changes nothing"
        );
        assert!(Change::release("home", true, false).unwrap().closing() == Closing::Changing);
    }

    #[test]
    fn each_command_sets_its_run() {
        let apply = Change::apply(false, true);
        assert!(!apply.verify && !apply.dry_run && apply.rotate.is_none());
        let rotate = Change::rotate(vec!["home".into()], true, false, false, false);
        assert_eq!(rotate.rotate, Some((vec!["home".to_string()], true)));
        assert!(rotate.verify);
        let release = Change::release("home", false, true).unwrap();
        assert!(
            release.dry_run && !release.verify,
            "a released host is not verified"
        );
        assert_eq!(release.release.unwrap().as_str(), "home");
        let e = Change::release("bad name", false, false).err().unwrap();
        assert!(e.starts_with("release: invalid host name"), "{e}");
    }
}
