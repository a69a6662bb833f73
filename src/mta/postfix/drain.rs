//! Deferred mail after a fix: the backed-up domains whose route or pins
//! change in a plan. Apply retries their deferred mail right after the
//! reload (see [`super::script`]), instead of leaving it to the retry
//! timer; mail for every other domain keeps its schedule.

use std::collections::BTreeMap;

use super::maincf::{split_list, MainCf};
use super::{db_suffix, table_keys, table_value, uses_table, PostfixFacts};
use crate::desired::HostDesired;
use crate::inventory::Inventory;

/// What Postfix does with mail for a domain through mxpin's tables: the
/// transport entry and the TLS policy of its next-hop.
type Route = (Option<String>, Option<String>);

/// The route of `domain` in the given texts of the transport and tls_policy
/// tables (`None`: the table is not in use).
fn route_of(transport: Option<&str>, policy: Option<&str>, domain: &str) -> Route {
    let entry = transport.and_then(|t| table_value(t, domain));
    // `smtp:[mx]:port`: the policy key is the next-hop as written.
    let hop = entry.and_then(|v| v.split_once(':')).map(|(_, hop)| hop);
    let policy = hop.and_then(|h| policy.and_then(|p| table_value(p, h)));
    (entry.map(str::to_string), policy.map(str::to_string))
}

/// The text of mxpin's `table` as Postfix reads it now: its database is
/// fresh, and `param` (main.cf's value, else the effective one) names it
/// first (no older entry overrides it).
fn seen<'a>(
    f: &'a PostfixFacts,
    main_cf: &MainCf,
    owned: &str,
    table: &str,
    param: &str,
) -> Option<&'a str> {
    let ours = format!("{}:{owned}/{table}", f.db_type);
    let value = main_cf
        .get(param)
        .or_else(|| f.effective.get(param).cloned())?;
    let first = split_list(&value).into_iter().next();
    let suffix = db_suffix(&f.db_type)?;
    let fresh = f.fresh.get(table)?.iter().any(|s| s == suffix);
    if first.as_deref() != Some(ours.as_str()) || !fresh {
        return None;
    }
    f.files.get(table).map(|found| found.content.raw())
}

/// The domains whose route (transport entry) or pins (the TLS policy of
/// their next-hop, and the digest it is written in) change on this host
/// when the plan is applied: a new backup role, a re-pinned or moved
/// primary, a backup role that ends, a table whose database Postfix does not
/// read yet. Compared with what Postfix sees now, so a table rebuilt with
/// the same entries changes nothing. `tables` are the rendered tables,
/// `new_main` main.cf after the plan.
pub(super) fn domains(
    d: &HostDesired,
    f: &PostfixFacts,
    inv: &Inventory,
    tables: &BTreeMap<&str, String>,
    new_main: &str,
    owned: &str,
) -> Vec<String> {
    let old_main = MainCf::parse(&f.main_cf);
    let old_transport = seen(f, &old_main, owned, "transport", "transport_maps");
    let old_policy = seen(f, &old_main, owned, "tls_policy", "smtp_tls_policy_maps");
    let new_table = |t: &str| uses_table(t, d, inv).then(|| tables[t].as_str());
    let (new_transport, new_policy) = (new_table("transport"), new_table("tls_policy"));
    let digest = "smtp_tls_fingerprint_digest";
    let digest_changes = old_main.get(digest) != MainCf::parse(new_main).get(digest);

    let mut candidates: Vec<String> = d.routes.iter().map(|r| r.domain.to_string()).collect();
    candidates.extend(
        old_transport
            .into_iter()
            .flat_map(table_keys)
            .map(str::to_string),
    );
    let mut out: Vec<String> = Vec::new();
    for domain in candidates {
        if out.iter().any(|o| o.eq_ignore_ascii_case(&domain)) {
            continue;
        }
        let old = route_of(old_transport, old_policy, &domain);
        let new = route_of(new_transport, new_policy, &domain);
        if old == (None, None) && new == (None, None) {
            continue;
        }
        if old != new || digest_changes {
            out.push(domain.to_ascii_lowercase());
        }
    }
    out
}
