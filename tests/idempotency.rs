//! An event published twice with the same `event_id` within 24 h is accepted
//! once: through the library, `POST /events` (`Idempotency-Key` or `event_id`),
//! and `pm-events publish --id` — across restarts and processes too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::logged;

use common::server::{Server, post};
use pm_events::{Event, EventBus};
use serde_json::{Value, json};
use std::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn the_library_accepts_an_id_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::builder().log_dir(dir.path()).build();
    bus.start().await.unwrap();
    let mut e = Event::new("order", json!({"n": 1}));
    e.event_id = "order-1".into();
    assert_eq!(bus.publish(e.clone(), None).await.unwrap(), "order-1");
    assert_eq!(bus.publish(e.clone(), None).await.unwrap(), "order-1");
    let a = bus.publish_once(e.clone()).await.unwrap();
    assert!(a.duplicate);
    // Concurrent repeats of a new id: one is accepted.
    let mut f = Event::new("order", json!({"n": 2}));
    f.event_id = "order-2".into();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (bus, f) = (bus.clone(), f.clone());
            tokio::spawn(async move { bus.publish_once(f).await.unwrap().duplicate })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        fresh += usize::from(!t.await.unwrap());
    }
    assert_eq!(fresh, 1);
    bus.stop().await.unwrap();
    // A new bus on the same log directory remembers them.
    let bus = EventBus::builder().log_dir(dir.path()).build();
    bus.start().await.unwrap();
    assert!(bus.publish_once(e).await.unwrap().duplicate);
    bus.stop().await.unwrap();
    let ids: Vec<Value> = logged(dir.path())
        .iter()
        .map(|l| l["event_id"].clone())
        .collect();
    assert_eq!(ids, [json!("order-1"), json!("order-2")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn post_events_takes_an_idempotency_key_or_an_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let url = format!("{}/events", srv.url);
    let body = br#"{"type":"deployment","data":{"service":"api"}}"#;
    let mut h = vec![("content-type", "application/json".to_string())];
    h.push(("idempotency-key", "deploy-42".into()));
    let (s, v) = post(&url, &h, body).await;
    assert_eq!(
        (s, v["event_id"].clone(), v.get("duplicate")),
        (202, json!("deploy-42"), None)
    );
    let (s, v) = post(&url, &h, body).await;
    assert_eq!((s, v["duplicate"].clone()), (202, json!(true)));
    // The same id in the body is the same key.
    let ct = vec![("content-type", "application/json".to_string())];
    let with_id = br#"{"type":"deployment","data":{"service":"api"},"event_id":"deploy-42"}"#;
    let (s, v) = post(&url, &ct, with_id).await;
    assert_eq!((s, v["duplicate"].clone()), (202, json!(true)));
    // Different header and body ids are refused.
    let (s, v) = post(
        &url,
        &h,
        br#"{"type":"deployment","data":{},"event_id":"other"}"#,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    // 16 concurrent first tries of a new key: one event.
    let mut h2 = ct.clone();
    h2.push(("idempotency-key", "deploy-43".into()));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (url, h2) = (url.clone(), h2.clone());
            tokio::spawn(async move { post(&url, &h2, body).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().0, 202);
    }
    let logs = srv.logs.clone();
    srv.terminate();
    let ids: Vec<Value> = logged(&logs)
        .iter()
        .map(|l| l["event_id"].clone())
        .collect();
    assert_eq!(ids, [json!("deploy-42"), json!("deploy-43")]);
}

#[test]
fn publish_with_an_id_publishes_once_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_pm-events"))
            .args([
                "publish",
                "deployment",
                r#"{"service":"api"}"#,
                "--id",
                "release-7",
            ])
            .env_remove("RUST_LOG")
            .env("PM_LOG_DIR", dir.path().join("logs"))
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success());
    assert_eq!(String::from_utf8_lossy(&first.stdout).trim(), "release-7");
    let second = run();
    assert!(second.status.success());
    assert_eq!(String::from_utf8_lossy(&second.stdout).trim(), "release-7");
    assert!(String::from_utf8_lossy(&second.stderr).contains("accepted already"));
    assert_eq!(logged(&dir.path().join("logs")).len(), 1);
}
