//! The DNS pinner's part of the rotation rule: a host switches only once
//! the validating resolver returns its next key's record with AD, and the
//! RRset the world may have cached before has expired.

use super::*;

/// The DANE gate of a rotation, one per DANE edge of `host`: the
/// validating resolver returns, with AD, a TLSA RRset at the edge's owner
/// that holds `next`'s record, and the RRset the world may have cached
/// before that record was added has expired. `None` when it may switch.
pub async fn rotation_blocker(
    cfg: &DnsConfig,
    edge: &DaneEdge,
    next: &Certificate,
) -> Option<String> {
    let want = TlsaData::of(next);
    let resolver = match resolve(&cfg.resolver).await {
        Ok(r) => r,
        Err(e) => return Some(e),
    };
    let seen = match client::tlsa(resolver, &edge.owner, true).await {
        Ok(a) => a,
        Err(e) => return Some(format!("resolver {}: {e}", cfg.resolver)),
    };
    let record = format!("{} TLSA {}", edge.owner, want.text());
    if !seen.records.contains(&want) {
        return Some(format!(
            "the resolver {} does not return {record} (the next key's record) yet; run `mxpin apply` first",
            cfg.resolver
        ));
    }
    if !seen.authentic {
        return Some(format!(
            "the resolver {} returns {record} without the AD bit (not validated by DNSSEC)",
            cfg.resolver
        ));
    }
    let mut state = state::load();
    let now = state::now();
    let (since, wait) = match state.since(&edge.owner, &want) {
        Some(x) => x,
        None => {
            // Published by someone else (or another controller): count
            // from now, as long as the RRset's TTL.
            state.record(&edge.owner, &want, now, seen.ttl.max(cfg.ttl));
            if let Err(e) = state.save() {
                return Some(e);
            }
            (now, seen.ttl.max(cfg.ttl))
        }
    };
    let left = (since + u64::from(wait)).saturating_sub(now);
    (left > 0).then(|| {
        format!(
            "wait {left} s more: caches may still hold {}'s TLSA RRset from before its next key's record was added (TTL {wait} s)",
            edge.owner
        )
    })
}

/// The DNS pinner's part of the rotation rule: every host that may switch
/// keys in this run (named by `rotation`, or whose current certificate is
/// within `renew_days` of expiry, which under certificate pins rotates it)
/// and whose next key's record the validating resolver does not return
/// yet, or not long enough, is held, with the reason. The engine then
/// refuses its switch as it refuses one a peer does not pin yet.
pub async fn gate_rotation(
    inv: &Inventory,
    states: &[crate::engine::HostState],
    rotation: &crate::engine::Rotation,
    now: time::OffsetDateTime,
) -> crate::engine::Rotation {
    let mut gated = rotation.clone();
    let Some(cfg) = &inv.dns else {
        return gated;
    };
    if rotation.compromised {
        return gated;
    }
    let renew_at = now.unix_timestamp() + i64::from(inv.settings.renew_days) * 86_400;
    let edges = trust::dane_edges(inv);
    for s in states {
        let host = &s.host.name;
        let Ok(facts) = s.facts.as_ref() else {
            continue;
        };
        // Its records are not published (DANE senders get the admin's
        // certificate): nothing to wait for.
        if facts.serves_admin_certificate(&s.host) {
            continue;
        }
        let stored = facts.stored_keys();
        let cert =
            |pem: &Option<String>| pem.as_deref().and_then(|c| Certificate::from_pem(c).ok());
        let renewing = cert(&stored.current.cert).is_some_and(|c| c.not_after() <= renew_at);
        if !rotation.hosts.contains(host) && !renewing {
            continue;
        }
        let Some(next) = cert(&stored.next.cert) else {
            continue;
        };
        for edge in trust::dane_pinners_of(&edges, host) {
            if let Some(why) = rotation_blocker(cfg, edge, &next).await {
                gated.held_by_dns.insert(host.clone(), why);
                break;
            }
        }
    }
    gated
}
