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

/// How one attempt to hold a host ended.
enum Attempt {
    /// Boxed: facts are large, and most attempts are not busy.
    Held(Box<(Box<Held>, Result<Facts, HostError>)>),
    Busy,
    Failed(HostError),
}

async fn hold_one(
    conn: &SshHost,
    host: &Host,
    access: Access,
    marker: &str,
    digest: &str,
) -> Attempt {
    let checks = if access.checks() {
        mta::hold_checks(host, digest)
    } else {
        String::new()
    };
    let script = mta::hold_script(host, access.exclusive(), marker, &checks);
    match conn.hold(&script, marker).await {
        Err(e) => Attempt::Failed(facts_error(
            host,
            ErrorKind::Unreachable,
            format!("reading facts: {e}"),
        )),
        Ok(Hold::Held(held, out)) => {
            let facts = parse_facts(host, &out);
            Attempt::Held(Box::new((held, facts)))
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
    let config = inv.settings.ssh_config.as_deref();
    let parallel = parallel.max(1);
    let marker = hold_marker();
    let digest = inv.settings.digest.as_str();
    // Each host is held as soon as it is connected: a master that waited
    // for every other host's connection could idle out first (its
    // ControlPersist) on a large fleet.
    let mut first: Vec<(usize, Result<SshHost, HostError>, Option<Attempt>)> =
        stream::iter(inv.hosts.iter().enumerate())
            .map(|(i, host)| {
                let marker = &marker;
                async move {
                    monitor.event(&host.name, Phase::Connecting);
                    match SshHost::connect(host, config).await {
                        Err(e) => {
                            let e = HostError::new(
                                &host.name,
                                Stage::Connect,
                                ErrorKind::Unreachable,
                                e.to_string(),
                            );
                            (i, Err(e), None)
                        }
                        Ok(conn) => {
                            monitor.event(&host.name, Phase::Reading);
                            let attempt = hold_one(&conn, host, access, marker, digest).await;
                            (i, Ok(conn), Some(attempt))
                        }
                    }
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
                            (i, hold_one(conn, host, access, marker, digest).await)
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
                    let (conn, lock, facts) = match (conn, attempt) {
                        (Err(e), _) => (None, None, Err(e)),
                        (Ok(c), Some(Attempt::Held(held))) => {
                            let (h, facts) = *held;
                            (Some(c), Some(h), facts)
                        }
                        (Ok(_), Some(Attempt::Busy)) => (
                            None,
                            None,
                            Err(facts_error(host, ErrorKind::Busy, format!(
                                "another mxpin run holds this host (waited {} s); nothing was changed: try again when it is done",
                                mta::LOCK_WAIT_SECS
                            ))),
                        ),
                        (Ok(_), Some(Attempt::Failed(e))) => (None, None, Err(e)),
                        (Ok(_), None) => (
                            None,
                            None,
                            Err(facts_error(host, ErrorKind::Unparsable, "not read".into())),
                        ),
                    };
                    HostState {
                        host: host.clone(),
                        conn,
                        lock,
                        facts,
                        stale: false,
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
