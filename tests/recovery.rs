//! Nothing accepted is lost: the built binary is killed with SIGKILL at random
//! points under load and started again on the same log directory; every event
//! that was accepted (answered 202, or printed as accepted) is handled — its
//! handler log line written, its webhook delivered — at least once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::server::{Server, client, post_with};
use common::{TestReceiver, jsonl, wait_until};
use pm_events::recovery::FLUSH_INTERVAL;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn alert(i: usize) -> Value {
    json!({"alert_id": format!("a{i}"), "risk_type": "performance", "severity": "low",
           "title": "slow", "risk_score": 0.1})
}

/// How many `ok` lines each event id has in the risk handler's log.
fn handled(logs: &Path) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for l in jsonl(&logs.join("risk_alerts/risk_alerts.jsonl")) {
        if l["status"] == "ok" {
            *out.entry(l["event_id"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    out
}

fn delivered(rx: &TestReceiver) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for r in rx.requests("/deploy") {
        if let Some(id) = r.json()["event_id"].as_str() {
            *out.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    out
}

/// `pm-events publish -` on `logs`, its stdin and stdout piped.
fn publish_stdin(logs: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_pm-events"))
        .args(["publish", "-"])
        .env_remove("RUST_LOG")
        .env("PM_LOG_DIR", logs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs `pm-events publish -` on `logs` with risk alerts numbered from `first`,
/// kills it (SIGKILL) once it printed `stop_after` accepted ids, and returns
/// every id it printed as accepted before it died.
fn publish_until_killed(logs: &Path, first: usize, stop_after: usize) -> HashSet<String> {
    let mut child = publish_stdin(logs);
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0.. {
            let line = json!({"type": "risk_alert", "data": alert(first + i)});
            if writeln!(stdin, "{line}").is_err() {
                break;
            }
        }
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut accepted = HashSet::new();
    let mut line = String::new();
    while accepted.len() < stop_after {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        accepted.insert(line.trim().to_string());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // What it printed before dying was accepted too.
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    accepted.extend(rest.lines().map(str::to_string));
    let _ = writer.join();
    accepted
}

/// Runs the binary on `logs` with `args` and `env` (stdin empty) and checks it
/// succeeded; returns its stderr.
fn run_ok(logs: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pm-events"))
        .args(args)
        .envs(env.iter().copied())
        .env("PM_LOG_DIR", logs)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// A run with nothing to publish: it starts alone, recovers and handles what was left.
fn recover_alone(logs: &Path) {
    run_ok(logs, &["publish", "-"], &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_killed_at_random_points_loses_no_accepted_event() {
    let rx = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let deploy_url = rx.url("/deploy");
    let env = [
        ("PM_WEBHOOK_URL_DEPLOYMENT", deploy_url.as_str()),
        ("WEBHOOK_BACKOFF_BASE_MS", "20"),
    ];
    let ct = vec![("content-type", "application/json".to_string())];
    let alerts = Arc::new(Mutex::new(HashSet::new()));
    let deploys = Arc::new(Mutex::new(HashSet::new()));
    let rounds = 20;
    let mut flooding = Duration::ZERO;
    for round in 0..rounds {
        let mut srv = Server::start(dir.path(), &env);
        let run_for = Duration::from_millis(fastrand::u64(200..800));
        flooding += run_for;
        let kill_at = Instant::now() + run_for;
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let (url, ct) = (format!("{}/events", srv.url), ct.clone());
                let (alerts, deploys) = (alerts.clone(), deploys.clone());
                tokio::spawn(async move {
                    let http = client();
                    let mut i = t;
                    loop {
                        let n = round * 1_000_000 + t * 50_000 + i - t;
                        let (ty, data) = if i % 2 == 0 {
                            ("risk_alert", alert(n))
                        } else {
                            ("deployment", json!({"service": "api", "n": n}))
                        };
                        let body = serde_json::to_vec(&json!({"type": ty, "data": data})).unwrap();
                        let r = tokio::time::timeout(
                            Duration::from_secs(5),
                            post_with(&http, &url, &ct, &body),
                        )
                        .await;
                        match r {
                            Ok(Ok((202, v))) => {
                                let id = v["event_id"].as_str().unwrap().to_string();
                                let set = if ty == "risk_alert" {
                                    &alerts
                                } else {
                                    &deploys
                                };
                                set.lock().unwrap().insert(id);
                            }
                            Ok(Ok((s, v))) => panic!("{ty}: {s} {v}"),
                            _ => break, // killed: not accepted
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        tokio::time::sleep_until(kill_at.into()).await;
        srv.child.kill().unwrap(); // SIGKILL, with requests in flight
        srv.child.wait().unwrap();
        for t in tasks {
            let _ = t.await;
        }
    }
    // A last start recovers what the last kill left.
    let srv = Server::start(dir.path(), &env);
    let logs = srv.logs.clone();
    let (alerts, deploys) = (
        alerts.lock().unwrap().clone(),
        deploys.lock().unwrap().clone(),
    );
    assert!(
        alerts.len() > 100 && deploys.len() > 100,
        "{} {}",
        alerts.len(),
        deploys.len()
    );
    wait_until(Duration::from_secs(120), || {
        let h = handled(&logs);
        let d = delivered(&rx);
        alerts.iter().all(|id| h.contains_key(id)) && deploys.iter().all(|id| d.contains_key(id))
    })
    .await;
    let h = handled(&logs);
    let lost: Vec<_> = alerts.iter().filter(|id| !h.contains_key(*id)).collect();
    let d = delivered(&rx);
    let undelivered: Vec<_> = deploys.iter().filter(|id| !d.contains_key(*id)).collect();
    assert!(
        lost.is_empty() && undelivered.is_empty(),
        "{} of {} accepted alerts never handled, {} of {} deployments never delivered",
        lost.len(),
        alerts.len(),
        undelivered.len(),
        deploys.len()
    );
    let twice = alerts.iter().filter(|id| h[*id] > 1).count();
    eprintln!(
        "{rounds} kills: {} alerts and {} deployments accepted, all handled; {twice} alerts handled twice",
        alerts.len(),
        deploys.len()
    );
    // Handled twice: only what finished in the ledger's flush window before a
    // kill — about FLUSH_INTERVAL (50 ms) of handling; allow twice that, plus 10.
    let per_sec = alerts.len() as f64 / flooding.as_secs_f64();
    let bound = rounds as f64 * (per_sec * 2.0 * FLUSH_INTERVAL.as_secs_f64() + 10.0);
    assert!(
        twice as f64 <= bound,
        "{twice} handled twice; bound {bound:.0}"
    );
}

#[test]
fn publish_from_stdin_killed_mid_stream_loses_no_accepted_event() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let mut accepted = HashSet::new();
    for round in 0..20 {
        // Kill after a random number of accepted events.
        accepted.extend(publish_until_killed(
            &logs,
            round * 1_000_000,
            fastrand::usize(50..2000),
        ));
    }
    recover_alone(&logs);
    let h = handled(&logs);
    let lost = accepted.iter().filter(|id| !h.contains_key(*id)).count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} accepted events never handled",
        accepted.len()
    );
    let twice = accepted.iter().filter(|id| h[*id] > 1).count();
    eprintln!(
        "20 kills: {} accepted, all handled, {twice} twice",
        accepted.len()
    );
    // At most what finishes in two flush windows (100 ms) per kill, at the rate
    // of a debug build (well under 10,000 events/s).
    assert!(twice <= 20 * 1_000, "{twice} handled twice");
}

/// Invariant 5: `publish -` beside a running `serve` on one log directory,
/// killed mid-stream. The server, now the only live process, takes over the
/// dead run's unhandled events while it runs; then it stops cleanly, and a
/// later start has nothing left to do. Every event is in the log once.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_server_takes_over_what_a_process_killed_beside_it_left() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let logs = srv.logs.clone();
    let accepted = publish_until_killed(&logs, 0, 2000);
    // No restart: the server takes the killed run's events over, and then
    // marks the dead run's file finished (only its own `.ids` file is left).
    let running_files = || {
        std::fs::read_dir(logs.join("recovery/handled"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "ids"))
            .count()
    };
    wait_until(Duration::from_secs(60), || {
        let h = handled(&logs);
        accepted.iter().all(|id| h.contains_key(id)) && running_files() == 1
    })
    .await;
    assert!(srv.terminate().success());
    let h = handled(&logs);
    let twice = accepted.iter().filter(|id| h[*id] > 1).count();
    assert!(twice <= 1_000, "{twice} handled twice");
    // The dead run's file was taken over and the clean stop moved the
    // checkpoint: nothing is left for the next start.
    let left: Vec<_> = std::fs::read_dir(logs.join("recovery/handled"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let plan = start_plan(&logs);
    assert_eq!(plan.map(|p| p.bytes_to_read()), Some(0));
    let mut lines = HashMap::new();
    for e in pm_events::journal::read_day(&logs, pm_events::journal::today()).unwrap() {
        *lines.entry(e.event_id).or_insert(0) += 1;
    }
    assert!(accepted.iter().all(|id| lines.get(id) == Some(&1)));
}

/// The recovery a start would make now (its run registered, then dropped).
fn start_plan(logs: &Path) -> Option<pm_events::recovery::Plan> {
    let (ledger, plan) = pm_events::recovery::start(logs).unwrap();
    drop(ledger);
    plan
}

/// Waits until every id is in one of the run files of `logs` (recorded as done).
async fn wait_recorded(logs: &Path, ids: &HashSet<String>) {
    wait_until(Duration::from_secs(30), || {
        let mut done = HashSet::new();
        for f in std::fs::read_dir(logs.join("recovery/handled"))
            .unwrap()
            .flatten()
        {
            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
            done.extend(text.lines().map(str::to_string));
        }
        ids.iter().all(|id| done.contains(id))
    })
    .await;
}

/// Invariant 2: an event recorded as handled is not handled again — neither
/// after a clean stop nor after a SIGKILL that came once the done file held it.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_recorded_as_handled_is_not_handled_again() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let mut child = publish_stdin(&logs);
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..500 {
        writeln!(stdin, "{}", json!({"type": "risk_alert", "data": alert(i)})).unwrap();
    }
    stdin.flush().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut accepted = HashSet::new();
    let mut line = String::new();
    while accepted.len() < 500 {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0);
        accepted.insert(line.trim().to_string());
    }
    wait_recorded(&logs, &accepted).await;
    child.kill().unwrap(); // SIGKILL, stdin still open: not a clean stop
    child.wait().unwrap();
    recover_alone(&logs);
    recover_alone(&logs);
    let h = handled(&logs);
    assert!(
        accepted.iter().all(|id| h.get(id) == Some(&1)),
        "an event recorded as done ran again"
    );
}

/// Invariant 3: an event dispatched again after a crash does not make a second
/// delivery to a route that has one for it; a `replay` does, on purpose.
#[tokio::test(flavor = "multi_thread")]
async fn a_redispatched_event_does_not_deliver_its_webhook_twice() {
    let rx = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let url = rx.url("/deploy");
    let env = [
        ("RUST_LOG", "pm_events=info"),
        ("PM_WEBHOOK_URL_DEPLOYMENT", url.as_str()),
        ("WEBHOOK_SIGNATURE_SECRET", common::server::SECRET),
    ];
    let run = |args: &[&str]| run_ok(&logs, args, &env);
    run(&[
        "publish",
        "deployment",
        r#"{"service":"api","status":"success"}"#,
    ]);
    let first = rx.wait_for("/deploy", 1, Duration::from_secs(30)).await;
    let event_id = first[0].json()["event_id"].as_str().unwrap().to_string();
    // A crash after the delivery and before the done id reached the disk: the
    // recovery files are as if nothing was recorded.
    std::fs::remove_dir_all(logs.join("recovery")).unwrap();
    let stderr = run(&["publish", "-"]);
    assert!(stderr.contains("dispatched again"), "{stderr}");
    assert_eq!(delivered(&rx).get(&event_id), Some(&1));
    // A replay is asked for: it delivers again.
    run(&["replay", "--since", "1h"]);
    rx.wait_for("/deploy", 2, Duration::from_secs(30)).await;
    assert_eq!(delivered(&rx).get(&event_id), Some(&2));
}

/// Invariant 4: what a start reads follows what is unhandled, not the log's
/// size — nothing after a clean stop, and only the lines logged since the
/// checkpoint after a crash, whether the handled log is small or ten times
/// larger.
#[tokio::test(flavor = "multi_thread")]
async fn start_up_reads_only_what_was_logged_since_the_checkpoint() {
    let mut read = Vec::new();
    let left: Vec<_> = (0..100)
        .map(|i| pm_events::Event::new("tick", json!({ "left": i })))
        .collect();
    for handled_events in [2_000usize, 20_000] {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().to_path_buf();
        let bus = pm_events::EventBus::builder().log_dir(&logs).build();
        bus.subscribe("tick", |_e: pm_events::Event| async {
            Ok::<(), std::io::Error>(())
        });
        bus.start().await.unwrap();
        bus.publish_batch(
            (0..handled_events).map(|i| pm_events::Event::new("tick", json!({ "i": i }))),
        )
        .await
        .unwrap();
        bus.stop().await.unwrap();
        assert_eq!(start_plan(&logs).unwrap().bytes_to_read(), 0);
        // What a crashed process left: 100 lines after the checkpoint.
        let path = pm_events::journal::day_path(&logs, pm_events::journal::today());
        let before = std::fs::metadata(&path).unwrap().len();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        for e in &left {
            writeln!(f, "{}", e.to_json()).unwrap();
        }
        let tail = std::fs::metadata(&path).unwrap().len() - before;
        let plan = start_plan(&logs).unwrap();
        assert_eq!(plan.bytes_to_read(), tail);
        assert_eq!(plan.for_each_pending(|_| true), Some(100));
        read.push(plan.bytes_to_read());
    }
    assert_eq!(read[0], read[1], "independent of the handled log's size");
}
