//! Fingerprints of any certificate, in the forms admins paste elsewhere:
//! Postfix `match=`, fetchmail `sslfingerprint`, DNS TLSA, or JSON.

use std::fmt::Write as _;

use crate::desired::StoredKeys;
use crate::inventory::Host;
use crate::tls::{format_time, Certificate, Digest, Fingerprint, PinKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Postfix,
    Fetchmail,
    Tlsa,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Format::Text),
            "postfix" => Ok(Format::Postfix),
            "fetchmail" => Ok(Format::Fetchmail),
            "tlsa" => Ok(Format::Tlsa),
            "json" => Ok(Format::Json),
            _ => Err(format!(
                "unknown format {s:?}: expected text, postfix, fetchmail, tlsa or json"
            )),
        }
    }
}

/// Where the certificates came from, for TLSA owner names and Postfix
/// next-hops: a server address, or a file.
pub enum Source<'a> {
    Server { host: &'a str, port: u16 },
    File,
}

/// DANE-EE SPKI record data (`3 1 1` for SHA-256, `3 1 2` for SHA-512) of
/// a certificate's public key.
pub fn tlsa_data(cert: &Certificate, digest: Digest) -> String {
    let (matching, d) = match digest {
        Digest::Sha512 => (2, Digest::Sha512),
        _ => (1, Digest::Sha256),
    };
    let hex = cert
        .fingerprint(d, PinKind::PublicKey)
        .as_str()
        .replace(':', "")
        .to_ascii_lowercase();
    format!("3 1 {matching} {hex}")
}

/// A TLSA record for an SMTP server.
pub fn tlsa_record(host: &str, port: u16, cert: &Certificate, digest: Digest) -> String {
    format!("_{port}._tcp.{host}. IN TLSA {}", tlsa_data(cert, digest))
}

/// One DANE-EE TLSA record (`3 1 1`: the SHA-256 of the public key) of a
/// managed host's key, as `mxpin tlsa` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsaRecord {
    /// The inventory's host name.
    pub host: String,
    /// The port peers deliver to (`smtp_port`).
    pub port: u16,
    /// The record's owner name, `_PORT._tcp.MX.`.
    pub name: String,
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    /// The digest, lowercase hex.
    pub data: String,
    /// Which of the host's keys: `current` (served now) or `next` (staged).
    pub key: &'static str,
}

impl TlsaRecord {
    /// The zone-file line, with the host and key as a comment.
    pub fn zone_line(&self) -> String {
        format!(
            "{} IN TLSA {} {} {} {} ; {} {}",
            self.name, self.usage, self.selector, self.matching, self.data, self.host, self.key
        )
    }
}

/// The TLSA records of a host's current and next key, in that order, and
/// an error for each slot without a certificate or with one that does not
/// parse.
pub fn host_tlsa(host: &Host, keys: &StoredKeys) -> (Vec<TlsaRecord>, Vec<String>) {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for (key, pair) in [("current", &keys.current), ("next", &keys.next)] {
        match pair.cert.as_deref().map(Certificate::from_pem) {
            Some(Ok(cert)) => records.push(TlsaRecord {
                host: host.name.to_string(),
                port: host.smtp_port,
                name: format!("_{}._tcp.{}.", host.smtp_port, host.mx.as_str()),
                usage: 3,
                selector: 1,
                matching: 1,
                data: cert
                    .fingerprint(Digest::Sha256, PinKind::PublicKey)
                    .as_str()
                    .replace(':', "")
                    .to_ascii_lowercase(),
                key,
            }),
            Some(Err(e)) => errors.push(format!("{key} certificate: {e}")),
            None => errors.push(format!("no {key} key yet: run mxpin apply first")),
        }
    }
    (records, errors)
}

/// `mxpin tlsa`'s output: zone-file lines, or one JSON document
/// `{"records": [...], "errors": [{"host", "error"}]}` (errors go to stderr
/// as well).
/// The TLSA records of every host read, and the hosts (by name) whose
/// keys could not be read, with why.
pub fn fleet_tlsa(states: &[crate::engine::HostState]) -> (Vec<TlsaRecord>, Vec<(String, String)>) {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for s in states {
        let name = s.host.name.to_string();
        match &s.facts {
            Err(e) => errors.push((name, e.message.clone())),
            Ok(f) => {
                let (mine, failed) = host_tlsa(&s.host, &f.stored_keys());
                records.extend(mine);
                errors.extend(failed.into_iter().map(|e| (name.clone(), e)));
            }
        }
    }
    (records, errors)
}

pub fn render_tlsa(records: &[TlsaRecord], errors: &[(String, String)], json: bool) -> String {
    if json {
        let errors: Vec<_> = errors
            .iter()
            .map(|(host, error)| serde_json::json!({"host": host, "error": error}))
            .collect();
        format!(
            "{:#}\n",
            serde_json::json!({"records": records, "errors": errors})
        )
    } else {
        records.iter().map(|r| r.zone_line() + "\n").collect()
    }
}

/// fetchmail pins the MD5 of the certificate, whatever else is chosen.
pub fn fetchmail_fingerprint(cert: &Certificate) -> Fingerprint {
    cert.fingerprint(Digest::Md5, PinKind::Certificate)
}

/// Renders `chain` (leaf first). Pin formats (postfix, fetchmail, tlsa)
/// speak of the leaf, the certificate a peer pins.
pub fn render(
    chain: &[Certificate],
    digest: Digest,
    pin: PinKind,
    format: Format,
    source: &Source,
) -> String {
    let mut out = String::new();
    let leaf = &chain[0];
    match format {
        Format::Text => {
            for (i, cert) in chain.iter().enumerate() {
                let d = cert.details();
                let role = if i == 0 { " (server)" } else { "" };
                let issuer = if d.issuer == d.subject {
                    format!("{} (self-signed)", d.issuer)
                } else {
                    d.issuer.clone()
                };
                let _ = writeln!(out, "certificate {} of {}{role}", i + 1, chain.len());
                let _ = writeln!(out, "  subject:     {}", d.subject);
                let _ = writeln!(out, "  issuer:      {issuer}");
                let _ = writeln!(out, "  names:       {}", d.dns_names.join(", "));
                let _ = writeln!(
                    out,
                    "  valid:       {} to {}",
                    format_time(d.not_before),
                    format_time(d.not_after)
                );
                let _ = writeln!(out, "  key:         {}", d.key);
                let tag = digest.as_str().to_ascii_uppercase();
                let _ = writeln!(
                    out,
                    "  certificate: {tag} {}",
                    cert.fingerprint(digest, PinKind::Certificate)
                );
                let _ = writeln!(
                    out,
                    "  public key:  {tag} {}",
                    cert.fingerprint(digest, PinKind::PublicKey)
                );
            }
        }
        Format::Postfix => {
            let fp = leaf.fingerprint(digest, pin);
            match source {
                Source::Server { host, port } => {
                    let _ = writeln!(out, "[{host}]:{port} fingerprint match={fp}");
                }
                Source::File => {
                    let _ = writeln!(out, "match={fp}");
                }
            }
        }
        Format::Fetchmail => {
            let _ = writeln!(out, "sslfingerprint \"{}\"", fetchmail_fingerprint(leaf));
        }
        Format::Tlsa => match source {
            Source::Server { host, port } => {
                let _ = writeln!(out, "{}", tlsa_record(host, *port, leaf, digest));
            }
            Source::File => {
                let _ = writeln!(out, "{}", tlsa_data(leaf, digest));
            }
        },
        Format::Json => {
            let certs: Vec<_> = chain
                .iter()
                .map(|c| {
                    let d = c.details();
                    serde_json::json!({
                        "subject": d.subject,
                        "issuer": d.issuer,
                        "dns_names": d.dns_names,
                        "not_before": format_time(d.not_before),
                        "not_after": format_time(d.not_after),
                        "key": d.key,
                        "digest": digest,
                        "certificate": c.fingerprint(digest, PinKind::Certificate),
                        "public_key": c.fingerprint(digest, PinKind::PublicKey),
                    })
                })
                .collect();
            let _ = writeln!(out, "{:#}", serde_json::json!({ "chain": certs }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that cannot be read is named with why, and only its records
    /// are missing; the engine's owner of the connections closes them
    /// whatever the body returns.
    #[test]
    fn fleet_tlsa_names_unreadable_hosts() {
        let text = "[hosts.a]\nssh = \"a\"\nmx = \"a.example\"\n";
        let inv = crate::inventory::parse(std::path::Path::new("m.toml"), text).unwrap();
        let host = inv.hosts[0].clone();
        let err = crate::error::HostError::new(
            &host.name,
            crate::error::Stage::Connect,
            crate::error::ErrorKind::Unreachable,
            "ssh a: connection refused",
        );
        let states = vec![crate::engine::HostState {
            host,
            conn: None,
            stale: false,
            probes: Vec::new(),
            lock: None,
            facts: Err(err),
        }];
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (records, errors) = rt.block_on(crate::engine::with_hosts(
            states,
            async |s: &mut [crate::engine::HostState]| fleet_tlsa(s),
        ));
        assert!(records.is_empty());
        assert_eq!(
            errors,
            [("a".to_string(), "ssh a: connection refused".to_string())]
        );
    }
    use crate::tls::{generate, KeyAlgorithm};
    use time::OffsetDateTime;

    fn cert() -> Certificate {
        let now = OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        generate(KeyAlgorithm::EcdsaP256, "mail.isp.example", 30, now)
            .unwrap()
            .cert
    }

    #[test]
    fn postfix_form_pins_the_leaf_for_a_next_hop() {
        let c = cert();
        let server = Source::Server {
            host: "mail.isp.example",
            port: 465,
        };
        let line = render(
            std::slice::from_ref(&c),
            Digest::Sha256,
            PinKind::PublicKey,
            Format::Postfix,
            &server,
        );
        assert_eq!(
            line,
            format!(
                "[mail.isp.example]:465 fingerprint match={}\n",
                c.fingerprint(Digest::Sha256, PinKind::PublicKey)
            )
        );
        let line = render(
            std::slice::from_ref(&c),
            Digest::Sha1,
            PinKind::Certificate,
            Format::Postfix,
            &Source::File,
        );
        assert_eq!(
            line,
            format!(
                "match={}\n",
                c.fingerprint(Digest::Sha1, PinKind::Certificate)
            )
        );
    }

    #[test]
    fn fetchmail_is_always_md5_of_the_certificate() {
        let c = cert();
        let out = render(
            std::slice::from_ref(&c),
            Digest::Sha512,
            PinKind::PublicKey,
            Format::Fetchmail,
            &Source::File,
        );
        let fp = c.fingerprint(Digest::Md5, PinKind::Certificate);
        assert_eq!(out, format!("sslfingerprint \"{fp}\"\n"));
        assert_eq!(fp.as_str().len(), 16 * 3 - 1);
    }

    #[test]
    fn tlsa_is_lowercase_spki_digest_with_owner_name() {
        let c = cert();
        let hex = c
            .fingerprint(Digest::Sha256, PinKind::PublicKey)
            .as_str()
            .replace(':', "")
            .to_lowercase();
        assert_eq!(
            tlsa_record("home.example.net", 25, &c, Digest::Md5),
            format!("_25._tcp.home.example.net. IN TLSA 3 1 1 {hex}")
        );
        assert!(tlsa_data(&c, Digest::Sha512).starts_with("3 1 2 "));
        assert_eq!(tlsa_data(&c, Digest::Sha512).len(), 6 + 128);
    }

    /// `mxpin tlsa`: a record per slot with a certificate (the SPKI
    /// SHA-256, as openssl-checked `tlsa_data` computes), an error per slot
    /// without, and the JSON shape scripts read.
    #[test]
    fn tlsa_of_a_host_as_zone_lines_and_json() {
        let inv = crate::inventory::parse(
            std::path::Path::new("mxpin.toml"),
            "[hosts.home]\nssh = \"home\"\nmx = \"home.example.net\"\nsmtp_port = 26\n",
        )
        .unwrap();
        let host = &inv.hosts[0];
        let c = cert();
        let mut keys = StoredKeys::default();
        keys.current.cert = Some(c.pem().to_string());
        let (records, errors) = host_tlsa(host, &keys);
        assert_eq!(errors, ["no next key yet: run mxpin apply first"]);
        let data = tlsa_data(&c, Digest::Sha256);
        let hex = data.strip_prefix("3 1 1 ").unwrap();
        assert_eq!(
            render_tlsa(&records, &[], false),
            format!("_26._tcp.home.example.net. IN TLSA 3 1 1 {hex} ; home current\n")
        );
        keys.next.cert =
            Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into());
        let (_, errors) = host_tlsa(host, &keys);
        assert!(errors[0].starts_with("next certificate: "), "{errors:?}");

        keys.next.cert = Some(cert().pem().to_string());
        let (records, errors) = host_tlsa(host, &keys);
        assert!(errors.is_empty());
        let failed = [("relay".to_string(), "ssh relay: refused".to_string())];
        let doc: serde_json::Value =
            serde_json::from_str(&render_tlsa(&records, &failed, true)).unwrap();
        assert_eq!(
            doc["records"][0],
            serde_json::json!({"host": "home", "port": 26, "name": "_26._tcp.home.example.net.",
                               "usage": 3, "selector": 1, "matching": 1, "data": hex,
                               "key": "current"})
        );
        assert_eq!(doc["records"][1]["key"], "next");
        assert_ne!(doc["records"][1]["data"], hex);
        assert_eq!(doc["records"].as_array().unwrap().len(), 2);
        assert_eq!(
            doc["errors"],
            serde_json::json!([{"host": "relay", "error": "ssh relay: refused"}])
        );
    }

    #[test]
    fn text_and_json_describe_every_certificate() {
        let (a, b) = (cert(), cert());
        let text = render(
            &[a.clone(), b],
            Digest::Sha256,
            PinKind::PublicKey,
            Format::Text,
            &Source::File,
        );
        assert!(
            text.contains("certificate 1 of 2 (server)\n  subject:     CN=mail.isp.example\n"),
            "{text}"
        );
        assert!(
            text.contains("  issuer:      CN=mail.isp.example (self-signed)\n"),
            "{text}"
        );
        assert!(text.contains("  key:         ECDSA P-256\n"), "{text}");
        assert!(text.contains(&format!(
            "  public key:  SHA256 {}\n",
            a.fingerprint(Digest::Sha256, PinKind::PublicKey)
        )));
        assert!(text.contains("certificate 2 of 2\n"));
        let json: serde_json::Value = serde_json::from_str(&render(
            std::slice::from_ref(&a),
            Digest::Md5,
            PinKind::PublicKey,
            Format::Json,
            &Source::File,
        ))
        .unwrap();
        assert_eq!(
            json["chain"][0]["certificate"],
            a.fingerprint(Digest::Md5, PinKind::Certificate).as_str()
        );
        assert_eq!(json["chain"][0]["digest"], "md5");
        assert_eq!(json["chain"][0]["not_before"], "2026-09-21T13:13:20Z");
    }
}
