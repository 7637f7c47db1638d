//! The event bus API, end to end, with real log files in temp directories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::counter;
use pm_events::bus::WILDCARD;
use pm_events::{BusError, Event, EventBus, FsyncPolicy, Priority, journal};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

type Ok = Result<(), std::convert::Infallible>;

fn recorder() -> (
    Arc<Mutex<Vec<Event>>>,
    impl Fn(Event) -> std::future::Ready<Ok> + Send + Sync + 'static,
) {
    let v = Arc::new(Mutex::new(Vec::new()));
    let v2 = v.clone();
    (v, move |e: Event| {
        v2.lock().unwrap().push(e);
        std::future::ready(Ok(()))
    })
}

#[tokio::test]
async fn publish_before_start_is_a_clear_error_and_logs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::builder().log_dir(dir.path()).build();
    let err = bus.publish("file_change", json!({})).await.unwrap_err();
    assert!(matches!(err, BusError::NotRunning(_)), "{err:?}");
    assert!(err.to_string().contains("start()"), "{err}");
    assert!(!bus.get_log_file().exists());
}

#[tokio::test]
async fn subscribe_publish_stop_and_the_log_holds_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::builder().log_dir(dir.path()).build();
    let (seen, h) = recorder();
    bus.subscribe("file_change", h);
    bus.start().await.unwrap();
    assert!(bus.is_running());
    let id = bus
        .publish(
            "file_change",
            json!({"file_path": "/tmp/a", "change_type": "created"}),
        )
        .await
        .unwrap();
    // A built event, and a built event whose data is replaced.
    let e = Event::new("file_change", json!({"file_path": "/tmp/b"})).with_source("tests");
    let id2 = bus.publish(e.clone(), None).await.unwrap();
    assert_eq!(id2, e.event_id);
    let id3 = bus
        .publish(
            Event::new("file_change", json!({})),
            json!({"file_path": "/tmp/c"}),
        )
        .await
        .unwrap();
    bus.stop().await.unwrap();
    assert!(!bus.is_running());

    let seen = seen.lock().unwrap().clone();
    let ids: Vec<&str> = seen.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, vec![id.as_str(), id2.as_str(), id3.as_str()]);
    assert_eq!(seen[1].source, "tests");
    assert_eq!(seen[2].data["file_path"], "/tmp/c");

    let logged = journal::read_day(dir.path(), journal::today()).unwrap();
    assert_eq!(
        logged, seen,
        "the log holds exactly the handled events, in order"
    );
    assert_eq!(
        bus.get_log_file(),
        dir.path()
            .join("events")
            .join(format!("events_{}.log", journal::today().format("%Y%m%d")))
    );
    // Every line is a JSON object with the specification's fields.
    let text = std::fs::read_to_string(bus.get_log_file()).unwrap();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        for k in ["timestamp", "event_id", "type", "data", "source"] {
            assert!(v.get(k).is_some(), "{k} missing in {line}");
        }
    }
}

#[tokio::test]
async fn concurrent_publishers_each_keep_their_order_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::builder()
        .log_dir(dir.path())
        .fsync(FsyncPolicy::Always)
        .build();
    let (n, h) = counter();
    bus.subscribe("seq", h);
    bus.start().await.unwrap();
    let mut tasks = Vec::new();
    for p in 0..4u64 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..300u64 {
                ids.push(bus.publish("seq", json!({"p": p, "i": i})).await.unwrap());
            }
            ids
        }));
    }
    let mut returned = HashSet::new();
    for t in tasks {
        returned.extend(t.await.unwrap());
    }
    bus.stop().await.unwrap();
    assert_eq!(n.load(Ordering::SeqCst), 1200);

    let logged = journal::read_day(dir.path(), journal::today()).unwrap();
    assert_eq!(logged.len(), 1200);
    let logged_ids: HashSet<String> = logged.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(logged_ids, returned, "each accepted event exactly once");
    let mut next: HashMap<u64, u64> = HashMap::new();
    for e in &logged {
        let p = e.data["p"].as_u64().unwrap();
        let i = e.data["i"].as_u64().unwrap();
        let want = next.entry(p).or_default();
        assert_eq!(i, *want, "publisher {p} out of order");
        *want += 1;
    }
}

#[tokio::test]
async fn wildcard_and_custom_types_and_unsubscribe() {
    let bus = EventBus::builder().without_log().build();
    let (all, h_all) = counter();
    let (dep, h_dep) = counter();
    let wid = bus.subscribe(WILDCARD, h_all);
    let did = bus.subscribe("deployment", h_dep);
    let (_, h_extra) = counter();
    let extra = bus.subscribe("deployment", h_extra);
    assert_eq!(
        bus.get_subscribers().into_iter().collect::<Vec<_>>(),
        vec![("*".to_string(), 1), ("deployment".to_string(), 2)]
    );
    assert!(bus.unsubscribe("deployment", extra));
    assert!(
        !bus.unsubscribe("deployment", extra),
        "second removal finds nothing"
    );
    assert!(
        !bus.unsubscribe("file_change", did),
        "wrong type finds nothing"
    );
    bus.start().await.unwrap();
    bus.publish(
        "deployment",
        json!({"service": "api-gateway", "status": "success"}),
    )
    .await
    .unwrap();
    bus.publish("anything_else", json!({})).await.unwrap();
    bus.stop().await.unwrap();
    assert_eq!(all.load(Ordering::SeqCst), 2);
    assert_eq!(dep.load(Ordering::SeqCst), 1);

    assert!(bus.unsubscribe(WILDCARD, wid));
    assert_eq!(bus.get_subscribers().get("*"), None);
    bus.start().await.unwrap();
    bus.publish("deployment", json!({})).await.unwrap();
    bus.stop().await.unwrap();
    assert_eq!(
        all.load(Ordering::SeqCst),
        2,
        "unsubscribed wildcard sees nothing more"
    );
    assert_eq!(dep.load(Ordering::SeqCst), 2);
    assert_eq!(bus.stats().published, 3);
}

#[tokio::test]
async fn filters_keep_other_events_away_from_a_handler() {
    let bus = EventBus::builder().without_log().build();
    let (seen, h) = recorder();
    bus.subscribe_filtered("custom_event", |e| e.data["priority"] == "high", h);
    bus.start().await.unwrap();
    for p in ["high", "low", "high", "none"] {
        bus.publish("custom_event", json!({"priority": p}))
            .await
            .unwrap();
    }
    bus.stop().await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|e| e.data["priority"] == "high"));
    assert_eq!(bus.stats().unhandled, 2);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_and_a_hanging_handler_do_not_stop_the_others() {
    let bus = EventBus::builder()
        .without_log()
        .handler_timeout(Duration::from_secs(2))
        .build();
    bus.subscribe("x", |e: Event| async move {
        if e.data["n"] == 1 {
            panic!("boom on purpose");
        }
        Ok::<(), std::io::Error>(())
    });
    bus.subscribe("x", |_e: Event| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<(), std::io::Error>(())
    });
    bus.subscribe("x", |_e: Event| async move {
        Err::<(), _>(std::io::Error::other("refused"))
    });
    let (good, h) = counter();
    bus.subscribe("x", h);
    bus.start().await.unwrap();
    for n in 0..3 {
        bus.publish("x", json!({"n": n})).await.unwrap();
    }
    bus.stop().await.unwrap();
    assert_eq!(good.load(Ordering::SeqCst), 3);
    let s = bus.stats();
    assert_eq!(s.panicked, 1);
    assert_eq!(s.timed_out, 3);
    assert_eq!(s.failed, 3);
    assert_eq!(s.handled, 3 + 2);
    // The bus still works afterwards.
    bus.start().await.unwrap();
    bus.publish("x", json!({"n": 5})).await.unwrap();
    bus.stop().await.unwrap();
    assert_eq!(good.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_gives_backpressure_and_try_publish_refuses() {
    let bus = EventBus::builder()
        .without_log()
        .queue_capacity(2)
        .handler_timeout(Duration::from_secs(24 * 3600))
        .build();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    bus.subscribe("slow", move |_e: Event| {
        let g = g.clone();
        async move {
            g.acquire().await.unwrap().forget();
            Ok::<(), std::io::Error>(())
        }
    });
    bus.start().await.unwrap();
    bus.try_publish("slow", json!({})).await.unwrap();
    bus.try_publish("slow", json!({})).await.unwrap();
    let err = bus.try_publish("slow", json!({})).await.unwrap_err();
    assert!(
        matches!(err, BusError::QueueFull { capacity: 2 }),
        "{err:?}"
    );
    // `publish` waits for room instead.
    let waited =
        tokio::time::timeout(Duration::from_secs(60), bus.publish("slow", json!({}))).await;
    assert!(waited.is_err(), "publish must wait while the queue is full");
    gate.add_permits(3);
    bus.publish("slow", json!({})).await.unwrap();
    gate.add_permits(1);
    bus.stop().await.unwrap();
    assert_eq!(bus.stats().handled, 3);
    assert_eq!(bus.stats().published, 3);
}

#[tokio::test]
async fn stop_drains_every_accepted_event_including_follow_ups_from_handlers() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::builder()
        .log_dir(dir.path())
        .queue_capacity(16)
        .build();
    let b2 = bus.clone();
    bus.subscribe("risk_alert", move |e: Event| {
        let bus = b2.clone();
        async move {
            tokio::task::yield_now().await;
            bus.publish("risk_escalated", json!({"alert": e.event_id}))
                .await
                .map(|_| ())
        }
    });
    let (escalated, h) = counter();
    bus.subscribe("risk_escalated", h);
    bus.start().await.unwrap();
    for i in 0..500 {
        bus.publish("risk_alert", json!({"i": i})).await.unwrap();
    }
    bus.stop().await.unwrap();
    assert_eq!(
        escalated.load(Ordering::SeqCst),
        500,
        "every follow-up handled before stop returned"
    );
    assert_eq!(bus.queue_len(), 0);
    let logged = journal::read_day(dir.path(), journal::today()).unwrap();
    assert_eq!(logged.len(), 1000);
    let err = bus.publish("risk_alert", json!({})).await.unwrap_err();
    assert!(matches!(err, BusError::NotRunning(_)));
}

#[tokio::test]
async fn publish_batch_keeps_order_and_rejects_an_invalid_batch_whole() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::builder()
        .log_dir(dir.path())
        .queue_capacity(7)
        .build();
    let (seen, h) = recorder();
    bus.subscribe("file_change", h);
    bus.start().await.unwrap();
    let events: Vec<Event> = (0..20)
        .map(|i| {
            Event::new(
                "file_change",
                json!({"file_path": format!("/tmp/file{i}.txt")}),
            )
        })
        .collect();
    let ids = bus.publish_batch(events.clone()).await.unwrap();
    assert_eq!(
        ids,
        events
            .iter()
            .map(|e| e.event_id.clone())
            .collect::<Vec<_>>()
    );
    let bad = vec![
        Event::new("file_change", json!({})),
        Event::new("bad type", json!({})),
    ];
    let err = bus.publish_batch(bad).await.unwrap_err();
    assert!(err.to_string().contains("event #2"), "{err}");
    bus.stop().await.unwrap();
    let logged = journal::read_day(dir.path(), journal::today()).unwrap();
    assert_eq!(logged, events, "only the valid batch was logged, in order");
    assert_eq!(seen.lock().unwrap().len(), 20);
}

#[tokio::test]
async fn invalid_events_are_rejected_and_not_logged() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::builder().log_dir(dir.path()).build();
    bus.start().await.unwrap();
    for (t, d) in [
        ("", json!({})),
        ("has space", json!({})),
        ("ok", json!([1, 2])),
        ("ok", json!("s")),
    ] {
        let err = bus.publish(t, d).await.unwrap_err();
        assert!(matches!(err, BusError::InvalidEvent(_)), "{err:?}");
    }
    bus.stop().await.unwrap();
    assert!(
        journal::read_day(dir.path(), journal::today())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn publish_sync_works_from_a_plain_thread_and_refuses_inside_a_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bus = EventBus::builder().without_log().build();
    let (n, h) = counter();
    bus.subscribe("sync", h);
    assert!(matches!(
        bus.publish_sync("sync", json!({})),
        Err(BusError::NotRunning(_))
    ));
    rt.block_on(bus.start()).unwrap();
    let b2 = bus.clone();
    let id = std::thread::spawn(move || b2.publish_sync("sync", json!({"from": "thread"})))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(id.len(), 36);
    let inside = rt.block_on(async { bus.publish_sync("sync", json!({})) });
    assert!(matches!(inside, Err(BusError::SyncInAsync)));
    rt.block_on(bus.stop()).unwrap();
    assert_eq!(n.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn start_twice_is_an_error_and_stop_twice_is_harmless() {
    let bus = EventBus::builder().without_log().build();
    bus.start().await.unwrap();
    assert!(matches!(bus.start().await, Err(BusError::AlreadyRunning)));
    bus.stop().await.unwrap();
    bus.stop().await.unwrap();
}

#[tokio::test]
async fn an_unwritable_log_dir_fails_start_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let bus = EventBus::builder().log_dir(&file).build();
    let err = bus.start().await.unwrap_err();
    let msg = pm_events::error::chain(&err);
    assert!(msg.contains("not-a-dir"), "{msg}");
    assert!(!bus.is_running());
}

#[tokio::test]
async fn the_priority_lane_overtakes_waiting_events() {
    let bus = EventBus::builder()
        .without_log()
        .concurrency(1)
        .priority(|e| {
            if e.data["severity"] == "critical" {
                Priority::High
            } else {
                Priority::Normal
            }
        })
        .build();
    let gate = Arc::new(Semaphore::new(0));
    let order = Arc::new(Mutex::new(Vec::new()));
    let (g, o) = (gate.clone(), order.clone());
    bus.subscribe("risk_alert", move |e: Event| {
        let (g, o) = (g.clone(), o.clone());
        async move {
            o.lock()
                .unwrap()
                .push(e.data["severity"].as_str().unwrap_or("").to_string());
            g.acquire().await.unwrap().forget();
            Ok::<(), std::io::Error>(())
        }
    });
    bus.start().await.unwrap();
    for _ in 0..100 {
        bus.publish("risk_alert", json!({"severity": "low"}))
            .await
            .unwrap();
    }
    bus.publish("risk_alert", json!({"severity": "critical"}))
        .await
        .unwrap();
    assert!(bus.queue_len() >= 99, "queue_len {}", bus.queue_len());
    gate.add_permits(1000);
    bus.stop().await.unwrap();
    let order = order.lock().unwrap();
    assert_eq!(order.len(), 101);
    let pos = order.iter().position(|s| s == "critical").unwrap();
    assert!(pos <= 1, "critical handled at position {pos}");
}

#[tokio::test]
async fn a_torn_last_line_is_skipped_and_the_log_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::builder().log_dir(dir.path()).build();
    bus.start().await.unwrap();
    let first = bus.publish("x", json!({"n": 1})).await.unwrap();
    bus.stop().await.unwrap();
    // A crash mid-write leaves half a line.
    let path = bus.get_log_file();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"type\":\"x\",\"data\":{\"n\":");
    std::fs::write(&path, text).unwrap();
    assert_eq!(
        journal::read_day(dir.path(), journal::today())
            .unwrap()
            .len(),
        1
    );
    // Restart and go on: the new line starts on a line of its own.
    bus.start().await.unwrap();
    let second = bus.publish("x", json!({"n": 2})).await.unwrap();
    bus.stop().await.unwrap();
    let ids: Vec<String> = journal::read_day(dir.path(), journal::today())
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, vec![first, second]);
    let now = pm_events::event::now_unix();
    assert_eq!(
        journal::read_range(dir.path(), now - 60.0, now + 1.0)
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        journal::read_range(dir.path(), now + 10.0, now + 20.0)
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn the_range_reader_reads_as_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::builder().log_dir(dir.path()).build();
    bus.start().await.unwrap();
    let first = bus.publish("x", json!({"n": 1})).await.unwrap();
    let now = pm_events::event::now_unix();
    let mut events = journal::iter_range(dir.path(), now - 60.0, now + 60.0);
    assert_eq!(events.next().unwrap().unwrap().event_id, first);
    // Not read ahead into memory: a line written after the first was read is seen.
    let second = bus.publish("x", json!({"n": 2})).await.unwrap();
    assert_eq!(events.next().unwrap().unwrap().event_id, second);
    assert!(events.next().is_none());
    bus.stop().await.unwrap();
}

#[tokio::test]
async fn the_global_bus_is_one_instance() {
    let a = pm_events::get_event_bus();
    let b = pm_events::get_event_bus();
    assert!(std::ptr::eq(a, b));
    assert!(pm_events::set_event_bus(EventBus::new()).is_err());
}

#[tokio::test]
async fn a_failed_log_write_refuses_the_event_and_no_handler_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    std::fs::create_dir_all(&events).unwrap();
    // Today's file is /dev/full: every write(2) to it fails with ENOSPC.
    let today = journal::day_path(dir.path(), journal::today());
    std::os::unix::fs::symlink("/dev/full", &today).unwrap();
    let bus = EventBus::builder().log_dir(dir.path()).build();
    let (count, handler) = counter();
    bus.subscribe(WILDCARD, handler);
    bus.start().await.unwrap();
    // A lone publisher (it writes its own line) ...
    let err = bus
        .publish("deployment", json!({"service": "api"}))
        .await
        .unwrap_err();
    let msg = pm_events::error::chain(&err);
    assert!(msg.contains("events_") && msg.contains("space"), "{msg}");
    assert_eq!(
        msg.matches("space").count(),
        1,
        "the cause is shown once: {msg}"
    );
    // ... and concurrent ones (their lines written in batches by others).
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.publish("deployment", json!({ "i": i })).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_err());
    }
    bus.stop().await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 0);
    assert_eq!(bus.stats().published, 0);
}
