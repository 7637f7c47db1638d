//! The pipelined publish: many events in flight from one publisher, each with
//! its own acceptance, on a real event log in a temp directory.

mod common;

use common::counter;
use pm_events::bus::WILDCARD;
use pm_events::{Event, EventBus, FsyncPolicy, journal};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_events_in_flight_are_logged_in_order_each_once_and_handled() {
    let dir = tempfile::tempdir().unwrap();
    // A small queue: publishers run into backpressure while events are in flight.
    let bus = EventBus::builder()
        .log_dir(dir.path())
        .queue_capacity(64)
        .build();
    let (handled, h) = counter();
    bus.subscribe("seq", h);
    bus.start().await.unwrap();
    let mut tasks = Vec::new();
    for p in 0..4u64 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..5000u64 {
                let e = Event::new("seq", json!({"p": p, "i": i}));
                let ack = bus.publish_pipelined(e).await.unwrap();
                acks.push(ack);
            }
            let mut ids = Vec::new();
            for ack in acks {
                let want = ack.event_id().to_string();
                let id = ack.await.unwrap();
                assert_eq!(id, want);
                ids.push(id);
            }
            ids
        }));
    }
    let mut accepted = HashSet::new();
    for t in tasks {
        accepted.extend(t.await.unwrap());
    }
    bus.stop().await.unwrap();
    assert_eq!(accepted.len(), 20_000);
    assert_eq!(handled.load(Ordering::SeqCst), 20_000);
    assert_eq!(bus.stats().published, 20_000);

    let logged = journal::read_day(dir.path(), journal::today()).unwrap();
    assert_eq!(logged.len(), 20_000, "each accepted event once in the log");
    let ids: HashSet<String> = logged.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids, accepted);
    let mut next: HashMap<u64, u64> = HashMap::new();
    for e in &logged {
        let (p, i) = (e.data["p"].as_u64().unwrap(), e.data["i"].as_u64().unwrap());
        let want = next.entry(p).or_default();
        assert_eq!(i, *want, "publisher {p} out of order in the log");
        *want += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_handles_pipelined_events_whose_acks_were_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::builder()
        .log_dir(dir.path())
        .fsync(FsyncPolicy::Always)
        .build();
    let (handled, h) = counter();
    bus.subscribe(WILDCARD, h);
    bus.start().await.unwrap();
    for i in 0..2000 {
        let ack = bus
            .publish_pipelined(Event::new("fire", json!({ "i": i })))
            .await
            .unwrap();
        drop(ack);
    }
    bus.stop().await.unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 2000);
    let logged = journal::read_day(dir.path(), journal::today()).unwrap();
    assert_eq!(logged.len(), 2000);
    assert!(
        bus.publish_pipelined(Event::new("late", json!({})))
            .await
            .is_err(),
        "a stopped bus refuses pipelined publishes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_write_refuses_pipelined_events_and_no_handler_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("events")).unwrap();
    // Today's file is /dev/full: every write(2) to it fails with ENOSPC.
    let today = journal::day_path(dir.path(), journal::today());
    std::os::unix::fs::symlink("/dev/full", &today).unwrap();
    let bus = EventBus::builder().log_dir(dir.path()).build();
    let (handled, h) = counter();
    bus.subscribe(WILDCARD, h);
    bus.start().await.unwrap();
    let mut acks = Vec::new();
    for i in 0..100 {
        acks.push(
            bus.publish_pipelined(Event::new("deployment", json!({ "i": i })))
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        let err = ack.await.unwrap_err();
        let msg = pm_events::error::chain(&err);
        assert!(msg.contains("events_") && msg.contains("space"), "{msg}");
    }
    bus.stop().await.unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 0);
    assert_eq!(bus.stats().published, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_refused_before_they_are_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::builder().log_dir(dir.path()).build();
    bus.start().await.unwrap();
    let mut bad = Event::new("x", json!({}));
    bad.event_type = String::new();
    assert!(matches!(
        bus.publish_pipelined(bad).await,
        Err(pm_events::BusError::InvalidEvent(_))
    ));
    bus.stop().await.unwrap();
    assert!(
        journal::read_day(dir.path(), journal::today())
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_handles_pipelined_events_and_the_follow_ups_their_handlers_publish() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::builder().log_dir(dir.path()).build();
    let weak = bus.downgrade();
    let (followed, h) = counter();
    bus.subscribe("follow_up", h);
    let handle = Arc::new(weak);
    bus.subscribe("cause", move |e: Event| {
        let handle = handle.clone();
        async move {
            handle
                .publish(Event::new("follow_up", json!({"of": e.event_id})), None)
                .await
                .map(|_| ())
        }
    });
    bus.start().await.unwrap();
    let mut acks = Vec::new();
    for i in 0..500 {
        acks.push(
            bus.publish_pipelined(Event::new("cause", json!({ "i": i })))
                .await
                .unwrap(),
        );
    }
    bus.stop().await.unwrap();
    for ack in acks {
        ack.await.unwrap();
    }
    assert_eq!(followed.load(Ordering::SeqCst), 500);
}
