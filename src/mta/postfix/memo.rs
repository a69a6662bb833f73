//! postconf's answer, kept on the host for the reads to come.
//!
//! Every read of a Postfix host needs `postconf -x` of the parameters mxpin
//! edits: about 5 ms of CPU (two dozen shared libraries, and every
//! parameter's default set up), the largest part of what a converged
//! `plan` costs a host beyond its SSH handshake. Its answer depends on
//! what postconf reads: main.cf, master.cf (a broken line is fatal), the
//! Postfix installed (its version and compiled-in defaults) and the host's
//! name (the default of `myhostname`, and of `relay_domains` through
//! `mydestination` at compatibility level 1). So an apply that edits
//! main.cf or master.cf, or that found no memo that holds, writes the
//! answer, with a key made of exactly those, to
//! `CONFIG_DIR/mxpin/postconf.memo`, and a read takes the answer from there
//! only when the key is what it finds now; otherwise it asks postconf.
//!
//! The key holds, for main.cf, master.cf and the postconf binary, the
//! `ls -lnc` line with the inode's change time to the nanosecond: every
//! write, rename, chmod or reinstall moves it, whoever made it, and it
//! cannot be set back (`touch` sets the modification time, not this one).
//! A file whose change time has no nanoseconds (a file system that keeps
//! whole seconds: two edits within one second could share it) or that is
//! not a regular file (a symlink's line is the link's) gives no key, and
//! neither does a host whose name cannot be read: postconf is asked. The
//! host's name, the parameters asked and the memo's format version are in
//! the key too. The key is taken before postconf runs: a file changed
//! while it runs has a newer change time than the key, and the memo is
//! not taken.
//!
//! The memo is data, never run: read line by line with the shell's `read`
//! (no process), whole only with its closing `@@end` line (a write cut
//! short is refused). It is written only by an apply script, under the
//! apply lock and the run's exclusive hold (no read runs meanwhile), and
//! removed with mxpin's directory on release.

use super::{SCALARS, TABLES};

/// The memo's file name, in mxpin's directory.
pub const MEMO: &str = "postconf.memo";

/// The `ls` that lists the files a facts script reads and the memo's key
/// files, with their change time to the nanosecond.
pub use crate::facts::LS_CTIME;

/// The parameters every read asks postconf for, in order.
pub fn params() -> Vec<&'static str> {
    ["mail_version", "default_database_type", "queue_directory"]
        .into_iter()
        .chain(TABLES.iter().filter_map(|(_, p)| *p))
        .chain(SCALARS)
        .collect()
}

/// Shell (after `C`, `M` and `NL` are set): `pc_find` sets `pc_bin` to the
/// postconf that `PATH` runs (as `command -v`, with no process); `pc_key`
/// sets `pk`, the memo's key, from `pf_ls` (an `ls -lnc` listing that
/// holds main.cf, master.cf and `pc_bin`: their lines' fields, one space
/// apart, as `ls` pads them to the widest of its listing), false when the
/// host gives no key (called with `set +f`); `pc_memo` sets `pc` to the
/// memo's answer when its key is `pk`; `pc_ask PROGRAM` asks postconf (the
/// program named: `postconf`, or the binary the key lists), setting `pc`
/// to its answer and `pw` to its warnings (its lines that start with
/// `PROGRAM: `, which no `NAME = VALUE` line can: a parameter's name has
/// no colon), so one postconf gives both.
pub fn shell() -> String {
    format!(
        r#"pc_ask() {{
  pc_all=$("$1" -c "$C" -x {params} 2>&1)
  pc='' pw='' pc_rest=$pc_all$NL
  while [ -n "$pc_rest" ]; do
    pc_l=${{pc_rest%%"$NL"*}}; pc_rest=${{pc_rest#*"$NL"}}
    case "$pc_l" in "$1: "*) pw=$pw$pc_l$NL ;; *) pc=$pc$pc_l$NL ;; esac
  done
  pc=${{pc%"$NL"}}; pw=${{pw%"$NL"}}
}}
pc_find() {{
  pc_bin=''; pc_ifs=$IFS; IFS=:; set -f
  for pc_d in $PATH; do
    case "$pc_d" in /*) if [ -f "$pc_d/postconf" ] && [ -x "$pc_d/postconf" ]; then pc_bin=$pc_d/postconf; break; fi ;; esac
  done
  IFS=$pc_ifs; set +f
}}
pc_key() {{
  pk=''
  [ -n "$pc_bin" ] || return 1
  pc_hn=''
  {{ read -r pc_hn < /proc/sys/kernel/hostname; }} 2>/dev/null || return 1
  [ -n "$pc_hn" ] || return 1
  pc_l=$NL$pf_ls$NL pc_k="mxpin postconf memo 1: {params}${{NL}}host $pc_hn"
  for pc_p in "$C/main.cf" "$C/master.cf" "$pc_bin"; do
    pc_x=${{pc_l%%" $pc_p$NL"*}}
    [ "$pc_x" != "$pc_l" ] || return 1
    pc_x=${{pc_x##*"$NL"}}
    case "$pc_x" in -*.[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]) ;; *) return 1 ;; esac
    case "$pc_x" in *.000000000) return 1 ;; esac
    set -f; pc_words $pc_x; set +f
    pc_k=$pc_k$NL$pc_x' '$pc_p
  done
  pk=$pc_k
}}
pc_words() {{ pc_x="$*"; }}
pc_memo() {{
  [ -n "$pk" ] && [ -f "$M/{MEMO}" ] || return 1
  pm_k='' pm_a='' pm_at=key
  while IFS= read -r pm_l; do
    case $pm_at in
      key)
        if [ "$pm_l" = '@@answer' ]; then
          [ "$pm_k" = "$pk$NL" ] || return 1
          pm_at=answer
        else
          pm_k=$pm_k$pm_l$NL
          case "$pk$NL" in "$pm_k"*) ;; *) return 1 ;; esac
        fi ;;
      answer) if [ "$pm_l" = '@@end' ]; then pm_at=end; else pm_a=$pm_a$pm_l$NL; fi ;;
      *) return 1 ;;
    esac
  done < "$M/{MEMO}"
  [ "$pm_at" = end ] || return 1
  pc=${{pm_a%"$NL"}}
}}
"#,
        params = params().join(" "),
    )
}

/// Apply-script shell (after [`shell`]): lists main.cf, master.cf and the
/// postconf binary as they now are, sets `pk` (the memo's key, empty when
/// the host gives none), then asks postconf (`pc`, `pw`: see [`shell`]).
/// The key is taken before postconf runs. Run after the swap, this is the
/// validation of what was swapped in (its warnings) and the memo's answer
/// at once; [`write`] writes it once the reload succeeded.
pub fn key_and_ask() -> String {
    format!(
        r#"M="$C/{dir}"
{ls_of}pc_find
pf_also=$pc_bin
pf_ls_of main.cf "$C/main.cf" master.cf "$C/master.cf"
pf_also=''
pc_key || :
pc_ask "${{pc_bin:-postconf}}"
"#,
        dir = super::OWNED_DIR,
        ls_of = crate::facts::LS_OF,
    )
}

/// Apply-script shell (after [`key_and_ask`], or after `pk` and `pc` were
/// set from the first read's): writes the memo, or removes one it cannot
/// write. Never fails the apply: a host without a memo is read with
/// postconf.
pub fn write() -> String {
    format!("{}M=\"$C/{}\"\npc_write\n", pc_write(), super::OWNED_DIR)
}

/// The shell function `pc_write`: writes the memo of `pk` and `pc`, or
/// removes a memo it cannot write. Apply scripts only, so the reads'
/// scripts do not carry it.
fn pc_write() -> String {
    format!(
        r#"pc_write() {{
  if [ -n "$pk" ] && [ -n "$pc" ]; then
    printf '%s\n@@answer\n%s\n@@end\n' "$pk" "$pc" > "$M/{MEMO}" 2>/dev/null || rm -f "$M/{MEMO}"
  elif [ -e "$M/{MEMO}" ]; then
    rm -f "$M/{MEMO}"
  fi
}}
"#
    )
}

/// Apply-script shell (after [`shell`]): the memo from the first read's
/// key and postconf answer, which that read took in this order from the
/// main.cf and master.cf the apply script checked are still the same
/// bytes. Should either have been touched since (a chmod), its change time
/// moved and the key no longer holds: the next read asks postconf.
pub fn from_read(key: &str, answer: &str) -> String {
    format!(
        "{}pk={}\npc={}\nM=\"$C/{}\"\npc_write\n",
        pc_write(),
        crate::shell::quote(key),
        crate::shell::quote(answer),
        super::OWNED_DIR,
    )
}
