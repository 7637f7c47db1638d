//! The library's HTTP server driven in process (tower's `oneshot`), over a
//! system built by the library's builder: the same router `pm-events serve`
//! runs, without a socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use pm_events::app::App;
use pm_events::server::admission::Limits;
use pm_events::server::api::stream::StreamLimits;
use pm_events::server::{AppState, router};
use serde_json::Value;
use std::time::Duration;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread")]
async fn the_router_accepts_an_event_and_answers_a_repeat_of_its_id_as_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = pm_events::Config {
        log_dir: dir.path().join("logs"),
        ..Default::default()
    };
    let app = App::builder(&cfg).server().build().await.unwrap();
    app.bus.start().await.unwrap();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let state = AppState::new(
        &app,
        app.webhooks.clone().unwrap(),
        &cfg,
        metrics,
        Duration::from_secs(30),
        Limits::default(),
        StreamLimits::default(),
    )
    .unwrap();
    let routes = router(state, cfg.max_body_bytes);
    let peer = pm_events::server::admission::ClientAddr("127.0.0.1:9".parse().unwrap());
    let call = |req: Request<Body>| {
        let routes = routes.clone();
        let mut req = req;
        req.extensions_mut().insert(peer);
        async move {
            let r = routes.oneshot(req).await.unwrap();
            let status = r.status();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    let (s, health) = call(Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (s, health["status"].as_str()),
        (StatusCode::OK, Some("ok")),
        "{health}"
    );
    let post = |body: String| {
        Request::post("/events")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let (s, v) = call(post(r#"{"type":"deployment","data":{"n":1}}"#.into())).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["event_id"].as_str().unwrap().to_string();
    let repeat = format!(r#"{{"type":"deployment","data":{{"n":2}},"event_id":"{id}"}}"#);
    let (s, v) = call(post(repeat)).await;
    assert_eq!(
        (s, v["duplicate"].as_bool()),
        (StatusCode::ACCEPTED, Some(true)),
        "{v}"
    );
    let (s, v) = call(post(r#"{"type":"deployment","data":[]}"#.into())).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_event")),
        "{v}"
    );
    app.stop(Duration::from_secs(5)).await.unwrap();
    let logged = pm_events::journal::read_day(&cfg.log_dir, pm_events::journal::today()).unwrap();
    assert_eq!(logged.len(), 1);
}
