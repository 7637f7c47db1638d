//! What hostile clients and hostile input cannot do to `pm-events serve`: the
//! built binary on 127.0.0.1:0, raw TCP clients that trickle, idle and hold
//! streams, and requests that once panicked or reached the recovery files.
//! Every flood is bounded in count and time and targets loopback only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use common::server::{Server, client, post, standard};
use pm_events::event::now_unix;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "operator-token-123";

/// The tests of this file run one at a time, so that no other test's load slows
/// a flood's probes.
static FLOOD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn host(srv: &Server) -> String {
    srv.url.trim_start_matches("http://").to_string()
}

/// Opens a connection and sends `head` (a request's headers, and maybe a body
/// start); the connection is kept by the caller.
async fn open(addr: &str, head: &str) -> Option<TcpStream> {
    let mut c = TcpStream::connect(addr).await.ok()?;
    c.write_all(head.as_bytes()).await.ok()?;
    Some(c)
}

/// What the server sends on `c` within `within`, until it closes or stops.
async fn answer(c: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    let closed = loop {
        match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// A GET on a new connection, which must answer within one second: its status.
async fn probe_get(url: &str, headers: &[(&str, &str)]) -> Result<u16, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let t = Instant::now();
    req.send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("GET {url} after {:?}: {e}", t.elapsed()))
}

/// Standard Webhooks headers of the right shape with a signature that is not
/// the body's: they pass the header checks, so the body is awaited.
fn shaped_signature_head(path: &str, id: &str, length: usize) -> String {
    let sig = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         webhook-id: {id}\r\nwebhook-timestamp: {}\r\nwebhook-signature: v1,{sig}\r\n\
         content-length: {length}\r\n\r\n{{",
        now_unix() as i64
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_and_streams_leave_health_and_the_operator_answering() {
    let _one = FLOOD.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[("PM_API_TOKEN", TOKEN)]);
    let addr = host(&srv);
    // 1,100 clients that send signed-looking headers and then one body byte every 2 s.
    let mut slow = Vec::new();
    for i in 0..1100 {
        if let Some(c) = open(
            &addr,
            &shaped_signature_head("/webhooks/incoming", &format!("slow{i}"), 1_000_000),
        )
        .await
        {
            slow.push(c);
        }
    }
    // 1,030 live streams with the token.
    let mut streams = Vec::new();
    for _ in 0..1030 {
        let head = format!(
            "GET /api/v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\n\r\n"
        );
        if let Some(c) = open(&addr, &head).await {
            streams.push(c);
        }
    }
    assert!(
        slow.len() > 1000 && streams.len() > 1000,
        "the flood did not connect"
    );
    let drip = tokio::spawn(async move {
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            for c in &mut slow {
                let _ = c.write_all(b" ").await;
            }
        }
        slow
    });
    // For 14 s (past the body deadline), health and the operator answer within 1 s.
    let auth = format!("Bearer {TOKEN}");
    let events = format!("{}/events", srv.url);
    let health = format!("{}/healthz", srv.url);
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(14);
    let mut probes = 0;
    while Instant::now() < until {
        assert_eq!(probe_get(&health, &[]).await, Ok(200));
        let t = Instant::now();
        let r = quick
            .post(&events)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(json!({"type": "probe", "data": {"n": probes}}).to_string())
            .send()
            .await;
        let status = r.map(|r| r.status().as_u16());
        assert_eq!(
            status.as_ref().ok(),
            Some(&202),
            "POST /events after {:?}: {status:?}",
            t.elapsed()
        );
        probes += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(probes >= 10);
    // Streams are capped per client address, below the connection limit.
    let h: Value =
        serde_json::from_str(&reqwest::get(&health).await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(h["streams"], 16, "{h}");
    drop(drip.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_streams_without_a_token_leave_health_and_the_page_answering() {
    let _one = FLOOD.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let addr = host(&srv);
    let mut held = Vec::new();
    for _ in 0..3000 {
        if let Ok(c) = TcpStream::connect(&addr).await {
            held.push(c);
        }
    }
    for _ in 0..1030 {
        let head = "GET /api/v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        if let Some(c) = open(&addr, head).await {
            held.push(c);
        }
    }
    assert!(held.len() > 4000, "the flood did not connect");
    for _ in 0..5 {
        assert_eq!(
            probe_get(&format!("{}/healthz", srv.url), &[]).await,
            Ok(200)
        );
        assert_eq!(probe_get(&format!("{}/", srv.url), &[]).await, Ok(200));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let h: Value = serde_json::from_str(
        &reqwest::get(format!("{}/healthz", srv.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(h["streams"], 16, "{h}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_keep_reconnecting_leave_health_answering() {
    let _one = FLOOD.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let addr = host(&srv);
    // 1,100 clients, each opening a connection with half a request, dropping it
    // after a second and opening the next, for 6 s.
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut clients = Vec::new();
    for _ in 0..1100 {
        let addr = addr.clone();
        clients.push(tokio::spawn(async move {
            let mut n = 0u32;
            while tokio::time::Instant::now() < until {
                if let Some(c) = open(&addr, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n").await {
                    n += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    drop(c);
                }
            }
            n
        }));
    }
    let mut probes = 0;
    while tokio::time::Instant::now() < until {
        assert_eq!(
            probe_get(&format!("{}/healthz", srv.url), &[]).await,
            Ok(200)
        );
        probes += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut connections = 0;
    for c in clients {
        connections += c.await.unwrap();
    }
    assert!(
        probes >= 10 && connections > 4000,
        "{probes} probes, {connections} connections"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_checked_before_the_body_and_a_late_body_is_cut_off() {
    let _one = FLOOD.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start_with(
        dir.path(),
        &[("PM_API_TOKEN", TOKEN), ("PM_MAX_BODY_BYTES", "100000")],
        &["--body-timeout", "1s"],
    );
    let addr = host(&srv);
    let within = Duration::from_secs(3);
    // No token: 401 and the connection closed, though no body byte was sent.
    let head = "POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 50000\r\n\r\n";
    let mut c = open(&addr, head).await.unwrap();
    let (text, closed) = answer(&mut c, within).await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(closed, "the connection was kept: {text}");
    // An incoming webhook without a signature header: the same.
    let head = "POST /webhooks/incoming HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 50000\r\n\r\n";
    let mut c = open(&addr, head).await.unwrap();
    let (text, closed) = answer(&mut c, within).await;
    assert!(text.starts_with("HTTP/1.1 401") && closed, "{text}");
    assert!(text.contains("signature"), "{text}");
    // A Content-Length over the limit: 413 at once.
    let mut c = open(
        &addr,
        &shaped_signature_head("/webhooks/incoming", "big", 5_000_000),
    )
    .await
    .unwrap();
    let (text, closed) = answer(&mut c, within).await;
    assert!(text.starts_with("HTTP/1.1 413") && closed, "{text}");
    // Headers that pass, then a body that never comes: 408 after the body deadline.
    let t = Instant::now();
    let mut c = open(
        &addr,
        &shaped_signature_head("/webhooks/incoming", "late", 500),
    )
    .await
    .unwrap();
    let (text, closed) = answer(&mut c, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 408") && closed, "{text}");
    assert!(text.contains("--body-timeout"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn times_that_cannot_be_represented_are_refused_not_panicked_on() {
    let _one = FLOOD.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start_capturing(dir.path(), &[]);
    let u = |p: &str| format!("{}{p}", srv.url);
    for q in [
        "since=1e308",
        "until=1e20",
        "since=18446744073709551616",
        "since=-5",
        "until=1e308s",
    ] {
        let r = client()
            .get(u(&format!("/api/v1/events?{q}")))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        let field = q.split('=').next().unwrap();
        assert_eq!(status, 400, "{q}: {v}");
        assert!(
            v["message"].as_str().unwrap().starts_with(field),
            "{q}: {v}"
        );
    }
    let (st, ep) = post(
        &u("/api/v1/endpoints"),
        &[("content-type", "application/json".into())],
        br#"{"url":"http://127.0.0.1:9/x"}"#,
    )
    .await;
    assert_eq!(st, 201, "{ep}");
    let (st, v) = post(
        &u(&format!(
            "/api/v1/endpoints/{}/recover",
            ep["id"].as_str().unwrap()
        )),
        &[("content-type", "application/json".into())],
        br#"{"since":"1e308"}"#,
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("since"), "{v}");
    assert_eq!(probe_get(&u("/healthz"), &[]).await, Ok(200));
    assert!(!srv.stderr().contains("panicked"), "{}", srv.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_with_control_characters_never_reach_a_file() {
    let _one = FLOOD.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let u = |p: &str| format!("{}{p}", srv.url);
    let json_ct = || vec![("content-type", "application/json".to_string())];
    for id in ["line1\nline2", "a\rb", "nul\u{0}x", "with space", "é"] {
        let body = json!({"type": "x", "data": {}, "event_id": id}).to_string();
        let (st, v) = post(&u("/events"), &json_ct(), body.as_bytes()).await;
        assert_eq!(st, 400, "{id:?}: {v}");
        assert!(
            v["message"].as_str().unwrap().starts_with("event_id"),
            "{v}"
        );
        // A CloudEvents id becomes the event id: the same rule.
        let ce = json!({"specversion": "1.0", "id": id, "source": "s", "type": "x", "data": {}})
            .to_string();
        let mut h = standard("ce-1", now_unix() as i64, ce.as_bytes());
        h[0].1 = "application/cloudevents+json".into();
        let (st, v) = post(&u("/webhooks/incoming"), &h, ce.as_bytes()).await;
        assert_eq!(st, 400, "{id:?}: {v}");
    }
    let mut h = json_ct();
    h.push(("idempotency-key", "two words".into()));
    let (st, v) = post(&u("/events"), &h, br#"{"type":"x","data":{}}"#).await;
    assert_eq!(st, 400, "{v}");
    // Nothing refused reached the log or the recovery files.
    drop(srv);
    let mut found = String::new();
    for e in common::files_under(&dir.path().join("logs")) {
        found.push_str(&std::fs::read_to_string(e).unwrap_or_default());
    }
    assert!(
        !found.contains("line1") && !found.contains("nul"),
        "{found}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_guards_metrics_and_answers_are_marked_not_to_be_sniffed_or_stored() {
    let _one = FLOOD.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[("PM_API_TOKEN", TOKEN)]);
    let u = |p: &str| format!("{}{p}", srv.url);
    let auth = format!("Bearer {TOKEN}");
    for p in ["/metrics", "/subscribers"] {
        assert_eq!(probe_get(&u(p), &[]).await, Ok(401), "{p}");
        assert_eq!(
            probe_get(&u(p), &[("authorization", &auth)]).await,
            Ok(200),
            "{p}"
        );
    }
    assert_eq!(probe_get(&u("/healthz"), &[]).await, Ok(200));
    // Creating an endpoint answers its secret: not to be stored by a cache.
    let r = client()
        .post(u("/api/v1/endpoints"))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(json!({"url": "http://127.0.0.1:9/x"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    let r = client()
        .get(u(&format!("/api/v1/endpoints/{id}/secret")))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    // One rule for bodies: JSON content types, named in the 415.
    for (path, ct) in [
        ("/api/v1/endpoints", "text/plain"),
        ("/events", "application/x-www-form-urlencoded"),
    ] {
        let r = client()
            .post(u(path))
            .header("authorization", &auth)
            .header("content-type", ct)
            .body(r#"{"url":"http://127.0.0.1:9/y","type":"x","data":{}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 415, "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert!(
            v["message"].as_str().unwrap().contains("application/json"),
            "{v}"
        );
    }
    // A body-less write (curl -X POST) needs no content type.
    let r = client()
        .post(u(&format!("/api/v1/endpoints/{id}/secret/rotate")))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_sign_ins_are_slowed_down_per_client() {
    let _one = FLOOD.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[("PM_API_TOKEN", TOKEN)]);
    let url = format!("{}/api/v1/session", srv.url);
    let c = client();
    let (mut wrong, mut slowed) = (0, 0);
    for i in 0..1000 {
        let r = c
            .post(&url)
            .header("content-type", "application/json")
            .body(json!({"token": format!("guess-{i}")}).to_string())
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            401 => wrong += 1,
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                slowed += 1;
            }
            s => panic!("status {s}"),
        }
    }
    assert!(wrong <= 6, "{wrong} guesses were checked");
    assert!(slowed >= 994, "{slowed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_that_names_nothing_is_refused() {
    let _one = FLOOD.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    for path in [
        "/api/v1/events?cursor=garbage",
        "/api/v1/deliveries?cursor=garbage",
        "/api/v1/endpoints?cursor=garbage",
    ] {
        let r = client()
            .get(format!("{}{path}", srv.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{path}");
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert!(
            v["message"].as_str().unwrap().starts_with("cursor"),
            "{path}: {v}"
        );
    }
}
