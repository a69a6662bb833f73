//! The framing properties every MTA's facts parser must have, checked on a
//! real captured answer: cut, garbled, repeated or reordered, an answer is
//! refused, never read as a host with less on it.

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
                    if (at <= f.header_end && !(in_name && renamable(&f.name))) || at == f.end - 1 {
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
