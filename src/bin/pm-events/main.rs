//! `pm-events`: the command-line face of the pm-events library.
//!
//! It parses arguments, reads the configuration, and calls the library; every
//! subcommand lives in its own module. Exit codes: 0 success, 1 runtime
//! failure, 2 usage or configuration error.

mod app;
mod bench;
mod cli;
mod deliveries;
mod demo;
mod endpoints;
mod logs;
mod publish;
mod receiver;
mod serve;
mod watch;
mod webhooks;

use anyhow::Result;
use clap::{Parser, Subcommand};
use cli::UsageError;
use pm_events::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// pm-events: the Personal Manager event bus, event log and webhooks.
#[derive(Parser)]
#[command(name = "pm-events", version, about, propagate_version = true)]
struct Cli {
    /// Root of the log files and durable state (overrides PM_LOG_DIR; default ./logs).
    #[arg(long, global = true, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demonstration: publish the specification's example events and show them handled.
    Demo,
    /// Publish events: one (TYPE JSON) or JSON Lines from stdin (-), in-process or to a server (--url).
    #[command(after_long_help = publish::BUILTIN_PAYLOADS)]
    Publish(publish::Args),
    /// Watch directories and publish file_change events for what changes in them.
    Watch(watch::Args),
    /// Run the HTTP server: incoming webhooks, POST /events, health, metrics.
    Serve(serve::Args),
    /// Print logged events, one readable line each (--follow for new ones).
    Tail(logs::TailArgs),
    /// Send logged events through the handlers again.
    #[command(after_long_help = "\
Side effects: replayed events run the built-in handlers again, with their original ids.
Each writes its handler log line again; report_ready rewrites the .meta.json sidecar and
e-mails the report again (unless --no-mail); every routed event sends its webhook again
with the same webhook-id (unless --no-webhooks), and a managed endpoint that has no delivery
of the event yet (one added since) gets one, while one that has gets none; risk_alert updates the dashboard and may
publish risk_escalated again. Nothing is written to the event log a second time.
--dry-run lists what would be replayed and does nothing.")]
    Replay(logs::ReplayArgs),
    /// Counts by type and day, webhook outcomes and open risks, from the logs.
    Stats(logs::StatsArgs),
    /// Webhook endpoints: add, list, show, update, enable, disable, rotate-secret, remove, test.
    #[command(subcommand)]
    Endpoints(endpoints::Cmd),
    /// Webhook deliveries: list, show one with its attempts, retry a dead one.
    #[command(subcommand)]
    Deliveries(deliveries::Cmd),
    /// Outgoing webhooks: sign and verify by hand, list, deliver and redeliver.
    #[command(subcommand)]
    Webhooks(webhooks::Cmd),
    /// Measure the bus, webhook delivery or the server against baselines run in the same process.
    Bench(bench::Args),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo refuses some events on purpose and reports every outcome itself:
    // the handlers' own refusal lines would read as failures there.
    let long_running = matches!(cli.command, Command::Serve(_) | Command::Watch(_));
    init_tracing(
        if matches!(cli.command, Command::Demo) {
            "pm_events=warn,pm_events::bus::dispatch=off,pm_events::handlers=off"
        } else {
            "pm_events=warn"
        },
        long_running,
    );
    // TLS for every HTTP client: rustls with the ring provider (no C toolchain needed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pm-events: {e:#}");
            if e.downcast_ref::<UsageError>().is_some()
                || e.downcast_ref::<pm_events::ConfigError>().is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Diagnostics on stderr: `RUST_LOG` when set, else `default`. A server's
/// lines carry their time and module; a one-shot command's are one short
/// line each (`pm-events: ERROR handler failed …`).
fn init_tracing(default: &str, long_running: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if long_running {
        fmt.init();
    } else {
        fmt.without_time().with_target(false).init();
    }
}

fn config(cli_log_dir: Option<PathBuf>) -> Result<Config> {
    let mut c = Config::from_env()?;
    if let Some(d) = cli_log_dir {
        c.log_dir = d;
    }
    Ok(c)
}

fn run(cli: Cli) -> Result<ExitCode> {
    // The demo runs in a log directory of its own each time, unless one is chosen.
    let chosen_log_dir =
        cli.log_dir.is_some() || std::env::var_os("PM_LOG_DIR").is_some_and(|v| !v.is_empty());
    let cfg = config(cli.log_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; flushed when dropped,
    // after the runtime has run the command.
    let _telemetry = pm_events::telemetry::init_from_env()?;
    rt.block_on(async move {
        match cli.command {
            Command::Demo => demo::run(cfg, chosen_log_dir).await,
            Command::Publish(args) => publish::run(cfg, args).await,
            Command::Serve(args) => serve::run(cfg, args).await,
            Command::Tail(args) => logs::tail(cfg, args).await,
            Command::Replay(args) => logs::replay(cfg, args).await,
            Command::Stats(args) => logs::stats(cfg, args).await,
            Command::Completions { shell } => {
                // Made in memory, then written: a reader that stops early
                // (`| head`) ends the output quietly.
                let mut cmd = <Cli as clap::CommandFactory>::command();
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut cmd, "pm-events", &mut script);
                let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), &script);
                Ok(ExitCode::SUCCESS)
            }
            Command::Watch(args) => watch::run(cfg, args).await,
            Command::Webhooks(cmd) => webhooks::run(cfg, cmd).await,
            Command::Endpoints(cmd) => endpoints::run(cfg, cmd).await,
            Command::Deliveries(cmd) => deliveries::run(cfg, cmd).await,
            Command::Bench(args) => bench::run(cfg, args).await,
        }
    })
}

/// mimalloc: the bus allocates and frees small objects across threads all the
/// time; glibc malloc spent a quarter of the benchmark's CPU on that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
