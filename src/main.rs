//! The `mxpin` command: parse arguments, call the library, render results
//! and errors once, map outcomes to exit codes. What each command does is
//! decided in [`mxpin::commands`], where unit tests reach it.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory as _, Parser, Subcommand};

use mxpin::commands::{self, change::Change, Common, EXIT_ERROR};
use mxpin::fingerprint::Format;
use mxpin::probe::StartTls;
use mxpin::render::error;
use mxpin::tls::{Digest, PinKind};

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
        use commands::{change::run_change, read};
        match &cli.command {
            Command::Plan(opts) => read::run_plan(&common(opts)?).await,
            Command::Tlsa(opts) => read::run_tlsa(&common(opts)?).await,
            Command::Verify(opts) => read::run_verify(&common(opts)?).await,
            Command::Fingerprint {
                file,
                connect,
                starttls,
                digest,
                pin,
                format,
                timeout,
            } => {
                let format = commands::fingerprint::format(*format, global.json)?;
                commands::fingerprint::run_fingerprint(
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
            Command::Pin {
                name,
                add,
                replace,
                timeout,
            } => {
                let inventory = inventory_path(global)?;
                commands::pin::run_pin(&inventory, name, *add, *replace, *timeout, global.json)
                    .await
            }
            Command::Apply {
                opts,
                yes,
                no_verify,
            } => run_change(&common(opts)?, Change::apply(*yes, *no_verify)).await,
            Command::Release {
                opts,
                host,
                yes,
                dry_run,
            } => {
                // The host's name is checked before the inventory is looked for.
                let change = Change::release(host, *yes, *dry_run)?;
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
                let change =
                    Change::rotate(hosts.clone(), *compromised, *yes, *dry_run, *no_verify);
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
            Command::Man => generated(global, "man", |out| {
                mxpin::manpage::man_page(Cli::command(), EXIT_TOP, out)
            }),
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
