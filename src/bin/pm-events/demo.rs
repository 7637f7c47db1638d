//! `pm-events demo`: the seed's examples, run for real on the embedded bus.

use crate::say;
use anyhow::Result;
use pm_events::{Config, Event, EventBus};
use serde_json::json;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Runs the demo.
pub async fn run(cfg: Config) -> Result<ExitCode> {
    let bus = EventBus::builder().config(&cfg).build();

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
    bus.stop().await?;

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
    say!("  event log          {}", bus.get_log_file().display());
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
