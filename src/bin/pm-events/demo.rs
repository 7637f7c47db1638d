//! `pm-events demo`: the seed's examples, run for real on the embedded bus.

use crate::app::App;
use crate::receiver::Receiver;
use crate::say;
use anyhow::Result;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use pm_events::config::Secret;
use pm_events::{Config, Event};
use serde_json::json;
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Runs the demo.
pub async fn run(mut cfg: Config) -> Result<ExitCode> {
    // Webhooks go to a local receiver that checks their signatures; the deployment
    // endpoint fails twice before it accepts, to show the retries.
    if cfg.webhook_secrets.is_empty() {
        let key: Vec<u8> = (0..24).map(|_| fastrand::u8(..)).collect();
        cfg.webhook_secrets = vec![Secret::new(format!("whsec_{}", B64.encode(key)))];
        say!("(no WEBHOOK_SIGNATURE_SECRET set: the demo signs with a random secret of its own)");
    }
    cfg.webhook_backoff_base = Duration::from_millis(200);
    let receiver = Receiver::start(
        cfg.webhook_secrets.clone(),
        HashMap::from([("/webhooks/deploy".to_string(), 2)]),
    )
    .await?;
    cfg.webhook_urls.clear();
    for (var, path) in [
        ("FILE_CHANGE_WEBHOOK_URL", "/webhooks/files"),
        ("REPORT_READY_WEBHOOK_URL", "/webhooks/reports"),
        ("CRITICAL_ALERT_WEBHOOK_URL", "/webhooks/critical"),
        ("PM_WEBHOOK_URL_DEPLOYMENT", "/webhooks/deploy"),
    ] {
        cfg.webhook_urls.insert(var.to_string(), receiver.url(path));
    }
    let app = App::open(&cfg, true)?;
    let bus = app.bus.clone();

    // A printing handler per type, as in the seed's "Custom Event Handler".
    for t in ["file_change", "report_ready", "risk_alert", "deployment"] {
        bus.subscribe(t, |e: Event| async move {
            say!(
                "  handled {:<12} {}  {}",
                e.event_type,
                &e.event_id[..8],
                summary(&e)
            );
            Ok::<(), std::convert::Infallible>(())
        });
    }
    // A wildcard counter sees every event.
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    bus.subscribe("*", move |_e: Event| {
        let c = counter.clone();
        async move {
            c.fetch_add(1, Ordering::Relaxed);
            Ok::<(), std::convert::Infallible>(())
        }
    });
    // A filtered handler: only high-priority custom events reach it.
    let high = Arc::new(AtomicU64::new(0));
    let high2 = high.clone();
    bus.subscribe_filtered(
        "custom_event",
        |e| e.data.get("priority").and_then(|p| p.as_str()) == Some("high"),
        move |_e: Event| {
            let h = high2.clone();
            async move {
                h.fetch_add(1, Ordering::Relaxed);
                Ok::<(), std::convert::Infallible>(())
            }
        },
    );

    say!("pm-events demo — log directory {}", cfg.log_dir.display());
    bus.start().await?;
    say!("publishing the seed's example events:");
    bus.publish(
        "file_change",
        json!({"file_path": "/tmp/test.txt", "change_type": "created", "size": 1024}),
    )
    .await?;
    bus.publish(
        "report_ready",
        json!({
            "report_id": "daily_report_20250115", "report_type": "daily",
            "report_path": "/path/to/report.pdf", "report_format": "pdf",
            "generated_at": "2025-01-15T10:00:00Z", "size_bytes": 1234567,
            "recipients": ["user1@example.com", "user2@example.com"],
            "metadata": {"author": "pm_system", "tags": ["daily", "summary"]}
        }),
    )
    .await?;
    bus.publish(
        "risk_alert",
        json!({
            "alert_id": "security_alert_001", "risk_type": "security", "severity": "critical",
            "title": "Brief alert description", "description": "Detailed alert information",
            "affected_resources": ["resource1", "resource2"], "risk_score": 0.85,
            "detected_at": "2025-01-15T10:00:00Z", "source_system": "security_scanner",
            "mitigation_steps": ["action1", "action2"],
            "metadata": {"tags": ["security", "automated"], "related_incidents": ["inc123"]}
        }),
    )
    .await?;
    bus.publish(
        "deployment",
        json!({"service": "api-gateway", "status": "success", "version": "1.2.3"}),
    )
    .await?;
    // The seed's "Batch Event Processing".
    bus.publish_batch((1..=3).map(|i| {
        Event::new(
            "file_change",
            json!({"file_path": format!("/tmp/file{i}.txt")}),
        )
    }))
    .await?;
    // The seed's "Event Filtering": one of these two reaches the filtered handler.
    bus.publish("custom_event", json!({"priority": "high"}))
        .await?;
    bus.publish("custom_event", json!({"priority": "low"}))
        .await?;
    say!("waiting for the webhook deliveries (the deployment endpoint fails twice first) ...");
    let outcome = app.stop(Duration::from_secs(60)).await?;

    let stats = bus.stats();
    say!("");
    say!("summary:");
    say!("  subscribers        {:?}", bus.get_subscribers());
    say!("  events published   {}", stats.published);
    say!("  seen by wildcard   {}", seen.load(Ordering::Relaxed));
    say!("  high-priority only {}", high.load(Ordering::Relaxed));
    say!(
        "  handler runs       {} ok, {} failed, {} panicked, {} timed out",
        stats.handled,
        stats.failed,
        stats.panicked,
        stats.timed_out
    );
    let o = outcome.unwrap_or_default();
    say!(
        "  webhooks           {} delivered ({} with every signature verified by the receiver), {} failed, {} pending",
        o.delivered,
        receiver.verified(),
        o.dead,
        o.pending
    );
    say!("  event log          {}", bus.get_log_file().display());
    say!(
        "  webhook attempts   {}",
        cfg.log_dir
            .join("webhooks/webhook_attempts.jsonl")
            .display()
    );
    Ok(ExitCode::SUCCESS)
}

fn summary(e: &Event) -> String {
    let d = &e.data;
    let s = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
    match e.event_type.as_str() {
        "file_change" => format!("{} {}", s("change_type"), s("file_path")),
        "report_ready" => format!(
            "{} {} ({})",
            s("report_type"),
            s("report_id"),
            s("report_format")
        ),
        "risk_alert" => format!("{} {}: {}", s("severity"), s("risk_type"), s("title")),
        "deployment" => format!(
            "Deployment {}: {} {}",
            s("status"),
            s("service"),
            s("version")
        ),
        _ => d.to_string(),
    }
}
