//! The files mxpin owns on a host, shared by every MTA: as found, the key
//! slots, and the change that makes a file as wanted (line endings and the
//! final newline kept as the admin's file has them).

use std::collections::BTreeMap;

use crate::desired::{HostDesired, Origin, StoredKeys, StoredPair};
use crate::plan::{Action, Content, FileChange};

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

/// The line of an `ls -ln` listing for the file `name` (empty if absent):
/// the line whose path is `name`, or ends in `/name` (the facts list the
/// files they read by their full paths; `name` is a file in mxpin's
/// directory, or a path below the configuration directory). A symlink's
/// line ends with its target, so it is never taken for the file.
pub fn ls_line(listing: &str, name: &str) -> String {
    let (path, bare) = (format!("/{name}"), format!(" {name}"));
    listing
        .lines()
        .find(|l| l.ends_with(&path) || l.ends_with(&bare))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A path with every character sh treats specially reaches the script
    /// quoted: in the staging commands and in the messages of their
    /// failures, which show it literally and run nothing.
    #[test]
    fn staging_quotes_paths_in_commands_and_messages() {
        let tmp = tempfile::tempdir().unwrap();
        let mark = tmp.path().join("ran");
        let dir = tmp.path().join("no such dir");
        let path = format!(
            "{}/a b'c\"d`touch {m}`$(touch {m}).conf",
            dir.display(),
            m = mark.display()
        );
        let change = FileChange {
            path: path.clone(),
            action: Action::Create,
            old: None,
            new: Some(Content::Text("x\n".into())),
            mode: 0o644,
            group: 0,
        };
        for admin in [false, true] {
            let mut s = String::from("fail() { printf '%s\\n' \"$1\"; exit 1; }\n");
            crate::mta::script_stage(&mut s, &[&change], |_| admin);
            let out = std::process::Command::new("sh")
                .args(["-c", &s])
                .output()
                .unwrap();
            let what = if admin { "copy" } else { "write" };
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("cannot {what} {path}\n"),
                "{s}"
            );
            assert!(!mark.exists(), "{s}");
        }
    }
}
