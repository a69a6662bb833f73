//! MTA-specific code lives in one module per MTA ([`postfix`], [`exim`]);
//! this module is the dispatch the engine uses, so the engine never names
//! an MTA, and the scaffolding both share.
//!
//! Every MTA module provides the same pieces: a read-only facts script and
//! its parser, a pure planner from desired state and facts, an apply script
//! that ends with the verdict protocol read by [`parse_result`], and the
//! verification checks run with the facts after apply.

pub mod exim;
pub mod postfix;

use std::fmt;

use zeroize::Zeroizing;

use std::collections::BTreeMap;

use crate::desired::{HostDesired, Origin, StoredKeys, StoredPair};
use crate::facts::Sections;
use crate::inventory::{Host, Inventory, Mta, Settings};
use crate::plan::{Action, Content, FileChange, HostPlan};
use crate::templates::Templates;
use crate::trust::PinSite;

/// What was read from one host.
#[derive(Debug, Clone)]
pub enum Facts {
    Postfix(postfix::PostfixFacts),
    Exim(exim::EximFacts),
}

impl Facts {
    /// Whether the host's smtpd serves a certificate of the admin's own to
    /// every client but mxpin's peers (see "The admin's own certificate"):
    /// a DANE sender, asking for the MX name, gets that one, not mxpin's.
    pub fn serves_admin_certificate(&self, host: &crate::inventory::Host) -> bool {
        let owned = host.config_dir.join(OWNED_DIR);
        match self {
            Facts::Postfix(f) => f.admin_cert(&owned).is_some(),
            Facts::Exim(f) => f
                .config
                .as_deref()
                .and_then(|c| exim::conf::edited(c, &owned, &f.rcpt_acl).ok())
                .is_some_and(|e| e.admin_cert.is_some()),
        }
    }

    /// The keys mxpin finds in its slots on the host.
    pub fn stored_keys(&self) -> StoredKeys {
        match self {
            Facts::Postfix(f) => f.stored_keys(),
            Facts::Exim(f) => f.stored_keys(),
        }
    }

    /// The relayhost the host's outgoing mail goes to now (`[host]:port`).
    pub fn relayhost(&self) -> Option<&str> {
        match self {
            Facts::Postfix(f) => f
                .effective
                .get("relayhost")
                .map(String::as_str)
                .filter(|r| !r.is_empty()),
            Facts::Exim(_) => None,
        }
    }

    /// Whether mxpin's relay listener is configured on `port`.
    pub fn relays_on(&self, port: u16) -> bool {
        match self {
            Facts::Postfix(f) => f
                .master_cf
                .as_deref()
                .is_some_and(|m| postfix::mastercf::listener_on(m, port)),
            Facts::Exim(_) => false,
        }
    }

    /// The fingerprints the host pins at `site`, as its MTA would see
    /// them now (a stale or missing table pins nothing), in the
    /// inventory's digest and pin kind.
    pub fn pins_for(&self, site: &PinSite, settings: &Settings) -> Vec<String> {
        match (self, site) {
            (Facts::Postfix(f), _) => f.pins_for(site),
            (Facts::Exim(f), PinSite::Policy(next_hop)) => f.pins_for(next_hop, settings),
            // The inventory refuses an Exim relay for managed clients.
            (Facts::Exim(_), PinSite::ClientCerts) => Vec::new(),
        }
    }
}

/// What the apply script of a plan needs beyond its file changes.
#[derive(Debug, Clone)]
pub enum Steps {
    Postfix(postfix::ApplySteps),
    Exim(exim::ApplySteps),
}

impl Steps {
    /// Work apply must do even when no file changes (a stale database).
    pub fn has_work(&self) -> bool {
        match self {
            Steps::Postfix(s) => !s.postmap.is_empty(),
            Steps::Exim(_) => false,
        }
    }

    #[cfg(test)]
    pub fn postfix(&self) -> &postfix::ApplySteps {
        match self {
            Steps::Postfix(s) => s,
            Steps::Exim(_) => panic!("not a Postfix plan"),
        }
    }
}

/// The one read-only remote command that reads a host's facts, with
/// `extra` shell (verification checks) run before the closing frame.
pub fn facts_script(host: &Host, extra: &str) -> String {
    match host.mta {
        Mta::Postfix => postfix::facts_script_with(host, extra),
        Mta::Exim => exim::facts_script(host, extra),
    }
}

/// Parses the output of [`facts_script`].
pub fn parse_facts(host: &Host, sections: &Sections) -> Result<Facts, String> {
    match host.mta {
        Mta::Postfix => postfix::PostfixFacts::from_sections(sections).map(Facts::Postfix),
        Mta::Exim => exim::EximFacts::from_sections(sections).map(Facts::Exim),
    }
}

/// Plans one host: pure, from its desired state and facts.
pub fn plan_host(
    d: &HostDesired,
    facts: &Facts,
    inv: &Inventory,
    t: &Templates,
) -> Result<HostPlan, String> {
    match facts {
        Facts::Postfix(f) => postfix::plan_host(d, f, inv, t),
        Facts::Exim(f) => exim::plan_host(d, f, inv, t),
    }
}

/// The apply script of a plan.
pub fn apply_script(plan: &HostPlan) -> ApplyScript {
    match &plan.steps {
        Steps::Postfix(_) => postfix::script::apply_script(plan),
        Steps::Exim(_) => exim::script::apply_script(plan),
    }
}

/// Shell run with the facts after apply (or by `verify`) that checks on the
/// host the routes `plan` pins; its results come back in the facts.
pub fn verify_snippet(plan: &HostPlan, facts: &Facts, inv: &Inventory) -> String {
    match (&plan.steps, facts) {
        (Steps::Postfix(steps), Facts::Postfix(f)) => {
            let lookup = f
                .effective
                .get("smtp_host_lookup")
                .map_or("dns", String::as_str);
            postfix::verify_snippet(steps, inv.settings.digest.as_str(), lookup)
        }
        (Steps::Exim(steps), Facts::Exim(_)) => exim::verify_snippet(steps),
        (Steps::Postfix(_), Facts::Exim(_)) | (Steps::Exim(_), Facts::Postfix(_)) => {
            unreachable!("a plan is made from facts of the same MTA")
        }
    }
}

/// A check of one route made on the host itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCheck {
    /// Names the check among the host's checks, the same every run.
    pub id: String,
    pub kind: crate::verify::Kind,
    /// The next-hop (or domain) the check is about.
    pub route: String,
    pub ok: bool,
    /// Failed because the peer did not answer: the fix is there.
    pub peer_down: bool,
    pub what: String,
}

/// The results of [`verify_snippet`]'s checks, read from facts.
pub fn route_checks(plan: &HostPlan, facts: &Facts) -> Vec<RouteCheck> {
    match (&plan.steps, facts) {
        (Steps::Postfix(steps), Facts::Postfix(f)) => postfix::route_checks(&plan.host, steps, f),
        (Steps::Exim(steps), Facts::Exim(f)) => exim::route_checks(steps, f),
        (Steps::Postfix(_), Facts::Exim(_)) | (Steps::Exim(_), Facts::Postfix(_)) => {
            unreachable!("a plan is made from facts of the same MTA")
        }
    }
}

/// mxpin's directory inside the MTA's configuration directory: every file
/// it owns, and the apply lock.
pub const OWNED_DIR: &str = "mxpin";

pub use crate::limits::LOCK_WAIT_SECS;

/// The script that holds a host for a whole run: it takes an `flock` on the
/// MTA's configuration directory (shared for read-only commands, exclusive
/// for changes), reads the facts, prints `marker`, and keeps the lock until
/// the controller closes its standard input (the run ends, or mxpin dies
/// and its ssh connection with it). It never waits for the lock: a host
/// another run holds prints `@@mxpin-busy` and ends, and the controller
/// lets go of every host and tries again (so two runs never wait on each
/// other in a cycle). Before letting go it waits for any apply script still
/// running on the host (the apply lock, [`script_prepare_and_lock`]), so a
/// killed run's last apply ends, or rolls back, before the next run reads.
///
/// The directory itself is locked (an open descriptor, nothing written): a
/// dry run leaves the host byte-identical, and the lock survives main.cf
/// being replaced by rename.
pub fn hold_script(host: &Host, exclusive: bool, marker: &str) -> String {
    let facts = facts_script(host, "");
    let body = facts
        .strip_suffix("mxpin_facts\n")
        .expect("facts scripts end with their call");
    let mode = if exclusive { "-x" } else { "-s" };
    format!(
        r#"{body}mxpin_hold() {{
C={c}
if [ -d "$C" ]; then
  command -v flock >/dev/null 2>&1 || {{ printf '@@mxpin-noflock\n'; exit 0; }}
  exec 9<"$C"
  flock -n {mode} 9 || {{ printf '@@mxpin-busy\n'; exit 0; }}
fi
mxpin_facts
printf '%s\n' {marker}
cat >/dev/null
if [ -d "$C/{OWNED_DIR}" ]; then exec 8<"$C/{OWNED_DIR}"; flock -w 600 8; fi
}}
mxpin_hold
exit 0
"#,
        c = crate::shell::quote(host.config_dir.as_str()),
        marker = crate::shell::quote(marker),
    )
}

/// Shell for apply scripts, after `C` is set: creates mxpin's directory
/// (removed again on failure if this run made it), then takes the apply
/// lock, an exclusive `flock` on that directory held to the end of the
/// script, rollback included. Staging names are fixed because only the
/// holder of this lock uses them. A second script finds the files changed
/// ([`script_check_unchanged`]) and refuses before writing anything.
pub fn script_prepare_and_lock(s: &mut String) {
    use std::fmt::Write as _;
    let _ = write!(
        s,
        r#"step='prepare'
if [ -d "$C/{OWNED_DIR}" ]; then made_dir=''; else made_dir="$C/{OWNED_DIR}"; fi
mkdir -p "$C/{OWNED_DIR}" && chown 0:0 "$C/{OWNED_DIR}" && chmod 755 "$C/{OWNED_DIR}" || fail "cannot create $C/{OWNED_DIR}"
step=lock
command -v flock >/dev/null 2>&1 || fail "flock not found (util-linux)"
exec 8<"$C/{OWNED_DIR}"
flock -w {LOCK_WAIT_SECS} 8 || fail "another mxpin run has been changing this host for {LOCK_WAIT_SECS} s; nothing was changed"
"#
    );
}

/// Shell that refuses, before anything is written, when a file the plan
/// changes is no longer what the facts read saw (another run, or an admin,
/// changed it since): compared by SHA-256, so private keys are never
/// echoed back.
pub fn script_check_unchanged(s: &mut String, changes: &[FileChange]) {
    use crate::shell::quote;
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let _ = writeln!(s, "step='check files'");
    for c in changes {
        let p = quote(&c.path);
        match &c.old {
            Some(old) => {
                let hex: String = sha2::Sha256::digest(old.raw().as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let _ = writeln!(
                    s,
                    "[ \"$(sha256sum < {p} 2>/dev/null)\" = '{hex}  -' ] || fail {}",
                    quote(&format!(
                        "{} changed since mxpin read it (another run?); plan again",
                        c.path
                    ))
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "[ ! -e {p} ] || fail {}",
                    quote(&format!(
                        "{} appeared since mxpin read it (another run?); plan again",
                        c.path
                    ))
                );
            }
        }
    }
}

/// Shell shared by every apply script: strict environment, the `fail`,
/// `rollback`, `swap` and `remove` helpers. The MTA script defines `C`,
/// `cleanup_staged` and `reload_after_rollback` (the MTA's reload, run only
/// when something was swapped in and rolled back).
pub const SCRIPT_PRELUDE: &str = r#"LC_ALL=C; export LC_ALL
PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin:/usr/local/bin:$PATH; export PATH
umask 077
NL='
'
step=prepare
swapped=''
trap '' PIPE
trap 'fail "interrupted by a signal"' HUP INT TERM
fail() {
  printf '@@mxpin-failed %s: %s\n' "$step" "$(printf '%s' "$1" | tr '\n' ' ')"
  rollback
  exit 1
}
rollback() {
  trap '' HUP INT TERM
  for t in $swapped; do
    if [ -e "$t.mxpin-old" ]; then mv -f "$t.mxpin-old" "$t"; else rm -f "$t"; fi
  done
  cleanup_staged
  if [ -n "${made_dir:-}" ]; then rmdir "$made_dir" 2>/dev/null || :; fi
  if [ -n "$swapped" ]; then
    reload_after_rollback
    printf '@@mxpin-rolled-back\n'
  fi
}
swap() {
  if [ -e "$2" ]; then ln -f "$2" "$2.mxpin-old" || fail "cannot keep a copy of $2"; fi
  swapped="$2 $swapped"
  mv -f "$1" "$2" || fail "cannot move $1 into place"
}
remove() {
  [ -e "$1" ] || return 0
  ln -f "$1" "$1.mxpin-old" || fail "cannot keep a copy of $1"
  swapped="$1 $swapped"
  rm -f "$1" || fail "cannot remove $1"
}
"#;

/// Script text. It holds private keys, so it is never printed or logged.
pub struct ApplyScript(Zeroizing<String>);

impl ApplyScript {
    pub fn new(text: Zeroizing<String>) -> Self {
        ApplyScript(text)
    }

    pub fn text(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApplyScript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApplyScript(hidden)")
    }
}

/// How a run of the apply script ended, read from its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyResult {
    Applied,
    Failed {
        step: String,
        message: String,
        rolled_back: bool,
    },
}

/// Reads the script's verdict from its output.
pub fn parse_result(stdout: &str) -> Option<ApplyResult> {
    let mut result = None;
    let mut rolled_back = false;
    for line in stdout.lines() {
        if line == "@@mxpin-ok" {
            result = Some(ApplyResult::Applied);
        } else if line == "@@mxpin-rolled-back" {
            rolled_back = true;
        } else if let Some(rest) = line.strip_prefix("@@mxpin-failed ") {
            let (step, message) = rest.split_once(": ").unwrap_or((rest, ""));
            result = Some(ApplyResult::Failed {
                step: step.to_string(),
                message: message.trim().to_string(),
                rolled_back: false,
            });
        }
    }
    match result {
        Some(ApplyResult::Failed { step, message, .. }) => Some(ApplyResult::Failed {
            step,
            message,
            rolled_back,
        }),
        other => other,
    }
}

/// A file mxpin owns, as found on a host.
#[derive(Debug, Clone)]
pub struct FoundFile {
    pub content: Content,
    /// `ls -ln` line: mode and numeric owner and group.
    pub ls: String,
}

impl FoundFile {
    /// Owned by root, group `gid`, with exactly `mode` (a regular file).
    pub fn mode_is(&self, mode: u32, gid: u32) -> bool {
        let bits = |m: u32, r: char, w: char| {
            format!(
                "{}{}",
                if m & 4 != 0 { r } else { '-' },
                if m & 2 != 0 { w } else { '-' }
            )
        };
        let perms = format!(
            "-{}-{}-{}-",
            bits(mode >> 6, 'r', 'w'),
            bits(mode >> 3, 'r', 'w'),
            bits(mode, 'r', 'w')
        );
        let mut f = self.ls.split_whitespace();
        let (p, _links, uid, g) = (f.next(), f.next(), f.next(), f.next());
        let gid = gid.to_string();
        p.is_some_and(|p| p.trim_end_matches(['.', '+', '@']) == perms)
            && uid == Some("0")
            && g == Some(gid.as_str())
    }
}

/// The change that makes `path` hold `new` (`None`: absent) with `mode`,
/// owned by root and group `gid`; `None` when it already does.
pub fn change_for(
    path: String,
    found: Option<&FoundFile>,
    new: Option<Content>,
    mode: u32,
    gid: u32,
) -> Option<FileChange> {
    let old = found.map(|f| f.content.clone());
    let action = match (&old, &new) {
        (None, None) => return None,
        (None, Some(_)) => Action::Create,
        (Some(_), None) => Action::Delete,
        (Some(o), Some(n)) if o == n => {
            if found.is_some_and(|f| f.mode_is(mode, gid)) {
                return None;
            }
            Action::Chmod
        }
        (Some(_), Some(_)) => Action::Modify,
    };
    Some(FileChange {
        path,
        action,
        old,
        new,
        mode,
        group: gid,
    })
}

/// Key slots every MTA keeps in its owned directory: (slot, key file,
/// certificate file).
pub const KEY_SLOTS: [(&str, &str, &str); 2] = [
    ("current", "current.key", "current.crt"),
    ("next", "next.key", "next.crt"),
];

/// The checks every facts answer passes first: root (a non-root login
/// cannot read mxpin's keys, so this comes before any read error), no error
/// section, and the closing frame (without it the answer was cut short,
/// even if it happened to end between two frames).
pub fn check_header(s: &Sections) -> Result<(), String> {
    if let Some(uid) = s.get("uid").filter(|u| *u != "0") {
        let who = match s.get("user").filter(|u| !u.is_empty()) {
            Some(user) => format!("{user} (uid {uid})"),
            None => format!("uid {uid}"),
        };
        return Err(format!(
            "connected as {who}, not root: set sudo = true for this host"
        ));
    }
    if let Some(e) = s.get("error") {
        return Err(e.to_string());
    }
    if s.get("end") != Some("ok") {
        return Err("facts are incomplete: the connection ended early".into());
    }
    match s.get("uid") {
        Some(_) => Ok(()),
        None => Err("no uid in facts".into()),
    }
}

/// The line ending of an admin's file: CRLF when most of its lines end so,
/// else LF. The lines mxpin writes into it use the same.
pub fn line_ending(text: &str) -> &'static str {
    let crlf = text.matches("\r\n").count();
    if crlf > 0 && crlf * 2 >= text.matches('\n').count() {
        "\r\n"
    } else {
        "\n"
    }
}

/// `edited` with `original`'s last-line convention: a file that had no
/// final newline gets none after an edit either, so that taking mxpin's
/// lines out again gives back the admin's bytes.
pub fn keep_final_newline(original: &str, mut edited: String) -> String {
    if !original.is_empty() && !original.ends_with('\n') {
        if edited.ends_with("\r\n") {
            edited.truncate(edited.len() - 2);
        } else if edited.ends_with('\n') {
            edited.pop();
        }
    }
    edited
}

/// Refuses an answer with a section no facts script writes (`known` says
/// which names it writes): a garbled name, say `file:next.kez`, would
/// otherwise read as a host without that file.
/// The checks every MTA's facts parser starts with: the header (see
/// [`check_header`]), and only sections its facts script writes.
pub fn check_facts(s: &Sections, known: impl Fn(&str) -> bool) -> Result<(), String> {
    check_header(s)?;
    check_names(s, known)
}

/// The start of every MTA's facts script (inside its function): the C
/// locale, a PATH with the sbin directories, the helpers, `C` (the
/// configuration directory, quoted), `M` (mxpin's directory in it), and
/// who the script runs as.
pub fn facts_prelude(host: &Host) -> String {
    format!(
        r#"LC_ALL=C; export LC_ALL
PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin:/usr/local/bin:$PATH; export PATH
{SHELL_HELPERS}C={c}
M="$C/{OWNED_DIR}"
u=$(id -u); put uid "$u"
if [ "$u" != 0 ]; then put user "$(id -un 2>/dev/null)"; fi
"#,
        SHELL_HELPERS = crate::facts::SHELL_HELPERS,
        c = crate::shell::quote(host.config_dir.as_str()),
    )
}

/// A section the facts must hold.
pub fn need(s: &Sections, name: &str) -> Result<String, String> {
    s.get(name)
        .map(str::to_string)
        .ok_or_else(|| format!("facts lack {name}"))
}

pub fn check_names(s: &Sections, known: impl Fn(&str) -> bool) -> Result<(), String> {
    match s.names().find(|n| !known(n)) {
        Some(n) => Err(format!(
            "facts hold a section {} that no facts script writes: the answer is garbled",
            crate::text::shown(n)
        )),
        None => Ok(()),
    }
}

/// The line of an `ls -ln` listing for the file `name` (empty if absent).
pub fn ls_line(listing: &str, name: &str) -> String {
    listing
        .lines()
        .find(|l| l.split_whitespace().last() == Some(name))
        .unwrap_or_default()
        .to_string()
}

/// The keys found in the key slots among a host's owned files.
pub fn stored_keys(files: &BTreeMap<String, FoundFile>) -> StoredKeys {
    let pair = |key: &str, cert: &str| StoredPair {
        key: match files.get(key).map(|f| &f.content) {
            Some(Content::Secret(s)) => Some(s.clone()),
            _ => None,
        },
        cert: files.get(cert).map(|f| f.content.raw().to_string()),
    };
    StoredKeys {
        current: pair(KEY_SLOTS[0].1, KEY_SLOTS[0].2),
        next: pair(KEY_SLOTS[1].1, KEY_SLOTS[1].2),
    }
}

/// Changes and notes for the key slots in `owned`. `current_key` is the
/// mode and group of the served key (Exim's reception processes read it
/// as Exim's group); the staged next key is always 0600 root.
pub fn key_changes(
    d: &HostDesired,
    owned: &str,
    files: &BTreeMap<String, FoundFile>,
    current_key: (u32, u32),
) -> (Vec<FileChange>, Vec<String>) {
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    let slots = [(&d.keys.current, current_key), (&d.keys.next, (0o600, 0))];
    for ((slot, (mode, gid)), (name, key_file, cert_file)) in slots.into_iter().zip(KEY_SLOTS) {
        match &slot.origin {
            Origin::Kept => {}
            Origin::Generated => notes.push(format!("new {name} key")),
            Origin::Promoted => notes.push(format!("rotation: the staged next key becomes {name}")),
            Origin::Reissued(why) => notes.push(format!(
                "{name} certificate re-issued for the same key: {why}"
            )),
        }
        let id = &slot.identity;
        changes.extend(change_for(
            format!("{owned}/{key_file}"),
            files.get(key_file),
            Some(Content::Secret(id.key.clone())),
            mode,
            gid,
        ));
        changes.extend(change_for(
            format!("{owned}/{cert_file}"),
            files.get(cert_file),
            Some(Content::Text(id.cert.pem().to_string())),
            0o644,
            0,
        ));
    }
    (changes, notes)
}

/// Where an apply script stages the new version of `path`: beside it,
/// hidden, so a rename swaps it in atomically.
pub fn staged(path: &str) -> String {
    let (dir, name) = path.rsplit_once('/').expect("absolute path");
    format!("{dir}/.{name}.mxpin-new")
}

/// Shell that fixes mode and owner of the files `changes` only chmods (in
/// place: rewriting a table source would make it newer than its database).
pub fn script_chmods(s: &mut String, changes: &[FileChange]) {
    use crate::shell::quote;
    use std::fmt::Write as _;
    for c in changes.iter().filter(|c| c.action == Action::Chmod) {
        let _ = writeln!(
            s,
            "step={}\nchown 0:{} {p} && chmod {:o} {p} || fail \"cannot set mode\"",
            quote(&format!("set mode of {}", c.path)),
            c.group,
            c.mode,
            p = quote(&c.path)
        );
    }
}

/// Shell that writes each new file beside its target ([`staged`]). The
/// admin's own files (`admin`: main.cf, exim4.conf...) keep their mode and
/// owner (`cp -p`); mxpin's get root and the change's group and mode.
pub fn script_stage(s: &mut String, writes: &[&FileChange], admin: impl Fn(&str) -> bool) {
    use crate::shell::quote;
    use std::fmt::Write as _;
    for c in writes {
        let new = c.new.as_ref().expect("writes have content");
        let st = quote(&staged(&c.path));
        let _ = writeln!(s, "step={}", quote(&format!("stage {}", c.path)));
        if admin(&c.path) {
            let _ = writeln!(
                s,
                "cp -p {} {st} || fail \"cannot copy {}\"",
                quote(&c.path),
                c.path
            );
        }
        let _ = writeln!(
            s,
            "printf '%s' {} > {st} || fail \"cannot write {}\"",
            quote(new.raw()),
            c.path
        );
        if !admin(&c.path) {
            let _ = writeln!(
                s,
                "chown 0:{} {st} && chmod {:o} {st} || fail \"cannot set mode of {}\"",
                c.group, c.mode, c.path
            );
        }
    }
}

/// Whether `changes` change the key this host serves (its current key or
/// certificate; a mode fix does not).
pub fn changes_served_key(changes: &[FileChange]) -> bool {
    changes
        .iter()
        .filter(|c| c.action != Action::Chmod)
        .any(|c| c.path.ends_with("/current.key") || c.path.ends_with("/current.crt"))
}

/// Test support shared by the MTA modules' tests.
#[cfg(test)]
pub mod testing {
    use crate::desired::{StoredKeys, StoredPair};
    use crate::tls::{self, KeyAlgorithm};

    /// Fresh key slots for `mx` (ECDSA, 825 days from `now`), as they would
    /// be found on a host.
    pub fn new_keys(mx: &str, now: time::OffsetDateTime) -> StoredKeys {
        let pair = || {
            let id = tls::generate(KeyAlgorithm::EcdsaP256, mx, 825, now).unwrap();
            StoredPair {
                key: Some(id.key),
                cert: Some(id.cert.pem().to_string()),
            }
        };
        StoredKeys {
            current: pair(),
            next: pair(),
        }
    }
}

/// The framing properties every MTA's facts parser must have, checked on a
/// real captured answer: cut, garbled, repeated or reordered, an answer is
/// refused, never read as a host with less on it.
#[cfg(test)]
pub mod garbled {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use crate::facts::{self, Sections};

    /// A frame of an answer: its name, where its header line ends (the
    /// `\n` after the length) and where the frame ends.
    #[derive(Debug, Clone)]
    pub struct Frame {
        pub name: String,
        pub start: usize,
        pub header_end: usize,
        pub end: usize,
    }

    pub fn frames(answer: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < answer.len() {
            let nl = at + answer[at..].iter().position(|&b| b == b'\n').unwrap();
            let header = std::str::from_utf8(&answer[at..nl]).unwrap();
            let mut words = header.split(' ').skip(1);
            let name = words.next().unwrap().to_string();
            let len: usize = words.next().unwrap().parse().unwrap();
            out.push(Frame {
                name,
                start: at,
                header_end: nl,
                end: nl + 1 + len + 1,
            });
            at = nl + 1 + len + 1;
        }
        assert_eq!(at, answer.len(), "a well-framed answer");
        out
    }

    /// Sections as name -> sorted values, for comparing answers whose
    /// frames came in another order.
    fn contents(s: &Sections) -> BTreeMap<String, Vec<String>> {
        s.names()
            .map(|n| {
                let mut v = s.all(n).to_vec();
                v.sort();
                (n.to_string(), v)
            })
            .collect()
    }

    #[derive(Debug, Clone)]
    enum Garble {
        /// XOR these bytes (at these offsets, modulo the length) with
        /// these non-zero masks.
        Flip(Vec<(usize, u8)>),
        /// Send frame `i` again, before frame `j`.
        Repeat(usize, usize),
        /// The frames in another order.
        Shuffle(Vec<usize>),
    }

    fn garble(n_frames: usize) -> impl Strategy<Value = Garble> {
        prop_oneof![
            4 => prop::collection::vec((any::<usize>(), 1u8..=255), 1..4).prop_map(Garble::Flip),
            1 => (0..n_frames, 0..=n_frames).prop_map(|(i, j)| Garble::Repeat(i, j)),
            1 => Just((0..n_frames).collect::<Vec<_>>())
                .prop_shuffle()
                .prop_map(Garble::Shuffle),
        ]
    }

    /// Checks, on `answer` (a complete, valid captured answer), that
    /// `read` (framing, then the MTA's parser):
    /// - refuses the answer cut at every byte offset;
    /// - refuses it with any byte flipped in a frame header or a frame's
    ///   closing newline (except in the name of a section `renamable`
    ///   says may be renamed undetected: a name that carries data, such as
    ///   Exim's `file:peer-MX.pem`), and reads flips inside a body as
    ///   changes of that body only;
    /// - refuses it with a frame sent twice (sections that may repeat
    ///   aside) or with the closing frame not last, and reads it the same
    ///   when only the order of the other frames changed.
    pub fn check<T: std::fmt::Debug>(
        answer: &[u8],
        read: &dyn Fn(&[u8]) -> Result<T, String>,
        renamable: &dyn Fn(&str) -> bool,
    ) {
        let parsed = |b: &[u8]| facts::parse(b).map_err(|e| e.to_string());
        read(answer).expect("the captured answer reads");
        let original = contents(&parsed(answer).unwrap());
        for cut in 0..answer.len() {
            assert!(
                read(&answer[..cut]).is_err(),
                "the answer cut at byte {cut} of {} was read as a host",
                answer.len()
            );
        }
        let fr = frames(answer);
        let end = fr.len() - 1;
        assert_eq!(fr[end].name, facts::END);
        let mut runner = TestRunner::new(Config {
            cases: 512,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&garble(fr.len()), |g| {
            let mut b = answer.to_vec();
            match g {
                Garble::Flip(flips) => {
                    let mut structural = false;
                    let mut touched = Vec::new();
                    for (at, mask) in &flips {
                        let at = at % b.len();
                        b[at] ^= mask;
                        let f = fr.iter().find(|f| f.start <= at && at < f.end).unwrap();
                        let in_name = at >= f.start + "@@mxpin ".len()
                            && at < f.start + "@@mxpin ".len() + f.name.len();
                        if (at <= f.header_end && !(in_name && renamable(&f.name)))
                            || at == f.end - 1
                        {
                            structural = true;
                        }
                        touched.push(f.name.clone());
                    }
                    let got = read(&b);
                    if structural {
                        prop_assert!(got.is_err(), "{flips:?} in a header was read: {got:?}");
                    } else if got.is_ok() {
                        let now = contents(&parsed(&b).unwrap());
                        for (name, v) in &original {
                            if !touched.contains(name) {
                                prop_assert_eq!(now.get(name), Some(v), "{} changed", name);
                            }
                        }
                    }
                }
                Garble::Repeat(i, j) => {
                    let frame = answer[fr[i].start..fr[i].end].to_vec();
                    let at = fr.get(j).map_or(answer.len(), |f| f.start);
                    b.splice(at..at, frame);
                    let got = read(&b);
                    if !fr[i].name.starts_with("fresh:") || j > end {
                        prop_assert!(got.is_err(), "frame {} sent twice was read", fr[i].name);
                    }
                }
                Garble::Shuffle(order) => {
                    b.clear();
                    for &k in &order {
                        b.extend_from_slice(&answer[fr[k].start..fr[k].end]);
                    }
                    let got = read(&b);
                    if order[end] != end {
                        prop_assert!(got.is_err(), "the end frame not last was read");
                    } else {
                        prop_assert!(got.is_ok());
                        prop_assert_eq!(contents(&parsed(&b).unwrap()), original.clone());
                    }
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}
