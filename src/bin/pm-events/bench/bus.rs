//! `pm-events bench bus`: the bus measured beside baselines in the same run.
//!
//! Every figure is events per second over the same number of events built the
//! same way (`Event::new` with a small JSON object), so the ratios compare
//! what the bus adds, not what building events costs:
//! - baseline A: the same publisher tasks send into a bounded
//!   `tokio::sync::mpsc` channel read by one task that calls a no-op handler;
//! - bus, log off: publishers `publish` into a bus without a log, one no-op handler;
//! - baseline B: one loop serializes each event with serde_json into a
//!   `BufWriter<File>` (flushed once at the end: no durability at all);
//! - bus, log on: the same with the write-ahead log (fsync `batch`), where
//!   each publish returns only after its line reached the OS.
//!
//! Then publish→handler latency at a steady rate, and peak memory during a burst.

use super::args::Args;
use super::kit::*;
use crate::cli::say;
use anyhow::{Context, Result};
use pm_events::{Config, Event, EventBus, FsyncPolicy};
use serde_json::json;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(super) async fn bus(cfg: Config, a: Args) -> Result<ExitCode> {
    let dir = bench_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let n = a.events;
    let p = a.publishers.max(1);
    say!(
        "pm-events bench bus: {n} events, {p} publisher tasks, 1 no-op handler, queue capacity {}, {} cores",
        cfg.queue_capacity,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    if a.only_pipelined {
        let rate = bus_pipelined(n, p, &cfg, &dir.join("bus-logs-pipelined")).await?;
        say!("  pipelined: {rate:.0} events/s");
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(ExitCode::SUCCESS);
    }
    if a.only_log_on || a.only_log_off {
        let log = a.only_log_on.then(|| dir.join("bus-logs"));
        let rate = bus_run(n, p, &cfg, log).await?;
        say!(
            "  bus, log {}: {rate:.0} events/s",
            if a.only_log_on { "on" } else { "off" }
        );
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(ExitCode::SUCCESS);
    }
    // Rounds of every throughput run in turn; each row reports the median of its
    // rounds, each ratio the median of the rounds' ratios (this VM's speed drifts).
    let rounds = a.rounds.max(1);
    let mut runs: [Vec<f64>; 7] = Default::default();
    let (mut off_a, mut on_b, mut on1_b, mut batch_b, mut pipe_b) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let chan = baseline_channel(n, p, cfg.queue_capacity).await;
        let off = bus_run(n, p, &cfg, None).await?;
        let file = baseline_file(n, &dir.join("baseline.jsonl"))?;
        let on = bus_run(n, p, &cfg, Some(dir.join("bus-logs"))).await?;
        let on1 = bus_run(n / 4, 1, &cfg, Some(dir.join("bus-logs-1"))).await?;
        let batched = bus_batched(n, p, &cfg, &dir.join("bus-logs-batch")).await?;
        let pipelined = bus_pipelined(n, p, &cfg, &dir.join("bus-logs-pipelined")).await?;
        say!(
            "  round {round}: A {chan:.0}, log off {off:.0} ({:.2} of A), B {file:.0}, log on {on:.0} ({:.2} of B)",
            off / chan,
            on / file
        );
        for (v, x) in runs
            .iter_mut()
            .zip([chan, off, file, on, on1, batched, pipelined])
        {
            v.push(x);
        }
        off_a.push(off / chan);
        on_b.push(on / file);
        on1_b.push(on1 / file);
        batch_b.push(batched / file);
        pipe_b.push(pipelined / file);
    }
    let [chan, off, file, on, on1, batched, pipelined] = runs.map(|mut v| median(&mut v));

    say!("  {:<46} {:>12}", "run (median of the rounds)", "events/s");
    say!(
        "  {:<46} {:>12.0}",
        "baseline A: bounded tokio mpsc channel",
        chan
    );
    say!(
        "  {:<46} {:>12.0}   ratio {:.2} of A (target >= 0.25)",
        "bus, log off",
        off,
        median(&mut off_a)
    );
    say!(
        "  {:<46} {:>12.0}",
        "baseline B: serde_json -> BufWriter<File>",
        file
    );
    say!(
        "  {:<46} {:>12.0}   ratio {:.2} of B (target >= 0.50)",
        "bus, log on (fsync batch)",
        on,
        median(&mut on_b)
    );
    say!(
        "  {:<46} {:>12.0}   ratio {:.2} of B (one publisher: one write per event)",
        "bus, log on, 1 publisher",
        on1,
        median(&mut on1_b)
    );
    say!(
        "  {:<46} {:>12.0}   ratio {:.2} of B (publish_batch of 256: one write per batch)",
        "bus, log on, publish_batch",
        batched,
        median(&mut batch_b)
    );
    say!(
        "  {:<46} {:>12.0}   ratio {:.2} of B (target >= 0.50; {IN_FLIGHT} in flight per publisher)",
        "pipelined",
        pipelined,
        median(&mut pipe_b)
    );

    let (p50, p99, p999, count) = latency(&cfg, a.rate, a.seconds, &dir.join("lat-logs")).await?;
    say!(
        "  latency publish->handler at {} events/s for {} s (log on): p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us ({count} samples)",
        a.rate,
        a.seconds,
        p50,
        p99,
        p999
    );

    let (before, peak) = burst(&cfg, a.burst, p, &dir.join("burst-logs")).await?;
    say!(
        "  burst of {} events (log on, capacity {}): RSS {:.1} MiB before, peak {:.1} MiB (+{:.1} MiB)",
        a.burst,
        cfg.queue_capacity,
        before as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        (peak.saturating_sub(before)) as f64 / 1048576.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}

/// A started bus with its log under `dir` and one no-op handler.
pub(super) async fn logged_bus(cfg: &Config, dir: &Path) -> Result<EventBus> {
    let bus = EventBus::builder()
        .queue_capacity(cfg.queue_capacity)
        .fsync(FsyncPolicy::Batch)
        .log_dir(dir)
        .build();
    bus.subscribe("bench", noop);
    bus.start().await?;
    Ok(bus)
}

/// Waits for the publisher tasks, stops the bus, checks every event was
/// handled; returns the rate since `t0`.
pub(super) async fn finish(
    bus: EventBus,
    tasks: Vec<tokio::task::JoinHandle<Result<(), pm_events::BusError>>>,
    n: u64,
    t0: Instant,
) -> Result<f64> {
    for t in tasks {
        t.await??;
    }
    bus.stop().await?;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        bus.stats().handled == n,
        "handled {} of {n} events",
        bus.stats().handled
    );
    Ok(rate)
}

/// Events each pipelined publisher keeps in flight at most.
pub(super) const IN_FLIGHT: usize = 1024;

/// The bus with its log, fed by `p` tasks with `publish_pipelined`, each
/// keeping up to [`IN_FLIGHT`] events in flight (awaiting the oldest ack when
/// the window is full).
pub(super) async fn bus_pipelined(n: u64, p: u64, cfg: &Config, dir: &Path) -> Result<f64> {
    timed_publishers(n, p, cfg, dir, |bus, range| async move {
        let mut window = std::collections::VecDeque::with_capacity(IN_FLIGHT);
        for i in range {
            if window.len() == IN_FLIGHT
                && let Some(oldest) = window.pop_front()
            {
                oldest.await?;
            }
            window.push_back(bus.publish_pipelined(make(i)).await?);
        }
        for ack in window {
            ack.await?;
        }
        Ok(())
    })
    .await
}

/// The bus with its log, fed by `p` tasks with `publish_batch` of 256 events.
pub(super) async fn bus_batched(n: u64, p: u64, cfg: &Config, dir: &Path) -> Result<f64> {
    timed_publishers(n, p, cfg, dir, |bus, range| async move {
        let mut i = range.start;
        while i < range.end {
            let end = (i + 256).min(range.end);
            bus.publish_batch((i..end).map(make)).await?;
            i = end;
        }
        Ok(())
    })
    .await
}

/// A logged bus fed by `p` tasks, task `k` running `publish` on its share of
/// `0..n`; returns the rate from the first publish to the end of `stop`.
pub(super) async fn timed_publishers<F, Fut>(
    n: u64,
    p: u64,
    cfg: &Config,
    dir: &Path,
    publish: F,
) -> Result<f64>
where
    F: Fn(EventBus, std::ops::Range<u64>) -> Fut,
    Fut: std::future::Future<Output = Result<(), pm_events::BusError>> + Send + 'static,
{
    let bus = logged_bus(cfg, dir).await?;
    let t0 = Instant::now();
    let tasks = (0..p)
        .map(|k| tokio::spawn(publish(bus.clone(), split(n, p, k))))
        .collect();
    finish(bus, tasks, n, t0).await
}

pub(super) async fn baseline_channel(n: u64, p: u64, cap: usize) -> f64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(cap);
    let t0 = Instant::now();
    let consumer = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let _ = noop(e).await;
        }
    });
    let mut tasks = Vec::new();
    for k in 0..p {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            for i in split(n, p, k) {
                if tx.send(make(i)).await.is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    for t in tasks {
        let _ = t.await;
    }
    let _ = consumer.await;
    n as f64 / t0.elapsed().as_secs_f64()
}

pub(super) fn baseline_file(n: u64, path: &Path) -> Result<f64> {
    let t0 = Instant::now();
    let f = std::fs::File::create(path)?;
    let mut w = BufWriter::new(f);
    for i in 0..n {
        serde_json::to_writer(&mut w, &make(i))?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

pub(super) async fn bus_run(n: u64, p: u64, cfg: &Config, log: Option<PathBuf>) -> Result<f64> {
    let b = EventBus::builder()
        .queue_capacity(cfg.queue_capacity)
        .fsync(FsyncPolicy::Batch);
    let bus = match log {
        Some(d) => b.log_dir(d),
        None => b.without_log(),
    }
    .build();
    bus.subscribe("bench", noop);
    bus.start().await?;
    let t0 = Instant::now();
    publish_all(&bus, n, p).await?;
    bus.stop().await?;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let s = bus.stats();
    anyhow::ensure!(s.handled == n, "handled {} of {n} events", s.handled);
    Ok(rate)
}

pub(super) async fn latency(
    cfg: &Config,
    rate: u64,
    secs: u64,
    dir: &Path,
) -> Result<(f64, f64, f64, usize)> {
    let bus = EventBus::builder()
        .queue_capacity(cfg.queue_capacity)
        .log_dir(dir)
        .build();
    let base = Instant::now();
    let total = rate * secs;
    let samples = Arc::new(Mutex::new(Vec::<u64>::with_capacity(total as usize)));
    let s2 = samples.clone();
    bus.subscribe("bench", move |e: Event| {
        let s = s2.clone();
        async move {
            let now = base.elapsed().as_nanos() as u64;
            if let Some(t) = e.data.get("t").and_then(|t| t.as_u64())
                && let Ok(mut v) = s.lock()
            {
                v.push(now.saturating_sub(t));
            }
            Ok::<(), std::convert::Infallible>(())
        }
    });
    bus.start().await?;
    let pubs = 4u64;
    let mut tasks = Vec::new();
    for _ in 0..pubs {
        let bus = bus.clone();
        let per = total / pubs;
        let r = rate as f64 / pubs as f64;
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < per {
                let due = ((start.elapsed().as_secs_f64() * r) as u64).min(per);
                while sent < due {
                    let t = base.elapsed().as_nanos() as u64;
                    bus.publish("bench", json!({"t": t})).await?;
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            Ok::<(), pm_events::BusError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    bus.stop().await?;
    let mut v = std::mem::take(&mut *samples.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    v.sort_unstable();
    let pct = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Ok((pct(0.50), pct(0.99), pct(0.999), v.len()))
}

pub(super) async fn burst(cfg: &Config, n: u64, p: u64, dir: &Path) -> Result<(u64, u64)> {
    let bus = EventBus::builder()
        .queue_capacity(cfg.queue_capacity)
        .log_dir(dir)
        .build();
    bus.subscribe("bench", noop);
    bus.start().await?;
    // Reset the high-water mark so the peak is this burst's (Linux: "5" > clear_refs).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = rss_kib("VmRSS:") * 1024;
    publish_all(&bus, n, p).await?;
    bus.stop().await?;
    let peak = rss_kib("VmHWM:") * 1024;
    Ok((before, peak.max(before)))
}
