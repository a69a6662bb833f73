//! The last stage: what every host serves and pins, checked. From the
//! facts of a converged read (with each MTA's checks run on the host, see
//! [`mta::verify_snippet`]) and a live probe, from the controller, of
//! every SMTP server some edge pins.
//!
//! Each check is typed (a [`Kind`], a [`Status`], the host where a
//! failure is fixed), so that rendering, `--json` and exit codes read the
//! same fields.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::engine::HostState;
use crate::external::ExternalState;
use crate::inventory::{HostName, Inventory};
use crate::limits::PROBE_TIMEOUT;
use crate::mta;
use crate::plan::HostOutcome;
use crate::tls::{self, Certificate};
use crate::trust;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Passes, but deserves attention (a certificate near its expiry).
    Warn,
    Fail,
}

/// What a check looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The host's facts could not be read (or it could not be planned).
    Facts,
    /// A key slot of the host: the key matches its certificate, which is
    /// valid (a certificate check: it has `not_after`).
    Key,
    /// A lookup of one of mxpin's tables on the host gives what the
    /// inventory means (Postfix `postmap -q`).
    Lookup,
    /// A live pinned handshake from the host to its next-hop
    /// (`posttls-finger`).
    Handshake,
    /// The MTA's own routing of a domain to its pinned next-hop
    /// (`exim -bt`).
    Routing,
    /// An external server the host uses serves a pinned certificate, seen
    /// from the controller.
    External,
    /// A managed peer serves a key the host pins, seen from the
    /// controller.
    Served,
    /// The host still differs from the inventory.
    Drift,
    /// The TLSA records the validating resolver returns for the host
    /// (validated) hold its served and staged keys (`[dns]`).
    Dane,
}

/// One line of the verification table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Names the check, the same every run for the same inventory:
    /// `host:kind:subject`.
    pub id: String,
    pub kind: Kind,
    /// The host the check is about.
    pub host: HostName,
    /// The host where a failure is to be fixed: the check's own host, or
    /// the peer when the peer did not answer (a stopped MTA, a closed
    /// port).
    pub fix_on: HostName,
    /// The next-hop (or domain) checked.
    pub route: Option<String>,
    /// The managed host at the other end of the route.
    pub peer: Option<HostName>,
    pub status: Status,
    pub what: String,
    /// The end of the checked certificate's validity (unix time).
    pub not_after: Option<i64>,
    /// Whole days from the check to `not_after`.
    pub days_left: Option<i64>,
}

impl Check {
    fn new(host: &HostName, kind: Kind, subject: &str, status: Status, what: String) -> Self {
        let mut id = format!("{host}:{}", kind_name(kind));
        if !subject.is_empty() {
            id.push(':');
            id.push_str(subject);
        }
        Check {
            id,
            kind,
            host: host.clone(),
            fix_on: host.clone(),
            route: None,
            peer: None,
            status,
            what,
            not_after: None,
            days_left: None,
        }
    }

    /// A DANE check of `host`'s records at `owner` (`_25._tcp.MX.`).
    pub fn dane(host: &HostName, owner: &str, status: Status, what: String) -> Self {
        let mut c = Check::new(host, Kind::Dane, owner, status, what);
        c.route = Some(owner.to_string());
        c
    }

    /// A failing check about the whole host.
    pub fn host_failed(host: &HostName, kind: Kind, what: String) -> Self {
        Check::new(host, kind, "", Status::Fail, what)
    }

    pub fn ok(&self) -> bool {
        self.status != Status::Fail
    }

    /// Whether the check reads what a peer serves, from the controller.
    pub fn seen_from_controller(&self) -> bool {
        matches!(self.kind, Kind::External | Kind::Served)
    }

    fn certificate(mut self, cert: &Certificate, now: OffsetDateTime) -> Self {
        self.not_after = Some(cert.not_after());
        self.days_left = Some(days_left(cert, now));
        self
    }

    /// The check as `--json` prints it. `ok` and `warning` repeat
    /// `status` for scripts written before it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "kind": self.kind,
            "host": self.host,
            "fix_on": self.fix_on,
            "route": self.route,
            "peer": self.peer,
            "status": self.status,
            "ok": self.ok(),
            "warning": self.status == Status::Warn,
            "what": self.what,
            "not_after": self.not_after.map(tls::format_time),
            "days_left": self.days_left,
        })
    }
}

fn kind_name(kind: Kind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn days_left(cert: &Certificate, now: OffsetDateTime) -> i64 {
    (cert.not_after() - now.unix_timestamp()).div_euclid(86_400)
}

/// The worst status of `checks` (`Ok` for none).
pub fn overall(checks: &[Check]) -> Status {
    checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok)
}

/// The hosts where failed checks are to be fixed, in the order of the
/// checks' hosts.
pub fn fix_on(checks: &[Check]) -> Vec<&HostName> {
    let mut hosts: Vec<&HostName> = Vec::new();
    for c in checks {
        if !hosts.contains(&&c.host) {
            hosts.push(&c.host);
        }
    }
    hosts.retain(|h| checks.iter().any(|c| &&c.fix_on == h && !c.ok()));
    hosts
}

/// How many pinned routes the controller saw served.
pub fn routes_seen(checks: &[Check]) -> usize {
    checks.iter().filter(|c| c.seen_from_controller()).count()
}

/// `verify --json`: every check and the overall status.
pub fn to_json(checks: &[Check]) -> serde_json::Value {
    let status = overall(checks);
    serde_json::json!({
        "status": status,
        "ok": status != Status::Fail,
        "checks": checks.iter().map(Check::to_json).collect::<Vec<_>>(),
    })
}

/// What the controller's probes saw: the leaf served at each address.
#[derive(Debug, Default)]
pub struct Probes(BTreeMap<String, Result<Certificate, String>>);

/// What one probe saw at an address: the leaf it was served, or why not.
pub type Probed = (String, Result<Certificate, String>);

/// The addresses the controller probes, with the SNI name each is asked
/// with: every SMTP server some edge pins, once each; only those of host
/// `pinned` when given.
fn probe_targets(
    inv: &Inventory,
    pinned: Option<&HostName>,
) -> Vec<(String, Option<&'static str>)> {
    let mut addresses: Vec<(String, Option<&str>)> = trust::edges(inv)
        .iter()
        .filter(|e| pinned.is_none_or(|p| &e.pinned == p))
        .filter_map(|e| Some((e.probe_address(inv)?, e.server_name())))
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

async fn probe_each(targets: &[(String, Option<&'static str>)]) -> Vec<Probed> {
    let probes = targets.iter().map(|(addr, name)| async move {
        let got =
            crate::probe::probe_named(addr, crate::probe::StartTls::Smtp, PROBE_TIMEOUT, *name)
                .await
                .map_err(|e| e.to_string())
                .and_then(|chain| {
                    chain
                        .into_iter()
                        .next()
                        .ok_or_else(|| "no certificate".into())
                });
        (addr.clone(), got)
    });
    futures::future::join_all(probes).await
}

/// Probes the SMTP servers of host `pinned` that some edge pins: what the
/// run's first read does for `verify` (and `apply`) as soon as it holds
/// the host, so that these probes overlap the other hosts' reads.
pub async fn probe_host(inv: &Inventory, pinned: &HostName) -> Vec<Probed> {
    probe_each(&probe_targets(inv, Some(pinned))).await
}

/// Probes every SMTP server some edge pins, once each, all at once, but
/// those in `known`: probes this run already took while it held the host,
/// which nothing has changed since.
pub async fn probe(inv: &Inventory, known: Vec<Probed>) -> Probes {
    let known: BTreeMap<String, Result<Certificate, String>> = known.into_iter().collect();
    let targets: Vec<_> = probe_targets(inv, None)
        .into_iter()
        .filter(|(addr, _)| !known.contains_key(addr))
        .collect();
    let mut all = known;
    all.extend(probe_each(&targets).await);
    Probes(all)
}

/// The checks of the keys a host stores.
fn key_checks(inv: &Inventory, host: &HostName, f: &mta::Facts, now: OffsetDateTime) -> Vec<Check> {
    let keys = f.stored_keys();
    let mut checks = Vec::new();
    for (slot, pair) in [("current", &keys.current), ("next", &keys.next)] {
        let cert = pair.cert.as_deref().map(Certificate::from_pem);
        let check = match (&pair.key, cert) {
            (Some(key), Some(Ok(cert))) => {
                let matches = tls::key_matches(key, &cert).unwrap_or(false);
                let left = days_left(&cert, now);
                let soon = left <= i64::from(inv.settings.renew_days);
                let status = match (matches && left > 0, soon) {
                    (false, _) => Status::Fail,
                    (true, true) => Status::Warn,
                    (true, false) => Status::Ok,
                };
                let what = format!(
                    "{slot} key {} its certificate, which expires {} ({left} days){}",
                    if matches { "matches" } else { "DOES NOT match" },
                    tls::format_time(cert.not_after()),
                    if soon { ": renew with mxpin apply" } else { "" }
                );
                Check::new(host, Kind::Key, slot, status, what).certificate(&cert, now)
            }
            _ => Check::new(
                host,
                Kind::Key,
                slot,
                Status::Fail,
                format!("no usable {slot} key and certificate"),
            ),
        };
        checks.push(check);
    }
    checks
}

/// Checks what is served against what is pinned, from the facts (with
/// checks) of a converged read and the controller's `probes`. Pure.
pub fn checks(
    inv: &Inventory,
    states: &[HostState],
    externals: &[ExternalState],
    intended: &[HostOutcome],
    probes: &Probes,
    now: OffsetDateTime,
) -> Vec<Check> {
    let s = &inv.settings;
    let served = &probes.0;
    let mut checks = Vec::new();
    for (state, outcome) in states.iter().zip(intended) {
        let host = &state.host.name;
        let f = match &state.facts {
            Ok(f) => f,
            Err(e) => {
                checks.push(Check::host_failed(host, Kind::Facts, e.message.clone()));
                continue;
            }
        };
        checks.extend(key_checks(inv, host, f, now));
        let HostOutcome::Planned(plan) = outcome else {
            continue;
        };
        for c in mta::route_checks(plan, f) {
            let peer = plan
                .pinned
                .iter()
                .find(|p| p.next_hop.as_deref() == Some(c.route.as_str()))
                .map(|p| p.pinned.clone());
            let status = if c.ok { Status::Ok } else { Status::Fail };
            let mut check = Check::new(host, c.kind, &c.id, status, c.what);
            // A peer that did not answer is where the fix is.
            if let (Some(peer), true) = (&peer, c.peer_down) {
                check.fix_on = peer.clone();
            }
            check.route = Some(c.route);
            check.peer = peer;
            checks.push(check);
        }
        // External servers this host relays through or polls, as the
        // controller sees them, against the inventory's pins.
        let used = state
            .host
            .relayhost
            .iter()
            .filter_map(crate::inventory::Relayhost::external)
            .chain(state.host.fetchmail.iter().map(|p| &p.server));
        let mut seen_ext = Vec::new();
        for name in used {
            if seen_ext.contains(&name) {
                continue;
            }
            seen_ext.push(name);
            let e = inv.external(name);
            let mut leaf = None;
            let (status, what) = match externals.iter().find(|x| &x.name == name) {
                None => (Status::Fail, format!("external {name} was not probed")),
                Some(x) => match x.pinned_leaf(inv) {
                    Ok(l) => {
                        leaf = Some(l);
                        (
                            Status::Ok,
                            format!(
                                "external {name} serves its pinned {} (seen from the controller)",
                                l.fingerprint(s.digest, s.pin)
                            ),
                        )
                    }
                    Err(why) => (Status::Fail, why),
                },
            };
            let mut check = Check::new(host, Kind::External, name.as_str(), status, what);
            if let Some(l) = leaf {
                check = check.certificate(l, now);
            }
            check.route = Some(e.next_hop());
            checks.push(check);
        }
        // What the controller sees served, against what this host pins.
        for p in &plan.pinned {
            let (Some(addr), Some(hop)) = (&p.probe, &p.next_hop) else {
                continue;
            };
            let pinned = &p.pinned;
            let got = served.get(addr);
            let fp = match got {
                Some(Ok(cert)) => Some(cert.fingerprint(s.digest, s.pin).to_string()),
                _ => None,
            };
            let (status, what) = match (got, &fp) {
                (Some(Ok(_)), Some(fp)) if crate::pins::position(&p.pins, fp) == Some(0) => (
                    Status::Ok,
                    format!("{pinned} serves its current key {fp} on {addr} (seen from the controller)"),
                ),
                (Some(Ok(_)), Some(fp)) if crate::pins::is_pinned(&p.pins, fp) => (
                    Status::Ok,
                    format!("{pinned} serves its staged next key {fp} on {addr} (seen from the controller)"),
                ),
                (Some(Ok(_)), Some(fp)) => (
                    Status::Fail,
                    format!("{pinned} serves {fp} on {addr}, which {host} does not pin (seen from the controller)"),
                ),
                (Some(Err(e)), _) => (
                    Status::Fail,
                    format!("controller cannot probe {pinned} at {addr}: {e}"),
                ),
                _ => (Status::Fail, format!("{pinned} was not probed")),
            };
            let subject = format!("{pinned}@{addr}");
            let mut check = Check::new(host, Kind::Served, &subject, status, what);
            if let Some(Ok(cert)) = got {
                check = check.certificate(cert, now);
            }
            // Unreachable: the fix is on the pinned host.
            if matches!(got, Some(Err(_))) {
                check.fix_on = pinned.clone();
            }
            check.route = Some(hop.clone());
            check.peer = Some(pinned.clone());
            checks.push(check);
        }
    }
    checks
}

/// Adds what a converged read found still wrong: hosts that differ from
/// the inventory, and hosts that failed without a check of their own.
pub fn add_drift(checks: &mut Vec<Check>, after: &[HostOutcome]) {
    for o in after {
        match o {
            HostOutcome::Planned(p) if !p.is_empty() => checks.push(Check::host_failed(
                &p.host,
                Kind::Drift,
                "differs from the inventory: see mxpin plan".into(),
            )),
            HostOutcome::Failed(e) if !checks.iter().any(|c| c.host == e.host) => {
                checks.push(Check::host_failed(&e.host, Kind::Facts, e.message.clone()))
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(h: &str) -> HostName {
        HostName::parse(h).unwrap()
    }

    #[test]
    fn ids_are_host_kind_and_subject() {
        let c = Check::new(&name("vps"), Kind::Key, "current", Status::Ok, "x".into());
        assert_eq!(c.id, "vps:key:current");
        let c = Check::host_failed(&name("vps"), Kind::Drift, "x".into());
        assert_eq!(c.id, "vps:drift");
        assert_eq!(c.fix_on, name("vps"));
    }

    #[test]
    fn overall_is_the_worst_status() {
        let c = |s| Check::new(&name("a"), Kind::Key, "current", s, String::new());
        assert_eq!(overall(&[]), Status::Ok);
        assert_eq!(overall(&[c(Status::Ok), c(Status::Warn)]), Status::Warn);
        assert_eq!(
            overall(&[c(Status::Warn), c(Status::Fail), c(Status::Ok)]),
            Status::Fail
        );
        assert!(c(Status::Warn).ok());
        assert!(!c(Status::Fail).ok());
    }

    #[test]
    fn a_failure_names_the_host_where_the_fix_is() {
        let mut down = Check::new(
            &name("vps"),
            Kind::Served,
            "home@h:25",
            Status::Fail,
            "".into(),
        );
        down.fix_on = name("home");
        let fine = Check::new(&name("home"), Kind::Key, "current", Status::Ok, "".into());
        let checks = [down, fine];
        assert_eq!(fix_on(&checks), [&name("home")]);
        let v = to_json(&checks);
        assert_eq!(v["status"], "fail");
        assert_eq!(v["checks"][0]["kind"], "served");
        assert_eq!(v["checks"][0]["status"], "fail");
        assert_eq!(v["checks"][0]["ok"], false);
        assert_eq!(v["checks"][1]["status"], "ok");
    }

    #[test]
    fn certificate_checks_carry_expiry() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let id = tls::generate(tls::KeyAlgorithm::EcdsaP256, "a.example", 30, now).unwrap();
        let c = Check::new(&name("a"), Kind::Key, "current", Status::Ok, "".into())
            .certificate(&id.cert, now);
        assert_eq!(c.days_left, Some(30));
        let v = c.to_json();
        assert_eq!(v["days_left"], 30);
        assert_eq!(
            v["not_after"],
            tls::format_time(now.unix_timestamp() + 30 * 86_400)
        );
    }
}
