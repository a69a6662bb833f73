//! What is on a host, read in one remote command.
//!
//! A facts script prints length-framed sections, `@@mxpin NAME LEN\n` then
//! exactly LEN bytes and a newline, so file contents need no escaping and a
//! truncated or garbled answer is detected instead of misread. MTA modules
//! write the scripts (with [`SHELL_HELPERS`]) and interpret the sections.
//!
//! Files come in a [`BUNDLE`] frame (several files read by one `cat`),
//! which [`parse`] reads as one section per file, as if each file had had
//! its own frame; so the MTA parsers see the same sections either way.

use std::collections::{BTreeMap, BTreeSet};

/// Shell: `daemon_pid FILE` is true when FILE (a daemon's pid file, its
/// first line) names a live process, whose pid it leaves in `$pid` (empty
/// otherwise). What `postfix status` and Exim's init script check, with no
/// process of its own: the facts and the apply scripts of both MTAs ask it.
macro_rules! daemon_pid {
    () => {
        r#"daemon_pid() {
  pid=''
  if [ -r "$1" ]; then read -r pid < "$1" || :; fi
  case "$pid" in ''|*[!0-9]*) pid=''; return 1 ;; esac
  kill -0 "$pid" 2>/dev/null || { pid=''; return 1; }
}
"#
    };
}

/// The `ls` that lists the files a facts script reads: mode line, size in
/// bytes, and change time to the nanosecond (what the memo of postconf's
/// answer is keyed by, [`crate::mta::postfix::memo`]).
macro_rules! ls_ctime {
    () => {
        "ls -lnc --time-style=+%s.%N"
    };
}

/// Shell: `pf_ls_of NAME PATH...` (see [`SHELL_HELPERS`]).
macro_rules! pf_ls_of {
    () => {
        concat!(
            r#"pf_ls_of() {
  pf_c=$#
  while [ "$pf_c" -gt 0 ]; do set -- "$@" "$2"; shift 2; pf_c=$((pf_c - 2)); done
  unset BLOCK_SIZE LS_BLOCK_SIZE BLOCKSIZE QUOTING_STYLE TIME_STYLE
  pf_ls=$("#,
            ls_ctime!(),
            r#" -- "$@" ${pf_also:+"$pf_also"} 2>/dev/null)
  if [ -z "$pf_ls" ]; then pf_ls=$(ls -ln -- "$@" ${pf_also:+"$pf_also"} 2>/dev/null); fi
}
"#
        )
    };
}

/// [`ls_ctime!`] as a constant.
pub const LS_CTIME: &str = ls_ctime!();

/// [`pf_ls_of!`] as a constant, for the apply scripts that list what the
/// facts list.
pub const LS_OF: &str = pf_ls_of!();

/// Shell functions for facts scripts: `put NAME VALUE`, `putfile NAME PATH`
/// (the latter keeps trailing newlines, which `$(...)` would strip) and
/// `putfiles LIST NAME PATH [NAME PATH]...`, which reads every file in two
/// processes: `pf_ls_of` lists them, `pf_put` reads and puts them.
///
/// `pf_ls_of NAME PATH...` sets `pf_ls` to one `ls -lnc` of the PATHs
/// (and of `$pf_also`, a path listed but not read, when set): each file's
/// mode line, its size in bytes, and its ctime to the nanosecond
/// (`--time-style=+%s.%N`; what [`crate::mta::postfix`]'s memo of
/// postconf's answer is keyed by), the paths as given. The environment
/// that GNU `ls` would scale or quote them by is unset; an `ls` without
/// GNU's options (BusyBox) is asked `ls -ln`.
///
/// `pf_put LIST NAME PATH...` puts that listing in the section LIST (none
/// when LIST is empty), then the files in one [`BUNDLE`] frame read by one
/// `cat`; or file by file with `putfile` (an unreadable file is named in
/// an `error` section) when a file has no line of a regular file in the
/// listing (a symlink, a file gone), `cat` fails, or the sizes do not add
/// up to what `cat` gave (a file changed in between). Without files it
/// reads nothing (`cat` alone would read the rest of the script from
/// stdin). Also `daemon_pid` ([`DAEMON_PID`]). Requires `LC_ALL=C` so
/// that `${#v}` counts bytes.
///
/// `cat` reads a here-document `x` after the files: that keeps the
/// contents' trailing newlines from `$(...)` without a subshell around
/// `cat`, one process less per read.
pub const SHELL_HELPERS: &str = concat!(
    r#"put() { printf '@@mxpin %s %s\n' "$1" "${#2}"; printf '%s\n' "$2"; }
putfile() {
  if v=$(cat -- "$2" 2>&1; r=$?; echo x; exit $r); then put "$1" "${v%x}"; else put error "cannot read $2: ${v%x}"; fi
}
putfiles() {
  [ $# -gt 1 ] || return 0
  pf_list=$1; shift
  pf_ls_of "$@"
  pf_put "$pf_list" "$@"
}
"#,
    pf_ls_of!(),
    r#"pf_put() {
  [ $# -gt 1 ] || return 0
  pf_list=$1; shift
  pf_nl='
'
  pf_names='' pf_c=$#
  while [ "$pf_c" -gt 0 ]; do pf_names=$pf_names$1$pf_nl; set -- "$@" "$2"; shift 2; pf_c=$((pf_c - 2)); done
  if [ -n "$pf_list" ]; then put "$pf_list" "$pf_ls"; fi
  if pf_index "$@" && pf_v=$(cat -- "$@" - 2>/dev/null <<'MXPIN_PF_END'
x
MXPIN_PF_END
) && [ "$pf_sum" -eq $((${#pf_v} - 1)) ]; then
    put bundle "$pf_idx$pf_nl${pf_v%x}"
  else
    for pf_p in "$@"; do putfile "${pf_names%%"$pf_nl"*}" "$pf_p"; pf_names=${pf_names#*"$pf_nl"}; done
  fi
}
pf_index() {
  pf_idx='' pf_sum=0 pf_n=$pf_names pf_l=$pf_nl$pf_ls$pf_nl
  for pf_p; do
    pf_x=${pf_l%%" $pf_p$pf_nl"*}
    [ "$pf_x" != "$pf_l" ] || return 1
    pf_x=${pf_x##*"$pf_nl"}
    case "$pf_x" in -*) ;; *) return 1 ;; esac
    for pf_k in 1 2 3 4; do pf_x=${pf_x#*" "}; pf_x=${pf_x#"${pf_x%%[! ]*}"}; done
    pf_s=${pf_x%%" "*}
    case "$pf_s" in ''|*[!0-9]*) return 1 ;; esac
    pf_idx=$pf_idx$pf_s' '${pf_n%%"$pf_nl"*}$pf_nl; pf_n=${pf_n#*"$pf_nl"}
    pf_sum=$((pf_sum + pf_s))
  done
}
"#,
    daemon_pid!()
);

/// [`daemon_pid!`] as a constant, for the apply scripts.
pub const DAEMON_PID: &str = daemon_pid!();

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable facts from host: {0}")]
pub struct FramingError(String);

/// Whether a section may be given more than once: `error` (every
/// unreadable file adds one) and `fresh:TABLE` (one per database suffix).
/// Any other name given twice is a garbled answer.
fn repeats(name: &str) -> bool {
    name == "error" || name.starts_with("fresh:")
}

/// The frame every complete answer ends with; nothing may follow it.
pub const END: &str = "end";

/// The frame of several files (`putfiles`): an index of `SIZE NAME` lines
/// (names as the script gave them, sizes from the `ls` listing), an empty line, and
/// the files' contents one after the other, in the index's order. It reads
/// as the sections NAME, each holding its SIZE bytes.
pub const BUNDLE: &str = "bundle";

/// Sections by name. A name given twice (see [`repeats`]) keeps every
/// value, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sections(BTreeMap<String, Vec<String>>);

impl Sections {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.last()).map(String::as_str)
    }

    /// Every section with its last value, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .filter_map(|(k, v)| v.last().map(|v| (k.as_str(), v.as_str())))
    }

    pub fn all(&self, name: &str) -> &[String] {
        self.0.get(name).map_or(&[], Vec::as_slice)
    }

    /// Every section name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// The frames of an answer as they come: name and body. Anything outside
/// frames is an error, and so is anything after the [`END`] frame.
fn raw_frames(output: &[u8]) -> Result<Vec<(&str, &[u8])>, FramingError> {
    let mut frames = Vec::new();
    let mut rest = output;
    while !rest.is_empty() {
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| FramingError("truncated header".into()))?;
        let header = std::str::from_utf8(&rest[..nl])
            .map_err(|_| FramingError("header is not UTF-8".into()))?;
        let mut words = header.split(' ');
        let (Some("@@mxpin"), Some(name), Some(len), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            let shown: String = header.chars().take(80).collect();
            return Err(FramingError(format!("unexpected line {shown:?}")));
        };
        let len: usize = len
            .parse()
            .map_err(|_| FramingError(format!("bad length in {header:?}")))?;
        let body = &rest[nl + 1..];
        if body.len() < len + 1 || body[len] != b'\n' {
            return Err(FramingError(format!("section {name} is truncated")));
        }
        frames.push((name, &body[..len]));
        rest = &body[len + 1..];
        if name == END && !rest.is_empty() {
            return Err(FramingError("output goes on after the end frame".into()));
        }
    }
    Ok(frames)
}

/// A [`BUNDLE`]'s index: its length (with its closing empty line) and each
/// file's name and size, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index<'a> {
    pub len: usize,
    pub files: Vec<(&'a str, usize)>,
}

/// Reads a [`BUNDLE`]'s [`Index`]. Refused: an index
/// without its empty line or with no file, a line that is not `SIZE NAME`
/// (digits, one space, a name), a name given twice or one that no file
/// may have ([`END`], [`BUNDLE`], a name that [`repeats`]), and sizes that
/// do not add up to the length of the rest of the bundle.
pub fn bundle_index(body: &[u8]) -> Result<Index<'_>, FramingError> {
    let bad = |why: &str| FramingError(format!("bundle {why}"));
    let end = body
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or_else(|| bad("has no end of its index"))?;
    let index = std::str::from_utf8(&body[..end]).map_err(|_| bad("index is not UTF-8"))?;
    let mut files: Vec<(&str, usize)> = Vec::new();
    for line in index.split('\n') {
        let mut words = line.split(' ');
        let (Some(size), Some(name), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad(&format!("index line {line:?} is not SIZE NAME")));
        };
        let size = Some(size)
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&format!("size {size:?} of {name} does not parse")))?;
        if name.is_empty() || name == END || name == BUNDLE || repeats(name) {
            return Err(bad(&format!("holds a section {name:?}")));
        }
        if files.iter().any(|(n, _)| *n == name) {
            return Err(bad(&format!("names {name} twice")));
        }
        files.push((name, size));
    }
    let total = files
        .iter()
        .try_fold(0usize, |sum, (_, size)| sum.checked_add(*size));
    let contents = body.len() - end - 2;
    if total != Some(contents) {
        return Err(bad(&format!(
            "sizes do not add up to its length ({contents} bytes)"
        )));
    }
    Ok(Index {
        len: end + 2,
        files,
    })
}

/// A section of an answer: its name, its bytes, and whether it came in a
/// bundle.
struct Section<'a> {
    name: &'a str,
    body: &'a [u8],
    bundled: bool,
}

/// The sections of an answer in the order they come, bundles expanded.
fn sections_in(output: &[u8]) -> Result<Vec<Section<'_>>, FramingError> {
    let mut out = Vec::new();
    for (name, body) in raw_frames(output)? {
        if name != BUNDLE {
            out.push(Section {
                name,
                body,
                bundled: false,
            });
            continue;
        }
        let index = bundle_index(body)?;
        let mut at = index.len;
        for (name, size) in index.files {
            out.push(Section {
                name,
                body: &body[at..at + size],
                bundled: true,
            });
            at += size;
        }
    }
    Ok(out)
}

/// Parses a facts script's output. Anything outside frames is an error: a
/// login banner or shell noise must not be mistaken for file content. So is
/// anything after the [`END`] frame, and a section given twice that does not
/// [`repeat`](repeats): two answers mixed, or a frame sent again. A
/// [`BUNDLE`] reads as the sections of its files; one that is garbled (see
/// [`bundle_index`]), or a file in it also given in a frame of its own or in
/// another bundle, is an error.
pub fn parse(output: &[u8]) -> Result<Sections, FramingError> {
    let mut sections = Sections::default();
    let mut bundled = BTreeSet::new();
    for Section {
        name,
        body,
        bundled: in_bundle,
    } in sections_in(output)?
    {
        let value = String::from_utf8(body.to_vec())
            .map_err(|_| FramingError(format!("section {name} is not UTF-8")))?;
        let values = sections.0.entry(name.to_string()).or_default();
        if (!values.is_empty() && !repeats(name)) || bundled.contains(name) {
            return Err(FramingError(format!("section {name} is given twice")));
        }
        if in_bundle {
            bundled.insert(name);
        }
        values.push(value);
    }
    Ok(sections)
}

/// Frames as the facts script writes them (`@@mxpin NAME LEN`), for
/// tests built on captured or made-up sections.
#[cfg(test)]
pub fn frames(parts: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in parts {
        out.extend_from_slice(format!("@@mxpin {n} {}\n{v}\n", v.len()).as_bytes());
    }
    out
}

/// A [`BUNDLE`] frame of these files, as `putfiles` writes it.
#[cfg(test)]
pub fn bundle(files: &[(&str, &str)]) -> Vec<u8> {
    let mut body = String::new();
    for (n, v) in files {
        body.push_str(&format!("{} {n}\n", v.len()));
    }
    body.push('\n');
    for (_, v) in files {
        body.push_str(v);
    }
    frames(&[(BUNDLE, &body)])
}

/// `output` with every [`BUNDLE`] replaced by one frame per file, as the
/// facts script wrote files before bundles; for tests that edit a
/// captured answer frame by frame.
#[cfg(test)]
pub fn unbundle(output: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for Section { name, body, .. } in sections_in(output).expect("a well-framed answer") {
        out.extend_from_slice(format!("@@mxpin {name} {}\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_with_embedded_newlines_and_markers() {
        let out = b"@@mxpin fresh:a 3\nx\ny\n@@mxpin file 18\n@@mxpin fake 1\nz\n\n\n@@mxpin fresh:a 0\n\n";
        let s = parse(out).unwrap();
        assert_eq!(s.get("file"), Some("@@mxpin fake 1\nz\n\n"));
        assert_eq!(s.all("fresh:a"), ["x\ny", ""]);
        assert_eq!(s.get("fresh:a"), Some(""));
        assert_eq!(s.get("missing"), None);
    }

    #[test]
    fn rejects_noise_and_truncation() {
        assert!(parse(b"Welcome!\n@@mxpin a 1\nx\n").is_err());
        assert!(parse(b"@@mxpin a 5\nx\n").is_err());
        assert!(parse(b"@@mxpin a 1\nxy").is_err());
        assert!(parse(b"@@mxpin a\n").is_err());
    }

    #[test]
    fn rejects_repeated_sections_and_anything_after_the_end() {
        assert_eq!(
            parse(b"@@mxpin a 1\nx\n@@mxpin a 1\nx\n").unwrap_err(),
            FramingError("section a is given twice".into())
        );
        assert!(parse(b"@@mxpin error 1\nx\n@@mxpin error 1\ny\n").is_ok());
        assert_eq!(
            parse(b"@@mxpin end 2\nok\n@@mxpin a 1\nx\n").unwrap_err(),
            FramingError("output goes on after the end frame".into())
        );
        assert!(parse(b"@@mxpin a 1\nx\n@@mxpin end 2\nok\n").is_ok());
    }

    /// Files whose text looks like frames or like an index, empty files,
    /// files without a final newline or with trailing blank lines: a
    /// bundle reads as the same sections as one frame per file.
    const FILES: [(&str, &str); 6] = [
        ("main.cf", "a = 1\n\n@@mxpin end 2\nok\n"),
        ("file:empty", ""),
        ("file:no-newline", "last line"),
        ("file:index-like", "\n\n3 file:x\n\n"),
        ("file:blank", "\n"),
        ("confd:main/00_x", "@@mxpin bundle 9\n1 a\n\nxyz\n"),
    ];

    #[test]
    fn a_bundle_reads_as_one_section_per_file() {
        let mut out = frames(&[("uid", "0")]);
        out.extend(bundle(&FILES));
        out.extend(frames(&[("error", "e"), (END, "ok")]));
        let s = parse(&out).unwrap();
        let mut flat = frames(&[("uid", "0")]);
        flat.extend(frames(&FILES));
        flat.extend(frames(&[("error", "e"), (END, "ok")]));
        assert_eq!(s, parse(&flat).unwrap());
        for (name, text) in FILES {
            assert_eq!(s.get(name), Some(text), "{name}");
        }
        assert_eq!(s.get(BUNDLE), None);
        assert_eq!(unbundle(&out), flat);
        // Two bundles of other files are two bundles' sections.
        let mut two = bundle(&FILES[..2]);
        two.extend(bundle(&FILES[2..]));
        assert_eq!(parse(&two).unwrap(), parse(&frames(&FILES)).unwrap());
    }

    fn bundle_error(body: &str) -> String {
        parse(&frames(&[(BUNDLE, body)])).unwrap_err().0
    }

    #[test]
    fn a_bundle_whose_sizes_do_not_add_up_is_refused() {
        assert_eq!(
            bundle_error("2 a\n3 b\n\nxyzw"),
            "bundle sizes do not add up to its length (4 bytes)"
        );
        assert_eq!(
            bundle_error("2 a\n1 b\n\nxyzw"),
            "bundle sizes do not add up to its length (4 bytes)"
        );
        let overflow = format!("{} a\n{} b\n\nx", usize::MAX, usize::MAX);
        assert!(bundle_error(&overflow).starts_with("bundle sizes do not add up"));
        // The frame's length and the sizes disagree: a bundle cut short
        // inside, or sent with more than its files.
        let good = String::from_utf8(bundle(&FILES)).unwrap();
        let body = &good[good.find('\n').unwrap() + 1..good.len() - 1];
        assert!(parse(&frames(&[(BUNDLE, body)])).is_ok());
        let last = FILES.last().unwrap().1.len();
        for b in [
            &body[..body.len() - 1],
            &body[..body.len() - last],
            &format!("{body}x"),
        ] {
            assert!(
                bundle_error(b).starts_with("bundle sizes do not add up"),
                "{b:?}"
            );
        }
    }

    #[test]
    fn a_bundle_with_an_index_that_does_not_parse_is_refused() {
        for (body, why) in [
            ("+1 a\n\nx", r#"bundle size "+1" of a does not parse"#),
            ("1x a\n\nx", r#"bundle size "1x" of a does not parse"#),
            (" 1 a\n\nx", r#"bundle index line " 1 a" is not SIZE NAME"#),
            (
                "1 a b\n\nx",
                r#"bundle index line "1 a b" is not SIZE NAME"#,
            ),
            ("1 a\n1\n\nxy", r#"bundle index line "1" is not SIZE NAME"#),
            ("1 \n\nx", r#"bundle holds a section """#),
            ("1 a\nx", "bundle has no end of its index"),
            ("\n\n", r#"bundle index line "" is not SIZE NAME"#),
            ("", "bundle has no end of its index"),
        ] {
            assert_eq!(bundle_error(body), why, "{body:?}");
        }
    }

    #[test]
    fn a_bundle_with_a_name_given_twice_or_one_no_file_has_is_refused() {
        assert_eq!(bundle_error("1 a\n1 a\n\nxy"), "bundle names a twice");
        for name in [END, BUNDLE, "error", "fresh:tls_policy"] {
            assert_eq!(
                bundle_error(&format!("1 {name}\n\nx")),
                format!("bundle holds a section {name:?}")
            );
        }
        // A file in a bundle and in a frame of its own, in either order,
        // or in two bundles.
        let twice = FramingError("section a is given twice".into());
        let mut out = frames(&[("a", "x")]);
        out.extend(bundle(&[("a", "x")]));
        assert_eq!(parse(&out).unwrap_err(), twice);
        let mut out = bundle(&[("a", "x")]);
        out.extend(frames(&[("a", "x")]));
        assert_eq!(parse(&out).unwrap_err(), twice);
        let mut out = bundle(&[("a", "x"), ("b", "y")]);
        out.extend(bundle(&[("a", "x")]));
        assert_eq!(parse(&out).unwrap_err(), twice);
        let mut out = bundle(&[("a", "x")]);
        out.extend(bundle(&[("a", "x")]));
        assert_eq!(parse(&out).unwrap_err(), twice);
        assert!(parse(&bundle(&[("a", "\u{e9}")])).is_ok());
        let mut latin1 = b"@@mxpin bundle 6\n1 a\n\n".to_vec();
        latin1.extend([0xe9, b'\n']);
        assert_eq!(
            parse(&latin1).unwrap_err(),
            FramingError("section a is not UTF-8".into())
        );
    }

    fn sh(script: &str) -> std::process::Output {
        use std::io::Write as _;
        let mut child = std::process::Command::new("sh")
            .arg("-s")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("LC_ALL=C; export LC_ALL\n{SHELL_HELPERS}{script}").as_bytes())
            .unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    fn names(out: &[u8]) -> Vec<&str> {
        raw_frames(out).unwrap().into_iter().map(|f| f.0).collect()
    }

    /// The helpers, run by a real /bin/sh, produce what the parser expects,
    /// including files without a final newline and with trailing blank lines.
    #[test]
    fn shell_helpers_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        let content = "line 1\n\n@@mxpin x 1\n'quoted' $HOME\n\n\n";
        std::fs::write(&f, content).unwrap();
        let g = dir.path().join("g");
        std::fs::write(&g, "no newline").unwrap();
        let script = format!(
            "put v 'héllo'\nputfile f '{}'\nputfile g '{}'\nputfile h '{}/missing'\n",
            f.display(),
            g.display(),
            dir.path().display()
        );
        let s = parse(&sh(&script).stdout).unwrap();
        assert_eq!(s.get("v"), Some("héllo"));
        assert_eq!(s.get("f"), Some(content));
        assert_eq!(s.get("g"), Some("no newline"));
        assert!(s.get("error").unwrap().starts_with("cannot read"));
    }

    /// `putfiles` writes the files' `ls -ln` lines and one bundle that
    /// reads as the files, byte for byte, in the order given; the paths
    /// are quoted, never split.
    #[test]
    fn putfiles_bundles_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = String::new();
        let mut paths = Vec::new();
        for (i, (name, text)) in FILES.iter().enumerate() {
            let path = dir.path().join(format!("-f{i} $x'*"));
            std::fs::write(&path, text).unwrap();
            args.push_str(&format!(
                " {} {}",
                crate::shell::quote(name),
                crate::shell::quote(path.to_str().unwrap())
            ));
            paths.push(path);
        }
        // An environment that has GNU ls scale sizes and quote names (a
        // login's ~/.bashrc may set it) changes nothing.
        let out = sh(&format!(
            "export BLOCK_SIZE=K QUOTING_STYLE=shell-always TIME_STYLE=long-iso\n\
             set -- a b\nputfiles ls{args}\nput args \"$*\"\n"
        ))
        .stdout;
        assert_eq!(names(&out), ["ls", BUNDLE, "args"]);
        let s = parse(&out).unwrap();
        for (name, text) in FILES {
            assert_eq!(s.get(name), Some(text), "{name}");
        }
        let index = bundle_index(raw_frames(&out).unwrap()[1].1).unwrap();
        let order: Vec<&str> = index.files.iter().map(|(n, _)| *n).collect();
        assert_eq!(order, FILES.map(|(n, _)| n));
        // One line a file, found by its path.
        let listing = s.get("ls").unwrap();
        assert_eq!(listing.lines().count(), FILES.len());
        for path in &paths {
            let name = path.file_name().unwrap().to_str().unwrap();
            let line = crate::mta::ls_line(listing, name);
            assert!(line.starts_with("-rw"), "{name}: {line:?}");
        }
        // The caller's own arguments are untouched.
        assert_eq!(s.get("args"), Some("a b"));
    }

    /// With an empty LIST, `putfiles` writes the bundle alone.
    #[test]
    fn putfiles_without_a_list_writes_no_listing() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "kept\n").unwrap();
        let out = sh(&format!(
            "putfiles '' file:a {}\n",
            crate::shell::quote(a.to_str().unwrap())
        ))
        .stdout;
        assert_eq!(names(&out), [BUNDLE]);
        assert_eq!(parse(&out).unwrap().get("file:a"), Some("kept\n"));
    }

    /// A file that cannot be read sends every file of the call to its own
    /// frame, and the one that failed is named in an `error` section.
    #[test]
    fn putfiles_falls_back_to_one_frame_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "kept\n").unwrap();
        let gone = dir.path().join("gone");
        let out = sh(&format!(
            "putfiles ls file:a {} file:gone {}\n",
            crate::shell::quote(a.to_str().unwrap()),
            crate::shell::quote(gone.to_str().unwrap())
        ))
        .stdout;
        assert_eq!(names(&out), ["ls", "file:a", "error"]);
        let s = parse(&out).unwrap();
        assert_eq!(s.get("file:a"), Some("kept\n"));
        assert!(crate::mta::ls_line(s.get("ls").unwrap(), "a").starts_with("-rw"));
        let e = s.get("error").unwrap();
        assert!(
            e.starts_with(&format!("cannot read {}: ", gone.display())),
            "{e}"
        );
    }

    /// A symlink (its listing is the link's, with no size of the file it
    /// names) is read file by file, through the link; its line in the
    /// listing is the link's own, never taken for a file's.
    #[test]
    fn putfiles_reads_a_symlink_file_by_file() {
        let dir = tempfile::tempdir().unwrap();
        let (target, link) = (dir.path().join("target"), dir.path().join("link"));
        std::fs::write(&target, "through the link\n").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let out = sh(&format!(
            "putfiles ls main.cf {}\n",
            crate::shell::quote(link.to_str().unwrap())
        ))
        .stdout;
        assert_eq!(names(&out), ["ls", "main.cf"]);
        let s = parse(&out).unwrap();
        assert_eq!(s.get("main.cf"), Some("through the link\n"));
        assert!(s.get("ls").unwrap().starts_with('l'));
        assert_eq!(crate::mta::ls_line(s.get("ls").unwrap(), "link"), "");
    }

    /// An `ls` that lies (sizes that do not add up to what `cat` read), or
    /// a file that grows after `ls` listed it: `putfiles` sends each file to
    /// a frame of its own, read again by `putfile`.
    #[test]
    fn putfiles_falls_back_when_the_sizes_are_not_the_files() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let fake = dir.path().join("bin");
        std::fs::create_dir(&fake).unwrap();
        let ls = fake.join("ls");
        let q = |p: &std::path::Path| crate::shell::quote(p.to_str().unwrap());
        let real = ["/usr/bin/ls", "/bin/ls"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap();
        let cases = [
            // One byte more for every file.
            format!(r#"{real} "$@" | awk '{{ $5 = $5 + 1; print }}'"#),
            // a grows once it is listed, before cat reads it.
            format!(r#"{real} "$@"; echo more >> {a}"#, a = q(&a)),
        ];
        for script in cases {
            std::fs::write(&a, "first\n").unwrap();
            std::fs::write(&b, "second").unwrap();
            std::fs::write(&ls, format!("#!/bin/sh\n{script}\n")).unwrap();
            std::fs::set_permissions(&ls, std::fs::Permissions::from_mode(0o755)).unwrap();
            let out = sh(&format!(
                "PATH={}:$PATH\nputfiles ls file:a {} file:b {}\n",
                q(&fake),
                q(&a),
                q(&b)
            ))
            .stdout;
            assert_eq!(names(&out), ["ls", "file:a", "file:b"], "{script}");
            let s = parse(&out).unwrap();
            assert_eq!(
                s.get("file:a"),
                Some(std::fs::read_to_string(&a).unwrap().as_str())
            );
            assert_eq!(s.get("file:b"), Some("second"));
        }
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "first\nmore\n");
    }

    /// Without files `putfiles` writes nothing, and reads nothing: a `cat`
    /// without arguments would eat the rest of a script fed on stdin.
    #[test]
    fn putfiles_without_files_reads_nothing() {
        for call in ["putfiles", "putfiles ls"] {
            let out = sh(&format!("{call}\nput after yes\n")).stdout;
            assert_eq!(out, frames(&[("after", "yes")]), "{call}");
        }
    }
}
