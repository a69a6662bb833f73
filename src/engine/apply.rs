//! Apply: the order of the hosts, one apply script each, the second round
//! of a transitional run, and the read-back that proves convergence.

use super::connect::{parse_facts, refresh_some};
use super::plan::{plan_all_with, FleetPlan, Rotation};
use super::{report_planned, HostState, Progress};
use time::OffsetDateTime;

use crate::error::{ErrorKind, HostError, Stage};
use crate::external::ExternalState;
use crate::inventory::{Host, HostName, Inventory};
use crate::mta::{self, Facts};
use crate::plan::{HostOutcome, HostPlan};
use crate::progress::{Monitor, Phase};
use crate::ssh::{RemoteOutput, SshHost};
use crate::templates::Templates;
use crate::trust::Purpose;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyStatus {
    Unchanged,
    Applied { changes: usize },
    Failed(HostError),
    Skipped(HostError),
}

/// Order of application: a backup that starts pinning a host whose served
/// key changes in this run, or that opens the port the backup routes to,
/// goes after that host, so it never pins a key that is not served yet nor
/// routes to a closed port. Returns a wave number per plan.
pub fn waves(plans: &[&HostPlan]) -> Vec<usize> {
    let mut wave = vec![0usize; plans.len()];
    let index = |h: &HostName| plans.iter().position(|p| &p.host == h);
    // Bounded: a wave number only grows, and never past the plan count.
    for _ in 0..plans.len() {
        let mut moved = false;
        for (i, p) in plans.iter().enumerate() {
            for dep in p.pins_for().filter_map(&index) {
                if plans[dep].goes_first() && wave[i] <= wave[dep] && wave[dep] < plans.len() {
                    wave[i] = wave[dep] + 1;
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }
    wave
}

fn apply_error(host: &HostName, kind: ErrorKind, message: String) -> HostError {
    HostError::new(host, Stage::Apply, kind, message)
}

/// What one apply script did, and the facts it read back (with the
/// checks `extra` ran) when it applied.
type Applied = (ApplyStatus, Option<Result<Facts, HostError>>);

/// After the script of a plan whose MTA takes up its new key by itself
/// (Exim's daemon loads it again a few seconds after it changed; a SIGHUP
/// would close its port for a moment), waits until the controller sees the
/// new key served at every address an edge pins, so that no pinner drops
/// the old key while it is still served. Polls, bounded by
/// [`crate::limits::SERVED_KEY_WAIT`].
async fn await_served_key(inv: &Inventory, plan: &HostPlan) -> Result<(), String> {
    use crate::limits::{SERVED_KEY_POLL, SERVED_KEY_WAIT};
    let want = plan
        .changes
        .iter()
        .filter(|c| c.action != crate::plan::Action::Chmod && c.path.ends_with("/current.crt"))
        .find_map(|c| c.new.as_ref())
        .and_then(|pem| crate::tls::Certificate::from_pem(pem.raw()).ok());
    let Some(want) = want else {
        return Ok(());
    };
    let deadline = std::time::Instant::now() + SERVED_KEY_WAIT;
    loop {
        let seen = crate::verify::probe_host(inv, &plan.host).await;
        let old: Vec<String> = seen
            .into_iter()
            .filter(|(_, got)| !matches!(got, Ok(c) if c.spki_der() == want.spki_der()))
            .map(|(addr, _)| addr)
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "{} did not serve the new key within {} s of the switch; its pinners still pin the key it serves",
                old.join(", "),
                SERVED_KEY_WAIT.as_secs()
            ));
        }
        tokio::time::sleep(SERVED_KEY_POLL).await;
    }
}

async fn apply_one(conn: &SshHost, host: &Host, plan: &HostPlan, extra: &str) -> Applied {
    let script = mta::apply_and_read_script(plan, host, extra);
    let failed = |kind, message| ApplyStatus::Failed(apply_error(&plan.host, kind, message));
    match conn.run_script(script.text()).await {
        Err(e) => (
            failed(
                ErrorKind::Unreachable,
                format!("{e}; state unknown, run plan to see it"),
            ),
            None,
        ),
        Ok(out) => {
            let (verdict, read_back) = mta::split_read_back(&out.stdout);
            let status = match mta::parse_result(&String::from_utf8_lossy(verdict)) {
                Some(mta::ApplyResult::Applied) => ApplyStatus::Applied {
                    changes: plan.changes.len(),
                },
                Some(mta::ApplyResult::Failed {
                    step,
                    message,
                    rolled_back,
                }) => failed(
                    ErrorKind::Failed,
                    format!(
                        "at step '{step}': {message}{}",
                        if rolled_back {
                            "; previous files restored"
                        } else {
                            "; nothing was changed"
                        }
                    ),
                ),
                None => failed(
                    ErrorKind::Unparsable,
                    format!(
                        "apply script ended without a verdict (stderr: {}); run plan to see the state",
                        out.stderr
                    ),
                ),
            };
            let facts = match (&status, read_back) {
                (ApplyStatus::Applied { .. }, Some(bytes)) => Some(parse_facts(
                    host,
                    &RemoteOutput {
                        stdout: bytes.to_vec(),
                        stderr: out.stderr.clone(),
                    },
                )),
                _ => None,
            };
            (status, facts)
        }
    }
}

/// Whether the checks `plans[i]` read back with its apply still hold at
/// the end of the round: every host it routes to either changed nothing
/// in this run or was done before it started (a dependency). Otherwise a
/// peer may have switched its key after the checks ran.
fn checks_hold(plans: &[&HostPlan], deps: &[Vec<usize>], i: usize) -> bool {
    plans[i]
        .pinned
        .iter()
        .all(|e| match plans.iter().position(|q| q.host == e.pinned) {
            None => true,
            Some(j) => deps[i].contains(&j),
        })
}

/// The hosts that change nothing but route to a host that has something to
/// do (`changing`). Such a host keeps the facts it was read with, and with
/// them the checks of the first read (`Access::ChangeAndVerify`), which ran
/// before anything changed: they no longer hold.
fn unchanged_with_changed_peers<'a>(
    outcomes: &'a [HostOutcome],
    changing: &[&HostPlan],
) -> Vec<&'a HostName> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            HostOutcome::Planned(p) if p.is_empty() => Some(p),
            _ => None,
        })
        .filter(|p| {
            p.pinned
                .iter()
                .any(|e| changing.iter().any(|q| q.host == e.pinned))
        })
        .map(|p| &p.host)
        .collect()
}

/// For each plan, the plans it must wait for: the hosts whose new key it
/// will pin, when they go first by [`waves`]. Edges only point to earlier
/// waves, so there is no cycle.
fn dependencies(plans: &[&HostPlan]) -> Vec<Vec<usize>> {
    let wave = waves(plans);
    plans
        .iter()
        .enumerate()
        .map(|(i, p)| {
            p.pins_for()
                .filter_map(|h| plans.iter().position(|q| &q.host == h))
                .filter(|&j| plans[j].goes_first() && wave[j] < wave[i])
                .collect()
        })
        .collect()
}

/// Applies non-empty plans, `parallel` at a time. A host starts as soon as
/// the hosts it depends on (see [`dependencies`]) are done, never waiting
/// for unrelated slow hosts; a host whose dependency failed is skipped.
///
/// Each apply script reads its host back in the same remote command (with
/// the verification checks of its plan): those facts replace the host's,
/// and a host that ran a script without reading back is marked stale, to
/// be read again before anything is planned from it.
pub async fn apply_all(
    inv: &Inventory,
    states: &mut [HostState],
    outcomes: &[HostOutcome],
    parallel: usize,
    monitor: &dyn Monitor,
) -> Vec<(HostName, ApplyStatus)> {
    let plans = crate::report::pending_plans(outcomes);
    let deps = dependencies(&plans);
    // A host that routes to a host whose plan failed stays as it is: that
    // host's key or port may not be there (issue 16).
    let failed: Vec<&HostName> = outcomes
        .iter()
        .filter_map(|o| match o {
            HostOutcome::Failed(e) => Some(&e.host),
            HostOutcome::Planned(_) => None,
        })
        .collect();
    // Some(true) once a plan is applied, Some(false) once it failed or was
    // skipped.
    let done: Vec<tokio::sync::watch::Sender<Option<bool>>> = plans
        .iter()
        .map(|_| tokio::sync::watch::channel(None).0)
        .collect();
    let permits = tokio::sync::Semaphore::new(parallel.max(1));
    let tasks = plans.iter().enumerate().map(|(i, plan)| {
        let (deps, done, permits, plans) = (&deps[i], &done, &permits, &plans);
        let state = states.iter().find(|s| s.host.name == plan.host);
        let conn = state.and_then(|s| s.conn.as_ref().map(|c| (c, &s.host)));
        let extra = match state.map(|s| &s.facts) {
            Some(Ok(f)) => mta::verify_snippet(plan, f, inv),
            _ => String::new(),
        };
        let routes_to_failed = plan
            .pinned
            .iter()
            .filter(|e| e.purpose != Purpose::ClientCertificate)
            .find(|e| failed.contains(&&e.pinned))
            .map(|e| e.pinned.clone());
        async move {
            if let Some(h) = routes_to_failed {
                monitor.event(&plan.host, Phase::Skipped);
                done[i].send_replace(Some(false));
                let e = apply_error(
                    &plan.host,
                    ErrorKind::Skipped,
                    format!("not applied: it routes to {h}, whose plan failed"),
                );
                return (ApplyStatus::Skipped(e), None);
            }
            for &j in deps {
                let mut rx = done[j].subscribe();
                let applied = rx
                    .wait_for(Option::is_some)
                    .await
                    .map(|v| *v == Some(true))
                    .unwrap_or(false);
                if !applied {
                    monitor.event(&plan.host, Phase::Skipped);
                    done[i].send_replace(Some(false));
                    let why = if plans[j].switches_key {
                        format!(
                            "not applied: it would pin the new key of {}, which was not applied",
                            plans[j].host
                        )
                    } else {
                        format!(
                            "not applied: it would route to the port {} opens, which was not applied",
                            plans[j].host
                        )
                    };
                    let e = apply_error(&plan.host, ErrorKind::Skipped, why);
                    return (ApplyStatus::Skipped(e), None);
                }
            }
            let _permit = permits.acquire().await.expect("never closed");
            monitor.event(&plan.host, Phase::Applying);
            let (mut status, facts) = match conn {
                Some((c, host)) => apply_one(c, host, plan, &extra).await,
                None => (
                    ApplyStatus::Failed(apply_error(
                        &plan.host,
                        ErrorKind::Unreachable,
                        "no connection".into(),
                    )),
                    None,
                ),
            };
            if matches!(status, ApplyStatus::Applied { .. }) && plan.awaits_served_key() {
                if let Err(why) = await_served_key(inv, plan).await {
                    status = ApplyStatus::Failed(apply_error(&plan.host, ErrorKind::Failed, why));
                }
            }
            let ok = matches!(status, ApplyStatus::Applied { .. });
            monitor.event(
                &plan.host,
                if ok {
                    Phase::Applied
                } else {
                    Phase::Failed("apply".into())
                },
            );
            done[i].send_replace(Some(ok));
            (status, facts)
        }
    });
    let ran: Vec<Applied> = futures::future::join_all(tasks).await;
    let mut status: Vec<ApplyStatus> = Vec::with_capacity(ran.len());
    for (i, (st, facts)) in ran.into_iter().enumerate() {
        if let Some(s) = states.iter_mut().find(|s| s.host.name == plans[i].host) {
            // What the controller saw the host serve may have changed.
            if matches!(st, ApplyStatus::Applied { .. } | ApplyStatus::Failed(_)) {
                s.probes.clear();
            }
            match (facts, &st) {
                (Some(Ok(mut f)), _) => {
                    if !checks_hold(&plans, &deps, i) {
                        mta::clear_checks(&mut f);
                    }
                    s.facts = Ok(f);
                    s.stale = false;
                }
                // Nothing ran on the host.
                (_, ApplyStatus::Skipped(_)) => {}
                _ => s.stale = true,
            }
        }
        status.push(st);
    }
    for host in unchanged_with_changed_peers(outcomes, &plans) {
        if let Some(Ok(f)) = states
            .iter_mut()
            .find(|s| &s.host.name == host)
            .map(|s| &mut s.facts)
        {
            mta::clear_checks(f);
        }
    }
    let mut result: Vec<(HostName, ApplyStatus)> = Vec::new();
    for o in outcomes {
        let (name, s) = match o {
            HostOutcome::Failed(e) => (e.host.clone(), ApplyStatus::Failed(e.clone())),
            HostOutcome::Planned(p) if p.is_empty() => (p.host.clone(), ApplyStatus::Unchanged),
            HostOutcome::Planned(p) => {
                let i = plans.iter().position(|q| q.host == p.host).expect("listed");
                (p.host.clone(), status[i].clone())
            }
        };
        result.push((name, s));
    }
    result
}

/// Plans again from facts just read, rotating nothing: what is left to do.
fn replan(
    inv: &Inventory,
    states: &[HostState],
    externals: &[ExternalState],
    templates: &Templates,
    new_keys: &dyn crate::keys::NewKeys,
) -> FleetPlan {
    plan_all_with(
        inv,
        states,
        externals,
        templates,
        OffsetDateTime::now_utc(),
        &Rotation::default(),
        new_keys,
    )
}

/// The second round of a run whose plans were transitional (hosts on a
/// cycle of edges that all switched keys kept the old pins; a client did
/// not take a relay that did not accept its key yet): the first round is
/// done, so read the hosts again, plan (rotating nothing) and apply what
/// is left: the old pins go, the client takes its relay. Returns the results of both rounds merged
/// per host, and the plans of the second round (what the run now intends,
/// for the checks that follow); `None` when the first round needs no second.
pub async fn finish_transition(
    inv: &Inventory,
    states: &mut [HostState],
    externals: &[ExternalState],
    templates: &Templates,
    run: Progress<'_>,
    first: &[HostOutcome],
    results: Vec<(HostName, ApplyStatus)>,
) -> (Vec<(HostName, ApplyStatus)>, Option<Vec<HostOutcome>>) {
    let transitional = first
        .iter()
        .any(|o| matches!(o, HostOutcome::Planned(p) if p.transitional));
    let applied = results
        .iter()
        .any(|(_, s)| matches!(s, ApplyStatus::Applied { .. }));
    if !(transitional && applied) {
        return (results, None);
    }
    // The first round's hosts read themselves back; the others held
    // their lock and did not change. Their checks ran before the second
    // round: forget them.
    let stale: Vec<bool> = states.iter().map(|s| s.stale).collect();
    refresh_some(states, &stale, &[], run.parallel, run.monitor).await;
    for s in states.iter_mut() {
        if let Ok(f) = &mut s.facts {
            mta::clear_checks(f);
        }
    }
    let second = replan(inv, states, externals, templates, &crate::keys::Generate);
    let again = apply_all(inv, states, &second.outcomes, run.parallel, run.monitor).await;
    let statuses = results
        .into_iter()
        .zip(again)
        .map(|((host, a), (_, b))| {
            let merged = match (a, b) {
                (a @ (ApplyStatus::Failed(_) | ApplyStatus::Skipped(_)), _) => a,
                (_, b @ (ApplyStatus::Failed(_) | ApplyStatus::Skipped(_))) => b,
                (ApplyStatus::Applied { changes: x }, ApplyStatus::Applied { changes: y }) => {
                    ApplyStatus::Applied { changes: x + y }
                }
                (a @ ApplyStatus::Applied { .. }, ApplyStatus::Unchanged) => a,
                (ApplyStatus::Unchanged, b) => b,
            };
            (host, merged)
        })
        .collect();
    (statuses, Some(second.outcomes))
}

/// After apply (or for `verify`): read again the hosts whose facts are
/// stale, or lack the results of the verification checks of the routes
/// `intended` planned (when `verify`), running those checks with the
/// facts; then plan again (rotating nothing): hosts that still have
/// changes did not converge. A host read back by its apply script, or one
/// that held the run's lock and changed nothing, is not read again for
/// its facts alone: nothing else could change it.
pub(super) async fn converged(
    inv: &Inventory,
    states: &mut [HostState],
    externals: &[ExternalState],
    intended: &[HostOutcome],
    templates: &Templates,
    run: Progress<'_>,
    verify: bool,
) -> Vec<HostOutcome> {
    let Progress { parallel, monitor } = run;
    let extras: Vec<String> = states
        .iter()
        .zip(intended)
        .map(|(s, o)| match (o, &s.facts) {
            (HostOutcome::Planned(p), Ok(f)) => mta::verify_snippet(p, f, inv),
            _ => String::new(),
        })
        .collect();
    let which: Vec<bool> = states
        .iter()
        .zip(intended)
        .map(|(s, o)| match (o, &s.facts) {
            _ if s.stale => true,
            (_, Err(_)) => true,
            (HostOutcome::Planned(p), Ok(f)) => verify && !mta::checks_ran(p, f),
            (HostOutcome::Failed(_), Ok(_)) => false,
        })
        .collect();
    refresh_some(states, &which, &extras, parallel, monitor).await;
    // Only whether anything is left to do: no key needs to be real.
    let placeholders = crate::keys::Placeholders::default();
    let outcomes = replan(inv, states, externals, templates, &placeholders).outcomes;
    report_planned(&outcomes, monitor, Phase::Done);
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plan::plan_error;
    use crate::plan::HostPlan;

    fn plan(host: &str, switches: bool, pins_for: &[&str]) -> HostPlan {
        HostPlan {
            host: HostName::parse(host).unwrap(),
            changes: vec![],
            commands: vec![],
            notes: vec![],
            switches_key: switches,
            generates_keys: false,
            opens_listener: false,
            pinned: pins_for
                .iter()
                .map(|h| crate::plan::PinnedEdge {
                    pinned: HostName::parse(h).unwrap(),
                    purpose: Purpose::BackupRoute,
                    next_hop: Some(format!("[{h}]:25")),
                    probe: Some(format!("{h}:25")),
                    server_name: None,
                    pins: vec![],
                })
                .collect(),
            transitional: false,
            steps: crate::mta::Steps::Postfix(Default::default()),
        }
    }

    /// Gives a plan something to do: a change of `path`.
    fn change(plan: &mut HostPlan, path: &str) {
        plan.changes.push(crate::plan::FileChange {
            path: path.into(),
            action: crate::plan::Action::Modify,
            old: None,
            new: None,
            mode: 0o644,
            group: 0,
        });
    }

    #[test]
    fn pinning_backup_waits_for_the_key_switch() {
        let home = plan("home", true, &[]);
        let relay = plan("relay", true, &["home"]);
        assert_eq!(waves(&[&relay, &home]), [1, 0]);
    }

    #[test]
    fn steady_keys_need_no_ordering() {
        let home = plan("home", false, &[]);
        let relay = plan("relay", true, &["home"]);
        assert_eq!(waves(&[&home, &relay]), [0, 0]);
    }

    /// Issue 16: a backup routing to a primary's new smtp_port listener
    /// goes after it, even when no key changes.
    #[test]
    fn backup_waits_for_the_primarys_new_listener() {
        let mut home = plan("home", false, &[]);
        home.opens_listener = true;
        let relay = plan("relay", false, &["home"]);
        assert_eq!(waves(&[&relay, &home]), [1, 0]);
        assert_eq!(dependencies(&[&relay, &home]), [vec![1], vec![]]);
    }

    /// A backup whose primary failed to plan does not route to it.
    #[test]
    fn a_host_routing_to_a_failed_plan_is_skipped() {
        let mut relay = plan("relay", false, &["home"]);
        change(&mut relay, "/etc/postfix/main.cf");
        let outcomes = [
            HostOutcome::Failed(plan_error(
                &HostName::parse("home").unwrap(),
                "smtp_port 26 on an Exim primary: add it to daemon_smtp_ports".into(),
            )),
            HostOutcome::Planned(Box::new(relay)),
        ];
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let inv = crate::inventory::parse(
            std::path::Path::new("t.toml"),
            "[hosts.relay]\nssh = \"relay\"\nmx = \"relay.example\"\n",
        )
        .unwrap();
        let results = rt.block_on(apply_all(
            &inv,
            &mut [],
            &outcomes,
            2,
            &crate::progress::Silent,
        ));
        let relay = results.iter().find(|(h, _)| h.as_str() == "relay").unwrap();
        let ApplyStatus::Skipped(e) = &relay.1 else {
            panic!("{:?}", relay.1)
        };
        assert_eq!(
            e.message,
            "not applied: it routes to home, whose plan failed"
        );
        assert_eq!((e.stage, e.kind), (Stage::Apply, ErrorKind::Skipped));
    }

    #[test]
    fn dependencies_point_only_to_earlier_hosts() {
        let home = plan("home", true, &[]);
        let relay = plan("relay", true, &["home"]);
        let other = plan("other", false, &[]);
        assert_eq!(
            dependencies(&[&relay, &home, &other]),
            [vec![1], vec![], vec![]]
        );
        let a = plan("a", true, &["b"]);
        let b = plan("b", true, &["a"]);
        let d = dependencies(&[&a, &b]);
        assert!(d[0].is_empty() || d[1].is_empty(), "no cycle: {d:?}");
    }

    /// A backup's checks, read back by its apply script, still hold when
    /// the host it pins changed nothing or was done before it started; not
    /// when that host changed at the same time (a cycle).
    #[test]
    fn read_back_checks_hold_only_after_the_peers_they_check() {
        let home = plan("home", true, &[]);
        let relay = plan("relay", true, &["home"]);
        let plans = [&relay, &home];
        assert!(checks_hold(&plans, &dependencies(&plans), 0));
        let other = plan("other", false, &["elsewhere"]);
        let plans = [&other];
        assert!(checks_hold(&plans, &dependencies(&plans), 0));
        let a = plan("a", true, &["b"]);
        let b = plan("b", true, &["a"]);
        let plans = [&a, &b];
        let deps = dependencies(&plans);
        assert!(
            !(checks_hold(&plans, &deps, 0) && checks_hold(&plans, &deps, 1)),
            "one of the pair checked before the other switched"
        );
    }

    /// The checks an unchanged host read with its facts (apply's first
    /// read) are forgotten when a host it routes to changes, and kept
    /// otherwise.
    #[test]
    fn first_read_checks_are_forgotten_where_a_peer_changes() {
        let mut home = plan("home", false, &[]);
        change(&mut home, "/etc/postfix/mxpin/transport");
        let outcomes = [
            HostOutcome::Planned(Box::new(home)),
            HostOutcome::Planned(Box::new(plan("relay", false, &["home"]))),
            HostOutcome::Planned(Box::new(plan("other", false, &["elsewhere"]))),
            HostOutcome::Planned(Box::new(plan("quiet", false, &[]))),
        ];
        let changing = crate::report::pending_plans(&outcomes);
        assert_eq!(changing.len(), 1, "home has something to do");
        let names: Vec<&str> = unchanged_with_changed_peers(&outcomes, &changing)
            .iter()
            .map(|h| h.as_str())
            .collect();
        assert_eq!(names, ["relay"]);
        assert!(unchanged_with_changed_peers(&outcomes, &[]).is_empty());
    }

    #[test]
    fn mutual_backups_with_new_keys_terminate() {
        let a = plan("a", true, &["b"]);
        let b = plan("b", true, &["a"]);
        let w = waves(&[&a, &b]);
        assert!(w.iter().all(|&x| x <= 2), "{w:?}");
    }
}
