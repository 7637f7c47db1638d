//! What the CLI's help, messages and exit codes promise, checked on the built
//! binary: time flags that cannot be represented, exit codes of refusals,
//! one line per failure, closed pipes, replay's report, variable names, files
//! created private.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestReceiver;
use common::server::{SECRET, Server};
use std::io::Read as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn pm(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    // Inside a tokio test, the wait must not hold a worker that serves a receiver.
    if tokio::runtime::Handle::try_current().is_ok() {
        return tokio::task::block_in_place(|| pm_now(dir, args, env));
    }
    pm_now(dir, args, env)
}

fn pm_now(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = common::pm_command(dir, args, SECRET);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `args` in `dir`, checks the exit code is `code`, and returns stderr.
fn fails(dir: &std::path::Path, args: &[&str], code: i32) -> String {
    let out = pm(dir, args, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    err
}

#[test]
fn durations_and_times_that_cannot_be_represented_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (args, flag) in [
        (vec!["tail", "--since", "1e308"], "--since"),
        (vec!["replay", "--since", "1e20"], "--since"),
        (
            vec!["serve", "--request-timeout", "1e308"],
            "--request-timeout",
        ),
        (vec!["webhooks", "deliver", "--wait", "1e308"], "--wait"),
        (vec!["tail", "--since", "18446744073709551616"], "--since"),
    ] {
        let out = pm(d, &args, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pm-events"))
        .args(["completions", "bash"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read three bytes, then close the pipe, as `| head -c 3` does.
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 3];
    out.read_exact(&mut first).unwrap();
    drop(out);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payload_refused_by_the_server_exits_2_as_one_refused_here() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let bad = r#"{"alert_id":"x","severity":5}"#;
    let here = pm(dir.path(), &["publish", "risk_alert", bad], &[]);
    let there = pm(
        dir.path(),
        &["publish", "--url", &srv.url, "risk_alert", bad],
        &[],
    );
    assert_eq!(here.status.code(), Some(2), "{}", stderr(&here));
    assert_eq!(there.status.code(), Some(2), "{}", stderr(&there));
    assert!(stderr(&there).contains("data."), "{}", stderr(&there));
    // Nothing listening: the message says so and what to start.
    let err = fails(
        dir.path(),
        &["publish", "--url", "http://127.0.0.1:9", "x", "{}"],
        1,
    );
    assert!(
        err.contains("Connection refused") && err.contains("pm-events serve"),
        "{err}"
    );
    // An unknown delivery id is not a usage error.
    fails(dir.path(), &["deliveries", "retry", "nope"], 1);
    // A port in use names the flag and the variable that choose another.
    let port = srv.url.rsplit(':').next().unwrap().to_string();
    let err = fails(
        dir.path(),
        &["serve", "--bind", &format!("127.0.0.1:{port}")],
        2,
    );
    assert!(err.contains("--bind") && err.contains("PM_BIND"), "{err}");
    // A log directory that cannot be created is named itself.
    let err = fails(
        dir.path(),
        &["--log-dir", "/proc/no/such/logs", "publish", "x", "{}"],
        1,
    );
    assert!(
        err.contains("/proc/no/such/logs ") && !err.contains("logs/"),
        "{err}"
    );
}

#[test]
fn a_failed_handler_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(
        dir.path(),
        &[
            "publish",
            "report_ready",
            r#"{"report_id":"r1","report_path":"/nonexistent/r.pdf","report_type":"weekly","report_format":"pdf","generated_at":"2026-01-01T00:00:00Z"}"#,
        ],
        1,
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/r.pdf"), "{err}");
}

#[test]
fn webhooks_verify_exits_1_for_what_is_not_a_signature() {
    let dir = tempfile::tempdir().unwrap();
    for sig in ["v1garbage", "not-a-signature", "sha256=zz"] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pm-events"));
        c.args(["webhooks", "verify", "--signature", sig])
            .current_dir(dir.path())
            .env("WEBHOOK_SIGNATURE_SECRET", SECRET)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{sig}: {}", stderr(&out));
    }
}

#[test]
fn setting_names_in_help_are_real_and_a_misspelt_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let help = pm(dir.path(), &["endpoints", "add", "--help"], &[]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("$WEBHOOK_MAX_RETRIES"), "{text}");
    assert!(text.contains("$WEBHOOK_TIMEOUT_SECS"), "{text}");
    assert!(!text.contains("PM_WEBHOOK_MAX_RETRIES"), "{text}");
    let out = pm(
        dir.path(),
        &["endpoints", "list"],
        &[("PM_WEBHOOK_MAX_RETRIES", "abc")],
    );
    let err = stderr(&out);
    assert!(
        err.contains("PM_WEBHOOK_MAX_RETRIES") && err.contains("WEBHOOK_MAX_RETRIES?"),
        "{err}"
    );
}

#[test]
fn a_secret_given_by_variable_is_not_printed_back() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=";
    let out = pm(
        dir.path(),
        &[
            "endpoints",
            "add",
            "https://hooks.example/x",
            "--secret-env",
            "MY_SECRET",
        ],
        &[("MY_SECRET", secret)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!all.contains(secret), "{all}");
}

#[cfg(unix)]
#[test]
fn every_file_under_the_log_directory_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let out = pm(
        dir.path(),
        &[
            "endpoints",
            "add",
            "https://user:pw@hooks.example/x?api_key=k",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = pm(
        dir.path(),
        &[
            "publish",
            "deployment",
            r#"{"service":"api","status":"success"}"#,
        ],
        &[
            ("PM_WEBHOOK_URL_DEPLOYMENT", "http://127.0.0.1:9/x"),
            ("WEBHOOK_MAX_RETRIES", "0"),
        ],
    );
    assert!(out.status.code().is_some(), "{}", stderr(&out));
    let mut seen = 0;
    let mut stack = vec![dir.path().join("logs")];
    while let Some(p) = stack.pop() {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        if p.is_dir() {
            assert_eq!(mode, 0o700, "{}", p.display());
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, 0o600, "{}", p.display());
            seen += 1;
        }
    }
    let names: Vec<String> = ["outbox.sqlite3", "endpoints.sqlite3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for n in names {
        assert!(dir.path().join("logs/webhooks").join(&n).exists(), "{n}");
    }
    assert!(seen >= 6, "{seen} files");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_reports_what_it_sent_not_deliveries_made_before() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let url = rx.url("/managed");
    let env = [("PM_ENDPOINT_ALLOW_NETS", "127.0.0.0/8")];
    let out = pm(
        dir.path(),
        &["endpoints", "add", &url, "--types", "deployment"],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = pm(
        dir.path(),
        &[
            "publish",
            "deployment",
            r#"{"service":"api","status":"success"}"#,
        ],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    rx.wait_for("/managed", 1, Duration::from_secs(10)).await;
    let out = pm(
        dir.path(),
        &["replay", "--since", "1h", "--type", "deployment"],
        &env,
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("1 delivered"), "{err}");
    assert!(err.contains("1 not sent again"), "{err}");
    assert_eq!(rx.requests("/managed").len(), 1);
}

#[test]
fn an_id_outside_the_id_characters_is_refused_by_publish_id() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(dir.path(), &["publish", "--id", "two words", "x", "{}"], 2);
    assert!(err.contains("event_id: contains ' '"), "{err}");
    assert!(!dir.path().join("logs/events").exists(), "nothing logged");
}
