//! Scale-out over a real NATS JetStream server (started here on a free port).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::nats::nats;
use common::wait_until;
use pm_events::transport::{NatsTransport, Transport};
use pm_events::{Event, EventBus};
use serde_json::json;
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

async fn bus(
    url: &str,
    group: &str,
    log: &std::path::Path,
    seen: Arc<Mutex<Vec<String>>>,
) -> EventBus {
    let t = NatsTransport::connect(url, group, Duration::from_secs(30))
        .await
        .unwrap();
    let bus = EventBus::builder()
        .log_dir(log)
        .transport(Arc::new(t))
        .build();
    bus.subscribe("job", move |e: Event| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(e.event_id);
            Ok::<(), std::io::Error>(())
        }
    });
    bus.start().await.unwrap();
    bus
}

/// Every id of `ids` was handled exactly once by the processes whose handled ids are `seen`.
fn assert_handled_once(seen: &[&Arc<Mutex<Vec<String>>>], ids: &HashSet<String>) {
    let all: Vec<String> = seen
        .iter()
        .flat_map(|s| s.lock().unwrap().clone())
        .collect();
    assert_eq!(all.len(), ids.len(), "each event handled exactly once");
    assert_eq!(&all.into_iter().collect::<HashSet<_>>(), ids);
}

#[tokio::test(flavor = "multi_thread")]
async fn processes_in_one_group_share_the_work_and_handle_each_event_once() {
    let server = nats().await;
    let dir = tempfile::tempdir().unwrap();
    let (a_seen, b_seen) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let a = bus(
        &server.url,
        "workers",
        &dir.path().join("a"),
        a_seen.clone(),
    )
    .await;
    let b = bus(
        &server.url,
        "workers",
        &dir.path().join("b"),
        b_seen.clone(),
    )
    .await;
    let mut ids = HashSet::new();
    for i in 0..300 {
        ids.insert(a.publish("job", json!({"n": i})).await.unwrap());
    }
    // The same event published twice (same id): accepted once.
    let dup = Event::new("job", json!({"n": "dup"}));
    ids.insert(a.publish_event(dup.clone()).await.unwrap());
    a.publish_event(dup).await.unwrap();
    wait_until(T, || {
        a_seen.lock().unwrap().len() + b_seen.lock().unwrap().len() >= 301
    })
    .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert_handled_once(&[&a_seen, &b_seen], &ids);
    let (na, nb) = (a_seen.lock().unwrap().len(), b_seen.lock().unwrap().len());
    assert!(
        na > 0 && nb > 0,
        "both processes took a share: {na} and {nb}"
    );
    // The publishing process wrote its write-ahead log as usual, each id once.
    assert_eq!(
        pm_events::journal::read_day(&dir.path().join("a"), pm_events::journal::today())
            .unwrap()
            .len(),
        301
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_taken_by_a_process_that_dies_goes_to_another() {
    let server = nats().await;
    let dir = tempfile::tempdir().unwrap();
    // A consumer that takes the event and "dies" (never acknowledges it); short ack_wait.
    let dying = NatsTransport::connect(&server.url, "g", Duration::from_secs(2))
        .await
        .unwrap();
    let mut consumer = dying.open().await.unwrap();
    let publisher = EventBus::builder()
        .log_dir(dir.path().join("p"))
        .transport(Arc::new(
            NatsTransport::connect(&server.url, "publisher-only", Duration::from_secs(30))
                .await
                .unwrap(),
        ))
        .build();
    publisher.start().await.unwrap();
    let id = publisher
        .publish("job", json!({"precious": true}))
        .await
        .unwrap();
    let taken = tokio::time::timeout(T, consumer.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.event.event_id, id);
    drop(taken); // dies holding it: no acknowledgement
    drop(consumer);
    dying.close();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let survivor = bus(&server.url, "g", &dir.path().join("s"), seen.clone()).await;
    wait_until(T, || seen.lock().unwrap().contains(&id)).await;
    survivor.stop().await.unwrap();
    publisher.stop().await.unwrap();
    assert_eq!(seen.lock().unwrap().iter().filter(|s| **s == id).count(), 1);
}

// ---- Webhook deliveries as a JetStream work queue (docs/scale-out.md) ----

use common::{Reply, TestReceiver, jsonl};
use pm_events::Config;
use pm_events::config::Secret;
use pm_events::webhook::jetstream::JetStreamQueue;
use pm_events::webhook::outbox::DeliveryState;
use pm_events::webhook::sign::verify_standard;
use pm_events::webhook::{DeliveryConfig, Route, WebhookEngine};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A node's webhook engine on its own log directory, over the work queue.
async fn node(nats_url: &str, dir: &std::path::Path, take: bool, backoff_ms: u64) -> WebhookEngine {
    let cfg = Config::from_vars([
        ("PM_LOG_DIR".to_string(), dir.display().to_string()),
        ("WEBHOOK_SIGNATURE_SECRET".to_string(), SECRET.to_string()),
        (
            "WEBHOOK_BACKOFF_BASE_MS".to_string(),
            backoff_ms.to_string(),
        ),
    ])
    .unwrap();
    let e = WebhookEngine::open(DeliveryConfig::from_config(&cfg), &cfg.webhook_secrets).unwrap();
    let q = JetStreamQueue::connect(nats_url, Duration::from_secs(60))
        .await
        .unwrap();
    e.use_jetstream(q, take).unwrap();
    e.start().unwrap();
    e
}

fn hook_route(url: String) -> Route {
    Route {
        name: "PM_WEBHOOK_URL_JOB".into(),
        url,
    }
}

fn attempt_lines(dir: &std::path::Path) -> Vec<serde_json::Value> {
    jsonl(&dir.join("webhooks/webhook_attempts.jsonl"))
}

/// Messages left in the work-queue stream.
async fn queued(nats_url: &str) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.unwrap());
    let mut s = js
        .get_stream(pm_events::webhook::jetstream::STREAM)
        .await
        .unwrap();
    s.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_deliveries_queued_by_one_node_are_delivered_by_another() {
    let server = nats().await;
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.script("/hook", vec![Reply::status(503)]); // the first request fails once
    rx.script("/bad", vec![Reply::status(400)]); // final
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));

    // Node A only queues (as the CLI commands do).
    let a = node(&server.url, &a_dir, false, 100).await;
    let events: Vec<Event> = (0..3).map(|i| Event::new("job", json!({"n": i}))).collect();
    for e in &events {
        a.enqueue(e, &hook_route(rx.url("/hook"))).await.unwrap();
    }
    let bad = Event::new("job", json!({"n": "bad"}));
    a.enqueue(&bad, &hook_route(rx.url("/bad"))).await.unwrap();
    // Something that is not a delivery of ours: skipped (and removed) by the taker.
    let js = async_nats::jetstream::new(async_nats::connect(&server.url).await.unwrap());
    js.publish("pm.webhooks.junk", "not a delivery".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(queued(&server.url).await, 5, "the work queue holds them");
    assert!(a.outbox().list(DeliveryState::Pending).unwrap().is_empty());
    assert!(rx.requests("/hook").is_empty(), "nobody took them yet");

    // Node B takes and delivers them: one retried after a 503, one dead after a 400.
    let b = node(&server.url, &b_dir, true, 100).await;
    let got = rx.wait_for("/hook", 4, T).await;
    wait_until(T, || attempt_lines(&b_dir).len() >= 5).await;
    let mut per_event = std::collections::HashMap::<String, usize>::new();
    for r in &got {
        assert!(
            verify_standard(
                &[Secret::new(SECRET)],
                r.header("webhook-id"),
                r.header("webhook-timestamp"),
                &r.body,
                r.header("webhook-signature"),
                pm_events::event::now_unix() as i64,
                pm_events::webhook::sign::DEFAULT_TOLERANCE,
            )
            .is_ok(),
            "signed"
        );
        *per_event
            .entry(r.header("webhook-id").to_string())
            .or_default() += 1;
    }
    let mut counts: Vec<usize> = events.iter().map(|e| per_event[&e.event_id]).collect();
    counts.sort();
    assert_eq!(
        counts,
        vec![1, 1, 2],
        "each delivered once; one after a retry"
    );
    let lines = attempt_lines(&b_dir);
    let outcomes = |o: &str| lines.iter().filter(|l| l["outcome"] == o).count();
    assert_eq!(
        (outcomes("delivered"), outcomes("retry"), outcomes("failed")),
        (3, 1, 1)
    );
    let retried = lines.iter().find(|l| l["outcome"] == "retry").unwrap();
    let again = lines
        .iter()
        .find(|l| l["delivery_id"] == retried["delivery_id"] && l["outcome"] == "delivered")
        .unwrap();
    assert_eq!(
        (retried["attempt"].as_u64(), again["attempt"].as_u64()),
        (Some(1), Some(2))
    );
    // The final failure is a dead letter on the node that tried it, redeliverable there.
    let dead = b.outbox().list(DeliveryState::Dead).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, bad.event_id);
    assert_eq!(jsonl(&b_dir.join("webhooks/dead_letters.jsonl")).len(), 1);
    // Everything acknowledged: the work queue is empty.
    let deadline = std::time::Instant::now() + T;
    while queued(&server.url).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "messages left in the work queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(attempt_lines(&a_dir).is_empty(), "node A sent nothing");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_handed_back_by_a_node_that_stops_is_made_by_another() {
    let server = nats().await;
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.script("/flaky", vec![Reply::status(503)]);
    let (b_dir, c_dir) = (dir.path().join("b"), dir.path().join("c"));
    // A retry ~1 s after the failure: B is gone by then.
    let b = node(&server.url, &b_dir, true, 1000).await;
    let ev = Event::new("job", json!({"precious": true}));
    b.enqueue(&ev, &hook_route(rx.url("/flaky"))).await.unwrap();
    // B's first attempt fails; B stops before its retry is due.
    wait_until(T, || {
        attempt_lines(&b_dir)
            .iter()
            .any(|l| l["outcome"] == "retry")
    })
    .await;
    b.shutdown().await;
    // Another node makes the retry: the attempt count carries over.
    let c = node(&server.url, &c_dir, true, 1000).await;
    let got = rx.wait_for("/flaky", 2, T).await;
    wait_until(T, || !attempt_lines(&c_dir).is_empty()).await;
    let line = &attempt_lines(&c_dir)[0];
    assert_eq!(line["outcome"], "delivered");
    assert_eq!(line["attempt"], 2);
    assert_eq!(got[0].header("webhook-id"), ev.event_id);
    assert_eq!(got[1].header("webhook-id"), ev.event_id);
    assert_eq!(attempt_lines(&b_dir).len(), 1, "B made one attempt only");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_fetched_ahead_by_a_process_that_stops_go_to_another_at_once() {
    let server = nats().await;
    let dir = tempfile::tempdir().unwrap();
    // ack_wait of 30 s: events a stopped process kept would reach B only after it.
    let slow_bus = |log: std::path::PathBuf, seen: Arc<Mutex<Vec<String>>>| {
        let url = server.url.clone();
        async move {
            let t = NatsTransport::connect(&url, "g", Duration::from_secs(30))
                .await
                .unwrap();
            let bus = EventBus::builder()
                .log_dir(log)
                .concurrency(1)
                .transport(Arc::new(t))
                .build();
            bus.subscribe("job", move |e: Event| {
                let seen = seen.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    seen.lock().unwrap().push(e.event_id);
                    Ok::<(), std::io::Error>(())
                }
            });
            bus.start().await.unwrap();
            bus
        }
    };
    let (a_seen, b_seen) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let a = slow_bus(dir.path().join("a"), a_seen.clone()).await;
    let mut ids = HashSet::new();
    for i in 0..40 {
        ids.insert(a.publish("job", json!({"n": i})).await.unwrap());
    }
    wait_until(T, || !a_seen.lock().unwrap().is_empty()).await;
    a.stop().await.unwrap();
    let handled_by_a = a_seen.lock().unwrap().len();
    assert!(handled_by_a < 40, "A stopped before handling everything");
    let b = slow_bus(dir.path().join("b"), b_seen.clone()).await;
    wait_until(Duration::from_secs(10), || {
        a_seen.lock().unwrap().len() + b_seen.lock().unwrap().len() >= 40
    })
    .await;
    b.stop().await.unwrap();
    assert_handled_once(&[&a_seen, &b_seen], &ids);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_delivers_its_webhooks_through_the_work_queue() {
    let server = nats().await;
    let dir = tempfile::tempdir().unwrap();
    let (url, cwd) = (server.url.clone(), dir.path().to_path_buf());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pm-events"))
            .arg("demo")
            .current_dir(&cwd)
            .env_remove("RUST_LOG")
            .env("PM_NATS_URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("webhooks           11 delivered (11 with every signature verified"),
        "{stdout}"
    );
    // The retries of the endpoint that fails twice went back to JetStream and came again.
    assert!(
        stdout.contains("/webhooks/deploy   deployment   attempt 3  answered 200"),
        "{stdout}"
    );
    assert_eq!(queued(&server.url).await, 0, "the work queue is empty");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_goes_on_taking_deliveries_after_a_server_restart_and_a_lost_consumer() {
    let mut server = nats().await;
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let b_dir = dir.path().join("b");
    let b = node(&server.url, &b_dir, true, 100).await;
    let before = Event::new("job", json!({"n": "before"}));
    b.enqueue(&before, &hook_route(rx.url("/hook")))
        .await
        .unwrap();
    rx.wait_for("/hook", 1, T).await;

    // Restart the server on the same port and store (JetStream keeps the stream).
    let _ = server.child.kill();
    let _ = server.child.wait();
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let bin = std::env::var("PM_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    server.child = Command::new(&bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
        .arg(server.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Queue one more (from a fresh node, once the server answers again): B delivers it.
    let after = Event::new("job", json!({"n": "after"}));
    let deadline = std::time::Instant::now() + T;
    while JetStreamQueue::connect(&server.url, Duration::from_secs(60))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = node(&server.url, &dir.path().join("a"), false, 100).await;
    a.enqueue(&after, &hook_route(rx.url("/hook")))
        .await
        .unwrap();
    // Deliveries are at least once: a copy of an earlier one may come too.
    let has = |id: &str| {
        rx.requests("/hook")
            .iter()
            .any(|r| r.header("webhook-id") == id)
    };
    wait_until(Duration::from_secs(60), || has(&after.event_id)).await;

    // An operator deletes the consumer: B makes it again and goes on.
    let js = async_nats::jetstream::new(async_nats::connect(&server.url).await.unwrap());
    js.get_stream(pm_events::webhook::jetstream::STREAM)
        .await
        .unwrap()
        .delete_consumer(pm_events::webhook::jetstream::CONSUMER)
        .await
        .unwrap();
    let last = Event::new("job", json!({"n": "after the consumer was deleted"}));
    a.enqueue(&last, &hook_route(rx.url("/hook")))
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), || has(&last.event_id)).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bus_whose_consumer_is_deleted_makes_it_again_and_goes_on() {
    let server = nats().await;
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let b = bus(&server.url, "g", &dir.path().join("b"), seen.clone()).await;
    let first = b.publish("job", json!({"n": 1})).await.unwrap();
    wait_until(T, || seen.lock().unwrap().contains(&first)).await;
    let js = async_nats::jetstream::new(async_nats::connect(&server.url).await.unwrap());
    js.get_stream(pm_events::transport::nats::STREAM)
        .await
        .unwrap()
        .delete_consumer("g")
        .await
        .unwrap();
    let second = b.publish("job", json!({"n": 2})).await.unwrap();
    wait_until(T, || seen.lock().unwrap().contains(&second)).await;
    b.stop().await.unwrap();
}
