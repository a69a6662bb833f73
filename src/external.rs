//! External servers: pinned on first use (`mxpin pin`), probed from the
//! controller on every run, and checked against their pins like ssh checks
//! known hosts.

use std::time::Duration;

use futures::stream::{self, StreamExt as _};

use crate::inventory::{External, ExternalTls, HostName, Inventory, Protocol, Relayhost};
use crate::probe::{self, StartTls};
use crate::tls::{Certificate, Fingerprint};

/// How to start TLS with an external server.
pub fn start_tls(e: &External) -> StartTls {
    match (e.tls, e.protocol) {
        (ExternalTls::Implicit, _) => StartTls::Implicit,
        (ExternalTls::Starttls, Protocol::Smtp) => StartTls::Smtp,
        (ExternalTls::Starttls, Protocol::Imap) => StartTls::Imap,
        (ExternalTls::Starttls, Protocol::Pop3) => StartTls::Pop3,
    }
}

/// What an external server presented to the controller this run.
#[derive(Debug, Clone)]
pub struct ExternalState {
    pub name: HostName,
    /// The chain, leaf first, or why it could not be read.
    pub served: Result<Vec<Certificate>, String>,
}

impl ExternalState {
    /// The leaf certificate, when it matches one of the external's pins.
    pub fn pinned_leaf(&self, inv: &Inventory) -> Result<&Certificate, String> {
        let e = inv.external(&self.name);
        let chain = self
            .served
            .as_ref()
            .map_err(|err| format!("external {}: cannot read its certificate: {err}", e.name))?;
        let leaf = &chain[0];
        match check_pins(inv, e, leaf) {
            Ok(_) => Ok(leaf),
            Err(why) => Err(why),
        }
    }
}

/// Probes one external server.
pub async fn probe(e: &External, timeout: Duration) -> Result<Vec<Certificate>, String> {
    probe::probe(&e.address(), start_tls(e), timeout)
        .await
        .map_err(|err| err.to_string())
}

/// Probes every external the inventory uses (as a relayhost or fetchmail
/// server), 8 at a time. Unused externals are not contacted.
pub async fn gather(inv: &Inventory, timeout: Duration) -> Vec<ExternalState> {
    let used: Vec<&External> = inv
        .externals
        .iter()
        .filter(|e| {
            inv.hosts.iter().any(|h| {
                h.relayhost.as_ref().and_then(Relayhost::external) == Some(&e.name)
                    || h.fetchmail.iter().any(|p| p.server == e.name)
            })
        })
        .collect();
    stream::iter(used)
        .map(|e| async move {
            ExternalState {
                name: e.name.clone(),
                served: probe(e, timeout).await,
            }
        })
        .buffered(8)
        .collect()
        .await
}

/// Checks a served certificate against the external's pins: the matching
/// pin, or a one-line reason showing what is pinned and what is served.
pub fn check_pins(
    inv: &Inventory,
    e: &External,
    leaf: &Certificate,
) -> Result<Fingerprint, String> {
    let s = &inv.settings;
    let served = leaf.fingerprint(s.digest, s.pin);
    if e.pins.is_empty() {
        return Err(format!(
            "external {} has no pins yet: run `mxpin pin {}` (it serves {served})",
            e.name, e.name
        ));
    }
    if crate::pins::is_pinned(&e.pins, served.as_str()) {
        return Ok(served);
    }
    let pinned: Vec<&str> = e.pins.iter().map(Fingerprint::as_str).collect();
    Err(format!(
        "external {} ({}) changed its {}: pinned {}, now serves {served}; \
         if the change is expected, run `mxpin pin {} --replace`",
        e.name,
        e.address(),
        match s.pin {
            crate::tls::PinKind::PublicKey => "key",
            crate::tls::PinKind::Certificate => "certificate",
        },
        pinned.join(" or "),
        e.name
    ))
}

/// What `mxpin pin NAME` does with the fingerprint an external serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinDecision {
    /// The served fingerprint is pinned already: nothing to write.
    AlreadyPinned,
    /// Write these pins into `[external.NAME] pins`.
    Write(Vec<Fingerprint>),
}

/// Trust on first use, like ssh: the first fingerprint is pinned; a
/// different one only with `replace` (pin only it) or `add` (keep the old
/// pins too, for a server rolling over); else a one-line refusal that
/// shows both.
pub fn pin_decision(
    e: &External,
    served: &Fingerprint,
    add: bool,
    replace: bool,
) -> Result<PinDecision, String> {
    if crate::pins::is_pinned(&e.pins, served.as_str()) && !replace {
        Ok(PinDecision::AlreadyPinned)
    } else if e.pins.is_empty() || replace {
        Ok(PinDecision::Write(vec![served.clone()]))
    } else if add {
        let mut p = e.pins.clone();
        p.push(served.clone());
        Ok(PinDecision::Write(p))
    } else {
        let old: Vec<&str> = e.pins.iter().map(|p| p.as_str()).collect();
        let name = &e.name;
        Err(format!(
            "external {name} ({}) serves {served}, but {} is pinned; check with the server's admin, \
             then run `mxpin pin {name} --replace` (or --add to keep the old pin)",
            e.address(),
            old.join(" and ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{generate, KeyAlgorithm};

    #[test]
    fn pin_on_first_use_and_refuse_a_change_unless_told() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        let s = inv("").settings;
        let fp = |_| {
            generate(KeyAlgorithm::EcdsaP256, "mail.isp.example", 30, now)
                .unwrap()
                .cert
                .fingerprint(s.digest, s.pin)
        };
        let (fa, fb) = (fp(0), fp(1));
        let none = inv("");
        let first = &none.externals[0];
        assert_eq!(
            pin_decision(first, &fa, false, false),
            Ok(PinDecision::Write(vec![fa.clone()]))
        );
        let pinned = inv(&format!("\"{fa}\""));
        let e = &pinned.externals[0];
        assert_eq!(
            pin_decision(e, &fa, false, false),
            Ok(PinDecision::AlreadyPinned)
        );
        assert_eq!(
            pin_decision(e, &fa, true, false),
            Ok(PinDecision::AlreadyPinned)
        );
        assert_eq!(
            pin_decision(e, &fa, false, true),
            Ok(PinDecision::Write(vec![fa.clone()]))
        );
        let refused = pin_decision(e, &fb, false, false).unwrap_err();
        assert_eq!(
            refused,
            format!(
                "external isp (mail.isp.example:465) serves {fb}, but {fa} is pinned; check with the \
                 server's admin, then run `mxpin pin isp --replace` (or --add to keep the old pin)"
            )
        );
        assert_eq!(
            pin_decision(e, &fb, true, false),
            Ok(PinDecision::Write(vec![fa.clone(), fb.clone()]))
        );
        assert_eq!(
            pin_decision(e, &fb, false, true),
            Ok(PinDecision::Write(vec![fb.clone()]))
        );
    }

    fn inv(pins: &str) -> Inventory {
        let text = format!(
            "[hosts.a]\nssh = \"a\"\nmx = \"a.example\"\nrelayhost = \"isp\"\n\
             [external.isp]\naddress = \"mail.isp.example:465\"\ntls = \"implicit\"\npins = [{pins}]\n"
        );
        crate::inventory::parse(std::path::Path::new("mxpin.toml"), &text).unwrap()
    }

    #[test]
    fn pins_match_or_say_what_changed() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        let a = generate(KeyAlgorithm::EcdsaP256, "mail.isp.example", 30, now).unwrap();
        let b = generate(KeyAlgorithm::EcdsaP256, "mail.isp.example", 30, now).unwrap();
        let s = inv("").settings;
        let fa = a.cert.fingerprint(s.digest, s.pin);
        let fb = b.cert.fingerprint(s.digest, s.pin);

        let none = inv("");
        let e = check_pins(&none, &none.externals[0], &a.cert).unwrap_err();
        assert!(e.contains("has no pins yet: run `mxpin pin isp`"), "{e}");

        let pinned = inv(&format!("\"{fa}\""));
        assert_eq!(
            check_pins(&pinned, &pinned.externals[0], &a.cert),
            Ok(fa.clone())
        );
        let e = check_pins(&pinned, &pinned.externals[0], &b.cert).unwrap_err();
        assert!(
            e.contains(&format!("changed its key: pinned {fa}, now serves {fb}")),
            "{e}"
        );
        assert_eq!(start_tls(&pinned.externals[0]), StartTls::Implicit);
    }
}
