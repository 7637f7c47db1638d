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

use crate::say;
use anyhow::{Context, Result};
use pm_events::{Config, Event, EventBus, FsyncPolicy};
use serde_json::json;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum, default_value = "bus")]
    what: What,
    /// Events per throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) events: u64,
    /// Concurrent publisher tasks (the baselines use the same number of senders).
    #[arg(long, default_value_t = 8)]
    pub(crate) publishers: u64,
    /// Rate of the latency run, events per second.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) rate: u64,
    /// Length of the latency run, seconds.
    #[arg(long, default_value_t = 3)]
    pub(crate) seconds: u64,
    /// Events of the memory burst.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) burst: u64,
    /// Webhook deliveries per run (`bench webhooks`).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) deliveries: u64,
    /// Concurrent requests (`bench webhooks`): the engine's per-endpoint bound and the baseline's.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Rounds of the throughput runs (`bench bus`, `bench webhooks`: every run in
    /// turn, medians reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// `bench recovery`: sizes of the handled logs to start on.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    pub(crate) handled: Vec<u64>,
    /// Run only the bus with the log on (for profiling).
    #[arg(long, hide = true)]
    pub(crate) only_log_on: bool,
    /// Run only the bus with the log off (for profiling).
    #[arg(long, hide = true)]
    pub(crate) only_log_off: bool,
    /// Run only the pipelined publish (for profiling).
    #[arg(long, hide = true)]
    pub(crate) only_pipelined: bool,
    /// `bench webhooks`: managed endpoints of the fan-out run (each its own receiver).
    #[arg(long, default_value_t = 10)]
    pub(crate) endpoints: usize,
    /// `bench webhooks`: events per second of the latency run.
    #[arg(long, default_value_t = 500)]
    pub(crate) webhook_rate: u64,
    /// Run only the engine of `bench webhooks` (for profiling).
    #[arg(long, hide = true)]
    pub(crate) only_engine: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum What {
    /// The event bus and its write-ahead log.
    Bus,
    /// Signed, durable webhook deliveries against bare HTTP POSTs.
    Webhooks,
    /// Signed incoming webhooks through `serve` against a bare axum route.
    Serve,
    /// Crash recovery: re-dispatch of unhandled events, start-up on a large handled log.
    Recovery,
}

pub(crate) fn make(i: u64) -> Event {
    Event::new("bench", json!({"i": i, "file_path": "/tmp/bench.txt"}))
}

async fn noop(_e: Event) -> Result<(), std::convert::Infallible> {
    Ok(())
}

pub(crate) fn bench_dir() -> PathBuf {
    std::env::temp_dir().join(format!("pm-events-bench-{}", std::process::id()))
}

/// Runs the benchmark.
pub async fn run(cfg: Config, args: Args) -> Result<ExitCode> {
    match args.what {
        What::Bus => bus(cfg, args).await,
        What::Webhooks => crate::bench_webhooks::run(cfg, args).await,
        What::Serve => serve(cfg, args).await,
        What::Recovery => {
            crate::bench_recovery::run(args.events, &args.handled).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn bus(cfg: Config, a: Args) -> Result<ExitCode> {
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
async fn logged_bus(cfg: &Config, dir: &Path) -> Result<EventBus> {
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
async fn finish(
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
const IN_FLIGHT: usize = 1024;

/// The bus with its log, fed by `p` tasks with `publish_pipelined`, each
/// keeping up to [`IN_FLIGHT`] events in flight (awaiting the oldest ack when
/// the window is full).
async fn bus_pipelined(n: u64, p: u64, cfg: &Config, dir: &Path) -> Result<f64> {
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
async fn bus_batched(n: u64, p: u64, cfg: &Config, dir: &Path) -> Result<f64> {
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
async fn timed_publishers<F, Fut>(
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

/// Publishes events `0..n` from `p` tasks, each its share in order.
pub(crate) async fn publish_all(bus: &EventBus, n: u64, p: u64) -> Result<()> {
    let mut tasks = Vec::new();
    for k in 0..p {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            for i in split(n, p, k) {
                bus.publish_event(make(i)).await?;
            }
            Ok::<(), pm_events::BusError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn split(n: u64, p: u64, k: u64) -> std::ops::Range<u64> {
    (n * k / p)..(n * (k + 1) / p)
}

async fn baseline_channel(n: u64, p: u64, cap: usize) -> f64 {
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

fn baseline_file(n: u64, path: &Path) -> Result<f64> {
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

async fn bus_run(n: u64, p: u64, cfg: &Config, log: Option<PathBuf>) -> Result<f64> {
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

async fn latency(cfg: &Config, rate: u64, secs: u64, dir: &Path) -> Result<(f64, f64, f64, usize)> {
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

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn burst(cfg: &Config, n: u64, p: u64, dir: &Path) -> Result<(u64, u64)> {
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

/// A receiver that answers 204 to every POST, as fast as axum can.
pub(crate) async fn bare_receiver() -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = axum::Router::new()
        .fallback(|_body: axum::body::Bytes| async { axum::http::StatusCode::NO_CONTENT });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// The median of `v` (sorted in place).
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A JSON object of about `n` bytes.
pub(crate) fn bytes_of(n: usize) -> Vec<u8> {
    let mut v = b"{\"pad\":\"".to_vec();
    v.resize(n.saturating_sub(2).max(v.len()), b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// A prepared request: URL, headers, body.
type Req = (String, Vec<(&'static str, String)>, Vec<u8>);

/// `n` POSTs of `reqs` (url, headers, body) by `c` worker tasks; requests/s and the
/// number answered 2xx.
async fn load(
    client: &reqwest::Client,
    reqs: std::sync::Arc<Vec<Req>>,
    c: usize,
) -> Result<(f64, u64)> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..c {
        let (client, reqs, next) = (client.clone(), reqs.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut ok = 0u64;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((url, headers, body)) = reqs.get(i) else {
                    break;
                };
                let mut req = client.post(url).body(body.clone());
                for (k, v) in headers {
                    req = req.header(*k, v);
                }
                if req
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
                {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for w in workers {
        ok += w.await?;
    }
    Ok((reqs.len() as f64 / t0.elapsed().as_secs_f64(), ok))
}

async fn serve(mut cfg: Config, a: Args) -> Result<ExitCode> {
    use pm_events::webhook::Signer;
    let dir = bench_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let n = a.deliveries as usize;
    let c = a.concurrency.max(1);
    cfg.log_dir = dir.clone();
    cfg.webhook_urls.clear();
    cfg.webhook_secrets = vec![pm_events::config::Secret::new("bench-secret")];
    let signer = Signer::new(&cfg.webhook_secrets[0])?;

    // Baseline: a bare axum route answering 204.
    let (bare_addr, bare) = bare_receiver().await?;
    // The product: `serve`'s router over a bus with the built-in handlers and the log.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let app = crate::app::open_server(&cfg).await?;
    app.bus.start().await?;
    let webhooks = app
        .webhooks
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the server's webhook engine is missing"))?;
    let state = pm_events::server::AppState::new(
        &app,
        webhooks,
        &cfg,
        metrics,
        Duration::from_secs(30),
        pm_events::server::admission::Limits {
            max_body: cfg.max_body_bytes,
            ..Default::default()
        },
        pm_events::server::api::stream::StreamLimits::default(),
    )?;
    let router = pm_events::server::router(state, cfg.max_body_bytes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let limits = pm_events::server::ConnLimits {
        max_connections: 1024,
        header_timeout: Duration::from_secs(10),
    };
    let server = tokio::spawn(pm_events::server::serve_http(
        listener,
        router,
        limits,
        std::future::pending(),
    ));
    say!(
        "pm-events bench serve: {n} signed incoming webhooks, concurrency {c}; bare route on {bare_addr}, serve on {addr}"
    );

    // The same signed requests for both (a unique webhook-id each, so none is a replay).
    let ts = pm_events::event::now_unix().floor() as i64;
    let make = |base: &str, kind: &str| -> Vec<Req> {
        (0..n)
            .map(|i| {
                let body = if kind == "risk" {
                    format!(
                        r#"{{"event_type":"risk_alert","data":{{"alert_id":"a{i}","risk_type":"performance","severity":"low","title":"slow","risk_score":0.2}}}}"#
                    )
                } else {
                    format!(r#"{{"event_type":"deployment","data":{{"service":"api","n":{i}}}}}"#)
                }
                .into_bytes();
                let id = format!("{kind}_{i}");
                let headers = vec![
                    ("content-type", "application/json".to_string()),
                    ("webhook-id", id.clone()),
                    ("webhook-timestamp", ts.to_string()),
                    ("webhook-signature", signer.standard_signature(&id, ts, &body)),
                ];
                (format!("{base}/webhooks/incoming"), headers, body)
            })
            .collect()
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(c)
        .build()?;
    let (base, base_ok) = load(
        &client,
        std::sync::Arc::new(make(&format!("http://{bare_addr}"), "custom")),
        c,
    )
    .await?;
    let (full, full_ok) = load(
        &client,
        std::sync::Arc::new(make(&format!("http://{addr}"), "custom")),
        c,
    )
    .await?;
    let (risk, risk_ok) = load(
        &client,
        std::sync::Arc::new(make(&format!("http://{addr}"), "risk")),
        c,
    )
    .await?;
    anyhow::ensure!(
        base_ok as usize == n && full_ok as usize == n && risk_ok as usize == n,
        "baseline {base_ok}, serve {full_ok} and {risk_ok} of {n} answered 2xx"
    );
    server.abort();
    bare.abort();
    crate::app::stop(app, Duration::from_secs(5)).await?;
    let logged = pm_events::journal::read_day(&dir, pm_events::journal::today())?.len();
    anyhow::ensure!(logged == 2 * n, "{logged} of {} events in the log", 2 * n);
    say!("  {:<56} {:>10}", "run", "requests/s");
    say!(
        "  {:<56} {:>10.0}",
        "baseline: bare axum route answering 204",
        base
    );
    say!(
        "  {:<56} {:>10.0}   ratio {:.2} (target >= 0.50)",
        "serve, custom type: verify -> write-ahead log -> 202",
        full,
        full / base
    );
    say!(
        "  {:<56} {:>10.0}   ratio {:.2}",
        "serve, risk_alert: the same + RiskAlertHandler",
        risk,
        risk / base
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}
