//! `pm-events publish TYPE JSON`: publish one event in-process.

use crate::app::{App, parse_duration, report};
use crate::{UsageError, say};
use anyhow::Result;
use pm_events::{Config, Event};
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `publish`.
#[derive(clap::Args)]
pub struct Args {
    /// The event type (letters, digits, '_' and '-').
    #[arg(value_name = "TYPE")]
    event_type: String,
    /// The event data: a JSON object.
    #[arg(value_name = "JSON")]
    json: String,
    /// The event source (default "personal-manager").
    #[arg(long)]
    source: Option<String>,
    /// How long to wait for the webhook deliveries the event causes (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    wait: Duration,
}

/// Parses the arguments into an event, or a usage error naming what is wrong.
pub fn build_event(
    event_type: &str,
    json: &str,
    source: Option<&str>,
) -> Result<Event, UsageError> {
    pm_events::event::validate_type(event_type)
        .map_err(|m| UsageError(format!("invalid TYPE: {m}")))?;
    let data: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| UsageError(format!("invalid JSON for the event data: {e}")))?;
    if !data.is_object() {
        return Err(UsageError(format!(
            "the event data must be a JSON object, got {}",
            pm_events::event::json_kind(&data)
        )));
    }
    let mut event = Event::new(event_type, data);
    if let Some(s) = source {
        event = event.with_source(s);
    }
    event.validate().map_err(UsageError)?;
    Ok(event)
}

/// Runs `publish`.
pub async fn run(cfg: Config, args: Args) -> Result<ExitCode> {
    let event = build_event(&args.event_type, &args.json, args.source.as_deref())?;
    let app = App::open(&cfg, false)?;
    app.bus.start().await?;
    let published = app.bus.publish_event(event).await;
    let bus = app.bus.clone();
    let outcome = app.stop(args.wait).await?;
    let id = published?;
    say!("{id}");
    let delivered = report(outcome);
    let failed = bus.stats().failed + bus.stats().panicked + bus.stats().timed_out;
    if failed > 0 {
        eprintln!("pm-events: {failed} handler run(s) failed (see the messages above)");
    }
    Ok(if delivered && failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
