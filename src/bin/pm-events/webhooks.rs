//! `pm-events webhooks ...`: sign and verify by hand, inspect and drive the outbox.

use crate::cli::{UsageError, say};
use anyhow::{Context, Result};
use pm_events::Config;
use pm_events::event::now_unix;
use pm_events::timespec::parse_duration;
use pm_events::webhook::outbox::DeliveryState;
use pm_events::webhook::sign::{Signer, verify_hex_signature, verify_standard};
use pm_events::webhook::{DeliveryConfig, WebhookEngine};
use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

/// `webhooks` subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Print the signature headers pm-events would send for the body on stdin
    /// (secret from WEBHOOK_SIGNATURE_SECRET).
    Sign {
        /// The webhook-id (default: a new UUID).
        #[arg(long)]
        id: Option<String>,
        /// The webhook-timestamp in Unix seconds (default: now).
        #[arg(long)]
        timestamp: Option<i64>,
    },
    /// Check a signature of the body on stdin: exit 0 when valid, 1 with the reason when not.
    /// Standard Webhooks with --id and --timestamp, the specification's sha256= form otherwise.
    Verify {
        /// The signature: `sha256=<hex>`, or `v1,<base64>` (several, space-separated).
        #[arg(long)]
        signature: String,
        /// The webhook-id header.
        #[arg(long, requires = "timestamp")]
        id: Option<String>,
        /// The webhook-timestamp header.
        #[arg(long, requires = "id")]
        timestamp: Option<String>,
        /// Accepted distance between the timestamp and now (e.g. 5m).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        tolerance: Duration,
    },
    /// List the deliveries in the outbox (pending, or dead letters with --dead).
    List {
        /// Show dead letters instead of pending deliveries.
        #[arg(long)]
        dead: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters again (retry budget renewed) and wait for them.
    Redeliver {
        /// Only the deliveries of this event.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        event_id: Option<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// How long to wait for them.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        wait: Duration,
    },
    /// Deliver every pending delivery of the outbox now, and wait until none is left.
    Deliver {
        /// How long to wait.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        wait: Duration,
    },
}

fn stdin_body() -> Result<Vec<u8>> {
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .context("read the body from stdin")?;
    Ok(body)
}

/// Runs a `webhooks` subcommand.
pub async fn run(cfg: Config, cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Sign { id, timestamp } => {
            let secret = cfg
                .webhook_secrets
                .first()
                .ok_or_else(|| UsageError("WEBHOOK_SIGNATURE_SECRET is not set".into()))?;
            let signer = Signer::new(secret).map_err(|e| UsageError(e.to_string()))?;
            let body = stdin_body()?;
            let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let ts = timestamp.unwrap_or_else(|| now_unix().floor() as i64);
            for (k, v) in signer.headers(&id, ts, &body) {
                say!("{k}: {v}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify {
            signature,
            id,
            timestamp,
            tolerance,
        } => {
            if cfg.webhook_secrets.is_empty() {
                return Err(UsageError("WEBHOOK_SIGNATURE_SECRET is not set".into()).into());
            }
            if id.is_none() && signature.trim_start().starts_with("v1,") {
                return Err(UsageError(
                    "a Standard Webhooks signature (v1,...) is checked with its headers: give --id (webhook-id) and --timestamp (webhook-timestamp)".into(),
                )
                .into());
            }
            let body = stdin_body()?;
            let result = match (id, timestamp) {
                (Some(id), Some(ts)) => verify_standard(
                    &cfg.webhook_secrets,
                    &id,
                    &ts,
                    &body,
                    &signature,
                    now_unix().floor() as i64,
                    tolerance,
                ),
                _ => verify_hex_signature(&cfg.webhook_secrets, &body, &signature),
            };
            match result {
                Ok(()) => {
                    say!("valid");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("invalid: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Cmd::List { dead, json } => {
            let engine =
                WebhookEngine::open(DeliveryConfig::from_config(&cfg), &cfg.webhook_secrets)?;
            let state = if dead {
                DeliveryState::Dead
            } else {
                DeliveryState::Pending
            };
            let rows = engine.outbox().list(state)?;
            for r in &rows {
                if json {
                    say!("{}", serde_json::to_string(r)?);
                } else {
                    let next = if dead {
                        String::new()
                    } else {
                        chrono::DateTime::from_timestamp_millis((r.next_at * 1000.0) as i64)
                            .map(|d| {
                                format!(
                                    "  next {}",
                                    d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                                )
                            })
                            .unwrap_or_default()
                    };
                    say!(
                        "{}  {:<14} {}  attempts {}{next}  {}",
                        r.id.get(..8).unwrap_or(&r.id),
                        r.event_type,
                        pm_events::webhook::delivery::redact_url(&r.url),
                        r.attempt,
                        r.last_error.as_deref().unwrap_or("-")
                    );
                }
            }
            if !json {
                eprintln!(
                    "{} {} deliver{}",
                    rows.len(),
                    if dead { "dead" } else { "pending" },
                    if rows.len() == 1 { "y" } else { "ies" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Redeliver {
            event_id,
            all: _,
            wait,
        } => {
            let engine = owner(&cfg).await?;
            let ids: Vec<String> = engine
                .outbox()
                .list(DeliveryState::Dead)?
                .into_iter()
                .filter(|r| event_id.as_deref().is_none_or(|e| r.event_id == e))
                .map(|r| r.id)
                .collect();
            let n = engine.redeliver(event_id.as_deref()).await?;
            engine.start()?;
            let o = engine.wait(&ids, wait).await?;
            engine.shutdown().await;
            eprintln!(
                "{n} dead letter(s) sent again: {} delivered, {} failed again, {} still pending (retried later; `pm-events webhooks list`)",
                o.delivered, o.dead, o.pending
            );
            Ok(if o.dead == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Deliver { wait } => {
            let engine = owner(&cfg).await?;
            engine.outbox().make_due(now_unix()).await?;
            let ids: Vec<String> = engine
                .outbox()
                .list(DeliveryState::Pending)?
                .into_iter()
                .map(|r| r.id)
                .collect();
            engine.start()?;
            let o = engine.wait(&ids, wait).await?;
            engine.shutdown().await;
            eprintln!(
                "{} pending: {} delivered, {} failed for good, {} still pending (retried later; `pm-events webhooks list`)",
                ids.len(),
                o.delivered,
                o.dead,
                o.pending
            );
            // As for `publish --wait`: still pending is not a failure (the outbox
            // retries it); failed for good is.
            Ok(if o.dead == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// The engine, which must be the one delivering for this log directory (managed
/// endpoints attached, so their deliveries go out too).
async fn owner(cfg: &Config) -> Result<WebhookEngine> {
    let eps = pm_events::app::open_endpoints(cfg).await?;
    let engine = crate::endpoints::engine(cfg, &eps).await?;
    if !engine.is_owner() {
        anyhow::bail!(
            "another pm-events process delivers the webhooks of {}; it resumes pending deliveries by itself",
            cfg.log_dir.display()
        );
    }
    Ok(engine)
}
