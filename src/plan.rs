//! Plans: what would change on each host, and how to show it.
//!
//! A plan is data: computing one never touches a host. Rendering masks every
//! private key, in text and in JSON.

use std::fmt::Write as _;

use owo_colors::OwoColorize as _;
use serde::Serialize;

use crate::inventory::HostName;
use crate::tls::{Certificate, Digest, PinKind, SecretPem, HIDDEN};

/// How fingerprints are shown: the inventory's digest and pin kind, the
/// form every pin of the fleet is written in, so that what a plan shows can
/// be compared with the pins in policy tables and peers' output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinStyle {
    pub digest: Digest,
    pub kind: PinKind,
}

impl PinStyle {
    /// The inventory's defaults, for tests.
    #[cfg(test)]
    pub(crate) const SHA256_KEY: PinStyle = PinStyle {
        digest: Digest::Sha256,
        kind: PinKind::PublicKey,
    };
}

impl From<&crate::inventory::Settings> for PinStyle {
    fn from(s: &crate::inventory::Settings) -> Self {
        PinStyle {
            digest: s.digest,
            kind: s.pin,
        }
    }
}

/// What a person checks of a certificate file, in one line:
/// `CN=home.example.net, ECDSA P-256, until 2029-03-05, pin AB:CD:…`.
/// PEM bodies are never shown; a chain says how many certificates follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    pub subject: String,
    pub key: String,
    /// `YYYY-MM-DD`.
    pub until: String,
    /// In the inventory's digest and pin kind.
    pub pin: String,
    /// Certificates after the first (a chain file).
    pub chained: usize,
}

/// Shown fingerprints: the first 8 bytes, enough to tell keys apart at a
/// glance (the full pin is in the policy table's diff).
const SHOWN_FINGERPRINT_BYTES: usize = 8;

impl CertSummary {
    /// A summary of a file that holds only certificates, else `None`.
    fn of(text: &str, style: PinStyle) -> Option<Self> {
        let blocks = pem::parse_many(text.as_bytes()).ok()?;
        let only_certs = !blocks.is_empty() && blocks.iter().all(|b| b.tag() == "CERTIFICATE");
        // Anything but PEM blocks and whitespace (comments, a key) is shown
        // as text, so that nothing in the file is hidden from the reader.
        let outside: usize = text
            .split("-----END CERTIFICATE-----")
            .map(|part| {
                part.split("-----BEGIN CERTIFICATE-----")
                    .next()
                    .unwrap_or("")
            })
            .map(|gap| gap.trim().len())
            .sum();
        if !only_certs || outside != 0 {
            return None;
        }
        let certs = Certificate::all_from_pem(text).ok()?;
        let leaf = certs.first()?;
        let details = leaf.details();
        let full = leaf.fingerprint(style.digest, style.kind);
        let parts: Vec<&str> = full.as_str().split(':').collect();
        let pin = if parts.len() > SHOWN_FINGERPRINT_BYTES {
            format!("{}…", parts[..SHOWN_FINGERPRINT_BYTES].join(":"))
        } else {
            full.to_string()
        };
        Some(CertSummary {
            subject: details.subject,
            key: details.key,
            until: crate::tls::format_time(details.not_after)
                .chars()
                .take(10)
                .collect(),
            pin,
            chained: certs.len() - 1,
        })
    }

    /// (label, value) of each field shown.
    fn fields(&self) -> [(&'static str, String); 4] {
        let subject = if self.chained == 0 {
            self.subject.clone()
        } else {
            format!("{} (+{} in chain)", self.subject, self.chained)
        };
        [
            ("", subject),
            ("", self.key.clone()),
            ("until ", self.until.clone()),
            ("pin ", self.pin.clone()),
        ]
    }
}

/// `old → new` for each field that changed, the field once where it did not.
fn summary_line(old: Option<&CertSummary>, new: Option<&CertSummary>) -> String {
    let fields: Vec<String> = match (old, new) {
        (Some(o), Some(n)) => o
            .fields()
            .into_iter()
            .zip(n.fields())
            .map(|((label, a), (_, b))| {
                if a == b {
                    format!("{label}{a}")
                } else {
                    format!("{label}{a} → {b}")
                }
            })
            .collect(),
        (Some(c), None) | (None, Some(c)) => c
            .fields()
            .into_iter()
            .map(|(label, v)| format!("{label}{v}"))
            .collect(),
        (None, None) => vec![],
    };
    fields.join(", ")
}

/// A file's content: private keys are never shown or serialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text(String),
    Secret(SecretPem),
}

impl Content {
    /// The bytes to write, for the apply script only.
    pub fn raw(&self) -> &str {
        match self {
            Content::Text(t) => t,
            Content::Secret(s) => s.expose(),
        }
    }

    pub fn is_secret(&self) -> bool {
        matches!(self, Content::Secret(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Modify,
    /// Same content, wrong mode or owner.
    Chmod,
    Delete,
}

#[derive(Debug, Clone)]
pub struct FileChange {
    pub path: String,
    pub action: Action,
    pub old: Option<Content>,
    pub new: Option<Content>,
    /// Mode the file gets (octal), owner root.
    pub mode: u32,
    /// Group owning the file (owner is always root).
    pub group: u32,
}

impl FileChange {
    pub fn is_secret(&self) -> bool {
        self.old.as_ref().is_some_and(Content::is_secret)
            || self.new.as_ref().is_some_and(Content::is_secret)
    }

    /// Old and new summarised, when every side that exists is a file of
    /// certificates only.
    pub fn certificates(
        &self,
        style: PinStyle,
    ) -> Option<(Option<CertSummary>, Option<CertSummary>)> {
        if self.is_secret() {
            return None;
        }
        let summary = |c: &Option<Content>| c.as_ref().map(|c| CertSummary::of(c.raw(), style));
        let (old, new) = (summary(&self.old), summary(&self.new));
        match (old, new) {
            (None, None) => None,
            (Some(None), _) | (_, Some(None)) => None,
            (o, n) => Some((o.flatten(), n.flatten())),
        }
    }

    /// Unified diff of old and new, or `None` for private keys.
    pub fn diff(&self) -> Option<String> {
        if self.is_secret() {
            return None;
        }
        let old = self.old.as_ref().map_or("", Content::raw);
        let new = self.new.as_ref().map_or("", Content::raw);
        if old == new {
            return Some(String::new());
        }
        let (a, b) = match self.action {
            Action::Create => ("/dev/null".to_string(), self.path.clone()),
            Action::Delete => (self.path.clone(), "/dev/null".to_string()),
            _ => (self.path.clone(), self.path.clone()),
        };
        Some(
            similar::TextDiff::from_lines(old, new)
                .unified_diff()
                .context_radius(3)
                .header(&a, &b)
                .to_string(),
        )
    }
}

/// Everything that would change on one host.
#[derive(Debug, Clone)]
pub struct HostPlan {
    pub host: HostName,
    pub changes: Vec<FileChange>,
    /// Commands apply would run, for the reader (postmap, reload).
    pub commands: Vec<String>,
    /// Facts worth telling: keys generated, certificates re-issued.
    pub notes: Vec<String>,
    /// The key this host serves changes in this plan.
    pub switches_key: bool,
    /// The plan installs keys it generates: those shown are examples, as
    /// apply generates its own.
    pub generates_keys: bool,
    /// This plan opens the port its backups route to (a primary's new
    /// `smtp_port` listener): they go after it.
    pub opens_listener: bool,
    /// The trust edges this plan pins (this host the pinner), with the
    /// pins it writes.
    pub pinned: Vec<PinnedEdge>,
    /// Some pin is kept only while its key is being replaced in this run:
    /// a second apply drops it (see [`crate::desired::Pinned`]).
    pub transitional: bool,
    /// What the MTA module needs to apply the plan.
    pub steps: crate::mta::Steps,
}

/// A trust edge as a plan pins it: the managed host at the other end, why,
/// where the controller can see the key it presents, and the fingerprints
/// accepted (current first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedEdge {
    pub pinned: HostName,
    pub purpose: crate::trust::Purpose,
    /// The next-hop the pinner connects to (`None` for a client key).
    pub next_hop: Option<String>,
    /// `host:port` where the pinned host serves this key over SMTP.
    pub probe: Option<String>,
    /// The SNI name to ask for there.
    pub server_name: Option<&'static str>,
    pub pins: Vec<String>,
}

impl PinnedEdge {
    /// The edges a host's desired state pins.
    pub fn of(d: &crate::desired::HostDesired, inv: &crate::inventory::Inventory) -> Vec<Self> {
        use crate::trust::PinSite;
        d.pinned
            .iter()
            .map(|p| PinnedEdge {
                pinned: p.edge.pinned.clone(),
                purpose: p.edge.purpose,
                next_hop: match p.edge.site(inv) {
                    PinSite::Policy(hop) => Some(hop),
                    PinSite::ClientCerts => None,
                },
                probe: p.edge.probe_address(inv),
                server_name: p.edge.server_name(),
                pins: p.pins.iter().map(|f| f.to_string()).collect(),
            })
            .collect()
    }
}

impl HostPlan {
    /// Nothing to write and no other work (a stale table database).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.steps.has_work()
    }

    /// Hosts that pin this one wait for it: it serves a new key, or opens
    /// the port they route to.
    pub fn goes_first(&self) -> bool {
        self.switches_key || self.opens_listener
    }

    /// Hosts whose pins this plan writes.
    pub fn pins_for(&self) -> impl Iterator<Item = &HostName> {
        self.pinned.iter().map(|p| &p.pinned)
    }
}

/// The outcome of planning one host.
#[derive(Debug)]
pub enum HostOutcome {
    Planned(Box<HostPlan>),
    Failed(crate::error::HostError),
}

#[derive(Serialize)]
struct JsonChange<'a> {
    path: &'a str,
    action: Action,
    mode: String,
    secret: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    diff: Option<String>,
    /// Certificate files, summarised (the diff is still given in full).
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<JsonCerts>,
}

#[derive(Serialize)]
struct JsonCerts {
    old: Option<CertSummary>,
    new: Option<CertSummary>,
}

#[derive(Serialize)]
struct JsonHost<'a> {
    host: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<crate::error::Stage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<crate::error::ErrorKind>,
    changes: Vec<JsonChange<'a>>,
    commands: &'a [String],
    notes: &'a [String],
}

fn json_host(o: &HostOutcome, style: PinStyle) -> JsonHost<'_> {
    match o {
        HostOutcome::Failed(e) => JsonHost {
            host: e.host.as_str(),
            status: "error",
            error: Some(&e.message),
            stage: Some(e.stage),
            kind: Some(e.kind),
            changes: vec![],
            commands: &[],
            notes: &[],
        },
        HostOutcome::Planned(p) => JsonHost {
            host: p.host.as_str(),
            status: if p.is_empty() { "unchanged" } else { "changes" },
            error: None,
            stage: None,
            kind: None,
            changes: p
                .changes
                .iter()
                .map(|c| JsonChange {
                    path: &c.path,
                    action: c.action,
                    mode: format!("{:04o}", c.mode),
                    secret: c.is_secret(),
                    diff: c.diff(),
                    certificate: c
                        .certificates(style)
                        .map(|(old, new)| JsonCerts { old, new }),
                })
                .collect(),
            commands: &p.commands,
            notes: &p.notes,
        },
    }
}

/// Machine-readable plan: one object with a `hosts` array.
pub fn to_json(outcomes: &[HostOutcome], style: PinStyle) -> serde_json::Value {
    let hosts: Vec<_> = outcomes.iter().map(|o| json_host(o, style)).collect();
    let pending = outcomes
        .iter()
        .any(|o| matches!(o, HostOutcome::Planned(p) if !p.is_empty()));
    serde_json::json!({ "changes_pending": pending, "hosts": hosts })
}

fn colour_diff(diff: &str, out: &mut String) {
    for line in diff.lines() {
        let _ = if line.starts_with("+++") || line.starts_with("---") {
            writeln!(out, "    {}", line.bold())
        } else if line.starts_with('+') {
            writeln!(out, "    {}", line.green())
        } else if line.starts_with('-') {
            writeln!(out, "    {}", line.red())
        } else if line.starts_with("@@") {
            writeln!(out, "    {}", line.cyan())
        } else {
            writeln!(out, "    {line}")
        };
    }
}

/// Human-readable plan of one host. Colour codes are always emitted; the
/// caller's anstream writer strips them for pipes and NO_COLOR.
/// Certificates are one line each (see [`CertSummary`]), in `style`.
pub fn render_host(plan: &HostPlan, style: PinStyle) -> String {
    let mut out = String::new();
    let n = plan.changes.len();
    let summary = match n {
        0 => "(table databases to rebuild)".to_string(),
        1 => "(1 change)".to_string(),
        _ => format!("({n} changes)"),
    };
    let _ = writeln!(out, "{} {}", plan.host.as_str().bold(), summary.yellow());
    for note in &plan.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    for c in &plan.changes {
        let sign = match c.action {
            Action::Create => "+".green().to_string(),
            Action::Delete => "-".red().to_string(),
            Action::Modify | Action::Chmod => "~".yellow().to_string(),
        };
        let what = match c.action {
            Action::Create => format!("create, mode {:04o}", c.mode),
            Action::Modify => "modify".to_string(),
            Action::Chmod => format!("set mode {:04o}, owner root", c.mode),
            Action::Delete => "delete".to_string(),
        };
        let secret = if c.is_secret() {
            format!(" {HIDDEN}")
        } else {
            String::new()
        };
        if let Some((old, new)) = c.certificates(style) {
            let line = summary_line(old.as_ref(), new.as_ref());
            let _ = writeln!(out, "  {sign} {} ({what}): {line}", c.path);
            continue;
        }
        let _ = writeln!(out, "  {sign} {} ({what}){secret}", c.path);
        if let Some(diff) = c.diff() {
            colour_diff(&diff, &mut out);
        }
    }
    if !plan.commands.is_empty() {
        let _ = writeln!(out, "  then run:");
        for cmd in &plan.commands {
            let _ = writeln!(out, "    {cmd}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(action: Action, old: Option<Content>, new: Option<Content>) -> FileChange {
        FileChange {
            path: "/etc/postfix/mxpin/x".into(),
            action,
            old,
            new,
            mode: 0o644,
            group: 0,
        }
    }

    #[test]
    fn diffs_show_changed_lines_only() {
        let old: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        let new = old.replace("line 10\n", "line ten\n");
        let c = change(
            Action::Modify,
            Some(Content::Text(old)),
            Some(Content::Text(new)),
        );
        let d = c.diff().unwrap();
        assert!(d.contains("-line 10\n+line ten\n"), "{d}");
        assert!(!d.contains("line 1\n"), "context is limited: {d}");
        assert!(d.starts_with("--- /etc/postfix/mxpin/x\n+++ /etc/postfix/mxpin/x\n"));
    }

    #[test]
    fn new_file_is_shown_in_full_against_dev_null() {
        let c = change(Action::Create, None, Some(Content::Text("a\nb\n".into())));
        assert_eq!(
            c.diff().unwrap(),
            "--- /dev/null\n+++ /etc/postfix/mxpin/x\n@@ -0,0 +1,2 @@\n+a\n+b\n"
        );
    }

    #[test]
    fn secrets_never_rendered() {
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let c = change(
            Action::Create,
            None,
            Some(Content::Secret(SecretPem::new(key.into()))),
        );
        assert!(c.diff().is_none());
        let plan = HostPlan {
            host: HostName::parse("h").unwrap(),
            changes: vec![c],
            commands: vec![],
            notes: vec![],
            switches_key: true,
            generates_keys: false,
            opens_listener: false,
            pinned: vec![],
            transitional: false,
            steps: crate::mta::Steps::Postfix(Default::default()),
        };
        let text = render_host(&plan, PinStyle::SHA256_KEY);
        assert!(
            text.contains(HIDDEN) && !text.contains("PRIVATE KEY"),
            "{text}"
        );
        let json = to_json(
            &[HostOutcome::Planned(Box::new(plan))],
            PinStyle::SHA256_KEY,
        )
        .to_string();
        assert!(
            !json.contains("PRIVATE KEY") && json.contains("\"secret\":true"),
            "{json}"
        );
        assert!(json.contains("\"changes_pending\":true"));
    }

    fn cert(mx: &str, days: u32) -> crate::tls::Identity {
        let now = time::macros::datetime!(2026-12-01 00:00 UTC);
        crate::tls::generate(crate::tls::KeyAlgorithm::EcdsaP256, mx, days, now).unwrap()
    }

    #[test]
    fn certificates_are_one_line_in_the_inventory_digest() {
        let (a, b) = (cert("home.example.net", 30), cert("home.example.net", 60));
        let c = change(
            Action::Modify,
            Some(Content::Text(a.cert.pem().to_string())),
            Some(Content::Text(b.cert.pem().to_string())),
        );
        let plan = HostPlan {
            host: HostName::parse("h").unwrap(),
            changes: vec![c],
            commands: vec![],
            notes: vec![],
            switches_key: true,
            opens_listener: false,
            pinned: vec![],
            transitional: false,
            generates_keys: false,
            steps: crate::mta::Steps::Postfix(Default::default()),
        };
        let style = PinStyle {
            digest: Digest::Md5,
            kind: PinKind::Certificate,
        };
        let text = render_host(&plan, style);
        let short = |id: &crate::tls::Identity| {
            let fp = id.cert.fingerprint(Digest::Md5, PinKind::Certificate);
            format!("{}…", &fp.as_str()[..23])
        };
        let want = format!(
            "  ~ /etc/postfix/mxpin/x (modify): CN=home.example.net, ECDSA P-256, \
             until 2026-12-31 → 2027-01-30, pin {} → {}\n",
            short(&a),
            short(&b)
        );
        let plain =
            String::from_utf8(anstream::adapter::strip_bytes(text.as_bytes()).into_vec()).unwrap();
        assert!(plain.ends_with(&want), "{plain}");
        assert!(!plain.contains("BEGIN") && !plain.contains("@@"), "{plain}");
        // JSON keeps the diff and adds the summaries.
        let json = to_json(&[HostOutcome::Planned(Box::new(plan))], style);
        let change = &json["hosts"][0]["changes"][0];
        assert!(change["diff"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        assert_eq!(change["certificate"]["new"]["until"], "2027-01-30");
        assert_eq!(change["certificate"]["old"]["key"], "ECDSA P-256");
    }

    #[test]
    fn a_new_chain_is_one_line_and_anything_else_in_the_file_is_a_diff() {
        let (a, b) = (cert("a.example.net", 30), cert("b.example.net", 30));
        let chain = format!("{}{}", a.cert.pem(), b.cert.pem());
        let c = change(Action::Create, None, Some(Content::Text(chain)));
        let (old, new) = c.certificates(PinStyle::SHA256_KEY).unwrap();
        assert!(old.is_none());
        let line = summary_line(None, new.as_ref());
        assert!(
            line.starts_with("CN=a.example.net (+1 in chain), ECDSA P-256, until 2026-12-31, pin "),
            "{line}"
        );
        // A comment beside the certificate: the reader sees the whole file.
        let commented = format!("# mine\n{}", a.cert.pem());
        let c = change(Action::Create, None, Some(Content::Text(commented)));
        assert!(c.certificates(PinStyle::SHA256_KEY).is_none());
        // A certificate replaced by text: shown as a diff as well.
        let c = change(
            Action::Modify,
            Some(Content::Text(a.cert.pem().to_string())),
            Some(Content::Text("not a certificate\n".into())),
        );
        assert!(c.certificates(PinStyle::SHA256_KEY).is_none());
    }
}
