//! `pm-events bench recovery`: what crash recovery costs.
//!
//! - **Re-dispatch**: a log of `--events` events that no run recorded as done
//!   (as a crash leaves them) is dispatched again by a starting bus, one no-op
//!   handler; against the live rate of the same events published with
//!   `publish_batch` (log on) through the same bus, in the same run.
//! - **Start-up**: `start` on a log of many handled events (the checkpoint at its
//!   end, as a clean stop leaves it), for each size of `--handled`; the time
//!   should not depend on the size.

use crate::cli::say;
use anyhow::{Context, Result};
use pm_events::{Event, EventBus};
use serde_json::json;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Writes `n` events to today's log file under `dir` (no done ledger: all unhandled).
fn write_log(dir: &Path, n: u64) -> Result<()> {
    let path = pm_events::journal::day_path(dir, pm_events::journal::today());
    std::fs::create_dir_all(path.parent().context("log path")?)?;
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    for i in 0..n {
        let e = Event::new("bench", json!({"i": i, "file_path": "/tmp/bench.txt"}));
        serde_json::to_writer(&mut w, &e)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

/// A bus on `dir` with one counting no-op handler.
fn counting_bus(dir: &Path) -> (EventBus, Arc<AtomicU64>) {
    let bus = EventBus::builder().log_dir(dir).build();
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    bus.subscribe("bench", move |_e: Event| {
        s.fetch_add(1, Ordering::Relaxed);
        async { Ok::<(), std::convert::Infallible>(()) }
    });
    (bus, seen)
}

async fn until(seen: &AtomicU64, n: u64) {
    while seen.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs `bench recovery`.
pub async fn run(events: u64, handled: &[u64]) -> Result<()> {
    let root =
        std::env::temp_dir().join(format!("pm-events-bench-recovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    say!(
        "pm-events bench recovery: re-dispatch of {events} unhandled events; start-up on handled logs of {handled:?} events"
    );

    // Live: the same number of events published with publish_batch, log on.
    let live_dir = root.join("live");
    let (bus, seen) = counting_bus(&live_dir);
    bus.start().await?;
    let t = Instant::now();
    let mut i = 0;
    while i < events {
        let end = (i + 256).min(events);
        bus.publish_batch(
            (i..end).map(|i| Event::new("bench", json!({"i": i, "file_path": "/tmp/bench.txt"}))),
        )
        .await?;
        i = end;
    }
    until(&seen, events).await;
    let live = events as f64 / t.elapsed().as_secs_f64();
    bus.stop().await?;

    // Re-dispatch: the log as a crash leaves it, then a start.
    let crash_dir = root.join("crashed");
    write_log(&crash_dir, events)?;
    let (bus, seen) = counting_bus(&crash_dir);
    let t = Instant::now();
    bus.start().await?;
    until(&seen, events).await;
    let redispatch = events as f64 / t.elapsed().as_secs_f64();
    bus.stop().await?;
    let st = bus.stats();
    say!(
        "  {:<52}{:>10.0} events/s",
        "live: publish_batch of 256, log on",
        live
    );
    say!(
        "  {:<52}{:>10.0} events/s   ratio {:.2} of live (target >= 0.50); {} redelivered",
        "re-dispatch after a crash",
        redispatch,
        redispatch / live,
        st.redelivered
    );

    // Start-up on handled logs: a clean stop leaves the checkpoint at the end.
    for &n in handled {
        let dir = root.join(format!("handled-{n}"));
        write_log(&dir, n)?;
        let (bus, _seen) = counting_bus(&dir);
        bus.start().await?; // no checkpoint yet: recovers everything once
        until(&_seen, n).await;
        bus.stop().await?;
        let (bus, seen) = counting_bus(&dir);
        let t = Instant::now();
        bus.start().await?;
        let started = t.elapsed();
        bus.stop().await?;
        let size = std::fs::metadata(pm_events::journal::day_path(
            &dir,
            pm_events::journal::today(),
        ))?
        .len();
        say!(
            "  {:<52}{:>10.1} ms   ({} MB of log; {} events re-dispatched)",
            format!("start-up on a log of {n} handled events"),
            started.as_secs_f64() * 1e3,
            size / 1_000_000,
            seen.load(Ordering::Relaxed)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
