//! mxpin's lookup tables on a Postfix host: which it uses (a backup's
//! routes, the TLS policies of its relayhost and of [policies], the client
//! keys a relay accepts), rendered from templates and checked against the
//! inventory, with the lookups apply verifies, and notes on [policies]
//! weaker than the host's own level.

use std::collections::BTreeMap;

use super::Lookup;
use crate::desired::{HostDesired, Pinned};
use crate::inventory::{External, ExternalTls, HostName, Inventory, PolicyLevel, Relayhost};
use crate::mta::postfix::{
    client_cert_value, mastercf, table_value, PostfixFacts, CLIENT_CERTS, TABLES,
};
use crate::templates::Templates;

/// Where a host sends its outgoing mail.
pub(super) enum Smarthost<'a> {
    External(&'a External),
    /// A managed host, pinned both ways.
    Host(&'a Pinned),
}

impl Smarthost<'_> {
    /// The relayhost value: `[mx]:port`, also its tls_policy key.
    pub(super) fn next_hop(&self, inv: &Inventory) -> String {
        match self {
            Smarthost::External(e) => e.next_hop(),
            Smarthost::Host(p) => inv.host(&p.edge.pinned).relay_next_hop(),
        }
    }

    pub(super) fn pins(&self) -> &[crate::tls::Fingerprint] {
        match self {
            Smarthost::External(e) => &e.pins,
            Smarthost::Host(p) => &p.pins,
        }
    }

    pub(super) fn name(&self) -> &HostName {
        match self {
            Smarthost::External(e) => &e.name,
            Smarthost::Host(p) => &p.edge.pinned,
        }
    }

    /// The master.cf client service outgoing mail must take, if not
    /// Postfix's own `smtp`.
    pub(super) fn service(&self) -> Option<&'static str> {
        match self {
            Smarthost::External(e) if e.tls == ExternalTls::Implicit => Some(mastercf::SMTPS),
            Smarthost::External(_) => None,
            Smarthost::Host(_) => Some(mastercf::RELAY_CLIENT),
        }
    }

    /// Whether the next-hop speaks TLS from the first byte.
    pub(super) fn implicit(&self) -> bool {
        matches!(self, Smarthost::External(e) if e.tls == ExternalTls::Implicit)
    }
}

/// The host's relayhost, when it has one; an external one is refused
/// while it has no pins (mail would go there unauthenticated).
pub(super) fn smarthost<'a>(
    d: &'a HostDesired,
    inv: &'a Inventory,
) -> Result<Option<Smarthost<'a>>, String> {
    if let Some(p) = d.smarthost() {
        return Ok(Some(Smarthost::Host(p)));
    }
    let Some(name) = d.host.relayhost.as_ref().and_then(Relayhost::external) else {
        return Ok(None);
    };
    let e = inv.external(name);
    if e.pins.is_empty() {
        return Err(format!(
            "relayhost {name} has no pins yet: run `mxpin pin {name}` first"
        ));
    }
    Ok(Some(Smarthost::External(e)))
}

/// Which of mxpin's tables this host uses: the routing tables as a backup,
/// the TLS policy as a backup or for a relayhost or [policies].
pub(in crate::mta::postfix) fn uses_table(table: &str, d: &HostDesired, inv: &Inventory) -> bool {
    let backup = !d.routes.is_empty();
    match table {
        "tls_policy" => backup || d.host.relayhost.is_some() || !inv.policies.is_empty(),
        CLIENT_CERTS => d.clients().next().is_some(),
        _ => backup,
    }
}

pub(super) fn render_tables(
    d: &HostDesired,
    inv: &Inventory,
    t: &Templates,
) -> Result<BTreeMap<&'static str, String>, String> {
    let mut ctx = tera::Context::new();
    let routes: Vec<_> = d
        .routes
        .iter()
        .map(|r| serde_json::json!({"domain": r.domain, "next_hop": r.next_hop}))
        .collect();
    // One policy per next-hop: several domains may share a primary.
    let mut policies: Vec<serde_json::Value> = Vec::new();
    let mut seen = Vec::new();
    for r in &d.routes {
        if !seen.contains(&&r.next_hop) {
            seen.push(&r.next_hop);
            policies.push(serde_json::json!({
                "next_hop": r.next_hop,
                "pins": r.pins,
                "servername": crate::trust::PIN_SERVER_NAME,
            }));
        }
    }
    if let Some(e) = smarthost(d, inv)? {
        policies.push(serde_json::json!({"next_hop": e.next_hop(inv), "pins": e.pins()}));
    }
    let clients: Vec<_> = d
        .clients()
        .map(|c| serde_json::json!({"host": c.edge.pinned, "pins": c.pins}))
        .collect();
    ctx.insert("clients", &clients);
    let domain_policies: Vec<serde_json::Value> = inv
        .policies
        .iter()
        .map(|p| match &p.level {
            PolicyLevel::Level(l) => serde_json::json!({"domain": p.domain, "level": l}),
            PolicyLevel::Pins(pins) => {
                serde_json::json!({"domain": p.domain, "level": "fingerprint", "pins": pins})
            }
        })
        .collect();
    ctx.insert("domain_policies", &domain_policies);
    let relays: Vec<_> = d
        .relays
        .iter()
        .map(|r| serde_json::json!({"domain": r.domain, "recipients": r.recipients}))
        .collect();
    ctx.insert("routes", &routes);
    ctx.insert("policies", &policies);
    ctx.insert("relays", &relays);
    ctx.insert("digest", inv.settings.digest.as_str());
    let mut out = BTreeMap::new();
    for (table, _) in TABLES {
        let text = t
            .render(&format!("postfix/{table}.tera"), &ctx)
            .map_err(|e| e.to_string())?;
        out.insert(table, text);
    }
    Ok(out)
}

/// Checks that rendered (possibly user-templated) tables still say what the
/// inventory means, and returns the lookups apply verifies on the host.
pub(super) fn lookups_for(
    d: &HostDesired,
    inv: &Inventory,
    tables: &BTreeMap<&str, String>,
) -> Result<Vec<Lookup>, String> {
    let mut lookups = Vec::new();
    for r in &d.routes {
        let transport = format!("smtp:{}", r.next_hop);
        let got = table_value(&tables["transport"], r.domain.as_str());
        if got != Some(transport.as_str()) {
            return Err(format!(
                "transport template maps {} to {got:?}, expected {transport:?}",
                r.domain
            ));
        }
        let policy = table_value(&tables["tls_policy"], &r.next_hop)
            .ok_or_else(|| format!("tls_policy template has no entry for {}", r.next_hop))?;
        if !crate::pins::policy_pins_all(policy, &r.pins) {
            return Err(format!(
                "tls_policy template entry for {} does not pin {}",
                r.next_hop,
                r.pins
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        }
        lookups.push(Lookup {
            table: "transport".into(),
            key: r.domain.to_string(),
            expected: transport,
            wrapper: false,
        });
        let policy_lookup = Lookup {
            table: "tls_policy".into(),
            key: r.next_hop.clone(),
            expected: policy.to_string(),
            wrapper: false,
        };
        if !lookups.contains(&policy_lookup) {
            lookups.push(policy_lookup);
        }
    }
    if let Some(e) = smarthost(d, inv)? {
        let hop = e.next_hop(inv);
        let policy = table_value(&tables["tls_policy"], &hop)
            .ok_or_else(|| format!("tls_policy template has no entry for relayhost {hop}"))?;
        if !crate::pins::policy_pins_all(policy, e.pins()) {
            return Err(format!(
                "tls_policy template entry for relayhost {hop} does not pin it"
            ));
        }
        lookups.push(Lookup {
            table: "tls_policy".into(),
            key: hop,
            expected: policy.to_string(),
            wrapper: e.implicit(),
        });
    }
    // Every pinned client key must be in the table, logged with its host.
    for c in d.clients() {
        let expected = client_cert_value(&c.edge.pinned);
        for pin in &c.pins {
            let got = table_value(&tables[CLIENT_CERTS], pin.as_str());
            if got != Some(expected.as_str()) {
                return Err(format!(
                    "{CLIENT_CERTS} template maps {pin} to {got:?}, expected {expected:?}"
                ));
            }
        }
        lookups.push(Lookup {
            table: CLIENT_CERTS.into(),
            key: c.pins[0].to_string(),
            expected,
            wrapper: false,
        });
    }
    Ok(lookups)
}

/// Notes about [policies] weaker than what this host asks of every
/// destination (its smtp_tls_security_level).
pub(super) fn downgrade_notes(f: &PostfixFacts, inv: &Inventory) -> Vec<String> {
    let global = f
        .effective
        .get("smtp_tls_security_level")
        .cloned()
        .unwrap_or_default();
    let global_level = PolicyLevel::Level(if global.is_empty() {
        "none".into()
    } else {
        global.clone()
    });
    inv.policies
        .iter()
        .filter(|p| p.level.strength() < global_level.strength())
        .map(|p| {
            let level = match &p.level {
                PolicyLevel::Level(l) => l.as_str(),
                PolicyLevel::Pins(_) => "fingerprint",
            };
            format!(
                "warning: policy {level} for {} is weaker than this host's smtp_tls_security_level = {global}",
                p.domain
            )
        })
        .collect()
}
