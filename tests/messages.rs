//! What a user sees when something is off: each message names the problem and
//! what to do, with the exit code of its kind (2 usage, 1 runtime). Run against
//! the built binary in temp directories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Reply, TestReceiver};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const SECRET: &str = "messages-test-secret";

/// Runs the binary in `dir` with `args` and `env` (a signing secret set, stdin empty).
fn pm(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pm-events"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("PM_LOG_DIR")
        .env("WEBHOOK_SIGNATURE_SECRET", SECRET)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn the_demo_script_shows_the_build() {
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo_events.sh"),
    )
    .unwrap();
    let build = script
        .lines()
        .find(|l| l.starts_with("cargo build"))
        .unwrap();
    assert!(!build.contains("--quiet"), "{build}");
}

#[test]
fn publish_url_without_a_scheme_is_a_usage_error_saying_what_is_expected() {
    let dir = tempfile::tempdir().unwrap();
    let o = pm(
        dir.path(),
        &["publish", "x", "{}", "--url", "127.0.0.1:8787"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("http://") && !e.contains("builder error"), "{e}");
}

#[test]
fn verifying_a_v1_signature_asks_for_its_headers() {
    let dir = tempfile::tempdir().unwrap();
    let o = pm(
        dir.path(),
        &["webhooks", "verify", "--signature", "v1,abc"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("--id") && e.contains("--timestamp"), "{e}");
    assert!(!e.contains("malformed X-Webhook-Signature"), "{e}");
}

#[test]
fn serve_binds_a_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pm-events"))
        .args(["serve", "--bind", "localhost:0"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("listening on http://127.0.0.1:"), "{line}");
    let o = pm(dir.path(), &["serve", "--bind", "nowhere"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("localhost:8787"), "{}", stderr(&o));
}

#[test]
fn reading_a_log_directory_without_a_log_says_so() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--log-dir", "nope", "tail"][..],
        &["--log-dir", "nope", "stats"],
        &["--log-dir", "nope", "replay", "--since", "1h"],
    ] {
        let o = pm(dir.path(), args, &[]);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let e = stderr(&o);
        assert!(e.contains("no event log in nope/events"), "{args:?}: {e}");
    }
}

#[test]
fn replay_from_the_future_says_so_and_not_something_about_until() {
    let dir = tempfile::tempdir().unwrap();
    let o = pm(
        dir.path(),
        &["replay", "--since", "2030-01-01", "--dry-run"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("--since is in the future") && !e.contains("--until"),
        "{e}"
    );
}

#[test]
fn a_route_without_a_secret_is_found_at_start_and_a_lower_case_route_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_pm-events"))
        .args(["publish", "deployment", "{}"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("WEBHOOK_SIGNATURE_SECRET")
        .env("PM_WEBHOOK_URL_DEPLOYMENT", "http://127.0.0.1:9/x")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("PM_WEBHOOK_URL_DEPLOYMENT") && e.contains("WEBHOOK_SIGNATURE_SECRET"),
        "{e}"
    );
    assert!(
        !dir.path().join("logs/events").exists(),
        "nothing was published"
    );

    let o = pm(
        dir.path(),
        &["publish", "deployment", "{}"],
        &[("PM_WEBHOOK_URL_deployment", "http://127.0.0.1:9/x")],
    );
    assert!(o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("PM_WEBHOOK_URL_deployment") && e.contains("PM_WEBHOOK_URL_DEPLOYMENT"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dead_letter_hint_names_the_log_directory_in_use() {
    let rx = TestReceiver::start().await;
    rx.set_default("/gone", Reply::status(400));
    let dir = tempfile::tempdir().unwrap();
    let url = rx.url("/gone");
    let d = dir.path().to_path_buf();
    let o = tokio::task::spawn_blocking(move || {
        pm(
            &d,
            &["--log-dir", "elsewhere", "publish", "deployment", "{}"],
            &[("PM_WEBHOOK_URL_DEPLOYMENT", &url)],
        )
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("elsewhere/webhooks/dead_letters.jsonl"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_deliveries_are_listed_with_url_and_next_retry_and_are_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: every attempt fails and is retried a minute later.
    let url = format!("http://127.0.0.1:{}/hook?token=x", common::free_port());
    let d = dir.path().to_path_buf();
    let (o, list, deliver) = tokio::task::spawn_blocking(move || {
        let env = [
            ("PM_WEBHOOK_URL_DEPLOYMENT", url.as_str()),
            ("WEBHOOK_BACKOFF_BASE_MS", "60000"),
        ];
        let o = pm(&d, &["publish", "deployment", "{}", "--wait", "2s"], &env);
        let list = pm(&d, &["webhooks", "list"], &env);
        let deliver = pm(&d, &["webhooks", "deliver", "--wait", "2s"], &env);
        (o, list, deliver)
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("/hook?") && !text.contains("token=x") && text.contains("next 20"),
        "{text}"
    );
    // Still pending after the wait: reported, and exit 0 as for `publish --wait`.
    assert_eq!(deliver.status.code(), Some(0), "{}", stderr(&deliver));
    assert!(
        stderr(&deliver).contains("still pending"),
        "{}",
        stderr(&deliver)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redeliver_counts_only_the_dead_letters_it_sent() {
    let rx = TestReceiver::start().await;
    rx.script("/hook", vec![Reply::status(400)]);
    let dir = tempfile::tempdir().unwrap();
    let url = rx.url("/hook");
    let d = dir.path().to_path_buf();
    let o = tokio::task::spawn_blocking(move || {
        let env = [("PM_WEBHOOK_URL_DEPLOYMENT", url.as_str())];
        pm(&d, &["publish", "deployment", "{}"], &env);
        pm(
            &d,
            &["webhooks", "redeliver", "--all", "--wait", "20s"],
            &env,
        )
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("1 dead letter(s) sent again: 1 delivered"),
        "{e}"
    );
}

#[test]
fn replay_no_mail_sends_no_report_again() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    std::fs::write(&report, br#"{"ok": true}"#).unwrap();
    let data = serde_json::json!({"report_id": "r1", "report_type": "daily",
        "report_path": report, "report_format": "json", "recipients": ["ana@example.com"]})
    .to_string();
    let emls = |d: &Path| {
        std::fs::read_dir(d.join("logs/outbox"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    assert!(
        pm(dir.path(), &["publish", "report_ready", &data], &[])
            .status
            .success()
    );
    assert_eq!(emls(dir.path()), 1);
    let o = pm(dir.path(), &["replay", "--since", "1h", "--no-mail"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(emls(dir.path()), 1, "--no-mail: no e-mail again");
    assert!(
        pm(dir.path(), &["replay", "--since", "1h"], &[])
            .status
            .success()
    );
    assert_eq!(
        emls(dir.path()),
        2,
        "a replay e-mails again unless --no-mail"
    );
}

#[test]
fn publish_help_lists_the_built_in_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let o = pm(dir.path(), &["publish", "--help"], &[]);
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "severity* (low|medium|high|critical)",
        "change_type* (created|modified|deleted)",
        "report_format* (pdf|html|json)",
        "docs/events.md",
    ] {
        assert!(text.contains(needle), "{needle}:\n{text}");
    }
}
