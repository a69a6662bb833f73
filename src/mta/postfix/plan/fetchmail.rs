//! The fetchmail files of a Postfix host that polls external servers: the
//! control file and the pinned server certificates it names.

use crate::desired::HostDesired;
use crate::inventory::{ExternalTls, Inventory};
use crate::mta::postfix::{PostfixFacts, FETCHMAILRC, FETCHMAIL_CERT_PREFIX};
use crate::templates::Templates;

/// The fetchmail control file and the pinned server certificates it names,
/// by file name, for the host's polls.
pub(super) fn fetchmail_files(
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
