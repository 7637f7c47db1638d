//! What the benches share: the events they publish, their directory, a bare
//! receiver, publishing from several tasks, medians and sizes.

use anyhow::Result;
use pm_events::{Event, EventBus};
use serde_json::json;
use std::path::PathBuf;

pub(crate) fn make(i: u64) -> Event {
    Event::new("bench", json!({"i": i, "file_path": "/tmp/bench.txt"}))
}

pub(super) async fn noop(_e: Event) -> Result<(), std::convert::Infallible> {
    Ok(())
}

pub(crate) fn bench_dir() -> PathBuf {
    std::env::temp_dir().join(format!("pm-events-bench-{}", std::process::id()))
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

pub(super) fn split(n: u64, p: u64, k: u64) -> std::ops::Range<u64> {
    (n * k / p)..(n * (k + 1) / p)
}

pub(super) fn rss_kib(field: &str) -> u64 {
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
