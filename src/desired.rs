//! Desired state, MTA-neutral: which keys each host serves and stages, and
//! which pins each host keeps: one per trust edge on which it is the
//! pinner (see [`crate::trust`]). A pure function of the inventory and the
//! keys found on the hosts (new keys come from [`tls::generate`]).

use time::OffsetDateTime;

use crate::inventory::{DnsName, Host, HostName, Inventory, Recipient, Settings};
use crate::tls::{self, Certificate, Fingerprint, Identity, SecretPem};
use crate::trust::{self, Edge, Purpose};

/// A key slot as found on a host: either part may be missing.
#[derive(Debug, Clone, Default)]
pub struct StoredPair {
    pub key: Option<SecretPem>,
    pub cert: Option<String>,
}

/// The key slots mxpin keeps on every host.
#[derive(Debug, Clone, Default)]
pub struct StoredKeys {
    pub current: StoredPair,
    pub next: StoredPair,
}

/// How a slot's identity came about in this plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Found on the host and still good.
    Kept,
    /// New key generated for this plan.
    Generated,
    /// Same key, new certificate (the reason says why).
    Reissued(String),
    /// The host's staged next key, now the one it serves.
    Promoted,
}

#[derive(Debug, Clone)]
pub struct Slot {
    pub identity: Identity,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct HostKeys {
    pub current: Slot,
    pub next: Slot,
    /// With certificate pins, a current certificate close to expiry cannot
    /// be re-issued in place (its fingerprint would change under the
    /// peers): the host must rotate to its pinned next key instead.
    pub renewal_due: bool,
    /// The certificate of the current key as found on the host before
    /// this plan (`None` on a host without one): what it serves until the
    /// plan is applied.
    pub before: Option<Certificate>,
}

impl HostKeys {
    /// Some slot holds a key generated for this plan.
    pub fn generates(&self) -> bool {
        [&self.current, &self.next]
            .iter()
            .any(|s| s.origin == Origin::Generated)
    }
}

impl HostKeys {
    /// Whether this plan changes the key the host serves (as pinned).
    pub fn switches(&self, inv: &Inventory) -> bool {
        let s = &inv.settings;
        self.before.as_ref().map(|c| crate::pins::of(c, s))
            != Some(crate::pins::of(&self.current.identity.cert, s))
    }

    /// What peers pin for this host: current first, then next.
    pub fn pins(&self, inv: &Inventory) -> Vec<Fingerprint> {
        let (current, next) = self.pin_pair(&inv.settings);
        vec![current, next]
    }

    /// The fingerprints of current and next in the inventory's digest and
    /// pin kind: the form every pin and every message uses.
    pub fn pin_pair(&self, s: &Settings) -> (Fingerprint, Fingerprint) {
        (
            crate::pins::of(&self.current.identity.cert, s),
            crate::pins::of(&self.next.identity.cert, s),
        )
    }
}

/// Mail for `domain` goes to `next_hop` only over TLS with one of `pins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub domain: DnsName,
    pub primary: HostName,
    pub next_hop: String,
    pub pins: Vec<Fingerprint>,
    /// The primary's current and next certificates (Exim pins these).
    pub certs: Vec<Certificate>,
}

/// A domain this host accepts as a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    pub domain: DnsName,
    /// `None`: any address of the domain.
    pub recipients: Option<Vec<Recipient>>,
}

/// One trust edge on which this host is the pinner, with what it pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub edge: Edge,
    /// Fingerprints in the inventory's digest and pin kind: the pinned
    /// host's current and next keys, and, while both ends of a cycle of
    /// edges switch keys in the same run, the key it served before.
    pub pins: Vec<Fingerprint>,
    /// The certificates behind the pins (Exim pins these).
    pub certs: Vec<Certificate>,
}

#[derive(Debug, Clone)]
pub struct HostDesired {
    pub host: Host,
    pub keys: HostKeys,
    /// Every edge on which this host is the pinner.
    pub pinned: Vec<Pinned>,
    /// Some pin is kept only for the run in which its key is replaced, or
    /// the host waits for its relay: a second round of the same apply
    /// finishes what this one starts.
    pub transitional: bool,
    /// The managed relayhost this host does not send through yet, because
    /// the relay does not accept the key it will present (see `held`).
    pub waits_for_relay: Option<HostName>,
    pub routes: Vec<Route>,
    pub relays: Vec<Relay>,
    /// The pinned certificate of each external server this host polls with
    /// fetchmail, as the controller read it this run (or why it could not).
    pub external_certs: std::collections::BTreeMap<HostName, Result<Certificate, String>>,
}

impl HostDesired {
    /// The managed relayhost this host sends its outgoing mail through.
    pub fn smarthost(&self) -> Option<&Pinned> {
        self.pinned
            .iter()
            .find(|p| p.edge.purpose == Purpose::Smarthost)
    }

    /// The hosts that relay through this one, with their client keys.
    pub fn clients(&self) -> impl Iterator<Item = &Pinned> {
        self.pinned
            .iter()
            .filter(|p| p.edge.purpose == Purpose::ClientCertificate)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host}: {message}")]
pub struct DesiredError {
    pub host: HostName,
    pub message: String,
}

/// Which slot is being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    Current,
    Next,
}

impl SlotKind {
    fn name(self) -> &'static str {
        match self {
            SlotKind::Current => "current",
            SlotKind::Next => "next",
        }
    }
}

/// Decides one slot: keep what is there if it is sound, re-issue the
/// certificate when only the certificate is wrong or close to expiry,
/// generate when there is no key. A key that is present but unreadable is an
/// error, never replaced silently: the admin must decide to throw it away.
///
/// Returns the slot and whether a rotation is due instead of a renewal (a
/// current certificate near expiry under certificate pins).
pub fn resolve_slot(
    inv: &Inventory,
    host: &Host,
    kind: SlotKind,
    stored: &StoredPair,
    now: OffsetDateTime,
    generate: &mut dyn FnMut() -> Result<Identity, tls::TlsError>,
) -> Result<(Slot, bool), DesiredError> {
    let s = &inv.settings;
    let err = |message: String| DesiredError {
        host: host.name.clone(),
        message,
    };
    let what = format!("{} key", kind.name());
    let Some(key) = &stored.key else {
        let identity = generate().map_err(|e| err(format!("{what}: {e}")))?;
        return Ok((
            Slot {
                identity,
                origin: Origin::Generated,
            },
            false,
        ));
    };
    let unusable = |e: tls::TlsError| {
        err(format!(
            "{what}: {e}; move the file away to let mxpin generate a new key"
        ))
    };
    let renew_at = now.unix_timestamp() + i64::from(s.renew_days) * 86_400;
    let reason = match stored.cert.as_deref().map(Certificate::from_pem) {
        None => "certificate missing".to_string(),
        Some(Err(e)) => format!("certificate unreadable ({e})"),
        Some(Ok(cert)) => {
            let kept = |due| {
                Ok((
                    Slot {
                        identity: Identity {
                            key: key.clone(),
                            cert: cert.clone(),
                        },
                        origin: Origin::Kept,
                    },
                    due,
                ))
            };
            if !tls::key_matches(key, &cert).map_err(unusable)? {
                "certificate is not for this key".to_string()
            } else if !cert.dns_names().iter().any(|n| n == host.mx.as_str()) {
                format!("certificate does not name {}", host.mx)
            } else if cert.not_after() > renew_at {
                return kept(false);
            } else if kind == SlotKind::Current
                && trust::certificate_pinned(inv, &trust::edges(inv), &host.name)
            {
                return kept(true);
            } else if cert.not_after() <= now.unix_timestamp() {
                "certificate expired".to_string()
            } else {
                let days = (cert.not_after() - now.unix_timestamp()) / 86_400;
                format!("certificate expires in {days} days")
            }
        }
    };
    let cert = tls::reissue(key, host.mx.as_str(), s.valid_days, now).map_err(unusable)?;
    Ok((
        Slot {
            identity: Identity {
                key: key.clone(),
                cert,
            },
            origin: Origin::Reissued(reason),
        },
        false,
    ))
}

/// Keys for one host from what is stored there.
pub fn resolve_keys(
    inv: &Inventory,
    host: &Host,
    stored: &StoredKeys,
    now: OffsetDateTime,
) -> Result<HostKeys, DesiredError> {
    resolve_keys_with(inv, host, stored, now, &crate::keys::Generate)
}

/// [`resolve_keys`], with new keys from `new_keys` (see [`crate::keys`]).
pub fn resolve_keys_with(
    inv: &Inventory,
    host: &Host,
    stored: &StoredKeys,
    now: OffsetDateTime,
    new_keys: &dyn crate::keys::NewKeys,
) -> Result<HostKeys, DesiredError> {
    let s = &inv.settings;
    let mut generate = || new_keys.new_key(s, host, now);
    let (current, renewal_due) = resolve_slot(
        inv,
        host,
        SlotKind::Current,
        &stored.current,
        now,
        &mut generate,
    )?;
    let (next, _) = resolve_slot(inv, host, SlotKind::Next, &stored.next, now, &mut generate)?;
    Ok(HostKeys {
        current,
        next,
        renewal_due,
        before: stored
            .current
            .cert
            .as_deref()
            .and_then(|c| Certificate::from_pem(c).ok()),
    })
}

/// The keys after a rotation: the staged next key becomes current and a
/// fresh next key is staged. With public-key pins the promoted key gets a
/// fresh certificate (same pin); with certificate pins it keeps the
/// certificate the peers pinned.
pub fn rotate(
    inv: &Inventory,
    host: &Host,
    keys: &HostKeys,
    now: OffsetDateTime,
) -> Result<HostKeys, DesiredError> {
    rotate_with(inv, host, keys, now, &crate::keys::Generate)
}

/// [`rotate`], with the fresh next key from `new_keys`.
pub fn rotate_with(
    inv: &Inventory,
    host: &Host,
    keys: &HostKeys,
    now: OffsetDateTime,
    new_keys: &dyn crate::keys::NewKeys,
) -> Result<HostKeys, DesiredError> {
    let s = &inv.settings;
    let err = |e: tls::TlsError| DesiredError {
        host: host.name.clone(),
        message: format!("rotation: {e}"),
    };
    let next = &keys.next.identity;
    let cert = match s.pin {
        tls::PinKind::PublicKey => {
            tls::reissue(&next.key, host.mx.as_str(), s.valid_days, now).map_err(err)?
        }
        tls::PinKind::Certificate => next.cert.clone(),
    };
    Ok(HostKeys {
        current: Slot {
            identity: Identity {
                key: next.key.clone(),
                cert,
            },
            origin: Origin::Promoted,
        },
        next: Slot {
            identity: new_keys.new_key(s, host, now).map_err(err)?,
            origin: Origin::Generated,
        },
        renewal_due: false,
        before: keys.before.clone(),
    })
}

/// Hosts that sit on one cycle of edges with `from`, among the hosts that
/// switch keys in this run: apply can order such hosts only by breaking
/// the cycle, so their pins keep the key served before for one run.
fn on_cycle(edges: &[Edge], switching: &dyn Fn(&HostName) -> bool) -> Vec<(HostName, HostName)> {
    let live: Vec<&Edge> = edges
        .iter()
        .filter(|e| switching(&e.pinner) && switching(&e.pinned))
        .collect();
    // Bounded: each host is visited once per search.
    let reaches = |from: &HostName, to: &HostName| {
        let mut seen: Vec<&HostName> = vec![from];
        let mut todo = vec![from];
        while let Some(h) = todo.pop() {
            for e in live.iter().filter(|e| &e.pinner == h) {
                if &e.pinned == to {
                    return true;
                }
                if !seen.contains(&&e.pinned) {
                    seen.push(&e.pinned);
                    todo.push(&e.pinned);
                }
            }
        }
        false
    };
    live.iter()
        .filter(|e| reaches(&e.pinned, &e.pinner))
        .map(|e| (e.pinner.clone(), e.pinned.clone()))
        .collect()
}

/// Desired state of every host, given every host's keys (in inventory
/// host order; `Err` for hosts whose keys could not be read). A host that
/// pins a host whose keys are unknown cannot be planned: it must never pin
/// a guess. `external_certs`: the pinned certificate each external server
/// presented to the controller this run (or why not), for the hosts'
/// fetchmail polls. `held`: smarthost edges (client, relay) the client
/// must not take yet, because the relay, as read, does not accept the key
/// the client will present: the client keeps its outgoing mail where it
/// goes now for this run, and a second round takes the edge.
pub fn desired(
    inv: &Inventory,
    keys: Vec<Result<HostKeys, String>>,
    external_certs: &std::collections::BTreeMap<HostName, Result<Certificate, String>>,
    held: &[(HostName, HostName)],
) -> Vec<Result<HostDesired, String>> {
    let s = &inv.settings;
    let index = |name: &HostName| {
        inv.hosts
            .iter()
            .position(|h| &h.name == name)
            .expect("validated")
    };
    let edges = trust::edges(inv);
    let switching = |h: &HostName| keys[index(h)].as_ref().is_ok_and(|k| k.switches(inv));
    let cycles = on_cycle(&edges, &switching);
    let pinned_for = |e: &Edge| -> Result<Pinned, String> {
        let k = keys[index(&e.pinned)].as_ref().map_err(|_| {
            let what = match inv.backed_up_by(&e.pinner).find(|d| d.primary == e.pinned) {
                Some(d) if e.purpose == Purpose::BackupRoute => {
                    format!("backs up {} for {}", d.name, e.pinned)
                }
                _ => format!("pins {} ({})", e.pinned, e.purpose.as_str()),
            };
            format!("not planned: it {what}, whose keys could not be read")
        })?;
        let mut certs = vec![
            k.current.identity.cert.clone(),
            k.next.identity.cert.clone(),
        ];
        let mut pins = k.pins(inv);
        if cycles.contains(&(e.pinner.clone(), e.pinned.clone())) {
            if let Some(before) = &k.before {
                let old = crate::pins::of(before, s);
                if !crate::pins::is_pinned(&pins, old.as_str()) {
                    pins.push(old);
                    certs.push(before.clone());
                }
            }
        }
        Ok(Pinned {
            edge: e.clone(),
            pins,
            certs,
        })
    };
    inv.hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let keys = keys[i].clone()?;
            let is_held = |e: &&Edge| {
                e.purpose == Purpose::Smarthost
                    && held.contains(&(e.pinner.clone(), e.pinned.clone()))
            };
            let mine: Vec<&Edge> = edges.iter().filter(|e| e.pinner == host.name).collect();
            let pinned = mine
                .iter()
                .filter(|e| !is_held(e))
                .map(|e| pinned_for(e))
                .collect::<Result<Vec<Pinned>, String>>()?;
            let transitional = pinned.iter().any(|p| p.pins.len() > 2) || mine.iter().any(is_held);
            let domains: Vec<_> = inv.backed_up_by(&host.name).collect();
            let routes = domains
                .iter()
                .map(|d| {
                    let p = pinned
                        .iter()
                        .find(|p| {
                            p.edge.purpose == Purpose::BackupRoute && p.edge.pinned == d.primary
                        })
                        .expect("every backed-up domain is an edge");
                    Route {
                        domain: d.name.clone(),
                        primary: d.primary.clone(),
                        next_hop: inv.host(&d.primary).next_hop(),
                        pins: p.pins.clone(),
                        certs: p.certs.clone(),
                    }
                })
                .collect();
            Ok(HostDesired {
                host: host.clone(),
                waits_for_relay: mine.iter().find(|e| is_held(e)).map(|e| e.pinned.clone()),
                pinned,
                transitional,
                routes,
                relays: domains
                    .iter()
                    .map(|d| Relay {
                        domain: d.name.clone(),
                        recipients: d.recipients.clone(),
                    })
                    .collect(),
                keys,
                external_certs: host
                    .fetchmail
                    .iter()
                    .map(|p| {
                        let cert = external_certs.get(&p.server).cloned().unwrap_or_else(|| {
                            Err(format!("external {} was not probed", p.server))
                        });
                        (p.server.clone(), cert)
                    })
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
