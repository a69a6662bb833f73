//! Keys, self-signed certificates and fingerprints.
//!
//! Private keys exist only as [`SecretPem`]: in memory, zeroed on drop, and
//! never printable. Fingerprints are produced only by hashing real DER, so a
//! [`Fingerprint`] value is always well formed.

use std::fmt;
use std::str::FromStr;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha512};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// What mxpin says wherever a private key's content would otherwise appear.
pub const HIDDEN: &str = "(private key, content hidden)";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("not a PEM certificate: {0}")]
    CertificatePem(String),
    #[error("not a valid X.509 certificate: {0}")]
    CertificateDer(String),
    #[error("not a usable private key: {0}")]
    Key(String),
    #[error("cannot create certificate: {0}")]
    Issue(String),
}

/// Digest used for `match=` fingerprints (`smtp_tls_fingerprint_digest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Digest {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl Digest {
    pub const NAMES: &'static str = "md5, sha1, sha256 or sha512";

    pub fn as_str(self) -> &'static str {
        match self {
            Digest::Md5 => "md5",
            Digest::Sha1 => "sha1",
            Digest::Sha256 => "sha256",
            Digest::Sha512 => "sha512",
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Digest::Md5 => Md5::digest(data).to_vec(),
            Digest::Sha1 => Sha1::digest(data).to_vec(),
            Digest::Sha256 => Sha256::digest(data).to_vec(),
            Digest::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

impl FromStr for Digest {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "md5" => Ok(Digest::Md5),
            "sha1" => Ok(Digest::Sha1),
            "sha256" => Ok(Digest::Sha256),
            "sha512" => Ok(Digest::Sha512),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a peer pins: the public key (SPKI; survives re-issuing a certificate
/// for the same key) or the whole certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinKind {
    PublicKey,
    Certificate,
}

impl PinKind {
    pub const NAMES: &'static str = "public-key or certificate";
}

impl FromStr for PinKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "public-key" => Ok(PinKind::PublicKey),
            "certificate" => Ok(PinKind::Certificate),
            _ => Err(()),
        }
    }
}

/// Algorithm and size of keys mxpin generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    EcdsaP256,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyAlgorithm {
    pub const NAMES: &'static str = "ecdsa-p256, rsa-2048, rsa-3072 or rsa-4096";
}

impl FromStr for KeyAlgorithm {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "ecdsa-p256" => Ok(KeyAlgorithm::EcdsaP256),
            "rsa-2048" => Ok(KeyAlgorithm::Rsa2048),
            "rsa-3072" => Ok(KeyAlgorithm::Rsa3072),
            "rsa-4096" => Ok(KeyAlgorithm::Rsa4096),
            _ => Err(()),
        }
    }
}

/// A PEM-encoded private key. Zeroed on drop; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem(Zeroizing<String>);

impl SecretPem {
    pub fn new(pem: String) -> Self {
        SecretPem(Zeroizing::new(pem))
    }

    /// The key text, for the one place that must send it (the apply script).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(HIDDEN)
    }
}

/// Uppercase, colon-separated hex digest: the form Postfix prints and
/// `openssl x509 -fingerprint` shows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    pub fn of(digest: Digest, data: &[u8]) -> Self {
        let hex: Vec<String> = digest
            .hash(data)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        Fingerprint(hex.join(":"))
    }

    /// Reads a fingerprint as people paste it: hex, any case, with or without
    /// colons; it must have the length of `digest`.
    pub fn parse(s: &str, digest: Digest) -> Result<Self, String> {
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        let want = digest.hash(b"").len() * 2;
        if hex.len() != want || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            let s_shown = crate::text::shown(s);
            return Err(format!(
                "invalid {digest} fingerprint {s_shown}: expected {} hex bytes, colons optional",
                want / 2
            ));
        }
        let upper = hex.to_ascii_uppercase();
        let bytes: Vec<&str> = (0..want).step_by(2).map(|i| &upper[i..i + 2]).collect();
        Ok(Fingerprint(bytes.join(":")))
    }

    /// What a dry run shows for a key that only apply generates
    /// ([`crate::keys::KNOWN_AFTER_APPLY`]): never a pin.
    pub fn known_after_apply() -> Self {
        Fingerprint(crate::keys::KNOWN_AFTER_APPLY.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Fingerprint {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A parsed certificate with what mxpin needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pem: String,
    der: Vec<u8>,
    spki_der: Vec<u8>,
    not_after: i64,
    dns_names: Vec<String>,
}

impl Certificate {
    /// Parses the first certificate of a PEM text.
    pub fn from_pem(text: &str) -> Result<Self, TlsError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
            .map_err(|e| TlsError::CertificatePem(e.to_string()))?;
        if pem.label != "CERTIFICATE" {
            return Err(TlsError::CertificatePem(format!(
                "found \"{}\" instead of CERTIFICATE",
                pem.label
            )));
        }
        Self::from_der(pem.contents, text.to_string())
    }

    /// Every certificate of a PEM text, in order (a chain file).
    pub fn all_from_pem(text: &str) -> Result<Vec<Self>, TlsError> {
        let mut certs = Vec::new();
        for block in
            pem::parse_many(text.as_bytes()).map_err(|e| TlsError::CertificatePem(e.to_string()))?
        {
            if block.tag() == "CERTIFICATE" {
                certs.push(Self::from_der_bytes(block.into_contents())?);
            }
        }
        if certs.is_empty() {
            return Err(TlsError::CertificatePem(
                "no CERTIFICATE block found".into(),
            ));
        }
        Ok(certs)
    }

    /// A certificate received as DER (from a live server).
    pub fn from_der_bytes(der: Vec<u8>) -> Result<Self, TlsError> {
        let pem = pem::encode_config(
            &pem::Pem::new("CERTIFICATE", der.clone()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        );
        Self::from_der(der, pem)
    }

    /// What an admin wants to see of a certificate.
    pub fn details(&self) -> Details {
        let (_, cert) =
            x509_parser::parse_x509_certificate(&self.der).expect("parsed once already");
        let spki = cert.public_key();
        let oid = spki.algorithm.algorithm.to_id_string();
        let key = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
            Ok(x509_parser::public_key::PublicKey::EC(_)) => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string());
                match curve.as_deref() {
                    Some("1.2.840.10045.3.1.7") => "ECDSA P-256".to_string(),
                    Some("1.3.132.0.34") => "ECDSA P-384".to_string(),
                    Some("1.3.132.0.35") => "ECDSA P-521".to_string(),
                    other => format!("ECDSA {}", other.unwrap_or("unknown curve")),
                }
            }
            _ if oid == "1.3.101.112" => "Ed25519".to_string(),
            _ => format!("unknown ({oid})"),
        };
        Details {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            dns_names: self.dns_names.clone(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: self.not_after,
            key,
        }
    }

    fn from_der(der: Vec<u8>, pem: String) -> Result<Self, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| TlsError::CertificateDer(e.to_string()))?;
        let spki_der = cert.public_key().raw.to_vec();
        let not_after = cert.validity().not_after.timestamp();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                    dns_names.push(n.to_ascii_lowercase());
                }
            }
        }
        Ok(Certificate {
            pem,
            der,
            spki_der,
            not_after,
            dns_names,
        })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn fingerprint(&self, digest: Digest, kind: PinKind) -> Fingerprint {
        match kind {
            PinKind::PublicKey => Fingerprint::of(digest, &self.spki_der),
            PinKind::Certificate => Fingerprint::of(digest, &self.der),
        }
    }

    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// Seconds since the epoch after which the certificate is expired.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
}

/// Descriptive fields of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Details {
    pub subject: String,
    pub issuer: String,
    pub dns_names: Vec<String>,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub key: String,
}

/// A time as `2026-11-22T07:51:22Z`.
pub fn format_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// A private key and the certificate mxpin issued for it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub key: SecretPem,
    pub cert: Certificate,
}

fn rcgen_err(e: rcgen::Error) -> TlsError {
    TlsError::Issue(e.to_string())
}

/// Generates a fresh key pair in memory and a self-signed certificate for `mx`.
pub fn generate(
    alg: KeyAlgorithm,
    mx: &str,
    valid_days: u32,
    now: OffsetDateTime,
) -> Result<Identity, TlsError> {
    let key = match alg {
        KeyAlgorithm::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::Rsa2048 => {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
        KeyAlgorithm::Rsa3072 => {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
        }
        KeyAlgorithm::Rsa4096 => {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
        }
    }
    .map_err(rcgen_err)?;
    let secret = SecretPem::new(key.serialize_pem());
    let cert = issue_with(&key, mx, valid_days, now)?;
    Ok(Identity { key: secret, cert })
}

/// Issues a new self-signed certificate for an existing key.
pub fn reissue(
    key: &SecretPem,
    mx: &str,
    valid_days: u32,
    now: OffsetDateTime,
) -> Result<Certificate, TlsError> {
    let key = parse_key(key)?;
    issue_with(&key, mx, valid_days, now)
}

fn parse_key(key: &SecretPem) -> Result<rcgen::KeyPair, TlsError> {
    rcgen::KeyPair::from_pem(key.expose()).map_err(|e| TlsError::Key(e.to_string()))
}

/// True when `cert` was issued for `key` (same public key).
pub fn key_matches(key: &SecretPem, cert: &Certificate) -> Result<bool, TlsError> {
    use rcgen::PublicKeyData as _;
    Ok(parse_key(key)?.subject_public_key_info() == cert.spki_der)
}

fn issue_with(
    key: &rcgen::KeyPair,
    mx: &str,
    valid_days: u32,
    now: OffsetDateTime,
) -> Result<Certificate, TlsError> {
    use rcgen::PublicKeyData as _;
    let mut params = rcgen::CertificateParams::new(vec![mx.to_string()]).map_err(rcgen_err)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, mx);
    params.distinguished_name = dn;
    // An hour of slack for peers whose clock runs behind ours.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(valid_days));
    // Unique per key and issue time; top bit clear keeps the DER integer positive.
    let mut seed = key.subject_public_key_info();
    seed.extend_from_slice(&now.unix_timestamp_nanos().to_be_bytes());
    let mut serial = Sha256::digest(&seed)[..16].to_vec();
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let cert = params.self_signed(key).map_err(rcgen_err)?;
    Certificate::from_der(cert.der().to_vec(), cert.pem())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap()
    }

    fn openssl(args: &[&str], input: &[u8]) -> Option<String> {
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(input).ok()?;
        let out = child.wait_with_output().ok()?;
        assert!(out.status.success(), "openssl {args:?} failed");
        Some(String::from_utf8(out.stdout).unwrap())
    }

    #[test]
    fn fingerprint_format_is_postfix_style() {
        let fp = Fingerprint::of(Digest::Md5, b"");
        assert_eq!(
            fp.as_str(),
            "D4:1D:8C:D9:8F:00:B2:04:E9:80:09:98:EC:F8:42:7E"
        );
        assert_eq!(
            Fingerprint::of(Digest::Sha256, b"abc").as_str().len(),
            32 * 3 - 1
        );
    }

    #[test]
    fn generated_certificate_names_the_mx_and_matches_its_key() {
        let id = generate(KeyAlgorithm::EcdsaP256, "home.example.net", 825, now()).unwrap();
        assert_eq!(id.cert.dns_names(), ["home.example.net"]);
        assert!(key_matches(&id.key, &id.cert).unwrap());
        assert_eq!(
            id.cert.not_after(),
            now().unix_timestamp() + 825 * 86_400,
            "validity follows valid_days"
        );
        let other = generate(KeyAlgorithm::EcdsaP256, "home.example.net", 825, now()).unwrap();
        assert!(!key_matches(&other.key, &id.cert).unwrap());
    }

    #[test]
    fn reissue_keeps_public_key_fingerprint_and_changes_certificate_fingerprint() {
        let id = generate(KeyAlgorithm::EcdsaP256, "a.example", 30, now()).unwrap();
        let again = reissue(&id.key, "a.example", 30, now() + Duration::days(1)).unwrap();
        let d = Digest::Sha256;
        assert_eq!(
            id.cert.fingerprint(d, PinKind::PublicKey),
            again.fingerprint(d, PinKind::PublicKey)
        );
        assert_ne!(
            id.cert.fingerprint(d, PinKind::Certificate),
            again.fingerprint(d, PinKind::Certificate)
        );
    }

    #[test]
    fn details_describe_key_and_names() {
        let ec = generate(KeyAlgorithm::EcdsaP256, "mx.example", 30, now()).unwrap();
        let d = ec.cert.details();
        assert_eq!(d.key, "ECDSA P-256");
        assert_eq!(d.subject, "CN=mx.example");
        assert_eq!(d.issuer, d.subject, "self-signed");
        assert_eq!(d.dns_names, ["mx.example"]);
        assert_eq!(d.not_before, now().unix_timestamp() - 3600);
        assert_eq!(format_time(d.not_after), "2026-10-21T14:13:20Z");
        let rsa = generate(KeyAlgorithm::Rsa2048, "mx.example", 30, now()).unwrap();
        assert_eq!(rsa.cert.details().key, "RSA 2048");
        let chain = format!("{}{}", ec.cert.pem(), rsa.cert.pem());
        let both = Certificate::all_from_pem(&chain).unwrap();
        assert_eq!(both, [ec.cert.clone(), rsa.cert.clone()]);
        let again = Certificate::from_der_bytes(ec.cert.der.clone()).unwrap();
        assert_eq!(
            again.fingerprint(Digest::Sha256, PinKind::Certificate),
            ec.cert.fingerprint(Digest::Sha256, PinKind::Certificate)
        );
        assert!(Certificate::all_from_pem("no pem here").is_err());
    }

    #[test]
    fn secret_debug_is_hidden() {
        let id = generate(KeyAlgorithm::EcdsaP256, "a.example", 30, now()).unwrap();
        let shown = format!("{id:?}");
        assert!(shown.contains(HIDDEN));
        assert!(!shown.contains("PRIVATE KEY"));
    }

    #[test]
    fn unknown_names_are_rejected() {
        assert!("sha3".parse::<Digest>().is_err());
        assert!("rsa-1024".parse::<KeyAlgorithm>().is_err());
        assert!("spki".parse::<PinKind>().is_err());
    }

    /// Our fingerprints must equal what an admin gets from openssl, for every
    /// digest and both key families.
    #[test]
    fn fingerprints_equal_openssl() {
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!("SKIPPED: openssl not installed");
            return;
        }
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
            let id = generate(alg, "mx.example", 30, now()).unwrap();
            let pem = id.cert.pem().as_bytes();
            let spki_der = {
                let pubkey = openssl(&["x509", "-noout", "-pubkey"], pem).unwrap();
                let mut child = Command::new("openssl")
                    .args(["pkey", "-pubin", "-outform", "DER"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(pubkey.as_bytes())
                    .unwrap();
                child.wait_with_output().unwrap().stdout
            };
            assert_eq!(spki_der, id.cert.spki_der());
            for d in [Digest::Md5, Digest::Sha1, Digest::Sha256, Digest::Sha512] {
                let flag = format!("-{}", d.as_str());
                let out = openssl(&["x509", "-noout", "-fingerprint", &flag], pem).unwrap();
                let theirs = out.trim().rsplit('=').next().unwrap().to_string();
                assert_eq!(
                    id.cert.fingerprint(d, PinKind::Certificate).as_str(),
                    theirs,
                    "{alg:?} {d}"
                );
            }
        }
    }
}
