//! DANE: the inventory's `[dns]` section. mxpin publishes `_PORT._tcp.MX.
//! TLSA 3 1 1` records (SHA-256 of the public key) for the current and the
//! next key of every host that receives mail on its `smtp_port`, through
//! RFC 2136 updates signed with TSIG, and keeps every record it did not
//! write. In the trust model ([`crate::trust::dane_edges`]) the zone is one
//! more pinner: a host switches to its next key only once the validating
//! resolver returns that key's record with the AD bit, and the RRset the
//! world may have cached before the change has expired.

pub mod client;
mod config;
mod gate;
mod records;
mod state;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

pub(crate) use config::check;
pub use config::{DnsConfig, RawDns, Secret, Zone};
pub use gate::{gate_rotation, rotation_blocker};
pub use records::{HostTlsa, RecordChange, TlsaData, ZonePlan};

use crate::inventory::{HostName, Inventory};
use crate::tls::{Certificate, Digest, PinKind};
use crate::trust::{self, DaneEdge};

async fn resolve(server: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(server)
        .await
        .map_err(|e| format!("DNS server {server}: {e}"))?
        .next()
        .ok_or_else(|| format!("DNS server {server}: no address"))
}

/// What the zones hold now and what they must hold: one plan per zone
/// (empty plans included). Only the owners of `hosts` are looked at.
pub async fn plan(
    cfg: &DnsConfig,
    inv: &Inventory,
    hosts: &[HostTlsa],
) -> Result<Vec<ZonePlan>, String> {
    let edges = trust::dane_edges(inv);
    let state = state::load();
    let mut plans = Vec::new();
    for zone in &cfg.zones {
        let server = resolve(&zone.server).await?;
        let (_, negative_ttl) = client::soa(server, zone.name.as_str()).await?;
        let mut p = ZonePlan {
            zone: zone.name.to_string(),
            server: zone.server.clone(),
            ..ZonePlan::default()
        };
        for edge in edges.iter().filter(|e| e.zone == zone.name) {
            let Some(h) = hosts.iter().find(|h| h.host == edge.pinned) else {
                continue;
            };
            let now = client::tlsa(server, &edge.owner, false).await?;
            if h.admin_cert {
                for r in now.records.iter().filter(|r| state.wrote(&edge.owner, r)) {
                    p.remove.push(RecordChange {
                        owner: edge.owner.clone(),
                        ttl: 0,
                        data: r.clone(),
                        about: format!("{} serves the admin's own certificate", h.host),
                    });
                }
                continue;
            }
            let want = [("current", &h.current), ("next", &h.next)];
            let wanted: Vec<TlsaData> = want.iter().map(|(_, c)| TlsaData::of(c)).collect();
            for ((role, _), data) in want.iter().zip(&wanted) {
                if !now.records.contains(data)
                    && !p
                        .add
                        .iter()
                        .any(|r| &r.data == data && r.owner == edge.owner)
                {
                    p.add.push(RecordChange {
                        owner: edge.owner.clone(),
                        ttl: cfg.ttl,
                        data: data.clone(),
                        about: format!("{} {role} key", h.host),
                    });
                }
            }
            let retired = h.retired.as_ref().map(TlsaData::of);
            for r in &now.records {
                let ours = state.wrote(&edge.owner, r) || retired.as_ref() == Some(r);
                if ours && !wanted.contains(r) {
                    p.remove.push(RecordChange {
                        owner: edge.owner.clone(),
                        ttl: 0,
                        data: r.clone(),
                        about: format!("{} retired key", h.host),
                    });
                }
            }
            let wait = if now.records.is_empty() {
                negative_ttl
            } else {
                now.ttl
            };
            p.waits.insert(edge.owner.clone(), wait);
        }
        // Names mxpin wrote at for a host of this inventory that no longer
        // receives mail there (out of its domains, released, or on another
        // smtp_port): mxpin's records go, anything else stays.
        for (owner, host) in stale_owners(inv, &edges, &state) {
            if cfg.zone_of(owner_mx(owner)).map(|z| &z.name) != Some(&zone.name) {
                continue;
            }
            let now = client::tlsa(server, owner, false).await?;
            for r in now.records.iter().filter(|r| state.wrote(owner, r)) {
                p.remove.push(RecordChange {
                    owner: owner.to_string(),
                    ttl: 0,
                    data: r.clone(),
                    about: format!("{host} no longer receives mail here"),
                });
            }
        }
        plans.push(p);
    }
    Ok(plans)
}

/// The MX name of a TLSA owner name (`_25._tcp.home.example.net.`).
fn owner_mx(owner: &str) -> &str {
    let rest = owner.strip_prefix('_').unwrap_or(owner);
    rest.split_once("._tcp.").map_or(owner, |(_, mx)| mx)
}

/// Owners in the state that belong to a host of the inventory (by its MX
/// name) but to none of its DANE edges, with that host. Owners of names no
/// host has are left alone: another inventory on this controller may own
/// them.
fn stale_owners<'a>(
    inv: &'a Inventory,
    edges: &[trust::DaneEdge],
    state: &'a state::State,
) -> Vec<(&'a str, &'a HostName)> {
    state
        .owners()
        .filter(|o| !edges.iter().any(|e| e.owner == *o))
        .filter_map(|o| {
            let mx = owner_mx(o).trim_end_matches('.');
            inv.hosts
                .iter()
                .find(|h| h.mx.as_str() == mx)
                .map(|h| (o, &h.name))
        })
        .collect()
}

/// Sends each non-empty plan as one update and remembers, on the
/// controller, which records mxpin wrote and since when.
pub async fn apply(cfg: &DnsConfig, plans: &[ZonePlan]) -> Result<Vec<String>, String> {
    let pending: Vec<&ZonePlan> = plans.iter().filter(|p| !p.is_empty()).collect();
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let secret = Secret::read(&cfg.tsig_secret_file)?;
    let mut state = state::load();
    let mut done = Vec::new();
    for p in pending {
        let server = resolve(&p.server).await?;
        let mut changes: Vec<client::Change<'_>> = p
            .remove
            .iter()
            .map(|r| client::Change::Delete {
                owner: &r.owner,
                data: &r.data,
            })
            .collect();
        changes.extend(p.add.iter().map(|r| client::Change::Add {
            owner: &r.owner,
            ttl: r.ttl,
            data: &r.data,
        }));
        client::update(
            server,
            &p.zone,
            &cfg.tsig_key_name,
            &cfg.tsig_algorithm,
            &secret,
            &changes,
        )
        .await?;
        let now = state::now();
        for r in &p.remove {
            state.forget(&r.owner, &r.data);
        }
        for r in &p.add {
            let wait = p.waits.get(&r.owner).copied().unwrap_or(r.ttl);
            state.record(&r.owner, &r.data, now, wait);
        }
        state.save()?;
        done.push(format!(
            "dns zone {}: added {}, removed {}",
            p.zone,
            crate::words::count(p.add.len(), "record", "records"),
            p.remove.len()
        ));
    }
    Ok(done)
}

/// The keys each host has now (as read), for publishing after apply; the
/// retired key of each host the run rotated.
pub fn hosts_from_facts(
    states: &[crate::engine::HostState],
    planned: &[HostTlsa],
) -> Vec<HostTlsa> {
    states
        .iter()
        .filter_map(|s| {
            let keys = s.facts.as_ref().ok()?.stored_keys();
            let cert = |p: &crate::desired::StoredPair| {
                p.cert
                    .as_deref()
                    .and_then(|c| Certificate::from_pem(c).ok())
            };
            let (current, next) = (cert(&keys.current)?, cert(&keys.next)?);
            let retired = planned
                .iter()
                .find(|h| h.host == s.host.name)
                .and_then(|h| h.retired.clone());
            Some(HostTlsa {
                host: s.host.name.clone(),
                current,
                next,
                retired,
                admin_cert: s
                    .facts
                    .as_ref()
                    .is_ok_and(|f| f.serves_admin_certificate(&s.host)),
            })
        })
        .collect()
}

/// The DNS part of a plan: per zone, the records a run would add and
/// remove for the keys the hosts end with (none without `[dns]`).
pub async fn plan_fleet(inv: &Inventory, hosts: &[HostTlsa]) -> Result<Vec<ZonePlan>, String> {
    match &inv.dns {
        None => Ok(Vec::new()),
        Some(cfg) => plan(cfg, inv, hosts).await,
    }
}

/// After apply: publishes the records of the keys the hosts now have (read
/// back from them), and removes those of the keys the run retired.
pub async fn publish(
    inv: &Inventory,
    states: &[crate::engine::HostState],
    planned: &[HostTlsa],
) -> Result<Vec<String>, String> {
    let Some(cfg) = &inv.dns else {
        return Ok(Vec::new());
    };
    let hosts = hosts_from_facts(states, planned);
    let plans = plan(cfg, inv, &hosts).await?;
    apply(cfg, &plans).await
}

/// `verify`: per DANE edge, the TLSA RRset the validating resolver returns
/// is validated (AD) and holds the records of the key the host serves
/// (current) and of the one it stages (next).
pub async fn verify(
    inv: &Inventory,
    states: &[crate::engine::HostState],
) -> Vec<crate::verify::Check> {
    let Some(cfg) = &inv.dns else {
        return Vec::new();
    };
    let hosts = hosts_from_facts(states, &[]);
    let mut checks = Vec::new();
    for edge in trust::dane_edges(inv) {
        let Some(h) = hosts.iter().find(|h| h.host == edge.pinned) else {
            continue;
        };
        if h.admin_cert {
            checks.push(crate::verify::Check::dane(
                &h.host,
                &edge.owner,
                crate::verify::Status::Warn,
                format!(
                    "DANE: no TLSA records at {}: {} serves the admin's own certificate to \
                     DANE senders (mxpin's keys only to its peers)",
                    edge.owner, h.host
                ),
            ));
            continue;
        }
        let seen = match resolve(&cfg.resolver).await {
            Ok(r) => client::tlsa(r, &edge.owner, true).await,
            Err(e) => Err(e),
        };
        let (ok, what) = match seen {
            Err(e) => (false, format!("DANE: resolver {}: {e}", cfg.resolver)),
            Ok(a) if !a.authentic => (
                false,
                format!(
                    "DANE: {} TLSA not validated by the resolver {} (no AD bit)",
                    edge.owner, cfg.resolver
                ),
            ),
            Ok(a) => {
                let missing: Vec<String> = [("current", &h.current), ("next", &h.next)]
                    .iter()
                    .filter(|(_, c)| !a.records.contains(&TlsaData::of(c)))
                    .map(|(role, c)| format!("{role} key ({})", TlsaData::of(c).text()))
                    .collect();
                if missing.is_empty() {
                    (
                        true,
                        format!(
                            "DANE: {} TLSA validated, holds the served and the staged key",
                            edge.owner
                        ),
                    )
                } else {
                    (
                        false,
                        format!(
                            "DANE: {} TLSA (validated) lacks the {}: run mxpin apply",
                            edge.owner,
                            missing.join(" and the ")
                        ),
                    )
                }
            }
        };
        let status = if ok {
            crate::verify::Status::Ok
        } else {
            crate::verify::Status::Fail
        };
        checks.push(crate::verify::Check::dane(
            &h.host,
            &edge.owner,
            status,
            what,
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_of_hosts_that_no_longer_receive_mail_are_stale() {
        assert_eq!(owner_mx("_26._tcp.home.example.net."), "home.example.net.");
        let inv = crate::inventory::parse(
            std::path::Path::new("t.toml"),
            "[hosts.home]\nssh = \"home\"\nmx = \"home.example.net\"\n\
             [hosts.relay]\nssh = \"relay\"\nmx = \"relay.example.org\"\n",
        )
        .unwrap();
        let edges = vec![trust::DaneEdge {
            pinned: crate::inventory::HostName::parse("home").unwrap(),
            zone: crate::inventory::DnsName::parse("example.net").unwrap(),
            owner: "_26._tcp.home.example.net.".into(),
        }];
        let mut state = state::State::default();
        let d = TlsaData {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![1],
        };
        for o in [
            "_25._tcp.home.example.net.",
            "_26._tcp.home.example.net.",
            "_25._tcp.relay.example.org.",
            "_25._tcp.other.example.com.",
        ] {
            state.record(o, &d, 0, 0);
        }
        let stale: Vec<(&str, &str)> = stale_owners(&inv, &edges, &state)
            .into_iter()
            .map(|(o, h)| (o, h.as_str()))
            .collect();
        assert_eq!(
            stale,
            [
                ("_25._tcp.home.example.net.", "home"),
                ("_25._tcp.relay.example.org.", "relay")
            ]
        );
    }
}
