//! TLSA records: their data (`3 1 1`), the keys of each host, and the
//! plan of one zone (records added and removed), shown and in JSON.

use super::*;

/// The data of one TLSA record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TlsaData {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl TlsaData {
    /// DANE-EE, SPKI, SHA-256 (`3 1 1`) of a certificate's public key.
    pub fn of(cert: &Certificate) -> TlsaData {
        let hex = cert
            .fingerprint(Digest::Sha256, PinKind::PublicKey)
            .as_str()
            .replace(':', "");
        TlsaData {
            usage: 3,
            selector: 1,
            matching: 1,
            data: (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .collect(),
        }
    }

    pub fn hex(&self) -> String {
        self.data.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `3 1 1 HEX`, as in a zone file.
    pub fn text(&self) -> String {
        format!(
            "{} {} {} {}",
            self.usage,
            self.selector,
            self.matching,
            self.hex()
        )
    }
}

/// A host's keys as a plan leaves them: what its TLSA records must be.
#[derive(Debug, Clone)]
pub struct HostTlsa {
    pub host: HostName,
    pub current: Certificate,
    pub next: Certificate,
    /// The key it served before the plan, when the plan switches it.
    pub retired: Option<Certificate>,
    /// It serves the admin's own certificate to its MX name (mxpin's key
    /// only to its peers, by SNI): DANE senders never see mxpin's keys, so
    /// no record of them is published, and those mxpin wrote go.
    pub admin_cert: bool,
}

/// One record added or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordChange {
    pub owner: String,
    pub ttl: u32,
    pub data: TlsaData,
    /// Whose key, for the reader: `home current`, `home next`.
    pub about: String,
}

/// What changes in one zone.
#[derive(Debug, Clone, Default)]
pub struct ZonePlan {
    pub zone: String,
    pub server: String,
    pub add: Vec<RecordChange>,
    pub remove: Vec<RecordChange>,
    /// Per owner of an added record: how long the world may have cached
    /// the RRset as it was (its TTL, or the zone's negative TTL).
    pub(super) waits: BTreeMap<String, u32>,
}

impl ZonePlan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// The plan for `--json`: zone, server, records added and removed
    /// (`data` null for a key known only after apply).
    pub fn to_json(&self, unknown: &[Certificate]) -> serde_json::Value {
        let unknown: Vec<TlsaData> = unknown.iter().map(TlsaData::of).collect();
        let records = |rs: &[RecordChange]| -> Vec<serde_json::Value> {
            rs.iter()
                .map(|r| {
                    let data = (!unknown.contains(&r.data)).then(|| r.data.text());
                    serde_json::json!({"owner": r.owner, "ttl": r.ttl, "type": "TLSA",
                                       "data": data, "about": r.about})
                })
                .collect()
        };
        serde_json::json!({"zone": self.zone, "server": self.server,
                           "add": records(&self.add), "remove": records(&self.remove)})
    }

    /// The plan as people read it: records added and removed. The record
    /// of a key in `unknown` (a dry run's stand-in) shows as known after
    /// apply.
    pub fn render(&self, unknown: &[Certificate]) -> String {
        let unknown: Vec<TlsaData> = unknown.iter().map(TlsaData::of).collect();
        let data = |d: &TlsaData| {
            if unknown.contains(d) {
                format!("3 1 1 {}", crate::keys::KNOWN_AFTER_APPLY)
            } else {
                d.text()
            }
        };
        let mut out = format!("dns zone {} ({}):\n", self.zone, self.server);
        for r in &self.remove {
            let _ = writeln!(out, "- {} IN TLSA {} ; {}", r.owner, data(&r.data), r.about);
        }
        for r in &self.add {
            let _ = writeln!(
                out,
                "+ {} {} IN TLSA {} ; {}",
                r.owner,
                r.ttl,
                data(&r.data),
                r.about
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlsa_data_is_the_spki_sha256() {
        let id = crate::tls::generate(
            crate::tls::KeyAlgorithm::EcdsaP256,
            "home.example.net",
            30,
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        let t = TlsaData::of(&id.cert);
        let want = id
            .cert
            .fingerprint(Digest::Sha256, PinKind::PublicKey)
            .as_str()
            .replace(':', "")
            .to_ascii_lowercase();
        assert_eq!(t.hex(), want);
        assert_eq!(t.text(), format!("3 1 1 {want}"));
    }

    #[test]
    fn a_zone_plan_shows_records_added_and_removed() {
        let d = |b: u8| TlsaData {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![b; 2],
        };
        let p = ZonePlan {
            zone: "example.net".into(),
            server: "127.0.0.53:53".into(),
            add: vec![RecordChange {
                owner: "_25._tcp.home.example.net.".into(),
                ttl: 300,
                data: d(0xab),
                about: "home next key".into(),
            }],
            remove: vec![RecordChange {
                owner: "_25._tcp.home.example.net.".into(),
                ttl: 0,
                data: d(1),
                about: "home retired key".into(),
            }],
            waits: BTreeMap::new(),
        };
        assert_eq!(
            p.render(&[]),
            "dns zone example.net (127.0.0.53:53):\n\
             - _25._tcp.home.example.net. IN TLSA 3 1 1 0101 ; home retired key\n\
             + _25._tcp.home.example.net. 300 IN TLSA 3 1 1 abab ; home next key\n"
        );
    }
}
