//! Scale-out over a real NATS JetStream server (started here on a free port).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::wait_until;
use pm_events::transport::{NatsTransport, Transport};
use pm_events::{Event, EventBus};
use serde_json::json;
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

struct Nats {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts nats-server on a port of its own choosing (`-p -1`) and reads the port
/// from the ports file it writes, named after its pid: no race with another test
/// (or anything else) for a port picked beforehand.
async fn nats() -> Nats {
    let dir = tempfile::tempdir().unwrap();
    let bin = std::env::var("PM_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let mut child = Command::new(&bin)
        .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
        .arg(dir.path())
        .arg("--ports_file_dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {bin} ({e}): run the tests with scripts/test.sh, which installs it"
            )
        });
    let suffix = format!("_{}.ports", child.id());
    let ports_file = || {
        std::fs::read_dir(dir.path())
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))
            .map(|e| e.path())
    };
    let deadline = std::time::Instant::now() + T;
    let url = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{bin} exited at start: {status}");
        }
        let found = ports_file()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["nats"][0].as_str().map(str::to_string));
        if let Some(url) = found {
            break url;
        }
        assert!(std::time::Instant::now() < deadline, "{bin} did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Nats {
        child,
        url,
        _dir: dir,
    }
}

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
    // The same event published twice (same id): JetStream drops the duplicate.
    let dup = Event::new("job", json!({"n": "dup"}));
    ids.insert(a.publish_event(dup.clone()).await.unwrap());
    a.publish_event(dup).await.unwrap();
    wait_until(T, || {
        a_seen.lock().unwrap().len() + b_seen.lock().unwrap().len() >= 301
    })
    .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let all: Vec<String> = a_seen
        .lock()
        .unwrap()
        .iter()
        .chain(b_seen.lock().unwrap().iter())
        .cloned()
        .collect();
    assert_eq!(all.len(), 301, "each event handled exactly once");
    assert_eq!(all.iter().cloned().collect::<HashSet<_>>(), ids);
    let (na, nb) = (a_seen.lock().unwrap().len(), b_seen.lock().unwrap().len());
    assert!(
        na > 0 && nb > 0,
        "both processes took a share: {na} and {nb}"
    );
    // The publishing process wrote its write-ahead log as usual.
    assert_eq!(
        pm_events::journal::read_day(&dir.path().join("a"), pm_events::journal::today())
            .unwrap()
            .len(),
        302
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
