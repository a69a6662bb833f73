//! The `mxpin` command: parse arguments, call the library, render results
//! and errors once, map outcomes to exit codes.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory as _, Parser, Subcommand};
use owo_colors::OwoColorize as _;
use time::OffsetDateTime;

use mxpin::dns::ZonePlan;
use mxpin::engine::{self, ApplyStatus, FleetPlan, HostState, Rotation};
use mxpin::error::Stage;
use mxpin::external::PinDecision;
use mxpin::fingerprint::{self, Format, Source};
use mxpin::inventory::{self, HostName, Inventory};
use mxpin::plan::{self, HostOutcome, HostPlan};
use mxpin::probe::{self, StartTls};
use mxpin::progress::{Lines, Live, Monitor, Phase, Silent};
use mxpin::report;
use mxpin::templates::Templates;
use mxpin::tls::{Certificate, Digest, PinKind};
use mxpin::trust::Purpose;
use mxpin::verify::{self, Check, Status};
use mxpin::words::count;

/// Pin self-signed TLS keys between your own mail hosts.
#[derive(Parser)]
#[command(version, about, after_help = EXIT_TOP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command accepts, before or after its name.
#[derive(Args)]
struct Global {
    /// Inventory file [default: ./mxpin.toml] (for the commands that read one).
    #[arg(short, long, global = true, value_name = "FILE")]
    inventory: Option<PathBuf>,
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// No progress lines on stderr (there are none with --json either).
    #[arg(short, long, global = true)]
    quiet: bool,
}

const EXIT_TOP: &str = "Exit status: 0 done (plan and dry runs: nothing to change), 2 changes \
pending (plan and dry runs only), 1 any error, a usage error included. Each command's --help \
gives its own.";
const EXIT_PLAN: &str = "Exit status: 0 nothing to change, 2 changes pending, 1 error.";
const EXIT_APPLY: &str = "Exit status: 0 nothing to change, or every host changed, converged and \
(unless --no-verify) verified; 1 otherwise: an error, a host that failed or still differs from \
the inventory, a failed check, or a cancelled confirmation.";
const EXIT_VERIFY: &str = "Exit status: 0 every check passed (warnings do not fail), 1 a check \
failed or a host could not be read.";
const EXIT_ROTATE: &str = "Exit status: 0 every rotation done, converged and (unless --no-verify) \
verified, 1 otherwise. With --dry-run, as plan: 0 nothing to change, 2 changes pending, 1 error.";
const EXIT_RELEASE: &str = "Exit status: 0 released (or nothing to give back), 1 otherwise. With \
--dry-run, as plan: 0 nothing to change, 2 changes pending, 1 error.";
const EXIT_FINGERPRINT: &str =
    "Exit status: 0 printed, 1 error (unreadable file, refused, timeout, \
no STARTTLS offered, not TLS).";
const EXIT_TLSA: &str =
    "Exit status: 0 every host's current and next key printed, 1 a host has no \
keys yet or cannot be read (the other hosts' records are still printed).";
const EXIT_PIN: &str = "Exit status: 0 pinned or already pinned, 1 otherwise (the server serves \
another key and neither --add nor --replace was given, or it cannot be reached).";
const EXIT_GENERATED: &str = "Exit status: 0 printed, 1 error.";

#[derive(Subcommand)]
enum Command {
    /// Show what apply would change on every host; change nothing.
    #[command(after_help = EXIT_PLAN)]
    Plan(Opts),
    /// Plan, confirm, apply, and check that every host converged.
    #[command(after_help = EXIT_APPLY)]
    Apply {
        #[command(flatten)]
        opts: Opts,
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
    #[command(after_help = EXIT_VERIFY)]
    Verify(Opts),
    /// Switch hosts to their staged next key, stage a fresh next key, and
    /// update every peer's pins; never switches to a key a peer does not pin.
    #[command(after_help = EXIT_ROTATE)]
    Rotate {
        #[command(flatten)]
        opts: Opts,
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
    #[command(after_help = EXIT_RELEASE)]
    Release {
        #[command(flatten)]
        opts: Opts,
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
    #[command(after_help = EXIT_FINGERPRINT)]
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
        /// text, postfix, fetchmail (MD5 of the certificate), tlsa or json
        /// (--json is --format json) [default: text].
        #[arg(long, value_parser = |s: &str| s.parse::<Format>())]
        format: Option<Format>,
        /// Seconds to wait for each step of the connection.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
        timeout: u64,
    },
    /// DNS TLSA records (DANE-EE, 3 1 1) for every host's current and next
    /// key, as zone-file lines (--json: one object per record).
    #[command(after_help = EXIT_TLSA)]
    Tlsa(Opts),
    /// Connect to an external server and write its fingerprint into the
    /// inventory's `[external.NAME] pins`, trusting it on first use like
    /// ssh. Refuses when it serves something else than what is pinned,
    /// unless told to --add or --replace.
    #[command(after_help = EXIT_PIN)]
    Pin {
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
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    #[command(after_help = EXIT_GENERATED)]
    Completions {
        /// The shell.
        shell: CompletionShell,
    },
    /// Print this manual page (roff, all commands) on stdout:
    /// `mxpin man | man -l -`.
    #[command(after_help = EXIT_GENERATED)]
    Man,
}

/// The shells `mxpin completions` writes for.
#[derive(Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

fn parse_digest(s: &str) -> Result<Digest, String> {
    s.parse()
        .map_err(|_| format!("unknown digest {s:?}: expected {}", Digest::NAMES))
}

fn parse_pin(s: &str) -> Result<PinKind, String> {
    s.parse()
        .map_err(|_| format!("unknown pin {s:?}: expected {}", PinKind::NAMES))
}

/// The options of the commands that read every host.
#[derive(Args)]
struct Opts {
    /// Hosts handled at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    parallel: u16,
    /// Directory with templates overriding the built-in ones.
    #[arg(long)]
    templates: Option<PathBuf>,
}

/// What a command that reads every host runs with: the global options and
/// its own.
struct Common {
    inventory: PathBuf,
    json: bool,
    quiet: bool,
    parallel: u16,
    templates: Option<PathBuf>,
}

/// Reads every host's facts and probes every external server in use, at
/// the same time.
async fn gather(
    inv: &Inventory,
    parallel: usize,
    progress: &dyn Monitor,
    access: engine::Access,
) -> (Vec<HostState>, Vec<mxpin::external::ExternalState>) {
    tokio::join!(
        engine::gather(inv, parallel, progress, access),
        mxpin::external::gather(inv, mxpin::limits::PROBE_TIMEOUT)
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
            .any(|o| matches!(o, HostOutcome::Failed(_)));
    (errors, !pending_plans(&fleet.outcomes).is_empty())
}

/// Errors of a plan, on stderr.
fn report_errors(fleet: &FleetPlan) {
    for o in &fleet.outcomes {
        if let HostOutcome::Failed(e) = o {
            error(e);
        }
    }
    for e in &fleet.refused {
        error(e);
    }
}

/// What the closing line of a plan says: what would change (plan, dry
/// runs, apply before its confirmation) or what is being done (--yes).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Closing {
    WouldChange,
    Changing,
}

/// Prints a plan for people: a diff per changed host, the DNS records
/// that change (`[dns]`), the order in which hosts would be changed when it
/// matters, one closing line.
fn show_plan(fleet: &FleetPlan, zones: &[ZonePlan], closing: Closing) {
    let mut out = anstream::stdout();
    let pending = pending_plans(&fleet.outcomes);
    for p in &pending {
        let _ = write!(out, "{}", plan::render_host(p, fleet.pin_style));
    }
    for z in zones {
        let _ = write!(out, "{}", z.render(&fleet.placeholders));
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
    let dns = count(zones.len(), "zone", "zones");
    if pending.is_empty() && zones.is_empty() && !errors {
        let _ = writeln!(
            out,
            "No changes: {} up to date.",
            count(total, "host", "hosts")
        );
    } else if !pending.is_empty() {
        let hosts = format!("{} of {}", pending.len(), count(total, "host", "hosts"));
        let also = if zones.is_empty() {
            String::new()
        } else {
            format!(", and DNS records in {dns}")
        };
        let _ = match closing {
            Closing::WouldChange => writeln!(out, "{hosts} would change{also}."),
            Closing::Changing => writeln!(out, "Applying the changes to {hosts}{also}."),
        };
    } else if !zones.is_empty() {
        let _ = match closing {
            Closing::WouldChange => writeln!(
                out,
                "DNS records would change in {dns}; {} up to date.",
                count(total, "host", "hosts")
            ),
            Closing::Changing => writeln!(out, "Applying the DNS records of {dns}."),
        };
    }
}

fn fleet_json(fleet: &FleetPlan, zones: &[ZonePlan]) -> serde_json::Value {
    let mut v = plan::to_json(&fleet.outcomes, fleet.pin_style);
    v["dns"] = zones
        .iter()
        .map(|z| z.to_json(&fleet.placeholders))
        .collect();
    if !zones.is_empty() {
        v["changes_pending"] = true.into();
    }
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
        .map(mxpin::error::HostError::to_json)
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
    let fleet = engine::with_hosts(states, async |states: &mut [HostState]| {
        let fleet = plan_as_is(&inv, states, &externals, &templates).await;
        engine::report_planned(&fleet.outcomes, &*progress, Phase::Planned(0));
        progress.finish();
        fleet
    })
    .await;
    report_errors(&fleet);
    let zones = dns_plan(&inv, &fleet).await;
    let (dns_failed, dns_pending) = (
        zones.is_none(),
        zones.as_ref().is_some_and(|z| !z.is_empty()),
    );
    let zones = zones.unwrap_or_default();
    if common.json {
        let _ = writeln!(anstream::stdout(), "{:#}", fleet_json(&fleet, &zones));
    } else {
        show_plan(&fleet, &zones, Closing::WouldChange);
        if pending_plans(&fleet.outcomes)
            .iter()
            .any(|p| p.generates_keys)
        {
            let _ = writeln!(
                anstream::stdout(),
                "New keys are generated by apply; until then they are shown as {}.",
                mxpin::keys::KNOWN_AFTER_APPLY
            );
        }
    }
    Ok(match summarize(&fleet) {
        (true, _) => EXIT_ERROR,
        _ if dns_failed => EXIT_ERROR,
        (false, true) => EXIT_PENDING,
        (false, false) if dns_pending => EXIT_PENDING,
        (false, false) => 0,
    })
}

/// The fleet's plan as it stands (no rotation asked for), with no key
/// generated: what plan and verify compare the hosts with.
async fn plan_as_is(
    inv: &Inventory,
    states: &[HostState],
    externals: &[mxpin::external::ExternalState],
    templates: &Templates,
) -> FleetPlan {
    let now = OffsetDateTime::now_utc();
    let rotation = Rotation::default();
    mxpin::keys::plan_fleet(
        inv,
        states,
        externals,
        templates,
        now,
        &rotation,
        mxpin::keys::Use::Show,
    )
    .await
}

/// The DNS part of a plan (`[dns]`): the zones whose records change, or
/// `None` when the zones could not be read (reported here, once).
async fn dns_plan(inv: &Inventory, fleet: &FleetPlan) -> Option<Vec<ZonePlan>> {
    match mxpin::dns::plan_fleet(inv, &fleet.tlsa).await {
        Err(e) => {
            error(format_args!("dns: {e}"));
            None
        }
        Ok(plans) => Some(plans.into_iter().filter(|p| !p.is_empty()).collect()),
    }
}

fn confirm(hosts: usize) -> Result<bool, String> {
    if !std::io::stdin().is_terminal() {
        return Err(
            "apply needs confirmation but standard input is not a terminal: pass --yes".into(),
        );
    }
    eprint!(
        "Apply these changes to {}? Only 'yes' is accepted: ",
        count(hosts, "host", "hosts")
    );
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
    /// `rotate HOST... [--compromised]`: the hosts named (all when none).
    rotate: Option<(Vec<String>, bool)>,
    verify: bool,
    /// Give this host back (`mxpin release`).
    release: Option<HostName>,
}

/// Prints verification results: every check, or only failures and
/// warnings when `quiet_success`; returns whether all passed.
fn show_checks(checks: &[Check], quiet_success: bool) -> bool {
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
            .filter(|c| &c.host == *host && (!quiet_success || c.status != Status::Ok))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{}", host.as_str().bold());
        for c in mine {
            let status = match c.status {
                Status::Fail => "FAIL".red().bold().to_string(),
                Status::Warn => "warn".yellow().to_string(),
                Status::Ok => "ok  ".green().to_string(),
            };
            let route = c
                .route
                .as_deref()
                .map(|r| format!("{r}  "))
                .unwrap_or_default();
            let _ = writeln!(out, "  {status}  {route}{}", c.what);
        }
    }
    let failed: Vec<&str> = verify::fix_on(checks).iter().map(|h| h.as_str()).collect();
    if failed.is_empty() {
        let _ = writeln!(
            out,
            "Verified: {} and the keys of every host.",
            count(verify::routes_seen(checks), "pinned route", "pinned routes")
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
    let (states, externals) = gather(&inv, parallel, &*progress, engine::Access::Verify).await;
    let (after, mut checks) = engine::with_hosts(states, async |states: &mut [HostState]| {
        let fleet = plan_as_is(&inv, states, &externals, &templates).await;
        let run = engine::Progress {
            parallel,
            monitor: &*progress,
        };
        let (after, mut checks) = engine::settle(
            &inv,
            states,
            &externals,
            &fleet.outcomes,
            &templates,
            run,
            true,
        )
        .await;
        checks.extend(mxpin::dns::verify(&inv, states).await);
        (after, checks)
    })
    .await;
    verify::add_drift(&mut checks, &after);
    let ok = if common.json {
        let _ = writeln!(anstream::stdout(), "{:#}", verify::to_json(&checks));
        checks.iter().all(Check::ok)
    } else {
        show_checks(&checks, false)
    };
    Ok(if ok { 0 } else { EXIT_ERROR })
}

/// For --json, prints the one document: the plan plus the fields of
/// `results` (an object).
fn finish(
    common: &Common,
    (fleet, zones): (&FleetPlan, &[ZonePlan]),
    code: u8,
    results: serde_json::Value,
) -> Result<u8, String> {
    if common.json {
        let mut doc = serde_json::json!({ "plan": fleet_json(fleet, zones), "applied": [] });
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
    let rotation = match &change.rotate {
        Some((hosts, compromised)) => Rotation::select(&inv, hosts, *compromised)?,
        None => Rotation::default(),
    };
    let parallel = common.parallel.into();
    let progress = monitor(common, &inv);
    // A dry run only reads: it shares the hosts with other readers.
    let access = if change.dry_run {
        engine::Access::Read
    } else {
        engine::Access::Change
    };
    let (states, externals) = gather(&inv, parallel, &*progress, access).await;
    let run = Run {
        common,
        change: &change,
        inv: &inv,
        templates: &templates,
        externals: &externals,
    };
    engine::with_hosts(states, async |states: &mut [HostState]| {
        change_hosts(run, &rotation, states, &*progress).await
    })
    .await
}

/// What a changing run works with, once the hosts are read.
#[derive(Clone, Copy)]
struct Run<'a> {
    common: &'a Common,
    change: &'a Change,
    inv: &'a Inventory,
    templates: &'a Templates,
    externals: &'a [mxpin::external::ExternalState],
}

/// Plans, confirms, applies, settles and reports a changing run on the
/// hosts read.
async fn change_hosts(
    run: Run<'_>,
    rotation: &Rotation,
    states: &mut [HostState],
    progress: &dyn Monitor,
) -> Result<u8, String> {
    let Run {
        common,
        change,
        inv,
        templates,
        externals,
    } = run;
    let parallel = common.parallel.into();
    let now = OffsetDateTime::now_utc();
    // DNS pins like a peer: no switch before the world sees the next key.
    let rotation = mxpin::dns::gate_rotation(inv, states, rotation, now).await;
    // A dry run generates no key; apply generates those it uses, in parallel.
    let usage = if change.dry_run {
        mxpin::keys::Use::Show
    } else {
        mxpin::keys::Use::Apply
    };
    let fleet =
        mxpin::keys::plan_fleet(inv, states, externals, templates, now, &rotation, usage).await;
    engine::report_planned(&fleet.outcomes, progress, Phase::Planned(0));
    progress.finish();
    let (plan_errors, pending) = summarize(&fleet);
    report_errors(&fleet);
    let zones = dns_plan(inv, &fleet).await;
    let (dns_failed, dns_pending) = (
        zones.is_none(),
        zones.as_ref().is_some_and(|z| !z.is_empty()),
    );
    let zones = zones.unwrap_or_default();
    let (plan_errors, pending) = (plan_errors || dns_failed, pending || dns_pending);
    if !common.json {
        // Only apply --yes goes ahead without a question; dry runs and a
        // confirmation say what would change.
        let closing = if change.yes && !change.dry_run {
            Closing::Changing
        } else {
            Closing::WouldChange
        };
        show_plan(&fleet, &zones, closing);
    }
    let failed_code = if plan_errors { EXIT_ERROR } else { 0 };
    if change.dry_run || !pending {
        // A dry run says what plan says: 2 when changes are pending.
        let code = if change.dry_run && pending && !plan_errors {
            EXIT_PENDING
        } else {
            failed_code
        };
        return finish(common, (&fleet, &zones), code, serde_json::json!({}));
    }
    let hosts = pending_plans(&fleet.outcomes).len();
    // Off the async threads: a signal must be able to end the wait.
    let confirmed = change.yes
        || tokio::task::spawn_blocking(move || confirm(hosts))
            .await
            .map_err(|e| format!("reading answer: {e}"))??;
    if !confirmed {
        return Err("cancelled; nothing changed".into());
    }
    let progress = monitor(common, inv);
    let results = engine::apply_all(inv, states, &fleet.outcomes, parallel, &*progress).await;
    let run = engine::Progress {
        parallel,
        monitor: &*progress,
    };
    let (results, second) = engine::finish_transition(
        inv,
        states,
        externals,
        templates,
        run,
        &fleet.outcomes,
        results,
    )
    .await;
    let intended = second.as_deref().unwrap_or(&fleet.outcomes);
    let (after, checks) = engine::settle(
        inv,
        states,
        externals,
        intended,
        templates,
        engine::Progress {
            parallel,
            monitor: &*progress,
        },
        change.verify,
    )
    .await;
    let mut out = anstream::stdout();
    let dns_failed = match mxpin::dns::publish(inv, states, &fleet.tlsa).await {
        Ok(lines) => {
            if !common.json {
                for l in &lines {
                    let _ = writeln!(out, "{l}");
                }
            }
            false
        }
        Err(e) => {
            error(format_args!("dns: {e}"));
            true
        }
    };
    for (host, status) in &results {
        match status {
            ApplyStatus::Unchanged => {}
            ApplyStatus::Applied { changes } => {
                if !common.json {
                    let _ = writeln!(
                        out,
                        "{host}: applied {}",
                        count(*changes, "change", "changes")
                    );
                }
            }
            // Planning errors were reported above.
            ApplyStatus::Failed(e) | ApplyStatus::Skipped(e) if e.stage == Stage::Apply => error(e),
            ApplyStatus::Failed(_) | ApplyStatus::Skipped(_) => {}
        }
    }
    let failed = plan_errors || dns_failed || report::apply_failed(&results);
    let drift = report::drift(&after);
    if !failed && !drift.is_empty() {
        let names: Vec<&str> = drift.iter().map(HostName::as_str).collect();
        error(format_args!(
            "hosts still differ from the inventory after apply: {}",
            names.join(", ")
        ));
    }
    // What a rotation left behind, read from the hosts.
    let mut rotated = Vec::new();
    for report::ReadBack { rotated: r, peers } in report::rotation_read_back(inv, states, &fleet) {
        if !common.json {
            // The inventory's digest and pin kind, as the peers' pins below.
            let kind = match inv.settings.pin {
                mxpin::tls::PinKind::PublicKey => "public key",
                mxpin::tls::PinKind::Certificate => "certificate",
            };
            let _ = writeln!(
                out,
                "{}: serves {kind} {} (was {}); next {}",
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
                ApplyStatus::Failed(e) => ("failed", Some(e)),
                ApplyStatus::Skipped(e) => ("skipped", Some(e)),
            };
            serde_json::json!({"host": h, "status": status,
                               "error": detail.map(|e| &e.message),
                               "stage": detail.map(|e| e.stage),
                               "kind": detail.map(|e| e.kind),
                               "converged": !drift.contains(h)})
        })
        .collect();
    let verified = checks.is_empty() || common.json || show_checks(&checks, true);
    let failed =
        failed || (!common.json && !verified) || (common.json && !checks.iter().all(Check::ok));
    let code = report::exit_code(failed, &drift);
    let mut applied = serde_json::json!({ "applied": applied });
    if !rotated.is_empty() {
        applied["pins_after_rotation"] = rotated.into();
    }
    if !checks.is_empty() {
        applied["checks"] = verify::to_json(&checks)["checks"].take();
    }
    if let (Some(host), 0, false) = (&change.release, code, common.json) {
        let _ = writeln!(
            out,
            "{host} is released: remove [hosts.{host}] from {}, or the next apply takes it again.",
            inv.file.display()
        );
    }
    finish(common, (&fleet, &zones), code, applied)
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
    json: bool,
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
    let kind = match s.pin {
        PinKind::PublicKey => "public-key",
        PinKind::Certificate => "certificate",
    };
    let mut out = anstream::stdout();
    // --json: one document once the outcome is known; text as it goes.
    let report =
        |out: &mut anstream::AutoStream<std::io::Stdout>, pinned: &str, pins: &[String]| {
            if json {
                let doc = serde_json::json!({
                    "external": name, "address": e.address().to_string(),
                    "subject": d.subject, "key": d.key, "issuer": d.issuer,
                    "names": d.dns_names, "not_after": mxpin::tls::format_time(d.not_after),
                    "digest": s.digest.to_string(), "pin": kind, "fingerprint": served,
                    "status": pinned, "pins": pins,
                });
                let _ = writeln!(out, "{doc:#}");
            }
        };
    if !json {
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
        let _ = writeln!(out, "{} {kind} fingerprint: {served}", s.digest);
    }
    let pins = match mxpin::external::pin_decision(e, &served, add, replace)? {
        PinDecision::AlreadyPinned => {
            if json {
                let pins: Vec<String> = e.pins.iter().map(|p| p.to_string()).collect();
                report(&mut out, "already_pinned", &pins);
            } else {
                let _ = writeln!(out, "already pinned");
            }
            return Ok(0);
        }
        PinDecision::Write(pins) => pins,
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
    if json {
        let pins: Vec<String> = pins.iter().map(|p| p.to_string()).collect();
        report(&mut out, "pinned", &pins);
    } else {
        let _ = writeln!(
            out,
            "pinned in {}: [external.{name}] pins ({})",
            file.display(),
            mxpin::words::count(pins.len(), "fingerprint", "fingerprints")
        );
    }
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
    let (records, errors) = engine::with_hosts(states, async |states: &mut [HostState]| {
        fingerprint::fleet_tlsa(states)
    })
    .await;
    for (host, e) in &errors {
        error(format_args!("{host}: {e}"));
    }
    let _ = write!(
        anstream::stdout(),
        "{}",
        fingerprint::render_tlsa(&records, &errors, common.json)
    );
    Ok(if errors.is_empty() { 0 } else { EXIT_ERROR })
}

/// The inventory to read: `-i FILE`, or `./mxpin.toml`, which must then
/// exist.
fn inventory_path(global: &Global) -> Result<PathBuf, String> {
    if let Some(path) = &global.inventory {
        return Ok(path.clone());
    }
    let path = PathBuf::from("mxpin.toml");
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(
            "no mxpin.toml in the current folder: run mxpin where it is, or give the inventory with -i FILE"
                .into(),
        ),
        _ => Ok(path),
    }
}

/// Writes generated text (completions, the man page) to stdout; --json has
/// no meaning there and is refused.
fn generated(
    global: &Global,
    what: &str,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<u8, String> {
    if global.json {
        return Err(format!("{what}: there is no JSON form; drop --json"));
    }
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        // A reader that stopped early (`mxpin man | head`) is no error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("{what}: writing to stdout: {e}"))
        }
        _ => Ok(0),
    }
}

/// The manual page mxpin(1): every command with its options, and the exit
/// status of each. It starts with `.TH`.
fn man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let top = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    top.render_title(&mut page)?;
    top.render_name_section(&mut page)?;
    top.render_synopsis_section(&mut page)?;
    top.render_description_section(&mut page)?;
    top.render_options_section(&mut page)?;
    let mut roff = roff::Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands() {
        let name = format!("mxpin {}", sub.get_name());
        roff.control("SS", [name.as_str()]);
        let usage = sub.clone().bin_name(&name).render_usage().to_string();
        roff.control("B", [usage.trim_start_matches("Usage: ")]);
        roff.control("PP", [] as [&str; 0]);
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            roff.text([roff::roman(about.to_string())]);
        }
        for arg in sub.get_arguments() {
            if arg.is_global_set() || arg.is_hide_set() || arg.get_id() == "help" {
                continue;
            }
            let value = match arg.get_value_names() {
                Some(names) => names.iter().map(|n| format!("<{n}>")).collect::<Vec<_>>(),
                None => vec![format!("<{}>", arg.get_id().as_str().to_uppercase())],
            }
            .join(" ");
            let takes = arg.get_action().takes_values();
            let flag = match (arg.get_short(), arg.get_long()) {
                (Some(s), Some(l)) => format!("-{s}, --{l}"),
                (None, Some(l)) => format!("--{l}"),
                (Some(s), None) => format!("-{s}"),
                (None, None) => String::new(),
            };
            let name = match (flag.is_empty(), takes) {
                (true, _) => value,
                (false, true) => format!("{flag} {value}"),
                (false, false) => flag,
            };
            let mut help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if takes && !defaults.is_empty() {
                help.push_str(&format!(" [default: {}]", defaults.join(", ")));
            }
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_string())
                .collect();
            if !values.is_empty() && arg.get_long().is_none() {
                help.push_str(&format!(" [possible values: {}]", values.join(", ")));
            }
            roff.control("TP", [] as [&str; 0]);
            roff.text([roff::bold(name)]);
            roff.text([roff::roman(help)]);
        }
        if let Some(exit) = sub.get_after_help() {
            roff.control("PP", [] as [&str; 0]);
            roff.text([roff::roman(exit.to_string())]);
        }
    }
    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roff::roman(EXIT_TOP)]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roff::roman(
        "The README (/usr/share/doc/mxpin/README.md in the Debian package) for the inventory \
         format and what apply does on a host.",
    )]);
    roff.to_writer(&mut page)?;
    top.render_version_section(&mut page)?;
    // Each part above starts with the roff crate's preamble (two lines that
    // define the apostrophe string); the page gets it once, after `.TH`.
    let page = String::from_utf8_lossy(&page).into_owned();
    let preamble = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";
    let body = page.replace(preamble, "");
    let (title, rest) = body.split_once('\n').unwrap_or((&body, ""));
    write!(out, "{title}\n{preamble}{rest}")
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
    let global = &cli.global;
    let result = runtime.block_on(until_signal(async {
        let common = |opts: &Opts| -> Result<Common, String> {
            Ok(Common {
                inventory: inventory_path(global)?,
                json: global.json,
                quiet: global.quiet,
                parallel: opts.parallel,
                templates: opts.templates.clone(),
            })
        };
        match &cli.command {
            Command::Plan(opts) => run_plan(&common(opts)?).await,
            Command::Tlsa(opts) => run_tlsa(&common(opts)?).await,
            Command::Fingerprint {
                file,
                connect,
                starttls,
                digest,
                pin,
                format,
                timeout,
            } => {
                let format = match (*format, global.json) {
                    (None, false) => Format::Text,
                    (None, true) | (Some(Format::Json), _) => Format::Json,
                    (Some(f), false) => f,
                    (Some(_), true) => {
                        return Err("fingerprint: --json is --format json; give one of them".into())
                    }
                };
                run_fingerprint(
                    file.as_ref(),
                    connect.as_deref(),
                    *starttls,
                    *digest,
                    *pin,
                    format,
                    *timeout,
                )
                .await
            }
            Command::Verify(opts) => run_verify(&common(opts)?).await,
            Command::Pin {
                name,
                add,
                replace,
                timeout,
            } => {
                let inventory = inventory_path(global)?;
                run_pin(&inventory, name, *add, *replace, *timeout, global.json).await
            }
            Command::Apply {
                opts,
                yes,
                no_verify,
            } => {
                let change = Change {
                    yes: *yes,
                    dry_run: false,
                    verify: !no_verify,
                    rotate: None,
                    release: None,
                };
                run_change(&common(opts)?, change).await
            }
            Command::Release {
                opts,
                host,
                yes,
                dry_run,
            } => {
                let change = Change {
                    yes: *yes,
                    dry_run: *dry_run,
                    verify: false,
                    rotate: None,
                    release: Some(HostName::parse(host).map_err(|e| format!("release: {e}"))?),
                };
                run_change(&common(opts)?, change).await
            }
            Command::Rotate {
                opts,
                hosts,
                yes,
                dry_run,
                compromised,
                no_verify,
            } => {
                let change = Change {
                    yes: *yes,
                    dry_run: *dry_run,
                    verify: !no_verify,
                    rotate: Some((hosts.clone(), *compromised)),
                    release: None,
                };
                run_change(&common(opts)?, change).await
            }
            Command::Completions { shell } => generated(global, "completions", |out| {
                let shell = match shell {
                    CompletionShell::Bash => clap_complete::Shell::Bash,
                    CompletionShell::Zsh => clap_complete::Shell::Zsh,
                    CompletionShell::Fish => clap_complete::Shell::Fish,
                };
                clap_complete::generate(shell, &mut Cli::command(), "mxpin", out);
                Ok(())
            }),
            Command::Man => generated(global, "man", |out| man_page(out)),
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
