//! `pm-events deliveries ...`: what happened to webhook deliveries, the same view as
//! `GET /api/v1/deliveries`, and sending a dead one again.

use crate::cli::say;
use crate::endpoints::{engine, wait_for};
use anyhow::Result;
use pm_events::Config;
use pm_events::app::open_endpoints;
use pm_events::timespec::parse_duration;
use pm_events::webhook::RetryError;
use pm_events::webhook::history::{self, DeliveryStatus, DeliveryView, Query};
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

/// `deliveries` subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// List deliveries, newest first.
    List {
        /// Only this endpoint's (an endpoint id, or a route variable).
        #[arg(long)]
        endpoint: Option<String>,
        /// Only those in this status.
        #[arg(long, value_parser = ["pending", "delivered", "failed", "dead"])]
        status: Option<String>,
        /// Only this event's.
        #[arg(long)]
        event_id: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one delivery with its attempts.
    Show {
        /// The delivery id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send a dead delivery again (its retry budget renewed) and wait for it.
    Retry {
        /// The delivery id.
        id: String,
        /// How long to wait.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        wait: Duration,
    },
}

fn line(v: &DeliveryView) -> String {
    format!(
        "{}  {:<9} {:<14} {:<36} attempts {}  {}",
        v.id,
        json!(v.status).as_str().unwrap_or(""),
        v.event_type,
        v.endpoint_id,
        v.attempts,
        v.last_error.as_deref().unwrap_or("-")
    )
}

/// Runs a `deliveries` subcommand.
pub async fn run(cfg: Config, cmd: Cmd) -> Result<ExitCode> {
    let eps = open_endpoints(&cfg).await?;
    let engine = engine(&cfg, &eps).await?;
    match cmd {
        Cmd::List {
            endpoint,
            status,
            event_id,
            limit,
            json,
        } => {
            let q = Query {
                endpoint_id: endpoint,
                event_id,
                status: status.as_deref().and_then(DeliveryStatus::parse),
                limit: Some(usize::from(limit)),
                cursor: None,
            };
            let (rows, next) = history::list(engine.outbox(), &cfg.log_dir, &q)?;
            for v in &rows {
                if json {
                    say!("{}", serde_json::to_string(v)?);
                } else {
                    say!("{}", line(v));
                }
            }
            if !json {
                eprintln!(
                    "{} deliver{}{}",
                    rows.len(),
                    if rows.len() == 1 { "y" } else { "ies" },
                    if next.is_some() {
                        " (more: raise --limit)"
                    } else {
                        ""
                    }
                );
            }
        }
        Cmd::Show { id, json } => {
            let (v, attempts) = history::get(engine.outbox(), &cfg.log_dir, &id)?
                .ok_or_else(|| anyhow::anyhow!("no delivery {id}"))?;
            if json {
                let mut out = json!(v);
                if let Some(m) = out.as_object_mut() {
                    m.insert("attempt_log".into(), json!(attempts));
                }
                say!("{}", serde_json::to_string(&out)?);
            } else {
                say!("{}", line(&v));
                say!("  url {}  queued {}", v.url, v.created_at);
                for a in &attempts {
                    say!(
                        "  #{} {} {:<9} {} {:.1} ms{}",
                        a.attempt,
                        a.timestamp,
                        a.outcome,
                        a.status
                            .map(|s| format!("HTTP {s}"))
                            .or_else(|| a.error.clone())
                            .unwrap_or_default(),
                        a.duration_ms,
                        a.response
                            .as_deref()
                            .filter(|r| !r.is_empty())
                            .map(|r| format!("  answer: {}", r.replace('\n', " ")))
                            .unwrap_or_default()
                    );
                }
            }
        }
        Cmd::Retry { id, wait } => {
            // An unknown or pending id is not a usage error: the command was
            // well formed, the delivery is not there to retry (exit 1).
            let r = engine.retry(&id).await.map_err(|e| match e {
                RetryError::Outbox(e) => anyhow::Error::from(e),
                other => anyhow::anyhow!(other.to_string()),
            })?;
            return wait_for(&engine, &[r.id], wait).await;
        }
    }
    engine.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
