//! `pm-events serve` over real TCP: the built binary, a real HTTP client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::server::{SECRET, Server, client, post, signer, standard};
use pm_events::event::now_unix;
use serde_json::{Value, json};
use std::process::Command;

/// name, url, headers, body, expected status, text the message must contain.
type Case = (
    &'static str,
    String,
    Vec<(&'static str, String)>,
    Vec<u8>,
    u16,
    &'static str,
);

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_webhook_becomes_one_event_and_a_replay_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let url = format!("{}/webhooks/incoming", srv.url);
    let body = br#"{"event_type":"deployment","data":{"service":"api-gateway","status":"success"},"source":"ci"}"#;
    let now = now_unix() as i64;
    let (status, v) = post(&url, &standard("msg_1", now, body), body).await;
    assert_eq!(status, 202, "{v}");
    let id = v["event_id"].as_str().unwrap().to_string();
    let (status, v) = post(&url, &standard("msg_1", now, body), body).await;
    assert_eq!(status, 202);
    assert_eq!(v["duplicate"], true);
    assert_eq!(v["event_id"], id.as_str());

    // The specification's header style too.
    let plain_body = br#"{"event_type":"deployment","data":{"n":2},"event_id":"ext-42"}"#;
    let hex = vec![
        ("content-type", "application/json".to_string()),
        ("x-webhook-signature", signer().hex_signature(plain_body)),
    ];
    assert_eq!(post(&url, &hex, plain_body).await.0, 202);
    assert_eq!(
        post(&url, &hex, plain_body).await.1["duplicate"],
        true,
        "same event_id: a replay"
    );

    let status = srv_terminate_and_read(srv).await;
    let (ok, events) = status;
    assert!(ok);
    assert_eq!(
        events.len(),
        2,
        "one line per accepted webhook, none for the replays: {events:?}"
    );
    assert_eq!(events[0]["event_id"], id.as_str());
    assert_eq!(events[0]["source"], "ci");
    assert_eq!(events[0]["data"]["service"], "api-gateway");
    assert_eq!(events[1]["event_id"], "ext-42");
}

async fn srv_terminate_and_read(srv: Server) -> (bool, Vec<Value>) {
    let logs = srv.logs.clone();
    let status = tokio::task::spawn_blocking(move || srv.terminate())
        .await
        .unwrap();
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(logs.join("events")) {
        for f in rd.flatten() {
            out.extend(common::jsonl(&f.path()));
        }
    }
    (status.success(), out)
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_expired_and_missing_signatures_are_401_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let url = format!("{}/webhooks/incoming", srv.url);
    let body = br#"{"event_type":"deployment","data":{}}"#;
    let now = now_unix() as i64;
    let mut forged = standard("m1", now, body);
    forged[3].1 = signer().standard_signature("m1", now, b"{\"other\":1}");
    let expired = standard("m2", now - 3600, body);
    let wrong_hex = vec![
        ("content-type", "application/json".to_string()),
        ("x-webhook-signature", format!("sha256={}", "0".repeat(64))),
    ];
    let missing = vec![("content-type", "application/json".to_string())];
    for (name, h, needle) in [
        ("forged", forged, "does not match"),
        ("expired", expired, "tolerance"),
        ("wrong hex", wrong_hex, "does not match"),
        ("missing", missing, "missing signature"),
    ] {
        let (status, v) = post(&url, &h, body).await;
        assert_eq!(status, 401, "{name}: {v}");
        assert_eq!(v["error"], "invalid_signature");
        assert!(
            v["message"].as_str().unwrap().contains(needle),
            "{name}: {v}"
        );
        assert!(!v["message"].as_str().unwrap().contains(SECRET));
    }
    let (_, events) = srv_terminate_and_read(srv).await;
    assert!(events.is_empty(), "nothing refused is logged: {events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cloudevents_in_structured_and_binary_mode() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let url = format!("{}/webhooks/incoming", srv.url);
    let now = now_unix() as i64;
    let structured = serde_json::to_vec(&json!({
        "specversion": "1.0", "id": "ce-1", "source": "/orders", "type": "com.example.order.created",
        "time": "2025-01-15T10:00:00Z", "data": {"order": 7}
    }))
    .unwrap();
    let mut h = standard("ce-1", now, &structured);
    h[0].1 = "application/cloudevents+json".into();
    let (status, v) = post(&url, &h, &structured).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["event_id"], "ce-1");

    let data = br#"{"order": 8}"#;
    let mut b = standard("wh-2", now, data);
    b.extend([
        ("ce-specversion", "1.0".to_string()),
        ("ce-id", "ce-2".into()),
        ("ce-source", "/orders".into()),
        ("ce-type", "com.example.order.shipped".into()),
    ]);
    let (status, v) = post(&url, &b, data).await;
    assert_eq!(status, 202, "{v}");

    // Missing CloudEvents attribute: 400 naming it.
    let bad =
        serde_json::to_vec(&json!({"specversion": "1.0", "source": "/x", "type": "t"})).unwrap();
    let mut h = standard("ce-3", now, &bad);
    h[0].1 = "application/cloudevents+json".into();
    let (status, v) = post(&url, &h, &bad).await;
    assert_eq!(status, 400);
    assert!(v["message"].as_str().unwrap().contains("`id`"), "{v}");

    let (_, events) = srv_terminate_and_read(srv).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["type"], "com.example.order.created");
    assert_eq!(events[0]["source"], "/orders");
    assert_eq!(events[0]["data"]["order"], 7);
    assert_eq!(events[0]["timestamp"], 1736935200.0);
    assert_eq!(events[1]["type"], "com.example.order.shipped");
    assert_eq!(events[1]["event_id"], "ce-2");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_has_its_status_and_a_json_body() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(
        dir.path(),
        &[
            ("PM_MAX_BODY_BYTES", "2048"),
            ("PM_API_TOKEN", "tok-123"),
            ("PM_NODE_ID", "node-a"),
        ],
    );
    let u = |p: &str| format!("{}{p}", srv.url);
    let now = now_unix() as i64;
    let json_ct = || vec![("content-type", "application/json".to_string())];
    let cases: Vec<Case> = vec![
        (
            "malformed",
            u("/webhooks/incoming"),
            standard("e1", now, b"{not json"),
            b"{not json".to_vec(),
            400,
            "malformed JSON",
        ),
        (
            "schema",
            u("/webhooks/incoming"),
            standard("e2", now, br#"{"data":{}}"#),
            br#"{"data":{}}"#.to_vec(),
            400,
            "`event_type`",
        ),
        (
            "wrong data",
            u("/webhooks/incoming"),
            standard("e3", now, br#"{"event_type":"x","data":[1]}"#),
            br#"{"event_type":"x","data":[1]}"#.to_vec(),
            400,
            "`data` must be a JSON object",
        ),
        (
            "media",
            u("/webhooks/incoming"),
            {
                let mut h = standard("e4", now, b"x");
                h[0].1 = "text/plain".into();
                h
            },
            b"x".to_vec(),
            415,
            "unsupported content type",
        ),
        (
            "too big",
            u("/webhooks/incoming"),
            // Signature headers first: without them, 401 comes before the size.
            standard("e5", now, b"x"),
            vec![b'x'; 4096],
            413,
            "larger than the limit",
        ),
        (
            "no token",
            u("/events"),
            json_ct(),
            br#"{"type":"x","data":{}}"#.to_vec(),
            401,
            "bearer token",
        ),
        (
            "wrong token",
            u("/events"),
            {
                let mut h = json_ct();
                h.push(("authorization", "Bearer nope".into()));
                h
            },
            br#"{"type":"x","data":{}}"#.to_vec(),
            401,
            "bearer token",
        ),
        (
            "missing type",
            u("/events"),
            {
                let mut h = json_ct();
                h.push(("authorization", "Bearer tok-123".into()));
                h
            },
            br#"{"data":{}}"#.to_vec(),
            400,
            "missing field `type`",
        ),
        (
            "bad type",
            u("/events"),
            {
                let mut h = json_ct();
                h.push(("authorization", "Bearer tok-123".into()));
                h
            },
            br#"{"type":"a b","data":{}}"#.to_vec(),
            400,
            "' '",
        ),
        (
            "events media",
            u("/events"),
            vec![
                ("content-type", "text/plain".into()),
                ("authorization", "Bearer tok-123".into()),
            ],
            b"x".to_vec(),
            415,
            "application/json",
        ),
    ];
    for (name, url, headers, body, want, needle) in cases {
        let (status, v) = post(&url, &headers, &body).await;
        assert_eq!(status, want, "{name}: {v}");
        assert!(v["error"].is_string(), "{name}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains(needle),
            "{name}: {v}"
        );
    }
    // Authorized publish.
    let (status, v) = post(
        &u("/events"),
        &[
            ("content-type", "application/json".into()),
            ("authorization", "Bearer tok-123".into()),
        ],
        br#"{"type":"deployment","data":{"ok":true}}"#,
    )
    .await;
    assert_eq!(status, 202, "{v}");

    let c = client();
    let r = c.get(u("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.text()
            .await
            .map(|t| serde_json::from_str::<Value>(&t).unwrap())
            .unwrap()["error"],
        "not_found"
    );
    // The token is checked first: without it, 401 whatever the method.
    let r = c.get(u("/events")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(u("/events"))
        .bearer_auth("tok-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.text()
            .await
            .map(|t| serde_json::from_str::<Value>(&t).unwrap())
            .unwrap()["error"],
        "method_not_allowed"
    );
    let h: Value = c
        .get(u("/healthz"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["node"], "node-a");
    let subs: Value = c
        .get(u("/subscribers"))
        .bearer_auth("tok-123")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(subs["risk_alert"], 1);
    let api: Value = c
        .get(u("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert!(api["paths"]["/webhooks/incoming"]["post"].is_object());
    let m = c
        .get(u("/metrics"))
        .bearer_auth("tok-123")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("pm_events_published_total{type=\"deployment\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("pm_events_http_requests_total{route=\"/events\",status=\"401\"} 3"),
        "{m}"
    );
    assert!(m.contains("pm_events_queue_depth"), "{m}");

    let (_, events) = srv_terminate_and_read(srv).await;
    assert_eq!(events.len(), 1, "only the authorized publish is logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_drains_every_accepted_event() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let url = format!("{}/events", srv.url);
    let c = client();
    let mut ids = Vec::new();
    for i in 0..200 {
        let r = c
            .post(&url)
            .header("content-type", "application/json")
            .body(format!(r#"{{"type":"risk_alert","data":{{"alert_id":"a{i}","risk_type":"security","severity":"low","title":"t","risk_score":0.1}}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        ids.push(
            r.text()
                .await
                .map(|t| serde_json::from_str::<Value>(&t).unwrap())
                .unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let logs = srv.logs.clone();
    let (ok, events) = srv_terminate_and_read(srv).await;
    assert!(ok, "SIGTERM is a clean exit");
    assert_eq!(events.len(), 200);
    let handled = common::jsonl(&logs.join("risk_alerts/risk_alerts.jsonl"));
    assert_eq!(
        handled.len(),
        200,
        "every accepted event was handled before exit"
    );
    let dash: Value =
        serde_json::from_slice(&std::fs::read(logs.join("risk_alerts/dashboard.json")).unwrap())
            .unwrap();
    assert_eq!(dash["alerts_received"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_public_bind_needs_a_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_pm-events"))
        .args(["serve", "--bind", "0.0.0.0:0"])
        .env_remove("PM_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PM_API_TOKEN"));
}
