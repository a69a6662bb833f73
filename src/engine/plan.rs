//! The fleet's plan: every host from the facts read, and rotation with
//! its safety rule checked on what the pinners really have.

use super::HostState;
use time::OffsetDateTime;

use std::collections::{BTreeMap, BTreeSet};

use crate::desired::{self, HostKeys};
use crate::error::{ErrorKind, HostError, Stage};
use crate::external::ExternalState;
use crate::inventory::{Host, HostName, Inventory};
use crate::mta::{self};
use crate::plan::HostOutcome;
use crate::templates::Templates;
use crate::tls::Fingerprint;
use crate::trust::{self, Edge, Purpose};

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
                if !compromised && !crate::pins::is_pinned(&pinned, next_pin.as_str()) {
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
                        && crate::pins::is_pinned(
                            &f.pins_for(&trust::PinSite::ClientCerts, &inv.settings),
                            pin.as_str(),
                        )
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
pub(super) fn plan_error(host: &HostName, message: String) -> HostError {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
