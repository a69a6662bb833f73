//! The start and the first checks of every MTA's facts: the script's
//! prelude, and the header and section names of its answer.

use super::OWNED_DIR;

use crate::facts::Sections;
use crate::inventory::Host;

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
{EFFECTIVE_IDS}put uid "$u"
if [ "$u" != 0 ]; then put user "$(id -un 2>/dev/null)"; fi
"#,
        SHELL_HELPERS = crate::facts::SHELL_HELPERS,
        EFFECTIVE_IDS = crate::mta::EFFECTIVE_IDS,
        c = crate::shell::quote(host.config_dir.as_str()),
    )
}

/// A whole facts script: the function `mxpin_facts` with the
/// [`facts_prelude`], the MTA's own `body`, the recipients' reads and any
/// `extra` checks (a verify's), the closing frame last (without it the
/// answer reads as cut short), then the call. [`crate::mta::hold_script`]
/// relies on that call being the last line.
pub fn facts_function(host: &Host, body: &str, rcpt: &str, extra: &str) -> String {
    // `validated` holds what an apply script, run before the facts in the
    // same shell, checked (see the Postfix verify snippet's `known`). This
    // line runs when the script is read, before any call, so no other
    // read takes it from the host's environment.
    format!(
        "validated=''\nmxpin_facts() {{\n{prelude}{body}{rcpt}{extra}put end ok\n}}\nmxpin_facts\n",
        prelude = facts_prelude(host),
    )
}

/// A section the facts must hold.
pub fn need(s: &Sections, name: &str) -> Result<String, String> {
    s.get(name)
        .map(str::to_string)
        .ok_or_else(|| format!("facts lack {name}"))
}

/// Refuses an answer with a section no facts script writes (`known` says
/// which names it writes): a garbled name, say `file:next.kez`, would
/// otherwise read as a host without that file.
pub fn check_names(s: &Sections, known: impl Fn(&str) -> bool) -> Result<(), String> {
    match s.names().find(|n| !known(n)) {
        Some(n) => Err(format!(
            "facts hold a section {} that no facts script writes: the answer is garbled",
            crate::text::shown(n)
        )),
        None => Ok(()),
    }
}
