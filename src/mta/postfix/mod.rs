//! Everything Postfix-specific: the facts script and its parser
//! ([`facts`]), the files and main.cf parameters a host needs ([`plan`]),
//! the apply script ([`script`]) and the checks of a verify ([`verify`]).
//!
//! Files mxpin owns live in `CONFIG_DIR/mxpin/`. main.cf is edited in place;
//! list parameters keep the admin's own entries, with mxpin's table first so
//! that no older entry can override a pin.

mod drain;
mod facts;
pub mod maincf;
pub mod mastercf;
pub mod memo;
mod plan;
pub mod recipients;
pub mod script;
pub mod taken;
mod verify;

use crate::inventory::HostName;

pub use crate::mta::OWNED_DIR;

use crate::mta::KEY_SLOTS as SLOTS;

/// Lookup tables mxpin owns and the main.cf list parameter each joins
/// (the client certificates are named by mxpin's relay listener in
/// master.cf instead).
const TABLES: [(&str, Option<&str>); 5] = [
    ("transport", Some("transport_maps")),
    ("tls_policy", Some("smtp_tls_policy_maps")),
    ("relay_domains", Some("relay_domains")),
    ("relay_recipients", Some("relay_recipient_maps")),
    (CLIENT_CERTS, None),
];

/// The SNI table that serves mxpin's key to its peers beside the admin's
/// own certificate (a texthash: the files are read when smtpd starts, so
/// no database holds a copy of the key, and a reload picks up a rotation).
const SNI: &str = "sni";

/// Debian's self-signed placeholder: no certificate of the admin's own.
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// The table of client keys a relay accepts.
const CLIENT_CERTS: &str = "relay_clientcerts";

/// The value of a client key in [`CLIENT_CERTS`]: `relay_clientcerts`
/// reads only the key; `check_ccert_access` runs the value, an `INFO`
/// action that logs the accepted key's host and goes on.
pub fn client_cert_value(host: &HostName) -> String {
    format!("INFO pinned client key of {host} (mxpin)")
}

/// Scalar parameters whose effective value decides an edit.
const SCALARS: [&str; 9] = [
    "smtpd_tls_chain_files",
    "smtpd_tls_cert_file",
    "tls_server_sni_maps",
    "smtpd_tls_security_level",
    "smtp_tls_loglevel",
    "smtp_host_lookup",
    "smtp_tls_security_level",
    "relayhost",
    "default_transport",
];

/// The fetchmail control file mxpin writes (0600: fetchmail refuses a
/// group- or world-readable one), and the prefix of the pinned server
/// certificates beside it.
pub const FETCHMAILRC: &str = "fetchmailrc";
const FETCHMAIL_CERT_PREFIX: &str = "fetchmail-";

fn owned_files() -> impl Iterator<Item = &'static str> {
    SLOTS
        .iter()
        .flat_map(|(_, k, c)| [*k, *c])
        .chain(TABLES.iter().map(|(t, _)| *t))
        .chain([SNI, taken::FILE])
}

/// The file `postmap` builds from a table source, by database type.
pub fn db_suffix(db_type: &str) -> Option<&'static str> {
    match db_type {
        "hash" | "btree" => Some("db"),
        "lmdb" => Some("lmdb"),
        "cdb" => Some("cdb"),
        _ => None,
    }
}

pub use crate::mta::{change_for, FoundFile};
pub use facts::{
    facts_script, facts_script_known, facts_script_with, read_back_script, AdminCert, PostfixFacts,
};
use plan::uses_table;
pub use plan::{plan_host, ApplySteps, Lookup};
pub use verify::{checks_ran, hold_checks, route_checks, verify_snippet};

/// The entries of a Postfix table text, as postmap reads them: key and
/// value of every line that is not a comment or continuation.
fn table_entries(table: &str) -> impl Iterator<Item = (&str, &str)> {
    table
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_once([' ', '\t']).map(|(k, v)| (k, v.trim())))
}

/// First value for `key` in a Postfix table text (as postmap would read it).
fn table_value<'a>(table: &'a str, key: &str) -> Option<&'a str> {
    table_entries(table).find_map(|(k, v)| k.eq_ignore_ascii_case(key).then_some(v))
}

/// The keys of a Postfix table text.
fn table_keys(table: &str) -> impl Iterator<Item = &str> {
    table_entries(table).map(|(k, _)| k)
}

#[cfg(test)]
mod tests;
