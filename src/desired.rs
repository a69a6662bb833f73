//! Desired state, MTA-neutral: which keys each host serves and stages, and
//! which routes (with pins) each backup needs. A pure function of the
//! inventory, the keys found on the hosts and a key generator.

use time::OffsetDateTime;

use crate::inventory::{DnsName, Host, HostName, Inventory, Recipient};
use crate::tls::{self, Certificate, Fingerprint, Identity, SecretPem};

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
}

impl HostKeys {
    /// What peers pin for this host: current first, then next.
    pub fn pins(&self, inv: &Inventory) -> Vec<Fingerprint> {
        let s = &inv.settings;
        vec![
            self.current.identity.cert.fingerprint(s.digest, s.pin),
            self.next.identity.cert.fingerprint(s.digest, s.pin),
        ]
    }
}

/// Mail for `domain` goes to `next_hop` only over TLS with one of `pins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub domain: DnsName,
    pub primary: HostName,
    pub next_hop: String,
    pub pins: Vec<Fingerprint>,
}

/// A domain this host accepts as a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    pub domain: DnsName,
    /// `None`: any address of the domain.
    pub recipients: Option<Vec<Recipient>>,
}

#[derive(Debug, Clone)]
pub struct HostDesired {
    pub host: Host,
    pub keys: HostKeys,
    pub routes: Vec<Route>,
    pub relays: Vec<Relay>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host}: {message}")]
pub struct DesiredError {
    pub host: HostName,
    pub message: String,
}

/// Decides one slot: keep what is there if it is sound, re-issue the
/// certificate when only the certificate is wrong, generate when there is no
/// key. A key that is present but unreadable is an error, never replaced
/// silently: the admin must decide to throw it away.
pub fn resolve_slot(
    host: &Host,
    slot_name: &str,
    stored: &StoredPair,
    valid_days: u32,
    now: OffsetDateTime,
    generate: &mut dyn FnMut() -> Result<Identity, tls::TlsError>,
) -> Result<Slot, DesiredError> {
    let err = |message: String| DesiredError {
        host: host.name.clone(),
        message,
    };
    let Some(key) = &stored.key else {
        let identity = generate().map_err(|e| err(format!("{slot_name} key: {e}")))?;
        return Ok(Slot {
            identity,
            origin: Origin::Generated,
        });
    };
    let path = format!("{} key", slot_name);
    let reason = match stored.cert.as_deref().map(Certificate::from_pem) {
        None => Some("certificate missing".to_string()),
        Some(Err(e)) => Some(format!("certificate unreadable ({e})")),
        Some(Ok(cert)) => {
            if !tls::key_matches(key, &cert).map_err(|e| {
                err(format!(
                    "{path}: {e}; move the file away to let mxpin generate a new key"
                ))
            })? {
                Some("certificate is not for this key".to_string())
            } else if !cert.dns_names().iter().any(|n| n == host.mx.as_str()) {
                Some(format!("certificate does not name {}", host.mx))
            } else if cert.not_after() <= now.unix_timestamp() {
                Some("certificate expired".to_string())
            } else {
                return Ok(Slot {
                    identity: Identity {
                        key: key.clone(),
                        cert,
                    },
                    origin: Origin::Kept,
                });
            }
        }
    };
    let cert = tls::reissue(key, host.mx.as_str(), valid_days, now).map_err(|e| {
        err(format!(
            "{path}: {e}; move the file away to let mxpin generate a new key"
        ))
    })?;
    Ok(Slot {
        identity: Identity {
            key: key.clone(),
            cert,
        },
        origin: Origin::Reissued(reason.expect("set on every path that gets here")),
    })
}

/// Keys for one host from what is stored there.
pub fn resolve_keys(
    inv: &Inventory,
    host: &Host,
    stored: &StoredKeys,
    now: OffsetDateTime,
) -> Result<HostKeys, DesiredError> {
    let s = &inv.settings;
    let mut generate = || tls::generate(s.key, host.mx.as_str(), s.valid_days, now);
    Ok(HostKeys {
        current: resolve_slot(
            host,
            "current",
            &stored.current,
            s.valid_days,
            now,
            &mut generate,
        )?,
        next: resolve_slot(host, "next", &stored.next, s.valid_days, now, &mut generate)?,
    })
}

/// Routes and relays of every host, given every host's keys (in inventory
/// host order; `Err` for hosts whose keys could not be read). A backup whose
/// primary's keys are unknown cannot be planned: it must never pin a guess.
pub fn desired(
    inv: &Inventory,
    keys: Vec<Result<HostKeys, String>>,
) -> Vec<Result<HostDesired, String>> {
    let pins: Vec<Option<Vec<Fingerprint>>> = keys
        .iter()
        .map(|k| k.as_ref().ok().map(|k| k.pins(inv)))
        .collect();
    let pins_of = |name: &HostName| {
        let i = inv
            .hosts
            .iter()
            .position(|h| &h.name == name)
            .expect("validated");
        pins[i].clone()
    };
    inv.hosts
        .iter()
        .zip(keys)
        .map(|(host, keys)| {
            let keys = keys?;
            let domains: Vec<_> = inv.backed_up_by(&host.name).collect();
            let mut routes = Vec::new();
            for d in &domains {
                let pins = pins_of(&d.primary).ok_or_else(|| {
                    format!(
                        "not planned: it backs up {} for {}, whose keys could not be read",
                        d.name, d.primary
                    )
                })?;
                routes.push(Route {
                    domain: d.name.clone(),
                    primary: d.primary.clone(),
                    next_hop: inv.host(&d.primary).next_hop(),
                    pins,
                });
            }
            Ok(HostDesired {
                host: host.clone(),
                routes,
                relays: domains
                    .iter()
                    .map(|d| Relay {
                        domain: d.name.clone(),
                        recipients: d.recipients.clone(),
                    })
                    .collect(),
                keys,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory;
    use std::path::Path;
    use time::Duration;

    fn inv() -> Inventory {
        inventory::parse(
            Path::new("t.toml"),
            r#"
[hosts.home]
ssh = "home"
mx = "home.example.net"
[hosts.relay]
ssh = "relay"
mx = "relay.example.org"
smtp_port = 2525
[domains."example.net"]
primary = "home"
backups = ["relay"]
"#,
        )
        .unwrap()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap()
    }

    fn stored(id: &Identity) -> StoredPair {
        StoredPair {
            key: Some(id.key.clone()),
            cert: Some(id.cert.pem().to_string()),
        }
    }

    #[test]
    fn empty_host_gets_two_distinct_fresh_keys() {
        let inv = inv();
        let k = resolve_keys(&inv, &inv.hosts[0], &StoredKeys::default(), now()).unwrap();
        assert_eq!(k.current.origin, Origin::Generated);
        assert_eq!(k.next.origin, Origin::Generated);
        let pins = k.pins(&inv);
        assert_ne!(pins[0], pins[1]);
    }

    #[test]
    fn sound_keys_are_kept_and_wrong_certificates_reissued_for_the_same_key() {
        let inv = inv();
        let home = &inv.hosts[0];
        let good = tls::generate(inv.settings.key, "home.example.net", 30, now()).unwrap();
        let wrong_name = tls::generate(inv.settings.key, "old.example.net", 30, now()).unwrap();
        let stored = StoredKeys {
            current: stored(&good),
            next: stored(&wrong_name),
        };
        let k = resolve_keys(&inv, home, &stored, now()).unwrap();
        assert_eq!(k.current.origin, Origin::Kept);
        assert_eq!(k.current.identity.cert, good.cert);
        assert!(matches!(k.next.origin, Origin::Reissued(ref r) if r.contains("does not name")));
        assert_eq!(k.next.identity.key, wrong_name.key);
        assert_eq!(
            k.next
                .identity
                .cert
                .fingerprint(inv.settings.digest, inv.settings.pin),
            wrong_name
                .cert
                .fingerprint(inv.settings.digest, inv.settings.pin),
            "public-key pin survives the reissue"
        );

        let later = now() + Duration::days(31);
        let k = resolve_keys(&inv, home, &stored, later).unwrap();
        assert_eq!(
            k.current.origin,
            Origin::Reissued("certificate expired".into())
        );
    }

    #[test]
    fn unreadable_key_is_an_error_not_a_silent_replacement() {
        let inv = inv();
        let stored = StoredKeys {
            current: StoredPair {
                key: Some(SecretPem::new("garbage".into())),
                cert: None,
            },
            next: StoredPair::default(),
        };
        let e = resolve_keys(&inv, &inv.hosts[0], &stored, now()).unwrap_err();
        assert!(e.to_string().starts_with("home: current key:"), "{e}");
    }

    #[test]
    fn backups_route_to_the_primary_next_hop_with_its_pins() {
        let inv = inv();
        let keys: Vec<Result<HostKeys, String>> = inv
            .hosts
            .iter()
            .map(|h| Ok(resolve_keys(&inv, h, &StoredKeys::default(), now()).unwrap()))
            .collect();
        let home_pins = keys[0].as_ref().unwrap().pins(&inv);
        let d: Vec<HostDesired> = desired(&inv, keys)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(d[0].routes.is_empty() && d[0].relays.is_empty());
        assert_eq!(d[1].routes.len(), 1);
        assert_eq!(d[1].routes[0].next_hop, "[home.example.net]:25");
        assert_eq!(d[1].routes[0].pins, home_pins);
        assert_eq!(d[1].relays[0].recipients, None);
    }

    #[test]
    fn backup_of_an_unreadable_primary_is_not_planned() {
        let inv = inv();
        let relay_keys = resolve_keys(&inv, &inv.hosts[1], &StoredKeys::default(), now()).unwrap();
        let d = desired(&inv, vec![Err("home: unreachable".into()), Ok(relay_keys)]);
        assert_eq!(d[0].as_ref().unwrap_err(), "home: unreachable");
        let e = d[1].as_ref().unwrap_err();
        assert!(e.contains("whose keys could not be read"), "{e}");
    }
}
