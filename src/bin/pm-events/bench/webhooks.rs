//! `pm-events bench webhooks`: webhook delivery measured beside bare HTTP in the same run.
//!
//! - one endpoint: events published on the bus, queued in the outbox, signed three
//!   ways, POSTed and logged, against bare reqwest POSTs at the same concurrency;
//! - `fan-out`: each event to 10 managed endpoints (each its own receiver), every
//!   delivery counted, against bare POSTs to the same receivers;
//! - latency: publish → first delivery at a steady rate (500/s), p50 and p99, beside a
//!   bare POST round trip at the same rate.

use super::args::Args;
use super::kit::{bare_receiver, bench_dir, bytes_of, make, median, publish_all};
use crate::cli::say;
use anyhow::Result;
use pm_events::app::App;
use pm_events::{Config, Event};
use serde_json::json;
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `bench webhooks`.
pub async fn run(mut cfg: Config, a: Args) -> Result<ExitCode> {
    let dir = bench_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let (addr, server) = bare_receiver().await?;
    let url = format!("http://{addr}/hook");
    let n = a.deliveries;
    let c = a.concurrency.max(1);
    let rounds = a.rounds.max(1);
    say!(
        "pm-events bench webhooks: {n} deliveries, concurrency {c}, receiver answering 204 on {addr}, {rounds} rounds (baseline and engine in turn)"
    );
    cfg.log_dir = dir.clone();
    cfg.webhook_concurrency = c;
    if cfg.webhook_secrets.is_empty() {
        cfg.webhook_secrets = vec![pm_events::config::Secret::new("bench-secret")];
    }
    cfg.webhook_urls.clear();
    cfg.webhook_urls
        .insert("PM_WEBHOOK_URL_BENCH".into(), url.clone());

    if a.only_engine {
        let eng = engine_deliveries(&cfg, n).await?;
        say!("  engine: {eng:.0} deliveries/s");
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(ExitCode::SUCCESS);
    }
    let (mut bases, mut engs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let base = bare_posts(&url, n, c).await?;
        let _ = std::fs::remove_dir_all(&dir);
        let eng = engine_deliveries(&cfg, n).await?;
        say!(
            "  round {round}: baseline {base:.0}/s, engine {eng:.0}/s, ratio {:.2}",
            eng / base
        );
        bases.push(base);
        engs.push(eng);
        ratios.push(eng / base);
    }
    server.abort();

    say!(
        "  {:<52} {:>10}",
        "run (median of the rounds)",
        "deliveries/s"
    );
    say!(
        "  {:<52} {:>10.0}",
        "baseline: bare reqwest POSTs, same concurrency",
        median(&mut bases)
    );
    say!(
        "  {:<52} {:>10.0}   ratio {:.2} (target >= 0.60)",
        "publish -> outbox -> 3 signatures -> POST -> attempt log",
        median(&mut engs),
        median(&mut ratios)
    );

    // Fan-out: each event to `endpoints` managed endpoints, each with a receiver of
    // its own (an origin of its own, so each has its own workers, as distinct
    // services would); the baseline POSTs to the same receivers at the same
    // concurrency each. Both count every delivery.
    let k = a.endpoints.max(1);
    let mut receivers = Vec::new();
    for _ in 0..k {
        receivers.push(bare_receiver().await?);
    }
    let urls: Vec<String> = receivers
        .iter()
        .map(|(addr, _)| format!("http://{addr}/hook"))
        .collect();
    let events = (n / k as u64).max(1);
    let (mut fbases, mut fengs, mut fratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let base = bare_posts_many(&urls, events, c).await?;
        let _ = std::fs::remove_dir_all(&dir);
        let eng = fan_out_deliveries(&cfg, events, &urls).await?;
        say!(
            "  fan-out round {round}: baseline {base:.0}/s, engine {eng:.0}/s, ratio {:.2}",
            eng / base
        );
        fbases.push(base);
        fengs.push(eng);
        fratios.push(eng / base);
    }
    for (_, task) in &receivers {
        task.abort();
    }
    say!(
        "  {:<52} {:>10.0}",
        format!("baseline: bare POSTs to {k} receivers, {c} each"),
        median(&mut fbases)
    );
    say!(
        "  {:<52} {:>10.0}   ratio {:.2} (target >= 0.40)",
        format!("fan-out: {events} events x {k} endpoints"),
        median(&mut fengs),
        median(&mut fratios)
    );

    // Latency at a steady rate: publish -> first delivery at the receiver, beside a
    // bare POST round trip at the same rate, in the same run.
    let _ = std::fs::remove_dir_all(&dir);
    let (bare, eng) = latencies(&cfg, a.webhook_rate, a.seconds).await?;
    say!(
        "  {:<52} {:>8} {:>8} {:>8}",
        format!("latency at {}/s, {} s (ms)", a.webhook_rate, a.seconds),
        "p50",
        "p99",
        "n"
    );
    say!(
        "  {:<52} {:>8.2} {:>8.2} {:>8}",
        "baseline: bare POST round trip",
        bare.0,
        bare.1,
        bare.2
    );
    say!(
        "  {:<52} {:>8.2} {:>8.2} {:>8}   p50 ratio {:.2} (target <= 3)",
        "publish (log on) -> first delivery received",
        eng.0,
        eng.1,
        eng.2,
        eng.0 / bare.0.max(1e-9)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}

/// Baseline: `n` bare reqwest POSTs of a body the size of a signed delivery, by
/// `c` worker tasks (as the engine's per-endpoint workers), each taking the next
/// request number until all are sent. Requests/s.
async fn bare_posts(url: &str, n: u64, c: usize) -> Result<f64> {
    let sample = pm_events::webhook::payload::build_body(&make(0), None);
    let body = bytes_of(sample.len() + 90);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(c)
        .build()?;
    let t0 = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..c {
        let (client, url, body, next) =
            (client.clone(), url.to_string(), body.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut ok = 0u64;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                if sent.map(|r| r.status().is_success()).unwrap_or(false) {
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
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    anyhow::ensure!(ok == n, "baseline: {ok} of {n} POSTs succeeded");
    Ok(rate)
}

/// The product's path: events published on the bus (8 publisher tasks), the
/// WebhookHandler queues each in the outbox, the engine signs it three ways,
/// sends it, logs the attempt in webhook_attempts.jsonl and removes it.
/// Deliveries/s, from the first publish until the last delivery is settled.
async fn engine_deliveries(cfg: &Config, n: u64) -> Result<f64> {
    let app = App::builder(cfg).build().await?;
    app.bus.start().await?;
    let t0 = Instant::now();
    publish_all(&app.bus, n, 8).await?;
    let o = app.stop(Duration::from_secs(600)).await?.outcome;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let delivered = o.as_ref().map_or(0, |o| o.delivered);
    anyhow::ensure!(delivered as u64 == n, "engine: {o:?}");
    Ok(rate)
}

/// Baseline of the fan-out: [`bare_posts`] to every URL at once, `n` each; requests/s over all.
async fn bare_posts_many(urls: &[String], n: u64, c: usize) -> Result<f64> {
    let t0 = Instant::now();
    let runs: Vec<_> = urls
        .iter()
        .map(|u| {
            let u = u.clone();
            tokio::spawn(async move { bare_posts(&u, n, c).await })
        })
        .collect();
    for r in runs {
        r.await??;
    }
    Ok((n * urls.len() as u64) as f64 / t0.elapsed().as_secs_f64())
}

/// The fan-out path: `events` events published on the bus, each queued for every
/// managed endpoint (one per URL of `urls`), signed with the endpoint's own secret,
/// sent and logged. Deliveries/s over all endpoints.
async fn fan_out_deliveries(cfg: &Config, events: u64, urls: &[String]) -> Result<f64> {
    let mut cfg = cfg.clone();
    cfg.webhook_urls.clear();
    // The receivers listen on loopback: let the endpoints reach it.
    cfg.endpoint_allow_nets = pm_events::endpoint::guard::NetGuard::parse_allow("127.0.0.0/8")?;
    let eps = pm_events::app::open_endpoints(&cfg).await?;
    for u in urls {
        let mut m = serde_json::Map::new();
        m.insert("url".into(), json!(u));
        m.insert("event_types".into(), json!(["bench"]));
        eps.create(&m).await?;
    }
    drop(eps);
    let app = App::builder(&cfg).build().await?;
    app.bus.start().await?;
    let t0 = Instant::now();
    publish_all(&app.bus, events, 8).await?;
    let o = app.stop(Duration::from_secs(600)).await?.outcome;
    let total = events * urls.len() as u64;
    let rate = total as f64 / t0.elapsed().as_secs_f64();
    let delivered = o.as_ref().map_or(0, |o| o.delivered);
    anyhow::ensure!(delivered as u64 == total, "fan-out: {o:?}");
    Ok(rate)
}

/// A receiver that notes when each `webhook-id` first arrived (since `base`).
async fn timing_receiver(
    base: Instant,
) -> Result<(
    std::net::SocketAddr,
    Arc<Mutex<HashMap<String, Duration>>>,
    tokio::task::JoinHandle<()>,
)> {
    let seen: Arc<Mutex<HashMap<String, Duration>>> = Arc::default();
    let s2 = seen.clone();
    let app =
        axum::Router::new().fallback(move |h: axum::http::HeaderMap, _b: axum::body::Bytes| {
            let s = s2.clone();
            async move {
                let at = base.elapsed();
                if let Some(id) = h.get("webhook-id").and_then(|v| v.to_str().ok())
                    && let Ok(mut m) = s.lock()
                {
                    m.entry(id.to_string()).or_insert(at);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, seen, task))
}

/// p50 and p99 in ms, and the count.
fn percentiles(mut v: Vec<Duration>) -> (f64, f64, usize) {
    v.sort_unstable();
    let pct = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q) as usize)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    (pct(0.5), pct(0.99), v.len())
}

/// Sleeps until `start + i / rate`.
async fn pace(start: tokio::time::Instant, i: u64, rate: u64) {
    tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate.max(1) as f64)).await;
}

/// Latency at `rate` events/s for `secs`: (bare POST round trip, publish → first
/// delivery received), each as (p50 ms, p99 ms, count).
async fn latencies(
    cfg: &Config,
    rate: u64,
    secs: u64,
) -> Result<((f64, f64, usize), (f64, f64, usize))> {
    let n = rate * secs.max(1);
    let base = Instant::now();
    let (addr, seen, task) = timing_receiver(base).await?;
    let url = format!("http://{addr}/lat");

    // Baseline: paced bare POSTs, each timed from send to answer.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let body = bytes_of(pm_events::webhook::payload::build_body(&make(0), None).len() + 90);
    let start = tokio::time::Instant::now();
    let mut rtts = Vec::with_capacity(n as usize);
    let mut calls = Vec::with_capacity(n as usize);
    for i in 0..n {
        pace(start, i, rate).await;
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            ok.then(|| t.elapsed())
        }));
    }
    for c in calls {
        rtts.extend(c.await?);
    }

    // The product: a bus with its log, the webhook handler, one route.
    let mut cfg = cfg.clone();
    cfg.webhook_urls.clear();
    cfg.webhook_urls.insert("PM_WEBHOOK_URL_BENCH".into(), url);
    let app = App::builder(&cfg).embedded().build().await?;
    let bus = app.bus.clone();
    bus.start().await?;
    let mut sent: HashMap<String, Duration> = HashMap::with_capacity(n as usize);
    let start = tokio::time::Instant::now();
    for i in 0..n {
        pace(start, i, rate).await;
        let e = Event::new("bench", json!({"i": i}));
        sent.insert(e.event_id.clone(), base.elapsed());
        bus.publish_event(e).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().map(|m| m.len()).unwrap_or(0) < sent.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop(Duration::ZERO).await?;
    task.abort();
    let arrived = seen.lock().map(|m| m.clone()).unwrap_or_default();
    let lat: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, t0)| arrived.get(id).map(|t| t.saturating_sub(*t0)))
        .collect();
    anyhow::ensure!(
        lat.len() == sent.len(),
        "latency: {} of {} delivered",
        lat.len(),
        sent.len()
    );
    Ok((percentiles(rtts), percentiles(lat)))
}
