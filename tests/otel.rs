//! Traces over OTLP/HTTP: a small collector on 127.0.0.1:0 decodes what `serve`
//! exports (protobuf) and the spans of one event — publish, handler runs, the
//! delivery attempt — are in the trace its webhook's `traceparent` names, the trace
//! the caller started.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::server::{Server, client};
use common::{TestReceiver, wait_until};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A span as the collector got it: (name, trace id, span id, parent span id), hex.
type Got = Arc<Mutex<Vec<(String, String, String, String)>>>;

async fn collector() -> (String, Got, tokio::task::JoinHandle<()>) {
    let got: Got = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let g = g.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
                let mut g = g.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            g.push((
                                s.name,
                                hex::encode(s.trace_id),
                                hex::encode(s.span_id),
                                hex::encode(s.parent_span_id),
                            ));
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got, task)
}

/// Creates an endpoint of `s` for `url` taking `ty`.
async fn endpoint(s: &Server, url: &str, ty: &str) {
    let r = client()
        .post(format!("{}/api/v1/endpoints", s.url))
        .header("content-type", "application/json")
        .body(json!({"url": url, "event_types": [ty]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_one_trace_from_the_callers_span_to_the_delivery_attempt() {
    let (otlp, got, _c) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let rx = TestReceiver::start().await;
    endpoint(&s, &rx.url("/t"), "traced").await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = client()
        .post(format!("{}/events", s.url))
        .header("content-type", "application/json")
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .body(json!({"type": "traced", "data": {}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let webhook = rx.wait_for("/t", 1, Duration::from_secs(20)).await[0].clone();
    let tp = webhook.header("traceparent").to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[1], caller_trace, "the caller's trace is continued");
    let attempt_span = parts[2].to_string();
    wait_until(Duration::from_secs(20), || {
        let g = got.lock().unwrap();
        ["publish", "handle", "webhook.attempt"]
            .iter()
            .all(|n| g.iter().any(|s| s.0 == *n && s.1 == caller_trace))
    })
    .await;
    let g = got.lock().unwrap().clone();
    let attempt = g
        .iter()
        .find(|s| s.0 == "webhook.attempt" && s.2 == attempt_span)
        .expect("the attempt's span is the webhook's traceparent");
    let publish = g
        .iter()
        .find(|s| s.0 == "publish" && s.1 == caller_trace)
        .unwrap();
    assert_eq!(
        publish.3, "00f067aa0ba902b7",
        "publish is a child of the caller's span"
    );
    let parent = g
        .iter()
        .find(|s| s.2 == attempt.3)
        .expect("the attempt's parent");
    assert_eq!(
        parent.0, "handle",
        "the attempt is a child of a handler run"
    );
    assert_eq!(parent.3, publish.2, "the handler run is a child of publish");
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_webhooks_still_carry_a_traceparent() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    endpoint(&s, &rx.url("/u"), "plain").await;
    let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    client()
        .post(format!("{}/events", s.url))
        .header("content-type", "application/json")
        .header("traceparent", given)
        .body(json!({"type": "plain", "data": {}}).to_string())
        .send()
        .await
        .unwrap();
    let got = rx.wait_for("/u", 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].header("traceparent"), given, "passed on as it came");
}

#[tokio::test]
async fn a_traceparent_on_an_incoming_webhook_is_continued() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    endpoint(&s, &rx.url("/in"), "inbound").await;
    let body = br#"{"event_type":"inbound","data":{"n":1}}"#;
    let ts = pm_events::event::now_unix() as i64;
    let mut headers = common::server::standard("msg_trace_1", ts, body);
    let given = "00-11111111111111111111111111111111-2222222222222222-01";
    headers.push(("traceparent", given.to_string()));
    let (st, v) =
        common::server::post(&format!("{}/webhooks/incoming", s.url), &headers, body).await;
    assert_eq!(st, 202, "{v}");
    let got = rx.wait_for("/in", 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].header("traceparent"), given);
}
