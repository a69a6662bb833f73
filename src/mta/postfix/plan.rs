//! Planning a Postfix host: pure, from desired state and facts.

use std::collections::BTreeMap;

use super::maincf::{split_list, Edit, MainCf};
use super::{
    change_for, client_cert_value, db_suffix, drain, mastercf, table_value, taken, PostfixFacts,
    CLIENT_CERTS, FETCHMAILRC, FETCHMAIL_CERT_PREFIX, OWNED_DIR, SNI, TABLES,
};
use crate::desired::{HostDesired, Pinned};
use crate::inventory::{External, ExternalTls, HostName, Inventory, PolicyLevel, Relayhost};
use crate::mta::Steps;
use crate::mta::KEY_SLOTS as SLOTS;
use crate::plan::{Action, Content, FileChange, HostPlan, PlanWork};
use crate::templates::Templates;

/// A lookup apply checks with `postmap -q` after the swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub table: String,
    pub key: String,
    pub expected: String,
    /// The next-hop speaks implicit TLS (posttls-finger -w).
    pub wrapper: bool,
}

/// What the apply script needs beyond the file changes.
#[derive(Debug, Clone, Default)]
pub struct ApplySteps {
    pub config_dir: String,
    pub db_type: String,
    /// main.cf as read by facts: apply refuses to run if it changed since.
    pub main_cf_before: String,
    /// master.cf as read by facts, likewise (when there was one).
    pub master_cf_before: Option<String>,
    /// Table paths to build with postmap (sources that change or whose
    /// database is missing or stale).
    pub postmap: Vec<String>,
    pub lookups: Vec<Lookup>,
    pub running: bool,
    /// Remove mxpin's directory once empty (release).
    pub remove_owned_dir: bool,
    /// Backed-up domains whose route or pins change: their deferred mail
    /// is retried right after the reload (`postqueue -s`).
    pub flush: Vec<String>,
}

/// Where a host sends its outgoing mail.
enum Smarthost<'a> {
    External(&'a External),
    /// A managed host, pinned both ways.
    Host(&'a Pinned),
}

impl Smarthost<'_> {
    /// The relayhost value: `[mx]:port`, also its tls_policy key.
    fn next_hop(&self, inv: &Inventory) -> String {
        match self {
            Smarthost::External(e) => e.next_hop(),
            Smarthost::Host(p) => inv.host(&p.edge.pinned).relay_next_hop(),
        }
    }

    fn pins(&self) -> &[crate::tls::Fingerprint] {
        match self {
            Smarthost::External(e) => &e.pins,
            Smarthost::Host(p) => &p.pins,
        }
    }

    fn name(&self) -> &HostName {
        match self {
            Smarthost::External(e) => &e.name,
            Smarthost::Host(p) => &p.edge.pinned,
        }
    }

    /// The master.cf client service outgoing mail must take, if not
    /// Postfix's own `smtp`.
    fn service(&self) -> Option<&'static str> {
        match self {
            Smarthost::External(e) if e.tls == ExternalTls::Implicit => Some(mastercf::SMTPS),
            Smarthost::External(_) => None,
            Smarthost::Host(_) => Some(mastercf::RELAY_CLIENT),
        }
    }

    /// Whether the next-hop speaks TLS from the first byte.
    fn implicit(&self) -> bool {
        matches!(self, Smarthost::External(e) if e.tls == ExternalTls::Implicit)
    }
}

/// The host's relayhost, when it has one; an external one is refused
/// while it has no pins (mail would go there unauthenticated).
fn smarthost<'a>(d: &'a HostDesired, inv: &'a Inventory) -> Result<Option<Smarthost<'a>>, String> {
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
pub(super) fn uses_table(table: &str, d: &HostDesired, inv: &Inventory) -> bool {
    let backup = !d.routes.is_empty();
    match table {
        "tls_policy" => backup || d.host.relayhost.is_some() || !inv.policies.is_empty(),
        CLIENT_CERTS => d.clients().next().is_some(),
        _ => backup,
    }
}

fn render_tables(
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
fn lookups_for(
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

/// main.cf edits for a host: its certificate, its backup role if any, its
/// relayhost and the TLS policy table.
/// A parameter's value in effect: main.cf's definition, else Postfix's.
fn current_value(f: &PostfixFacts, m: &MainCf, p: &str) -> String {
    m.get(p)
        .unwrap_or_else(|| f.effective.get(p).cloned().unwrap_or_default())
}

/// What mxpin took from this host's main.cf (see [`taken`]).
fn taken_of(f: &PostfixFacts) -> taken::Taken {
    f.files
        .get(taken::FILE)
        .map(|x| taken::Taken::parse(x.content.raw()))
        .unwrap_or_default()
}

fn main_cf_edits(
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
fn list_edit(param: &str, value: &str, path: &str, entry: Option<String>) -> Option<Edit> {
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

/// The master.cf services mxpin wants on this host.
fn master_services(
    d: &HostDesired,
    f: &PostfixFacts,
    inv: &Inventory,
    owned: &str,
) -> Result<Vec<mastercf::Service>, String> {
    let text = f.master_cf.as_deref().unwrap_or_default();
    let client_chroot = mastercf::chroot_of(text, "smtp", "unix");
    let mut services = Vec::new();
    match smarthost(d, inv)? {
        Some(Smarthost::External(e)) if e.tls == ExternalTls::Implicit => {
            services.push(mastercf::Service::smtps(&client_chroot));
        }
        Some(Smarthost::Host(_)) => services.push(mastercf::Service::relay_client(
            &client_chroot,
            &format!("{owned}/current.key"),
            &format!("{owned}/current.crt"),
            f.version >= (3, 4),
        )),
        _ => {}
    }
    if d.clients().next().is_some() {
        let port = d.host.relay_port;
        if let Some(line) = mastercf::port_taken(text, port) {
            return Err(format!(
                "relay_port {port} is already used by master.cf's `{line}`; \
                 set relay_port to a free port"
            ));
        }
        services.push(mastercf::Service::relay_listener(
            &mastercf::chroot_of(text, "smtp", "inet"),
            port,
            inv.settings.digest.as_str(),
            &format!("{}:{owned}/{CLIENT_CERTS}", f.db_type),
            &mastercf::server_key(
                &format!("{owned}/current.key"),
                &format!("{owned}/current.crt"),
                f.version >= (3, 4),
            ),
        ));
    }
    if let Some(port) = smtp_listener_port(d, inv, text) {
        services.push(mastercf::Service::smtp_listener(
            port,
            &mastercf::smtpd_template(text),
        ));
    }
    Ok(services)
}

/// The `smtp_port` mxpin must open on this host: it is the primary of some
/// domain, the port is not 25, and no service of the admin's listens
/// there already (that one is used as it is).
fn smtp_listener_port(d: &HostDesired, inv: &Inventory, master_cf: &str) -> Option<u16> {
    let port = d.host.smtp_port;
    let primary = inv.domains.iter().any(|x| x.primary == d.host.name);
    (primary && port != 25 && !d.host.release && mastercf::port_taken(master_cf, port).is_none())
        .then_some(port)
}

/// Notes about [policies] weaker than what this host asks of every
/// destination (its smtp_tls_security_level).
fn downgrade_notes(f: &PostfixFacts, inv: &Inventory) -> Vec<String> {
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

/// The fetchmail control file and the pinned server certificates it names,
/// by file name, for the host's polls.
fn fetchmail_files(
    d: &HostDesired,
    f: &PostfixFacts,
    inv: &Inventory,
    t: &Templates,
    owned: &str,
) -> Result<Vec<(String, String, u32)>, String> {
    use crate::fetchmail as fm;
    use crate::inventory::Protocol;
    use crate::tls::{Certificate, Digest, PinKind};
    if d.host.fetchmail.is_empty() {
        return Ok(vec![]);
    }
    let mut files = Vec::new();
    let mut polls = Vec::new();
    for p in &d.host.fetchmail {
        let e = inv.external(&p.server);
        let name = format!("{FETCHMAIL_CERT_PREFIX}{}.pem", e.name);
        // The certificate the controller read this run; if it could not,
        // the one already on the host, as long as it still matches a pin.
        let cert = match d.external_certs.get(&e.name) {
            Some(Ok(c)) => c.clone(),
            Some(Err(why)) => {
                let kept = f
                    .files
                    .get(&name)
                    .and_then(|found| Certificate::from_pem(found.content.raw()).ok())
                    .filter(|c| crate::external::check_pins(inv, e, c).is_ok());
                kept.ok_or_else(|| format!("fetchmail: {why}"))?
            }
            None => return Err(format!("fetchmail: external {} was not probed", e.name)),
        };
        let certfile = format!("{owned}/{name}");
        if !files
            .iter()
            .any(|(n, _, _): &(String, String, u32)| n == &name)
        {
            files.push((name, cert.pem().to_string(), 0o644));
        }
        polls.push(fm::Poll {
            label: e.name.to_string(),
            server: e.host.to_string(),
            port: e.port,
            protocol: match p.protocol {
                Protocol::Imap => fm::Protocol::Imap,
                _ => fm::Protocol::Pop3,
            },
            tls: match e.tls {
                ExternalTls::Implicit => fm::Tls::Implicit,
                ExternalTls::Starttls => fm::Tls::StartTls,
            },
            user: p.user.clone(),
            local: p.local.clone(),
            md5: cert.fingerprint(Digest::Md5, PinKind::Certificate),
            certfile,
            password: fm::Password::Netrc,
        });
    }
    let rc = fm::render(&polls, t)?;
    files.push((FETCHMAILRC.to_string(), rc, 0o600));
    Ok(files)
}

/// Plans one Postfix host: pure, from desired state and facts.
pub fn plan_host(
    d: &HostDesired,
    f: &PostfixFacts,
    inv: &Inventory,
    t: &Templates,
) -> Result<HostPlan, String> {
    if f.version < (2, 9) {
        return Err(format!(
            "Postfix {} is too old: mxpin needs 2.9 or later (public-key fingerprints)",
            f.version_text
        ));
    }
    let suffix = db_suffix(&f.db_type).ok_or_else(|| {
        format!(
            "default_database_type {:?} is not supported (hash, btree, lmdb or cdb)",
            f.db_type
        )
    })?;
    let dir = d.host.config_dir.as_str();
    let owned = format!("{dir}/{OWNED_DIR}");
    let (mut changes, mut notes) = if d.host.release {
        let keys = SLOTS.iter().flat_map(|(_, k, c)| [*k, *c]);
        let gone = keys
            .filter_map(|name| {
                change_for(format!("{owned}/{name}"), f.files.get(name), None, 0o600, 0)
            })
            .collect();
        (
            gone,
            vec![format!(
                "release: every file in {owned} goes, and main.cf and master.cf get the admin's own lines back"
            )],
        )
    } else {
        crate::mta::key_changes(d, &owned, &f.files, (0o600, 0))
    };

    let tables = render_tables(d, inv, t)?;
    let lookups = lookups_for(d, inv, &tables)?;
    let mut postmap = Vec::new();
    let main_cf = MainCf::parse(&f.main_cf);
    for (table, param) in TABLES {
        let path = format!("{owned}/{table}");
        let used = uses_table(table, d, inv);
        let new = used.then(|| Content::Text(tables[table].clone()));
        let change = change_for(path.clone(), f.files.get(table), new, 0o644, 0);
        // A database is stale when missing or older than its source, or
        // when main.cf names the table with another type (hash and btree
        // share the .db suffix but not the format).
        let listed = param.and_then(|p| main_cf.get(p)).unwrap_or_default();
        let listed_types: Vec<String> = split_list(&listed)
            .iter()
            .filter_map(|e| e.split_once(':'))
            .filter(|(_, p)| *p == path)
            .map(|(t, _)| t.to_string())
            .collect();
        let stale = !f.fresh[table].iter().any(|s| s == suffix)
            || listed_types.iter().any(|t| t != &f.db_type);
        if used && (change.as_ref().is_some_and(|c| c.action != Action::Chmod) || stale) {
            postmap.push(path);
        }
        changes.extend(change);
    }

    // The SNI table, beside an admin's own certificate only.
    let admin = f.admin_cert(&owned);
    let sni = admin.as_ref().map(|_| {
        Content::Text(format!(
            "# Managed by mxpin: its pinned key for its peers, which ask for {name} by SNI;\n\
             # every other client gets the admin's own certificate. Changes here are\n\
             # overwritten by `mxpin apply`.\n\
             {name}\t{owned}/current.key, {owned}/current.crt\n",
            name = crate::trust::PIN_SERVER_NAME
        ))
    });
    changes.extend(change_for(
        format!("{owned}/{SNI}"),
        f.files.get(SNI),
        sni,
        0o644,
        0,
    ));
    if let Some(a) = &admin {
        notes.push(match &a.leaf {
            Ok(leaf) => {
                let d = leaf.details();
                format!(
                    "keeps the admin's certificate ({} = {}): {}, issued by {}, until {}; every \
                     client gets it, and mxpin's peers get mxpin's pinned key by SNI ({})",
                    a.param,
                    a.files,
                    d.subject,
                    d.issuer,
                    crate::tls::format_time(d.not_after),
                    crate::trust::PIN_SERVER_NAME
                )
            }
            Err(why) => format!(
                "keeps the admin's certificate ({} = {}, {why}); mxpin's peers get mxpin's \
                 pinned key by SNI ({})",
                a.param,
                a.files,
                crate::trust::PIN_SERVER_NAME
            ),
        });
    }

    // fetchmail: the control file and certificates, and the removal of
    // those no poll needs any more.
    let wanted = fetchmail_files(d, f, inv, t, &owned)?;
    for (name, text, mode) in &wanted {
        let content = Content::Text(text.clone());
        changes.extend(change_for(
            format!("{owned}/{name}"),
            f.files.get(name),
            Some(content),
            *mode,
            0,
        ));
    }
    for (name, found) in &f.files {
        if name.starts_with("fetchmail") && !wanted.iter().any(|(n, _, _)| n == name) {
            changes.extend(change_for(
                format!("{owned}/{name}"),
                Some(found),
                None,
                0o644,
                0,
            ));
        }
    }
    if !wanted.is_empty() {
        notes.push(format!(
            "fetchmail reads {owned}/{FETCHMAILRC} when run as root with -f; passwords come from root's ~/.netrc"
        ));
    }
    notes.extend(downgrade_notes(f, inv));

    // master.cf: mxpin's client services for a relayhost that needs one,
    // and the relay listener on a host others relay through.
    let services = master_services(d, f, inv, &owned)?;
    let new_master = match &f.master_cf {
        Some(text) => Some(mastercf::edited(text, &services)),
        None if !services.is_empty() => return Err(format!("{dir}/master.cf not found")),
        None => None,
    };
    // A listener that is not there yet opens before the backups route to it.
    let master_text = f.master_cf.as_deref().unwrap_or_default();
    let opens_listener = smtp_listener_port(d, inv, master_text)
        .filter(|p| !mastercf::smtp_listener_on(master_text, *p));
    if let Some(port) = opens_listener {
        notes.push(format!(
            "nothing listens on smtp_port {port}: mxpin adds an smtpd there (a copy of the \
             port-25 one) before the backup MX hosts route to it"
        ));
    }
    if let (Some(old), Some(new)) = (&f.master_cf, &new_master) {
        if old != new {
            changes.push(FileChange {
                path: format!("{dir}/master.cf"),
                action: Action::Modify,
                old: Some(Content::Text(old.clone())),
                new: Some(Content::Text(new.clone())),
                mode: 0o644,
                group: 0,
            });
        }
    }

    // main.cf: mxpin's edits, each parameter's first change recorded so
    // that a later give-back restores the admin's text byte for byte.
    let taken = taken_of(f);
    let wanted = main_cf_edits(d, f, inv, &main_cf, &owned, &taken)?;
    let current = |p: &str| current_value(f, &main_cf, p);
    let (edits, taken_after) = taken::reconcile(&main_cf, &taken, wanted, &current);
    let new_main = main_cf.edited(&edits);
    changes.extend(change_for(
        format!("{owned}/{}", taken::FILE),
        f.files.get(taken::FILE),
        taken_after.render().map(Content::Text),
        0o644,
        0,
    ));
    if new_main != f.main_cf {
        changes.push(FileChange {
            path: format!("{dir}/main.cf"),
            action: Action::Modify,
            old: Some(Content::Text(f.main_cf.clone())),
            new: Some(Content::Text(new_main.clone())),
            mode: 0o644,
            group: 0,
        });
    }

    let mut commands: Vec<String> = postmap
        .iter()
        .map(|p| format!("postmap -c {dir} {}:{p}", f.db_type))
        .collect();
    let mut flush = Vec::new();
    // A table whose database is merely stale is rebuilt in place.
    let needs_work = !changes.is_empty() || !postmap.is_empty();
    if needs_work {
        commands.push(format!("postfix -c {dir} check"));
        if f.running {
            commands.push(format!("postfix -c {dir} reload"));
            flush = drain::domains(d, f, inv, &tables, &new_main, &owned);
            commands.extend(flush.iter().map(|x| format!("postqueue -c {dir} -s {x}")));
        } else {
            notes.push("Postfix is not running: apply will not start or reload it".into());
        }
    }
    if needs_work {
        // An admin's duplicate makes Postfix warn on every run; apply
        // ignores warnings that were there before (see script.rs).
        for (name, lines) in MainCf::parse(&f.main_cf).duplicates() {
            let lines: Vec<String> = lines.iter().map(usize::to_string).collect();
            notes.push(format!(
                "main.cf defines {name} {} times (lines {}): Postfix warns `overriding earlier entry` \
                 and uses the last; that warning was there before and does not block apply",
                lines.len(),
                lines.join(", ")
            ));
        }
    }
    if !needs_work {
        notes.clear();
    }
    if let Some(relay) = &d.waits_for_relay {
        notes.push(format!(
            "relayhost {relay}: outgoing mail moves to {} in a second round of apply, once {relay} \
             accepts this host's client key",
            inv.host(relay).relay_next_hop()
        ));
    }
    // The served key changes when its files change or when main.cf starts
    // pointing smtpd at them (the first apply replaces the admin's own).
    let chain_param = if f.version >= (3, 4) {
        "smtpd_tls_chain_files"
    } else {
        "smtpd_tls_cert_file"
    };
    let after = MainCf::parse(&new_main);
    let switches_key = crate::mta::changes_served_key(&changes)
        || main_cf.get(chain_param) != after.get(chain_param)
        || main_cf.get("tls_server_sni_maps") != after.get("tls_server_sni_maps");
    let work = PlanWork {
        changes,
        commands,
        notes,
        switches_key,
        opens_listener: opens_listener.is_some(),
    };
    Ok(HostPlan::new(
        d,
        inv,
        work,
        Steps::Postfix(ApplySteps {
            config_dir: dir.to_string(),
            db_type: f.db_type.clone(),
            main_cf_before: f.main_cf.clone(),
            master_cf_before: f.master_cf.clone(),
            postmap,
            lookups,
            running: f.running,
            remove_owned_dir: d.host.release,
            flush,
        }),
    ))
}
