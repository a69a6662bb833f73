//! Pin matching, written once. A pin is a fingerprint in the inventory's
//! digest and pin kind (`[settings] digest` and `pin`): of a host's key in
//! a peer's tls_policy entry (Postfix `match=`), of a client's key in a
//! relay's client-certificate table, of a certificate in an Exim trust
//! file, or of an external server in `[external.NAME] pins`. Whether a
//! served certificate matches what a pinner holds is decided here, and
//! compared as Postfix compares `match=` values: hex in any case, colons
//! optional.

use crate::inventory::Settings;
use crate::tls::{Certificate, Digest, Fingerprint, PinKind};

/// The pin of `cert`, as this inventory's pinners pin it.
pub fn of(cert: &Certificate, s: &Settings) -> Fingerprint {
    cert.fingerprint(s.digest, s.pin)
}

/// Where `served` stands among `pins` (0: the first, a host's current
/// key; 1: its staged next key), or `None` when nothing pins it.
pub fn position<S: AsRef<str>>(pins: &[S], served: &str) -> Option<usize> {
    let want = normal(served);
    pins.iter().position(|p| normal(p.as_ref()) == want)
}

/// Whether one of `pins` matches `served`.
pub fn is_pinned<S: AsRef<str>>(pins: &[S], served: &str) -> bool {
    position(pins, served).is_some()
}

/// A fingerprint as it is compared: hex digits, uppercase, no colons.
fn normal(fp: &str) -> String {
    fp.chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The fingerprints of a Postfix TLS policy value (`fingerprint
/// match=A|B ...`; several `match=` attributes add up), uppercase as
/// Postfix prints them.
pub fn in_policy(policy: &str) -> Vec<String> {
    policy
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("match="))
        .flat_map(|m| m.split('|'))
        .filter(|p| !p.is_empty())
        .map(str::to_ascii_uppercase)
        .collect()
}

/// Whether a Postfix TLS policy value is a `fingerprint` level that pins
/// every one of `pins`.
pub fn policy_pins_all<S: AsRef<str>>(policy: &str, pins: &[S]) -> bool {
    let held = in_policy(policy);
    policy.split_whitespace().next() == Some("fingerprint")
        && pins.iter().all(|p| is_pinned(&held, p.as_ref()))
}

/// The pins of the certificates in a PEM trust file (Exim's `peer-MX.pem`);
/// none when it holds no readable certificate.
pub fn of_trust_file(pem: &str, s: &Settings) -> Vec<String> {
    Certificate::all_from_pem(pem)
        .map(|certs| certs.iter().map(|c| of(c, s).to_string()).collect())
        .unwrap_or_default()
}

/// What an Exim pinner compares a served certificate with: the SHA-256 of
/// the whole certificate in uppercase hex without colons, as
/// `${sha256:$tls_out_peercert}` gives it (Exim has no SPKI expansion).
pub fn exim_sha256(cert: &Certificate) -> String {
    normal(
        cert.fingerprint(Digest::Sha256, PinKind::Certificate)
            .as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "AB:CD:EF";
    const B: &str = "01:23:45";

    #[test]
    fn pins_match_in_any_case_with_or_without_colons() {
        let pins = [A, B];
        assert_eq!(position(&pins, A), Some(0));
        assert_eq!(position(&pins, "012345"), Some(1));
        assert_eq!(position(&pins, "ab:cd:ef"), Some(0));
        assert!(is_pinned(&pins, "abcdef"));
        assert!(!is_pinned(&pins, "AB:CD:EE"));
        assert!(!is_pinned::<&str>(&[], A));
    }

    #[test]
    fn policy_values_name_their_pins() {
        let policy = format!("fingerprint match={A}|{} match={B} servername=x", "ef:01");
        assert_eq!(in_policy(&policy), [A, "EF:01", B]);
        assert!(policy_pins_all(&policy, &[B, A]));
        assert!(!policy_pins_all(&policy, &["AB:CD"]));
        assert!(!policy_pins_all(&format!("secure match={A}"), &[A]));
        assert!(in_policy("encrypt").is_empty());
    }

    #[test]
    fn exim_pins_are_certificate_sha256_without_colons() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        let id = crate::tls::generate(crate::tls::KeyAlgorithm::EcdsaP256, "mx.example", 30, now)
            .unwrap();
        let sha = exim_sha256(&id.cert);
        assert_eq!(sha.len(), 64);
        assert!(sha
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
        let full = id.cert.fingerprint(Digest::Sha256, PinKind::Certificate);
        assert!(is_pinned(&[full.as_str()], &sha));
    }
}
