//! Bad input at every door — `POST /events`, `POST /webhooks/incoming` (the
//! specification's form, CloudEvents structured and binary) and the CLI — against the
//! built binary: each refusal has its status or exit code, a JSON error body (HTTP)
//! or one `error:` line (CLI), names the field, and leaves nothing in the event log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::logged;

use common::server::{SECRET, Server, client, post, signer, standard};
use common::{jsonl, wait_until};
use pm_events::event::now_unix;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn pm(dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pm-events"));
    c.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("PM_LOG_DIR", dir.join("logs"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn risk(severity: Value, score: Value) -> Value {
    json!({"alert_id": "a1", "risk_type": "security", "severity": severity, "title": "t", "risk_score": score})
}

/// The built-in payloads that their handlers could only refuse, with the field
/// each refusal must name.
fn bad_payloads() -> Vec<(&'static str, Value, &'static str)> {
    let report = |k: &str, v: Value| {
        let mut d = json!({"report_id": "r1", "report_type": "daily", "report_path": "/tmp/r.pdf", "report_format": "pdf"});
        d[k] = v;
        d
    };
    vec![
        (
            "risk_alert",
            risk(json!(5), json!(0.5)),
            "data.severity: expected one of low, medium, high, critical, got 5",
        ),
        (
            "risk_alert",
            risk(json!("extreme"), json!(0.5)),
            "data.severity: expected one of",
        ),
        (
            "risk_alert",
            risk(json!("low"), json!(1.5)),
            "data.risk_score: expected a number from 0 to 1, got 1.5",
        ),
        (
            "risk_alert",
            risk(json!("low"), json!(-0.1)),
            "data.risk_score",
        ),
        (
            "risk_alert",
            risk(json!("low"), json!("high")),
            "data.risk_score: expected f64",
        ),
        (
            "risk_alert",
            json!({"risk_type": "security", "severity": "low", "title": "t", "risk_score": 0.1}),
            "data.alert_id: required field is missing",
        ),
        (
            "risk_alert",
            json!({"alert_id": "a", "risk_type": "weather", "severity": "low", "title": "t", "risk_score": 0.1}),
            "data.risk_type: expected one of security",
        ),
        (
            "risk_alert",
            json!({"alert_id": "a", "risk_type": "security", "severity": "low", "title": 7, "risk_score": 0.1}),
            "data.title: expected a string",
        ),
        (
            "risk_alert",
            json!({"alert_id": "a", "risk_type": "security", "severity": "low", "title": "t", "risk_score": 0.1, "affected_resources": "db"}),
            "data.affected_resources: expected a sequence",
        ),
        (
            "risk_alert",
            json!({"alert_id": "a", "risk_type": "security", "severity": "low", "title": "t", "risk_score": 0.1, "affected_resources": ["ok", 3]}),
            "data.affected_resources[1]: expected a string",
        ),
        (
            "risk_alert",
            json!({"alert_id": "a", "risk_type": "security", "severity": "low", "title": "t", "risk_score": 0.1, "detected_at": "yesterday"}),
            "data.detected_at: expected an RFC 3339 time",
        ),
        (
            "risk_alert",
            json!({"alert_id": " ", "risk_type": "security", "severity": "low", "title": "t", "risk_score": 0.1}),
            "data.alert_id: contains ' '",
        ),
        (
            "risk_alert",
            json!({"alert_id": "a", "risk_type": "security", "severity": "low", "title": "t", "risk_score": 0.1, "metadata": "not an object"}),
            "data.metadata",
        ),
        (
            "report_ready",
            report("report_format", json!("docx")),
            "data.report_format: expected one of pdf, html, json, got \"docx\"",
        ),
        (
            "report_ready",
            report("report_type", json!("yearly")),
            "data.report_type: expected one of daily, weekly, monthly, custom",
        ),
        (
            "report_ready",
            report("recipients", json!("me@example.com")),
            "data.recipients: expected a sequence",
        ),
        (
            "report_ready",
            report("recipients", json!(["ok@example.com", "not an address"])),
            "data.recipients[1]: expected an e-mail address",
        ),
        (
            "report_ready",
            report("size_bytes", json!(-3)),
            "data.size_bytes: expected u64, got integer -3",
        ),
        (
            "report_ready",
            report("generated_at", json!("2025-13-45")),
            "data.generated_at: expected an RFC 3339 time",
        ),
        (
            "report_ready",
            report("metadata", json!({"tags": "x"})),
            "data.metadata.tags: expected a sequence",
        ),
        (
            "report_ready",
            json!({"report_type": "daily", "report_path": "/tmp/r.pdf", "report_format": "pdf"}),
            "data.report_id: required field is missing",
        ),
        (
            "report_ready",
            report("report_path", json!("")),
            "data.report_path: must not be empty",
        ),
        (
            "file_change",
            json!({"file_path": "/tmp/x"}),
            "data.change_type: required field is missing",
        ),
        (
            "file_change",
            json!({"file_path": "/tmp/x", "change_type": "renamed"}),
            "data.change_type: expected one of created, modified, deleted",
        ),
        (
            "file_change",
            json!({"file_path": 7, "change_type": "created"}),
            "data.file_path: expected a string, got integer 7",
        ),
        (
            "file_change",
            json!({"file_path": "/tmp/x", "change_type": "created", "checksum": "zz"}),
            "data.checksum: expected an MD5 hex digest",
        ),
        (
            "file_change",
            json!({"file_path": "/tmp/x", "change_type": "created", "size": "big"}),
            "data.size: expected u64",
        ),
    ]
}

/// (what, body bytes, the text the message must contain) for bodies broken as JSON.
fn bad_json() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        ("not JSON", b"{not json".to_vec(), "key must be a string"),
        ("truncated", br#"{"type":"x","data":{"#.to_vec(), "EOF"),
        (
            "trailing bytes",
            br#"{"type":"x","data":{}} extra"#.to_vec(),
            "trailing characters",
        ),
        (
            "duplicate top-level key",
            br#"{"type":"deployment","type":"risk_alert","data":{}}"#.to_vec(),
            "duplicate key \"type\"",
        ),
        (
            "duplicate nested key",
            br#"{"type":"deployment","data":{"a":1,"a":2}}"#.to_vec(),
            "data: duplicate key \"a\"",
        ),
        (
            "deep nesting",
            format!(
                "{{\"type\":\"x\",\"data\":{}{}}}",
                "[".repeat(5000),
                "]".repeat(5000)
            )
            .into_bytes(),
            "recursion limit",
        ),
        (
            "invalid UTF-8",
            b"{\"type\":\"x\",\"data\":{\"a\":\"\xff\"}}".to_vec(),
            "invalid unicode",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corpus_of_bad_inputs_is_refused_at_every_door_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let events = format!("{}/events", srv.url);
    let incoming = format!("{}/webhooks/incoming", srv.url);
    let json_ct = vec![("content-type", "application/json".to_string())];
    let mut rows = 0usize;
    let check = |door: &str, status: u16, v: &Value, want: u16, needle: &str| {
        assert_eq!(status, want, "{door}: {v}");
        assert!(v["error"].is_string(), "{door}: no error code in {v}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{door}: {needle:?} not in {msg:?}");
    };
    for (ty, data, needle) in bad_payloads() {
        // POST /events
        let body = serde_json::to_vec(&json!({"type": ty, "data": data})).unwrap();
        let (s, v) = post(&events, &json_ct, &body).await;
        check("/events", s, &v, 400, needle);
        // The specification's incoming form, signed.
        let body = serde_json::to_vec(&json!({"event_type": ty, "data": data})).unwrap();
        let id = format!("msg_{rows}");
        let (s, v) = post(&incoming, &standard(&id, now_unix() as i64, &body), &body).await;
        check("/webhooks/incoming", s, &v, 400, needle);
        // CloudEvents structured mode.
        let body = serde_json::to_vec(&json!({"specversion": "1.0", "id": format!("ce-{rows}"), "source": "/t", "type": ty, "data": data})).unwrap();
        let mut h = vec![("content-type", "application/cloudevents+json".to_string())];
        h.push(("x-webhook-signature", signer().hex_signature(&body)));
        let (s, v) = post(&incoming, &h, &body).await;
        check("CloudEvents structured", s, &v, 400, needle);
        // CloudEvents binary mode, as the SDKs send it (no content type).
        let body = serde_json::to_vec(&data).unwrap();
        let h = vec![
            ("ce-specversion", "1.0".to_string()),
            ("ce-id", format!("bin-{rows}")),
            ("ce-source", "/t".to_string()),
            ("ce-type", ty.to_string()),
            ("x-webhook-signature", signer().hex_signature(&body)),
        ];
        let (s, v) = post(&incoming, &h, &body).await;
        check("CloudEvents binary", s, &v, 400, needle);
        // The CLI.
        let out = pm(dir.path(), &["publish", ty, &data.to_string()], &[], b"");
        assert_eq!(out.status.code(), Some(2), "CLI {ty} {data}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "CLI: {needle:?} not in {err:?}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        rows += 5;
    }
    for (what, body, needle) in bad_json() {
        let (s, v) = post(&events, &json_ct, &body).await;
        check(what, s, &v, 400, needle);
        let mut h = json_ct.clone();
        h.push(("x-webhook-signature", signer().hex_signature(&body)));
        let (s, v) = post(&incoming, &h, &body).await;
        check(what, s, &v, 400, needle);
        if let Ok(text) = std::str::from_utf8(&body) {
            let out = pm(dir.path(), &["publish", "x", text], &[], b"");
            assert_eq!(out.status.code(), Some(2), "CLI {what}");
        }
        let out = pm(dir.path(), &["publish", "-"], &[], &body);
        assert_eq!(out.status.code(), Some(1), "publish - {what}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("line 1:"),
            "{what}"
        );
        rows += 4;
    }
    assert!(rows >= 60, "{rows} rows");
    // Nothing refused was logged as accepted.
    assert!(logged(&srv.logs).is_empty(), "{:?}", logged(&srv.logs));
    assert!(logged(&dir.path().join("logs")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_and_addresses_in_http_events_stay_inside_the_configured_roots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("reports");
    std::fs::create_dir(&root).unwrap();
    let private = dir.path().join("private.json");
    std::fs::write(&private, r#"{"secret":1}"#).unwrap();
    let inside = root.join("ok.json");
    std::fs::write(&inside, r#"{"ok":1}"#).unwrap();
    let events = |srv: &Server| format!("{}/events", srv.url);
    let ct = vec![("content-type", "application/json".to_string())];
    let report = |path: &Path, to: &str| {
        serde_json::to_vec(&json!({"type": "report_ready", "data": {
            "report_id": "r", "report_type": "daily", "report_path": path,
            "report_format": "json", "recipients": [to]}}))
        .unwrap()
    };

    // Safe default: no PM_FILE_ROOTS, no file is honoured.
    let srv = Server::start(dir.path(), &[("PM_REPORT_AUTO_DISTRIBUTE", "1")]);
    let (s, v) = post(
        &events(&srv),
        &ct,
        &report(&private, "attacker@example.net"),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], "not_allowed");
    assert!(
        v["message"].as_str().unwrap().contains("data.report_path")
            && v["message"].as_str().unwrap().contains("PM_FILE_ROOTS"),
        "{v}"
    );
    drop(srv);

    let roots = root.display().to_string();
    let srv = Server::start(
        dir.path(),
        &[
            ("PM_FILE_ROOTS", &roots),
            ("PM_MAIL_ALLOWED_DOMAINS", "example.com"),
            ("PM_REPORT_AUTO_DISTRIBUTE", "1"),
        ],
    );
    for path in [private.clone(), root.join("../private.json")] {
        let (s, v) = post(&events(&srv), &ct, &report(&path, "me@example.com")).await;
        assert_eq!(s, 400, "{path:?}: {v}");
        assert!(v["message"].as_str().unwrap().contains("outside"), "{v}");
    }
    std::os::unix::fs::symlink(&private, root.join("link.json")).unwrap();
    let (s, _) = post(
        &events(&srv),
        &ct,
        &report(&root.join("link.json"), "me@example.com"),
    )
    .await;
    assert_eq!(s, 400, "a symlink out of the root");
    let fc = serde_json::to_vec(&json!({"type": "file_change", "data": {"file_path": root.join("../../../../etc/passwd"), "change_type": "modified"}})).unwrap();
    let (s, v) = post(&events(&srv), &ct, &fc).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = post(&events(&srv), &ct, &report(&inside, "attacker@example.net")).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("PM_MAIL_ALLOWED_DOMAINS"),
        "{v}"
    );
    // Inside the root, to an allowed domain: accepted and handled.
    let (s, v) = post(&events(&srv), &ct, &report(&inside, "me@example.com")).await;
    assert_eq!(s, 202, "{v}");
    let log = srv.logs.join("reports/report_generations.jsonl");
    wait_until(Duration::from_secs(10), || {
        jsonl(&log).iter().any(|l| l["status"] == "ok")
    })
    .await;
    assert!(!dir.path().join("private.json.meta.json").exists());
    assert!(inside.with_extension("json.meta.json").exists());
    assert_eq!(
        logged(&srv.logs).len(),
        1,
        "only the allowed event was accepted"
    );
}

#[test]
fn the_github_example_secret_with_spaces_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("WEBHOOK_SIGNATURE_SECRET", "It's a Secret to Everybody")];
    let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let out = pm(
        dir.path(),
        &["webhooks", "verify", "--signature", sig],
        &env,
        b"Hello, World!",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pm(
        dir.path(),
        &["webhooks", "verify", "--signature", sig],
        &env,
        b"Hello, World?",
    );
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn cloudevents_binary_mode_without_a_content_type_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let body = br#"{"service":"api","status":"success"}"#;
    let h = vec![
        ("ce-specversion", "1.0".to_string()),
        ("ce-id", "sdk-1".to_string()),
        ("ce-source", "/ci".to_string()),
        ("ce-type", "deployment".to_string()),
        ("x-webhook-signature", signer().hex_signature(body)),
    ];
    let (s, v) = post(&format!("{}/webhooks/incoming", srv.url), &h, body).await;
    assert_eq!(s, 202, "{v}");
    let logs = srv.logs.clone();
    wait_until(Duration::from_secs(5), || logged(&logs).len() == 1).await;
    assert_eq!(logged(&logs)[0]["data"]["service"], "api");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_copies_of_one_webhook_id_publish_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let url = format!("{}/webhooks/incoming", srv.url);
    let rounds = 20;
    for round in 0..rounds {
        let body =
            format!(r#"{{"event_type":"deployment","data":{{"round":{round}}}}}"#).into_bytes();
        let headers = standard(&format!("dup-{round}"), now_unix() as i64, &body);
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (url, headers, body) = (url.clone(), headers.clone(), body.clone());
                tokio::spawn(async move { post(&url, &headers, &body).await })
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        for t in tasks {
            let (s, v) = t.await.unwrap();
            assert_eq!(s, 202, "{v}");
            ids.insert(v["event_id"].as_str().unwrap().to_string());
        }
        assert_eq!(ids.len(), 1, "every copy answers the same event id");
    }
    let logs = srv.logs.clone();
    wait_until(Duration::from_secs(5), || logged(&logs).len() >= rounds).await;
    assert_eq!(logged(&logs).len(), rounds, "one event per webhook-id");
}

#[test]
fn publish_stdin_reports_a_line_that_is_not_utf8_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = br#"{"type":"deployment","data":{"n":1}}"#.to_vec();
    input.extend_from_slice(b"\n{\"type\":\"deployment\",\"data\":{\"n\":\"\xff\xfe\"}}\n");
    input.extend_from_slice(br#"{"type":"deployment","data":{"n":3}}"#);
    let out = pm(dir.path(), &["publish", "-"], &[], &input);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2: not valid UTF-8"), "{err}");
    let ns: Vec<Value> = logged(&dir.path().join("logs"))
        .iter()
        .map(|e| e["data"]["n"].clone())
        .collect();
    assert_eq!(ns, [json!(1), json!(3)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_dropped_and_the_server_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Server::start(dir.path(), &[]);
    // Restart with small limits: 4 connections, 1 s for the headers.
    let _ = srv.child.kill();
    let _ = srv.child.wait();
    let logs = dir.path().join("logs");
    let mut c = Command::new(env!("CARGO_BIN_EXE_pm-events"));
    c.args([
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--max-connections",
        "4",
        "--header-timeout",
        "1s",
    ])
    .env("PM_LOG_DIR", &logs)
    .env("WEBHOOK_SIGNATURE_SECRET", SECRET)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    srv.child = child;
    let addr = url.trim_start_matches("http://").to_string();
    // Eight clients trickle their headers: more than the connection limit.
    let mut slow: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // The first ones are closed by the server once the header time is up.
    let started = Instant::now();
    let first = &mut slow[0];
    first
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        n == 0 || text.starts_with("HTTP/1.1 408"),
        "closed or timed out: {text}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // And a real client is served despite the trickling ones.
    let r = client().get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn two_processes_keep_one_risk_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let lines = |from: usize| -> Vec<u8> {
        (from..from + 150)
            .map(|i| format!(r#"{{"type":"risk_alert","data":{{"alert_id":"a{i}","risk_type":"financial","severity":"low","title":"t","risk_score":0.1}}}}"#))
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes()
    };
    let spawn = |input: Vec<u8>| {
        let dir = dir.path().to_path_buf();
        std::thread::spawn(move || pm(&dir, &["publish", "-"], &[], &input))
    };
    let (a, b) = (spawn(lines(0)), spawn(lines(1000)));
    for out in [a.join().unwrap(), b.join().unwrap()] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let d: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("logs/risk_alerts/dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(d["alerts_received"], 300, "counts of both processes");
    assert_eq!(d["open_alerts"].as_array().unwrap().len(), 300);
}

/// A small tmpfs, unmounted when dropped; `None` (with a message) when this
/// process may not mount one (not root, or no permission in this sandbox).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs here (the test needs root)");
        }
        ok.then(|| SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_filling_one_disk_lose_no_accepted_event() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "2m") else {
        return;
    };
    let a = Server::start(&disk.0, &[]);
    let b = Server::start(&disk.0, &[]);
    let ct = vec![("content-type", "application/json".to_string())];
    let (mut accepted, mut full) = (Vec::new(), 0usize);
    // Two writers at once, until both see the disk full for a while.
    let mut i = 0usize;
    while full < 100 && i < 10_000 {
        let mut batch = Vec::new();
        for srv in [&a, &b] {
            for _ in 0..8 {
                let url = format!("{}/events", srv.url);
                let body = serde_json::to_vec(
                    &json!({"type": "deployment", "data": {"n": i, "pad": "x".repeat(4000)}}),
                )
                .unwrap();
                let ct = ct.clone();
                batch.push(tokio::spawn(async move { post(&url, &ct, &body).await }));
                i += 1;
            }
        }
        for t in batch {
            match t.await.unwrap() {
                (202, v) => accepted.push(v["event_id"].as_str().unwrap().to_string()),
                (507, v) => {
                    assert_eq!(v["error"], "storage_full", "{v}");
                    full += 1;
                }
                (s, v) => panic!("unexpected {s}: {v}"),
            }
        }
    }
    assert!(
        full > 0 && !accepted.is_empty(),
        "{full} full, {} accepted",
        accepted.len()
    );
    a.terminate();
    b.terminate();
    let file = std::fs::read_dir(disk.0.join("logs/events"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let mut seen = std::collections::HashMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("spliced or torn line ({e}): {line:.200}"));
        *seen
            .entry(v["event_id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    for id in &accepted {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "accepted event {id} is in the log once"
        );
    }
    assert_eq!(seen.len(), accepted.len(), "nothing refused is in the log");
}
