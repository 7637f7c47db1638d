//! The dashboard page in a real headless Chromium, against the built binary's
//! `serve` and real HTTP receivers: it loads with no console error and no request
//! elsewhere, shows events live with their deliveries, resolves a risk alert,
//! retries a dead delivery, signs in with the token, and fits a phone.
//!
//! Screenshots of each view are saved under `target/screenshots/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::api::{call, create, publish, until};
use common::browser::{Browser, PHONE_WIDTH};
use common::server::{Server, client};
use common::{Reply, TestReceiver, jsonl};
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn risk(alert_id: &str, severity: &str) -> Value {
    json!({
        "alert_id": alert_id, "risk_type": "security", "severity": severity,
        "title": "Database credentials found in a public repository", "risk_score": 0.93,
        "description": "A scan found the production database password in a commit.",
        "affected_resources": ["db/customers-primary", "repo/acme/billing-service/config/production.yaml"],
        "mitigation_steps": ["rotate_credentials", "notify_security_team"],
    })
}

/// The dead deliveries of `endpoint` once there are `n`.
async fn dead_deliveries(s: &Server, endpoint: &str, n: usize) -> Vec<Value> {
    let url = format!(
        "{}/api/v1/deliveries?status=dead&endpoint_id={endpoint}",
        s.url
    );
    let v = until(&url, T, "dead deliveries", |st, v| {
        st == 200 && v["data"].as_array().is_some_and(|d| d.len() >= n)
    })
    .await;
    v["data"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_loads_from_the_server_alone_and_shows_new_events_live_with_their_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let s = Server::start(dir.path(), &[]);
    create(
        &s,
        json!({"url": rx.url("/deploys"), "event_types": ["deploy_finished"], "description": "release notes bot"}),
    )
    .await;
    publish(
        &s,
        "backup_finished",
        json!({"volume": "home", "bytes": 7_340_032}),
    )
    .await;

    let b = Browser::start(false).await;
    b.goto(&s.url).await;
    b.wait_text("#live", "live").await;
    // The event from before the page opened is listed from the log.
    b.wait_for("#events-list .row").await;

    // Published after the page opened: it appears without a reload.
    let id = publish(
        &s,
        "deploy_finished",
        json!({"service": "billing", "version": "2.4.1"}),
    )
    .await;
    let row = format!("[data-event-id=\"{id}\"]");
    b.wait_for(&row).await;
    b.wait_text(&row, "deploy_finished").await;
    rx.wait_for("/deploys", 1, T).await;

    // Filtering by type keeps it and hides the others; by text too.
    let types =
        "return [...document.querySelectorAll('#events-list .row .type')].map(e => e.textContent);";
    b.wait_js(types, json!(["deploy_finished", "backup_finished"]))
        .await;
    b.click("#event-type option[value=\"deploy_finished\"]")
        .await;
    b.wait_js(types, json!(["deploy_finished"])).await;
    b.click("#event-type option[value=\"\"]").await;
    b.wait_js(types, json!(["deploy_finished", "backup_finished"]))
        .await;
    b.wait_for("#event-text")
        .await
        .send_keys("2.4.1")
        .await
        .unwrap();
    let ids =
        "return [...document.querySelectorAll('#events-list .row')].map(e => e.dataset.eventId);";
    b.wait_js(ids, json!([id])).await;
    b.screenshot("events").await;

    // Its detail: the data, the handlers' outcomes and the delivery with its attempts.
    b.click(&row).await;
    b.wait_for("#detail[open]").await;
    b.wait_text("#detail-body", "2.4.1").await;
    b.wait_for("#detail-deliveries [data-status=\"delivered\"]")
        .await;
    b.click("#detail-deliveries [data-status=\"delivered\"] button")
        .await;
    b.wait_text("#detail-deliveries .attempts", "HTTP 200")
        .await;
    b.screenshot("event-detail").await;
    b.click("#detail-close").await;

    // The charts are drawn by the page as SVG.
    let bars = b
        .js("return document.querySelectorAll('#chart-events rect').length;")
        .await;
    assert!(bars.as_u64().unwrap() >= 1, "events chart: {bars}");
    b.wait_js(
        "return document.getElementById('chart-deliveries-desc').textContent;",
        json!("1 delivered, 0 pending, 0 failed, 0 dead"),
    )
    .await;

    // Nothing but the server was asked for anything, and nothing went wrong.
    for url in b.requests().await {
        assert!(
            url.starts_with(&s.url),
            "a request outside the server: {url}"
        );
    }
    assert_eq!(b.console_errors().await, Vec::<String>::new());

    // Keyboard and labels: the first Tab reaches the skip link, the next the
    // first view; every control has a label and every button a name.
    let unlabeled = b.js("return [...document.querySelectorAll('input, select, textarea')].filter(e => !e.labels || e.labels.length === 0).map(e => e.id);").await;
    assert_eq!(unlabeled, json!([]), "controls without a label");
    let unnamed = b.js("return [...document.querySelectorAll('button, a')].filter(e => !e.textContent.trim()).map(e => e.outerHTML);").await;
    assert_eq!(unnamed, json!([]), "buttons or links without a name");
    b.goto(&s.url).await;
    b.wait_text("#live", "live").await;
    b.press_tab().await;
    let first = b
        .js("return document.activeElement.textContent.trim();")
        .await;
    assert_eq!(first, json!("Skip to content"));
    b.press_tab().await;
    let second = b
        .js("return document.activeElement.textContent.trim();")
        .await;
    assert_eq!(second, json!("Events"));

    // Not a figure to assert, one to report: the page on a CPU six times slower.
    b.throttle_cpu(6.0).await;
    b.goto(&s.url).await;
    b.wait_for("#events-list .row").await;
    let shown_at = b.js("return performance.now();").await;
    let ready = b
        .js("return performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd;")
        .await;
    let size = b
        .js("return ['/', '/ui/app.css', '/ui/app.js'].map(p => performance.getEntriesByName(location.origin + p)[0]).reduce((n, e) => n + e.encodedBodySize, 0);")
        .await;
    eprintln!(
        "dashboard at 6x CPU slowdown: {size} bytes of page, DOMContentLoaded at {ready} ms, events listed by {shown_at} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_alert_appears_in_risks_and_resolving_it_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    publish(&s, "risk_alert", risk("R-low", "low")).await;
    let b = Browser::start(false).await;
    b.goto(&format!("{}/#risks", s.url)).await;
    b.wait_for("[data-alert-id=\"R-low\"]").await;

    // Raised while the page is open: it appears, under Critical, with its
    // score, resources and mitigation results.
    publish(&s, "risk_alert", risk("R-7", "critical")).await;
    let card = "[data-alert-id=\"R-7\"]";
    b.wait_for(card).await;
    b.wait_text("#risk-count", "2").await;
    let group = b.js("return document.querySelector('[data-alert-id=\"R-7\"]').closest('section').getAttribute('aria-label');").await;
    assert_eq!(group, json!("critical alerts"));
    for text in [
        "0.93",
        "db/customers-primary",
        "rotate_credentials",
        "skipped",
    ] {
        b.wait_text(card, text).await;
    }
    b.screenshot("risks").await;

    b.click("[data-resolve=\"R-7\"]").await;
    b.wait_gone(card).await;
    b.wait_text("#risk-count", "1").await;
    assert!(b.shown("[data-alert-id=\"R-low\"]").await);

    // The server agrees, and the resolution went through the bus and its log.
    let (st, d) = call("GET", &format!("{}/api/v1/risks", s.url), None).await;
    assert_eq!(st, 200);
    let open: Vec<&str> = d["open_alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(open, ["R-low"]);
    assert_eq!(d["alerts_resolved"], 1);
    let lines = jsonl(&s.logs.join("risk_alerts/risk_alerts.jsonl"));
    let resolved: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event_type"] == "risk_resolved")
        .collect();
    assert_eq!(resolved.len(), 1, "{lines:?}");
    assert_eq!(resolved[0]["alert_id"], "R-7");
    assert_eq!(resolved[0]["resolved_by"], "dashboard");
    assert_eq!(resolved[0]["was_open"], true);
    assert_eq!(b.console_errors().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_is_retried_from_the_page_and_the_receiver_gets_the_second_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.script("/flaky", vec![Reply::status(500)]);
    let s = Server::start(dir.path(), &[]);
    let ep = create(
        &s,
        json!({"url": rx.url("/flaky"), "event_types": ["invoice_paid"], "max_retries": 0}),
    )
    .await;
    let ep_id = ep["id"].as_str().unwrap();
    publish(
        &s,
        "invoice_paid",
        json!({"invoice": "INV-1042", "amount": 120}),
    )
    .await;
    let dead = dead_deliveries(&s, ep_id, 1).await;
    let delivery = dead[0]["id"].as_str().unwrap().to_string();
    assert_eq!(rx.requests("/flaky").len(), 1);

    let b = Browser::start(false).await;
    b.goto(&format!("{}/#deliveries", s.url)).await;
    let retry = format!("[data-retry=\"{delivery}\"]");
    b.wait_for(&retry).await;
    b.wait_text("#dead-count", "1").await;
    b.screenshot("deliveries").await;
    b.click(&retry).await;

    let got = rx.wait_for("/flaky", 2, T).await;
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].header("webhook-id"),
        got[1].header("webhook-id"),
        "the same delivery, sent again"
    );
    b.wait_for(&format!(
        "[data-delivery-id=\"{delivery}\"][data-status=\"delivered\"]"
    ))
    .await;

    // The endpoint's health shows the failure and the success.
    b.goto(&format!("{}/#endpoints", s.url)).await;
    let card = format!("[data-endpoint-id=\"{ep_id}\"]");
    b.wait_text(&card, "50.0 % of 2").await;
    b.wait_text(&card, "HTTP 500").await;
    b.screenshot("endpoints").await;

    // Recover: the endpoint's dead deliveries of the last hour go out again.
    rx.script("/flaky", vec![Reply::status(500)]);
    publish(
        &s,
        "invoice_paid",
        json!({"invoice": "INV-1043", "amount": 80}),
    )
    .await;
    dead_deliveries(&s, ep_id, 1).await;
    b.goto(&format!("{}/#deliveries", s.url)).await;
    // The only endpoint is the one chosen.
    b.wait_js(
        "return document.getElementById('recover-endpoint').value;",
        json!(ep_id),
    )
    .await;
    let since = b.wait_for("#recover-since").await;
    since.clear().await.unwrap();
    since.send_keys("1h").await.unwrap();
    b.click("#recover-form button[type=submit]").await;
    b.wait_text("#toast", "1 delivery sent again").await;
    rx.wait_for("/flaky", 4, T).await;
    assert_eq!(b.console_errors().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_added_tested_disabled_and_rotated_from_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let s = Server::start(dir.path(), &[]);
    let b = Browser::start(false).await;
    b.goto(&format!("{}/#endpoints", s.url)).await;
    b.click("#endpoint-add summary").await;
    b.wait_for("#ep-url")
        .await
        .send_keys(&rx.url("/ops"))
        .await
        .unwrap();
    let types = b.wait_for("#ep-types").await;
    types.clear().await.unwrap();
    types.send_keys("backup_*, disk_full").await.unwrap();
    b.wait_for("#ep-description")
        .await
        .send_keys("ops pager")
        .await
        .unwrap();
    b.click("#endpoint-form button[type=submit]").await;
    b.wait_text("#secret-value", "whsec_").await;
    let secret = b.wait_for("#secret-value").await.text().await.unwrap();

    let (_, list) = call("GET", &format!("{}/api/v1/endpoints", s.url), None).await;
    let ep = &list["data"][0];
    let id = ep["id"].as_str().unwrap().to_string();
    assert_eq!(ep["event_types"], json!(["backup_*", "disk_full"]));
    assert_eq!(ep["description"], "ops pager");
    let (_, sec) = call(
        "GET",
        &format!("{}/api/v1/endpoints/{id}/secret", s.url),
        None,
    )
    .await;
    assert_eq!(sec["secret"], json!(secret), "{sec} {list}");
    b.click("#secret-close").await;

    // Send test: a signed endpoint_test reaches the receiver.
    let card = format!("[data-endpoint-id=\"{id}\"]");
    b.click(&format!("{card} .actions button:nth-child(2)"))
        .await;
    let got = rx.wait_for("/ops", 1, T).await;
    assert_eq!(got[0].json()["event_type"], "endpoint_test");

    // Disable, then enable.
    b.click(&format!("{card} .actions button:first-child"))
        .await;
    b.wait_text(&card, "disabled").await;
    let (_, e) = call("GET", &format!("{}/api/v1/endpoints/{id}", s.url), None).await;
    assert_eq!(e["enabled"], false);
    b.click(&format!("{card} .actions button:first-child"))
        .await;
    b.wait_text(&card, "enabled").await;

    // Rotate asks for a second click, then shows the new secret.
    b.click(&format!("{card} .actions button:nth-child(3)"))
        .await;
    b.wait_text(&card, "Click again to rotate").await;
    b.click(&format!("{card} .actions button:nth-child(3)"))
        .await;
    b.wait_text("#secret-title", "New secret").await;
    let rotated = b.wait_for("#secret-value").await.text().await.unwrap();
    assert!(rotated.starts_with("whsec_") && rotated != secret);
    let (_, sec) = call(
        "GET",
        &format!("{}/api/v1/endpoints/{id}/secret", s.url),
        None,
    )
    .await;
    assert_eq!(sec["secret"], json!(rotated));

    // A refused URL is explained next to the form.
    b.wait_for("#ep-url")
        .await
        .send_keys("http://169.254.169.254/latest")
        .await
        .unwrap();
    b.click("#endpoint-form button[type=submit]").await;
    b.wait_text("#endpoint-error", "169.254.169.254").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_signs_in_through_a_form_and_an_http_only_cookie() {
    const TOKEN: &str = "dash-token-5f0c2a9e7b";
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_capturing(dir.path(), &[("PM_API_TOKEN", TOKEN)]);
    let b = Browser::start(false).await;
    b.goto(&s.url).await;
    let form_shown = "return !document.getElementById('view-signin').hidden;";
    b.wait_js(form_shown, json!(true)).await;
    assert!(b.shown("#token").await);
    assert!(
        !b.shown("#nav").await,
        "nothing but the form before signing in"
    );
    b.screenshot("sign-in").await;

    b.wait_for("#token")
        .await
        .send_keys("not-it")
        .await
        .unwrap();
    b.click("#signin-form button[type=submit]").await;
    b.wait_text("#signin-error", "not the token").await;

    let field = b.wait_for("#token").await;
    field.clear().await.unwrap();
    field.send_keys(TOKEN).await.unwrap();
    b.click("#signin-form button[type=submit]").await;
    b.wait_text("#live", "live").await;
    assert!(b.shown("#nav").await);
    assert_eq!(
        b.wait_for("#token").await.prop("value").await.unwrap(),
        Some(String::new())
    );

    // The cookie is HttpOnly and SameSite=Strict, and the token is in no URL.
    let cookies = b.client.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|c| c.name() == "pm_session")
        .expect("a pm_session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");
    assert!(!session.value().contains(TOKEN));
    assert_eq!(
        b.js("return document.cookie;").await,
        json!(""),
        "script cannot read it"
    );
    for url in b.requests().await {
        assert!(!url.contains(TOKEN), "{url}");
    }

    // The live stream is open on the cookie alone: an event shows up.
    let r = client()
        .post(format!("{}/events", s.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(json!({"type": "note_added", "data": {"text": "signed in"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let answer: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let id = answer["event_id"].as_str().unwrap().to_string();
    b.wait_for(&format!("[data-event-id=\"{id}\"]")).await;

    // The cookie is what the API accepts; without it, or a made-up one, 401.
    let cookie = format!("pm_session={}", session.value());
    let with = client()
        .get(format!("{}/api/v1/events", s.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
    for bad in [
        "".to_string(),
        "pm_session=99999999999.00".to_string(),
        cookie.replace('.', ".0"),
    ] {
        let r = client()
            .get(format!("{}/api/v1/events", s.url))
            .header("cookie", bad.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{bad}");
    }

    // Signing out ends it in the browser.
    b.click("#sign-out").await;
    b.wait_js(form_shown, json!(true)).await;
    assert!(b.shown("#token").await);
    assert!(!b.shown("#nav").await);
    drop(b);
    let stderr = s.stderr();
    assert!(!stderr.contains(TOKEN), "the token in the server's log");
    assert!(stderr.contains("wrong token"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_right_to_left_override_in_user_text_stays_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let mut alert = risk("R-bidi", "high");
    alert["title"] = json!("\u{202E}reversed title");
    publish(&s, "risk_alert", alert).await;
    let b = Browser::start(false).await;
    b.goto(&format!("{}/#risks", s.url)).await;
    b.wait_for("[data-alert-id=\"R-bidi\"]").await;
    let bidi = b
        .js("const t = [...document.querySelectorAll('[data-alert-id=\"R-bidi\"] strong')].find(e => e.textContent.includes('reversed title')); return t ? getComputedStyle(t).unicodeBidi : 'missing';")
        .await;
    assert_eq!(bidi, json!("isolate"));
    b.goto(&s.url).await;
    b.wait_for("#events-list .row").await;
    let isolated = b
        .js("return [...document.querySelectorAll('#events-list .row .what')].some(e => e.textContent.includes('\\u2068\\u202Ereversed title\\u2069'));")
        .await;
    assert_eq!(isolated, json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_fits_a_390_px_phone_without_horizontal_scroll() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let down = "/down/with/a/rather/long/path/that/does/not/break/lines/easily";
    rx.set_default(down, Reply::status(503));
    let s = Server::start(dir.path(), &[]);
    let ep = create(
        &s,
        json!({"url": rx.url(down), "max_retries": 0,
               "description": "a receiver that is down"}),
    )
    .await;
    publish(&s, "risk_alert", risk("R-phone", "high")).await;
    let id = publish(
        &s,
        "build_finished",
        json!({"artifact": "s3://builds/acme-billing-service/2026-12-01/build-000000000000000000000000000000000042.tar.gz"}),
    )
    .await;
    dead_deliveries(&s, ep["id"].as_str().unwrap(), 2).await;

    let b = Browser::start(true).await;
    for (view, ready) in [
        ("events", format!("[data-event-id=\"{id}\"]")),
        ("risks", "[data-alert-id=\"R-phone\"]".to_string()),
        ("endpoints", "[data-endpoint-id]".to_string()),
        ("deliveries", "[data-retry]".to_string()),
    ] {
        b.goto(&format!("{}/#{view}", s.url)).await;
        b.wait_for(&ready).await;
        assert_eq!(b.js("return window.innerWidth;").await, json!(PHONE_WIDTH));
        assert_eq!(
            b.overflow_x().await,
            0,
            "{view} scrolls sideways at {PHONE_WIDTH} px"
        );
        b.screenshot(&format!("phone-{view}")).await;
    }
    b.goto(&s.url).await;
    b.click(&format!("[data-event-id=\"{id}\"]")).await;
    b.wait_for("#detail[open]").await;
    b.wait_text("#detail-body", "build-0000").await;
    assert_eq!(b.overflow_x().await, 0, "the event detail scrolls sideways");
    b.screenshot("phone-event-detail").await;
    assert_eq!(b.console_errors().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_published_by_another_process_is_listed_and_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    // The CLI publishes and handles in its own process, on the same log directory.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pm-events"))
        .args([
            "publish",
            "risk_alert",
            &risk("R-cli", "critical").to_string(),
        ])
        .env("PM_LOG_DIR", &s.logs)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let risks = format!("{}/api/v1/risks", s.url);
    until(&risks, T, "the CLI's alert on the dashboard", |st, d| {
        st == 200 && d["open_alerts"][0]["alert_id"] == "R-cli"
    })
    .await;
    let (st, r) = call(
        "POST",
        &format!("{risks}/R-cli/resolve"),
        Some(json!({"note": "rotated", "resolved_by": "alice"})),
    )
    .await;
    assert_eq!((st, &r["resolved"]), (200, &json!(true)), "{r}");
    let (_, d) = call("GET", &risks, None).await;
    assert_eq!(d["open_alerts"], json!([]));
    assert_eq!(d["alerts_resolved"], 1);
    // The resolution is an event like any other: in the log, with its note.
    let (_, e) = call(
        "GET",
        &format!(
            "{}/api/v1/events/{}",
            s.url,
            r["event_id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(e["event"]["type"], "risk_resolved");
    assert_eq!(e["event"]["data"]["note"], "rotated");
    assert_eq!(e["event"]["data"]["resolved_by"], "alice");
    assert_eq!(e["handlers"][0]["line"]["was_open"], true);
    // And the file, once the server stops, agrees.
    assert!(s.terminate().success());
    let file: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("logs/risk_alerts/dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(file["open_alerts"], json!([]));
    assert_eq!(file["alerts_resolved"], 1);
}

#[tokio::test]
async fn the_risk_and_session_routes_refuse_bad_input_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    publish(&s, "risk_alert", risk("R-1", "medium")).await;
    let resolve = format!("{}/api/v1/risks/R-1/resolve", s.url);
    until(
        &format!("{}/api/v1/risks", s.url),
        T,
        "the alert",
        |_, d| d["open_alerts"][0]["alert_id"] == "R-1",
    )
    .await;
    for (body, says) in [
        (json!({"note": 5}), "note: expected a string"),
        (json!({"reason": "x"}), "reason: unknown field"),
        (
            json!({"note": "x".repeat(5000)}),
            "note: longer than 4096 bytes",
        ),
        (json!([1]), "expected a JSON object"),
    ] {
        let (st, v) = call("POST", &resolve, Some(body)).await;
        assert_eq!(st, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    }
    let r = client()
        .post(&resolve)
        .header("content-type", "application/json")
        .body(r#"{"note":"a","note":"b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "duplicate keys");
    let (st, v) = call(
        "POST",
        &format!("{}/api/v1/risks/R-404/resolve", s.url),
        None,
    )
    .await;
    assert_eq!(st, 404, "{v}");
    assert!(v["message"].as_str().unwrap().contains("R-404"));
    let (st, v) = call("GET", &format!("{}/api/v1/risks?open=1", s.url), None).await;
    assert_eq!(st, 400, "{v}");

    // A risk_resolved from outside is checked like the built-in types.
    let (st, v) = call(
        "POST",
        &format!("{}/events", s.url),
        Some(json!({"type": "risk_resolved", "data": {"note": "no id"}})),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("data.alert_id"),
        "{v}"
    );
    let (st, v) = call(
        "POST",
        &format!("{}/events", s.url),
        Some(json!({"type": "risk_resolved", "data": {"alert_id": "R-1", "resolved_at": "yesterday"}})),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("data.resolved_at"),
        "{v}"
    );

    // Without a token there is nothing to sign in to; the form's checks still hold.
    let session = format!("{}/api/v1/session", s.url);
    let (st, v) = call("GET", &session, None).await;
    assert_eq!(
        (st, v),
        (200, json!({"token_required": false, "signed_in": true}))
    );
    let (st, v) = call("POST", &session, Some(json!({"token": "x"}))).await;
    assert_eq!(st, 409, "{v}");
    for (body, says) in [
        (json!({}), "token: missing"),
        (json!({"token": 1}), "token: expected a string"),
        (json!({"token": "x", "user": "y"}), "user: unknown field"),
    ] {
        let (st, v) = call("POST", &session, Some(body)).await;
        assert_eq!(st, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    }

    // The page and its assets come with a policy that allows this server only.
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = client()
            .get(format!("{}{path}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sites_page_cannot_change_anything_through_a_visitors_browser() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let endpoints = format!("{}/api/v1/endpoints", s.url);

    // A page of another origin posts to the API as a form or a fetch would
    // (text/plain, no preflight), in a real browser.
    let evil = TestReceiver::start().await;
    let script = format!(
        r#"<!doctype html><title>loading</title><script>
        fetch("{endpoints}", {{method: "POST", mode: "no-cors", body: JSON.stringify({{url: "http://127.0.0.1:9/stolen"}})}})
          .then(() => {{ document.title = "sent"; }}, () => {{ document.title = "sent"; }});
        </script>"#
    );
    evil.set_default(
        "/page",
        Reply::status(200)
            .header("content-type", "text/html")
            .body(&script),
    );
    let b = Browser::start(false).await;
    b.goto(&evil.url("/page")).await;
    b.wait_js("return document.title;", json!("sent")).await;
    let (_, list) = call("GET", &endpoints, None).await;
    assert_eq!(list["data"], json!([]), "an endpoint made by another site");

    // The same refusals, spelled out.
    let r = client()
        .post(&endpoints)
        .header("origin", evil.url(""))
        .header("content-type", "application/json")
        .body(json!({"url": "http://127.0.0.1:9/stolen"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("cross_origin"));
    // DNS rebinding: a name that is not loopback, while no token is set.
    let r = client()
        .get(format!("{}/api/v1/events", s.url))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("loopback names only"));
    // The page's own requests and programs are not affected.
    let r = client()
        .post(&endpoints)
        .header("origin", &s.url)
        .header("content-type", "application/json")
        .body(json!({"url": "http://127.0.0.1:9/own"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}
