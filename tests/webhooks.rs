//! Outgoing webhooks against a real HTTP receiver on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Reply, TestReceiver, jsonl, wait_until};
use pm_events::config::Secret;
use pm_events::event::now_unix;
use pm_events::webhook::outbox::DeliveryState;
use pm_events::webhook::payload::verify_body_signature;
use pm_events::webhook::sign::{DEFAULT_TOLERANCE, verify_hex_signature, verify_standard};
use pm_events::webhook::{DeliveryConfig, Route, WebhookEngine, WebhookError, WebhookHandler};
use pm_events::{Config, Event, EventBus};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const T: Duration = Duration::from_secs(20);

fn config(dir: &Path, extra: &[(&str, &str)]) -> Config {
    let mut vars = vec![
        ("PM_LOG_DIR".to_string(), dir.display().to_string()),
        ("WEBHOOK_SIGNATURE_SECRET".to_string(), SECRET.to_string()),
        ("WEBHOOK_BACKOFF_BASE_MS".to_string(), "100".to_string()),
    ];
    for (k, v) in extra {
        vars.retain(|(name, _)| name != k);
        vars.push((k.to_string(), v.to_string()));
    }
    Config::from_vars(vars).unwrap()
}

fn engine(cfg: &Config) -> WebhookEngine {
    let e = WebhookEngine::open(DeliveryConfig::from_config(cfg), &cfg.webhook_secrets).unwrap();
    e.start().unwrap();
    e
}

fn route(url: String) -> Route {
    Route {
        name: "PM_WEBHOOK_URL_TEST".into(),
        url,
    }
}

fn attempts(dir: &Path) -> Vec<serde_json::Value> {
    jsonl(&dir.join("webhooks/webhook_attempts.jsonl"))
}

#[tokio::test]
async fn a_bus_event_arrives_signed_three_ways() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let cfg = config(
        dir.path(),
        &[("PM_WEBHOOK_URL_DEPLOYMENT", &rx.url("/deploy"))],
    );
    let handler = Arc::new(
        WebhookHandler::from_config(&cfg)
            .unwrap()
            .track_deliveries(),
    );
    handler.engine().start().unwrap();
    let bus = EventBus::builder().config(&cfg).build();
    bus.subscribe_arc("*", handler.clone());
    bus.start().await.unwrap();
    let id = bus
        .publish(
            "deployment",
            json!({"service": "api-gateway", "status": "success"}),
        )
        .await
        .unwrap();
    bus.publish("unrouted", json!({})).await.unwrap();
    bus.stop().await.unwrap();
    let ids = handler.take_queued();
    assert_eq!(ids.len(), 1, "only the routed type is delivered");
    let outcome = handler.engine().wait(&ids, T).await.unwrap();
    assert_eq!(outcome.delivered, 1);

    let got = rx.requests("/deploy");
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.header("content-type"), "application/json");
    let body = r.json();
    assert_eq!(body["event_type"], "deployment");
    assert_eq!(body["event_id"], id.as_str());
    assert_eq!(body["source"], "personal-manager");
    assert_eq!(body["data"]["service"], "api-gateway");
    assert!(body["timestamp"].is_i64());
    let secrets = [Secret::new(SECRET)];
    verify_hex_signature(&secrets, &r.body, r.header("x-webhook-signature")).unwrap();
    assert_eq!(r.header("webhook-id"), id);
    verify_standard(
        &secrets,
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        &r.body,
        r.header("webhook-signature"),
        now_unix() as i64,
        DEFAULT_TOLERANCE,
    )
    .unwrap();
    verify_body_signature(&secrets, &r.body).unwrap();
    assert!(handler.verify_webhook_signature(&r.body, r.header("x-webhook-signature")));
    assert!(!handler.verify_webhook_signature(b"other", r.header("x-webhook-signature")));

    let log = attempts(dir.path());
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["outcome"], "delivered");
    assert_eq!(log[0]["status"], 200);
    assert_eq!(log[0]["attempt"], 1);
    assert_eq!(log[0]["event_id"], id.as_str());
    assert!(log[0]["duration_ms"].as_f64().unwrap() >= 0.0);
    handler.engine().shutdown().await;
}

#[tokio::test]
async fn retries_back_off_exponentially_then_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.script(
        "/flaky",
        vec![Reply::status(503), Reply::status(500), Reply::status(200)],
    );
    let cfg = config(dir.path(), &[("PM_NODE_ID", "node-a")]);
    let e = engine(&cfg);
    let id = e
        .enqueue(&Event::new("x", json!({})), &route(rx.url("/flaky")))
        .await
        .unwrap();
    let o = e.wait(&[id], T).await.unwrap();
    assert_eq!(o.delivered, 1);
    let got = rx.requests("/flaky");
    assert_eq!(got.len(), 3);
    // base 100 ms: the first retry waits 100 ms ± 20 %, the second 200 ms ± 20 %.
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    assert!(gap1 >= Duration::from_millis(80), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(160), "{gap2:?}");
    // Same webhook-id on every attempt; the signature is recomputed per attempt.
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == got[0].header("webhook-id"))
    );
    let log = attempts(dir.path());
    let outcomes: Vec<&str> = log.iter().map(|l| l["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["retry", "retry", "delivered"]);
    assert_eq!(log[0]["status"], 503);
    assert!(log[0]["next_retry_at"].is_string());
    assert!(log.iter().all(|l| l["node"] == "node-a"), "{log:?}");
    assert!(log[2]["next_retry_at"].is_null());
    assert!(e.outbox().list(DeliveryState::Pending).unwrap().is_empty());
    e.shutdown().await;
}

#[tokio::test]
async fn retry_after_longer_than_the_backoff_wins() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.script("/busy", vec![Reply::status(429).header("Retry-After", "1")]);
    let cfg = config(dir.path(), &[("WEBHOOK_BACKOFF_BASE_MS", "10")]);
    let e = engine(&cfg);
    let id = e
        .enqueue(&Event::new("x", json!({})), &route(rx.url("/busy")))
        .await
        .unwrap();
    assert_eq!(e.wait(&[id], T).await.unwrap().delivered, 1);
    let got = rx.requests("/busy");
    assert_eq!(got.len(), 2);
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(950),
        "{:?}",
        got[1].at - got[0].at
    );
    e.shutdown().await;
}

#[tokio::test]
async fn client_errors_are_final_and_dead_letters_can_be_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.script("/bad", vec![Reply::status(400)]);
    rx.script("/gone", vec![Reply::status(410)]);
    let cfg = config(dir.path(), &[]);
    let e = engine(&cfg);
    let ev = Event::new("x", json!({"n": 1}));
    let bad = e.enqueue(&ev, &route(rx.url("/bad"))).await.unwrap();
    let gone = e
        .enqueue(&Event::new("x", json!({})), &route(rx.url("/gone")))
        .await
        .unwrap();
    let o = e.wait(&[bad.clone(), gone.clone()], T).await.unwrap();
    assert_eq!(o.dead, 2);
    assert_eq!(rx.requests("/bad").len(), 1, "a 4xx is not retried");
    assert_eq!(rx.requests("/gone").len(), 1);
    let log = attempts(dir.path());
    let outcome =
        |id: &str| log.iter().find(|l| l["delivery_id"] == id).unwrap()["outcome"].clone();
    assert_eq!(outcome(&bad), "failed");
    assert_eq!(outcome(&gone), "gone");
    let dead = jsonl(&dir.path().join("webhooks/dead_letters.jsonl"));
    assert_eq!(dead.len(), 2);
    let gone_line = dead
        .iter()
        .find(|l| l["delivery_id"] == gone.as_str())
        .unwrap();
    assert!(gone_line["reason"].as_str().unwrap().contains("410"));
    assert!(dead.iter().all(|l| l["node"] == cfg.node_id.as_str()));
    assert_eq!(e.outbox().list(DeliveryState::Dead).unwrap().len(), 2);

    // The receiver is fixed; redeliver the one event's dead letter.
    assert_eq!(e.redeliver(Some(&ev.event_id)).await.unwrap(), 1);
    assert_eq!(e.wait(&[bad], T).await.unwrap().delivered, 1);
    assert_eq!(rx.requests("/bad").len(), 2);
    assert_eq!(
        e.outbox().list(DeliveryState::Dead).unwrap().len(),
        1,
        "the other stays dead"
    );
    e.shutdown().await;
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let elsewhere = rx.url("/elsewhere");
    rx.script(
        "/moved",
        vec![Reply::status(307).header("location", &elsewhere)],
    );
    let cfg = config(dir.path(), &[]);
    let e = engine(&cfg);
    let id = e
        .enqueue(&Event::new("x", json!({})), &route(rx.url("/moved")))
        .await
        .unwrap();
    let o = e.wait(std::slice::from_ref(&id), T).await.unwrap();
    assert_eq!(o.dead, 1, "{o:?}");
    assert_eq!(rx.requests("/moved").len(), 1, "a 3xx is not retried");
    assert!(
        rx.requests("/elsewhere").is_empty(),
        "the signed body never goes to a URL that was not configured"
    );
    let log = attempts(dir.path());
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["status"], 307);
    assert_eq!(log[0]["outcome"], "failed");
    e.shutdown().await;
}

#[tokio::test]
async fn exhausted_retries_end_in_the_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.set_default("/down", Reply::status(500));
    let cfg = config(
        dir.path(),
        &[
            ("WEBHOOK_MAX_RETRIES", "2"),
            ("WEBHOOK_BACKOFF_BASE_MS", "10"),
        ],
    );
    let e = engine(&cfg);
    let id = e
        .enqueue(&Event::new("x", json!({})), &route(rx.url("/down")))
        .await
        .unwrap();
    assert_eq!(e.wait(&[id], T).await.unwrap().dead, 1);
    assert_eq!(rx.requests("/down").len(), 3, "one try and two retries");
    let log = attempts(dir.path());
    assert_eq!(log.last().unwrap()["outcome"], "dead");
    let dead = jsonl(&dir.path().join("webhooks/dead_letters.jsonl"));
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("retries exhausted")
    );
    e.shutdown().await;
}

#[tokio::test]
async fn network_errors_are_retried_and_logged_without_the_url_query() {
    let dir = tempfile::tempdir().unwrap();
    // A port with nothing listening: bind, note the port, close.
    let port = common::free_port();
    let cfg = config(
        dir.path(),
        &[
            ("WEBHOOK_MAX_RETRIES", "1"),
            ("WEBHOOK_BACKOFF_BASE_MS", "10"),
        ],
    );
    let e = engine(&cfg);
    let url = format!("http://127.0.0.1:{port}/x?token=topsecret");
    let id = e
        .enqueue(&Event::new("x", json!({})), &route(url))
        .await
        .unwrap();
    assert_eq!(e.wait(&[id], T).await.unwrap().dead, 1);
    let log = attempts(dir.path());
    assert_eq!(log.len(), 2);
    assert!(log[0]["status"].is_null());
    assert!(
        log[0]["error"].as_str().unwrap().contains("connection"),
        "{}",
        log[0]
    );
    assert_eq!(log[0]["url"], format!("http://127.0.0.1:{port}/x?…"));
    e.shutdown().await;
    // The outbox (state, not a log) keeps the URL it must deliver to; the logs do not.
    for f in common::files_under(dir.path())
        .into_iter()
        .filter(|f| !f.to_string_lossy().contains("outbox"))
    {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !contains(&bytes, b"topsecret"),
            "{} holds the URL's query",
            f.display()
        );
    }
}

#[tokio::test]
async fn a_slow_endpoint_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let slow = TestReceiver::start().await;
    slow.set_default("/slow", Reply::status(200).delay(Duration::from_secs(3)));
    let cfg = config(dir.path(), &[("PM_WEBHOOK_CONCURRENCY", "1")]);
    let e = engine(&cfg);
    let mut slow_ids = Vec::new();
    for _ in 0..3 {
        slow_ids.push(
            e.enqueue(&Event::new("x", json!({})), &route(slow.url("/slow")))
                .await
                .unwrap(),
        );
    }
    let mut fast_ids = Vec::new();
    for _ in 0..5 {
        fast_ids.push(
            e.enqueue(&Event::new("x", json!({})), &route(rx.url("/fast")))
                .await
                .unwrap(),
        );
    }
    let o = e.wait(&fast_ids, Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        o.delivered, 5,
        "the fast endpoint is served while the slow one works"
    );
    let n = slow.requests("/slow").len();
    assert!(
        n <= 1,
        "one at a time for the slow endpoint, got {n}: {:?}",
        slow.requests("/slow")
            .iter()
            .map(|r| r.header("webhook-id").to_string())
            .collect::<Vec<_>>()
    );
    e.shutdown().await;
}

#[tokio::test]
async fn answers_with_a_body_keep_the_connection_for_the_next_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    // Receivers often answer with a small JSON body: it must be read, or the
    // connection cannot go back to the pool and every delivery opens a new one.
    rx.set_default(
        "/ok",
        Reply::status(200)
            .header("content-type", "application/json")
            .body(r#"{"ok":true,"message":"received"}"#),
    );
    rx.script("/ok", vec![Reply::status(503).body("busy, try again")]);
    let cfg = config(dir.path(), &[("PM_WEBHOOK_CONCURRENCY", "1")]);
    let e = engine(&cfg);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            e.enqueue(&Event::new("x", json!({ "i": i })), &route(rx.url("/ok")))
                .await
                .unwrap(),
        );
    }
    let o = e.wait(&ids, T).await.unwrap();
    assert_eq!(o.delivered, 10);
    let got = rx.requests("/ok");
    assert_eq!(got.len(), 11, "ten deliveries, one of them retried once");
    // One request at a time; hyper hands a connection back to the pool from
    // its connection task, so the next request may find it still busy and
    // open one more: at most two, where an unread body costs one per request.
    let peers: std::collections::HashSet<_> = got.iter().map(|r| r.peer).collect();
    assert!(peers.len() <= 2, "connections reused, got {peers:?}");
    e.shutdown().await;
}

#[tokio::test]
async fn a_backlog_waits_in_the_outbox_beyond_the_window_and_all_of_it_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let other = TestReceiver::start().await;
    rx.set_default("/slow", Reply::status(200).delay(Duration::from_millis(20)));
    let cfg = config(dir.path(), &[("PM_WEBHOOK_CONCURRENCY", "2")]);
    let mut dc = DeliveryConfig::from_config(&cfg);
    dc.window = 8;
    let e = WebhookEngine::open(dc, &cfg.webhook_secrets).unwrap();
    e.start().unwrap();
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(
            e.enqueue_watched(&Event::new("x", json!({ "i": i })), &route(rx.url("/slow")))
                .await
                .unwrap(),
        );
    }
    // At most a window's worth is held in memory; the rest waits in the outbox.
    assert!(e.active() <= 8, "{} held in memory", e.active());
    // (Those answered meanwhile, 20 ms each, two at a time, have left it.)
    let pending = e.outbox().list(DeliveryState::Pending).unwrap().len();
    let answered = rx.requests("/slow").len();
    assert!(
        pending > 8 && pending + answered >= 60,
        "{pending} pending, {answered} answered"
    );
    // A full window of one endpoint does not hold up another.
    let quick = e
        .enqueue_watched(&Event::new("x", json!({})), &route(other.url("/quick")))
        .await
        .unwrap();
    let o = e.wait(&[quick], Duration::from_secs(2)).await.unwrap();
    assert_eq!(o.delivered, 1);
    // Room is made as deliveries settle, and the poller takes the rest.
    let o = e.wait(&ids, T).await.unwrap();
    assert_eq!(o.delivered, 60, "{o:?}");
    let got = rx.requests("/slow");
    let distinct: std::collections::HashSet<_> = got
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert_eq!((got.len(), distinct.len()), (60, 60), "each sent once");
    assert!(e.outbox().list(DeliveryState::Pending).unwrap().is_empty());
    e.shutdown().await;
}

#[tokio::test]
async fn a_restarted_engine_resumes_pending_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.script("/later", vec![Reply::status(503)]);
    let cfg = config(dir.path(), &[("WEBHOOK_BACKOFF_BASE_MS", "2000")]);
    let first = engine(&cfg);
    let id = first
        .enqueue(&Event::new("x", json!({})), &route(rx.url("/later")))
        .await
        .unwrap();
    rx.wait_for("/later", 1, T).await;
    wait_until(T, || attempts(dir.path()).len() == 1).await;
    first.shutdown().await; // the retry is 2 s away: it stays pending
    drop(first);
    let pending = pm_events::webhook::outbox::Outbox::open(
        dir.path().join("webhooks/outbox.sqlite3"),
        Default::default(),
    )
    .unwrap()
    .list(DeliveryState::Pending)
    .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].attempt, 1);

    let second = engine(&cfg);
    assert!(second.is_owner());
    assert_eq!(second.wait(&[id], T).await.unwrap().delivered, 1);
    assert_eq!(rx.requests("/later").len(), 2);
    second.shutdown().await;
}

#[tokio::test]
async fn a_second_process_only_queues_and_the_owner_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let cfg = config(dir.path(), &[]);
    let owner = engine(&cfg);
    let other =
        WebhookEngine::open(DeliveryConfig::from_config(&cfg), &cfg.webhook_secrets).unwrap();
    assert!(owner.is_owner());
    assert!(!other.is_owner());
    let id = other
        .enqueue(&Event::new("x", json!({})), &route(rx.url("/q")))
        .await
        .unwrap();
    // The owner polls the outbox and delivers what the other queued.
    assert_eq!(other.wait(&[id], T).await.unwrap().delivered, 1);
    assert_eq!(rx.requests("/q").len(), 1);
    owner.shutdown().await;
}

#[tokio::test]
async fn a_backlog_left_by_others_is_resumed_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let cfg = config(dir.path(), &[]);
    let open = || WebhookEngine::open(DeliveryConfig::from_config(&cfg), &cfg.webhook_secrets);
    // The owner is not started (it delivers nothing); another process queues a
    // backlog larger than the resume reads by id (64), and a few more.
    let holder = open().unwrap();
    let queuer = open().unwrap();
    assert!(holder.is_owner() && !queuer.is_owner());
    let mut ids = Vec::new();
    for n in 0..100 {
        let ev = Event::new("x", json!({ "n": n }));
        ids.push(queuer.enqueue(&ev, &route(rx.url("/many"))).await.unwrap());
    }
    drop(holder);
    drop(queuer);

    let owner = engine(&cfg);
    assert!(owner.is_owner());
    let o = owner.wait(&ids, T).await.unwrap();
    assert_eq!(o.delivered, 100, "{o:?}");
    // A few more while it runs: its poller picks them up from the outbox.
    let queuer = open().unwrap();
    let mut more = Vec::new();
    for n in 0..3 {
        let ev = Event::new("x", json!({ "more": n }));
        more.push(queuer.enqueue(&ev, &route(rx.url("/many"))).await.unwrap());
    }
    assert_eq!(queuer.wait(&more, T).await.unwrap().delivered, 3);
    let got = rx.requests("/many");
    assert_eq!(got.len(), 103, "each delivery is sent once");
    let distinct: std::collections::HashSet<String> = got
        .iter()
        .map(|r| r.json()["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(distinct.len(), 103);
    owner.shutdown().await;
}

#[tokio::test]
async fn unsigned_delivery_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let mut cfg = config(dir.path(), &[]);
    cfg.webhook_secrets.clear();
    let e = engine(&cfg);
    let err = e
        .enqueue(&Event::new("x", json!({})), &route(rx.url("/u")))
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::Unsigned));
    assert!(err.to_string().contains("PM_ALLOW_UNSIGNED"));
    e.shutdown().await;
    drop(e);
    cfg.allow_unsigned = true;
    let e = engine(&cfg);
    let id = e
        .enqueue(&Event::new("x", json!({})), &route(rx.url("/u")))
        .await
        .unwrap();
    assert_eq!(e.wait(&[id], T).await.unwrap().delivered, 1);
    let r = &rx.requests("/u")[0];
    assert_eq!(r.header("x-webhook-signature"), "");
    assert!(r.json().get("signature").is_none());
    e.shutdown().await;
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn no_secret_reaches_any_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.script("/s", vec![Reply::status(500), Reply::status(400)]);
    let plain = "plain-secret-value-123";
    let cfg = config(
        dir.path(),
        &[
            ("WEBHOOK_SIGNATURE_SECRET", plain),
            ("WEBHOOK_BACKOFF_BASE_MS", "10"),
        ],
    );
    let bus = EventBus::builder().config(&cfg).build();
    bus.start().await.unwrap();
    let e = engine(&cfg);
    let mut ids = Vec::new();
    for p in ["/s", "/ok"] {
        ids.push(
            e.enqueue(&Event::new("x", json!({"p": p})), &route(rx.url(p)))
                .await
                .unwrap(),
        );
    }
    bus.publish("x", json!({})).await.unwrap();
    bus.stop().await.unwrap();
    e.wait(&ids, T).await.unwrap();
    e.shutdown().await;
    let files = common::files_under(dir.path());
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !contains(&bytes, plain.as_bytes()),
            "{} holds the secret",
            f.display()
        );
    }
}

#[tokio::test]
async fn handle_incoming_webhook_is_the_servers_logic_as_a_library_call() {
    use pm_events::webhook::incoming::{IncomingError, IncomingOutcome};
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[("PM_QUEUE_CAPACITY", "1")]);
    let handler = WebhookHandler::from_config(&cfg).unwrap();
    let bus = EventBus::builder()
        .config(&cfg)
        .handler_timeout(Duration::from_secs(3600))
        .build();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    bus.subscribe("deployment", move |_e: Event| {
        let g = g.clone();
        async move {
            g.acquire().await.unwrap().forget();
            Ok::<(), std::io::Error>(())
        }
    });
    bus.start().await.unwrap();
    let signer = pm_events::webhook::Signer::new(&Secret::new(SECRET)).unwrap();
    let body = br#"{"event_type":"deployment","data":{"n":1},"event_id":"e-1"}"#;
    let sig = signer.hex_signature(body);
    let none = BTreeMap::new();
    let first = handler
        .handle_incoming_webhook(&bus, body, Some(&sig), &none)
        .await
        .unwrap();
    assert_eq!(first, IncomingOutcome::Published("e-1".into()));
    let again = handler
        .handle_incoming_webhook(&bus, body, Some(&sig), &none)
        .await
        .unwrap();
    assert_eq!(again, IncomingOutcome::Duplicate("e-1".into()));
    let forged = handler
        .handle_incoming_webhook(&bus, b"{}", Some(&sig), &none)
        .await
        .unwrap_err();
    assert!(matches!(forged, IncomingError::Unauthorized(_)), "{forged}");
    // The queue (capacity 1) is full while the first event's handler waits: refused, not queued.
    let body2 = br#"{"event_type":"deployment","data":{"n":2}}"#;
    let full = handler
        .handle_incoming_webhook(&bus, body2, Some(&signer.hex_signature(body2)), &none)
        .await
        .unwrap_err();
    assert!(
        matches!(
            full,
            IncomingError::Door(pm_events::door::DoorError::Bus(
                pm_events::BusError::QueueFull { .. }
            ))
        ),
        "{full}"
    );
    gate.add_permits(10);
    bus.stop().await.unwrap();
    let logged = pm_events::journal::read_day(&cfg.log_dir, pm_events::journal::today()).unwrap();
    assert_eq!(logged.len(), 1);
}
