//! `pm-events demo`: the specification's examples, run for real on the embedded bus — the
//! built-in handlers on real files, signed webhooks to a local receiver, retries.

use crate::app;
use crate::cli::say;
use crate::receiver::Receiver;
use anyhow::{Context as _, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use pm_events::config::Secret;
use pm_events::{Config, Event, jsonl};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const MINI_PDF: &[u8] = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n";

/// Runs the demo. Unless `chosen_log_dir`, it writes under a directory of its
/// own, `<log dir>/demo/<time>`, so that what it reports is this run's alone.
pub async fn run(mut cfg: Config, chosen_log_dir: bool) -> Result<ExitCode> {
    if !chosen_log_dir {
        let run = chrono::Utc::now().format("%Y%m%d-%H%M%S");
        cfg.log_dir = cfg
            .log_dir
            .join("demo")
            .join(format!("{run}-{}", std::process::id()));
    }
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
        ("HIGH_ALERT_WEBHOOK_URL", "/webhooks/high"),
        ("DEFAULT_RISK_WEBHOOK_URL", "/webhooks/risk"),
        ("PM_WEBHOOK_URL_DEPLOYMENT", "/webhooks/deploy"),
    ] {
        cfg.webhook_urls.insert(var.to_string(), receiver.url(path));
    }

    // Real files for the handlers to work on.
    let work = std::env::temp_dir().join(format!("pm-events-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let notes = work.join("notes.txt");
    let pdf = work.join("daily_report_20250115.pdf");
    let json_report = work.join("weekly_report.json");
    let html = work.join("monthly_report.html");
    std::fs::write(&pdf, MINI_PDF)?;
    std::fs::write(&json_report, br#"{"week": 3, "tasks_done": 42}"#)?;
    std::fs::write(
        &html,
        b"<!DOCTYPE html><html><body><h1>Monthly</h1></body></html>",
    )?;

    let app = app::open(&cfg, true).await?;
    let bus = app.bus.clone();
    app.builtins
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the built-in handlers are not subscribed"))?
        .risk_alert
        .register_mitigation("block_ip", |a| {
            Ok(format!("blocked the sources of {}", a.alert_id))
        });

    // The specification's "Custom Event Handler" and a wildcard counter.
    bus.subscribe("deployment", |e: Event| async move {
        say!(
            "  handled deployment   Deployment {}: {} {}",
            e.data["status"].as_str().unwrap_or("-"),
            e.data["service"].as_str().unwrap_or("-"),
            e.data["version"].as_str().unwrap_or("-")
        );
        Ok::<(), std::convert::Infallible>(())
    });
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    bus.subscribe("*", move |_e: Event| {
        let c = counter.clone();
        async move {
            c.fetch_add(1, Ordering::Relaxed);
            Ok::<(), std::convert::Infallible>(())
        }
    });
    // The specification's "Event Filtering".
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

    say!(
        "pm-events demo — log directory {}, files in {}",
        cfg.log_dir.display(),
        work.display()
    );
    bus.start().await?;
    let mut ids: Vec<String> = Vec::new();
    let s = |p: &Path| p.display().to_string();

    // file_change: created, modified, deleted — on real files (each left as its
    // event says, since handlers run after `publish` returns).
    let (todo, old) = (work.join("todo.txt"), work.join("old.txt"));
    std::fs::write(&notes, "first line\n")?;
    ids.push(
        bus.publish(
            "file_change",
            json!({"file_path": s(&notes), "change_type": "created"}),
        )
        .await?,
    );
    std::fs::write(&todo, "- write the demo\n- run it\n")?;
    ids.push(
        bus.publish(
            "file_change",
            json!({"file_path": s(&todo), "change_type": "modified"}),
        )
        .await?,
    );
    std::fs::write(&old, "obsolete")?;
    std::fs::remove_file(&old)?;
    ids.push(
        bus.publish(
            "file_change",
            json!({"file_path": s(&old), "change_type": "deleted"}),
        )
        .await?,
    );

    // report_ready: the three formats, e-mailed to two addresses and one bad one.
    for (path, id, ty, fmt) in [
        (&pdf, "daily_report_20250115", "daily", "pdf"),
        (&json_report, "weekly_report_2025w03", "weekly", "json"),
        (&html, "monthly_report_202501", "monthly", "html"),
    ] {
        ids.push(
            bus.publish(
                "report_ready",
                json!({
                    "report_id": id, "report_type": ty, "report_path": s(path), "report_format": fmt,
                    "generated_at": "2025-01-15T10:00:00Z",
                    "recipients": ["user1@example.com", "user2@example.com", "not-an-address"],
                    "metadata": {"author": "pm_system", "tags": [ty, "summary"]}
                }),
            )
            .await?,
        );
    }

    // risk_alert: the specification's critical alert, a high one, and a low one scoring 0.9.
    ids.push(
        bus.publish(
            "risk_alert",
            json!({
                "alert_id": "security_alert_001", "risk_type": "security", "severity": "critical",
                "title": "Brief alert description", "description": "Detailed alert information",
                "affected_resources": ["resource1", "resource2"], "risk_score": 0.85,
                "detected_at": "2025-01-15T10:00:00Z", "source_system": "security_scanner",
                "mitigation_steps": ["block_ip", "notify_owner"],
                "metadata": {"tags": ["security", "automated"], "related_incidents": ["inc123"]}
            }),
        )
        .await?,
    );
    ids.push(
        bus.publish(
            "risk_alert",
            json!({"alert_id": "perf_alert_007", "risk_type": "performance", "severity": "high",
                   "title": "p99 latency above 2 s", "risk_score": 0.6}),
        )
        .await?,
    );
    ids.push(
        bus.publish(
            "risk_alert",
            json!({"alert_id": "fin_alert_042", "risk_type": "financial", "severity": "low",
                   "title": "Unusual spend pattern", "risk_score": 0.9}),
        )
        .await?,
    );

    // One invalid payload of each built-in type: logged as invalid, no webhook.
    say!(
        "(three invalid payloads follow on purpose: their handlers refuse them; the reasons are listed below)"
    );
    ids.push(
        bus.publish("file_change", json!({"file_path": s(&pdf)}))
            .await?,
    );
    ids.push(
        bus.publish(
            "report_ready",
            json!({"report_id": "broken", "report_type": "daily", "report_path": s(&html), "report_format": "pdf"}),
        )
        .await?,
    );
    ids.push(
        bus.publish(
            "risk_alert",
            json!({"alert_id": "x", "risk_type": "security", "severity": "urgent", "title": "?", "risk_score": 1.7}),
        )
        .await?,
    );

    // A custom type, the specification's batch example, and its filtering example.
    ids.push(
        bus.publish(
            "deployment",
            json!({"service": "api-gateway", "status": "success", "version": "1.2.3"}),
        )
        .await?,
    );
    ids.extend(
        bus.publish_batch((1..=3).map(|i| Event::new("custom_event", json!({"batch_item": i}))))
            .await?,
    );
    ids.push(
        bus.publish("custom_event", json!({"priority": "high"}))
            .await?,
    );
    ids.push(
        bus.publish("custom_event", json!({"priority": "low"}))
            .await?,
    );

    say!(
        "waiting for the handlers and the webhook deliveries (the deployment endpoint fails twice first) ..."
    );
    let outcome = app::stop(app, Duration::from_secs(60)).await?;

    say!("");
    say!("what the built-in handlers did (from their logs):");
    let ours: HashSet<&str> = ids.iter().map(String::as_str).collect();
    report_log(
        &cfg.log_dir.join("file_changes/file_changes.jsonl"),
        &ours,
        |l| {
            format!(
                "{} {} size {} md5 {}",
                l["change_type"].as_str().unwrap_or("-"),
                name_of(&l["file_path"]),
                l["size"],
                l["checksum"]
                    .as_str()
                    .map(|c| &c[..8.min(c.len())])
                    .unwrap_or("-")
            ) + &format!(" -> {}", l["action"].as_str().unwrap_or("-"))
        },
    );
    report_log(
        &cfg.log_dir.join("reports/report_generations.jsonl"),
        &ours,
        |l| {
            let rcpts: Vec<String> = l["distribution"]["recipients"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            format!(
                                "{}={}",
                                r["recipient"].as_str().unwrap_or("?"),
                                r["status"].as_str().unwrap_or("?")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{} ({}) sha256 {}… meta {} mail[{}]: {}",
                l["report_id"].as_str().unwrap_or("-"),
                l["report_format"].as_str().unwrap_or("-"),
                l["sha256"]
                    .as_str()
                    .map(|c| &c[..8.min(c.len())])
                    .unwrap_or("-"),
                name_of(&l["metadata_file"]),
                l["distribution"]["mailer"].as_str().unwrap_or("-"),
                rcpts.join(", ")
            )
        },
    );
    report_log(
        &cfg.log_dir.join("risk_alerts/risk_alerts.jsonl"),
        &ours,
        |l| {
            let steps: Vec<String> = l["mitigation"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|m| {
                            format!(
                                "{}={}",
                                m["step"].as_str().unwrap_or("?"),
                                m["status"].as_str().unwrap_or("?")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{} {} score {} escalated_to {} mitigation [{}] webhooks {}",
                l["alert_id"].as_str().unwrap_or("-"),
                l["severity"].as_str().unwrap_or("-"),
                l["risk_score"],
                l["escalated_to"].as_str().unwrap_or("-"),
                steps.join(", "),
                l["webhooks"].as_array().map(Vec::len).unwrap_or(0)
            )
        },
    );
    let dash = app_dashboard(&cfg);
    say!(
        "  dashboard          {} open alerts {} highest score {} escalations {} ({})",
        dash["open_alerts"].as_array().map(Vec::len).unwrap_or(0),
        dash["counts_by_severity"],
        dash["highest_risk_score"],
        dash["escalations"],
        cfg.log_dir.join("risk_alerts/dashboard.json").display()
    );

    let stats = bus.stats();
    say!("");
    say!("summary:");
    say!("  subscribers        {:?}", bus.get_subscribers());
    say!(
        "  events published   {} (escalations included)",
        stats.published
    );
    say!("  seen by wildcard   {}", seen.load(Ordering::Relaxed));
    say!("  high-priority only {}", high.load(Ordering::Relaxed));
    say!(
        "  handler runs       {} ok, {} refused or failed, {} panicked, {} timed out",
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
    say!(
        "  e-mails            {}",
        if cfg.smtp_url.is_some() {
            "sent through PM_SMTP_URL".to_string()
        } else {
            format!(".eml files in {}", cfg.log_dir.join("outbox").display())
        }
    );
    say!(
        "  look again         pm-events --log-dir {} tail",
        cfg.log_dir.display()
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(ExitCode::SUCCESS)
}

fn name_of(v: &Value) -> String {
    v.as_str()
        .and_then(|p| Path::new(p).file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "-".into())
}

fn report_log(path: &Path, ours: &HashSet<&str>, describe: impl Fn(&Value) -> String) {
    let lines: Vec<Value> = jsonl::read_rotated(path).unwrap_or_default();
    let kind = path
        .file_stem()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    for l in lines
        .iter()
        .filter(|l| l["event_id"].as_str().is_some_and(|id| ours.contains(id)))
    {
        if l["status"] == "ok" {
            say!("  {:<18} ok       {}", kind, describe(l));
        } else {
            say!(
                "  {:<18} {:<8} {}",
                kind,
                l["status"].as_str().unwrap_or("?"),
                l["reason"].as_str().unwrap_or("-")
            );
        }
    }
}

fn app_dashboard(cfg: &Config) -> Value {
    std::fs::read(cfg.log_dir.join("risk_alerts/dashboard.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}
