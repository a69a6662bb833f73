//! Everything Exim-specific: the facts script and its parser, the files a
//! host needs, and the apply script ([`script`]).
//!
//! The configuration (lab-verified, see lab/EXIM.md) lives in fragments in
//! `CONFIG_DIR/mxpin/`, hooked into the admin's single `exim4.conf` by four
//! `.include` lines ([`conf`]). Exim can only pin certificates (there is no
//! public-key expansion), so a backup trusts a file holding exactly its
//! primary's current and next certificates, and an `event_action` refuses
//! any certificate whose SHA-256 is not pinned (OpenSSL builds add the
//! system CAs to that file; Debian's GnuTLS build does not).

pub mod conf;
pub mod render;
pub mod script;

use std::collections::BTreeMap;

use crate::desired::{HostDesired, Origin, StoredKeys, StoredPair};
use crate::facts::{Sections, SHELL_HELPERS};
use crate::inventory::{Host, Inventory, Settings};
use crate::mta::{change_for, FoundFile, RouteCheck, Steps};
use crate::plan::{Action, Content, FileChange, HostPlan, PinnedRoute};
use crate::shell::quote;
use crate::templates::Templates;
use crate::tls::{Certificate, Digest, PinKind, SecretPem};

/// Directory under the config dir holding every file mxpin writes.
pub const OWNED_DIR: &str = "mxpin";

/// The fragments [`conf`] includes and the lookup files they read.
const FRAGMENTS: [&str; 6] = [
    "main.conf",
    "acl_rcpt.conf",
    "routers.conf",
    "transports.conf",
    "relay_recipients",
    "pins",
];

/// Key slots: (slot, key file, certificate file).
const SLOTS: [(&str, &str, &str); 2] = [
    ("current", "current.key", "current.crt"),
    ("next", "next.key", "next.crt"),
];

/// The trust file of a backed-up primary, by mx name (the transport reads
/// `peer-$host.pem`).
fn peer_file(mx: &str) -> String {
    format!("peer-{mx}.pem")
}

/// The one read-only remote command that reads an Exim host's facts.
pub fn facts_script(host: &Host, extra: &str) -> String {
    let files: Vec<&str> = SLOTS
        .iter()
        .flat_map(|(_, k, c)| [*k, *c])
        .chain(FRAGMENTS)
        .collect();
    format!(
        r#"mxpin_facts() {{
LC_ALL=C; export LC_ALL
PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin:/usr/local/bin:$PATH; export PATH
{SHELL_HELPERS}C={c}
M="$C/{OWNED_DIR}"
put uid "$(id -u)"
X=$(command -v exim4 || command -v exim) || {{ put error "exim4 not found: is Exim installed?"; return 0; }}
put bin "$X"
v=$("$X" -bV 2>&1) || {{ put error "exim4 -bV failed: $(printf '%s' "$v" | head -n 3)"; return 0; }}
put version "$v"
cf=$("$X" -bP config_file 2>&1) || {{ put error "exim4 -bP config_file failed: $cf"; return 0; }}
put config_file "$cf"
o=$("$X" -bP pid_file_path exim_group acl_smtp_rcpt 2>&1) || {{ put error "exim4 -bP failed: $o"; return 0; }}
put options "$o"
if [ -f "$cf" ]; then putfile config "$cf"; fi
g=$(printf '%s\n' "$o" | sed -n 's/^exim_group = //p')
put gid "$(getent group "$g" | cut -d: -f3)"
p=$(printf '%s\n' "$o" | sed -n 's/^pid_file_path = //p')
pid=''
if [ -r "$p" ]; then read -r pid < "$p" || :; fi
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then put running yes; else put running no; fi
if [ -d "$M" ]; then put ls "$(ls -ln "$M")"; fi
for f in {files}; do
  if [ -f "$M/$f" ]; then putfile "file:$f" "$M/$f"; fi
done
for f in "$M"/peer-*.pem; do
  if [ -f "$f" ]; then putfile "file:${{f##*/}}" "$f"; fi
done
{extra}put end ok
}}
mxpin_facts
"#,
        c = quote(host.config_dir.as_str()),
        files = files.join(" "),
    )
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
    /// Group Exim runs as (it must read the served key).
    pub gid: u32,
    pub running: bool,
    pub files: BTreeMap<String, FoundFile>,
    /// Output of verification checks run with the facts, by check name.
    pub checks: BTreeMap<String, String>,
}

impl EximFacts {
    pub fn from_sections(s: &Sections) -> Result<Self, String> {
        if let Some(e) = s.get("error") {
            return Err(e.to_string());
        }
        if s.get("end") != Some("ok") {
            return Err("facts are incomplete: the connection ended early".into());
        }
        match s.get("uid") {
            Some("0") => {}
            Some(uid) => {
                return Err(format!(
                    "remote commands run as uid {uid}, not root: log in as root or set sudo = true"
                ))
            }
            None => return Err("no uid in facts".into()),
        }
        let need = |name: &str| {
            s.get(name)
                .map(str::to_string)
                .ok_or_else(|| format!("facts lack {name}"))
        };
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
        let ls_of = |name: &str| {
            listing
                .lines()
                .find(|l| l.split_whitespace().last() == Some(name))
                .unwrap_or_default()
                .to_string()
        };
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
            gid,
            running: need("running")? == "yes",
            files,
            checks,
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
        Certificate::all_from_pem(file.content.raw())
            .map(|certs| {
                certs
                    .iter()
                    .map(|c| c.fingerprint(s.digest, s.pin).to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The keys mxpin finds in its slots.
    pub fn stored_keys(&self) -> StoredKeys {
        let pair = |key: &str, cert: &str| StoredPair {
            key: match self.files.get(key).map(|f| &f.content) {
                Some(Content::Secret(s)) => Some(s.clone()),
                _ => None,
            },
            cert: self.files.get(cert).map(|f| f.content.raw().to_string()),
        };
        StoredKeys {
            current: pair(SLOTS[0].1, SLOTS[0].2),
            next: pair(SLOTS[1].1, SLOTS[1].2),
        }
    }
}

/// A routing test apply and verify run with `exim -bt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTest {
    pub address: String,
    /// The primary's mx and port the address must be routed to.
    pub mx: String,
    pub port: u16,
}

impl RouteTest {
    /// Whether `exim -bt` output shows the address routed by mxpin's router
    /// and transport to the primary.
    pub fn passes(&self, output: &str) -> bool {
        let port = if self.port == 25 {
            String::new()
        } else {
            format!(" port={}", self.port)
        };
        output.contains("router = mxpin_backup, transport = mxpin_smtp")
            && output.lines().any(|l| {
                l.trim_start().starts_with(&format!("host {} [", self.mx)) && l.contains(&port)
            })
    }
}

/// What the Exim apply script needs beyond the file changes.
#[derive(Debug, Clone, Default)]
pub struct ApplySteps {
    pub config_dir: String,
    pub bin: String,
    pub config_file: String,
    /// The configuration as read by facts: apply refuses if it changed.
    pub config_before: String,
    pub pid_file: String,
    pub running: bool,
    pub route_tests: Vec<RouteTest>,
}

/// Shell that checks, on an Exim backup, how each backed-up domain routes.
pub fn verify_snippet(steps: &ApplySteps) -> String {
    let mut s = String::new();
    for t in &steps.route_tests {
        s.push_str(&format!(
            "put {} \"$({} -bt {} 2>&1)\"\n",
            quote(&format!("bt:{}", t.address)),
            quote(&steps.bin),
            quote(&t.address)
        ));
    }
    s
}

/// Reads the results of [`verify_snippet`] from the facts.
pub fn route_checks(steps: &ApplySteps, f: &EximFacts) -> Vec<RouteCheck> {
    steps
        .route_tests
        .iter()
        .map(|t| {
            let out = f
                .checks
                .get(&format!("bt:{}", t.address))
                .cloned()
                .unwrap_or_default();
            let ok = t.passes(&out);
            RouteCheck {
                route: format!("[{}]:{}", t.mx, t.port),
                ok,
                what: if ok {
                    format!(
                        "exim -bt {}: mxpin_backup to {} port {} over mxpin_smtp (pinned TLS)",
                        t.address, t.mx, t.port
                    )
                } else {
                    format!(
                        "exim -bt {}: not routed by mxpin_backup to {}: {}",
                        t.address,
                        t.mx,
                        out.lines().last().unwrap_or("no output").trim()
                    )
                },
            }
        })
        .collect()
}

/// Plans one Exim host: pure, from desired state and facts.
pub fn plan_host(
    d: &HostDesired,
    f: &EximFacts,
    inv: &Inventory,
    t: &Templates,
) -> Result<HostPlan, String> {
    let dir = d.host.config_dir.as_str();
    let owned = format!("{dir}/{OWNED_DIR}");
    let single = format!("{dir}/exim4.conf");
    if f.config_file != single {
        return Err(format!(
            "Exim reads {}: mxpin supports a single {single} (Debian's generated configuration \
             from update-exim4.conf is not supported yet)",
            f.config_file
        ));
    }
    let config = f
        .config
        .clone()
        .ok_or_else(|| format!("{single} not found"))?;
    let mut changes = Vec::new();
    let mut notes = Vec::new();

    // Keys: Exim's reception processes run as its group and read the served
    // key themselves, so current.key is 0640 root:GROUP.
    let slots = [("current", &d.keys.current), ("next", &d.keys.next)];
    for ((name, slot), (_, key_file, cert_file)) in slots.iter().zip(SLOTS) {
        match &slot.origin {
            Origin::Kept => {}
            Origin::Generated => notes.push(format!("new {name} key")),
            Origin::Promoted => notes.push(format!("rotation: the staged next key becomes {name}")),
            Origin::Reissued(why) => notes.push(format!(
                "{name} certificate re-issued for the same key: {why}"
            )),
        }
        let id = &slot.identity;
        let (mode, gid) = if *name == "current" {
            (0o640, f.gid)
        } else {
            (0o600, 0)
        };
        changes.extend(change_for(
            format!("{owned}/{key_file}"),
            f.files.get(key_file),
            Some(Content::Secret(id.key.clone())),
            mode,
            gid,
        ));
        changes.extend(change_for(
            format!("{owned}/{cert_file}"),
            f.files.get(cert_file),
            Some(Content::Text(id.cert.pem().to_string())),
            0o644,
            0,
        ));
    }

    // Routes, one trust file and pin line per primary.
    let routes: Vec<render::Route> = d
        .routes
        .iter()
        .map(|r| {
            let h = inv.host(&r.primary);
            render::Route {
                domain: r.domain.to_string(),
                mx: h.mx.to_string(),
                port: h.smtp_port,
            }
        })
        .collect();
    let mut peers: Vec<render::Peer> = Vec::new();
    let mut peer_files: Vec<(String, String)> = Vec::new();
    for r in &d.routes {
        let mx = inv.host(&r.primary).mx.to_string();
        if peers.iter().any(|p| p.mx == mx) {
            continue;
        }
        let sha: Vec<String> = r
            .certs
            .iter()
            .map(|c| {
                c.fingerprint(Digest::Sha256, PinKind::Certificate)
                    .as_str()
                    .replace(':', "")
            })
            .collect();
        peers.push(render::Peer {
            mx: mx.clone(),
            cert_sha256: sha,
        });
        let pem: String = r.certs.iter().map(|c| c.pem().to_string()).collect();
        peer_files.push((peer_file(&mx), pem));
    }
    let relays: Vec<render::Relay> = d
        .relays
        .iter()
        .map(|r| render::Relay {
            domain: r.domain.to_string(),
            recipients: r
                .recipients
                .as_ref()
                .map(|l| l.iter().map(|a| a.to_string()).collect()),
        })
        .collect();

    let edited =
        conf::edited(&config, &owned, &f.rcpt_acl).map_err(|e| format!("{single}: {e}"))?;
    let fragments = render::render(
        &owned,
        &routes,
        &peers,
        &relays,
        edited.define_relay_to_domains,
        t,
    )?;
    let texts = [
        ("main.conf", &fragments.main),
        ("acl_rcpt.conf", &fragments.acl_rcpt),
        ("routers.conf", &fragments.routers),
        ("transports.conf", &fragments.transports),
        ("relay_recipients", &fragments.relay_recipients),
        ("pins", &fragments.pins),
    ];
    for (name, text) in texts {
        changes.extend(change_for(
            format!("{owned}/{name}"),
            f.files.get(name),
            Some(Content::Text(text.clone())),
            0o644,
            0,
        ));
    }
    for (name, pem) in &peer_files {
        changes.extend(change_for(
            format!("{owned}/{name}"),
            f.files.get(name),
            Some(Content::Text(pem.clone())),
            0o644,
            0,
        ));
    }
    for (name, found) in &f.files {
        if name.starts_with("peer-") && !peer_files.iter().any(|(n, _)| n == name) {
            changes.extend(change_for(
                format!("{owned}/{name}"),
                Some(found),
                None,
                0o644,
                0,
            ));
        }
    }
    if edited.text != config {
        changes.push(FileChange {
            path: single.clone(),
            action: Action::Modify,
            old: Some(Content::Text(config.clone())),
            new: Some(Content::Text(edited.text.clone())),
            mode: 0o644,
            group: 0,
        });
    }

    let mut commands = Vec::new();
    let needs_work = !changes.is_empty();
    if needs_work {
        commands.push(format!("{} -bV -C (the new {single})", f.bin));
        if f.running {
            commands.push(format!("kill -HUP $(cat {})", f.pid_file));
        } else {
            notes.push("Exim is not running: apply will not start or reload it".into());
        }
    } else {
        notes.clear();
    }
    let switches_key = changes
        .iter()
        .filter(|c| c.action != Action::Chmod)
        .any(|c| c.path.ends_with("/current.key") || c.path.ends_with("/current.crt"))
        || (edited.text != config && !config.contains(&format!("{owned}/main.conf")));
    // One routing test per backed-up domain: a listed recipient, or the
    // postmaster of a domain that takes any address.
    let route_tests = d
        .routes
        .iter()
        .map(|r| {
            let h = inv.host(&r.primary);
            let address = d
                .relays
                .iter()
                .find(|x| x.domain == r.domain)
                .and_then(|x| x.recipients.as_ref())
                .and_then(|l| l.first())
                .map(|a| a.to_string())
                .unwrap_or_else(|| format!("postmaster@{}", r.domain));
            RouteTest {
                address,
                mx: h.mx.to_string(),
                port: h.smtp_port,
            }
        })
        .collect();
    Ok(HostPlan {
        host: d.host.name.clone(),
        changes,
        commands,
        notes,
        switches_key,
        pinned: PinnedRoute::of(&d.routes),
        steps: Steps::Exim(ApplySteps {
            config_dir: dir.to_string(),
            bin: f.bin.clone(),
            config_file: single,
            config_before: config,
            pid_file: f.pid_file.clone(),
            running: f.running,
            route_tests,
        }),
    })
}

#[cfg(test)]
mod tests;
