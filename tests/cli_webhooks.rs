//! The `pm-events` binary's webhook commands, against a real receiver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Reply, TestReceiver, wait_until};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const SECRET: &str = "cli-test-secret";

fn cmd(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Command {
    let mut c = common::pm_command(dir, args, SECRET);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

async fn run(dir: &Path, args: &[&str], env: &[(&str, String)], stdin: &[u8]) -> Output {
    let mut c = cmd(dir, args, env);
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A command that fails early may exit before it reads its input.
        let _ = child.stdin.take().unwrap().write_all(&stdin);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_then_verify_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let body = br#"{"event_type":"deployment","data":{}}"#;
    let out = run(
        dir.path(),
        &[
            "webhooks",
            "sign",
            "--id",
            "msg_1",
            "--timestamp",
            "1700000000",
        ],
        &[],
        body,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let header = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} missing in {stdout}"))
            .to_string()
    };
    assert_eq!(header("webhook-id"), "msg_1");
    assert_eq!(header("webhook-timestamp"), "1700000000");
    let hex = header("X-Webhook-Signature");
    let standard = header("webhook-signature");

    let ok = run(
        dir.path(),
        &["webhooks", "verify", "--signature", &hex],
        &[],
        body,
    )
    .await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let bad = run(
        dir.path(),
        &["webhooks", "verify", "--signature", &hex],
        &[],
        b"{}",
    )
    .await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("does not match"),
        "{}",
        text(&bad.stderr)
    );

    // Standard Webhooks: valid within the tolerance, expired outside it.
    let args = [
        "webhooks",
        "verify",
        "--signature",
        &standard,
        "--id",
        "msg_1",
        "--timestamp",
        "1700000000",
    ];
    let expired = run(dir.path(), &args, &[], body).await;
    assert_eq!(expired.status.code(), Some(1));
    assert!(
        text(&expired.stderr).contains("tolerance"),
        "{}",
        text(&expired.stderr)
    );
    let mut long = args.to_vec();
    long.extend(["--tolerance", "100000000s"]);
    let ok = run(dir.path(), &long, &[], body).await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));

    // Usage errors: exit 2.
    let no_ts = run(
        dir.path(),
        &["webhooks", "verify", "--signature", &hex, "--id", "x"],
        &[],
        body,
    )
    .await;
    assert_eq!(no_ts.status.code(), Some(2));
    let no_secret = run(
        dir.path(),
        &["webhooks", "sign"],
        &[("WEBHOOK_SIGNATURE_SECRET", String::new())],
        body,
    )
    .await;
    assert_eq!(no_secret.status.code(), Some(2));
    assert!(text(&no_secret.stderr).contains("WEBHOOK_SIGNATURE_SECRET"));
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_waits_for_the_delivery_it_caused() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.script("/deploy", vec![Reply::status(503)]);
    let env = [
        ("PM_WEBHOOK_URL_DEPLOYMENT", rx.url("/deploy")),
        ("WEBHOOK_BACKOFF_BASE_MS", "50".to_string()),
    ];
    let out = run(
        dir.path(),
        &["publish", "deployment", r#"{"service":"api"}"#],
        &env,
        b"",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("webhooks: 1 delivered"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        rx.requests("/deploy").len(),
        2,
        "the retry happened before publish exited"
    );
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(rx.requests("/deploy")[1].json()["event_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_process_leaves_its_delivery_for_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.script("/files", vec![Reply::status(503)]);
    let env = [
        ("PM_WEBHOOK_URL_DEPLOYMENT", rx.url("/files")),
        ("WEBHOOK_BACKOFF_BASE_MS", "60000".to_string()),
    ];
    let mut child = cmd(
        dir.path(),
        &[
            "publish",
            "deployment",
            r#"{"service":"api"}"#,
            "--wait",
            "120s",
        ],
        &env,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    rx.wait_for("/files", 1, Duration::from_secs(20)).await;
    let attempts = dir.path().join("logs/webhooks/webhook_attempts.jsonl");
    wait_until(Duration::from_secs(20), || {
        common::jsonl(&attempts).len() == 1
    })
    .await;
    child.kill().unwrap(); // SIGKILL: no clean shutdown
    child.wait().unwrap();

    let list = run(dir.path(), &["webhooks", "list", "--json"], &[], b"").await;
    let rows: Vec<serde_json::Value> = text(&list.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{}", text(&list.stdout));
    // The attempt's bookkeeping is committed shortly after its log line; a kill
    // in between loses only the count (the attempt is made again).
    let attempt = rows[0]["attempt"].as_u64().unwrap();
    assert!(attempt <= 1, "{attempt}");
    assert_eq!(rows[0]["state"], "pending");

    // The next process resumes it; `webhooks deliver` sends it now rather than in a minute.
    let out = run(
        dir.path(),
        &["webhooks", "deliver", "--wait", "20s"],
        &env,
        b"",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(rx.requests("/files").len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_reported_and_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.script("/deploy", vec![Reply::status(422)]);
    let env = [("PM_WEBHOOK_URL_DEPLOYMENT", rx.url("/deploy"))];
    let out = run(dir.path(), &["publish", "deployment", "{}"], &env, b"").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("1 failed for good"),
        "{}",
        text(&out.stderr)
    );
    let dead = run(
        dir.path(),
        &["webhooks", "list", "--dead", "--json"],
        &[],
        b"",
    )
    .await;
    assert_eq!(text(&dead.stdout).lines().count(), 1);

    let usage = run(dir.path(), &["webhooks", "redeliver"], &[], b"").await;
    assert_eq!(
        usage.status.code(),
        Some(2),
        "--event-id or --all is required"
    );
    let out = run(dir.path(), &["webhooks", "redeliver", "--all"], &env, b"").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(rx.requests("/deploy").len(), 2);
    let dead = run(
        dir.path(),
        &["webhooks", "list", "--dead", "--json"],
        &[],
        b"",
    )
    .await;
    assert_eq!(text(&dead.stdout).lines().count(), 0);
}
