//! The apply script: one remote command per host that stages every file,
//! builds tables, swaps everything in atomically, validates, reloads, and
//! on any failure restores the previous files and reloads again.
//!
//! The script arrives on the standard input of `sh -s`. Its body is one
//! function definition called on the last line, so a connection lost while
//! sending it leaves an incomplete definition that never runs.

use std::fmt::Write as _;

use zeroize::Zeroizing;

use super::{db_suffix, ApplySteps};
use crate::mta::staged;
use crate::mta::Steps;
pub use crate::mta::{parse_result, ApplyResult, ApplyScript};
use crate::plan::{Action, HostPlan};
use crate::shell::quote;

/// The admin's own files, edited in place: they keep their mode and owner
/// and are swapped in last.
fn is_admin_file(path: &str) -> bool {
    path.ends_with("/main.cf") || path.ends_with("/master.cf")
}

/// Whether `plan` writes main.cf or master.cf (a mode change is no edit):
/// only then can `postconf` say anything new.
pub fn edits_config(plan: &HostPlan) -> bool {
    plan.changes
        .iter()
        .any(|c| !matches!(c.action, Action::Delete | Action::Chmod) && is_admin_file(&c.path))
}

/// Whether Postfix runs: what `postfix status` checks (the master's pid,
/// from its pid file under `$Q`, the queue directory, is alive), without
/// postfix-script's five helper processes; the facts ask the same
/// ([`crate::facts::DAEMON_PID`]). Without a queue directory (never from a
/// real read) it asks `postfix status`.
///
/// The reload is what postfix-script's `reload` sends: SIGHUP to the
/// master (master(8): it re-reads main.cf and master.cf, and its children
/// finish their work and restart with the new settings). postfix-script
/// adds a structure check of the active queue, in ten processes in all
/// (two `postconf`, `master -t`, `postlog`, two `postsuper`, two `sed`),
/// about 40 ms of CPU per host, that a configuration change does not need. The signal goes only to a process that is Postfix's master by
/// name (`/proc/PID/comm`), never to whatever pid a stale pid file names;
/// without `/proc`, or with another name, it is `postfix reload`.
pub(crate) const RUNNING: &str = r#"running() {
  [ -n "$Q" ] || { postfix -c "$C" status >/dev/null 2>&1; return; }
  daemon_pid "$Q/pid/master.pid"
}
reload_postfix() {
  if [ -n "$Q" ] && daemon_pid "$Q/pid/master.pid"; then
    comm=''
    if [ -r "/proc/$pid/comm" ]; then read -r comm < "/proc/$pid/comm" || :; fi
    if [ "$comm" = master ]; then kill -HUP "$pid"; return; fi
  fi
  postfix -c "$C" reload
}
"#;

/// Builds the script for a plan. Paths come from validated inventory values
/// and fixed names, but are still quoted everywhere.
pub fn apply_script(plan: &HostPlan) -> ApplyScript {
    let Steps::Postfix(steps) = &plan.steps else {
        unreachable!("mta::apply_script dispatches on the plan's MTA")
    };
    let steps: &ApplySteps = steps;
    let suffix = db_suffix(&steps.db_type).expect("plan checked the database type");
    let mut s = String::with_capacity(16 * 1024);
    let _ = writeln!(s, "mxpin_apply() {{");
    let _ = writeln!(s, "C={}", quote(&steps.config_dir));
    let _ = writeln!(s, "Q={}", quote(&steps.queue_directory));
    s.push_str(crate::facts::DAEMON_PID);
    s.push_str(RUNNING);
    // Rollback reloads Postfix only when it runs.
    s.push_str(
        "reload_after_rollback() {\n  if running; then reload_postfix >/dev/null 2>&1; fi\n}\n",
    );
    s.push_str(crate::mta::SCRIPT_PRELUDE);

    // Every path this run may create besides its targets.
    let mut staged_paths: Vec<String> = Vec::new();
    let mut targets: Vec<String> = Vec::new();
    // Chmod changes are made in place: rewriting the file would give a
    // table source a newer mtime than its database.
    let writes: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| !matches!(c.action, Action::Delete | Action::Chmod))
        .collect();
    let table_sources: Vec<String> = steps.postmap.clone();
    for c in &writes {
        staged_paths.push(staged(&c.path));
        targets.push(c.path.clone());
    }
    for p in &table_sources {
        if !targets.contains(p) {
            staged_paths.push(staged(p));
            targets.push(p.clone());
        }
        staged_paths.push(format!("{}.{suffix}", staged(p)));
        targets.push(format!("{p}.{suffix}"));
    }
    for c in plan.changes.iter().filter(|c| c.action == Action::Delete) {
        targets.push(c.path.clone());
        targets.push(format!("{}.{suffix}", c.path));
    }
    crate::mta::script_cleanup_staged(&mut s, &staged_paths, &targets);

    crate::mta::script_check_root(&mut s);
    crate::mta::script_prepare_and_lock(&mut s);
    // main.cf and master.cf as the plan was made from them, in the same
    // sha256sum as the files it changes.
    let dir = &steps.config_dir;
    let (main_cf, master_cf) = (format!("{dir}/main.cf"), format!("{dir}/master.cf"));
    let mut kept = vec![(main_cf.as_str(), steps.main_cf_before.as_str())];
    if let Some(before) = &steps.master_cf_before {
        kept.push((master_cf.as_str(), before.as_str()));
    }
    crate::mta::script_check_unchanged(&mut s, &plan.changes, &kept);
    // The previous run's copies, and anything staged by a run that was
    // killed: every staged file is then written new (script_stage).
    crate::mta::script_staging(&mut s, &staged_paths, &targets, &[]);
    // What `postconf` warns about comes from main.cf and master.cf only:
    // it is compared when one of them changes, and with postmap's output
    // (postmap reads main.cf too).
    let edits_config = edits_config(plan);
    let compares_warnings = edits_config || !table_sources.is_empty();
    // Warnings already there before this run never block it: Postfix's
    // warnings are compared without the program name and line numbers
    // (an edit above an admin's duplicate parameter moves its line), and
    // `overriding earlier entry` by the parameter's name only (postconf
    // and postmap name either of the two values, depending on what they
    // read). `new_warnings OUTPUT` sets `nw`, in this shell: silent output
    // (the usual case) costs no process. The warnings from before are
    // taken before the swap when main.cf or master.cf changes; when only
    // tables change, postconf reads the same files at any time, so they
    // are taken only when a postmap says something.
    //
    // postconf is asked as every read asks it (`pc_ask`, the memo's
    // parameters), before and after, so both give their warnings the same
    // way; the warnings from before are the first read's when it asked
    // postconf (the same main.cf and master.cf: checked above), and the
    // postconf after the swap gives the memo's answer too.
    if compares_warnings {
        s.push_str(&super::memo::shell());
    }
    if compares_warnings {
        s.push_str(
            r#"warnings() {
  printf '%s\n' "$1" | sed -e 's/^[^ :]*: //' -e 's/, line [0-9][0-9]*:/:/' \
    -e 's/\(overriding earlier entry: [A-Za-z0-9_-]*\)=.*/\1/' | sort -u
}
"#,
        );
        match &steps.warnings_before {
            Some(w) => {
                let _ = write!(
                    s,
                    r#"before_warnings() {{
  if [ -z "${{before_taken:-}}" ]; then
    before='' bw={}
    if [ -n "$bw" ]; then before=$(warnings "$bw"); fi
    before_taken=yes
  fi
}}
"#,
                    quote(w)
                );
            }
            None => s.push_str(
                r#"before_warnings() {
  if [ -z "${before_taken:-}" ]; then
    pc_ask postconf; before=''
    if [ -n "$pw" ]; then before=$(warnings "$pw"); fi
    before_taken=yes
  fi
}
"#,
            ),
        }
        s.push_str(
            r#"new_warnings() {
  nw=''
  [ -n "$1" ] || return 0
  before_warnings
  set -f; oldifs=$IFS; IFS=$NL
  for l in $(warnings "$1"); do
    case "$NL$before$NL" in *"$NL$l$NL"*) ;; *) nw="$nw$l " ;; esac
  done
  IFS=$oldifs; set +f
}
"#,
        );
        if edits_config {
            s.push_str("before_warnings\n");
        }
    }

    crate::mta::script_chmods(&mut s, &plan.changes);

    // Stage: write every new file beside its target.
    crate::mta::script_stage(&mut s, &writes, is_admin_file);
    for p in &table_sources {
        let st = staged(p);
        if !writes.iter().any(|c| &c.path == p) {
            let _ = writeln!(
                s,
                "step={}\ncp -p {} {} || fail {}",
                quote(&format!("stage {p}")),
                quote(p),
                quote(&st),
                quote(&format!("cannot copy {p}"))
            );
        }
        let _ = writeln!(
            s,
            "step={}\nout=$(postmap -c \"$C\" {} 2>&1) || fail \"$out\"\nnew_warnings \"$out\"\n[ -z \"$nw\" ] || fail \"$nw\"",
            quote(&format!("postmap {p}")),
            quote(&format!("{}:{st}", steps.db_type)),
        );
        // postmap gives the database its source's mode, narrowed to 0644
        // (postmap(1), and its umask of `022 | (~mode & 077)`): a source
        // mxpin writes 0644 needs no chmod.
        if !writes.iter().any(|c| &c.path == p && c.mode == 0o644) {
            let _ = writeln!(s, "chmod 644 {}", quote(&format!("{st}.{suffix}")));
        }
    }

    // Swap: keys and tables first, then master.cf, main.cf last, so main.cf
    // never names a file or service that is not in place; removals after
    // main.cf stopped naming them.
    let _ = writeln!(s, "step=swap");
    let mut order: Vec<&str> = writes
        .iter()
        .map(|c| c.path.as_str())
        .filter(|p| !is_admin_file(p))
        .collect();
    for p in &table_sources {
        if !order.contains(&p.as_str()) {
            order.push(p);
        }
    }
    // A table's database before its source, so Postfix never sees a
    // source newer than its database.
    let dbs: Vec<String> = order.iter().map(|p| format!("{p}.{suffix}")).collect();
    let mut swaps: Vec<&str> = Vec::new();
    for (p, db) in order.iter().zip(&dbs) {
        if table_sources.iter().any(|t| t == p) {
            swaps.push(db);
        }
        swaps.push(p);
    }
    crate::mta::script_swap(&mut s, &swaps);
    for name in ["/master.cf", "/main.cf"] {
        if let Some(m) = writes.iter().find(|c| c.path.ends_with(name)) {
            if name == "/main.cf" {
                crate::mta::script_cool_down(&mut s, &staged(&m.path));
            }
            let _ = writeln!(s, "swap {} {}", quote(&staged(&m.path)), quote(&m.path));
        }
    }
    for c in plan.changes.iter().filter(|c| c.action == Action::Delete) {
        let _ = writeln!(s, "remove {}", quote(&format!("{}.{suffix}", c.path)));
        let _ = writeln!(s, "remove {}", quote(&c.path));
    }

    // Validate what Postfix now sees: `postconf` parses main.cf and
    // master.cf (a broken master.cf line is fatal, and counts as a new
    // warning) and warns about unknown parameters. No `postfix check`: it
    // checks the installation (queue and directory permissions, queue
    // files; it even creates missing directories), not the parameters and
    // services mxpin writes, and costs about 0.3 s of CPU per host.
    if edits_config {
        s.push_str("step='postconf warnings'\n");
        s.push_str(&super::memo::key_and_ask());
        s.push_str("new_warnings \"$pw\"\n[ -z \"$nw\" ] || fail \"$nw\"\n");
    }
    for l in &steps.lookups {
        let table = format!(
            "{}:{}/{}/{}",
            steps.db_type,
            steps.config_dir,
            super::OWNED_DIR,
            l.table
        );
        // What the read-back's checks take from here (`known`, in
        // super::verify): the answer, once it is the expected one.
        let _ = writeln!(
            s,
            "step={}\ngot=$(postmap -c \"$C\" -q {} {} 2>/dev/null) || fail \"no entry\"\n\
             want={}\n[ \"$got\" = \"$want\" ] || fail \"found '$got', expected '$want'\"\n\
             validated=\"${{validated:-}}$NL\"{}\"\t$got\"",
            quote(&format!("postmap -q {} {table}", l.key)),
            quote(&l.key),
            quote(&table),
            quote(&l.expected),
            quote(&format!("q:{}:{}", l.table, l.key)),
        );
    }
    s.push_str(
        r#"step=reload
if running; then
  out=$(reload_postfix 2>&1) || fail "$out"
fi
trap '' HUP INT TERM
drop_old
"#,
    );
    if steps.remove_owned_dir {
        let _ = writeln!(
            s,
            "rm -f \"$C/{dir}/{memo}\"\nrmdir \"$C/{dir}\" 2>/dev/null || :",
            dir = super::OWNED_DIR,
            memo = super::memo::MEMO,
        );
    } else if edits_config {
        // The memo of postconf's answer for the reads to come (the
        // read-back first), from the postconf that checked the new
        // main.cf and master.cf above.
        s.push_str(&super::memo::write());
    } else if !steps.memo_fresh {
        // The memo did not hold when this run read the host: written from
        // that read's key and answer, or, without them, asked again.
        if !compares_warnings {
            s.push_str(&super::memo::shell());
        }
        match &steps.memo_key_before {
            Some(key) if !steps.postconf_before.is_empty() => {
                s.push_str(&super::memo::from_read(key, &steps.postconf_before));
            }
            _ => {
                s.push_str(&super::memo::key_and_ask());
                s.push_str(&super::memo::write());
            }
        }
    }
    s.push_str("printf '@@mxpin-ok\\n'\n");
    flush(&mut s, &steps.flush);
    s.push_str("}\nmxpin_apply\n");
    ApplyScript::new(Zeroizing::new(s))
}

/// Shell that retries, right after a successful reload, the deferred mail
/// of the domains whose route or pins changed, with `postqueue -s`: the
/// fast flush service, which serves `$relay_domains` by default, and so
/// mxpin's relay_domains table. It runs after the verdict, so nothing here
/// can roll the configuration back, and its failure never fails the apply
/// (the configuration is in place and valid); it is reported on a
/// `@@mxpin-note` line, which the verdict protocol ignores.
///
/// Never `postqueue -f`: that retries every deferred message, also the
/// mail queued for a primary that is down, which must keep its schedule.
/// When `-s` is refused (`fast_flush_domains` without the domain, or a
/// domain this host no longer backs up), the deferred messages with a
/// recipient in the domain are retried by queue ID instead (`postqueue -j`,
/// Postfix 3.1+, then `postqueue -i`).
///
/// With nothing in the deferred queue there is nothing to retry, and no
/// `postqueue` runs (nor the flush daemon it starts): `deferred_mail`
/// looks in `$Q/deferred` with the shell's own globs. Anything there but
/// an empty hash directory counts, so a layout it does not know (another
/// `hash_queue_depth`) flushes as before, as does an unknown queue
/// directory.
fn flush(s: &mut String, domains: &[String]) {
    if domains.is_empty() {
        return;
    }
    s.push_str(
        r#"deferred_mail() {
  [ -n "$Q" ] && [ -d "$Q/deferred" ] || return 0
  set +f
  for e in "$Q"/deferred/* "$Q"/deferred/*/*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    case "${e#"$Q/deferred/"}" in */*) return 0 ;; esac
    [ -d "$e" ] || return 0
  done
  return 1
}
flush_domain() {
  out=$(postqueue -c "$C" -s "$1" 2>&1) && return 0
  ids=$(postqueue -c "$C" -j 2>/dev/null | grep -F '"queue_name": "deferred"' | grep -i -e "$2" \
    | sed -n 's/^.*"queue_id": *"\([^"]*\)".*$/\1/p')
  n=0
  for id in $ids; do
    if postqueue -c "$C" -i "$id" >/dev/null 2>&1; then n=$((n + 1)); fi
  done
  if [ "$n" = 1 ]; then m=message; else m=messages; fi
  printf '@@mxpin-note flush %s: postqueue -s failed (%s); %s deferred %s retried by queue ID\n' \
    "$1" "$(printf '%s' "$out" | tr '\n' ' ')" "$n" "$m"
}
if running && deferred_mail; then
"#,
    );
    for d in domains {
        // A recipient of the domain in `postqueue -j` (a basic regular
        // expression; the domain is a validated DNS name).
        let recipient = format!(r#""address": *"[^"]*@{}""#, d.replace('.', r"\."));
        let _ = writeln!(s, "  flush_domain {} {}", quote(d), quote(&recipient));
    }
    s.push_str("fi\n");
}
