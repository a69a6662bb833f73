//! The edits of a Postfix host's main.cf: what mxpin sets, and the list
//! parameters it puts its tables first in, keeping the admin's entries.

use super::tables::{smarthost, uses_table, Smarthost};
use crate::desired::HostDesired;
use crate::inventory::{Inventory, PolicyLevel};
use crate::mta::postfix::maincf::{split_list, Edit, MainCf};
use crate::mta::postfix::{mastercf, table_value, taken, PostfixFacts, SNI, TABLES};

/// A parameter's value in effect: main.cf's definition, else Postfix's.
pub(super) fn current_value(f: &PostfixFacts, m: &MainCf, p: &str) -> String {
    m.get(p)
        .unwrap_or_else(|| f.effective.get(p).cloned().unwrap_or_default())
}

/// What mxpin took from this host's main.cf (see [`taken`]).
pub(super) fn taken_of(f: &PostfixFacts) -> taken::Taken {
    f.files
        .get(taken::FILE)
        .map(|x| taken::Taken::parse(x.content.raw()))
        .unwrap_or_default()
}

/// main.cf edits for a host: its certificate, its backup role if any, its
/// relayhost and the TLS policy table.
pub(super) fn main_cf_edits(
    d: &HostDesired,
    f: &PostfixFacts,
    inv: &Inventory,
    m: &MainCf,
    owned: &str,
    taken: &taken::Taken,
) -> Result<Vec<Edit>, String> {
    let set = |k: &str, v: String| Edit::Set(k.to_string(), v);
    let mut edits = Vec::new();
    let (key, cert) = (
        format!("{owned}/current.key"),
        format!("{owned}/current.crt"),
    );
    // Decisions are made on the admin's own values: for a parameter mxpin
    // changed (and the admin did not change since), the value it had.
    let effective = |p: &str| {
        let now = current_value(f, m, p);
        taken.valid(p, &now).map_or(now, |e| e.base.clone())
    };
    // The served certificate: the admin's own stays the one everyone gets,
    // mxpin's key goes to its peers by SNI; without one, mxpin's key is
    // served to all. A released host serves what the admin had.
    let admin = f.admin_cert(owned);
    match &admin {
        _ if d.host.release => {
            let chain = m.get("smtpd_tls_chain_files").unwrap_or_default();
            if !chain.is_empty() && split_list(&chain).iter().all(|x| x.starts_with(owned)) {
                edits.push(Edit::Remove("smtpd_tls_chain_files".into()));
            }
        }
        None if f.version >= (3, 4) => {
            edits.push(set("smtpd_tls_chain_files", format!("{key}, {cert}")));
            // Debian's snakeoil lines (the only legacy certificate left when
            // the admin has none of their own) make smtpd warn on every
            // start that they are ignored. They are emptied in place, in the
            // diff, and given back with the rest of what mxpin took.
            if !effective("smtpd_tls_cert_file").is_empty() {
                for p in ["smtpd_tls_cert_file", "smtpd_tls_key_file"] {
                    if !effective(p).is_empty() {
                        edits.push(set(p, String::new()));
                    }
                }
            }
        }
        None => {
            edits.push(set("smtpd_tls_cert_file", cert));
            edits.push(set("smtpd_tls_key_file", key));
        }
        Some(a) if f.version < (3, 4) => {
            return Err(format!(
                "smtpd serves the admin's own certificate ({} = {}); mxpin keeps it beside its \
                 pinned key only with Postfix 3.4 or later (tls_server_sni_maps), and this is {}",
                a.param, a.files, f.version_text
            ));
        }
        Some(_) => {
            // An earlier mxpin pointed smtpd_tls_chain_files at its own key.
            let chain = m.get("smtpd_tls_chain_files").unwrap_or_default();
            if !chain.is_empty() && split_list(&chain).iter().all(|x| x.starts_with(owned)) {
                edits.push(Edit::Remove("smtpd_tls_chain_files".into()));
            }
        }
    }
    let sni = format!("texthash:{owned}/{SNI}");
    edits.extend(list_edit(
        "tls_server_sni_maps",
        &effective("tls_server_sni_maps"),
        &format!("{owned}/{SNI}"),
        (admin.is_some() && !d.host.release).then_some(sni),
    ));
    // Offer STARTTLS; never lower a level the admin chose.
    if !d.host.release && matches!(effective("smtpd_tls_security_level").as_str(), "" | "none") {
        edits.push(set("smtpd_tls_security_level", "may".into()));
    }
    let backup = !d.routes.is_empty();
    for (table, param) in TABLES {
        let Some(param) = param else { continue };
        let path = format!("{owned}/{table}");
        let entry = uses_table(table, d, inv).then(|| format!("{}:{path}", f.db_type));
        edits.extend(list_edit(param, &effective(param), &path, entry));
    }
    let pins_something = backup
        || d.host.relayhost.is_some()
        || d.clients().next().is_some()
        || inv
            .policies
            .iter()
            .any(|p| matches!(p.level, PolicyLevel::Pins(_)));
    if pins_something {
        edits.push(set(
            "smtp_tls_fingerprint_digest",
            inv.settings.digest.to_string(),
        ));
        // "Verified TLS connection established" is logged from level 1 on.
        if matches!(effective("smtp_tls_loglevel").as_str(), "" | "0") {
            edits.push(set("smtp_tls_loglevel", "1".into()));
        }
    }
    // The relayhost. mxpin owns main.cf's relayhost when the inventory names
    // one, or when its own policy table pins the value there (mxpin wrote
    // it): only then does it remove it.
    let transport = effective("default_transport");
    let ours = |t: &str| [mastercf::SMTPS, mastercf::RELAY_CLIENT].contains(&t);
    match smarthost(d, inv)? {
        Some(e) => {
            edits.push(set("relayhost", e.next_hop(inv)));
            match e.service() {
                Some(service) if transport != service => {
                    if !ours(&transport) && !matches!(transport.as_str(), "" | "smtp") {
                        let why = match e {
                            Smarthost::External(_) => "implicit TLS",
                            Smarthost::Host(_) => "its client certificate",
                        };
                        return Err(format!(
                            "relayhost {} needs {why} through mxpin's {service} transport, but \
                             default_transport is {transport:?}; set it back to smtp{}",
                            e.name(),
                            if matches!(e, Smarthost::External(_)) {
                                " or use tls = \"starttls\""
                            } else {
                                ""
                            }
                        ));
                    }
                    edits.push(set("default_transport", service.into()));
                }
                Some(_) => {}
                None if ours(&transport) => edits.push(Edit::Remove("default_transport".into())),
                None => {}
            }
        }
        None => {
            let current = effective("relayhost");
            let pinned_by_us = f.files.get("tls_policy").is_some_and(|t| {
                !current.is_empty() && table_value(t.content.raw(), &current).is_some()
            });
            // Emptied rather than removed: Debian's main.cf has an empty
            // `relayhost =` line, which this restores byte for byte.
            if pinned_by_us && m.get("relayhost").is_some() {
                edits.push(set("relayhost", String::new()));
            }
            if ours(&transport) {
                edits.push(Edit::Remove("default_transport".into()));
            }
        }
    }
    Ok(edits)
}

/// The edit of a list parameter (`value` as in effect) that makes mxpin's
/// table at `path` its first entry (`entry`, as `type:path`) or takes it
/// out (`None`), keeping the admin's entries; `None` when it already is so.
/// A list left empty loses its line.
pub(super) fn list_edit(
    param: &str,
    value: &str,
    path: &str,
    entry: Option<String>,
) -> Option<Edit> {
    let current = split_list(value);
    let mut wanted: Vec<String> = current
        .iter()
        .filter(|e| e.split_once(':').map(|(_, p)| p) != Some(path))
        .cloned()
        .collect();
    if let Some(e) = entry {
        wanted.insert(0, e);
    }
    if wanted == current {
        None
    } else if wanted.is_empty() {
        Some(Edit::Remove(param.to_string()))
    } else {
        Some(Edit::Set(param.to_string(), wanted.join(", ")))
    }
}
