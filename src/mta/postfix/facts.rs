//! The Postfix facts script and its parser.

use std::collections::BTreeMap;

use super::maincf::split_list;
use super::{
    db_suffix, owned_files, table_keys, table_value, FoundFile, CLIENT_CERTS, SNAKEOIL, TABLES,
};
use crate::desired::StoredKeys;
use crate::facts::Sections;
use crate::inventory::Host;
use crate::plan::Content;
use crate::tls::SecretPem;
use crate::trust::PinSite;

/// The one remote command that reads everything a plan needs. Read-only: it
/// creates, changes and removes nothing on the host.
pub fn facts_script(host: &Host) -> String {
    facts_script_with(host, "")
}

/// The facts script with extra checks (see [`verify_snippet`]) run in the
/// same remote command, before the closing frame. postconf's answer comes
/// from the host's memo when its key holds ([`super::memo`]), else from
/// postconf.
///
/// When postconf is asked, its warnings are said too (`warnings`), and
/// the memo's key it was asked under (`memo_key`): an apply takes the
/// warnings as those from before its edit, and writes the memo from that
/// key and answer, without asking postconf again.
pub fn facts_script_with(host: &Host, extra: &str) -> String {
    let postconf = r#"if pc_key && pc_memo; then put memo yes; else
  pc_ask postconf
  put warnings "$pw"
  if [ -n "$pk" ]; then put memo_key "$pk"; fi
fi"#;
    facts_script_from(host, extra, postconf)
}

/// The facts script of an apply's read-back on a host whose main.cf and
/// master.cf the apply left as they were. Asked again, `postconf` would
/// read the same two files as the first read did (the apply script
/// refused to run unless they were the bytes the plan was made from) and
/// give the same answer, `postconf`, which is given instead. Whether the
/// host's memo holds is still said (an apply refreshes one that does not).
pub fn facts_script_known(host: &Host, extra: &str, postconf: &str) -> String {
    let postconf = format!(
        "if pc_key && pc_memo; then put memo yes; fi\npc={}",
        crate::shell::quote(postconf)
    );
    facts_script_from(host, extra, &postconf)
}

/// The facts script that reads a host back after `plan` (with `steps`)
/// was applied: given the first read's postconf answer when the plan left
/// main.cf and master.cf as they were (see [`facts_script_known`]).
pub fn read_back_script(
    plan: &crate::plan::HostPlan,
    steps: &super::ApplySteps,
    host: &Host,
    extra: &str,
) -> String {
    match steps.postconf_before.is_empty() || super::script::edits_config(plan) {
        true => facts_script_with(host, extra),
        false => facts_script_known(host, extra, &steps.postconf_before),
    }
}

/// The facts script, with `postconf` the shell that sets `pc` to
/// postconf's answer (and puts `memo` when the memo holds).
fn facts_script_from(host: &Host, extra: &str, postconf: &str) -> String {
    let files: Vec<&str> = owned_files().collect();
    let body = format!(
        r#"if ! command -v postconf >/dev/null 2>&1; then put error "postconf not found: is Postfix installed?"; return 0; fi
if [ ! -f "$C/main.cf" ]; then put error "$C/main.cf not found"; return 0; fi
NL='
'
# Every file in one bundle, with its `ls` line (see putfiles): NAME PATH
# pairs in "$@", listed now with the postconf binary (the memo's key),
# read at the end.
set -- main.cf "$C/main.cf"
if [ -f "$C/master.cf" ]; then set -- "$@" master.cf "$C/master.cf"; fi
for f in "$M"/fetchmail*; do
  if [ -f "$f" ]; then set -- "$@" "file:${{f##*/}}" "$f"; fi
done
for f in {files}; do
  if [ -f "$M/$f" ]; then set -- "$@" "file:$f" "$M/$f"; fi
done
{memo}pc_find
pf_also=$pc_bin
pf_ls_of "$@"
pf_also=''
# postconf's answer stays in $pc for val below (the checks that run with
# the facts use it too).
{postconf}
put effective "$pc"
# Running: what `postfix status` checks, without its helper processes.
q=${{pc#*"${{NL}}queue_directory = "}}; q=${{q%%"$NL"*}}
if [ -n "$q" ] && daemon_pid "$q/pid/master.pid"; then put running yes; else put running no; fi
# The certificates the admin's smtpd serves, certificates only (no private
# key leaves the host): complete PEM blocks of the files named.
certs_of() {{
  o_ifs=$IFS; IFS=", $NL	"
  for x in $1; do
    case "$x" in "$M"/*) ;; *)
      if [ -r "$x" ]; then awk '/-----BEGIN /{{b=""; i=0}} /-----BEGIN CERTIFICATE-----/{{i=1}} i{{b=b $0 "\n"}} i&&/-----END CERTIFICATE-----/{{printf "%s", b; i=0}}' "$x"
      else printf 'unreadable: %s\n' "$x"; fi ;;
    esac
  done
  IFS=$o_ifs
}}
# The value of parameter $1 in postconf's answer, in the shell (no process
# per lookup).
val() {{ r=''; case "$pc" in *"$NL$1 = "*) r=${{pc#*"$NL$1 = "}}; r=${{r%%"$NL"*}} ;; esac; }}
set -f
# The admin's files only: mxpin's own (the usual answer) need no subshell.
certs_put() {{
  o_ifs=$IFS; IFS=", $NL	"; cp_admin=''
  for x in $2; do case "$x" in "$M"/*) ;; *) cp_admin=yes ;; esac; done
  IFS=$o_ifs
  if [ -n "$cp_admin" ]; then put "$1" "$(certs_of "$2")"; else put "$1" ''; fi
}}
val smtpd_tls_chain_files; certs_put certs:smtpd_tls_chain_files "$r"
val smtpd_tls_cert_file; certs_put certs:smtpd_tls_cert_file "$r"
set +f
for f in {files}; do
  for s in db lmdb cdb; do
    if [ -f "$M/$f.$s" ] && ! [ "$M/$f" -nt "$M/$f.$s" ]; then put "fresh:$f" "$s"; fi
  done
done
pf_put ls "$@"
set --
"#,
        files = files.join(" "),
        memo = super::memo::shell(),
    );
    crate::mta::facts_function(host, &body, &super::recipients::script(host), extra)
}

#[derive(Debug, Clone)]
pub struct PostfixFacts {
    pub version: (u32, u32),
    pub version_text: String,
    pub db_type: String,
    pub running: bool,
    pub main_cf: String,
    /// `None` when the host has no master.cf (Postfix then cannot run).
    pub master_cf: Option<String>,
    /// `postconf -x` values of the parameters mxpin edits.
    pub effective: BTreeMap<String, String>,
    /// postconf's answer as it came (see [`facts_script_known`]).
    pub postconf: String,
    /// The host's memo of postconf's answer holds ([`super::memo`]): an
    /// apply leaves it as it is unless it edits main.cf or master.cf.
    pub memo: bool,
    /// postconf's warnings, when this read asked postconf (not when it
    /// took the memo's answer), as postconf wrote them.
    pub warnings: Option<String>,
    /// The memo's key this read asked postconf under, when the host gives
    /// one ([`super::memo`]).
    pub memo_key: Option<String>,
    pub files: BTreeMap<String, FoundFile>,
    /// Table name -> database suffixes at least as new as the source.
    pub fresh: BTreeMap<String, Vec<String>>,
    /// Output of verification checks run with the facts, by check name.
    pub checks: BTreeMap<String, String>,
    /// The certificates the admin's smtpd parameters name, by parameter
    /// (`smtpd_tls_chain_files`, `smtpd_tls_cert_file`), files in mxpin's
    /// directory left out.
    pub served_certs: BTreeMap<String, String>,
    /// What the host accepts for the domains it is asked about
    /// (`recipients = "primary"`).
    pub recipients: crate::recipients::Read,
}

/// A certificate of the admin's own that smtpd serves: mxpin keeps it as
/// the one everyone gets, and serves its pinned key to its peers by SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCert {
    /// The parameter naming it and its value.
    pub param: &'static str,
    pub files: String,
    /// Its leaf, or why it could not be read.
    pub leaf: Result<crate::tls::Certificate, String>,
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Whether the facts script (with its verification checks) writes a
/// section of this name.
fn known_section(name: &str) -> bool {
    let owned = |f: &str| owned_files().any(|o| o == f);
    matches!(
        name,
        "uid"
            | "error"
            | "effective"
            | "running"
            | "certs:smtpd_tls_chain_files"
            | "certs:smtpd_tls_cert_file"
            | "main.cf"
            | "master.cf"
            | "ls"
            | "memo"
            | "memo_key"
            | "warnings"
            | crate::facts::END
    ) || name
        .strip_prefix("file:")
        .is_some_and(|f| owned(f) || f.starts_with("fetchmail"))
        || name.strip_prefix("fresh:").is_some_and(owned)
        || name.starts_with("q:")
        || name.starts_with("ptf:")
        || super::recipients::known_section(name)
}

impl PostfixFacts {
    pub fn from_sections(s: &Sections) -> Result<Self, String> {
        crate::mta::check_facts(s, known_section)?;
        let need = |name: &str| crate::mta::need(s, name);
        // One `postconf -x` gives the version, the database type and the
        // effective values of every parameter mxpin edits.
        let mut effective = BTreeMap::new();
        let postconf = need("effective")?;
        for line in postconf.lines() {
            if let Some((k, v)) = line.split_once('=') {
                effective.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        let param = |name: &str| {
            effective
                .get(name)
                .cloned()
                .ok_or_else(|| format!("facts lack {name}"))
        };
        let version_text = param("mail_version")?;
        let version = parse_version(&version_text)
            .ok_or_else(|| format!("cannot read Postfix version {version_text:?}"))?;
        // `ls -ln` of the owned directory: mode and owner by file name.
        let listing = s.get("ls").unwrap_or_default();
        let ls_of = |name: &str| crate::mta::ls_line(listing, name);
        let mut files = BTreeMap::new();
        let fetchmail: Vec<String> = s
            .iter()
            .filter_map(|(n, _)| n.strip_prefix("file:"))
            .filter(|n| n.starts_with("fetchmail"))
            .map(str::to_string)
            .collect();
        for name in owned_files().map(str::to_string).chain(fetchmail) {
            let name = name.as_str();
            if let Some(text) = s.get(&format!("file:{name}")) {
                let content = if name.ends_with(".key") {
                    Content::Secret(SecretPem::new(text.to_string()))
                } else {
                    Content::Text(text.to_string())
                };
                let ls = ls_of(name);
                files.insert(name.to_string(), FoundFile { content, ls });
            }
        }
        let mut fresh = BTreeMap::new();
        for (table, _) in TABLES {
            fresh.insert(table.to_string(), s.all(&format!("fresh:{table}")).to_vec());
        }
        let mut checks = BTreeMap::new();
        for (name, value) in s.iter() {
            if name.starts_with("q:") || name.starts_with("ptf:") {
                checks.insert(name.to_string(), value.to_string());
            }
        }
        let served_certs = ["smtpd_tls_chain_files", "smtpd_tls_cert_file"]
            .iter()
            .map(|p| {
                let text = s.get(&format!("certs:{p}")).unwrap_or_default();
                (p.to_string(), text.to_string())
            })
            .collect();
        Ok(PostfixFacts {
            checks,
            served_certs,
            version,
            version_text,
            db_type: param("default_database_type")?,
            running: need("running")? == "yes",
            main_cf: need("main.cf")?,
            master_cf: s.get("master.cf").map(str::to_string),
            effective,
            postconf,
            memo: s.get("memo") == Some("yes"),
            warnings: s.get("warnings").map(str::to_string),
            memo_key: s.get("memo_key").map(str::to_string),
            files,
            fresh,
            recipients: super::recipients::from_sections(s),
        })
    }

    /// The fingerprints this host pins at `site`, as Postfix sees them:
    /// the tls_policy entry of a next-hop, or the keys of the client
    /// certificate table. Empty when the table or its database is missing
    /// or stale.
    pub fn pins_for(&self, site: &PinSite) -> Vec<String> {
        let table = match site {
            PinSite::Policy(_) => "tls_policy",
            PinSite::ClientCerts => CLIENT_CERTS,
        };
        let Some(found) = self.files.get(table) else {
            return vec![];
        };
        let fresh =
            db_suffix(&self.db_type).is_some_and(|sfx| self.fresh[table].iter().any(|s| s == sfx));
        if !fresh {
            return vec![];
        }
        match site {
            PinSite::Policy(next_hop) => table_value(found.content.raw(), next_hop)
                .map(crate::pins::in_policy)
                .unwrap_or_default(),
            PinSite::ClientCerts => table_keys(found.content.raw())
                .map(str::to_ascii_uppercase)
                .collect(),
        }
    }

    /// The admin's own certificate, if smtpd serves one: named by
    /// `smtpd_tls_chain_files` (unless that is mxpin's), else by
    /// `smtpd_tls_cert_file` (unless that is Debian's snakeoil).
    pub fn admin_cert(&self, owned: &str) -> Option<AdminCert> {
        let value = |p: &str| self.effective.get(p).cloned().unwrap_or_default();
        let ours = |v: &str| {
            split_list(v)
                .iter()
                .all(|f| f.starts_with(&format!("{owned}/")))
        };
        let chain = value("smtpd_tls_chain_files");
        let cert = value("smtpd_tls_cert_file");
        let (param, files) = if !chain.is_empty() && !ours(&chain) {
            ("smtpd_tls_chain_files", chain)
        } else if !cert.is_empty() && cert != SNAKEOIL && !ours(&cert) {
            ("smtpd_tls_cert_file", cert)
        } else {
            return None;
        };
        let text = self.served_certs.get(param).cloned().unwrap_or_default();
        let leaf = match text.lines().find(|l| l.starts_with("unreadable: ")) {
            Some(l) => Err(format!("cannot read {}", &l["unreadable: ".len()..])),
            None => crate::tls::Certificate::from_pem(&text)
                .map_err(|e| format!("no certificate in {files}: {e}")),
        };
        Some(AdminCert { param, files, leaf })
    }

    /// The keys mxpin finds in its slots.
    pub fn stored_keys(&self) -> StoredKeys {
        crate::mta::stored_keys(&self.files)
    }
}
