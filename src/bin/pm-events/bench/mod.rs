//! `pm-events bench`: each figure beside a baseline run in the same process
//! (docs/performance.md) — `bus` ([`bus`]), `webhooks` ([`webhooks`]),
//! `serve` ([`serve`]) and `recovery` ([`recovery`]).

use anyhow::Result;
use pm_events::Config;
use std::process::ExitCode;
mod args;
mod bus;
mod kit;
mod recovery;
mod serve;
mod webhooks;

pub use args::Args;
use args::What;

/// Runs the benchmark.
pub async fn run(cfg: Config, args: Args) -> Result<ExitCode> {
    match args.what {
        What::Bus => bus::bus(cfg, args).await,
        What::Webhooks => webhooks::run(cfg, args).await,
        What::Serve => serve::serve(cfg, args).await,
        What::Recovery => {
            recovery::run(args.events, &args.handled).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
