//! The commands' side of a running system: opening it (`pm_events::app` makes
//! it; this maps its errors to exit codes), stopping it with one line on
//! stderr about the deliveries, and the signals that end a command.

use anyhow::Result;
use pm_events::Config;
use pm_events::app::{App, AppError};
use pm_events::webhook::WaitOutcome;
use std::time::Duration;

/// The library's error, with settings that cannot work together as a usage error (exit 2).
fn usage(e: AppError) -> anyhow::Error {
    match e {
        AppError::Usage(m) => crate::cli::UsageError(m).into(),
        other => other.into(),
    }
}

/// The system of a one-shot command (`publish`, `watch`); with `always_webhooks`
/// (the demo) the delivery engine opens even with no route yet.
pub async fn open(cfg: &Config, always_webhooks: bool) -> Result<App> {
    let b = App::builder(cfg);
    let b = if always_webhooks {
        b.always_webhooks()
    } else {
        b
    };
    b.build().await.map_err(usage)
}

/// The system of `serve`.
pub async fn open_server(cfg: &Config) -> Result<App> {
    App::builder(cfg).server().build().await.map_err(usage)
}

/// The system of `replay`: no event log (the events are in it already).
pub async fn open_replay(cfg: &Config) -> Result<App> {
    App::builder(cfg).without_log().build().await.map_err(usage)
}

/// Stops `app` ([`App::stop`]) and says on stderr what became of the deliveries
/// that are not this run's to wait for; the outcome of those that are.
pub async fn stop(app: App, wait: Duration) -> Result<Option<WaitOutcome>> {
    let r = app.stop(wait).await?;
    if r.handed_off > 0 {
        eprintln!(
            "webhooks: {} queued in the JetStream work queue {} (delivered by whichever node takes them)",
            r.handed_off,
            pm_events::webhook::jetstream::STREAM
        );
    }
    if r.repeats > 0 {
        eprintln!(
            "webhooks: {} not sent again (the endpoint has that event's delivery already; `pm-events deliveries retry ID` sends one again)",
            r.repeats
        );
    }
    Ok(r.outcome)
}

/// One line about what became of the deliveries, on stderr.
pub fn report(outcome: Option<WaitOutcome>, log_dir: &std::path::Path) -> bool {
    let Some(o) = outcome else { return true };
    let mut msg = format!("webhooks: {} delivered", o.delivered);
    if o.dead > 0 {
        msg.push_str(&format!(
            ", {} failed for good (see {}; `pm-events webhooks redeliver --all`)",
            o.dead,
            log_dir.join("webhooks/dead_letters.jsonl").display()
        ));
    }
    if o.pending > 0 {
        msg.push_str(&format!(
            ", {} still pending in the outbox (delivered on the next start, or by `pm-events webhooks deliver`)",
            o.pending
        ));
    }
    eprintln!("{msg}");
    o.dead == 0
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// A short human summary of an event's data, by type.
pub fn describe(e: &pm_events::Event) -> String {
    let d = &e.data;
    let s = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
    match e.event_type.as_str() {
        "file_change" => format!("{} {}", s("change_type"), s("file_path")),
        "report_ready" => format!(
            "{} {} ({}) {}",
            s("report_type"),
            s("report_id"),
            s("report_format"),
            s("report_path")
        ),
        "risk_alert" => format!(
            "{} {} {}: {}",
            s("severity"),
            s("risk_type"),
            s("alert_id"),
            s("title")
        ),
        "risk_escalated" => format!("{} escalated to {}", s("alert_id"), s("escalated_to")),
        _ => {
            let text = d.to_string();
            if text.chars().count() > 100 {
                format!("{}…", text.chars().take(100).collect::<String>())
            } else {
                text
            }
        }
    }
}
