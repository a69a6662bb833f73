//! The `[dns]` section of the inventory, and the TSIG secret it names.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use toml::Spanned;
use zeroize::Zeroizing;

use crate::inventory::{DnsName, Domain, InventoryError};

/// One zone mxpin writes TLSA records into, and its primary server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Zone {
    pub name: DnsName,
    /// `host:port` of the primary that accepts RFC 2136 updates.
    pub server: String,
}

/// `[dns]`: where to publish and whom to ask.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DnsConfig {
    /// Longest name first, so the first zone a name falls in is its own.
    pub zones: Vec<Zone>,
    pub tsig_key_name: String,
    /// `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
    pub tsig_algorithm: String,
    /// Read on the controller, only when an update is sent.
    pub tsig_secret_file: PathBuf,
    /// `host:port` of a DNSSEC-validating resolver.
    pub resolver: String,
    /// TTL of the records mxpin adds.
    pub ttl: u32,
}

impl DnsConfig {
    /// The zone `name` is in (the longest matching zone).
    pub fn zone_of(&self, name: &str) -> Option<&Zone> {
        let name = name.trim_end_matches('.');
        self.zones.iter().find(|z| {
            let z = z.name.as_str();
            name == z || name.ends_with(&format!(".{z}"))
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawZone {
    name: Spanned<String>,
    server: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    server: Option<Spanned<String>>,
    zone: Option<Spanned<String>>,
    #[serde(default)]
    zones: Vec<RawZone>,
    tsig_key_name: Spanned<String>,
    tsig_algorithm: Option<Spanned<String>>,
    tsig_secret_file: Spanned<String>,
    resolver: Spanned<String>,
    ttl: Option<Spanned<i64>>,
}

const ALGORITHMS: [&str; 3] = ["hmac-sha256", "hmac-sha384", "hmac-sha512"];

/// `host:port` or `host` (port 53), as given; resolved when used.
fn server(s: &str) -> Result<String, String> {
    let bad = || format!("invalid DNS server {s:?}: expected HOST:PORT (\"ns1.example.net:53\")");
    if s.is_empty() || s.len() > 255 || s.chars().any(|c| c.is_whitespace()) {
        return Err(bad());
    }
    if let Ok(addr) = s.parse::<std::net::SocketAddr>() {
        return Ok(addr.to_string());
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            DnsName::parse(host).map_err(|_| bad())?;
            port.parse::<u16>().map_err(|_| bad())?;
            Ok(s.to_string())
        }
        None => match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(std::net::SocketAddr::new(ip, 53).to_string()),
            Err(_) => {
                DnsName::parse(s).map_err(|_| bad())?;
                Ok(format!("{s}:53"))
            }
        },
        _ => Err(bad()),
    }
}

/// Checks `[dns]`: `at(offset, message)` makes the inventory's error.
/// Every host that receives mail on its smtp_port (primaries and backups
/// of `domains`) must have its MX name in one of the zones.
pub(crate) fn check(
    raw: &Spanned<RawDns>,
    at: &dyn Fn(usize, String) -> InventoryError,
    base: &Path,
    hosts: &[crate::inventory::Host],
    domains: &[Domain],
) -> Result<DnsConfig, InventoryError> {
    let start = |s: &Spanned<String>| s.span().start;
    let r = raw.get_ref();
    let mut zones = Vec::new();
    let default_server = match &r.server {
        Some(s) => Some(server(s.get_ref()).map_err(|m| at(start(s), m))?),
        None => None,
    };
    let mut named: Vec<(&Spanned<String>, Option<&Spanned<String>>)> = r
        .zones
        .iter()
        .map(|z| (&z.name, z.server.as_ref()))
        .collect();
    if let Some(z) = &r.zone {
        named.insert(0, (z, None));
    }
    if named.is_empty() {
        return Err(at(
            raw.span().start,
            "[dns]: no zone: give zone = \"example.net\" or [[dns.zones]]".into(),
        ));
    }
    for (name, srv) in named {
        let zone = DnsName::parse(name.get_ref())
            .map_err(|m| at(start(name), format!("dns zone: {m}")))?;
        let srv = match (srv, &default_server) {
            (Some(s), _) => server(s.get_ref()).map_err(|m| at(start(s), m))?,
            (None, Some(d)) => d.clone(),
            (None, None) => {
                return Err(at(
                    start(name),
                    format!("dns zone {zone}: no server (give [dns] server or the zone's server)"),
                ))
            }
        };
        if zones.iter().any(|z: &Zone| z.name == zone) {
            return Err(at(start(name), format!("dns zone {zone} is given twice")));
        }
        zones.push(Zone {
            name: zone,
            server: srv,
        });
    }
    zones.sort_by_key(|z| std::cmp::Reverse(z.name.as_str().len()));
    let key = r.tsig_key_name.get_ref();
    DnsName::parse(key).map_err(|m| at(start(&r.tsig_key_name), format!("tsig_key_name: {m}")))?;
    let algorithm = match &r.tsig_algorithm {
        None => ALGORITHMS[0].to_string(),
        Some(a) if ALGORITHMS.contains(&a.get_ref().as_str()) => a.get_ref().clone(),
        Some(a) => {
            return Err(at(
                start(a),
                format!(
                    "unknown tsig_algorithm {:?}: expected {}",
                    a.get_ref(),
                    ALGORITHMS.join(", ")
                ),
            ))
        }
    };
    let secret_path = r.tsig_secret_file.get_ref();
    if secret_path.is_empty() {
        return Err(at(
            start(&r.tsig_secret_file),
            "tsig_secret_file is empty".into(),
        ));
    }
    let tsig_secret_file = base.join(secret_path);
    // Checked now (exists, mode, form), so that a bad secret stops the run
    // before any host changes; read again when an update is sent.
    Secret::read(&tsig_secret_file).map_err(|m| at(start(&r.tsig_secret_file), m))?;
    let resolver = server(r.resolver.get_ref()).map_err(|m| at(start(&r.resolver), m))?;
    let ttl = match &r.ttl {
        None => 3600,
        Some(t) => match u32::try_from(*t.get_ref()) {
            Ok(v) if (1..=86400).contains(&v) => v,
            _ => return Err(at(t.span().start, "dns ttl: 1 to 86400 seconds".into())),
        },
    };
    let cfg = DnsConfig {
        zones,
        tsig_key_name: key.clone(),
        tsig_algorithm: algorithm,
        tsig_secret_file,
        resolver,
        ttl,
    };
    for h in hosts {
        let receives = domains
            .iter()
            .any(|d| d.primary == h.name || d.backups.contains(&h.name));
        if receives && cfg.zone_of(h.mx.as_str()).is_none() {
            let names: Vec<&str> = cfg.zones.iter().map(|z| z.name.as_str()).collect();
            return Err(at(
                raw.span().start,
                format!(
                    "[dns]: host {} receives mail as {}, which is in none of the zones ({}): add its zone to [[dns.zones]]",
                    h.name,
                    h.mx,
                    names.join(", ")
                ),
            ));
        }
    }
    Ok(cfg)
}

/// A TSIG secret, read on the controller. Never shown: its Debug says
/// only that it is one, and it is wiped when dropped.
pub struct Secret(Zeroizing<Vec<u8>>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Reads `path`: the base64 secret alone (knot's `secret:`, PowerDNS's
    /// `pdnsutil` output), or a BIND key file (`secret "...";`). Refused
    /// when group or others may read or write it. Errors never quote it.
    pub fn read(path: &Path) -> Result<Secret, String> {
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("tsig_secret_file {shown}: cannot read: {e}"))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "tsig_secret_file {shown}: group or others may read it (mode {mode:04o}); chmod 600 {shown}"
            ));
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("tsig_secret_file {shown}: cannot read: {e}"))?,
        );
        Self::parse(&text).map_err(|m| format!("tsig_secret_file {shown}: {m}"))
    }

    fn parse(text: &str) -> Result<Secret, &'static str> {
        let b64: &str = match text.find("secret") {
            Some(i) => {
                let rest = &text[i + "secret".len()..];
                let open = rest.find('"').ok_or("no quoted secret after `secret`")?;
                let rest = &rest[open + 1..];
                let close = rest.find('"').ok_or("unterminated secret")?;
                &rest[..close]
            }
            None => text.trim(),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| "the secret is not base64")?;
        if bytes.is_empty() {
            return Err("the secret is empty");
        }
        Ok(Secret(Zeroizing::new(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_knot_and_bind_form() {
        let knot = Secret::parse("c2VjcmV0LWJ5dGVz\n").unwrap();
        assert_eq!(knot.bytes(), b"secret-bytes");
        let bind = Secret::parse(
            "key \"mxpin\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LWJ5dGVz\";\n};\n",
        )
        .unwrap();
        assert_eq!(bind.bytes(), b"secret-bytes");
        assert_eq!(format!("{bind:?}"), "Secret(..)");
        assert!(Secret::parse("not base64 !!").is_err());
    }

    #[test]
    fn a_readable_secret_file_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tsig.key");
        std::fs::write(&path, "c2VjcmV0LWJ5dGVz\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = Secret::read(&path).unwrap_err();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Secret::read(&path).unwrap().bytes(), b"secret-bytes");
        std::fs::write(&path, "%%%%\n").unwrap();
        let e = Secret::read(&path).unwrap_err();
        assert!(!e.contains("%%%%"), "{e}");
    }

    #[test]
    fn servers_and_zones() {
        assert_eq!(server("127.0.0.53:53").unwrap(), "127.0.0.53:53");
        assert_eq!(server("127.0.0.53").unwrap(), "127.0.0.53:53");
        assert_eq!(server("ns1.example.net").unwrap(), "ns1.example.net:53");
        assert!(server("ns1.example.net:x").is_err());
        assert!(server("a b").is_err());
        let cfg = DnsConfig {
            zones: vec![
                Zone {
                    name: DnsName::parse("sub.example.net").unwrap(),
                    server: "127.0.0.1:53".into(),
                },
                Zone {
                    name: DnsName::parse("example.net").unwrap(),
                    server: "127.0.0.2:53".into(),
                },
            ],
            tsig_key_name: "k".into(),
            tsig_algorithm: "hmac-sha256".into(),
            tsig_secret_file: "/x".into(),
            resolver: "127.0.0.1:53".into(),
            ttl: 60,
        };
        assert_eq!(
            cfg.zone_of("mx.sub.example.net.").unwrap().server,
            "127.0.0.1:53"
        );
        assert_eq!(
            cfg.zone_of("home.example.net").unwrap().server,
            "127.0.0.2:53"
        );
        assert!(cfg.zone_of("example.org").is_none());
        assert!(cfg.zone_of("badexample.net").is_none());
    }
}
