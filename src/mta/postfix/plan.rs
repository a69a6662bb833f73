//! Planning a Postfix host: pure, from desired state and facts. The parts
//! live beside it: [`tables`] (mxpin's lookup tables and their checks),
//! [`main_edits`] (main.cf), [`services`] (master.cf) and [`fetchmail`].

mod fetchmail;
mod main_edits;
mod services;
mod tables;

use fetchmail::fetchmail_files;
use main_edits::{current_value, main_cf_edits, taken_of};
use services::{master_services, smtp_listener_port};
pub(super) use tables::uses_table;
use tables::{downgrade_notes, lookups_for, render_tables};

use super::maincf::{split_list, MainCf};
use super::{
    change_for, db_suffix, drain, mastercf, taken, PostfixFacts, FETCHMAILRC, OWNED_DIR, SNI,
    TABLES,
};
use crate::desired::HostDesired;
use crate::inventory::Inventory;
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
    /// postconf's answer as read by facts, from those two files: the
    /// read-back of an apply that leaves both as they were takes it.
    pub postconf_before: String,
    /// The host's memo of postconf's answer held when it was read: an
    /// apply that edits neither main.cf nor master.cf leaves it.
    pub memo_fresh: bool,
    /// postconf's warnings as read by facts, when the read asked postconf:
    /// the warnings from before an edit, without asking again.
    pub warnings_before: Option<String>,
    /// The memo's key the read asked postconf under: with
    /// `postconf_before`, the memo an apply that edits neither main.cf nor
    /// master.cf writes when the host's did not hold.
    pub memo_key_before: Option<String>,
    /// Table paths to build with postmap (sources that change or whose
    /// database is missing or stale).
    pub postmap: Vec<String>,
    pub lookups: Vec<Lookup>,
    pub running: bool,
    /// The queue directory, where the master's pid file tells whether
    /// Postfix runs (`postconf -x queue_directory`, as read).
    pub queue_directory: String,
    /// Remove mxpin's directory once empty (release).
    pub remove_owned_dir: bool,
    /// Backed-up domains whose route or pins change: their deferred mail
    /// is retried right after the reload (`postqueue -s`).
    pub flush: Vec<String>,
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
        if f.running {
            // What the script sends (see script.rs, `reload_postfix`).
            commands.push(match f.effective.get("queue_directory") {
                Some(q) => format!("kill -HUP $(sed 1q {q}/pid/master.pid)"),
                None => format!("postfix -c {dir} reload"),
            });
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
            postconf_before: f.postconf.clone(),
            memo_fresh: f.memo,
            warnings_before: f.warnings.clone(),
            memo_key_before: f.memo_key.clone(),
            postmap,
            lookups,
            running: f.running,
            queue_directory: f
                .effective
                .get("queue_directory")
                .cloned()
                .unwrap_or_default(),
            remove_owned_dir: d.host.release,
            flush,
        }),
    ))
}
