//! What mxpin took from the admin's main.cf, so that it can give it back
//! byte for byte: for every parameter mxpin changed, the admin's own text
//! (its line, continuation lines and the comments between them, or none),
//! its value then, and the value mxpin wrote. Kept in
//! `CONFIG_DIR/mxpin/main.cf.taken`.
//!
//! A parameter is given back (its text restored in place) when mxpin no
//! longer needs to change it: when the host stops being a backup, stops
//! pinning, or is released. If the admin changed it after mxpin wrote it,
//! the admin's new text is what counts, and the old record is dropped.

use std::collections::BTreeMap;

use super::maincf::{Edit, MainCf};

/// The file name, in mxpin's directory.
pub const FILE: &str = "main.cf.taken";

const HEADER: &str = "# Managed by mxpin: the admin's own main.cf text of every parameter mxpin\n\
# changed, given back when mxpin no longer needs it (mxpin release). Do not edit.\n";

/// Marks a text that had no line ending (the file's last line): what
/// follows it up to the next newline is the text, that newline is not.
const NO_FINAL_NEWLINE: &str = "@no-final-newline";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The admin's text of the parameter (`None`: main.cf had none).
    pub original: Option<String>,
    /// Its value then (as in effect).
    pub base: String,
    /// The value mxpin wrote.
    pub wrote: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Taken(pub BTreeMap<String, Entry>);

/// An entry as read: when its text was the file's unterminated last line,
/// the newline after it is the record's, not the admin's.
fn close(mut e: Entry, unterminated: bool) -> Entry {
    if let Some(o) = e.original.as_mut().filter(|_| unterminated) {
        if o.ends_with('\n') {
            o.pop();
        }
    }
    e
}

impl Taken {
    /// Reads the record; lines that do not fit are ignored (the record is
    /// mxpin's own file; a damaged one gives back less, never more).
    pub fn parse(text: &str) -> Self {
        let mut out = BTreeMap::new();
        let mut current: Option<(String, Entry)> = None;
        let mut unterminated = false;
        for line in text.split_inclusive('\n') {
            if let Some(name) = line.strip_prefix("@@ ") {
                if let Some((n, e)) = current.take() {
                    out.insert(n, close(e, unterminated));
                }
                current = Some((
                    name.trim().to_string(),
                    Entry {
                        original: None,
                        base: String::new(),
                        wrote: String::new(),
                    },
                ));
                unterminated = false;
            } else if let Some((_, e)) = current.as_mut() {
                if line.trim_end() == NO_FINAL_NEWLINE {
                    unterminated = true;
                } else if let Some(v) = line.strip_prefix("@base ") {
                    e.base = v.trim_end_matches('\n').to_string();
                } else if let Some(v) = line.strip_prefix("@wrote ") {
                    e.wrote = v.trim_end_matches('\n').to_string();
                } else {
                    e.original.get_or_insert_with(String::new).push_str(line);
                }
            }
        }
        if let Some((n, e)) = current {
            out.insert(n, close(e, unterminated));
        }
        Taken(out)
    }

    /// The record's text; `None` when nothing is taken (no file).
    pub fn render(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let mut s = HEADER.to_string();
        for (name, e) in &self.0 {
            s.push_str(&format!(
                "@@ {name}\n@base {}\n@wrote {}\n",
                e.base, e.wrote
            ));
            if let Some(o) = &e.original {
                if !o.ends_with('\n') {
                    s.push_str(NO_FINAL_NEWLINE);
                    s.push('\n');
                }
                s.push_str(o);
                if !o.ends_with('\n') {
                    s.push('\n');
                }
            }
        }
        Some(s)
    }

    /// The entry for `name`, if mxpin's value is still the one in main.cf
    /// (`current`); an entry the admin overrode since does not count.
    pub fn valid(&self, name: &str, current: &str) -> Option<&Entry> {
        self.0.get(name).filter(|e| e.wrote == current)
    }
}

/// Turns the edits mxpin wants (computed from the admin's values, see
/// [`Taken::valid`]) into the edits to make, and the record after them:
/// a `Set` of the admin's own value, a `Remove`, or no edit at all for a
/// taken parameter gives its text back; a first `Set` records the text it
/// replaces. `current(name)` is the value in effect now.
pub fn reconcile(
    m: &MainCf,
    taken: &Taken,
    wanted: Vec<Edit>,
    current: &dyn Fn(&str) -> String,
) -> (Vec<Edit>, Taken) {
    let mut edits = Vec::new();
    let mut after = Taken::default();
    let mut seen: Vec<String> = Vec::new();
    for edit in wanted {
        let name = match &edit {
            Edit::Set(n, _) | Edit::Remove(n) | Edit::Restore(n, _) => n.clone(),
        };
        seen.push(name.clone());
        let now = current(&name);
        let entry = taken.valid(&name, &now);
        match edit {
            Edit::Set(n, v) => {
                let base = entry.map_or(now.clone(), |e| e.base.clone());
                if v == base {
                    if let Some(e) = entry {
                        edits.push(Edit::Restore(n, e.original.clone()));
                    }
                    continue;
                }
                let original = match entry {
                    Some(e) => e.original.clone(),
                    None => m.def_text(&n),
                };
                after.0.insert(
                    n.clone(),
                    Entry {
                        original,
                        base,
                        wrote: v.clone(),
                    },
                );
                edits.push(Edit::Set(n, v));
            }
            Edit::Remove(n) => match entry {
                Some(e) => edits.push(Edit::Restore(n, e.original.clone())),
                None => edits.push(Edit::Remove(n)),
            },
            restore @ Edit::Restore(..) => edits.push(restore),
        }
    }
    for (name, e) in &taken.0 {
        if !seen.contains(name) && taken.valid(name, &current(name)).is_some() {
            edits.push(Edit::Restore(name.clone(), e.original.clone()));
        }
    }
    (edits, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = concat!(
        "# my relay setup\n",
        "transport_maps = hash:/etc/postfix/transport,\n",
        "    # the old one, kept for a while\n",
        "    hash:/etc/postfix/legacy\n",
        "smtpd_tls_security_level=none\n",
        "mynetworks = 127.0.0.0/8\n",
    );

    /// Applies edits and returns the new text and record.
    fn step(text: &str, taken: &Taken, wanted: Vec<Edit>) -> (String, Taken) {
        let m = MainCf::parse(text);
        let current = |n: &str| m.get(n).unwrap_or_default();
        let (edits, after) = reconcile(&m, taken, wanted, &current);
        (m.edited(&edits), after)
    }

    #[test]
    fn taking_and_giving_back_returns_the_admins_bytes() {
        let set = |n: &str, v: &str| Edit::Set(n.into(), v.into());
        let (text, taken) = step(
            ADMIN,
            &Taken::default(),
            vec![
                set(
                    "transport_maps",
                    "hash:/m/transport, hash:/etc/postfix/transport, hash:/etc/postfix/legacy",
                ),
                set("smtpd_tls_security_level", "may"),
                set("smtp_tls_fingerprint_digest", "sha256"),
            ],
        );
        assert!(text.contains("smtpd_tls_security_level = may\n"));
        assert!(text.ends_with("smtp_tls_fingerprint_digest = sha256\n"));
        assert!(
            !text.contains("# the old one"),
            "collapsed while mxpin owns it"
        );
        assert_eq!(taken.0.len(), 3);
        let record = taken.render().unwrap();
        assert_eq!(Taken::parse(&record), taken, "the record round-trips");

        // The same wants again change nothing and keep the record.
        let (again, kept) = step(
            &text,
            &taken,
            vec![
                set(
                    "transport_maps",
                    "hash:/m/transport, hash:/etc/postfix/transport, hash:/etc/postfix/legacy",
                ),
                set("smtpd_tls_security_level", "may"),
                set("smtp_tls_fingerprint_digest", "sha256"),
            ],
        );
        assert_eq!(again, text);
        assert_eq!(kept, taken);

        // Wanting nothing any more gives every byte back.
        let (back, none) = step(&text, &taken, vec![]);
        assert_eq!(back, ADMIN);
        assert_eq!(none.render(), None);

        // Wanting the admin's own value (mxpin's list entry gone) is a
        // give-back too: the continuation and its comment return.
        let (back, left) = step(
            &text,
            &taken,
            vec![
                set(
                    "transport_maps",
                    "hash:/etc/postfix/transport, hash:/etc/postfix/legacy",
                ),
                set("smtpd_tls_security_level", "may"),
            ],
        );
        assert!(
            back.contains("    # the old one, kept for a while\n"),
            "{back}"
        );
        assert!(!back.contains("smtp_tls_fingerprint_digest"));
        assert_eq!(
            left.0.keys().collect::<Vec<_>>(),
            ["smtpd_tls_security_level"]
        );
    }

    /// Found by the property test: the admin's unterminated last line,
    /// recorded, came back with an LF (in a CRLF file too) once mxpin's
    /// added lines followed it.
    #[test]
    fn an_unterminated_text_round_trips_through_the_record() {
        let mut t = Taken::default();
        t.0.insert(
            "a".into(),
            Entry {
                original: Some("a = x,\r\n  y".into()),
                base: "x, y".into(),
                wrote: "z".into(),
            },
        );
        t.0.insert(
            "b".into(),
            Entry {
                original: Some("b = 1\r\n".into()),
                base: "1".into(),
                wrote: "2".into(),
            },
        );
        assert_eq!(Taken::parse(&t.render().unwrap()), t);
        let admin = "# c\r\na = x,\r\n  y";
        let set = |n: &str, v: &str| Edit::Set(n.into(), v.into());
        let (text, taken) = step(admin, &Taken::default(), vec![set("a", "z"), set("c", "1")]);
        assert_eq!(text, "# c\r\na = z\r\nc = 1");
        let taken = Taken::parse(&taken.render().unwrap());
        let (kept, _) = step(&text, &taken, vec![set("c", "1")]);
        assert_eq!(kept, "# c\r\na = x,\r\n  y\r\nc = 1");
        let (back, _) = step(&text, &taken, vec![]);
        assert_eq!(back, admin);
    }

    #[test]
    fn an_admins_later_change_wins_over_the_record() {
        let set = |n: &str, v: &str| Edit::Set(n.into(), v.into());
        let (text, taken) = step(
            ADMIN,
            &Taken::default(),
            vec![set("smtpd_tls_security_level", "may")],
        );
        let edited = text.replace(
            "smtpd_tls_security_level = may",
            "smtpd_tls_security_level = encrypt",
        );
        // mxpin no longer needs to raise it: nothing to give back, the
        // admin's encrypt stays.
        let (after, record) = step(&edited, &taken, vec![]);
        assert_eq!(after, edited);
        assert_eq!(record.render(), None);
    }
}
