//! Calls of the `/api/v1` routes of a test server: a JSON request, waiting for an
//! answer to hold, creating an endpoint, publishing an event.

use super::server::{Server, client};
use serde_json::{Value, json};
use std::time::Duration;

/// `method url` with an optional JSON body: (status, answer).
pub async fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let c = client();
    let mut req = c.request(method.parse().unwrap(), url);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Polls `GET url` until `ok` holds of its answer; panics after `within`.
pub async fn until(
    url: &str,
    within: Duration,
    what: &str,
    ok: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (st, v) = call("GET", url, None).await;
        if ok(st, &v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within {within:?}: {st} {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn create(s: &Server, body: Value) -> Value {
    let (st, ep) = call("POST", &format!("{}/api/v1/endpoints", s.url), Some(body)).await;
    assert_eq!(st, 201, "{ep}");
    ep
}

pub async fn publish(s: &Server, ty: &str, data: Value) -> String {
    let (st, v) = call(
        "POST",
        &format!("{}/events", s.url),
        Some(json!({"type": ty, "data": data})),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    v["event_id"].as_str().unwrap().to_string()
}
