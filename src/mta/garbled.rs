//! The framing properties every MTA's facts parser must have, checked on a
//! real captured answer: cut, garbled, repeated or reordered, an answer is
//! refused, never read as a host with less on it.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::facts::{self, Sections};

/// A frame of an answer: its name, where its header line ends (the
/// `\n` after the length) and where the frame ends; for a bundle, the
/// sections it holds.
#[derive(Debug, Clone)]
pub struct Frame {
    pub name: String,
    pub start: usize,
    pub header_end: usize,
    pub end: usize,
    pub bundled: Vec<Bundled>,
}

/// A file in a bundle: its name, where that name is in the bundle's index,
/// and where its content is (offsets in the answer).
#[derive(Debug, Clone)]
pub struct Bundled {
    pub name: String,
    pub name_at: std::ops::Range<usize>,
    pub content: std::ops::Range<usize>,
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
        let body = nl + 1;
        let mut bundled = Vec::new();
        if name == facts::BUNDLE {
            let index = facts::bundle_index(&answer[body..body + len]).unwrap();
            let (mut line, mut content) = (body, body + index.len);
            for (file, size) in index.files {
                let name_at = line + answer[line..].iter().position(|&b| b == b' ').unwrap() + 1;
                line = name_at + file.len() + 1;
                bundled.push(Bundled {
                    name: file.to_string(),
                    name_at: name_at..name_at + file.len(),
                    content: content..content + size,
                });
                content += size;
            }
        }
        out.push(Frame {
            name,
            start: at,
            header_end: nl,
            end: body + len + 1,
            bundled,
        });
        at = body + len + 1;
    }
    assert_eq!(at, answer.len(), "a well-framed answer");
    out
}

impl Frame {
    /// Whether a flip at `at` (in this frame) breaks its framing, where
    /// `renamable` says which section names may change undetected; and the
    /// sections the flip may change if not.
    fn flipped(&self, at: usize, renamable: &dyn Fn(&str) -> bool) -> (bool, Vec<String>) {
        let in_header_name = at >= self.start + "@@mxpin ".len()
            && at < self.start + "@@mxpin ".len() + self.name.len();
        if (at <= self.header_end && !(in_header_name && renamable(&self.name)))
            || at == self.end - 1
        {
            return (true, vec![]);
        }
        if self.bundled.is_empty() {
            return (false, vec![self.name.clone()]);
        }
        // In a bundle: its index is framing but for the names of sections
        // that may be renamed; its contents are the files'.
        match self
            .bundled
            .iter()
            .find(|b| b.content.contains(&at) || b.name_at.contains(&at))
        {
            Some(b) if b.content.contains(&at) => (false, vec![b.name.clone()]),
            Some(b) if renamable(&b.name) => (false, vec![b.name.clone()]),
            _ => (true, vec![]),
        }
    }
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
/// - refuses it with any byte flipped in a frame header, a frame's
///   closing newline or a bundle's index (its sizes and names; except in
///   the name of a section `renamable` says may be renamed undetected: a
///   name that carries data, such as Exim's `file:peer-MX.pem`), and reads
///   flips inside a body as changes of that body only (of that file only,
///   in a bundle);
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
    // Every byte of a bundle's index (sizes, names, spaces, newlines)
    // flipped is refused, but in the names of renamable sections.
    for f in fr.iter().filter(|f| !f.bundled.is_empty()) {
        for at in f.header_end + 1..f.bundled[0].content.start {
            if !f.flipped(at, renamable).0 {
                continue;
            }
            for mask in [0x01, 0x02, 0x04, 0x10, 0x20, 0x40, 0x80] {
                let mut b = answer.to_vec();
                b[at] ^= mask;
                assert!(
                    read(&b).is_err(),
                    "byte {at} of a bundle's index ({:?}) flipped with {mask:#x} was read",
                    answer[at] as char
                );
            }
        }
    }
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
                    let (breaks, sections) = f.flipped(at, renamable);
                    structural |= breaks;
                    touched.extend(sections);
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
