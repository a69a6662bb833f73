//! Per-host progress, reported by the engine to one monitor.
//!
//! On a terminal: a live line per host (indicatif), cleared when the run
//! ends so that only the result stays on screen. Elsewhere: one plain line
//! on stderr per step. Silent for `--json` and `--quiet`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::inventory::HostName;

/// A step of one host's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    /// Another run holds the host; this one waits to try again.
    Waiting,
    Reading,
    Planned(usize),
    Applying,
    Applied,
    Done,
    Failed(String),
    Skipped,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Connecting => f.write_str("connecting"),
            Phase::Waiting => f.write_str("waiting for another mxpin run"),
            Phase::Reading => f.write_str("reading"),
            Phase::Planned(0) => f.write_str("up to date"),
            Phase::Planned(n) => write!(
                f,
                "planned {}",
                crate::words::count(*n, "change", "changes")
            ),
            Phase::Applying => f.write_str("applying"),
            Phase::Applied => f.write_str("applied"),
            Phase::Done => f.write_str("done"),
            Phase::Failed(why) => write!(f, "failed: {why}"),
            Phase::Skipped => f.write_str("skipped"),
        }
    }
}

/// Receives the steps of every host. Called from concurrent tasks.
pub trait Monitor: Sync {
    fn event(&self, host: &HostName, phase: Phase);
    /// The run is over: clear anything transient.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct Silent;

impl Monitor for Silent {
    fn event(&self, _: &HostName, _: Phase) {}
}

/// One plain line per step on stderr, for logs and pipes.
pub struct Lines;

impl Monitor for Lines {
    fn event(&self, host: &HostName, phase: Phase) {
        eprintln!("{host}: {phase}");
    }
}

/// A live line per host on a terminal.
pub struct Live {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<HostName, ProgressBar>>,
}

impl Live {
    pub fn new(hosts: &[HostName]) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner} {prefix:.bold}: {msg}")
            .expect("static template");
        let width = hosts.iter().map(|h| h.as_str().len()).max().unwrap_or(0);
        let bars = hosts
            .iter()
            .map(|h| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(format!("{:width$}", h.as_str()));
                bar.set_message("waiting");
                bar.enable_steady_tick(Duration::from_millis(120));
                (h.clone(), bar)
            })
            .collect();
        Live {
            multi,
            bars: Mutex::new(bars),
        }
    }
}

impl Monitor for Live {
    fn event(&self, host: &HostName, phase: Phase) {
        if let Some(bar) = self.bars.lock().expect("not poisoned").get(host) {
            bar.set_message(phase.to_string());
        }
    }

    fn finish(&self) {
        for bar in self.bars.lock().expect("not poisoned").values() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}
