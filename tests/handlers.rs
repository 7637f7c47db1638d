//! The built-in handlers, on real files in temp directories, with a real webhook
//! receiver and a real SMTP server (aiosmtpd, started by the test).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestReceiver, jsonl, python, wait_until};
use pm_events::handlers::mail::Mailer;
use pm_events::handlers::{
    Context, FileChangeHandler, HandleError, ReportReadyHandler, RiskAlertHandler,
    builtin_priority, register_builtins,
};
use pm_events::webhook::WebhookHandler;
use pm_events::{Config, Event, EventBus};
use serde_json::{Value, json};
use sha2::Digest;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn cfg(dir: &Path, extra: &[(&str, String)]) -> Config {
    let mut vars: Vec<(String, String)> = vec![
        ("PM_LOG_DIR".into(), dir.join("logs").display().to_string()),
        (
            "WEBHOOK_SIGNATURE_SECRET".into(),
            "handler-test-secret".into(),
        ),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Config::from_vars(vars).unwrap()
}

fn ctx(c: &Config) -> (Context, Arc<WebhookHandler>) {
    let w = Arc::new(WebhookHandler::from_config(c).unwrap().track_deliveries());
    w.engine().start().unwrap();
    (Context::from_config(c).with_webhooks(w.clone()), w)
}

async fn settle(w: &WebhookHandler) {
    let ids = w.take_queued();
    let o = w.engine().wait(&ids, T).await.unwrap();
    assert_eq!(o.pending, 0);
}

fn ev(t: &str, data: Value) -> Event {
    Event::new(t, data)
}

// ---------------------------------------------------------------- file_change

#[tokio::test]
async fn file_change_fills_in_the_file_facts_and_tells_content_from_metadata_changes() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let c = cfg(dir.path(), &[("FILE_CHANGE_WEBHOOK_URL", rx.url("/files"))]);
    let (ctx, w) = ctx(&c);
    let h = FileChangeHandler::with_context(true, ctx).unwrap();
    let f = dir.path().join("a.txt");
    std::fs::write(&f, "hello\n").unwrap();
    let path = f.display().to_string();

    let created = h
        .handle_file_change(&ev(
            "file_change",
            json!({"file_path": path, "change_type": "created", "owner": "me"}),
        ))
        .await
        .unwrap();
    assert_eq!(
        created["checksum"], "b1946ac92492d2347c6235b4d2611184",
        "md5 of hello\\n"
    );
    assert_eq!(created["size"], 6);
    chrono::DateTime::parse_from_rfc3339(created["modified_time"].as_str().unwrap()).unwrap();
    assert_eq!(created["action"], "indexed");

    // Same content again: metadata only. New content: a content change, with the old checksum.
    let same = h
        .handle_file_change(&ev(
            "file_change",
            json!({"file_path": path, "change_type": "modified"}),
        ))
        .await
        .unwrap();
    assert_eq!(same["action"], "metadata_changed");
    std::fs::write(&f, "hello world\n").unwrap();
    let changed = h
        .handle_file_change(&ev(
            "file_change",
            json!({"file_path": path, "change_type": "modified"}),
        ))
        .await
        .unwrap();
    assert_eq!(changed["action"], "content_changed");
    assert_eq!(
        changed["previous_checksum"],
        "b1946ac92492d2347c6235b4d2611184"
    );
    // Given values are kept, not recomputed.
    let given = h
        .handle_file_change(&ev("file_change", json!({"file_path": path, "change_type": "modified", "size": 1, "checksum": "00000000000000000000000000000000"})))
        .await
        .unwrap();
    assert_eq!(given["size"], 1);

    std::fs::remove_file(&f).unwrap();
    let deleted = h
        .handle_file_change(&ev(
            "file_change",
            json!({"file_path": path, "change_type": "deleted"}),
        ))
        .await
        .unwrap();
    assert_eq!(deleted["action"], "removed");

    settle(&w).await;
    let got = rx.requests("/files");
    assert_eq!(got.len(), 5, "one webhook per valid event");
    let first = got
        .iter()
        .find(|r| r.json()["data"]["change_type"] == "created")
        .unwrap()
        .json();
    assert_eq!(
        first["data"]["checksum"], "b1946ac92492d2347c6235b4d2611184",
        "the webhook carries the completed data"
    );
    assert_eq!(first["data"]["owner"], "me", "unknown fields are kept");

    let log = jsonl(&dir.path().join("logs/file_changes/file_changes.jsonl"));
    assert_eq!(log.len(), 5);
    assert!(
        log.iter()
            .all(|l| l["status"] == "ok" && l["webhook"]["delivery_id"].is_string())
    );
    w.engine().shutdown().await;
}

#[tokio::test]
async fn file_change_refuses_what_does_not_match_the_file_system_or_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let c = cfg(dir.path(), &[("FILE_CHANGE_WEBHOOK_URL", rx.url("/files"))]);
    let (ctx, w) = ctx(&c);
    let h = FileChangeHandler::with_context(true, ctx).unwrap();
    let exists = dir.path().join("here.txt");
    std::fs::write(&exists, "x").unwrap();
    let missing = dir.path().join("gone.txt").display().to_string();
    let cases = [
        (
            json!({"file_path": missing, "change_type": "created"}),
            "does not exist",
        ),
        (
            json!({"file_path": missing, "change_type": "modified"}),
            "does not exist",
        ),
        (
            json!({"file_path": exists.display().to_string(), "change_type": "deleted"}),
            "still exists",
        ),
        (
            json!({"file_path": missing}),
            "data.change_type: required field is missing",
        ),
        (
            json!({"file_path": missing, "change_type": "renamed"}),
            "data.change_type: expected one of created, modified, deleted, got \"renamed\"",
        ),
        (
            json!({"file_path": 7, "change_type": "created"}),
            "data.file_path: expected a string, got integer 7",
        ),
        (
            json!({"file_path": missing, "change_type": "deleted", "modified_time": "yesterday"}),
            "data.modified_time: expected an RFC 3339 time",
        ),
        (
            json!({"file_path": missing, "change_type": "deleted", "checksum": "xyz"}),
            "data.checksum: expected an MD5 hex digest",
        ),
    ];
    for (data, needle) in cases {
        let err = h
            .handle_file_change(&ev("file_change", data.clone()))
            .await
            .unwrap_err();
        assert!(matches!(err, HandleError::Invalid { .. }));
        assert!(err.to_string().contains(needle), "{data}: {err}");
    }
    let log = jsonl(&dir.path().join("logs/file_changes/file_changes.jsonl"));
    assert_eq!(log.len(), 8);
    assert!(
        log.iter()
            .all(|l| l["status"] == "invalid" && l["reason"].is_string())
    );
    settle(&w).await;
    assert!(
        rx.requests("/files").is_empty(),
        "invalid payloads reach no webhook"
    );

    // log_changes = false writes nothing.
    let quiet = FileChangeHandler::with_context(
        false,
        Context::from_config(&cfg(&dir.path().join("q"), &[])),
    )
    .unwrap();
    quiet
        .handle_file_change(&ev(
            "file_change",
            json!({"file_path": exists.display().to_string(), "change_type": "created"}),
        ))
        .await
        .unwrap();
    assert!(jsonl(&dir.path().join("q/logs/file_changes/file_changes.jsonl")).is_empty());
    w.engine().shutdown().await;
}

// --------------------------------------------------------------- report_ready

fn report(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

fn sha256(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

#[tokio::test]
async fn report_ready_checks_each_format_writes_the_sidecar_and_mails_files() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let c = cfg(
        dir.path(),
        &[("REPORT_READY_WEBHOOK_URL", rx.url("/reports"))],
    );
    let (ctx, w) = ctx(&c);
    let outbox = dir.path().join("logs/outbox");
    let h = ReportReadyHandler::with_context(true, ctx, Mailer::files(outbox.clone())).unwrap();
    let pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n%%EOF\n".to_vec();
    let cases = [
        ("r.pdf", pdf.clone(), "pdf"),
        ("r.json", br#"{"total": 3}"#.to_vec(), "json"),
        ("r.html", b"<html><body>ok</body></html>".to_vec(), "html"),
    ];
    for (name, bytes, fmt) in &cases {
        let path = report(dir.path(), name, bytes);
        let line = h
            .handle_report_ready(&ev(
                "report_ready",
                json!({"report_id": format!("id_{fmt}"), "report_type": "daily", "report_path": path,
                       "report_format": fmt, "size_bytes": bytes.len(), "generated_at": "2025-01-15T10:00:00Z",
                       "recipients": ["a@example.com", "bad address", "b@example.com"],
                       "metadata": {"author": "pm_system", "tags": ["daily"], "team": "ops"}}),
            ))
            .await
            .unwrap();
        assert_eq!(line["sha256"], sha256(bytes));
        let meta: Value =
            serde_json::from_slice(&std::fs::read(format!("{path}.meta.json")).unwrap()).unwrap();
        assert_eq!(meta["sha256"], sha256(bytes));
        assert_eq!(meta["size_bytes"], bytes.len());
        assert_eq!(meta["report_format"], *fmt);
        assert_eq!(meta["report_type"], "daily");
        assert_eq!(meta["tags"], json!(["daily"]));
        assert_eq!(meta["recipients"].as_array().unwrap().len(), 3);
        let rcpts = line["distribution"]["recipients"].as_array().unwrap();
        let status: Vec<&str> = rcpts
            .iter()
            .map(|r| r["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            status,
            ["sent", "invalid_address", "sent"],
            "a bad address is reported, the others go"
        );
    }
    let emls: Vec<_> = std::fs::read_dir(&outbox).unwrap().flatten().collect();
    assert_eq!(emls.len(), 6, "two good recipients × three reports");
    let text = std::fs::read_to_string(emls[0].path()).unwrap();
    assert!(text.contains("Content-Disposition: attachment"), "{text}");
    settle(&w).await;
    let hooks = rx.requests("/reports");
    assert_eq!(hooks.len(), 3);
    assert!(hooks.iter().all(|r| r.json()["data"]["sha256"].is_string()));
    assert_eq!(
        hooks[0].json()["data"]["metadata"]["team"],
        "ops",
        "unknown fields are kept"
    );
    w.engine().shutdown().await;
}

#[tokio::test]
async fn report_ready_refuses_reports_that_are_not_what_they_claim() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let c = cfg(
        dir.path(),
        &[("REPORT_READY_WEBHOOK_URL", rx.url("/reports"))],
    );
    let (ctx, w) = ctx(&c);
    let h =
        ReportReadyHandler::with_context(true, ctx, Mailer::files(dir.path().join("logs/outbox")))
            .unwrap();
    let html = report(dir.path(), "x.html", b"<html></html>");
    let text = report(dir.path(), "x.txt", b"just text");
    let base = |path: &str, fmt: &str| json!({"report_id": "r", "report_type": "weekly", "report_path": path, "report_format": fmt});
    let mut size = base(&html, "html");
    size["size_bytes"] = json!(999);
    let cases = [
        (base(&html, "pdf"), "%PDF-"),
        (base(&text, "json"), "not valid JSON"),
        (base(&text, "html"), "not HTML"),
        (
            base(&dir.path().join("none.pdf").display().to_string(), "pdf"),
            "cannot be read",
        ),
        (size, "`size_bytes` is 999 but the file has 13 bytes"),
        (
            json!({"report_id": "r", "report_type": "yearly", "report_path": html, "report_format": "html"}),
            "data.report_type: expected one of daily, weekly, monthly, custom, got \"yearly\"",
        ),
        (
            json!({"report_type": "daily", "report_path": html, "report_format": "html"}),
            "data.report_id: required field is missing",
        ),
    ];
    for (data, needle) in cases {
        let err = h
            .handle_report_ready(&ev("report_ready", data.clone()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{data}: {err}");
    }
    let log = jsonl(&dir.path().join("logs/reports/report_generations.jsonl"));
    assert_eq!(log.len(), 7);
    assert!(log.iter().all(|l| l["status"] == "invalid"));
    assert!(!Path::new(&format!("{html}.meta.json")).exists());
    settle(&w).await;
    assert!(rx.requests("/reports").is_empty());

    // auto_distribute = false: the report is checked and recorded, nobody is mailed.
    let quiet_box = dir.path().join("quiet-outbox");
    let quiet = ReportReadyHandler::with_context(
        false,
        Context::from_config(&c),
        Mailer::files(quiet_box.clone()),
    )
    .unwrap();
    let mut d = base(&html, "html");
    d["recipients"] = json!(["a@example.com"]);
    let line = quiet
        .handle_report_ready(&ev("report_ready", d))
        .await
        .unwrap();
    assert_eq!(line["distribution"]["mailer"], "off");
    assert!(!quiet_box.exists());
    w.engine().shutdown().await;
}

/// A real SMTP server (aiosmtpd) writing into a Maildir; killed on drop.
struct Smtp {
    child: std::process::Child,
    port: u16,
    maildir: std::path::PathBuf,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn smtp(dir: &Path) -> Smtp {
    let port = common::free_port();
    let maildir = dir.join("maildir");
    let child = std::process::Command::new(python())
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(&maildir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let s = Smtp {
        child,
        port,
        maildir,
    };
    wait_until(T, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn report_ready_mails_the_report_through_a_real_smtp_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = smtp(dir.path()).await;
    let c = cfg(
        dir.path(),
        &[("PM_SMTP_URL", format!("smtp://127.0.0.1:{}", server.port))],
    );
    let h = ReportReadyHandler::with_context(
        true,
        Context::from_config(&c),
        Mailer::from_config(&c).unwrap(),
    )
    .unwrap();
    let bytes = b"%PDF-1.4\nreport body\n%%EOF\n".to_vec();
    let path = report(dir.path(), "daily_report_20250115.pdf", &bytes);
    let line = h
        .handle_report_ready(&ev(
            "report_ready",
            json!({"report_id": "daily_report_20250115", "report_type": "daily", "report_path": path,
                   "report_format": "pdf", "recipients": ["user1@example.com", "user2@example.com"]}),
        ))
        .await
        .unwrap();
    assert_eq!(line["distribution"]["mailer"], "smtp");
    assert!(
        line["distribution"]["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "sent"),
        "{line}"
    );
    let dump = std::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/maildir_dump.py"
        ))
        .arg(&server.maildir)
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let msgs: Vec<Value> = String::from_utf8(dump.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(msgs.len(), 2);
    let mut to: Vec<&str> = msgs.iter().map(|m| m["to"].as_str().unwrap()).collect();
    to.sort();
    assert_eq!(to, ["user1@example.com", "user2@example.com"]);
    for m in &msgs {
        assert!(
            m["subject"]
                .as_str()
                .unwrap()
                .contains("daily_report_20250115")
        );
        assert!(m["text"].as_str().unwrap().contains("is ready"));
        let a = &m["attachments"][0];
        assert_eq!(a["filename"], "daily_report_20250115.pdf");
        assert_eq!(a["content_type"], "application/pdf");
        assert_eq!(
            a["sha256"],
            sha256(&bytes),
            "the attachment is the report, byte for byte"
        );
    }
}

// ----------------------------------------------------------------- risk_alert

fn alert(id: &str, severity: &str, score: f64) -> Value {
    json!({"alert_id": id, "risk_type": "security", "severity": severity, "title": format!("{id} title"), "risk_score": score})
}

#[tokio::test]
async fn risk_alerts_route_by_severity_escalate_and_run_mitigations() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let c = cfg(
        dir.path(),
        &[
            ("CRITICAL_ALERT_WEBHOOK_URL", rx.url("/critical")),
            ("HIGH_ALERT_WEBHOOK_URL", rx.url("/high")),
            ("MEDIUM_ALERT_WEBHOOK_URL", rx.url("/medium")),
            ("DEFAULT_RISK_WEBHOOK_URL", rx.url("/default")),
        ],
    );
    let (ctx, w) = ctx(&c);
    let bus = EventBus::builder().config(&c).build();
    let escalations = Arc::new(Mutex::new(Vec::new()));
    let e2 = escalations.clone();
    bus.subscribe("risk_escalated", move |e: Event| {
        e2.lock().unwrap().push(e.data);
        async { Ok::<(), std::io::Error>(()) }
    });
    let h = Arc::new(RiskAlertHandler::with_context(true, ctx, Some(&bus)).unwrap());
    h.register_mitigation("block_ip", |a| Ok(format!("blocked for {}", a.alert_id)));
    h.register_mitigation("rotate_keys", |_| Err("vault unreachable".into()));
    bus.subscribe_arc("risk_alert", h.clone());
    bus.start().await.unwrap();
    let mut crit = alert("a1", "critical", 0.95);
    crit["mitigation_steps"] = json!(["block_ip", "rotate_keys", "call_someone"]);
    bus.publish("risk_alert", crit).await.unwrap();
    bus.publish("risk_alert", alert("a2", "high", 0.5))
        .await
        .unwrap();
    bus.publish("risk_alert", alert("a3", "low", 0.85))
        .await
        .unwrap(); // escalated by score
    bus.publish("risk_alert", alert("a4", "low", 0.1))
        .await
        .unwrap(); // neither
    bus.publish("risk_alert", json!({"alert_id": "bad", "risk_type": "security", "severity": "low", "title": "t", "risk_score": 1.5})).await.unwrap();
    bus.stop().await.unwrap();
    settle(&w).await;

    // Webhooks: each severity's route, DEFAULT for low, and the next severity's on escalation.
    assert_eq!(
        rx.requests("/critical").len(),
        2,
        "a1, and a2 escalated to critical"
    );
    assert_eq!(rx.requests("/high").len(), 1);
    assert_eq!(rx.requests("/medium").len(), 1, "a3 escalated to medium");
    assert_eq!(
        rx.requests("/default").len(),
        2,
        "low alerts fall back to DEFAULT_RISK_WEBHOOK_URL"
    );

    let mut esc = escalations.lock().unwrap().clone();
    esc.sort_by(|a, b| a["alert_id"].as_str().cmp(&b["alert_id"].as_str()));
    let pairs: Vec<(String, String)> = esc
        .iter()
        .map(|e| {
            (
                e["alert_id"].as_str().unwrap().into(),
                e["escalated_to"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            // a1 is critical already: acted on at once, not escalated to itself.
            ("a2".into(), "critical".into()),
            ("a3".into(), "medium".into())
        ]
    );
    assert!(esc[1]["reason"].as_str().unwrap().contains("0.85"));

    let log = jsonl(&dir.path().join("logs/risk_alerts/risk_alerts.jsonl"));
    let a1 = log.iter().find(|l| l["alert_id"] == "a1").unwrap();
    let steps: Vec<(&str, &str)> = a1["mitigation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["step"].as_str().unwrap(), m["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("block_ip", "executed"),
            ("rotate_keys", "failed"),
            ("call_someone", "skipped")
        ]
    );
    assert_eq!(a1["mitigation"][0]["detail"], "blocked for a1");
    let bad = log.iter().find(|l| l["status"] == "invalid").unwrap();
    assert!(
        bad["reason"]
            .as_str()
            .unwrap()
            .contains("data.risk_score: expected a number from 0 to 1, got 1.5")
    );
    w.engine().shutdown().await;
}

#[tokio::test]
async fn the_dashboard_follows_a_sequence_of_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), &[]);
    let h = RiskAlertHandler::with_context(true, Context::from_config(&c), None).unwrap();
    let seq = [
        json!({"alert_id": "s1", "risk_type": "security", "severity": "low", "title": "t", "risk_score": 0.2}),
        json!({"alert_id": "p1", "risk_type": "performance", "severity": "high", "title": "t", "risk_score": 0.7}),
        json!({"alert_id": "c1", "risk_type": "compliance", "severity": "critical", "title": "t", "risk_score": 0.95}),
        // s1 again, worse: it is updated, not counted twice.
        json!({"alert_id": "s1", "risk_type": "security", "severity": "medium", "title": "t", "risk_score": 0.5}),
    ];
    for d in seq {
        h.handle_risk_alert(&ev("risk_alert", d)).await.unwrap();
    }
    h.flush_dashboard();
    let file: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("logs/risk_alerts/dashboard.json")).unwrap(),
    )
    .unwrap();
    let order: Vec<&str> = file["open_alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["c1", "p1", "s1"], "most severe first");
    assert_eq!(
        file["counts_by_severity"],
        json!({"critical": 1, "high": 1, "medium": 1})
    );
    assert_eq!(
        file["counts_by_type"],
        json!({"compliance": 1, "performance": 1, "security": 1})
    );
    assert_eq!(file["highest_risk_score"], 0.95);
    assert_eq!(file["alerts_received"], 4);
    assert_eq!(
        file["escalations"], 1,
        "p1 (high); c1 is critical, the top, and is not escalated"
    );
    assert!(file["last_update"].is_string());
    assert_eq!(serde_json::to_value(h.dashboard()).unwrap(), file);

    // A new handler on the same directory starts from the saved dashboard.
    drop(h);
    let again = RiskAlertHandler::with_context(false, Context::from_config(&c), None).unwrap();
    assert_eq!(again.dashboard().open_alerts.len(), 3);
    assert_eq!(again.dashboard().alerts_received, 4);
}

#[tokio::test]
async fn escalation_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), &[]);
    let h = RiskAlertHandler::with_context(false, Context::from_config(&c), None).unwrap();
    let line = h
        .handle_risk_alert(&ev("risk_alert", alert("x", "critical", 0.99)))
        .await
        .unwrap();
    assert!(line["escalated_to"].is_null());
    assert_eq!(h.dashboard().escalations, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_critical_alert_overtakes_ten_thousand_low_ones() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), &[("PM_QUEUE_CAPACITY", "20000".to_string())]);
    let bus = EventBus::builder()
        .config(&c)
        .priority(builtin_priority)
        .build();
    let h =
        Arc::new(RiskAlertHandler::with_context(false, Context::from_config(&c), None).unwrap());
    bus.subscribe_arc("risk_alert", h.clone());
    // A second subscriber holds every event until the critical one is queued, so the
    // lows really are waiting in the queue when it arrives (and not already handled).
    // It also notes the order in which the bus hands the events to handlers: the
    // order the priority decides. (The handler log's order also depends on how
    // long each handler run takes, which a loaded machine stretches.)
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let order = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (g, o) = (gate.clone(), order.clone());
    bus.subscribe("risk_alert", move |e: Event| {
        let (g, o) = (g.clone(), o.clone());
        async move {
            o.lock()
                .unwrap()
                .push(e.data["alert_id"].as_str().unwrap_or_default().to_string());
            g.acquire().await.unwrap().forget();
            Ok::<(), std::io::Error>(())
        }
    });
    bus.start().await.unwrap();
    let lows: Vec<Event> = (0..10_000)
        .map(|i| ev("risk_alert", alert(&format!("low{i}"), "low", 0.1)))
        .collect();
    bus.publish_batch(lows).await.unwrap();
    bus.publish("risk_alert", alert("the_critical_one", "critical", 0.9))
        .await
        .unwrap();
    // The lows already handed to handlers when the critical one was queued.
    let before = order.lock().unwrap().len();
    gate.add_permits(20_000);
    bus.stop().await.unwrap();
    let log = jsonl(&dir.path().join("logs/risk_alerts/risk_alerts.jsonl"));
    assert_eq!(log.len(), 10_001);
    let order = order.lock().unwrap().clone();
    assert_eq!(order.len(), 10_001);
    let pos = order
        .iter()
        .position(|id| id == "the_critical_one")
        .unwrap();
    // Only the lows already in handlers (at most `concurrency`, 512) and one burst
    // the dispatcher holds (at most 30) can come first.
    assert!(
        pos < 1_000,
        "the critical alert was handed to its handlers at position {pos} of 10,001"
    );
    let logged = log
        .iter()
        .position(|l| l["alert_id"] == "the_critical_one")
        .unwrap();
    assert!(
        logged < 1_000,
        "the critical alert was handled at position {logged} of 10,001"
    );
    eprintln!(
        "critical alert dispatched at position {pos} ({before} in handlers when it was queued), logged at {logged}, of 10,001"
    );
}

#[tokio::test]
async fn register_builtins_subscribes_the_three_handlers_in_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), &[]);
    let bus = EventBus::builder().config(&c).build();
    let b = register_builtins(&bus, &c, None, pm_events::handlers::Access::operator(&c)).unwrap();
    assert_eq!(
        bus.get_subscribers().into_iter().collect::<Vec<_>>(),
        [
            ("file_change".into(), 1),
            ("report_ready".into(), 1),
            ("risk_alert".into(), 1),
            ("risk_resolved".into(), 1)
        ]
    );
    assert!(b.report_ready.auto_distribute);
    assert!(b.risk_alert.escalation_enabled);
    assert!(b.file_change.log_changes);
}

#[tokio::test]
async fn the_risk_handler_does_not_keep_its_bus_alive_and_saves_its_dashboard_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), &[]);
    let bus = EventBus::builder().config(&c).build();
    let b = register_builtins(&bus, &c, None, pm_events::handlers::Access::operator(&c)).unwrap();
    bus.start().await.unwrap();
    bus.publish("risk_alert", json!({"alert_id": "d1", "risk_type": "security", "severity": "high", "title": "t", "risk_score": 0.9}))
        .await
        .unwrap();
    bus.stop().await.unwrap();
    let handler = Arc::downgrade(&b.risk_alert);
    drop(b);
    drop(bus);
    assert!(
        handler.upgrade().is_none(),
        "the handler was freed with its bus (no Arc cycle)"
    );
    let d: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("logs/risk_alerts/dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        d["open_alerts"][0]["alert_id"], "d1",
        "the dashboard is saved"
    );
}
