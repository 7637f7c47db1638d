//! `bench serve`: `POST /events` through the server's whole stack beside a bare
//! HTTP server in the same run.

use super::args::Args;
use super::kit::*;
use crate::cli::say;
use anyhow::Result;
use pm_events::Config;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// A prepared request: URL, headers, body.
pub(super) type Req = (String, Vec<(&'static str, String)>, Vec<u8>);

/// `n` POSTs of `reqs` (url, headers, body) by `c` worker tasks; requests/s and the
/// number answered 2xx.
pub(super) async fn load(
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

pub(super) async fn serve(mut cfg: Config, a: Args) -> Result<ExitCode> {
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
