//! `tail`, `replay` and `stats`: the commands that read the logs.

use crate::app::{describe, report, shutdown_signal};
use crate::cli::{UsageError, say};
use anyhow::{Context as _, Result};
use chrono::{DateTime, TimeZone, Utc};
use pm_events::event::now_unix;
use pm_events::timespec::parse_duration;
use pm_events::{Config, Event, journal, jsonl};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// A point in time: a duration ago (`90m`, `2h`, `7d`), a date (`2025-01-15`, UTC
/// midnight), or an RFC 3339 time.
pub fn parse_when(s: &str) -> Result<f64, pm_events::timespec::TimeError> {
    pm_events::timespec::parse_when(s, now_unix())
}

fn rfc3339(t: f64) -> String {
    DateTime::<Utc>::from_timestamp_micros((t * 1e6) as i64)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// The fields of a handler log line that `tail` shows.
#[derive(serde::Deserialize)]
struct HandlerLine {
    event_id: Option<String>,
    status: Option<String>,
}

/// The field of an attempt log line that `stats` counts.
#[derive(serde::Deserialize)]
struct AttemptOutcome {
    outcome: Option<String>,
}

/// Handler outcome per event id, from the three handler logs.
fn handler_status(log_dir: &Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (_, rel) in pm_events::handlers::HANDLER_LOGS {
        for l in jsonl::iter_rotated::<HandlerLine>(&log_dir.join(rel)) {
            if let (Some(id), Some(st)) = (l.event_id, l.status) {
                out.insert(id, st);
            }
        }
    }
    out
}

fn print_event(e: &Event, as_json: bool, status: Option<&str>, color: bool) {
    if as_json {
        say!("{}", e.to_json());
        return;
    }
    let st = match (status, color) {
        (Some("invalid"), true) => " \x1b[31m[invalid]\x1b[0m".to_string(),
        (Some(s), _) => format!(" [{s}]"),
        (None, _) => String::new(),
    };
    let ty = if color {
        format!("\x1b[1m{:<14}\x1b[0m", e.event_type)
    } else {
        format!("{:<14}", e.event_type)
    };
    say!(
        "{}  {ty} {}  {}{st}",
        rfc3339(e.timestamp),
        &e.event_id[..8.min(e.event_id.len())],
        describe(e)
    );
}

/// Arguments of `tail`.
#[derive(clap::Args)]
pub struct TailArgs {
    /// Only events of this type.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// From this time: a duration ago (30m, 2h, 7d), a date (2025-01-15) or RFC 3339 (default: today).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    since: Option<f64>,
    /// Keep printing new events as they are logged (across midnight), until Ctrl-C.
    #[arg(long, short = 'f')]
    follow: bool,
    /// One JSON object per line (the event as logged).
    #[arg(long)]
    json: bool,
}

/// Runs `tail`.
/// Whether `cfg.log_dir` holds an event log; when it does not, says so and
/// where the log directory is set (a typo in `--log-dir` otherwise reads as
/// "nothing happened").
fn has_event_log(cfg: &Config) -> bool {
    let events = cfg.log_dir.join("events");
    if events.is_dir() {
        return true;
    }
    eprintln!(
        "pm-events: no event log in {} (the log directory is --log-dir or PM_LOG_DIR, default ./logs)",
        events.display()
    );
    false
}

pub async fn tail(cfg: Config, a: TailArgs) -> Result<ExitCode> {
    if !has_event_log(&cfg) && !a.follow {
        return Ok(ExitCode::from(1));
    }
    let since = a.since.unwrap_or_else(|| {
        journal::today()
            .and_hms_opt(0, 0, 0)
            .map(|n| Utc.from_utc_datetime(&n).timestamp() as f64)
            .unwrap_or(0.0)
    });
    let color = !a.json && std::io::stdout().is_terminal();
    let wanted = |e: &Event| a.event_type.as_deref().is_none_or(|t| e.event_type == t);
    let status = handler_status(&cfg.log_dir);
    for e in journal::iter_range(&cfg.log_dir, since, f64::MAX) {
        let e = e?;
        if !wanted(&e) {
            continue;
        }
        print_event(
            &e,
            a.json,
            status.get(&e.event_id).map(String::as_str),
            color,
        );
    }
    if !a.follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Follow: react to changes in the events directory (notify), read what was appended
    // to today's file, switch files at UTC midnight.
    let dir = cfg.log_dir.join("events");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = tx.send(());
    })
    .context("start the file watcher")?;
    notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watch {}", dir.display()))?;
    let mut day = journal::today();
    let mut pos = std::fs::metadata(journal::day_path(&cfg.log_dir, day))
        .map(|m| m.len())
        .unwrap_or(0);
    let mut partial = String::new();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = rx.recv() => {}
            // Also look once a second: a missed notification costs at most that.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        loop {
            let path = journal::day_path(&cfg.log_dir, day);
            if let Ok(mut f) = std::fs::File::open(&path) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if len > pos {
                    f.seek(SeekFrom::Start(pos))?;
                    let mut buf = String::new();
                    f.take(len - pos).read_to_string(&mut buf)?;
                    pos = len;
                    partial.push_str(&buf);
                    // Only whole lines; a line being written stays for the next read.
                    while let Some(i) = partial.find('\n') {
                        let line: String = partial.drain(..=i).collect();
                        if let Ok(e) = serde_json::from_str::<Event>(line.trim_end())
                            && wanted(&e)
                            && e.timestamp >= since
                        {
                            print_event(&e, a.json, None, color);
                        }
                    }
                }
            }
            let today = journal::today();
            if today > day {
                // Midnight: finish the old file (done above), then read the new one.
                day = today;
                pos = 0;
                partial.clear();
                continue;
            }
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// From this time (a duration ago, a date, or RFC 3339).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    since: f64,
    /// Until this time, excluded (default: now).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    until: Option<f64>,
    /// Only events of this type.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// List what would be replayed; dispatch nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not send webhooks for the replayed events.
    #[arg(long)]
    no_webhooks: bool,
    /// Do not e-mail replayed reports to their recipients again.
    #[arg(long)]
    no_mail: bool,
    /// How long to wait for the webhook deliveries.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    wait: Duration,
}

/// Runs `replay`: the selected events go through the handlers again, with their
/// original ids and timestamps, and are not written to the event log a second time.
pub async fn replay(mut cfg: Config, a: ReplayArgs) -> Result<ExitCode> {
    let until = a.until.unwrap_or_else(now_unix);
    if a.until.is_none() && a.since >= until {
        return Err(
            UsageError("--since is in the future: nothing was logged after it yet".into()).into(),
        );
    }
    if until <= a.since {
        return Err(UsageError("--until must be after --since".into()).into());
    }
    if !has_event_log(&cfg) {
        return Ok(ExitCode::from(1));
    }
    // The log is read as it is replayed (a range may hold more events than fit
    // in memory): a first pass counts them for the progress bar, or lists them
    // for a dry run.
    let selected = || {
        journal::iter_range(&cfg.log_dir, a.since, until).filter(|e| {
            e.as_ref().map_or(true, |e| {
                a.event_type.as_deref().is_none_or(|t| e.event_type == t)
            })
        })
    };
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    let mut count = 0usize;
    for e in selected() {
        let e = e?;
        count += 1;
        if a.dry_run {
            print_event(&e, false, None, false);
            *by_type.entry(e.event_type).or_default() += 1;
        }
    }
    if a.dry_run {
        say!("dry run: {count} event(s) would be replayed {by_type:?}");
        return Ok(ExitCode::SUCCESS);
    }
    if a.no_webhooks {
        cfg.webhook_urls.clear();
    }
    if a.no_mail {
        cfg.report_auto_distribute = false;
    }
    let app = crate::app::open_replay(&cfg).await?;
    app.bus.start().await?;
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(count as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "replaying {bar:40} {pos}/{len} {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    // Events are replayed as they are read; those logged after the count (with a
    // timestamp before `until`) are replayed too, and counted in the summary.
    // Up to 1,024 events in flight (pipelined publishes, accepted in batches).
    let mut replayed = 0usize;
    let mut in_flight = std::collections::VecDeque::with_capacity(1024);
    for e in selected() {
        let e = e?;
        *by_type.entry(e.event_type.clone()).or_default() += 1;
        in_flight.push_back(app.bus.publish_pipelined(e).await?);
        if in_flight.len() >= 1024
            && let Some(oldest) = in_flight.pop_front()
        {
            oldest.await?;
        }
        replayed += 1;
        bar.inc(1);
    }
    for ack in in_flight {
        ack.await?;
    }
    bar.finish_and_clear();
    let bus = app.bus.clone();
    let log_dir = app.log_dir.clone();
    let outcome = crate::app::stop(app, a.wait).await?;
    let st = bus.stats();
    say!(
        "replayed {} event(s) {:?}: {} handler run(s) ok, {} refused or failed",
        replayed,
        by_type,
        st.handled,
        st.failed + st.panicked + st.timed_out
    );
    let ok = report(outcome, &log_dir);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Arguments of `stats`.
#[derive(clap::Args)]
pub struct StatsArgs {
    /// One JSON document.
    #[arg(long)]
    json: bool,
}

/// Runs `stats`: counts by type and day, webhook outcomes, open risks — from the logs.
pub async fn stats(cfg: Config, a: StatsArgs) -> Result<ExitCode> {
    if !has_event_log(&cfg) {
        return Ok(ExitCode::from(1));
    }
    let mut by_day: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for day in journal::days(&cfg.log_dir) {
        let counts = by_day
            .entry(day.format("%Y-%m-%d").to_string())
            .or_default();
        for e in journal::iter_day(&cfg.log_dir, day)? {
            *counts.entry(e.event_type).or_default() += 1;
        }
    }
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for l in
        jsonl::iter_rotated::<AttemptOutcome>(&cfg.log_dir.join("webhooks/webhook_attempts.jsonl"))
    {
        *outcomes
            .entry(l.outcome.unwrap_or_else(|| "?".into()))
            .or_default() += 1;
    }
    let dashboard: Value = std::fs::read(cfg.log_dir.join("risk_alerts/dashboard.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let open = dashboard["open_alerts"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    let doc = json!({
        "events_by_day": by_day,
        "webhook_attempts_by_outcome": outcomes,
        "open_risks": {"total": open, "by_severity": dashboard["counts_by_severity"], "highest_risk_score": dashboard["highest_risk_score"]},
    });
    if a.json {
        say!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "events by day and type ({}):",
        cfg.log_dir.join("events").display()
    );
    for (day, counts) in &by_day {
        let total: u64 = counts.values().sum();
        let list: Vec<String> = counts.iter().map(|(t, n)| format!("{t} {n}")).collect();
        say!("  {day}  {total:>7}  {}", list.join(", "));
    }
    say!("webhook attempts by outcome:");
    if outcomes.is_empty() {
        say!("  none");
    }
    for (o, n) in &outcomes {
        say!("  {o:<10} {n}");
    }
    say!(
        "open risks: {open} {}",
        if open > 0 {
            dashboard["counts_by_severity"].to_string()
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}
