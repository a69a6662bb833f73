//! The Exim facts script and its parser: what one read-only remote command
//! learns of a host (binary, version, configuration, listening ports, the
//! files in mxpin's directory, the recipients it accepts), and what the
//! host pins.

use std::collections::BTreeMap;

use super::{peer_file, recipients, CONFD, DEBIAN_MACROS, FRAGMENTS, SLOTS};
use crate::desired::StoredKeys;
use crate::facts::Sections;
use crate::inventory::{Host, Settings};
use crate::mta::FoundFile;
use crate::plan::Content;
use crate::tls::SecretPem;

/// The one read-only remote command that reads an Exim host's facts.
pub fn facts_script(host: &Host, extra: &str) -> String {
    let files: Vec<&str> = SLOTS
        .iter()
        .flat_map(|(_, k, c)| [*k, *c])
        .chain(FRAGMENTS)
        .collect();
    let body = format!(
        r#"X=$(command -v exim4 || command -v exim) || {{ put error "exim4 not found: is Exim installed?"; return 0; }}
put bin "$X"
v=$("$X" -bV 2>&1) || {{ put error "exim4 -bV failed: $(printf '%s' "$v" | head -n 3)"; return 0; }}
put version "$v"
cf=$("$X" -bP config_file 2>&1) || {{ put error "exim4 -bP config_file failed: $cf"; return 0; }}
put config_file "$cf"
o=$("$X" -bP pid_file_path exim_group acl_smtp_rcpt daemon_smtp_ports local_interfaces 2>&1) || {{ put error "exim4 -bP failed: $o"; return 0; }}
put options "$o"
# Every file in one bundle, with its `ls -ln` line (see putfiles): NAME
# PATH pairs in "$@".
set --
if [ -f "$cf" ]; then set -- config "$cf"; fi
g=$(printf '%s\n' "$o" | sed -n 's/^exim_group = //p')
put gid "$(getent group "$g" | cut -d: -f3)"
p=$(printf '%s\n' "$o" | sed -n 's/^pid_file_path = //p')
if [ -n "$p" ] && daemon_pid "$p"; then put running yes; else put running no; fi
if [ -f "$C/update-exim4.conf.conf" ]; then set -- "$@" update-exim4.conf.conf "$C/update-exim4.conf.conf"; fi
for f in {confd}; do
  if [ -f "$C/conf.d/$f" ]; then set -- "$@" "confd:$f" "$C/conf.d/$f"; fi
done
# Debian's layout only: the macros mxpin would define there.
if [ -f "$C/update-exim4.conf.conf" ]; then
  for m in {macros}; do
    if v=$("$X" -bP macro "$m" 2>/dev/null); then put "macro:$m" "$v"; fi
  done
fi
for f in {files}; do
  if [ -f "$M/$f" ]; then set -- "$@" "file:$f" "$M/$f"; fi
done
for f in "$M"/peer-*.pem; do
  if [ -f "$f" ]; then set -- "$@" "file:${{f##*/}}" "$f"; fi
done
putfiles ls "$@"
set --
"#,
        files = files.join(" "),
        confd = CONFD.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(" "),
        macros = DEBIAN_MACROS.join(" "),
    );
    crate::mta::facts_function(host, &body, &recipients::script(host), extra)
}

#[derive(Debug, Clone)]
pub struct EximFacts {
    pub bin: String,
    /// "4.96".
    pub version: String,
    /// "GnuTLS" or "OpenSSL".
    pub tls_library: String,
    /// The configuration file Exim uses, and its text.
    pub config_file: String,
    pub config: Option<String>,
    pub pid_file: String,
    pub rcpt_acl: String,
    /// The ports the daemon listens on: `daemon_smtp_ports`, and the ports
    /// `local_interfaces` names (`addr.port`, `[addr]:port`).
    pub listen_ports: Vec<u16>,
    /// `local_interfaces` gives some interface its own port, which
    /// `daemon_smtp_ports` does not change.
    pub interface_ports: bool,
    /// Group Exim runs as (it must read the served key).
    pub gid: u32,
    pub running: bool,
    pub files: BTreeMap<String, FoundFile>,
    /// Debian's update-exim4.conf.conf, when the host has one.
    pub update_conf: Option<String>,
    /// mxpin's conf.d files (Debian layout), by path under conf.d.
    pub confd: BTreeMap<String, FoundFile>,
    /// Values of [`DEBIAN_MACROS`] the configuration defines.
    pub macros: BTreeMap<String, String>,
    /// Output of verification checks run with the facts, by check name.
    pub checks: BTreeMap<String, String>,
    /// What the host accepts for the domains it is asked about
    /// (`recipients = "primary"`).
    pub recipients: crate::recipients::Read,
}

/// The items of an Exim list: `sep` (`:` unless the list starts with
/// `<X`) separates them, and a doubled separator stands for itself.
fn exim_list(text: &str) -> Vec<String> {
    let text = text.trim();
    let (sep, body) = match text.strip_prefix('<') {
        Some(rest) if !rest.is_empty() => {
            let c = rest.chars().next().expect("not empty");
            (c, &rest[c.len_utf8()..])
        }
        _ => (':', text),
    };
    let mut items = Vec::new();
    let mut item = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == sep {
            if chars.peek() == Some(&sep) {
                chars.next();
                item.push(sep);
            } else {
                items.push(std::mem::take(&mut item));
            }
        } else {
            item.push(c);
        }
    }
    items.push(item);
    items
        .into_iter()
        .map(|i| i.trim().to_string())
        .filter(|i| !i.is_empty())
        .collect()
}

/// The ports Exim's daemon listens on, from its `daemon_smtp_ports` (port
/// numbers or service names) and the ports given in `local_interfaces`.
pub(super) fn listen_ports(daemon_smtp_ports: &str, local_interfaces: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = exim_list(daemon_smtp_ports)
        .iter()
        .filter_map(|p| match p.as_str() {
            "smtp" => Some(25),
            "smtps" | "submissions" => Some(465),
            "submission" => Some(587),
            p => p.parse().ok(),
        })
        .collect();
    for i in exim_list(local_interfaces) {
        let port: Option<u16> =
            if let Some((_, p)) = i.strip_prefix('[').and_then(|r| r.split_once("]:")) {
                p.parse().ok()
            } else {
                i.rsplit_once('.')
                    .filter(|(a, _)| a.parse::<std::net::IpAddr>().is_ok())
                    .and_then(|(_, p)| p.parse().ok())
            };
        ports.extend(port);
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Whether the facts script (with its verification checks) writes a
/// section of this name.
fn known_section(name: &str) -> bool {
    let confd = |f: &str| CONFD.iter().any(|(c, _)| *c == f);
    let file = |f: &str| {
        SLOTS.iter().any(|(_, k, c)| *k == f || *c == f)
            || FRAGMENTS.contains(&f)
            || (f.starts_with("peer-") && f.ends_with(".pem"))
    };
    matches!(
        name,
        "uid"
            | "error"
            | "bin"
            | "version"
            | "config_file"
            | "options"
            | "config"
            | "gid"
            | "running"
            | "update-exim4.conf.conf"
            | "ls"
            | crate::facts::END
    ) || name.strip_prefix("confd:").is_some_and(confd)
        || name
            .strip_prefix("macro:")
            .is_some_and(|m| DEBIAN_MACROS.contains(&m))
        || recipients::known_section(name)
        || name.strip_prefix("file:").is_some_and(file)
        || name.starts_with("bt:")
}

impl EximFacts {
    pub fn from_sections(s: &Sections) -> Result<Self, String> {
        crate::mta::check_facts(s, known_section)?;
        let need = |name: &str| crate::mta::need(s, name);
        let v = need("version")?;
        let version = v
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("Exim version "))
            .and_then(|l| l.split_whitespace().next())
            .ok_or_else(|| format!("cannot read the Exim version from {:?}", v.lines().next()))?
            .to_string();
        let support = v
            .lines()
            .find(|l| l.starts_with("Support for:"))
            .unwrap_or_default();
        let tls_library = ["GnuTLS", "OpenSSL"]
            .into_iter()
            .find(|lib| support.split_whitespace().any(|w| w == *lib))
            .ok_or_else(|| format!("Exim {version} is built without TLS support"))?
            .to_string();
        let options = need("options")?;
        let option = |name: &str| {
            options
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} = ")))
                .map(str::to_string)
                .ok_or_else(|| format!("facts lack the Exim option {name}"))
        };
        let gid = need("gid")?;
        let gid = gid
            .trim()
            .parse()
            .map_err(|_| format!("cannot read the group id of Exim's group ({gid:?})"))?;
        let listing = s.get("ls").unwrap_or_default();
        let ls_of = |name: &str| crate::mta::ls_line(listing, name);
        let mut files = BTreeMap::new();
        for (name, text) in s.iter() {
            let Some(name) = name.strip_prefix("file:") else {
                continue;
            };
            let content = if name.ends_with(".key") {
                Content::Secret(SecretPem::new(text.to_string()))
            } else {
                Content::Text(text.to_string())
            };
            files.insert(
                name.to_string(),
                FoundFile {
                    content,
                    ls: ls_of(name),
                },
            );
        }
        let mut confd = BTreeMap::new();
        for (f, _) in CONFD {
            if let Some(text) = s.get(&format!("confd:{f}")) {
                confd.insert(
                    f.to_string(),
                    FoundFile {
                        content: Content::Text(text.to_string()),
                        ls: ls_of(&format!("conf.d/{f}")),
                    },
                );
            }
        }
        let macros = s
            .iter()
            .filter_map(|(n, v)| Some((n.strip_prefix("macro:")?.to_string(), v.to_string())))
            .collect();
        let checks = s
            .iter()
            .filter(|(n, _)| n.starts_with("bt:"))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        Ok(EximFacts {
            bin: need("bin")?,
            version,
            tls_library,
            config_file: need("config_file")?.trim().to_string(),
            config: s.get("config").map(str::to_string),
            pid_file: option("pid_file_path")?,
            rcpt_acl: option("acl_smtp_rcpt")?,
            // Exim's default daemon_smtp_ports is smtp; older facts lack it.
            listen_ports: listen_ports(
                &option("daemon_smtp_ports").unwrap_or_else(|_| "smtp".into()),
                &option("local_interfaces").unwrap_or_default(),
            ),
            interface_ports: !listen_ports("", &option("local_interfaces").unwrap_or_default())
                .is_empty(),
            gid,
            running: need("running")? == "yes",
            files,
            update_conf: s.get("update-exim4.conf.conf").map(str::to_string),
            confd,
            macros,
            checks,
            recipients: recipients::from_sections(s),
        })
    }

    /// What this host pins for `next_hop` (`[mx]:port`), in the inventory's
    /// digest and pin kind: the certificates of its trust file for that mx,
    /// when its router sends there.
    pub fn pins_for(&self, next_hop: &str, s: &Settings) -> Vec<String> {
        let Some((mx, port)) = next_hop.strip_prefix('[').and_then(|h| h.split_once("]:")) else {
            return vec![];
        };
        let routed = self
            .files
            .get("routers.conf")
            .is_some_and(|f| f.content.raw().contains(&format!(" {mx}::{port} ")));
        let Some(file) = self.files.get(&peer_file(mx)).filter(|_| routed) else {
            return vec![];
        };
        crate::pins::of_trust_file(file.content.raw(), s)
    }

    /// The keys mxpin finds in its slots.
    pub fn stored_keys(&self) -> StoredKeys {
        crate::mta::stored_keys(&self.files)
    }
}
