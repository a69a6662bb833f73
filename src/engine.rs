//! Runs the flow across hosts: connect and read facts (in parallel,
//! bounded), plan (pure), apply (the only place with side effects), then
//! read facts again to prove every host converged.

use futures::stream::{self, StreamExt as _};
use time::OffsetDateTime;

use std::collections::{BTreeMap, BTreeSet};

use crate::desired::{self, HostKeys};
use crate::error::{ErrorKind, HostError, Stage};
use crate::external::ExternalState;
use crate::facts;
use crate::inventory::{Host, HostName, Inventory};
use crate::mta::{self, Facts};
use crate::plan::{HostOutcome, HostPlan};
use crate::progress::{Monitor, Phase};
use crate::ssh::{Held, Hold, RemoteOutput, SshHost};
use crate::templates::Templates;
use crate::tls::Fingerprint;
use crate::trust::{self, Edge, Purpose};

/// A host as seen this run: its open connection (if any), the run's hold
/// on its lock, and its facts.
pub struct HostState {
    pub host: Host,
    pub conn: Option<SshHost>,
    pub lock: Option<Box<Held>>,
    pub facts: Result<Facts, HostError>,
}

/// What a run does to its hosts, which decides the lock it holds on each:
/// shared for reading (plan, verify, tlsa), exclusive for changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Change,
}

fn parse_facts(host: &Host, out: &RemoteOutput) -> Result<Facts, HostError> {
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

async fn hold_one(conn: &SshHost, host: &Host, access: Access, marker: &str) -> Attempt {
    let script = mta::hold_script(host, access == Access::Change, marker);
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
                            let attempt = hold_one(&conn, host, access, marker).await;
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
                            (i, hold_one(conn, host, access, marker).await)
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

/// Re-reads facts over the open connections; `extras[i]` is shell run with
/// host i's facts (verification checks), in the same remote command.
async fn refresh(
    states: &mut [HostState],
    extras: &[String],
    parallel: usize,
    monitor: &dyn Monitor,
) {
    let fresh: Vec<(usize, Result<Facts, HostError>)> = stream::iter(states.iter().enumerate())
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
    }
}

/// Hosts to rotate: each switches to its staged next key and stages a
/// fresh one; peers then pin the new pair.
#[derive(Debug, Clone, Default)]
pub struct Rotation {
    pub hosts: BTreeSet<HostName>,
    /// The old key must stop being trusted now: rotate even when a peer
    /// does not pin the next key yet (it is updated in the same run).
    pub compromised: bool,
    /// Hosts the world does not see the next key of yet, with the reason
    /// (the DNS pinner, see [`crate::dns::gate_rotation`]): no switch,
    /// whether asked for or due to a renewal under certificate pins.
    pub held_by_dns: BTreeMap<HostName, String>,
}

impl Rotation {
    /// The hosts `mxpin rotate` names, checked against the inventory;
    /// every host when none is named.
    pub fn select(inv: &Inventory, hosts: &[String], compromised: bool) -> Result<Self, String> {
        if compromised && hosts.is_empty() {
            return Err("--compromised needs the names of the compromised hosts".into());
        }
        let mut set = BTreeSet::new();
        for h in hosts {
            let name = HostName::parse(h).map_err(|e| format!("rotate: {e}"))?;
            if !inv.hosts.iter().any(|x| x.name == name) {
                return Err(format!("rotate: no host {h} in {}", inv.file.display()));
            }
            set.insert(name);
        }
        if set.is_empty() {
            set = inv.hosts.iter().map(|h| h.name.clone()).collect();
        }
        Ok(Rotation {
            hosts: set,
            compromised,
            held_by_dns: BTreeMap::new(),
        })
    }
}

/// A host rotated by a plan: fingerprints before and after, in the
/// inventory's digest and pin kind (as its peers pin them).
#[derive(Debug, Clone)]
pub struct Rotated {
    pub host: HostName,
    pub old_current: Fingerprint,
    pub new_current: Fingerprint,
    pub new_next: Fingerprint,
    /// Why the host rotates: asked for, or renewal under certificate pins.
    pub reason: &'static str,
}

/// A plan of the whole inventory.
#[derive(Debug)]
pub struct FleetPlan {
    pub outcomes: Vec<HostOutcome>,
    pub rotated: Vec<Rotated>,
    /// Hosts whose rotation was refused, with the reason (naming the peer).
    pub refused: Vec<HostError>,
    /// How its fingerprints are shown.
    pub pin_style: crate::plan::PinStyle,
    /// The keys each planned host ends with, for its DANE records.
    pub tlsa: Vec<crate::dns::HostTlsa>,
    /// The stand-in certificates of a plan that is only shown (see
    /// [`crate::keys`]): what they stand for is known after apply.
    pub placeholders: Vec<crate::tls::Certificate>,
}

/// The safety rule of rotation, checked on what the pinners really have:
/// never switch a host to a key that some pinner does not already accept,
/// on any edge (a backup's route, a client's smarthost, a relay's table of
/// client keys).
fn rotation_blocker(
    inv: &Inventory,
    edges: &[Edge],
    states: &[HostState],
    host: &Host,
    next_pin: &Fingerprint,
    compromised: bool,
) -> Option<String> {
    for edge in trust::pinners_of(edges, &host.name) {
        let peer = &edge.pinner;
        let state = states
            .iter()
            .find(|s| &s.host.name == peer)
            .expect("every host has a state");
        match &state.facts {
            Err(e) if !compromised => {
                return Some(format!("peer {peer} cannot be read ({})", e.message));
            }
            Err(_) => {}
            Ok(f) => {
                let pinned = f.pins_for(&edge.site(inv), &inv.settings);
                if !compromised && !pinned.iter().any(|p| p == next_pin.as_str()) {
                    let why = match edge.purpose {
                        Purpose::BackupRoute => String::new(),
                        other => format!(" as its {}", other.as_str()),
                    };
                    return Some(format!(
                        "peer {peer} does not pin {}'s next key yet{why}; run `mxpin apply` first",
                        host.name,
                    ));
                }
            }
        }
    }
    None
}

/// Plans every host from the facts read, rotating the hosts `rotation`
/// names and those whose renewal needs a rotation. Pure apart from key
/// generation (each new key generated when needed; see
/// [`crate::keys::plan_fleet`] for dry runs and parallel generation).
pub fn plan_all(
    inv: &Inventory,
    states: &[HostState],
    externals: &[ExternalState],
    templates: &Templates,
    now: OffsetDateTime,
    rotation: &Rotation,
) -> FleetPlan {
    plan_all_with(
        inv,
        states,
        externals,
        templates,
        now,
        rotation,
        &crate::keys::Generate,
    )
}

/// [`plan_all`], with every new key from `new_keys`.
pub fn plan_all_with(
    inv: &Inventory,
    states: &[HostState],
    externals: &[ExternalState],
    templates: &Templates,
    now: OffsetDateTime,
    rotation: &Rotation,
    new_keys: &dyn crate::keys::NewKeys,
) -> FleetPlan {
    let mut keys: Vec<Result<HostKeys, HostError>> = states
        .iter()
        .map(|s| {
            let f = s.facts.as_ref().map_err(Clone::clone)?;
            desired::resolve_keys_with(inv, &s.host, &f.stored_keys(), now, new_keys)
                .map_err(|e| plan_error(&s.host.name, e.message))
        })
        .collect();
    let mut rotated = Vec::new();
    let mut refused = Vec::new();
    let edges = trust::edges(inv);
    for (state, k) in states.iter().zip(keys.iter_mut()) {
        let host = &state.host;
        let Ok(current) = k else { continue };
        let reason = if rotation.hosts.contains(&host.name) {
            "rotation"
        } else if current.renewal_due {
            "certificate renewal (certificate pins)"
        } else {
            continue;
        };
        if let Some(why) = rotation.held_by_dns.get(&host.name) {
            refused.push(plan_error(&host.name, format!("{reason} refused: {why}")));
            continue;
        }
        let s = &inv.settings;
        let next_pin = current.next.identity.cert.fingerprint(s.digest, s.pin);
        if let Some(why) =
            rotation_blocker(inv, &edges, states, host, &next_pin, rotation.compromised)
        {
            refused.push(plan_error(&host.name, format!("{reason} refused: {why}")));
            continue;
        }
        match desired::rotate_with(inv, host, current, now, new_keys) {
            Ok(new) => {
                let (old_current, _) = current.pin_pair(s);
                let (new_current, new_next) = new.pin_pair(s);
                rotated.push(Rotated {
                    host: host.name.clone(),
                    old_current,
                    new_current,
                    new_next,
                    reason,
                });
                *k = Ok(new);
            }
            Err(e) => *k = Err(plan_error(&host.name, e.message)),
        }
    }
    let served: std::collections::BTreeMap<HostName, Result<crate::tls::Certificate, String>> =
        externals
            .iter()
            .map(|e| (e.name.clone(), e.pinned_leaf(inv).cloned()))
            .collect();
    // A client takes its managed relayhost only once the relay accepts the
    // key it will present (or it relays there already).
    let key_of = |h: &HostName| {
        let i = inv.hosts.iter().position(|x| &x.name == h).expect("host");
        (&keys[i], &states[i].facts)
    };
    let held: Vec<(HostName, HostName)> = edges
        .iter()
        .filter(|e| e.purpose == Purpose::Smarthost)
        .filter(|e| {
            let (client_keys, client_facts) = key_of(&e.pinner);
            let (_, relay_facts) = key_of(&e.pinned);
            let relay = inv.host(&e.pinned);
            let using = client_facts
                .as_ref()
                .is_ok_and(|f| f.relayhost() == Some(relay.relay_next_hop().as_str()));
            let ready = match (client_keys, relay_facts) {
                (Ok(k), Ok(f)) => {
                    let pin = k
                        .current
                        .identity
                        .cert
                        .fingerprint(inv.settings.digest, inv.settings.pin);
                    f.relays_on(relay.relay_port)
                        && f.pins_for(&trust::PinSite::ClientCerts, &inv.settings)
                            .iter()
                            .any(|p| p == pin.as_str())
                }
                _ => false,
            };
            !using && !ready
        })
        .map(|e| (e.pinner.clone(), e.pinned.clone()))
        .collect();
    let tlsa = states
        .iter()
        .zip(&keys)
        .filter_map(|(s, k)| {
            let k = k.as_ref().ok()?;
            let switched = k
                .before
                .as_ref()
                .filter(|b| b.spki_der() != k.current.identity.cert.spki_der());
            Some(crate::dns::HostTlsa {
                host: s.host.name.clone(),
                current: k.current.identity.cert.clone(),
                next: k.next.identity.cert.clone(),
                retired: switched.cloned(),
                admin_cert: s
                    .facts
                    .as_ref()
                    .is_ok_and(|f| f.serves_admin_certificate(&s.host)),
            })
        })
        .collect();
    let messages = keys
        .iter()
        .map(|k| k.clone().map_err(|e| e.message))
        .collect();
    let outcomes = desired::desired(inv, messages, &served, &held)
        .into_iter()
        .zip(states)
        .zip(&keys)
        .map(|((d, s), k)| {
            let planned = match (d, k) {
                // The host's own error, as it was.
                (Err(_), Err(e)) => Err(e.clone()),
                (Err(why), Ok(_)) => Err(plan_error(&s.host.name, why)),
                (Ok(d), _) => Ok(d),
            };
            let planned = planned.and_then(|d| {
                let f = s.facts.as_ref().map_err(Clone::clone)?;
                let d = crate::recipients::resolve(inv, d, f, |h| {
                    let peer = states.iter().find(|x| &x.host.name == h);
                    peer.ok_or_else(String::new)?
                        .facts
                        .as_ref()
                        .map_err(|e| e.message.clone())
                })
                .map_err(|e| plan_error(&s.host.name, e))?;
                mta::plan_host(&d, f, inv, templates).map_err(|e| plan_error(&s.host.name, e))
            });
            match planned {
                Ok(p) => HostOutcome::Planned(Box::new(p)),
                Err(error) => HostOutcome::Failed(error),
            }
        })
        .collect();
    FleetPlan {
        outcomes,
        rotated,
        refused,
        pin_style: (&inv.settings).into(),
        tlsa,
        placeholders: Vec::new(),
    }
}

/// A host whose plan the inventory or its configuration refuses.
fn plan_error(host: &HostName, message: String) -> HostError {
    HostError::new(host, Stage::Plan, ErrorKind::Refused, message)
}

/// What each pinner of `host` pins for it, edge by edge, as read from
/// the pinners.
pub fn peer_pins(
    inv: &Inventory,
    states: &[HostState],
    host: &HostName,
) -> Vec<(HostName, Purpose, Vec<String>)> {
    let edges = trust::edges(inv);
    trust::pinners_of(&edges, host)
        .map(|edge| {
            let state = states
                .iter()
                .find(|s| s.host.name == edge.pinner)
                .expect("state");
            let pins = state
                .facts
                .as_ref()
                .map(|f| f.pins_for(&edge.site(inv), &inv.settings))
                .unwrap_or_default();
            (edge.pinner.clone(), edge.purpose, pins)
        })
        .collect()
}

/// What happened to one host during apply.
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

async fn apply_one(conn: &SshHost, plan: &HostPlan) -> ApplyStatus {
    let script = mta::apply_script(plan);
    let failed = |kind, message| ApplyStatus::Failed(apply_error(&plan.host, kind, message));
    match conn.run_script(script.text()).await {
        Err(e) => failed(
            ErrorKind::Unreachable,
            format!("{e}; state unknown, run plan to see it"),
        ),
        Ok(out) => match mta::parse_result(&String::from_utf8_lossy(&out.stdout)) {
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
        },
    }
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
pub async fn apply_all(
    states: &[HostState],
    outcomes: &[HostOutcome],
    parallel: usize,
    monitor: &dyn Monitor,
) -> Vec<(HostName, ApplyStatus)> {
    let plans: Vec<&HostPlan> = outcomes
        .iter()
        .filter_map(|o| match o {
            HostOutcome::Planned(p) if !p.is_empty() => Some(p.as_ref()),
            _ => None,
        })
        .collect();
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
        let conn = states
            .iter()
            .find(|s| s.host.name == plan.host)
            .and_then(|s| s.conn.as_ref());
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
                return ApplyStatus::Skipped(apply_error(
                    &plan.host,
                    ErrorKind::Skipped,
                    format!("not applied: it routes to {h}, whose plan failed"),
                ));
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
                    return ApplyStatus::Skipped(apply_error(&plan.host, ErrorKind::Skipped, why));
                }
            }
            let _permit = permits.acquire().await.expect("never closed");
            monitor.event(&plan.host, Phase::Applying);
            let status = match conn {
                Some(c) => apply_one(c, plan).await,
                None => ApplyStatus::Failed(apply_error(
                    &plan.host,
                    ErrorKind::Unreachable,
                    "no connection".into(),
                )),
            };
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
            status
        }
    });
    let status: Vec<ApplyStatus> = futures::future::join_all(tasks).await;
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
    refresh(states, &[], run.parallel, run.monitor).await;
    let second = replan(inv, states, externals, templates, &crate::keys::Generate);
    let again = apply_all(states, &second.outcomes, run.parallel, run.monitor).await;
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

/// After apply (or for `verify`): read every host again, running on each
/// backup the verification checks of the routes `intended` planned, and
/// plan again (rotating nothing); hosts that still have changes did not
/// converge.
async fn converged(
    inv: &Inventory,
    states: &mut [HostState],
    externals: &[ExternalState],
    intended: &[HostOutcome],
    templates: &Templates,
    parallel: usize,
    monitor: &dyn Monitor,
) -> Vec<HostOutcome> {
    let extras: Vec<String> = states
        .iter()
        .zip(intended)
        .map(|(s, o)| match (o, &s.facts) {
            (HostOutcome::Planned(p), Ok(f)) => mta::verify_snippet(p, f, inv),
            _ => String::new(),
        })
        .collect();
    refresh(states, &extras, parallel, monitor).await;
    // Only whether anything is left to do: no key needs to be real.
    let placeholders = crate::keys::Placeholders::default();
    let outcomes = replan(inv, states, externals, templates, &placeholders).outcomes;
    report_planned(&outcomes, monitor, Phase::Done);
    outcomes
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

/// The end of every changing run: read every host again (with the
/// backups' verification checks), plan again to prove convergence, and,
/// when `verify`, check the pinned routes live.
pub async fn settle(
    inv: &Inventory,
    states: &mut [HostState],
    externals: &[ExternalState],
    intended: &[HostOutcome],
    templates: &Templates,
    run: Progress<'_>,
    verify: bool,
) -> (Vec<HostOutcome>, Vec<crate::verify::Check>) {
    let Progress { parallel, monitor } = run;
    // The controller's probes run while the hosts are read again.
    let (after, probes) = futures::join!(
        converged(inv, states, externals, intended, templates, parallel, monitor),
        async {
            match verify {
                true => Some(crate::verify::probe(inv).await),
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

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn rotate_selects_named_hosts_or_all() {
        let text = "[hosts.a]\nssh = \"a\"\nmx = \"a.example\"\n\
                    [hosts.b]\nssh = \"b\"\nmx = \"b.example\"\n";
        let inv = crate::inventory::parse(std::path::Path::new("m.toml"), text).unwrap();
        let names = |r: Rotation| r.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(Rotation::select(&inv, &[], false).unwrap()),
            ["a", "b"]
        );
        let one = Rotation::select(&inv, &["b".into()], true).unwrap();
        assert!(one.compromised);
        assert_eq!(names(one), ["b"]);
        assert_eq!(
            Rotation::select(&inv, &["c".into()], false).unwrap_err(),
            "rotate: no host c in m.toml"
        );
        assert_eq!(
            Rotation::select(&inv, &[], true).unwrap_err(),
            "--compromised needs the names of the compromised hosts"
        );
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
        relay.changes.push(crate::plan::FileChange {
            path: "/etc/postfix/main.cf".into(),
            action: crate::plan::Action::Modify,
            old: None,
            new: None,
            mode: 0o644,
            group: 0,
        });
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
        let results = rt.block_on(apply_all(&[], &outcomes, 2, &crate::progress::Silent));
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

    #[test]
    fn mutual_backups_with_new_keys_terminate() {
        let a = plan("a", true, &["b"]);
        let b = plan("b", true, &["a"]);
        let w = waves(&[&a, &b]);
        assert!(w.iter().all(|&x| x <= 2), "{w:?}");
    }
}
