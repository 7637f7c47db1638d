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

/// The ids of the events in the log of `logs`, in order.
fn logged_ids(logs: &std::path::Path) -> Vec<String> {
    logged(logs)
        .iter()
        .map(|l| l["event_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_the_bus_assigned_is_a_duplicate_on_every_publish_path() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::builder().log_dir(dir.path()).build();
    bus.start().await.unwrap();
    let id = bus.publish("order", json!({"n": 1})).await.unwrap();
    let again = || {
        let mut e = Event::new("order", json!({"n": 2}));
        e.event_id = id.clone();
        e
    };
    assert!(bus.publish_once(again()).await.unwrap().duplicate);
    assert_eq!(bus.publish_event(again()).await.unwrap(), id);
    assert_eq!(bus.publish(again(), None).await.unwrap(), id);
    assert_eq!(bus.try_publish(again(), None).await.unwrap(), id);
    assert_eq!(
        bus.publish_pipelined(again()).await.unwrap().await.unwrap(),
        id
    );
    // A batch keeps its new events and leaves the repeats out, within it too.
    let fresh = Event::new("order", json!({"n": 3}));
    let ids = bus
        .publish_batch([again(), fresh.clone(), fresh.clone()])
        .await
        .unwrap();
    assert_eq!(
        ids,
        [id.clone(), fresh.event_id.clone(), fresh.event_id.clone()]
    );
    bus.stop().await.unwrap();
    assert_eq!(logged_ids(dir.path()), [id, fresh.event_id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn post_events_with_an_assigned_id_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let url = format!("{}/events", srv.url);
    let ct = vec![("content-type", "application/json".to_string())];
    let (s, v) = post(&url, &ct, br#"{"type":"deployment","data":{"n":1}}"#).await;
    assert_eq!(s, 202, "{v}");
    let id = v["event_id"].as_str().unwrap().to_string();
    let body = json!({"type": "deployment", "data": {"n": 2}, "event_id": id}).to_string();
    let (s, v) = post(&url, &ct, body.as_bytes()).await;
    assert_eq!((s, v["duplicate"].clone()), (202, json!(true)), "{v}");
    let logs = srv.logs.clone();
    srv.terminate();
    assert_eq!(logged_ids(&logs), [id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_to_our_own_incoming_webhooks_logs_each_id_once() {
    let dir = tempfile::tempdir().unwrap();
    // The server's own /webhooks/incoming as a route: its port is known once it runs,
    // so the route is a managed endpoint (the walkthrough's shape).
    let srv = Server::start(dir.path(), &[]);
    let target = format!("{}/webhooks/incoming", srv.url);
    common::api::create(
        &srv,
        json!({"url": target, "event_types": ["deployment"], "secret": common::server::SECRET}),
    )
    .await;
    let id = common::api::publish(&srv, "deployment", json!({"service": "api"})).await;
    // Delivered (the server acknowledged its own event as a duplicate).
    common::api::until(
        &format!("{}/api/v1/deliveries?event_id={id}", srv.url),
        std::time::Duration::from_secs(20),
        "the delivery delivered",
        |s, v| s == 200 && v["data"][0]["status"] == "delivered",
    )
    .await;
    let logs = srv.logs.clone();
    srv.terminate();
    assert_eq!(logged_ids(&logs), [id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_id_repeated_after_serve_restarts_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let body = br#"{"event_type":"deployment","data":{"service":"api"}}"#;
    let now = pm_events::event::now_unix() as i64;
    let headers = common::server::standard("msg_restart_1", now, body);
    let srv = Server::start(dir.path(), &[]);
    let (s, v) = post(&format!("{}/webhooks/incoming", srv.url), &headers, body).await;
    assert_eq!(
        (s, v["event_id"].clone()),
        (202, json!("msg_restart_1")),
        "{v}"
    );
    srv.terminate();
    let srv = Server::start(dir.path(), &[]);
    let (s, v) = post(&format!("{}/webhooks/incoming", srv.url), &headers, body).await;
    assert_eq!((s, v["duplicate"].clone()), (202, json!(true)), "{v}");
    let logs = srv.logs.clone();
    srv.terminate();
    assert_eq!(logged_ids(&logs), ["msg_restart_1"]);
}

#[test]
fn publish_lines_take_an_event_id_and_log_a_repeated_one_once() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pm-events"))
        .args(["publish", "-"])
        .env_remove("RUST_LOG")
        .env("PM_LOG_DIR", &logs)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for n in 0..3 {
            writeln!(
                stdin,
                r#"{{"type":"deployment","data":{{"n":{n}}},"event_id":"line-id"}}"#
            )
            .unwrap();
        }
        writeln!(stdin, r#"{{"type":"deployment","data":{{"n":9}}}}"#).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(&printed[..3], ["line-id", "line-id", "line-id"]);
    let ids = logged_ids(&logs);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[0], "line-id");
}
