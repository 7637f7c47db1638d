//! Interoperability with an independent Standard Webhooks implementation: the
//! `standardwebhooks` package from PyPI, run by the test harness.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestReceiver;
use pm_events::config::Secret;
use pm_events::event::now_unix;
use pm_events::webhook::sign::{DEFAULT_TOLERANCE, Signer, verify_standard};
use pm_events::webhook::{DeliveryConfig, Route, WebhookEngine};
use pm_events::{Config, Event};
use serde_json::json;
use std::time::Duration;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn py(args: &[&str], body: &[u8]) -> (bool, String) {
    common::py_script("standardwebhooks_interop.py", args, body)
}

#[test]
fn our_signature_verifies_with_the_python_library_and_theirs_with_ours() {
    let secret = Secret::new(SECRET);
    let signer = Signer::new(&secret).unwrap();
    let body = br#"{"event_type":"file_change","data":{"file_path":"/tmp/a.txt"}}"#;
    let ts = now_unix() as i64;
    let sig = signer.standard_signature("msg_1", ts, body);
    let (ok, out) = py(&["verify", SECRET, "msg_1", &ts.to_string(), &sig], body);
    assert!(ok, "python rejected our signature: {out}");

    // A tampered body is rejected by the library too (the check is real).
    let (ok, _) = py(&["verify", SECRET, "msg_1", &ts.to_string(), &sig], b"{}");
    assert!(!ok);

    let (ok, theirs) = py(&["sign", SECRET, "msg_2", &ts.to_string()], body);
    assert!(ok, "{theirs}");
    assert!(theirs.starts_with("v1,"), "{theirs}");
    verify_standard(
        std::slice::from_ref(&secret),
        "msg_2",
        &ts.to_string(),
        body,
        &theirs,
        ts,
        DEFAULT_TOLERANCE,
    )
    .unwrap();
    assert_eq!(theirs, signer.standard_signature("msg_2", ts, body));
}

#[tokio::test]
async fn a_delivered_webhook_verifies_with_the_python_library() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let cfg = Config::from_vars([
        ("PM_LOG_DIR", dir.path().to_str().unwrap()),
        ("WEBHOOK_SIGNATURE_SECRET", SECRET),
    ])
    .unwrap();
    let e = WebhookEngine::open(DeliveryConfig::from_config(&cfg), &cfg.webhook_secrets).unwrap();
    e.start().unwrap();
    let event = Event::new(
        "report_ready",
        json!({"report_id": "daily_report_20250115", "note": "ünïcode ✓"}),
    );
    let route = Route {
        name: "REPORT_READY_WEBHOOK_URL".into(),
        url: rx.url("/reports"),
    };
    let id = e.enqueue(&event, &route).await.unwrap();
    assert_eq!(
        e.wait(&[id], Duration::from_secs(20))
            .await
            .unwrap()
            .delivered,
        1
    );
    e.shutdown().await;
    let r = &rx.requests("/reports")[0];
    let (ok, out) = py(
        &[
            "verify",
            SECRET,
            r.header("webhook-id"),
            r.header("webhook-timestamp"),
            r.header("webhook-signature"),
        ],
        &r.body,
    );
    assert!(ok, "python rejected a real delivery: {out}");
}
