//! Managed endpoints end to end: the built binary's `serve`, its `/api/v1` routes and
//! the CLI, real HTTP receivers, signatures checked with our verifier and with the
//! independent Python `standardwebhooks` and `cryptography` packages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::api::{call, create, publish, until};
use common::server::{Server, client};
use common::{Reply, TestReceiver, wait_until};
use pm_events::config::Secret;
use pm_events::event::now_unix;
use pm_events::webhook::sign::{DEFAULT_TOLERANCE, verify_standard};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// Runs a script of `tests/py` with `args` and `body` on stdin: (exit 0, output).
fn py(script: &str, args: &[&str], body: &[u8]) -> (bool, String) {
    common::py_script(script, args, body)
}

/// Checks a received request's Standard Webhooks headers with `secret`, with our
/// verifier and with the Python library.
fn assert_verifies(r: &common::Received, secret: &str) {
    let (id, ts, sig) = (
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        r.header("webhook-signature"),
    );
    verify_standard(
        &[Secret::new(secret)],
        id,
        ts,
        &r.body,
        sig,
        now_unix() as i64,
        DEFAULT_TOLERANCE,
    )
    .unwrap_or_else(|e| panic!("our verifier: {e}"));
    let (ok, out) = py(
        "standardwebhooks_interop.py",
        &["verify", secret, id, ts, sig],
        &r.body,
    );
    assert!(ok, "standardwebhooks rejected it: {out}");
}

fn cli(logs: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pm-events"))
        .args(args)
        .env("PM_LOG_DIR", logs)
        .env("PM_ENDPOINT_ALLOW_NETS", "127.0.0.0/8")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn one_event_fans_out_to_each_matching_endpoint_with_its_own_secret_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    let a = create(
        &s,
        json!({"url": rx.url("/a"), "event_types": ["deploy*"], "headers": {"X-Team": "ops"}}),
    )
    .await;
    let b = create(&s, json!({"url": rx.url("/b"), "event_types": ["*"]})).await;
    create(
        &s,
        json!({"url": rx.url("/c"), "event_types": ["report_ready"]}),
    )
    .await;
    assert!(a["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_ne!(a["secret"], b["secret"], "each endpoint has its own secret");

    let id = publish(&s, "deployment", json!({"env": "prod"})).await;
    let got_a = rx.wait_for("/a", 1, T).await;
    let got_b = rx.wait_for("/b", 1, T).await;
    assert_eq!(got_a[0].json()["event_id"], id);
    assert_eq!(got_b[0].json()["event_id"], id);
    assert_eq!(got_a[0].header("x-team"), "ops");
    assert_eq!(got_b[0].header("x-team"), "");
    assert_verifies(&got_a[0], a["secret"].as_str().unwrap());
    assert_verifies(&got_b[0], b["secret"].as_str().unwrap());
    // The specification's header, keyed by the endpoint secret's own string.
    let hex = pm_events::webhook::sign::Signer::new(&Secret::new(a["secret"].as_str().unwrap()))
        .unwrap()
        .hex_signature(&got_a[0].body);
    assert_eq!(got_a[0].header("x-webhook-signature"), hex);
    // One delivery per endpoint, each in the deliveries API.
    let (_, list) = call(
        "GET",
        &format!("{}/api/v1/deliveries?event_id={id}", s.url),
        None,
    )
    .await;
    let mut eps: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["endpoint_id"].as_str().unwrap())
        .collect();
    eps.sort();
    let mut want = vec![a["id"].as_str().unwrap(), b["id"].as_str().unwrap()];
    want.sort();
    assert_eq!(eps, want);
    assert!(rx.requests("/c").is_empty(), "report_ready only");
}

#[tokio::test]
async fn each_filter_operator_selects_the_events_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    let filters = [
        ("eq", json!({"data.env": "prod"})),
        ("ne", json!({"data.env": {"$ne": "prod"}})),
        ("in", json!({"data.env": {"$in": ["prod", "stage"]}})),
        ("nin", json!({"data.env": {"$nin": ["prod"]}})),
        ("gt", json!({"data.n": {"$gt": 5}})),
        ("gte", json!({"data.n": {"$gte": 5}})),
        ("lt", json!({"data.n": {"$lt": 5}})),
        ("lte", json!({"data.n": {"$lte": 5}})),
        ("exists", json!({"data.owner": {"$exists": true}})),
        ("prefix", json!({"data.path": {"$prefix": "/srv/"}})),
        (
            "and",
            json!({"$and": [{"data.env": "prod"}, {"data.n": 5}]}),
        ),
        ("or", json!({"$or": [{"data.env": "dev"}, {"data.n": 9}]})),
        ("not", json!({"$not": {"data.env": "prod"}})),
        ("type", json!({"type": "job_done", "source": "ci"})),
    ];
    for (name, f) in &filters {
        create(
            &s,
            json!({"url": rx.url(&format!("/{name}")), "event_types": ["job_*"], "filter": f}),
        )
        .await;
    }
    let one = json!({"env": "prod", "n": 5, "owner": "ana", "path": "/srv/app"});
    let two = json!({"env": "dev", "n": 9, "path": "/home/x"});
    let (st, _) = call(
        "POST",
        &format!("{}/events", s.url),
        Some(json!({"type": "job_done", "data": one, "source": "ci"})),
    )
    .await;
    assert_eq!(st, 202);
    publish(&s, "job_done", two).await;
    // What each endpoint should get, by `data.n`: 5 = the first event, 9 = the second.
    let want: [(&str, &[u64]); 14] = [
        ("eq", &[5]),
        ("ne", &[9]),
        ("in", &[5]),
        ("nin", &[9]),
        ("gt", &[9]),
        ("gte", &[5, 9]),
        ("lt", &[]),
        ("lte", &[5]),
        ("exists", &[5]),
        ("prefix", &[5]),
        ("and", &[5]),
        ("or", &[9]),
        ("not", &[9]),
        ("type", &[5]),
    ];
    let total: usize = want.iter().map(|(_, w)| w.len()).sum();
    wait_until(T, || {
        want.iter()
            .map(|(n, _)| rx.requests(&format!("/{n}")).len())
            .sum::<usize>()
            >= total
    })
    .await;
    // Every delivery is in: those that were to go went (the filters' misses are not deliveries).
    let (_, all) = call(
        "GET",
        &format!("{}/api/v1/deliveries?limit=1000", s.url),
        None,
    )
    .await;
    assert_eq!(all["data"].as_array().unwrap().len(), total);
    for (name, ns) in want {
        let mut got: Vec<u64> = rx
            .requests(&format!("/{name}"))
            .iter()
            .map(|r| r.json()["data"]["n"].as_u64().unwrap())
            .collect();
        got.sort();
        assert_eq!(got, ns, "filter {name}");
    }
}

#[tokio::test]
async fn a_disabled_endpoint_keeps_its_deliveries_and_sends_them_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    let ep = create(&s, json!({"url": rx.url("/d"), "event_types": ["tick"]})).await;
    create(
        &s,
        json!({"url": rx.url("/control"), "event_types": ["tick"]}),
    )
    .await;
    let url = format!("{}/api/v1/endpoints/{}", s.url, ep["id"].as_str().unwrap());
    let (st, off) = call("PATCH", &url, Some(json!({"enabled": false}))).await;
    assert_eq!((st, &off["enabled"]), (200, &json!(false)), "{off}");
    assert_eq!(off["disabled_reason"], "disabled by hand");
    for i in 0..5 {
        publish(&s, "tick", json!({"i": i})).await;
    }
    until(
        &format!("{}/api/v1/deliveries?status=pending", s.url),
        T,
        "5 deliveries kept",
        |_, l| l["data"].as_array().is_some_and(|d| d.len() == 5),
    )
    .await;
    // The same events reached an enabled endpoint; over two of the outbox's
    // one-second polls after that, the disabled one still got nothing.
    rx.wait_for("/control", 5, T).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(rx.requests("/d").is_empty(), "nothing sent while disabled");
    let (st, _) = call("PATCH", &url, Some(json!({"enabled": true}))).await;
    assert_eq!(st, 200);
    let got = rx.wait_for("/d", 5, T).await;
    let mut is: Vec<u64> = got
        .iter()
        .map(|r| r.json()["data"]["i"].as_u64().unwrap())
        .collect();
    is.sort();
    assert_eq!(is, vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn rotation_sends_both_signatures_during_the_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    let ep = create(&s, json!({"url": rx.url("/r")})).await;
    let id = ep["id"].as_str().unwrap();
    let old = ep["secret"].as_str().unwrap().to_string();
    let (st, rotated) = call(
        "POST",
        &format!("{}/api/v1/endpoints/{id}/secret/rotate", s.url),
        Some(json!({"overlap_secs": 3600})),
    )
    .await;
    assert_eq!(st, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(old, new);
    let (_, shown) = call(
        "GET",
        &format!("{}/api/v1/endpoints/{id}/secret", s.url),
        None,
    )
    .await;
    assert_eq!(shown["secret"], new.as_str());
    publish(&s, "rotated", json!({})).await;
    let got = rx.wait_for("/r", 1, T).await;
    assert_eq!(got[0].header("webhook-signature").split(' ').count(), 2);
    assert_verifies(&got[0], &old);
    assert_verifies(&got[0], &new);
    // No overlap: only the new secret signs.
    call(
        "POST",
        &format!("{}/api/v1/endpoints/{id}/secret/rotate", s.url),
        Some(json!({"overlap_secs": 0})),
    )
    .await;
    let (_, newest) = call(
        "GET",
        &format!("{}/api/v1/endpoints/{id}/secret", s.url),
        None,
    )
    .await;
    publish(&s, "rotated", json!({})).await;
    let got = rx.wait_for("/r", 2, T).await;
    assert_eq!(got[1].header("webhook-signature").split(' ').count(), 1);
    assert_verifies(&got[1], newest["secret"].as_str().unwrap());
}

#[tokio::test]
async fn ed25519_endpoints_sign_what_an_independent_implementation_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    let ep = create(&s, json!({"url": rx.url("/e"), "signing": "ed25519"})).await;
    let pk = ep["public_key"].as_str().unwrap().to_string();
    assert!(
        pk.starts_with("whpk_") && ep.get("secret").is_none(),
        "{ep}"
    );
    publish(&s, "signed", json!({"x": 1})).await;
    let got = rx.wait_for("/e", 1, T).await;
    let r = &got[0];
    assert!(r.header("webhook-signature").starts_with("v1a,"));
    let args = [
        pk.as_str(),
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        r.header("webhook-signature"),
    ];
    let (ok, out) = py("ed25519_verify.py", &args, &r.body);
    assert!(ok, "cryptography rejected it: {out}");
    let mut tampered = r.body.clone();
    tampered[2] ^= 1;
    let (ok, _) = py("ed25519_verify.py", &args, &tampered);
    assert!(!ok, "a changed body must not verify");
}

#[tokio::test]
async fn deliveries_api_and_cli_agree_and_dead_ones_are_retried_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    rx.script(
        "/f",
        vec![Reply::status(500).body("down"), Reply::status(500)],
    );
    let ep = create(&s, json!({"url": rx.url("/f"), "max_retries": 0})).await;
    let id = ep["id"].as_str().unwrap();
    let event = publish(&s, "fails", json!({})).await;
    rx.wait_for("/f", 1, T).await;
    let dead_url = format!("{}/api/v1/deliveries?status=dead&endpoint_id={id}", s.url);
    let is_dead = |_: u16, l: &Value| l["data"].as_array().is_some_and(|d| !d.is_empty());
    let d = until(&dead_url, T, "a dead delivery", is_dead).await["data"][0].clone();
    assert_eq!(d["event_id"], event);
    let (_, one) = call(
        "GET",
        &format!("{}/api/v1/deliveries/{}", s.url, d["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(one["attempt_log"][0]["status"], 500);
    assert_eq!(one["attempt_log"][0]["response"], "down");

    // The CLI reads the same deliveries.
    let (code, out, err) = cli(&s.logs, &["deliveries", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let from_cli: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (_, from_api) = call("GET", &format!("{}/api/v1/deliveries", s.url), None).await;
    assert_eq!(&Value::Array(from_cli), &from_api["data"]);

    // Retry: the receiver fails once more; then recover sends it a third time.
    let (st, _) = call(
        "POST",
        &format!(
            "{}/api/v1/deliveries/{}/retry",
            s.url,
            d["id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(st, 202);
    rx.wait_for("/f", 2, T).await;
    until(&dead_url, T, "dead again", is_dead).await;
    let (st, rec) = call(
        "POST",
        &format!("{}/api/v1/endpoints/{id}/recover", s.url),
        Some(json!({"since": "1h"})),
    )
    .await;
    assert_eq!((st, &rec["recovered"]), (202, &json!(1)), "{rec}");
    let got = rx.wait_for("/f", 3, T).await;
    assert_eq!(
        got[2].header("webhook-id"),
        event,
        "the same message id each time"
    );
    // A delivered one cannot be retried; an unknown one is 404.
    let (st, _) = call(
        "POST",
        &format!("{}/api/v1/deliveries/nope/retry", s.url),
        None,
    )
    .await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn the_test_route_sends_a_signed_endpoint_test_event_to_that_endpoint_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    let a = create(&s, json!({"url": rx.url("/t1")})).await;
    create(&s, json!({"url": rx.url("/t2")})).await;
    let (st, v) = call(
        "POST",
        &format!(
            "{}/api/v1/endpoints/{}/test",
            s.url,
            a["id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let got = rx.wait_for("/t1", 1, T).await;
    assert_eq!(got[0].json()["event_type"], "endpoint_test");
    assert_verifies(&got[0], a["secret"].as_str().unwrap());
    assert!(rx.requests("/t2").is_empty());
}

#[tokio::test]
async fn endpoints_survive_sigkill_and_cli_changes_reach_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let s = Server::start(dir.path(), &[]);
    let ep = create(&s, json!({"url": rx.url("/k"), "event_types": ["kept"]})).await;
    let logs = s.logs.clone();
    drop(s); // SIGKILL
    let s = Server::start(dir.path(), &[]);
    let (st, again) = call(
        "GET",
        &format!("{}/api/v1/endpoints/{}", s.url, ep["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(again["url"], ep["url"]);
    publish(&s, "kept", json!({})).await;
    rx.wait_for("/k", 1, T).await;

    // An endpoint added with the CLI is used by the running server within a second.
    let (code, out, err) = cli(
        &logs,
        &[
            "endpoints",
            "add",
            &rx.url("/cli"),
            "--types",
            "from_cli",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let added: Value = serde_json::from_str(out.trim()).unwrap();
    let url = format!(
        "{}/api/v1/endpoints/{}",
        s.url,
        added["id"].as_str().unwrap()
    );
    until(
        &url,
        Duration::from_secs(1),
        "the server sees it",
        |st, _| st == 200,
    )
    .await;
    publish(&s, "from_cli", json!({})).await;
    let got = rx.wait_for("/cli", 1, T).await;
    assert_verifies(&got[0], added["secret"].as_str().unwrap());
}

#[tokio::test]
async fn bad_endpoint_input_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[("PM_WEBHOOK_URL_DEPLOY", "http://127.0.0.1:9/x")],
    );
    let u = format!("{}/api/v1/endpoints", s.url);
    for (body, field) in [
        (json!({"event_types": ["a"]}), "url: required"),
        (json!({"url": "ftp://h/x"}), "url:"),
        (
            json!({"url": "http://h/", "filter": {"data.n": {"$gt": {}}}}),
            "filter.data.n.$gt:",
        ),
        (
            json!({"url": "http://h/", "filter": {"data.n": {"$regex": "a"}}}),
            "filter.data.n.$regex:",
        ),
        (
            json!({"url": "http://h/", "event_types": "a"}),
            "event_types:",
        ),
        (
            json!({"url": "http://h/", "headers": {"webhook-signature": "x"}}),
            "headers.webhook-signature:",
        ),
        (
            json!({"url": "http://h/", "max_retries": "3"}),
            "max_retries:",
        ),
        (
            json!({"url": "http://h/", "colour": 1}),
            "colour: unknown field",
        ),
    ] {
        let (st, v) = call("POST", &u, Some(body.clone())).await;
        assert_eq!(st, 400, "{body} → {v}");
        assert!(
            v["message"].as_str().unwrap().starts_with(field),
            "{body} → {v}"
        );
    }
    let r = client()
        .post(&u)
        .header("content-type", "application/json")
        .body(r#"{"url":"http://h/","url":"http://i/"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("duplicate"));
    // The environment's routes are read-only endpoints.
    let (_, list) = call("GET", &u, None).await;
    let env = &list["data"][0];
    assert_eq!(
        (env["id"].as_str(), env["source"].as_str()),
        (Some("PM_WEBHOOK_URL_DEPLOY"), Some("env"))
    );
    assert_eq!(env["event_types"], json!(["deploy"]));
    let (st, _) = call(
        "PATCH",
        &format!("{u}/PM_WEBHOOK_URL_DEPLOY"),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(st, 409);
    let (st, _) = call("GET", &format!("{u}/PM_WEBHOOK_URL_DEPLOY/secret"), None).await;
    assert_eq!(st, 409, "the environment's secret is not shown");
    let (st, _) = call("GET", &format!("{u}/ep_nope"), None).await;
    assert_eq!(st, 404);
    let (st, v) = call(
        "GET",
        &format!("{}/api/v1/deliveries?status=lost", s.url),
        None,
    )
    .await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = call(
        "GET",
        &format!("{}/api/v1/deliveries?colour=1", s.url),
        None,
    )
    .await;
    assert_eq!(st, 400, "{v}");
}

#[tokio::test]
async fn the_api_needs_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[("PM_API_TOKEN", "t0ken")]);
    for path in [
        "/api/v1/endpoints",
        "/api/v1/deliveries",
        "/api/v1/events",
        "/api/v1/stream",
    ] {
        let r = client()
            .get(format!("{}{path}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = client()
        .get(format!("{}/api/v1/endpoints", s.url))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Reads SSE messages from `resp` until `n` of kind `event`/`delivery` came.
async fn sse(mut resp: reqwest::Response, n: usize) -> Vec<(String, String, Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("stream messages in time")
            .unwrap()
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let msg: String = buf.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (String::new(), String::new(), String::new());
            for l in msg.lines() {
                if let Some(v) = l.strip_prefix("id: ") {
                    id = v.into();
                } else if let Some(v) = l.strip_prefix("event: ") {
                    kind = v.into();
                } else if let Some(v) = l.strip_prefix("data: ") {
                    data = v.into();
                }
            }
            if !kind.is_empty() {
                out.push((id, kind, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_stream_shows_events_and_deliveries_live_and_resumes_after_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    create(
        &s,
        json!({"url": rx.url("/s"), "event_types": ["streamed"]}),
    )
    .await;
    let c = client();
    let resp = c
        .get(format!("{}/api/v1/stream", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = publish(&s, "streamed", json!({"n": 1})).await;
    let got = sse(resp, 2).await;
    let ev = got.iter().find(|m| m.1 == "event").expect("the event");
    assert_eq!(ev.2["event_id"], id);
    let del = got
        .iter()
        .find(|m| m.1 == "delivery")
        .expect("its delivery");
    assert_eq!(
        (del.2["event_id"].as_str(), del.2["outcome"].as_str()),
        (Some(id.as_str()), Some("delivered"))
    );
    // Reconnect after the first message: what followed it is sent again first.
    let first = got[0].0.clone();
    let again = c
        .get(format!("{}/api/v1/stream", s.url))
        .header("last-event-id", first)
        .send()
        .await
        .unwrap();
    let replayed = sse(again, 1).await;
    assert_eq!(replayed[0].0, got[1].0);
}

#[tokio::test]
async fn the_events_api_lists_the_log_and_shows_one_with_its_handlers_and_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    create(
        &s,
        json!({"url": rx.url("/v"), "event_types": ["risk_alert"]}),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(publish(&s, "note", json!({"i": i})).await);
    }
    let risk = publish(
        &s,
        "risk_alert",
        json!({"alert_id": "r1", "risk_type": "security", "severity": "low", "title": "t", "risk_score": 0.1}),
    )
    .await;
    rx.wait_for("/v", 1, T).await;
    let (_, page1) = call(
        "GET",
        &format!("{}/api/v1/events?type=note&limit=2", s.url),
        None,
    )
    .await;
    let got: Vec<&str> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[1].as_str()], "newest first");
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = call(
        "GET",
        &format!("{}/api/v1/events?type=note&limit=2&cursor={cursor}", s.url),
        None,
    )
    .await;
    assert_eq!(page2["data"][0]["event_id"], ids[0].as_str());
    assert_eq!(page2["next_cursor"], Value::Null);
    let one = until(
        &format!("{}/api/v1/events/{risk}", s.url),
        T,
        "its handler outcome and delivery",
        |st, one| {
            st == 200
                && one["deliveries"].as_array().is_some_and(|d| !d.is_empty())
                && one["handlers"].as_array().is_some_and(|h| !h.is_empty())
        },
    )
    .await;
    assert_eq!(one["event"]["type"], "risk_alert");
    assert_eq!(one["handlers"][0]["handler"], "RiskAlertHandler");
    assert_eq!(one["deliveries"][0]["status"], "delivered");
    let (st, _) = call("GET", &format!("{}/api/v1/events/nope", s.url), None).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn two_nodes_over_nats_see_an_endpoint_created_on_the_other_within_a_second() {
    let nats = common::nats::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [("PM_NATS_URL", nats.url.as_str())];
    let a = Server::start(&dir.path().join("a"), &env);
    let b = Server::start(&dir.path().join("b"), &env);
    let rx = TestReceiver::start().await;
    let ep = create(
        &a,
        json!({"url": rx.url("/n"), "event_types": ["clustered"]}),
    )
    .await;
    let url = format!("{}/api/v1/endpoints/{}", b.url, ep["id"].as_str().unwrap());
    until(&url, Duration::from_secs(1), "node B sees it", |st, _| {
        st == 200
    })
    .await;
    publish(&b, "clustered", json!({})).await;
    let got = rx.wait_for("/n", 1, T).await;
    assert_verifies(&got[0], ep["secret"].as_str().unwrap());
    // A change on B reaches A.
    let (st, _) = call("PATCH", &url, Some(json!({"description": "from B"}))).await;
    assert_eq!(st, 200);
    let on_a = format!("{}/api/v1/endpoints/{}", a.url, ep["id"].as_str().unwrap());
    until(
        &on_a,
        Duration::from_secs(1),
        "node A sees the change",
        |_, v| v["description"] == "from B",
    )
    .await;
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_names_every_api_route() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let (st, doc) = call("GET", &format!("{}/openapi.json", s.url), None).await;
    assert_eq!(st, 200);
    let (ok, out) = py("openapi_validate.py", &[], doc.to_string().as_bytes());
    assert!(ok, "openapi-spec-validator: {out}");
    for (path, method) in [
        ("/api/v1/endpoints", "get"),
        ("/api/v1/endpoints", "post"),
        ("/api/v1/endpoints/{id}", "patch"),
        ("/api/v1/endpoints/{id}", "delete"),
        ("/api/v1/endpoints/{id}/secret", "get"),
        ("/api/v1/endpoints/{id}/secret/rotate", "post"),
        ("/api/v1/endpoints/{id}/test", "post"),
        ("/api/v1/endpoints/{id}/recover", "post"),
        ("/api/v1/deliveries", "get"),
        ("/api/v1/deliveries/{id}", "get"),
        ("/api/v1/deliveries/{id}/retry", "post"),
        ("/api/v1/events", "get"),
        ("/api/v1/events/{id}", "get"),
        ("/api/v1/stream", "get"),
        ("/api/v1/risks", "get"),
        ("/api/v1/risks/{alert_id}/resolve", "post"),
        ("/api/v1/session", "get"),
        ("/api/v1/session", "post"),
        ("/api/v1/session", "delete"),
        ("/", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
}

#[tokio::test]
async fn endpoints_may_not_reach_internal_addresses_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[("PM_ENDPOINT_ALLOW_NETS", "")]);
    let u = format!("{}/api/v1/endpoints", s.url);
    for (url, class) in [
        ("http://127.0.0.1:9/x", "loopback"),
        ("http://[::1]:9/x", "loopback"),
        ("http://[::ffff:127.0.0.1]/x", "loopback"),
        ("http://10.0.0.1/x", "private"),
        ("http://172.16.5.4/x", "private"),
        ("http://192.168.0.10/x", "private"),
        ("http://[fd00::1]/x", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/x", "link-local"),
        ("http://100.64.0.1/x", "shared"),
        ("http://0.0.0.0/x", "unspecified"),
        ("http://224.0.0.1/x", "multicast"),
        ("http://255.255.255.255/x", "broadcast"),
        ("http://localhost:9/x", "loopback"),
    ] {
        let (st, v) = call("POST", &u, Some(json!({"url": url}))).await;
        assert_eq!(st, 400, "{url} → {v}");
        let m = v["message"].as_str().unwrap();
        assert!(
            m.starts_with("url: ") && m.contains(class) && m.contains("PM_ENDPOINT_ALLOW_NETS"),
            "{url} → {m}"
        );
    }
    // A change of URL is checked too.
    let (st, ep) = call("POST", &u, Some(json!({"url": "http://93.184.216.34/x"}))).await;
    assert_eq!(st, 201, "{ep}");
    let (st, v) = call(
        "PATCH",
        &format!("{u}/{}", ep["id"].as_str().unwrap()),
        Some(json!({"url": "http://10.1.1.1/"})),
    )
    .await;
    assert_eq!(st, 400, "{v}");
}

#[tokio::test]
async fn the_guard_holds_at_connect_time_for_names_and_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let port = rx.addr.port();
    // Made while loopback was allowed…
    let s = Server::start(
        dir.path(),
        &[("PM_ENDPOINT_ALLOW_NETS", "127.0.0.0/8,::1/128")],
    );
    let by_name = create(
        &s,
        json!({"url": format!("http://localhost:{port}/name"), "event_types": ["probe"], "max_retries": 0}),
    )
    .await;
    let by_ip = create(
        &s,
        json!({"url": rx.url("/ip"), "event_types": ["probe"], "max_retries": 0}),
    )
    .await;
    drop(s);
    // …and delivered by a server that no longer allows it: both are refused when
    // connecting, and nothing reaches the receiver.
    let s = Server::start(dir.path(), &[("PM_ENDPOINT_ALLOW_NETS", "")]);
    publish(&s, "probe", json!({})).await;
    for ep in [&by_name, &by_ip] {
        let v = until(
            &format!(
                "{}/api/v1/deliveries?status=dead&endpoint_id={}",
                s.url,
                ep["id"].as_str().unwrap()
            ),
            T,
            "a refused delivery",
            |_, l| l["data"].as_array().is_some_and(|d| !d.is_empty()),
        )
        .await;
        let err = v["data"][0]["last_error"].as_str().unwrap();
        assert!(
            err.contains("loopback") && err.contains("PM_ENDPOINT_ALLOW_NETS"),
            "{err}"
        );
    }
    assert!(rx.requests("/name").is_empty() && rx.requests("/ip").is_empty());
}

#[tokio::test]
async fn a_rate_limit_spreads_an_endpoints_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    create(
        &s,
        json!({"url": rx.url("/slow"), "event_types": ["burst"], "rate_limit_per_s": 5}),
    )
    .await;
    create(
        &s,
        json!({"url": rx.url("/free"), "event_types": ["burst"]}),
    )
    .await;
    for i in 0..20 {
        publish(&s, "burst", json!({"i": i})).await;
    }
    let free = rx.wait_for("/free", 20, T).await;
    let got = rx.wait_for("/slow", 20, T).await;
    let span = got[19].at - got[0].at;
    assert!(span >= Duration::from_secs(3), "20 at 5/s took {span:?}");
    let free_span = free[19].at - free[0].at;
    assert!(
        free_span < span,
        "the other endpoint is not held: {free_span:?}"
    );
}

#[tokio::test]
async fn a_429_pauses_the_whole_endpoint_for_its_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    rx.script("/busy", vec![Reply::status(429).header("Retry-After", "2")]);
    create(&s, json!({"url": rx.url("/busy"), "event_types": ["busy"]})).await;
    publish(&s, "busy", json!({"n": 0})).await;
    let first = rx.wait_for("/busy", 1, T).await[0].clone();
    // Deliveries queued after the 429 wait for the end of the pause too.
    publish(&s, "busy", json!({"n": 1})).await;
    publish(&s, "busy", json!({"n": 2})).await;
    let got = rx.wait_for("/busy", 4, T).await;
    for r in &got[1..] {
        let after = r.at - first.at;
        assert!(
            after >= Duration::from_millis(1900),
            "request {} came {after:?} after the 429",
            r.json()["data"]["n"]
        );
    }
    let mut ns: Vec<u64> = got[1..]
        .iter()
        .map(|r| r.json()["data"]["n"].as_u64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, vec![0, 1, 2], "the first one again, and the two others");
}

#[tokio::test]
async fn a_410_disables_the_endpoint_at_once_announces_it_and_keeps_the_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    rx.script("/gone", vec![Reply::status(410)]);
    let ep = create(&s, json!({"url": rx.url("/gone"), "event_types": ["work"]})).await;
    let id = ep["id"].as_str().unwrap();
    // Someone is told: an endpoint that takes the announcement.
    create(
        &s,
        json!({"url": rx.url("/ops"), "event_types": ["endpoint_*"]}),
    )
    .await;
    let event = publish(&s, "work", json!({})).await;
    let url = format!("{}/api/v1/endpoints/{id}", s.url);
    let off = until(&url, T, "disabled", |_, v| v["enabled"] == false).await;
    assert_eq!(off["disabled_reason"], "answered 410 Gone");
    let told = rx.wait_for("/ops", 1, T).await;
    let body = told[0].json();
    assert_eq!(body["event_type"], "endpoint_disabled");
    assert_eq!(body["data"]["endpoint_id"], id);
    // Kept, not dead: it goes out once the endpoint is enabled again.
    let pending = until(
        &format!("{}/api/v1/deliveries?endpoint_id={id}", s.url),
        T,
        "the delivery kept",
        |_, l| l["data"][0]["status"] == "failed",
    )
    .await;
    assert_eq!(pending["data"][0]["event_id"], event);
    let (st, _) = call("PATCH", &url, Some(json!({"enabled": true}))).await;
    assert_eq!(st, 200);
    let got = rx.wait_for("/gone", 2, T).await;
    assert_eq!(got[1].header("webhook-id"), event);
}

#[tokio::test]
async fn the_breaker_opens_after_failures_in_a_row_and_a_probe_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    rx.script("/flaky", (0..5).map(|_| Reply::status(503)).collect());
    let ep = create(
        &s,
        json!({"url": rx.url("/flaky"), "event_types": ["flaky"], "max_retries": 0}),
    )
    .await;
    let url = format!("{}/api/v1/endpoints/{}", s.url, ep["id"].as_str().unwrap());
    for i in 0..5 {
        publish(&s, "flaky", json!({"i": i})).await;
    }
    let failed = rx.wait_for("/flaky", 5, T).await;
    let open = until(&url, T, "the breaker open", |_, v| {
        v["health"]["breaker"] == "open"
    })
    .await;
    assert_eq!(open["health"]["failures_in_a_row"], 5);
    assert_eq!(open["health"]["last_error"], "HTTP 503");
    // While it is open, a new delivery waits for the probe, which goes after the
    // breaker's first wait (2 s) and closes it.
    publish(&s, "flaky", json!({"i": 5})).await;
    let got = rx.wait_for("/flaky", 6, T).await;
    let waited = got[5].at - failed[4].at;
    assert!(
        waited >= Duration::from_millis(1500),
        "the probe came after {waited:?}"
    );
    let closed = until(&url, T, "the breaker closed", |_, v| {
        v["health"]["breaker"] == "closed"
    })
    .await;
    assert_eq!(closed["health"]["failures_in_a_row"], 0);
    assert_eq!(closed["health"]["attempts_1h"], 6);
    assert!(closed["health"]["success_rate_1h"].as_f64().unwrap() > 0.16);
    assert!(closed["health"]["p50_ms"].as_f64().is_some());
    // The CLI shows the figures from the attempt log.
    let (code, out, err) = cli(&s.logs, &["endpoints", "show", ep["id"].as_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("last hour:     6 attempts"), "{out}");
}

#[tokio::test]
async fn an_endpoint_failing_past_the_limit_is_disabled_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            ("PM_ENDPOINT_DISABLE_AFTER", "1s"),
            ("WEBHOOK_BACKOFF_BASE_MS", "200"),
        ],
    );
    let rx = TestReceiver::start().await;
    rx.set_default("/down", Reply::status(503));
    let ep = create(
        &s,
        json!({"url": rx.url("/down"), "event_types": ["job"], "max_retries": 20}),
    )
    .await;
    create(
        &s,
        json!({"url": rx.url("/ops"), "event_types": ["endpoint_disabled"]}),
    )
    .await;
    let id = ep["id"].as_str().unwrap();
    let event = publish(&s, "job", json!({})).await;
    let url = format!("{}/api/v1/endpoints/{id}", s.url);
    let off = until(&url, T, "disabled", |_, v| v["enabled"] == false).await;
    assert!(
        off["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("PM_ENDPOINT_DISABLE_AFTER"),
        "{off}"
    );
    let told = rx.wait_for("/ops", 1, T).await;
    assert_eq!(told[0].json()["data"]["endpoint_id"], id);
    let (_, d) = call(
        "GET",
        &format!("{}/api/v1/deliveries?endpoint_id={id}", s.url),
        None,
    )
    .await;
    assert_eq!(d["data"][0]["status"], "failed", "kept, not dead: {d}");
    rx.set_default("/down", Reply::status(200));
    let (st, _) = call("PATCH", &url, Some(json!({"enabled": true}))).await;
    assert_eq!(st, 200);
    until(
        &format!(
            "{}/api/v1/deliveries?endpoint_id={id}&status=delivered",
            s.url
        ),
        T,
        "delivered once enabled",
        |_, l| l["data"][0]["event_id"] == event.as_str(),
    )
    .await;
}

// Multi-threaded: the receiver answers while this thread waits for the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_backfills_a_new_endpoint_and_does_not_resend_to_one_that_has_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rx = TestReceiver::start().await;
    create(&s, json!({"url": rx.url("/old"), "event_types": ["order"]})).await;
    let event = publish(&s, "order", json!({"n": 1})).await;
    rx.wait_for("/old", 1, T).await;
    create(&s, json!({"url": rx.url("/new"), "event_types": ["order"]})).await;
    let (code, _, err) = cli(&s.logs, &["replay", "--since", "1h", "--type", "order"]);
    assert_eq!(code, 0, "{err}");
    // The report says what was sent: the new endpoint's delivery; the old one's
    // stands and is reported as not sent again.
    assert!(err.contains("webhooks: 1 delivered"), "{err}");
    assert!(err.contains("webhooks: 1 not sent again"), "{err}");
    let got = rx.wait_for("/new", 1, T).await;
    assert_eq!(got[0].header("webhook-id"), event);
    // The endpoint that had it got nothing new: its delivery of the event stands.
    let (_, d) = call(
        "GET",
        &format!("{}/api/v1/deliveries?event_id={event}", s.url),
        None,
    )
    .await;
    assert_eq!(d["data"].as_array().unwrap().len(), 2, "{d}");
    assert_eq!(rx.requests("/old").len(), 1);
}
