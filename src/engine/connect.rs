//! Connecting to the hosts: the run's lock on each, and its facts read in
//! the same remote command.

use super::{Access, HostState};
use futures::stream::{self, StreamExt as _};

use crate::error::{ErrorKind, HostError, Stage};
use crate::facts;
use crate::inventory::{Host, Inventory};
use crate::mta::{self, Facts};
use crate::progress::{Monitor, Phase};
use crate::ssh::{Held, Hold, RemoteOutput, SshHost};
use crate::verify::Probed;

pub(super) fn parse_facts(host: &Host, out: &RemoteOutput) -> Result<Facts, HostError> {
    let sections = facts::parse(&out.stdout).map_err(|e| {
        let hint = if out.stderr.is_empty() {
            String::new()
        } else {
            format!(" (stderr: {})", out.stderr)
        };
        facts_error(
            host,
            ErrorKind::Unparsable,
            format!("reading facts: {e}{hint}"),
        )
    })?;
    // The host said what stops mxpin (not root, no Postfix), or what it
    // said cannot be read.
    let refused = sections.get("error").is_some() || sections.get("uid").is_some_and(|u| u != "0");
    let kind = match refused {
        true => ErrorKind::Refused,
        false => ErrorKind::Unparsable,
    };
    mta::parse_facts(host, &sections).map_err(|e| facts_error(host, kind, e))
}

fn facts_error(host: &Host, kind: ErrorKind, message: String) -> HostError {
    HostError::new(&host.name, Stage::Facts, kind, message)
}

async fn read_facts(
    conn: &SshHost,
    host: &Host,
    monitor: &dyn Monitor,
    extra: &str,
) -> Result<Facts, HostError> {
    monitor.event(&host.name, Phase::Reading);
    let out = conn
        .run_script(&mta::facts_script(host, extra))
        .await
        .map_err(|e| facts_error(host, ErrorKind::Unreachable, format!("reading facts: {e}")))?;
    parse_facts(host, &out)
}

/// A marker no file on a host contains: the line a hold script prints when
/// it has the lock and the facts are out.
fn hold_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("@@mxpin-held-{:x}-{nanos:x}", std::process::id())
}

/// How long to wait before trying busy hosts again: growing, capped, with
/// jitter so that two waiting runs do not retry in step.
fn backoff(attempt: u32) -> std::time::Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(5)).min(2000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = u64::from(nanos) % (base / 2 + 1);
    std::time::Duration::from_millis(base + jitter)
}

/// A host held: its lock, its facts, and the controller's probes of the
/// host, taken while it was held.
type HeldHost = (Box<Held>, Result<Facts, HostError>, Vec<Probed>);

/// How one attempt to hold a host ended.
enum Attempt {
    /// Boxed: facts are large, and most attempts are not busy.
    Held(Box<HeldHost>),
    Busy,
    Failed(HostError),
}

/// The script that takes the run's lock on `host` and reads its facts
/// (with the checks of its own tables, when `access` runs them).
fn hold_script(inv: &Inventory, host: &Host, access: Access, marker: &str) -> String {
    let checks = if access.checks() {
        mta::hold_checks(host, inv.settings.digest.as_str())
    } else {
        String::new()
    };
    mta::hold_script(host, access.exclusive(), marker, &checks)
}

async fn hold_one(
    inv: &Inventory,
    conn: &SshHost,
    host: &Host,
    access: Access,
    marker: &str,
) -> Attempt {
    let held = conn
        .hold(&hold_script(inv, host, access, marker), marker)
        .await;
    attempt(inv, host, access, held).await
}

/// Connects to `host` and holds it in the same `ssh` process (see
/// [`SshHost::connect_and_hold`]); `None` when it could not connect.
async fn connect_and_hold(
    inv: &Inventory,
    host: &Host,
    access: Access,
    marker: &str,
) -> (Result<SshHost, HostError>, Option<Attempt>) {
    let config = inv.settings.ssh_config.as_deref();
    let script = hold_script(inv, host, access, marker);
    match SshHost::connect_and_hold(host, config, access.master(), &script, marker).await {
        Err(e) => (
            Err(HostError::new(
                &host.name,
                Stage::Connect,
                ErrorKind::Unreachable,
                e.to_string(),
            )),
            None,
        ),
        Ok((conn, held)) => {
            let a = attempt(inv, host, access, held).await;
            (Ok(conn), Some(a))
        }
    }
}

/// What a hold (or the error of one) means for the run.
async fn attempt(
    inv: &Inventory,
    host: &Host,
    access: Access,
    held: Result<Hold, crate::ssh::SshError>,
) -> Attempt {
    match held {
        Err(e) => Attempt::Failed(facts_error(
            host,
            ErrorKind::Unreachable,
            format!("reading facts: {e}"),
        )),
        Ok(Hold::Held(held, out)) => {
            let facts = parse_facts(host, &out);
            // Probed now, while the other hosts are still being read, and
            // while this run holds the host: nothing changes what it serves
            // until this run does.
            let probes = match access.checks() && facts.is_ok() {
                true => crate::verify::probe_host(inv, &host.name).await,
                false => Vec::new(),
            };
            Attempt::Held(Box::new((held, facts, probes)))
        }
        Ok(Hold::Ended(out)) => match out.stdout.as_slice() {
            b"@@mxpin-busy\n" => Attempt::Busy,
            b"@@mxpin-noflock\n" => Attempt::Failed(facts_error(
                host,
                ErrorKind::Refused,
                "flock not found on the host (util-linux): mxpin needs it to keep two runs apart"
                    .into(),
            )),
            _ => Attempt::Failed(match parse_facts(host, &out) {
                Err(e) => e,
                Ok(_) => facts_error(
                    host,
                    ErrorKind::Unparsable,
                    "reading facts: the remote shell ended before taking the lock".into(),
                ),
            }),
        },
    }
}

/// Connects to every host, `parallel` at a time, takes the run's lock on
/// each and reads its facts in the same remote command. A host that fails
/// does not hold up the others.
///
/// Locks are never waited for while others are held: when any host is
/// busy (another run holds it), every hold is let go and all are tried
/// again after a short, growing pause, for at most
/// [`mta::LOCK_WAIT_SECS`]. So two runs over overlapping hosts serialize
/// and never deadlock. Hosts still busy then fail with one line.
pub async fn gather(
    inv: &Inventory,
    parallel: usize,
    monitor: &dyn Monitor,
    access: Access,
) -> Vec<HostState> {
    let parallel = parallel.max(1);
    let marker = hold_marker();
    // Each host is held as soon as it is connected: a master that waited
    // for every other host's connection could idle out first (its
    // ControlPersist) on a large fleet.
    let mut first: Vec<(usize, Result<SshHost, HostError>, Option<Attempt>)> =
        stream::iter(inv.hosts.iter().enumerate())
            .map(|(i, host)| {
                let marker = &marker;
                async move {
                    // Connecting and reading are one process (the master
                    // runs the first read): one event for both.
                    monitor.event(&host.name, Phase::Connecting);
                    let (conn, attempt) = connect_and_hold(inv, host, access, marker).await;
                    (i, conn, attempt)
                }
            })
            .buffer_unordered(parallel)
            .collect()
            .await;
    first.sort_by_key(|(i, _, _)| *i);
    let mut first_held: Vec<(usize, Attempt)> = Vec::new();
    let mut conns: Vec<Result<SshHost, HostError>> = Vec::new();
    for (i, conn, attempt) in first {
        conns.push(conn);
        if let Some(a) = attempt {
            first_held.push((i, a));
        }
    }
    let mut first_held = Some(first_held);
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs(mta::LOCK_WAIT_SECS.into());
    let mut attempt = 0;
    loop {
        let mut held: Vec<(usize, Attempt)> = match first_held.take() {
            Some(h) => h,
            None => {
                stream::iter(inv.hosts.iter().zip(&conns).enumerate())
                    .filter_map(|(i, (host, conn))| async move {
                        conn.as_ref().ok().map(|c| (i, host, c))
                    })
                    .map(|(i, host, conn)| {
                        let marker = &marker;
                        async move {
                            monitor.event(&host.name, Phase::Reading);
                            (i, hold_one(inv, conn, host, access, marker).await)
                        }
                    })
                    .buffer_unordered(parallel)
                    .collect()
                    .await
            }
        };
        held.sort_by_key(|(i, _)| *i);
        let busy: Vec<usize> = held
            .iter()
            .filter(|(_, a)| matches!(a, Attempt::Busy))
            .map(|(i, _)| *i)
            .collect();
        if busy.is_empty() || std::time::Instant::now() >= deadline {
            let mut attempts: Vec<Option<Attempt>> = inv.hosts.iter().map(|_| None).collect();
            for (i, a) in held {
                attempts[i] = Some(a);
            }
            return inv
                .hosts
                .iter()
                .zip(conns)
                .zip(attempts)
                .map(|((host, conn), attempt)| {
                    let (conn, lock, facts, probes) = match (conn, attempt) {
                        (Err(e), _) => (None, None, Err(e), Vec::new()),
                        (Ok(c), Some(Attempt::Held(held))) => {
                            let (h, facts, probes) = *held;
                            (Some(c), Some(h), facts, probes)
                        }
                        (Ok(_), Some(Attempt::Busy)) => (
                            None,
                            None,
                            Err(facts_error(host, ErrorKind::Busy, format!(
                                "another mxpin run holds this host (waited {} s); nothing was changed: try again when it is done",
                                mta::LOCK_WAIT_SECS
                            ))),
                            Vec::new(),
                        ),
                        (Ok(_), Some(Attempt::Failed(e))) => (None, None, Err(e), Vec::new()),
                        (Ok(_), None) => (
                            None,
                            None,
                            Err(facts_error(host, ErrorKind::Unparsable, "not read".into())),
                            Vec::new(),
                        ),
                    };
                    HostState {
                        host: host.clone(),
                        conn,
                        lock,
                        facts,
                        stale: false,
                        probes,
                    }
                })
                .collect();
        }
        // Let go of everything, wait, and try again.
        let releases = held.into_iter().filter_map(|(_, a)| match a {
            Attempt::Held(held) => Some(held.0.release()),
            _ => None,
        });
        futures::future::join_all(releases).await;
        for i in &busy {
            monitor.event(&inv.hosts[*i].name, Phase::Waiting);
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

/// Re-reads facts over the open connections, of the hosts `which` names;
/// `extras[i]` is shell run with host i's facts (verification checks), in
/// the same remote command.
pub(super) async fn refresh_some(
    states: &mut [HostState],
    which: &[bool],
    extras: &[String],
    parallel: usize,
    monitor: &dyn Monitor,
) {
    let fresh: Vec<(usize, Result<Facts, HostError>)> = stream::iter(states.iter().enumerate())
        .filter(|(i, _)| std::future::ready(which.get(*i).copied().unwrap_or(false)))
        .filter_map(|(i, s)| async move { s.conn.as_ref().map(|c| (i, c, &s.host)) })
        .map(|(i, conn, host)| async move {
            let extra = extras.get(i).map_or("", String::as_str);
            (i, read_facts(conn, host, monitor, extra).await)
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    for (i, f) in fresh {
        states[i].facts = f;
        states[i].stale = false;
    }
}
