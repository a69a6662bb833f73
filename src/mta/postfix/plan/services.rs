//! The master.cf services a Postfix host needs: a relay's client-key
//! listener, the implicit-TLS service of a relayhost, the client's
//! presenting transport, and a primary's listener on its `smtp_port`.

use super::tables::{smarthost, Smarthost};
use crate::desired::HostDesired;
use crate::inventory::{ExternalTls, Inventory};
use crate::mta::postfix::{mastercf, PostfixFacts, CLIENT_CERTS};

/// The master.cf services mxpin wants on this host.
pub(super) fn master_services(
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
pub(super) fn smtp_listener_port(d: &HostDesired, inv: &Inventory, master_cf: &str) -> Option<u16> {
    let port = d.host.smtp_port;
    let primary = inv.domains.iter().any(|x| x.primary == d.host.name);
    (primary && port != 25 && !d.host.release && mastercf::port_taken(master_cf, port).is_none())
        .then_some(port)
}
