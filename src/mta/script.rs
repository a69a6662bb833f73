//! Shell shared by every MTA's scripts: the hold of a run's lock, the
//! apply script's prelude, lock, check of what it changes, staging and
//! chmods, and the verdict protocol read back from its output.

use super::{facts_script, LOCK_WAIT_SECS, OWNED_DIR};
use std::fmt;

use zeroize::Zeroizing;

use crate::inventory::Host;
use crate::plan::{Action, FileChange};

/// The script that holds a host for a whole run: it takes an `flock` on the
/// MTA's configuration directory (shared for read-only commands, exclusive
/// for changes), reads the facts, prints `marker`, and keeps the lock until
/// the controller closes its standard input (the run ends, or mxpin dies
/// and its ssh connection with it). It never waits for the lock: a host
/// another run holds prints `@@mxpin-busy` and ends, and the controller
/// lets go of every host and tries again (so two runs never wait on each
/// other in a cycle). Before letting go, a changing run's hold waits for any
/// apply script still running on the host (the apply lock,
/// [`script_prepare_and_lock`]), so a killed run's last apply ends, or rolls
/// back, before the next run reads. It waits for its input to close with
/// the shell's `read`, not a `cat`.
///
/// The directory itself is locked (an open descriptor, nothing written): a
/// dry run leaves the host byte-identical, and the lock survives main.cf
/// being replaced by rename.
/// `checks` is shell run with the facts (see [`hold_checks`]).
pub fn hold_script(host: &Host, exclusive: bool, marker: &str, checks: &str) -> String {
    let facts = facts_script(host, checks);
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
while read -r _; do :; done
{wait_apply}}}
mxpin_hold
exit 0
"#,
        c = crate::shell::quote(host.config_dir.as_str()),
        marker = crate::shell::quote(marker),
        // Only a run that changes hosts has apply scripts to wait for.
        wait_apply = if exclusive {
            format!("if [ -d \"$C/{OWNED_DIR}\" ]; then exec 8<\"$C/{OWNED_DIR}\"; flock -w 600 8; fi\n")
        } else {
            String::new()
        },
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
install -d -o 0 -g 0 -m 755 "$C/{OWNED_DIR}" || fail "cannot create $C/{OWNED_DIR}"
step=lock
command -v flock >/dev/null 2>&1 || fail "flock not found (util-linux)"
exec 8<"$C/{OWNED_DIR}"
flock -w {LOCK_WAIT_SECS} 8 || fail "another mxpin run has been changing this host for {LOCK_WAIT_SECS} s; nothing was changed"
"#
    );
}

/// Shell that refuses, before anything is written, when a file the plan
/// changes, or one of the `kept` files the plan was made from (path and
/// content: the MTA's main configuration), is no longer what the facts
/// read saw (another run, or an admin, changed it since): compared by
/// SHA-256, so private keys are never echoed back. One `sha256sum` for
/// every file that was there; only when its answer differs is each file
/// checked on its own, to name the one that changed.
pub fn script_check_unchanged(s: &mut String, changes: &[FileChange], kept: &[(&str, &str)]) {
    use crate::shell::quote;
    use std::fmt::Write as _;
    let _ = writeln!(s, "step='check files'");
    let mut known: Vec<(&str, String)> = Vec::new();
    for (path, content) in kept {
        if !changes.iter().any(|c| c.path == *path) {
            known.push((path, sha256_hex(content.as_bytes())));
        }
    }
    for c in changes {
        match &c.old {
            Some(old) => known.push((&c.path, sha256_hex(old.raw().as_bytes()))),
            None => {
                let _ = writeln!(
                    s,
                    "[ ! -e {} ] || fail {}",
                    quote(&c.path),
                    quote(&format!(
                        "{} appeared since mxpin read it (another run?); plan again",
                        c.path
                    ))
                );
            }
        }
    }
    if known.is_empty() {
        return;
    }
    let one_by_one = |s: &mut String, indent: &str| {
        for (path, hex) in &known {
            let _ = writeln!(
                s,
                "{indent}[ \"$(sha256sum < {p} 2>/dev/null)\" = '{hex}  -' ] || fail {}",
                quote(&format!(
                    "{path} changed since mxpin read it (another run?); plan again"
                )),
                p = quote(path),
            );
        }
    };
    // sha256sum escapes a name with a backslash or a line break in its
    // answer; such a path (never one mxpin writes) is checked on its own.
    if known.iter().any(|(p, _)| p.contains(['\\', '\n', '\r'])) {
        one_by_one(s, "");
        return;
    }
    let want: Vec<String> = known.iter().map(|(p, hex)| format!("{hex}  {p}")).collect();
    let paths: Vec<String> = known.iter().map(|(p, _)| quote(p)).collect();
    let _ = writeln!(
        s,
        "got=$(sha256sum -- {} 2>/dev/null) || got=''\nif [ \"$got\" != {} ]; then",
        paths.join(" "),
        quote(&want.join("\n"))
    );
    one_by_one(s, "  ");
    let _ = writeln!(
        s,
        "  fail 'files changed since mxpin read them (another run?); plan again'\nfi"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Shell that sets `u` and `eg` to the effective uid and gid: from the
/// shell's own /proc/self/status (no process), `id` where there is no
/// /proc.
pub const EFFECTIVE_IDS: &str = r#"# The effective uid and gid, from the shell's own /proc/self/status (no
# process; `id` where there is no /proc).
u='' eg=''
if [ -r /proc/self/status ]; then
  while read -r k a b rest; do
    case "$k" in Uid:) u=$b ;; Gid:) eg=$b; break ;; esac
  done < /proc/self/status
fi
case "$u" in ''|*[!0-9]*) u=$(id -u) ;; esac
case "$eg" in ''|*[!0-9]*) eg=$(id -g) ;; esac
"#;

/// Shell that fails the apply script unless it runs as root.
pub fn script_check_root(s: &mut String) {
    s.push_str("step='check user'\n");
    s.push_str(EFFECTIVE_IDS);
    s.push_str("[ \"$u\" = 0 ] || fail \"not running as root\"\n");
}

/// Shell that removes `paths` (those that exist) in one `rm`, run only
/// when one of them is there: they are what a killed run left, so
/// usually none is, and the shell's own tests cost no process.
pub fn script_rm(s: &mut String, indent: &str, paths: &[String]) {
    if paths.is_empty() {
        return;
    }
    let quoted = paths
        .iter()
        .map(|p| crate::shell::quote(p))
        .collect::<Vec<_>>()
        .join(" ");
    rm_found(s, indent, &quoted);
}

/// Shell that runs one `rm -f` of the shell words `words` (quoted paths,
/// or globs) when one of them names a file or a symbolic link: the shell's
/// tests, no process, when none does. A directory there stays either way.
fn rm_found(s: &mut String, indent: &str, words: &str) {
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "{indent}for rm_p in {words}; do if [ -f \"$rm_p\" ] || [ -L \"$rm_p\" ]; then rm -f -- {words} 2>/dev/null; break; fi; done"
    );
}

/// Shell shared by every apply script: strict environment, the `fail`,
/// `rollback`, `swap`, `remove` and `drop_old` (the previous versions,
/// once the new ones are in place for good) helpers. The MTA script defines `C`,
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
    old_of "$t"
    if [ -e "$o" ]; then mv -f "$o" "$t"; else rm -f "$t"; fi
  done
  cleanup_staged
  if [ -n "${made_dir:-}" ]; then rmdir "$made_dir" 2>/dev/null || :; fi
  if [ -n "$swapped" ]; then
    reload_after_rollback
    printf '@@mxpin-rolled-back\n'
  fi
}
old_of() {
  case "${1%/*}" in
    */mxpin) o="${1%/*}/.mxpin-old/${1##*/}" ;;
    *) o="$1.mxpin-old" ;;
  esac
}
swap() {
  old_of "$2"
  if [ -e "$2" ]; then ln -f "$2" "$o" || fail "cannot keep a copy of $2"; fi
  swapped="$2 $swapped"
  mv -f "$1" "$2" || fail "cannot move $1 into place"
}
swap_owned() {
  so_d=$1; shift
  so_c=$# so_n=''
  while [ "$so_c" -gt 0 ]; do
    if [ -e "$so_d/$1" ]; then set -- "$@" "$so_d/$1"; fi
    so_n="$so_n $1"
    shift; so_c=$((so_c - 1))
  done
  if [ $# -gt 0 ]; then
    ln -f -- "$@" "$so_d/.mxpin-old/" || fail "cannot keep a copy of the files in $so_d"
  fi
  set -f; set --
  for so_f in $so_n; do
    set -- "$@" "$so_d/.mxpin-new/$so_f"; swapped="$so_d/$so_f $swapped"
  done
  set +f
  mv -f -- "$@" "$so_d/" || fail "cannot move the new files into $so_d"
}
remove() {
  [ -e "$1" ] || return 0
  old_of "$1"
  ln -f "$1" "$o" || fail "cannot keep a copy of $1"
  swapped="$1 $swapped"
  rm -f "$1" || fail "cannot remove $1"
}
drop_old() {
  set -f; set --
  for t in $swapped; do
    old_of "$t"; set -- "$@" "$o"
    case "${t%/*}" in */mxpin) set -- "$@" "${t%/*}/.mxpin-new" "${t%/*}/.mxpin-old" ;; esac
  done
  set +f
  if [ $# -gt 0 ]; then rm -rf -- "$@"; fi
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

/// The directory of `path` when it is one of mxpin's own files: directly
/// in a directory named [`OWNED_DIR`] (`CONFIG_DIR/mxpin`, the rule the
/// apply script's `old_of` follows too).
fn owned_dir(path: &str) -> Option<&str> {
    let (dir, _) = path.rsplit_once('/')?;
    (dir.rsplit('/').next() == Some(OWNED_DIR)).then_some(dir)
}

/// Shell that removes, from `dir` (a directory of mxpin's own), the files
/// an mxpin from before the staging directories left when it was killed
/// mid-run: previous versions `NAME.mxpin-old` and staged versions
/// `.NAME.mxpin-new`, private keys among them. Nothing else in `dir` has
/// such a name (this mxpin stages in `.mxpin-new/` and `.mxpin-old/`,
/// which neither pattern matches), and a directory there stays. One `rm`,
/// run only when the shell's glob finds one (globbing on: `set +f`, the
/// shell's default, which the script's other `set -f` restore).
fn script_rm_former_names(s: &mut String, dir: &str) {
    let d = crate::shell::quote(dir);
    s.push_str("set +f\n");
    rm_found(s, "", &format!("{d}/*.mxpin-old {d}/.*.mxpin-new"));
}

/// Where an apply script stages the new version of `path`, on its file
/// system so a rename swaps it in atomically: mxpin's own files in their
/// directory's `.mxpin-new`, under their own names, so one `mv` swaps them
/// all in (`swap_owned`); any other file beside it, hidden.
pub fn staged(path: &str) -> String {
    let (dir, name) = path.rsplit_once('/').expect("absolute path");
    match owned_dir(path) {
        Some(_) => format!("{dir}/.mxpin-new/{name}"),
        None => format!("{dir}/.{name}.mxpin-new"),
    }
}

/// Where an apply script keeps the previous version of `path` (a hard
/// link) until the run succeeded, for its rollback: mxpin's own files in
/// their directory's `.mxpin-old`, under their own names (one `ln` keeps
/// them all), any other file beside it.
pub fn old_copy(path: &str) -> String {
    let (dir, name) = path.rsplit_once('/').expect("absolute path");
    match owned_dir(path) {
        Some(_) => format!("{dir}/.mxpin-old/{name}"),
        None => format!("{path}.mxpin-old"),
    }
}

/// The staging directories the files `targets` need, `.mxpin-new` then
/// `.mxpin-old` of each directory of mxpin's own.
fn staging_dirs(targets: &[String]) -> Vec<String> {
    let mut dirs: Vec<String> = Vec::new();
    for t in targets {
        if let Some(d) = owned_dir(t) {
            for sub in [".mxpin-new", ".mxpin-old"] {
                let p = format!("{d}/{sub}");
                if !dirs.contains(&p) {
                    dirs.push(p);
                }
            }
        }
    }
    dirs
}

/// The apply script's `cleanup_staged` (run by a rollback, after the
/// previous versions are back): removes the staged files `staged` and
/// what is left of the previous versions of `targets` (a copy made before
/// the run failed), by name, then the staging directories, when empty:
/// anything else there (a directory at a staged file's name) stays, and
/// the next run's staging fails the same way.
pub fn script_cleanup_staged(s: &mut String, staged: &[String], targets: &[String]) {
    use std::fmt::Write as _;
    let _ = writeln!(s, "cleanup_staged() {{");
    let mut paths = staged.to_vec();
    paths.extend(targets.iter().map(|t| old_copy(t)));
    script_rm(s, "  ", &paths);
    let dirs = staging_dirs(targets);
    if !dirs.is_empty() {
        let quoted: Vec<String> = dirs.iter().map(|p| crate::shell::quote(p)).collect();
        let _ = writeln!(s, "  rmdir -- {} 2>/dev/null", quoted.join(" "));
    }
    let _ = writeln!(s, "  :\n}}");
}

/// Shell (under the apply lock) that removes what an earlier run left, by
/// name, in one `rm`: the staged files `staged`, the previous versions of
/// `targets` and `also`; then makes the staging directories of `targets`
/// (one `mkdir`; root's, 0755 like mxpin's directory: Exim's `-bV -C` of
/// the staged configuration reads the staged fragments as the Exim user;
/// every staged file has its own mode). A run that succeeds removes them
/// (`drop_old`); a rollback's `cleanup_staged` removes them when empty.
/// Anything else at a staged file's name (a directory) is left alone, and
/// staging that file fails. In each directory of mxpin's own, what an
/// older mxpin's killed run left under the names it staged with before
/// (see [`script_rm_former_names`]) goes too.
pub fn script_staging(s: &mut String, staged: &[String], targets: &[String], also: &[String]) {
    use std::fmt::Write as _;
    let mut leftovers: Vec<String> = targets.iter().map(|t| old_copy(t)).collect();
    leftovers.extend(also.iter().cloned());
    leftovers.extend(staged.iter().cloned());
    script_rm(s, "", &leftovers);
    let mut owned: Vec<&str> = targets.iter().filter_map(|t| owned_dir(t)).collect();
    owned.sort_unstable();
    owned.dedup();
    for dir in owned {
        script_rm_former_names(s, dir);
    }
    let dirs = staging_dirs(targets);
    if !dirs.is_empty() {
        let quoted: Vec<String> = dirs.iter().map(|p| crate::shell::quote(p)).collect();
        let _ = writeln!(
            s,
            "mkdir -p -m 755 -- {} || fail 'cannot create the staging directories'",
            quoted.join(" ")
        );
    }
}

/// Shell that swaps in the staged versions of `targets`, in this order:
/// consecutive files of one directory of mxpin's own with one `ln` (their
/// previous versions) and one `mv` (`swap_owned`, renames in argument
/// order), any other file with `swap`.
pub fn script_swap(s: &mut String, targets: &[&str]) {
    use crate::shell::quote;
    use std::fmt::Write as _;
    let mut i = 0;
    while i < targets.len() {
        match owned_dir(targets[i]) {
            Some(dir) => {
                let mut names = Vec::new();
                while i < targets.len() && owned_dir(targets[i]) == Some(dir) {
                    let name = targets[i].rsplit_once('/').expect("absolute path").1;
                    names.push(quote(name));
                    i += 1;
                }
                let _ = writeln!(s, "swap_owned {} {}", quote(dir), names.join(" "));
            }
            None => {
                let _ = writeln!(
                    s,
                    "swap {} {}",
                    quote(&staged(targets[i])),
                    quote(targets[i])
                );
                i += 1;
            }
        }
    }
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
///
/// The caller removes every staged path first (in the `rm` of the previous
/// run's copies), and mxpin's files are written with the shell's
/// noclobber on, so each is a new file: created by root with the mode
/// its umask gives (the umask is set from the file's mode, `umask` is the
/// shell's own). Processes only where creation cannot give it:
/// - `chown`, for a group other than root's, or when the shell's
///   effective gid (`eg`, [`EFFECTIVE_IDS`]) is not 0, or the directory is
///   set-group-ID (a new file takes the directory's group);
/// - `chmod`, for a mode with bits a new file never gets (execute,
///   set-ID, sticky).
///
/// Each is one process per (group, mode), not per file.
pub fn script_stage(s: &mut String, writes: &[&FileChange], admin: impl Fn(&str) -> bool) {
    use crate::shell::quote;
    use std::fmt::Write as _;
    let mut modes: Vec<((u32, u32), Vec<&str>)> = Vec::new();
    let mut umask = 0o077;
    s.push_str("set -C\n");
    for c in writes {
        let new = c.new.as_ref().expect("writes have content");
        let st = quote(&staged(&c.path));
        let _ = writeln!(s, "step={}", quote(&format!("stage {}", c.path)));
        if admin(&c.path) {
            let _ = writeln!(
                s,
                "cp -p {} {st} || fail {}\nprintf '%s' {} >| {st} || fail {}",
                quote(&c.path),
                quote(&format!("cannot copy {}", c.path)),
                quote(new.raw()),
                quote(&format!("cannot write {}", c.path))
            );
            continue;
        }
        let want = !c.mode & 0o777;
        if want != umask {
            let _ = writeln!(s, "umask {want:03o}");
            umask = want;
        }
        let _ = writeln!(
            s,
            "printf '%s' {} > {st} || fail {}",
            quote(new.raw()),
            quote(&format!("cannot write {}", c.path))
        );
        let key = (c.group, c.mode);
        match modes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, paths)) => paths.push(&c.path),
            None => modes.push((key, vec![&c.path])),
        }
    }
    if umask != 0o077 {
        s.push_str("umask 077\n");
    }
    s.push_str("set +C\n");
    for ((group, mode), paths) in &modes {
        let staged: Vec<String> = paths.iter().map(|p| quote(&staged(p))).collect();
        let staged = staged.join(" ");
        let mut dirs: Vec<&str> = paths
            .iter()
            .map(|p| p.rsplit_once('/').map_or("/", |(d, _)| d))
            .collect();
        dirs.sort_unstable();
        dirs.dedup();
        let chown = format!("chown 0:{group} {staged}");
        let chown = if *group != 0 {
            chown
        } else {
            let setgid: Vec<String> = dirs
                .iter()
                .map(|d| format!("[ -g {} ]", quote(d)))
                .collect();
            format!(
                "if [ \"$eg\" != 0 ] || {}; then {chown}; fi",
                setgid.join(" || ")
            )
        };
        let chmod = match mode & !0o666 {
            0 => String::new(),
            _ => format!(" && chmod {mode:o} {staged}"),
        };
        let _ = writeln!(
            s,
            "step={}\n{{ {chown}{chmod}; }} || fail {}",
            quote(&format!("set mode of {}", paths.join(", "))),
            quote(&format!("cannot set mode of {}", paths.join(", ")))
        );
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

/// Shell that back-dates a staged main.cf, completely written, by 2 s
/// before it is renamed into place. Postfix's `dict_load_file` re-reads a
/// file whose mtime is not older than 1 s before the read started, dozing
/// 300 ms each time (a guard against reading a file mid-write), so every
/// Postfix program reading a main.cf written less than about 2 s ago
/// waits: `postconf`, `postfix check`, the reload, the read-back. A file
/// swapped in by rename is never seen mid-write, so the guard has nothing
/// to protect; nothing else reads this mtime (the check for changes since
/// the read compares SHA-256, and Postfix's master does not watch
/// main.cf). GNU `touch -d '2 seconds ago'` (one process; `date` is not
/// needed for the time); where it fails, Postfix just waits.
pub fn script_cool_down(s: &mut String, staged: &str) {
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "touch -d '2 seconds ago' {} 2>/dev/null || :",
        crate::shell::quote(staged)
    );
}

/// The line an apply script prints, after its verdict, before the facts it
/// reads back in the same remote command ([`apply_and_read_script`]).
pub const READ_BACK: &str = "@@mxpin-read-back";

/// An apply script that, once applied, reads the host's facts again in the
/// same remote command, with `extra` (the verification checks) run before
/// their closing frame: the read-back that proves convergence, without a
/// round trip of its own. Both functions are defined before the one line
/// that calls them, so an answer cut short while it was sent runs nothing.
/// A failed apply exits before the read-back.
pub fn apply_and_read_script(
    plan: &crate::plan::HostPlan,
    host: &Host,
    extra: &str,
) -> ApplyScript {
    let apply = super::apply_script(plan);
    let facts = super::read_back_script(plan, host, extra);
    let mut s = Zeroizing::new(String::with_capacity(apply.text().len() + facts.len() + 64));
    s.push_str(
        apply
            .text()
            .strip_suffix("mxpin_apply\n")
            .expect("apply scripts end with their call"),
    );
    s.push_str(
        facts
            .strip_suffix("mxpin_facts\n")
            .expect("facts scripts end with their call"),
    );
    s.push_str(&format!(
        "mxpin_apply; printf '%s\\n' {READ_BACK}; mxpin_facts\n"
    ));
    ApplyScript::new(s)
}

/// Splits the output of [`apply_and_read_script`] at the read-back line:
/// the verdict before it, the facts after it (`None` when the script ended
/// before reading back: it failed, or was cut short).
pub fn split_read_back(stdout: &[u8]) -> (&[u8], Option<&[u8]>) {
    let line = format!("{READ_BACK}\n");
    let line = line.as_bytes();
    let mut start = 0;
    while start < stdout.len() {
        let end = stdout[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(stdout.len(), |n| start + n + 1);
        if &stdout[start..end] == line {
            return (&stdout[..start], Some(&stdout[end..]));
        }
        start = end;
    }
    (stdout, None)
}

#[cfg(test)]
mod read_back_tests {
    use super::*;

    #[test]
    fn the_verdict_and_the_facts_are_split_at_the_read_back_line() {
        let out =
            b"@@mxpin-ok\n@@mxpin-note flush example.net: x\n@@mxpin-read-back\n@@mxpin uid 1\n0\n";
        let (verdict, facts) = split_read_back(out);
        assert_eq!(verdict, b"@@mxpin-ok\n@@mxpin-note flush example.net: x\n");
        assert_eq!(facts, Some(&b"@@mxpin uid 1\n0\n"[..]));
        assert_eq!(
            parse_result(std::str::from_utf8(verdict).unwrap()),
            Some(ApplyResult::Applied)
        );
    }

    #[test]
    fn a_failed_apply_has_no_read_back() {
        let out = b"@@mxpin-failed swap: cannot move\n@@mxpin-rolled-back\n";
        assert_eq!(split_read_back(out), (&out[..], None));
        // Only a whole line counts, and only the first one.
        let out = b"x@@mxpin-read-back\n@@mxpin-read-back\n@@mxpin-read-back\n";
        let (verdict, facts) = split_read_back(out);
        assert_eq!(verdict, b"x@@mxpin-read-back\n");
        assert_eq!(facts, Some(&b"@@mxpin-read-back\n"[..]));
    }
}

#[cfg(test)]
mod batched_tests {
    use super::*;
    use crate::plan::Content;

    fn change(path: &str, old: Option<&str>, new: &str, mode: u32) -> FileChange {
        FileChange {
            path: path.to_string(),
            action: if old.is_some() {
                Action::Modify
            } else {
                Action::Create
            },
            old: old.map(|o| Content::Text(o.to_string())),
            new: Some(Content::Text(new.to_string())),
            mode,
            group: 0,
        }
    }

    /// Runs `body` with the prelude's `fail` (no rollback needed here).
    fn run(body: &str) -> (bool, String) {
        let script = format!(
            "fail() {{ printf '@@mxpin-failed %s: %s\\n' \"$step\" \"$1\"; exit 1; }}\n{body}"
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// One `sha256sum` for all files; when it differs, the message names
    /// the file that changed, and a file that appeared is named too.
    #[test]
    fn the_check_of_unchanged_files_names_the_one_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| format!("{}/{n}", dir.path().display());
        std::fs::write(p("a"), "alpha\n").unwrap();
        std::fs::write(p("b b"), "beta").unwrap();
        let changes = [
            change(&p("a"), Some("alpha\n"), "x", 0o644),
            change(&p("b b"), Some("beta"), "y", 0o600),
            change(&p("new"), None, "z", 0o644),
        ];
        let mut s = String::new();
        script_check_unchanged(&mut s, &changes, &[]);
        assert_eq!(s.matches("sha256sum").count(), 3, "{s}");
        assert_eq!(run(&s), (true, String::new()));

        std::fs::write(p("b b"), "beta, edited").unwrap();
        let (ok, out) = run(&s);
        assert!(!ok);
        assert_eq!(
            out,
            format!(
                "@@mxpin-failed check files: {} changed since mxpin read it (another run?); plan again\n",
                p("b b")
            )
        );
        std::fs::write(p("b b"), "beta").unwrap();
        std::fs::remove_file(p("a")).unwrap();
        assert!(run(&s).1.contains(&format!("{} changed since", p("a"))));
        std::fs::write(p("a"), "alpha\n").unwrap();
        std::fs::write(p("new"), "").unwrap();
        assert!(run(&s).1.contains(&format!("{} appeared since", p("new"))));
    }

    /// Staged files get their modes from the umask they are created
    /// under: no chown or chmod for root's files with modes a new file can
    /// have, one per (group, mode) otherwise.
    #[test]
    fn staging_sets_modes_by_creation_and_processes_only_where_needed() {
        if !nix_is_root() {
            eprintln!("SKIPPED: needs root (chown 0:0)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| format!("{}/{n}", dir.path().display());
        let mode_of = |path: &str| {
            let meta = std::fs::metadata(path).unwrap();
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777
        };
        let changes = [
            change(&p("k1"), None, "secret one\n", 0o600),
            change(&p("c1"), None, "cert\n", 0o644),
            change(&p("k2"), None, "secret two", 0o600),
            change(&p("x1"), None, "#!/bin/sh\n", 0o755),
        ];
        let writes: Vec<&FileChange> = changes.iter().collect();
        let mut stage = String::new();
        script_stage(&mut stage, &writes, |_| false);
        // The prelude's umask, the root check's `eg`, and the caller's rm.
        let staged_all: Vec<String> = ["k1", "c1", "k2", "x1"]
            .iter()
            .map(|n| staged(&p(n)))
            .collect();
        let mut s = String::from("umask 077\n");
        s.push_str(EFFECTIVE_IDS);
        script_rm(&mut s, "", &staged_all);
        s.push_str(&stage);
        s.push_str("umask\n");
        assert_eq!(s.matches("chmod ").count(), 1, "{s}");
        assert!(s.contains("chmod 755"), "{s}");
        assert_eq!(
            run(&s),
            (true, "0077\n".to_string()),
            "the umask is given back"
        );
        for (name, mode, text) in [
            ("k1", 0o600, "secret one\n"),
            ("c1", 0o644, "cert\n"),
            ("k2", 0o600, "secret two"),
            ("x1", 0o755, "#!/bin/sh\n"),
        ] {
            let st = staged(&p(name));
            assert_eq!(mode_of(&st), mode, "{name}");
            assert_eq!(std::fs::read_to_string(&st).unwrap(), text);
        }

        // A staged file left by a killed run, readable by all: the rm
        // before staging makes the key a new file again.
        std::fs::write(staged(&p("k1")), "old").unwrap();
        std::fs::set_permissions(
            staged(&p("k1")),
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .unwrap();
        assert!(run(&s).0);
        assert_eq!(mode_of(&staged(&p("k1"))), 0o600);

        // Without that rm, noclobber refuses to write into it.
        let (ok, out) = run(&format!("umask 077\n{}{stage}", EFFECTIVE_IDS));
        assert!(!ok);
        assert!(out.contains("cannot write"), "{out}");

        // A set-group-ID directory gives new files its group: chown.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o2755),
        )
        .unwrap();
        std::os::unix::fs::chown(dir.path(), None, Some(1)).unwrap();
        assert!(run(&s).0);
        for name in ["k1", "c1"] {
            let meta = std::fs::metadata(staged(&p(name))).unwrap();
            assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 0, "{name}");
        }
    }

    fn nix_is_root() -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n")
    }

    #[test]
    fn one_rm_for_every_path_only_when_one_is_there_and_none_for_no_path() {
        let mut s = String::new();
        script_rm(&mut s, "  ", &[]);
        assert_eq!(s, "");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let paths: Vec<String> = ["a b", "c'd", "e"]
            .iter()
            .map(|n| format!("{d}/{n}"))
            .collect();
        script_rm(&mut s, "  ", &paths);
        assert_eq!(s.matches("rm -f").count(), 1, "{s}");
        // `rm` is found on PATH only where the test puts a logging one.
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let log = dir.path().join("rm.log");
        let fake = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec /bin/rm \"$@\"\n",
            log.display()
        );
        std::fs::write(bin.join("rm"), fake).unwrap();
        std::fs::set_permissions(
            bin.join("rm"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let script = format!("PATH={}:$PATH\n{s}", bin.display());
        let sh = |script: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        };
        // Nothing there: no `rm`.
        sh(&script);
        assert!(!log.exists());
        // One there (a dangling symbolic link counts): one `rm` of all.
        std::os::unix::fs::symlink("/nonexistent", &paths[2]).unwrap();
        std::fs::write(&paths[1], "x").unwrap();
        sh(&script);
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);
        assert!(paths.iter().all(|p| std::fs::symlink_metadata(p).is_err()));
    }
}

/// mxpin's own files are swapped by one `ln` and one `mv`, in order, and
/// given back by a rollback; the staging directories, holding only what
/// the run put there, do not outlive it; other files keep their copies
/// beside them.
#[cfg(test)]
mod swap_tests {
    use super::*;

    fn run(dir: &std::path::Path, body: &str) -> (bool, String) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {}\n{body}",
                crate::shell::quote(dir.to_str().unwrap())
            ))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// An older mxpin, killed mid-run, left its previous and staged
    /// versions beside mxpin's files (`NAME.mxpin-old`, `.NAME.mxpin-new`,
    /// private keys among them): staging removes them, and only them.
    #[test]
    fn staging_removes_what_an_older_mxpin_left_under_its_former_names() {
        let root = tempfile::tempdir().unwrap();
        let c = root.path().join("etc");
        let m = c.join(OWNED_DIR);
        std::fs::create_dir_all(m.join("kept.mxpin-old")).unwrap();
        for n in [
            "current.key",
            "current.key.mxpin-old",
            ".next.key.mxpin-new",
            "transport.mxpin-old",
            "notes.mxpin-old.txt",
            ".mxpin-newer",
        ] {
            std::fs::write(m.join(n), "x").unwrap();
        }
        std::os::unix::fs::symlink("/nonexistent", m.join("link.mxpin-old")).unwrap();
        let target = m.join("current.key").to_str().unwrap().to_string();
        let mut s = String::new();
        script_staging(
            &mut s,
            &[staged(&target)],
            std::slice::from_ref(&target),
            &[],
        );
        assert_eq!(s.matches("*.mxpin-old").count(), 2, "{s}");
        let (ok, out) = run(
            root.path(),
            &format!("fail() {{ echo \"$1\"; exit 1; }}\n{s}"),
        );
        assert!(ok, "{out}");
        assert_eq!(
            names(&m),
            [
                ".mxpin-new",
                ".mxpin-newer",
                ".mxpin-old",
                "current.key",
                "kept.mxpin-old",
                "notes.mxpin-old.txt"
            ]
        );
        // Nothing of the kind: no `rm` runs (the staged name's is the
        // only one, and it is not there either).
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("rm"), "#!/bin/sh\necho rm-ran\nexit 1\n").unwrap();
        std::fs::set_permissions(
            bin.join("rm"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::remove_dir(m.join(".mxpin-new")).unwrap();
        std::fs::remove_dir(m.join(".mxpin-old")).unwrap();
        let (ok, out) = run(
            root.path(),
            &format!(
                "PATH={}:$PATH\nfail() {{ echo \"$1\"; exit 1; }}\n{s}",
                bin.display()
            ),
        );
        assert!(ok && !out.contains("rm-ran"), "{out}");
    }

    #[test]
    fn owned_files_swap_in_one_ln_and_one_mv_and_roll_back() {
        let root = tempfile::tempdir().unwrap();
        let c = root.path().join("etc");
        let m = c.join(OWNED_DIR);
        std::fs::create_dir_all(&m).unwrap();
        let p = |n: &str| m.join(n).to_str().unwrap().to_string();
        let main_cf = c.join("main.cf").to_str().unwrap().to_string();
        std::fs::write(p("a"), "old a").unwrap();
        std::fs::write(p("b.db"), "old b.db").unwrap();
        std::fs::write(&main_cf, "old main").unwrap();
        let targets: Vec<String> = vec![p("b.db"), p("a"), p("new"), main_cf.clone()];
        let t: Vec<&str> = targets.iter().map(String::as_str).collect();
        assert_eq!(staged(&p("a")), format!("{}/.mxpin-new/a", m.display()));
        assert_eq!(old_copy(&p("a")), format!("{}/.mxpin-old/a", m.display()));
        assert_eq!(
            staged(&main_cf),
            format!("{}/.main.cf.mxpin-new", c.display())
        );
        assert_eq!(old_copy(&main_cf), format!("{main_cf}.mxpin-old"));

        let mut s = String::new();
        script_swap(&mut s, &t);
        assert_eq!(s.matches("swap_owned ").count(), 1, "{s}");
        assert!(s.contains(" 'b.db' 'a' 'new'\n"), "{s}");
        let staged_paths: Vec<String> = targets.iter().map(|t| staged(t)).collect();
        let mut script = String::from("umask 077\n");
        script_cleanup_staged(&mut script, &staged_paths, &targets);
        script.push_str("reload_after_rollback() { :; }\n");
        script.push_str(SCRIPT_PRELUDE);
        script_staging(&mut script, &staged_paths, &targets, &[]);
        for (target, text) in [
            (&p("b.db"), "new b.db"),
            (&p("a"), "new a"),
            (&p("new"), "new"),
            (&main_cf, "new main"),
        ] {
            script.push_str(&format!(
                "printf '%s' {} > {}\n",
                crate::shell::quote(text),
                crate::shell::quote(&staged(target))
            ));
        }
        script.push_str("step=swap\n");
        script.push_str(&s);

        // A failure after the swap: every previous version back, the new
        // file gone, no staging directory left.
        let (ok, out) = run(root.path(), &format!("{script}fail 'a check'\n"));
        assert!(!ok);
        assert_eq!(out, "@@mxpin-failed swap: a check\n@@mxpin-rolled-back\n");
        assert_eq!(names(&m), ["a", "b.db"]);
        assert_eq!(std::fs::read_to_string(p("a")).unwrap(), "old a");
        assert_eq!(std::fs::read_to_string(p("b.db")).unwrap(), "old b.db");
        assert_eq!(std::fs::read_to_string(&main_cf).unwrap(), "old main");
        assert_eq!(names(&c), ["main.cf", OWNED_DIR]);

        // Success: the new versions in place, the copies dropped with the
        // staging directories.
        // (The staging directory is 0755, as Exim's `-bV -C` of staged
        // fragments needs.)
        let (ok, out) = run(
            root.path(),
            &format!(
                "{script}stat -c %a {}\ndrop_old\necho done\n",
                crate::shell::quote(m.join(".mxpin-new").to_str().unwrap())
            ),
        );
        assert!(ok, "{out}");
        assert_eq!(out, "755\ndone\n");
        assert_eq!(names(&m), ["a", "b.db", "new"]);
        assert_eq!(std::fs::read_to_string(p("a")).unwrap(), "new a");
        assert_eq!(std::fs::read_to_string(p("b.db")).unwrap(), "new b.db");
        assert_eq!(std::fs::read_to_string(&main_cf).unwrap(), "new main");
        assert_eq!(names(&c), ["main.cf", OWNED_DIR]);
    }
}
