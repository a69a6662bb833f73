//! The `mxpin` command: parse arguments, call the library, render results
//! and errors once, map outcomes to exit codes.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use owo_colors::OwoColorize as _;
use time::OffsetDateTime;

use mxpin::engine::{self, ApplyStatus, FleetPlan, HostState, Rotation};
use mxpin::fingerprint::{self, Format, Source};
use mxpin::inventory::{self, HostName, Inventory};
use mxpin::plan::{self, HostOutcome, HostPlan};
use mxpin::probe::{self, StartTls};
use mxpin::progress::{Lines, Live, Monitor, Phase, Silent};
use mxpin::templates::Templates;
use mxpin::tls::{Certificate, Digest, PinKind};
use mxpin::trust::Purpose;

/// Pin self-signed TLS keys between your own mail hosts.
///
/// Exit status: 0 done (plan, dry runs: nothing to change), 2 changes pending
/// (plan and dry runs only), 1 any error, a usage error included.
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
        /// Skip the verification that runs after apply.
        #[arg(long)]
        no_verify: bool,
    },
    /// Check every pinned route live: the key each primary serves (seen
    /// from here and from each backup with posttls-finger), the backups'
    /// lookups, and every host's keys and their expiry.
    Verify(Common),
    /// Switch hosts to their staged next key, stage a fresh next key, and
    /// update every peer's pins; never switches to a key a peer does not pin.
    Rotate {
        #[command(flatten)]
        common: Common,
        /// Hosts to rotate (default: every host).
        hosts: Vec<String>,
        /// Rotate without asking for confirmation.
        #[arg(long)]
        yes: bool,
        /// Show the diff and the order of steps; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The old key must stop being trusted now: peers drop it in the
        /// same run, even those that do not pin the next key yet.
        #[arg(long)]
        compromised: bool,
        /// Skip the verification that runs after the rotation.
        #[arg(long)]
        no_verify: bool,
    },
    /// Give a host back as it was before mxpin: every line mxpin edited in
    /// main.cf and master.cf gets the admin's own text back, and mxpin's
    /// files go. Refused while a peer still pins the host or the host pins
    /// one (take it out of every domain and relayhost first, and apply).
    /// Then remove [hosts.HOST] from the inventory, or the next apply takes
    /// the host again.
    Release {
        #[command(flatten)]
        common: Common,
        /// The host to give back.
        host: String,
        /// Release without asking for confirmation.
        #[arg(long)]
        yes: bool,
        /// Show the diff; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Fingerprints of a certificate file, or of what a server presents.
    Fingerprint {
        /// A PEM file holding a certificate or a chain.
        #[arg(required_unless_present = "connect", conflicts_with = "connect")]
        file: Option<PathBuf>,
        /// Connect to HOST:PORT and read the certificates it presents.
        #[arg(long, value_name = "HOST:PORT")]
        connect: Option<String>,
        /// Speak this protocol's STARTTLS first (smtp, imap, pop3); without
        /// it TLS starts at once, as on ports 465, 993 and 995.
        #[arg(long, requires = "connect", value_parser = |s: &str| s.parse::<StartTls>())]
        starttls: Option<StartTls>,
        /// md5, sha1, sha256 or sha512.
        #[arg(long, default_value = "sha256", value_parser = parse_digest)]
        digest: Digest,
        /// What the postfix format pins: public-key or certificate.
        #[arg(long, default_value = "public-key", value_parser = parse_pin)]
        pin: PinKind,
        /// text, postfix, fetchmail (MD5 of the certificate), tlsa or json.
        #[arg(long, default_value = "text", value_parser = |s: &str| s.parse::<Format>())]
        format: Format,
        /// Seconds to wait for each step of the connection.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
        timeout: u64,
    },
    /// DNS TLSA records (DANE-EE, 3 1 1) for every host's current and next
    /// key, as zone-file lines.
    Tlsa(Common),
    /// Connect to an external server and write its fingerprint into the
    /// inventory's `[external.NAME] pins`, trusting it on first use like
    /// ssh. Refuses when it serves something else than what is pinned,
    /// unless told to --add or --replace.
    Pin {
        /// Inventory file.
        #[arg(short, long, default_value = "mxpin.toml")]
        inventory: PathBuf,
        /// The external's name.
        name: String,
        /// Keep the old pins and add the new one (the server is rolling
        /// over to a new key).
        #[arg(long, conflicts_with = "replace")]
        add: bool,
        /// Pin only what the server presents now.
        #[arg(long)]
        replace: bool,
        /// Seconds to wait for each step of the connection.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
        timeout: u64,
    },
}

fn parse_digest(s: &str) -> Result<Digest, String> {
    s.parse()
        .map_err(|_| format!("unknown digest {s:?}: expected {}", Digest::NAMES))
}

fn parse_pin(s: &str) -> Result<PinKind, String> {
    s.parse()
        .map_err(|_| format!("unknown pin {s:?}: expected {}", PinKind::NAMES))
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
    /// No progress lines on stderr (there are none with --json either).
    #[arg(short, long)]
    quiet: bool,
}

/// Reads every host's facts and probes every external server in use, at
/// the same time.
async fn gather(
    inv: &Inventory,
    parallel: usize,
    progress: &dyn Monitor,
    access: engine::Access,
) -> (Vec<HostState>, Vec<mxpin::external::ExternalState>) {
    let timeout = std::time::Duration::from_secs(10);
    tokio::join!(
        engine::gather(inv, parallel, progress, access),
        mxpin::external::gather(inv, timeout)
    )
}

/// Progress for one phase of a run: live lines on a terminal, plain lines
/// elsewhere, nothing for --json or --quiet.
fn monitor(common: &Common, inv: &Inventory) -> Box<dyn Monitor> {
    if common.json || common.quiet {
        Box::new(Silent)
    } else if std::io::stderr().is_terminal() {
        let names: Vec<HostName> = inv.hosts.iter().map(|h| h.name.clone()).collect();
        Box::new(Live::new(&names))
    } else {
        Box::new(Lines)
    }
}

const EXIT_ERROR: u8 = 1;
const EXIT_PENDING: u8 = 2;

/// Every error and warning goes out here: one line, control characters
/// escaped, at most `text::ERROR_LINE_MAX` characters.
fn error(msg: impl std::fmt::Display) {
    let msg = mxpin::text::one_line(&msg.to_string(), mxpin::text::ERROR_LINE_MAX);
    let _ = writeln!(anstream::stderr(), "{}: {msg}", "error".red().bold());
}

fn warning(msg: impl std::fmt::Display) {
    let msg = mxpin::text::one_line(&msg.to_string(), mxpin::text::ERROR_LINE_MAX);
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

fn pending_plans(outcomes: &[HostOutcome]) -> Vec<&HostPlan> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            HostOutcome::Planned(p) if !p.is_empty() => Some(p.as_ref()),
            _ => None,
        })
        .collect()
}

/// Whether anything failed (a host or a rotation), and whether any host has
/// changes.
fn summarize(fleet: &FleetPlan) -> (bool, bool) {
    let errors = !fleet.refused.is_empty()
        || fleet
            .outcomes
            .iter()
            .any(|o| matches!(o, HostOutcome::Failed { .. }));
    (errors, !pending_plans(&fleet.outcomes).is_empty())
}

/// Errors of a plan, on stderr.
fn report_errors(fleet: &FleetPlan) {
    for o in &fleet.outcomes {
        if let HostOutcome::Failed { host, error: e } = o {
            error(format_args!("{host}: {e}"));
        }
    }
    for (host, why) in &fleet.refused {
        error(format_args!("{host}: {why}"));
    }
}

/// Prints a plan for people: a diff per changed host, the order in which
/// hosts would be changed when it matters, one closing line.
fn show_plan(fleet: &FleetPlan) {
    let mut out = anstream::stdout();
    let pending = pending_plans(&fleet.outcomes);
    for p in &pending {
        let _ = write!(out, "{}", plan::render_host(p));
    }
    for r in &fleet.rotated {
        let _ = writeln!(
            out,
            "{}: {} to its next key {} (now {}); new next key {}",
            r.host, r.reason, r.new_current, r.old_current, r.new_next
        );
    }
    let waves = engine::waves(&pending);
    if waves.iter().any(|&w| w > 0) {
        let _ = writeln!(out, "Order (a peer pins a new key only once it is served):");
        for w in 0..=waves.iter().copied().max().unwrap_or(0) {
            let hosts: Vec<&str> = pending
                .iter()
                .zip(&waves)
                .filter(|(_, &x)| x == w)
                .map(|(p, _)| p.host.as_str())
                .collect();
            let _ = writeln!(out, "  {}. {}", w + 1, hosts.join(", "));
        }
    }
    let (errors, _) = summarize(fleet);
    let total = fleet.outcomes.len();
    if pending.is_empty() && !errors {
        let _ = writeln!(out, "No changes: {total} hosts up to date.");
    } else if !pending.is_empty() {
        let _ = writeln!(out, "{} of {total} hosts would change.", pending.len());
    }
}

fn fleet_json(fleet: &FleetPlan) -> serde_json::Value {
    let mut v = plan::to_json(&fleet.outcomes);
    v["rotated"] = fleet
        .rotated
        .iter()
        .map(|r| {
            serde_json::json!({"host": r.host, "reason": r.reason, "old_current": r.old_current,
                               "new_current": r.new_current, "new_next": r.new_next})
        })
        .collect();
    v["refused"] = fleet
        .refused
        .iter()
        .map(|(h, why)| serde_json::json!({"host": h, "error": why}))
        .collect();
    v
}

async fn run_plan(common: &Common) -> Result<u8, String> {
    let (inv, templates) = load(common)?;
    let progress = monitor(common, &inv);
    let (states, externals) = gather(
        &inv,
        common.parallel.into(),
        &*progress,
        engine::Access::Read,
    )
    .await;
    let now = OffsetDateTime::now_utc();
    let fleet = engine::plan_all(
        &inv,
        &states,
        &externals,
        &templates,
        now,
        &Rotation::default(),
    );
    engine::report_planned(&fleet.outcomes, &*progress, Phase::Planned(0));
    progress.finish();
    engine::close(states).await;
    report_errors(&fleet);
    if common.json {
        let _ = writeln!(anstream::stdout(), "{:#}", fleet_json(&fleet));
    } else {
        show_plan(&fleet);
        if pending_plans(&fleet.outcomes)
            .iter()
            .any(|p| p.notes.iter().any(|n| n.starts_with("new ")))
        {
            let _ = writeln!(
                anstream::stdout(),
                "Keys shown as new are examples generated for this plan; apply generates the ones it installs."
            );
        }
    }
    Ok(match summarize(&fleet) {
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

/// How a changing command behaves.
struct Change {
    yes: bool,
    dry_run: bool,
    rotation: Rotation,
    verify: bool,
    /// Give this host back (`mxpin release`).
    release: Option<HostName>,
}

/// Prints verification results: every check, or only failures and
/// warnings when `quiet_success`; returns whether all passed.
fn show_checks(checks: &[engine::Check], quiet_success: bool) -> bool {
    let mut out = anstream::stdout();
    let mut hosts: Vec<&HostName> = Vec::new();
    for c in checks {
        if !hosts.contains(&&c.host) {
            hosts.push(&c.host);
        }
    }
    for host in &hosts {
        let mine: Vec<_> = checks
            .iter()
            .filter(|c| &c.host == *host && (!quiet_success || !c.ok || c.warning))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{}", host.as_str().bold());
        for c in mine {
            let status = match (c.ok, c.warning) {
                (false, _) => "FAIL".red().bold().to_string(),
                (true, true) => "warn".yellow().to_string(),
                (true, false) => "ok  ".green().to_string(),
            };
            let route = c
                .route
                .as_deref()
                .map(|r| format!("{r}  "))
                .unwrap_or_default();
            let _ = writeln!(out, "  {status}  {route}{}", c.what);
        }
    }
    let failed: Vec<&str> = hosts
        .iter()
        .filter(|h| checks.iter().any(|c| &&c.host == *h && !c.ok))
        .map(|h| h.as_str())
        .collect();
    let routes = checks
        .iter()
        .filter(|c| c.what.contains("(seen from the controller)"))
        .count();
    if failed.is_empty() {
        let _ = writeln!(
            out,
            "Verified: {routes} pinned route(s) and the keys of every host."
        );
        true
    } else {
        error(format_args!(
            "verification failed on: {}",
            failed.join(", ")
        ));
        false
    }
}

async fn run_verify(common: &Common) -> Result<u8, String> {
    let (inv, templates) = load(common)?;
    let parallel = common.parallel.into();
    let progress = monitor(common, &inv);
    let (mut states, externals) = gather(&inv, parallel, &*progress, engine::Access::Read).await;
    let now = OffsetDateTime::now_utc();
    let fleet = engine::plan_all(
        &inv,
        &states,
        &externals,
        &templates,
        now,
        &Rotation::default(),
    );
    let (after, mut checks) = engine::settle(
        &inv,
        &mut states,
        &externals,
        &fleet.outcomes,
        &templates,
        engine::Progress {
            parallel,
            monitor: &*progress,
        },
        true,
    )
    .await;
    engine::close(states).await;
    for o in &after {
        match o {
            HostOutcome::Planned(p) if !p.is_empty() => checks.push(engine::Check {
                host: p.host.clone(),
                route: None,
                ok: false,
                warning: false,
                what: "differs from the inventory: see mxpin plan".into(),
            }),
            HostOutcome::Failed { host, error: e } if !checks.iter().any(|c| &c.host == host) => {
                checks.push(engine::Check {
                    host: host.clone(),
                    route: None,
                    ok: false,
                    warning: false,
                    what: e.clone(),
                })
            }
            _ => {}
        }
    }
    let ok = if common.json {
        let _ = writeln!(
            anstream::stdout(),
            "{:#}",
            serde_json::json!({ "checks": checks })
        );
        checks.iter().all(|c| c.ok)
    } else {
        show_checks(&checks, false)
    };
    Ok(if ok { 0 } else { EXIT_ERROR })
}

/// Closes the connections and, for --json, prints the one document: the
/// plan plus the fields of `results` (an object).
async fn finish(
    states: Vec<HostState>,
    common: &Common,
    fleet: &FleetPlan,
    code: u8,
    results: serde_json::Value,
) -> Result<u8, String> {
    engine::close(states).await;
    if common.json {
        let mut doc = serde_json::json!({ "plan": fleet_json(fleet), "applied": [] });
        if let serde_json::Value::Object(fields) = results {
            for (k, v) in fields {
                doc[k] = v;
            }
        }
        let _ = writeln!(anstream::stdout(), "{doc:#}");
    }
    Ok(code)
}

async fn run_change(common: &Common, change: Change) -> Result<u8, String> {
    let (inv, templates) = load(common)?;
    let inv = match &change.release {
        Some(host) => inv.for_release(host)?,
        None => inv,
    };
    let parallel = common.parallel.into();
    let progress = monitor(common, &inv);
    // A dry run only reads: it shares the hosts with other readers.
    let access = if change.dry_run {
        engine::Access::Read
    } else {
        engine::Access::Change
    };
    let (mut states, externals) = gather(&inv, parallel, &*progress, access).await;
    let now = OffsetDateTime::now_utc();
    let fleet = engine::plan_all(&inv, &states, &externals, &templates, now, &change.rotation);
    engine::report_planned(&fleet.outcomes, &*progress, Phase::Planned(0));
    progress.finish();
    let (plan_errors, pending) = summarize(&fleet);
    report_errors(&fleet);
    if !common.json {
        show_plan(&fleet);
    }
    let failed_code = if plan_errors { EXIT_ERROR } else { 0 };
    if change.dry_run || !pending {
        // A dry run says what plan says: 2 when changes are pending.
        let code = if change.dry_run && pending && !plan_errors {
            EXIT_PENDING
        } else {
            failed_code
        };
        return finish(states, common, &fleet, code, serde_json::json!({})).await;
    }
    let hosts = pending_plans(&fleet.outcomes).len();
    // Off the async threads: a signal must be able to end the wait.
    let confirmed = change.yes
        || tokio::task::spawn_blocking(move || confirm(hosts))
            .await
            .map_err(|e| format!("reading answer: {e}"))??;
    if !confirmed {
        engine::close(states).await;
        return Err("cancelled; nothing changed".into());
    }
    let progress = monitor(common, &inv);
    let results = engine::apply_all(&states, &fleet.outcomes, parallel, &*progress).await;
    let run = engine::Progress {
        parallel,
        monitor: &*progress,
    };
    let (results, second) = engine::finish_transition(
        &inv,
        &mut states,
        &externals,
        &templates,
        run,
        &fleet.outcomes,
        results,
    )
    .await;
    let intended = second.as_deref().unwrap_or(&fleet.outcomes);
    let (after, checks) = engine::settle(
        &inv,
        &mut states,
        &externals,
        intended,
        &templates,
        engine::Progress {
            parallel,
            monitor: &*progress,
        },
        change.verify,
    )
    .await;
    let mut failed = plan_errors;
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
                // Planning errors were reported above.
                if !fleet
                    .outcomes
                    .iter()
                    .any(|o| matches!(o, HostOutcome::Failed { host: h, .. } if h == host))
                {
                    error(format_args!("{host}: {e}"));
                }
                failed = true;
            }
        }
    }
    let mut drift: Vec<HostName> = Vec::new();
    for o in &after {
        match o {
            HostOutcome::Planned(p) if !p.is_empty() => drift.push(p.host.clone()),
            HostOutcome::Failed { host, .. } => drift.push(host.clone()),
            _ => {}
        }
    }
    if !failed && !drift.is_empty() {
        let names: Vec<&str> = drift.iter().map(HostName::as_str).collect();
        error(format_args!(
            "hosts still differ from the inventory after apply: {}",
            names.join(", ")
        ));
    }
    // What a rotation left behind, read from the hosts.
    let mut rotated = Vec::new();
    for r in &fleet.rotated {
        let peers = engine::peer_pins(&inv, &states, &r.host);
        if !common.json {
            let _ = writeln!(
                out,
                "{}: serves public key {} (was {}); next {}",
                r.host, r.new_current, r.old_current, r.new_next
            );
            for (peer, purpose, pins) in &peers {
                let why = match purpose {
                    Purpose::BackupRoute => String::new(),
                    other => format!(" ({})", other.as_str()),
                };
                let _ = writeln!(out, "  {peer} pins {}{why}: {}", r.host, pins.join("|"));
            }
        }
        rotated.push(serde_json::json!({"host": r.host, "peers": peers.iter()
            .map(|(p, purpose, pins)| serde_json::json!({"peer": p, "purpose": purpose, "pins": pins}))
            .collect::<Vec<_>>()}));
    }
    let applied: Vec<_> = results
        .iter()
        .map(|(h, s)| {
            let (status, detail) = match s {
                ApplyStatus::Unchanged => ("unchanged", None),
                ApplyStatus::Applied { .. } => ("applied", None),
                ApplyStatus::Failed(e) => ("failed", Some(e.as_str())),
                ApplyStatus::Skipped(e) => ("skipped", Some(e.as_str())),
            };
            serde_json::json!({"host": h, "status": status, "error": detail,
                               "converged": !drift.contains(h)})
        })
        .collect();
    let verified = checks.is_empty() || common.json || show_checks(&checks, true);
    let failed =
        failed || (!common.json && !verified) || (common.json && checks.iter().any(|c| !c.ok));
    let code = if failed || !drift.is_empty() {
        EXIT_ERROR
    } else {
        0
    };
    let mut applied = serde_json::json!({ "applied": applied });
    if !rotated.is_empty() {
        applied["pins_after_rotation"] = rotated.into();
    }
    if !checks.is_empty() {
        applied["checks"] = serde_json::to_value(&checks).unwrap_or_default();
    }
    if let (Some(host), 0, false) = (&change.release, code, common.json) {
        let _ = writeln!(
            out,
            "{host} is released: remove [hosts.{host}] from {}, or the next apply takes it again.",
            inv.file.display()
        );
    }
    finish(states, common, &fleet, code, applied).await
}

fn rotation(common: &Common, hosts: &[String], compromised: bool) -> Result<Rotation, String> {
    let inv = inventory::load(&common.inventory).map_err(|e| e.to_string())?;
    if compromised && hosts.is_empty() {
        return Err("--compromised needs the names of the compromised hosts".into());
    }
    let mut set = std::collections::BTreeSet::new();
    for h in hosts {
        let name = HostName::parse(h).map_err(|e| format!("rotate: {e}"))?;
        if !inv.hosts.iter().any(|x| x.name == name) {
            return Err(format!(
                "rotate: no host {h} in {}",
                common.inventory.display()
            ));
        }
        set.insert(name);
    }
    if set.is_empty() {
        set = inv.hosts.iter().map(|h| h.name.clone()).collect();
    }
    Ok(Rotation {
        hosts: set,
        compromised,
    })
}

async fn run_fingerprint(
    file: Option<&PathBuf>,
    connect: Option<&str>,
    starttls: Option<StartTls>,
    digest: Digest,
    pin: PinKind,
    format: Format,
    timeout: u64,
) -> Result<u8, String> {
    let (chain, source) = match (file, connect) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
            let chain =
                Certificate::all_from_pem(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            (chain, None)
        }
        (None, Some(addr)) => {
            let proto = starttls.unwrap_or(StartTls::Implicit);
            let chain = probe::probe(addr, proto, std::time::Duration::from_secs(timeout))
                .await
                .map_err(|e| e.to_string())?;
            (chain, Some(addr))
        }
        (None, None) => return Err("give a PEM file or --connect HOST:PORT".into()),
    };
    let source = match source.and_then(|a| a.rsplit_once(':')) {
        Some((host, port)) => Source::Server {
            host: host.trim_start_matches('[').trim_end_matches(']'),
            port: port.parse().map_err(|_| format!("{port}: not a port"))?,
        },
        None => Source::File,
    };
    let _ = write!(
        anstream::stdout(),
        "{}",
        fingerprint::render(&chain, digest, pin, format, &source)
    );
    Ok(0)
}

async fn run_pin(
    file: &std::path::Path,
    name: &str,
    add: bool,
    replace: bool,
    timeout: u64,
) -> Result<u8, String> {
    let inv = inventory::load(file).map_err(|e| e.to_string())?;
    let Some(e) = inv.externals.iter().find(|e| e.name.as_str() == name) else {
        return Err(format!(
            "{}: no [external.{name}] in this inventory",
            file.display()
        ));
    };
    let chain = mxpin::external::probe(e, std::time::Duration::from_secs(timeout))
        .await
        .map_err(|err| format!("external {name} ({}): {err}", e.address()))?;
    let leaf = &chain[0];
    let s = &inv.settings;
    let served = leaf.fingerprint(s.digest, s.pin);
    let d = leaf.details();
    let mut out = anstream::stdout();
    let _ = writeln!(
        out,
        "{name} ({}) presents {}, {}, issued by {}, names {}, valid until {}",
        e.address(),
        d.subject,
        d.key,
        d.issuer,
        if d.dns_names.is_empty() {
            "none".to_string()
        } else {
            d.dns_names.join(", ")
        },
        mxpin::tls::format_time(d.not_after)
    );
    let kind = match s.pin {
        PinKind::PublicKey => "public-key",
        PinKind::Certificate => "certificate",
    };
    let _ = writeln!(out, "{} {kind} fingerprint: {served}", s.digest);
    let pins = if e.pins.contains(&served) && !replace {
        let _ = writeln!(out, "already pinned");
        return Ok(0);
    } else if e.pins.is_empty() || replace {
        vec![served]
    } else if add {
        let mut p = e.pins.clone();
        p.push(served);
        p
    } else {
        let old: Vec<&str> = e.pins.iter().map(|p| p.as_str()).collect();
        return Err(format!(
            "external {name} ({}) serves {served}, but {} is pinned; check with the server's admin, \
             then run `mxpin pin {name} --replace` (or --add to keep the old pin)",
            e.address(),
            old.join(" and ")
        ));
    };
    let text = std::fs::read_to_string(file)
        .map_err(|err| format!("{}: cannot read: {err}", file.display()))?;
    let new = inventory::edit::set_pins(&text, name, &pins)
        .map_err(|err| format!("{}: {err}", file.display()))?;
    // What was written must still be a valid inventory with these pins.
    let check = inventory::parse(file, &new).map_err(|err| err.to_string())?;
    debug_assert!(check.externals.iter().any(|x| x.name.as_str() == name));
    inventory::edit::replace_file(file, &new)
        .map_err(|err| format!("{}: cannot write: {err}", file.display()))?;
    let _ = writeln!(
        out,
        "pinned in {}: [external.{name}] pins ({} fingerprint{})",
        file.display(),
        pins.len(),
        if pins.len() == 1 { "" } else { "s" }
    );
    Ok(0)
}

async fn run_tlsa(common: &Common) -> Result<u8, String> {
    let (inv, _) = load(common)?;
    let progress = monitor(common, &inv);
    let states = engine::gather(
        &inv,
        common.parallel.into(),
        &*progress,
        engine::Access::Read,
    )
    .await;
    progress.finish();
    let mut failed = false;
    let mut out = anstream::stdout();
    for s in &states {
        let host = &s.host;
        let keys = match &s.facts {
            Err(e) => {
                error(format_args!("{}: {e}", host.name));
                failed = true;
                continue;
            }
            Ok(f) => f.stored_keys(),
        };
        for (slot, pair) in [("current", &keys.current), ("next", &keys.next)] {
            match pair.cert.as_deref().map(Certificate::from_pem) {
                Some(Ok(cert)) => {
                    let record = fingerprint::tlsa_record(
                        host.mx.as_str(),
                        host.smtp_port,
                        &cert,
                        Digest::Sha256,
                    );
                    let _ = writeln!(out, "{record} ; {} {slot}", host.name);
                }
                Some(Err(e)) => {
                    error(format_args!("{}: {slot} certificate: {e}", host.name));
                    failed = true;
                }
                None => {
                    error(format_args!(
                        "{}: no {slot} key yet: run mxpin apply first",
                        host.name
                    ));
                    failed = true;
                }
            }
        }
    }
    engine::close(states).await;
    Ok(if failed { EXIT_ERROR } else { 0 })
}

/// Runs a command until it ends, or until SIGINT or SIGTERM. On a signal
/// the command is dropped where it stands: every ssh master is told to
/// exit (its control directory removed), which ends the run's hold on each
/// host. An apply script already sent runs to its end on the host, or rolls
/// back there, on its own, and the host stays locked until it has.
async fn until_signal(
    work: impl std::future::Future<Output = Result<u8, String>>,
) -> Result<u8, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return work.await;
    };
    let (name, code) = tokio::select! {
        r = work => return r,
        _ = int.recv() => ("SIGINT", 130),
        _ = term.recv() => ("SIGTERM", 143),
    };
    error(format_args!(
        "interrupted by {name}: connections closed; a change already sent to a host ends or rolls back there on its own; run `mxpin plan` to see the state"
    ));
    Ok(code)
}

fn main() -> ExitCode {
    // A usage error exits 1, never clap's 2, which scripts read as
    // "changes pending"; --help and --version exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_ERROR } else { 0 });
        }
    };
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
    let result = runtime.block_on(until_signal(async {
        match &cli.command {
            Command::Plan(common) => run_plan(common).await,
            Command::Tlsa(common) => run_tlsa(common).await,
            Command::Fingerprint {
                file,
                connect,
                starttls,
                digest,
                pin,
                format,
                timeout,
            } => {
                run_fingerprint(
                    file.as_ref(),
                    connect.as_deref(),
                    *starttls,
                    *digest,
                    *pin,
                    *format,
                    *timeout,
                )
                .await
            }
            Command::Verify(common) => run_verify(common).await,
            Command::Pin {
                inventory,
                name,
                add,
                replace,
                timeout,
            } => run_pin(inventory, name, *add, *replace, *timeout).await,
            Command::Apply {
                common,
                yes,
                no_verify,
            } => {
                let change = Change {
                    yes: *yes,
                    dry_run: false,
                    verify: !no_verify,
                    rotation: Rotation::default(),
                    release: None,
                };
                run_change(common, change).await
            }
            Command::Release {
                common,
                host,
                yes,
                dry_run,
            } => {
                let change = Change {
                    yes: *yes,
                    dry_run: *dry_run,
                    verify: false,
                    rotation: Rotation::default(),
                    release: Some(HostName::parse(host).map_err(|e| format!("release: {e}"))?),
                };
                run_change(common, change).await
            }
            Command::Rotate {
                common,
                hosts,
                yes,
                dry_run,
                compromised,
                no_verify,
            } => match rotation(common, hosts, *compromised) {
                Err(e) => Err(e),
                Ok(rotation) => {
                    let change = Change {
                        yes: *yes,
                        dry_run: *dry_run,
                        verify: !no_verify,
                        rotation,
                        release: None,
                    };
                    run_change(common, change).await
                }
            },
        }
    }));
    // A confirmation prompt may still be reading the terminal.
    runtime.shutdown_background();
    mxpin::ssh::remove_control_dir();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            error(e);
            ExitCode::from(EXIT_ERROR)
        }
    }
}
