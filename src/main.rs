//! The `mxpin` command: parse arguments, call the library, render results
//! and errors once, map outcomes to exit codes.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use owo_colors::OwoColorize as _;
use time::OffsetDateTime;

use mxpin::engine::{self, ApplyStatus, HostState};
use mxpin::inventory::{self, Inventory};
use mxpin::plan::{self, HostOutcome};
use mxpin::templates::Templates;

/// Pin self-signed TLS keys between your own mail hosts.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what apply would change on every host; change nothing.
    /// Exit 0: nothing to do, 2: changes pending, 1: error.
    Plan(Common),
    /// Plan, confirm, apply, and check that every host converged.
    Apply {
        #[command(flatten)]
        common: Common,
        /// Apply without asking for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args)]
struct Common {
    /// Inventory file.
    #[arg(short, long, default_value = "mxpin.toml")]
    inventory: PathBuf,
    /// Machine-readable output on stdout.
    #[arg(long)]
    json: bool,
    /// Hosts handled at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    parallel: u16,
    /// Directory with templates overriding the built-in ones.
    #[arg(long)]
    templates: Option<PathBuf>,
}

const EXIT_ERROR: u8 = 1;
const EXIT_PENDING: u8 = 2;

fn error(msg: impl std::fmt::Display) {
    let _ = writeln!(anstream::stderr(), "{}: {msg}", "error".red().bold());
}

fn warning(msg: impl std::fmt::Display) {
    let _ = writeln!(anstream::stderr(), "{}: {msg}", "warning".yellow().bold());
}

fn load(common: &Common) -> Result<(Inventory, Templates), String> {
    let inv = inventory::load(&common.inventory).map_err(|e| e.to_string())?;
    let templates = Templates::load(common.templates.as_deref()).map_err(|e| e.to_string())?;
    for w in inv.warnings() {
        warning(w);
    }
    Ok((inv, templates))
}

/// Whether any host failed to plan, and whether any has changes.
fn summarize(outcomes: &[HostOutcome]) -> (bool, bool) {
    let errors = outcomes
        .iter()
        .any(|o| matches!(o, HostOutcome::Failed { .. }));
    let pending = outcomes
        .iter()
        .any(|o| matches!(o, HostOutcome::Planned(p) if !p.is_empty()));
    (errors, pending)
}

/// Prints a plan for people: a diff per changed host, errors on stderr,
/// one closing line.
fn show_plan(outcomes: &[HostOutcome]) {
    let mut out = anstream::stdout();
    let mut pending = 0;
    for o in outcomes {
        match o {
            HostOutcome::Failed { host, error: e } => error(format_args!("{host}: {e}")),
            HostOutcome::Planned(p) if !p.is_empty() => {
                pending += 1;
                let _ = write!(out, "{}", plan::render_host(p));
            }
            HostOutcome::Planned(_) => {}
        }
    }
    let (errors, _) = summarize(outcomes);
    if pending == 0 && !errors {
        let _ = writeln!(out, "No changes: {} hosts up to date.", outcomes.len());
    } else if pending > 0 {
        let _ = writeln!(out, "{pending} of {} hosts would change.", outcomes.len());
    }
}

async fn run_plan(common: &Common) -> Result<u8, String> {
    let (inv, templates) = load(common)?;
    let states = engine::gather(&inv, common.parallel.into()).await;
    let outcomes = engine::plan_all(&inv, &states, &templates, OffsetDateTime::now_utc());
    engine::close(states).await;
    if common.json {
        let _ = writeln!(anstream::stdout(), "{:#}", plan::to_json(&outcomes));
    } else {
        show_plan(&outcomes);
    }
    Ok(match summarize(&outcomes) {
        (true, _) => EXIT_ERROR,
        (false, true) => EXIT_PENDING,
        (false, false) => 0,
    })
}

fn confirm(hosts: usize) -> Result<bool, String> {
    if !std::io::stdin().is_terminal() {
        return Err(
            "apply needs confirmation but standard input is not a terminal: pass --yes".into(),
        );
    }
    eprint!("Apply these changes to {hosts} host(s)? Only 'yes' is accepted: ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| format!("reading answer: {e}"))?;
    Ok(answer.trim() == "yes")
}

async fn run_apply(common: &Common, yes: bool) -> Result<u8, String> {
    let (inv, templates) = load(common)?;
    let parallel = common.parallel.into();
    let mut states: Vec<HostState> = engine::gather(&inv, parallel).await;
    let outcomes = engine::plan_all(&inv, &states, &templates, OffsetDateTime::now_utc());
    let (plan_errors, pending) = summarize(&outcomes);
    if common.json {
        for o in &outcomes {
            if let HostOutcome::Failed { host, error: e } = o {
                error(format_args!("{host}: {e}"));
            }
        }
    } else {
        show_plan(&outcomes);
    }
    if plan_errors {
        // Never apply half a fleet's pins: a failed host may be a primary
        // whose keys others need, or a peer left behind.
        engine::close(states).await;
        return Err("nothing applied: fix the errors above and run again".into());
    }
    if !pending {
        engine::close(states).await;
        if common.json {
            let doc = serde_json::json!({ "plan": plan::to_json(&outcomes), "applied": [] });
            let _ = writeln!(anstream::stdout(), "{doc:#}");
        }
        return Ok(0);
    }
    let hosts = outcomes
        .iter()
        .filter(|o| matches!(o, HostOutcome::Planned(p) if !p.is_empty()))
        .count();
    if !yes && !confirm(hosts)? {
        engine::close(states).await;
        return Err("apply cancelled; nothing changed".into());
    }
    let results = engine::apply_all(&states, &outcomes, parallel).await;
    let mut failed = false;
    let mut out = anstream::stdout();
    for (host, status) in &results {
        match status {
            ApplyStatus::Unchanged => {}
            ApplyStatus::Applied { changes } => {
                if !common.json {
                    let _ = writeln!(out, "{host}: applied {changes} change(s)");
                }
            }
            ApplyStatus::Failed(e) | ApplyStatus::Skipped(e) => {
                failed = true;
                error(format_args!("{host}: {e}"));
            }
        }
    }
    let after = engine::converged(&inv, &mut states, &templates, parallel).await;
    engine::close(states).await;
    let mut drift = Vec::new();
    for o in &after {
        match o {
            HostOutcome::Planned(p) if !p.is_empty() => drift.push(p.host.to_string()),
            HostOutcome::Failed { host, error: e } => {
                drift.push(host.to_string());
                error(format_args!("{host}: after apply: {e}"));
            }
            _ => {}
        }
    }
    if common.json {
        let hosts: Vec<_> = results
            .iter()
            .map(|(h, s)| {
                let (status, detail) = match s {
                    ApplyStatus::Unchanged => ("unchanged", None),
                    ApplyStatus::Applied { .. } => ("applied", None),
                    ApplyStatus::Failed(e) => ("failed", Some(e.as_str())),
                    ApplyStatus::Skipped(e) => ("skipped", Some(e.as_str())),
                };
                serde_json::json!({"host": h, "status": status, "error": detail,
                                   "converged": !drift.contains(&h.to_string())})
            })
            .collect();
        let doc = serde_json::json!({ "plan": plan::to_json(&outcomes), "applied": hosts });
        let _ = writeln!(out, "{doc:#}");
    }
    if !failed && !drift.is_empty() {
        error(format_args!(
            "hosts still differ from the inventory after apply: {}",
            drift.join(", ")
        ));
    }
    Ok(if failed || !drift.is_empty() {
        EXIT_ERROR
    } else {
        0
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error(format_args!("cannot start runtime: {e}"));
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Plan(common) => run_plan(common).await,
            Command::Apply { common, yes } => run_apply(common, *yes).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            error(e);
            ExitCode::from(EXIT_ERROR)
        }
    }
}
